//! openraft's `RaftLogStorage` over the RocksDB commit log.
//!
//! `append` writes one `WriteBatch` per call and returns once the entries are readable; the
//! `IOFlushed` callback fires when they are durable (after the shared WAL fsync with
//! `flush = sync`). openraft acknowledges an entry to the leader only after that callback, so a
//! write is acknowledged to a producer only once a majority has it on disk.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use raftmq_storage::LogStore;

use crate::convert::{
    entry_from_pb, entry_to_pb, log_id_from_pb, log_id_to_pb, vote_from_pb, vote_to_pb,
};
use crate::types::{Entry, LogId, TypeConfig, Vote};

#[derive(Clone)]
pub struct RaftLogStore {
    store: LogStore,
}

impl RaftLogStore {
    pub fn new(store: LogStore) -> RaftLogStore {
        RaftLogStore { store }
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
        let records: Vec<_> = entries.into_iter().map(entry_to_pb).collect();
        self.store.append(
            &records,
            Box::new(move |result| callback.io_completed(result.map_err(io::Error::from))),
        )?;
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let index = last_log_id.map(|id| id.index);
        self.blocking(move |store| store.truncate_after(index))
            .await
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        let purged = log_id_to_pb(&log_id);
        self.blocking(move |store| store.purge(&purged)).await
    }
}
