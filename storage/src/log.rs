//! The Raft log, which is also the commit log: every message is written once, inside the
//! Raft entry that carries it.
//!
//! Durability contract: `append` returns once the entries are readable; the `on_durable`
//! callback runs once they are on disk (`flush = sync`: after a WAL fsync; `flush = async`:
//! at once). Appends that arrive while an fsync is running share the next fsync, so the number
//! of fsyncs per second stays bounded however many messages arrive (group commit).

use std::sync::{Arc, mpsc};
use std::thread;

use prost::Message;
use raftmq_proto::raft::v1 as pb;
use rocksdb::{Direction, IteratorMode, WriteBatch};

use crate::db::{CF_LOG, CF_RAFT, Db, FlushMode, NO_SPACE_RETRY};
use crate::error::StorageError;
use crate::keys;

/// A RocksDB write batch's fixed header: sequence number and count.
const BATCH_HEADER_BYTES: usize = 12;
/// What a put adds to a batch besides its value: a tag, the column family id, the 8-byte key
/// and two length varints.
const BATCH_BYTES_PER_PUT: usize = 24;

/// One encoded `pb::Entry` and its Raft index.
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub index: u64,
    pub bytes: bytes::Bytes,
}

/// Runs when appended entries are durable (or failed to become so).
pub type OnDurable = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

#[derive(Clone)]
pub struct LogStore {
    db: Db,
    flusher: Arc<Flusher>,
}

/// The WAL sync thread. Dropping the last handle stops the thread and waits for it, so the
/// database is never used by a thread that outlives its owner (RocksDB aborts if it is still
/// in use while the process exits).
struct Flusher {
    pending: Option<mpsc::Sender<OnDurable>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.pending.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl LogStore {
    pub fn new(db: Db) -> LogStore {
        let (sender, pending) = mpsc::channel::<OnDurable>();
        let flush_db = db.clone();
        let thread = thread::Builder::new()
            .name("raftmq-wal-sync".into())
            .spawn(move || run_flusher(flush_db, pending))
            .expect("spawn the WAL sync thread");
        LogStore {
            db,
            flusher: Arc::new(Flusher {
                pending: Some(sender),
                thread: Some(thread),
            }),
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Write entries in one batch; `on_durable` runs when they are on disk.
    pub fn append(&self, entries: &[pb::Entry], on_durable: OnDurable) -> Result<(), StorageError> {
        let records: Vec<LogRecord> = entries
            .iter()
            .map(|entry| LogRecord {
                index: entry.log_id.as_ref().map(|id| id.index).unwrap_or_default(),
                bytes: entry.encode_to_vec().into(),
            })
            .collect();
        self.append_records(&records, on_durable)
    }

    /// Write already encoded entries in one batch; `on_durable` runs when they are on disk.
    pub fn append_records(
        &self,
        records: &[LogRecord],
        on_durable: OnDurable,
    ) -> Result<(), StorageError> {
        let build = || {
            let cf = self.db.cf(CF_LOG);
            // Sized up front: a batch grown by reallocation copies its records again each time.
            let bytes: usize = records
                .iter()
                .map(|r| r.bytes.len() + BATCH_BYTES_PER_PUT)
                .sum();
            let mut batch = WriteBatch::with_capacity_bytes(BATCH_HEADER_BYTES + bytes);
            for record in records {
                batch.put_cf(&cf, keys::log_key(record.index), &record.bytes);
            }
            batch
        };
        let started = std::time::Instant::now();
        self.db.write_when_space(CF_LOG, false, build)?;
        metrics::histogram!("raftmq_log_append_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("raftmq_log_entries_appended_total").increment(records.len() as u64);
        match self.db.flush {
            FlushMode::Async => on_durable(Ok(())),
            FlushMode::Sync => {
                let sender = self.flusher.pending.as_ref().expect("present until drop");
                if let Err(mpsc::SendError(callback)) = sender.send(on_durable) {
                    // Only possible if the sync thread died; sync here instead.
                    callback(self.db.sync_wal());
                }
            }
        }
        Ok(())
    }

    /// Entries with `start <= index < end`, in index order.
    pub fn read_range(&self, start: u64, end: u64) -> Result<Vec<pb::Entry>, StorageError> {
        let mut entries = Vec::new();
        if start >= end {
            return Ok(entries);
        }
        let cf = self.db.cf(CF_LOG);
        let start_key = keys::log_key(start);
        let iter = self
            .db
            .inner
            .iterator_cf(&cf, IteratorMode::From(&start_key, Direction::Forward));
        for item in iter {
            let (key, value) = item.map_err(|source| StorageError::Read { cf: CF_LOG, source })?;
            let index = keys::decode_log_key(&key)
                .ok_or_else(|| StorageError::corrupt(CF_LOG, &key, "bad key"))?;
            if index >= end {
                break;
            }
            let entry =
                pb::Entry::decode(&*value).map_err(|e| StorageError::corrupt(CF_LOG, &key, e))?;
            let stored_index = entry.log_id.as_ref().map(|id| id.index);
            if stored_index != Some(index) {
                return Err(StorageError::corrupt(
                    CF_LOG,
                    &key,
                    "entry index differs from its key",
                ));
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    /// One entry, if present.
    pub fn get(&self, index: u64) -> Result<Option<pb::Entry>, StorageError> {
        read_entry(&self.db, index)
    }

    /// The entry with the highest index.
    pub fn last(&self) -> Result<Option<pb::Entry>, StorageError> {
        let cf = self.db.cf(CF_LOG);
        let mut iter = self.db.inner.iterator_cf(&cf, IteratorMode::End);
        match iter.next() {
            None => Ok(None),
            Some(item) => {
                let (key, value) =
                    item.map_err(|source| StorageError::Read { cf: CF_LOG, source })?;
                pb::Entry::decode(&*value)
                    .map(Some)
                    .map_err(|e| StorageError::corrupt(CF_LOG, &key, e))
            }
        }
    }

    /// Delete every entry after `index` (all of them if `None`). Synced: a truncated entry must
    /// not come back after a crash.
    pub fn truncate_after(&self, index: Option<u64>) -> Result<(), StorageError> {
        let from = index.map(|i| i + 1).unwrap_or(0);
        let cf = self.db.cf(CF_LOG);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(&cf, keys::log_key(from), keys::log_key(u64::MAX));
        batch.delete_cf(&cf, keys::log_key(u64::MAX));
        drop(cf);
        self.db.write_synced(CF_LOG, batch)
    }

    /// Record `purged` as the last purged log id and delete every entry up to its index.
    pub fn purge(&self, purged: &pb::LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            &self.db.cf(CF_RAFT),
            keys::PURGED_KEY,
            purged.encode_to_vec(),
        );
        batch.delete_range_cf(
            &self.db.cf(CF_LOG),
            keys::log_key(0),
            keys::log_key(purged.index + 1),
        );
        self.db.write_synced(CF_RAFT, batch)
    }

    pub fn save_identity(&self, identity: &pb::NodeIdentity) -> Result<(), StorageError> {
        self.put_raft(keys::IDENTITY_KEY, identity.encode_to_vec(), true)
    }

    pub fn read_identity(&self) -> Result<Option<pb::NodeIdentity>, StorageError> {
        self.get_raft(keys::IDENTITY_KEY)
    }

    pub fn save_vote(&self, vote: &pb::Vote) -> Result<(), StorageError> {
        self.put_raft(keys::VOTE_KEY, vote.encode_to_vec(), true)
    }

    pub fn read_vote(&self) -> Result<Option<pb::Vote>, StorageError> {
        self.get_raft(keys::VOTE_KEY)
    }

    /// The committed log id is a hint that speeds up recovery; losing the latest one is safe.
    pub fn save_committed(&self, committed: Option<&pb::LogId>) -> Result<(), StorageError> {
        match committed {
            Some(id) => self.put_raft(keys::COMMITTED_KEY, id.encode_to_vec(), false),
            None => Ok(()),
        }
    }

    pub fn read_committed(&self) -> Result<Option<pb::LogId>, StorageError> {
        self.get_raft(keys::COMMITTED_KEY)
    }

    pub fn read_purged(&self) -> Result<Option<pb::LogId>, StorageError> {
        self.get_raft(keys::PURGED_KEY)
    }

    fn put_raft(&self, key: &[u8], value: Vec<u8>, sync: bool) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(&self.db.cf(CF_RAFT), key, value);
        if sync {
            self.db.write_synced(CF_RAFT, batch)
        } else {
            self.db.write(CF_RAFT, batch)
        }
    }

    fn get_raft<M: Message + Default>(&self, key: &[u8]) -> Result<Option<M>, StorageError> {
        match self.db.get(CF_RAFT, key)? {
            None => Ok(None),
            Some(bytes) => M::decode(&*bytes)
                .map(Some)
                .map_err(|e| StorageError::corrupt(CF_RAFT, key, e)),
        }
    }
}

/// Group commit: wait for the first pending append, take every other one queued behind it,
/// fsync once, then complete them all in order.
fn run_flusher(db: Db, pending: mpsc::Receiver<OnDurable>) {
    let mut synced_stalls = db.space_stalls();
    while let Ok(first) = pending.recv() {
        let mut callbacks = vec![first];
        callbacks.extend(pending.try_iter());
        let started = std::time::Instant::now();
        let result = sync_when_space(&db, &mut synced_stalls);
        metrics::histogram!("raftmq_wal_fsync_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("raftmq_wal_fsync_appends").record(callbacks.len() as f64);
        if let Err(err) = &result {
            tracing::error!(error = %err, "WAL fsync failed");
        }
        for callback in callbacks {
            callback(match &result {
                Ok(()) => Ok(()),
                Err(err) => Err(StorageError::WalSync {
                    reason: err.to_string(),
                }),
            });
        }
    }
}

/// Fsync the WAL. A write that met ENOSPC stops RocksDB, and if it failed while appending to
/// the WAL, that file refuses everything after ("Writer has previous error"). A WAL sync then
/// fails with that error, which RocksDB takes for a fatal one: it never resumes, whatever space
/// is freed. So once a stall has begun since the last good sync (counted in `synced_stalls`),
/// durability comes from a synced write instead: RocksDB refuses it without touching the WAL
/// while stopped, and once it has resumed (after flushing its memtables) the write syncs every
/// WAL file. A WAL sync that fails because a stall began during it takes the same way.
fn sync_when_space(db: &Db, synced_stalls: &mut u64) -> Result<(), StorageError> {
    if !db.stalled_since(*synced_stalls) {
        let stalls = db.space_stalls();
        match db.sync_wal() {
            Ok(()) => {
                *synced_stalls = stalls;
                return Ok(());
            }
            Err(err) => {
                // The write that stopped RocksDB may not have counted its stall yet.
                std::thread::sleep(NO_SPACE_RETRY);
                if !err.is_no_space() && !db.stalled_since(*synced_stalls) {
                    return Err(err);
                }
                tracing::warn!(
                    error = %err,
                    "the WAL sync failed while the disk was full"
                );
            }
        }
    }
    tracing::warn!("syncing the WAL with a synced write until RocksDB has resumed");
    let stalls = db.space_stalls();
    db.sync_by_write()?;
    *synced_stalls = stalls;
    tracing::warn!("the WAL syncs again after the disk-full stall");
    Ok(())
}

/// Read one log entry straight from the database (also used by queue reads).
pub(crate) fn read_entry(db: &Db, index: u64) -> Result<Option<pb::Entry>, StorageError> {
    let key = keys::log_key(index);
    match db.get(CF_LOG, &key)? {
        None => Ok(None),
        Some(bytes) => pb::Entry::decode(&*bytes)
            .map(Some)
            .map_err(|e| StorageError::corrupt(CF_LOG, &key, e)),
    }
}
