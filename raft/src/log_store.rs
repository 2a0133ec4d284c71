//! openraft's `RaftLogStorage` over the RocksDB commit log.
//!
//! `append` writes one `WriteBatch` per call and returns once the entries are readable; the
//! `IOFlushed` callback fires when they are durable (after the shared WAL fsync with
//! `flush = sync`). openraft acknowledges an entry to the leader only after that callback, so a
//! write is acknowledged to a producer only once a majority has it on disk.
//!
//! Every entry is read back right after it is appended: by each follower's replication stream
//! and by the state machine. The entries appended last are therefore also kept in memory
//! ([`RecentEntries`]), shared rather than copied, and those reads skip RocksDB and decoding.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use raftmq_storage::{LogRecord, LogStore};

use crate::convert::{
    encode_entry, entry_from_pb, log_id_from_pb, log_id_to_pb, vote_from_pb, vote_to_pb,
};
use crate::timeline::Timeline;
use crate::types::{Entry, LogId, TypeConfig, Vote};

/// Encoded bytes of recent entries kept in memory, at most. Replication and apply read an
/// entry within milliseconds of its append; a follower further behind reads from RocksDB.
const RECENT_ENTRIES_BYTES_MAX: usize = 32 << 20;

/// The entries appended last: a contiguous run of log indexes ending at the log's last entry.
#[derive(Default)]
struct RecentEntries {
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl RecentEntries {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(entry, _)| entry.log_id.index)
    }

    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|(entry, _)| entry.log_id.index)
    }

    /// Add entries just written to the log, which replace any at or after their index.
    fn push(&mut self, appended: impl IntoIterator<Item = (Entry, usize)>) {
        for (entry, bytes) in appended {
            let index = entry.log_id.index;
            match self.last_index() {
                Some(last) if index <= last => self.keep_up_to(index.checked_sub(1)),
                Some(last) if index > last + 1 => self.clear(),
                _ => {}
            }
            self.bytes += bytes;
            self.entries.push_back((entry, bytes));
        }
        while self.bytes > RECENT_ENTRIES_BYTES_MAX {
            let Some((_, bytes)) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= bytes;
        }
    }

    /// Forget the entries after `index` (all of them if `None`).
    fn keep_up_to(&mut self, index: Option<u64>) {
        while let Some(last) = self.last_index() {
            if index.is_some_and(|index| last <= index) {
                break;
            }
            let (_, bytes) = self.entries.pop_back().expect("not empty");
            self.bytes -= bytes;
        }
    }

    /// Forget the entries up to and including `index`.
    fn drop_up_to(&mut self, index: u64) {
        while self.first_index().is_some_and(|first| first <= index) {
            let (_, bytes) = self.entries.pop_front().expect("not empty");
            self.bytes -= bytes;
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// The entries with `start <= index < end` if this holds all of the log's entries in that
    /// range (it always holds the log's tail, so an `end` past the last entry is fine).
    fn get(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        if start < first {
            return None;
        }
        let skip = usize::try_from(start - first).ok()?;
        Some(
            self.entries
                .iter()
                .skip(skip)
                .take_while(|(entry, _)| entry.log_id.index < end)
                .map(|(entry, _)| entry.clone())
                .collect(),
        )
    }
}

#[derive(Clone)]
pub struct RaftLogStore {
    store: LogStore,
    recent: Arc<Mutex<RecentEntries>>,
    timeline: Arc<Timeline>,
}

impl RaftLogStore {
    pub fn new(store: LogStore, timeline: Arc<Timeline>) -> RaftLogStore {
        RaftLogStore {
            store,
            recent: Arc::default(),
            timeline,
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, RecentEntries> {
        self.recent.lock().expect("recent entries lock poisoned")
    }

    /// Run blocking storage work (synced writes) off the async executor.
    async fn blocking<T, F>(&self, work: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(LogStore) -> Result<T, raftmq_storage::StorageError> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || work(store))
            .await
            .map_err(io::Error::other)?
            .map_err(io::Error::from)
    }
}

impl RaftLogReader<TypeConfig> for RaftLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        if let Some(entries) = self.recent().get(start, end) {
            return Ok(entries);
        }
        let records = self.store.read_range(start, end)?;
        records
            .into_iter()
            .map(|record| entry_from_pb(record).map_err(io::Error::from))
            .collect()
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        match self.store.read_vote()? {
            None => Ok(None),
            Some(vote) => Ok(Some(vote_from_pb(&vote)?)),
        }
    }
}

impl RaftLogStorage<TypeConfig> for RaftLogStore {
    type LogReader = RaftLogStore;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last_purged_log_id = match self.store.read_purged()? {
            None => None,
            Some(id) => Some(log_id_from_pb(&id)?),
        };
        let last_log_id = match self.store.last()? {
            Some(entry) => Some(entry_from_pb(entry)?.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        let vote = vote_to_pb(vote);
        self.blocking(move |store| store.save_vote(&vote)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        Ok(self
            .store
            .save_committed(committed.as_ref().map(log_id_to_pb).as_ref())?)
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        match self.store.read_committed()? {
            None => Ok(None),
            Some(id) => Ok(Some(log_id_from_pb(&id)?)),
        }
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let records: Vec<LogRecord> = entries
            .iter()
            .map(|entry| LogRecord {
                index: entry.log_id.index,
                bytes: encode_entry(entry),
            })
            .collect();
        // Even an empty append completes through the WAL thread, after the appends before it.
        let indexes = records.first().zip(records.last());
        let indexes = indexes.map(|(first, last)| first.index..=last.index);
        let timeline = self.timeline.clone();
        let flushed = indexes.clone();
        self.store.append_records(
            &records,
            Box::new(move |result| {
                if result.is_ok() {
                    timeline.flushed(flushed.into_iter().flatten());
                }
                callback.io_completed(result.map_err(io::Error::from))
            }),
        )?;
        self.timeline.appended(indexes.into_iter().flatten());
        // Readable from RocksDB now, so from the cache too (durable or not, like the log).
        let sizes = records.iter().map(|record| record.bytes.len());
        self.recent().push(entries.into_iter().zip(sizes));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let index = last_log_id.map(|id| id.index);
        self.recent().keep_up_to(index);
        self.blocking(move |store| store.truncate_after(index))
            .await
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        let purged = log_id_to_pb(&log_id);
        self.recent().drop_up_to(log_id.index);
        self.blocking(move |store| store.purge(&purged)).await
    }
}

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;

    use super::*;
    use crate::types::LeaderId;

    fn entry(term: u64, index: u64) -> (Entry, usize) {
        let log_id = LogId::new(LeaderId { term, node_id: 1 }, index);
        let payload = EntryPayload::Blank;
        (Entry { log_id, payload }, 100)
    }

    fn indexes(entries: Option<Vec<Entry>>) -> Option<Vec<(u64, u64)>> {
        entries.map(|entries| {
            entries
                .iter()
                .map(|e| (e.log_id.leader_id.term, e.log_id.index))
                .collect()
        })
    }

    #[test]
    fn serves_only_ranges_it_holds_whole() {
        let mut recent = RecentEntries::default();
        assert_eq!(None, indexes(recent.get(0, u64::MAX)), "empty");
        recent.push((5..=9).map(|i| entry(1, i)));
        assert_eq!(Some(vec![(1, 6), (1, 7)]), indexes(recent.get(6, 8)));
        assert_eq!(
            Some(vec![(1, 8), (1, 9)]),
            indexes(recent.get(8, u64::MAX)),
            "an open end stops at the last entry"
        );
        assert_eq!(Some(vec![]), indexes(recent.get(10, 20)), "past the end");
        assert_eq!(None, indexes(recent.get(4, 8)), "starts before the cache");
    }

    #[test]
    fn an_append_over_older_entries_replaces_them() {
        let mut recent = RecentEntries::default();
        recent.push((1..=5).map(|i| entry(1, i)));
        // A new leader overwrites 4 and 5 (openraft truncates first; the cache copes anyway).
        recent.push([entry(2, 4)]);
        assert_eq!(Some(vec![(1, 3), (2, 4)]), indexes(recent.get(3, u64::MAX)));
        assert_eq!(400, recent.bytes);
        // A gap (the log moved on without this cache, e.g. a snapshot) starts over.
        recent.push([entry(2, 10)]);
        assert_eq!(None, indexes(recent.get(4, u64::MAX)));
        assert_eq!(Some(vec![(2, 10)]), indexes(recent.get(10, u64::MAX)));
        assert_eq!(100, recent.bytes);
    }

    #[test]
    fn truncate_and_purge_forget_entries() {
        let mut recent = RecentEntries::default();
        recent.push((1..=6).map(|i| entry(1, i)));
        recent.keep_up_to(Some(4));
        assert_eq!(Some(4), recent.last_index());
        recent.drop_up_to(2);
        assert_eq!(Some(3), recent.first_index());
        assert_eq!(200, recent.bytes);
        recent.keep_up_to(None);
        assert_eq!(None, recent.first_index());
        assert_eq!(0, recent.bytes);
    }

    #[test]
    fn holds_a_bounded_number_of_bytes() {
        let mut recent = RecentEntries::default();
        let big = RECENT_ENTRIES_BYTES_MAX / 4 + 1;
        recent.push((1..=8).map(|i| (entry(1, i).0, big)));
        assert!(recent.bytes <= RECENT_ENTRIES_BYTES_MAX);
        assert_eq!(Some(6), recent.first_index(), "the oldest went first");
        assert_eq!(Some(8), recent.last_index());
    }
}
