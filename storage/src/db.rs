//! Opening the node's RocksDB database and its column families.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, DBCompressionType, Options, WriteOptions,
};

use crate::error::{StorageError, is_no_space};

/// How long a write that found the disk full waits before it tries again.
pub(crate) const NO_SPACE_RETRY: Duration = Duration::from_millis(200);

/// Raft log = commit log: raft index → entry.
pub const CF_LOG: &str = "log";
/// Vote, committed log id, last purged log id.
pub const CF_RAFT: &str = "raft";
/// Consume queues: (topic, queue, offset) → location in the log.
pub const CF_CQ: &str = "cq";
/// Message-id dedup index (later also keys and time).
pub const CF_INDEX: &str = "index";
/// Applied log id, membership, topics, queue next offsets.
pub const CF_META: &str = "meta";
/// Consumer-group offsets.
pub const CF_OFFSETS: &str = "offsets";
/// POP consumption: per (group, topic, queue) the next offset to hand out and the deliveries
/// in flight (invisible until, attempt).
pub const CF_POP: &str = "pop";
/// Delay messages not yet due: (deliver at, log index, slot) → where they go.
pub const CF_TIMER: &str = "timer";
/// Transactional (half) messages: (topic, transaction id) → state, checks, location.
pub const CF_TXN: &str = "txn";

pub const ALL_CFS: [&str; 9] = [
    CF_LOG, CF_RAFT, CF_CQ, CF_INDEX, CF_META, CF_OFFSETS, CF_POP, CF_TIMER, CF_TXN,
];
/// The column families a snapshot carries: everything derived by applying the log.
pub const STATE_CFS: [&str; 7] = [
    CF_CQ, CF_INDEX, CF_META, CF_OFFSETS, CF_POP, CF_TIMER, CF_TXN,
];

/// When a node reports a log entry as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlushMode {
    /// The WAL is fsynced before an entry counts as stored (the default: no acknowledged
    /// message is lost while a majority of nodes keep their disks).
    #[default]
    Sync,
    /// An entry counts as stored once it is in RocksDB's memtable and the OS page cache. An
    /// acknowledged message can be lost if a majority of nodes lose power together.
    Async,
}

impl std::fmt::Display for FlushMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FlushMode::Sync => "sync",
            FlushMode::Async => "async",
        })
    }
}

impl std::str::FromStr for FlushMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sync" => Ok(FlushMode::Sync),
            "async" => Ok(FlushMode::Async),
            other => Err(format!("flush must be `sync` or `async`, not `{other}`")),
        }
    }
}

/// Debug builds only: set in a broker's environment, the node keeps its WAL in process memory
/// (RocksDB's manual WAL flush, never fsynced) and still reports entries as stored, so a
/// SIGKILL loses writes it acknowledged, as a power cut would with `flush = async`. The chaos
/// tests use it to show that their checker catches lost acknowledged messages; release
/// builds ignore it.
pub const UNSAFE_LOSE_UNSYNCED_ENV: &str = "RAFTMQ_UNSAFE_TEST_LOSE_UNSYNCED_WRITES";

/// The database handle shared by the log store and the broker state.
#[derive(Clone)]
pub struct Db {
    pub(crate) inner: Arc<rocksdb::DB>,
    pub(crate) flush: FlushMode,
    /// Set while a write waits for the disk to have room again.
    waiting_for_space: Arc<AtomicBool>,
    /// How many times a write has started waiting for space: a WAL sync that fails after a
    /// stall began (RocksDB then answers "Writer has previous error") is retried, not failed.
    space_stalls: Arc<AtomicU64>,
}

/// The test mode's WAL reaches the OS every 3 s (like a periodic flush), so that a node keeps
/// its identity and older entries and only the last seconds are at risk.
fn write_wal_every_few_seconds(db: std::sync::Weak<rocksdb::DB>) {
    let _ = std::thread::Builder::new()
        .name("raftmq-unsafe-wal".into())
        .spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3));
                match db.upgrade() {
                    Some(db) => {
                        let _ = db.flush_wal(false);
                    }
                    None => return,
                }
            }
        });
}

impl Db {
    pub fn open(path: &Path, mut flush: FlushMode) -> Result<Db, StorageError> {
        let mut opts = Options::default();
        let lose_unsynced =
            cfg!(debug_assertions) && std::env::var_os(UNSAFE_LOSE_UNSYNCED_ENV).is_some();
        if lose_unsynced {
            tracing::warn!(
                "{UNSAFE_LOSE_UNSYNCED_ENV} is set: this node loses acknowledged writes when killed (test mode)"
            );
            opts.set_manual_wal_flush(true);
            flush = FlushMode::Async;
        }
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.increase_parallelism(2);
        // Bounded WAL: old WAL files are dropped once every column family has flushed them.
        opts.set_max_total_wal_size(256 << 20);
        // Write flushed and compacted files out as they grow instead of all at their end: on
        // ext4 a WAL fsync that lands behind 64 MiB of dirty file data waits for all of it
        // (spikes of 100 ms and more in the ack latency).
        opts.set_bytes_per_sync(1 << 20);
        let cfs = ALL_CFS.iter().map(|name| {
            let mut cf_opts = Options::default();
            if *name == CF_LOG {
                cf_opts.set_write_buffer_size(64 << 20);
                cf_opts.set_compression_type(DBCompressionType::Lz4);
                cf_opts.set_bottommost_compression_type(DBCompressionType::Zstd);
            }
            if *name == CF_INDEX {
                // Every stored message looks up its (topic, message id) here to catch a retried
                // send, and almost every lookup misses: a bloom filter answers most misses
                // without reading the files' index blocks.
                let mut table = BlockBasedOptions::default();
                table.set_bloom_filter(10.0, false);
                cf_opts.set_block_based_table_factory(&table);
                // The memtables too: the newest ids live there, and without a filter every
                // miss walks each memtable's skip list (6 % of a follower's CPU at 10,000
                // sends/s went to these lookups, half of it in memtables).
                cf_opts.set_memtable_prefix_bloom_ratio(0.1);
                cf_opts.set_memtable_whole_key_filtering(true);
            }
            ColumnFamilyDescriptor::new(*name, cf_opts)
        });
        let inner = rocksdb::DB::open_cf_descriptors(&opts, path, cfs).map_err(|source| {
            StorageError::Open {
                path: path.display().to_string(),
                source,
            }
        })?;
        let inner = Arc::new(inner);
        if lose_unsynced {
            write_wal_every_few_seconds(Arc::downgrade(&inner));
        }
        Ok(Db {
            inner,
            flush,
            waiting_for_space: Arc::new(AtomicBool::new(false)),
            space_stalls: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn flush_mode(&self) -> FlushMode {
        self.flush
    }

    /// Bytes each column family holds on disk (SST files) and in memtables: what the
    /// metrics report as the store's size.
    pub fn column_family_bytes(&self) -> Vec<(&'static str, u64)> {
        ALL_CFS
            .iter()
            .map(|name| {
                let cf = self.cf(name);
                let property = |key: &str| {
                    self.inner
                        .property_int_value_cf(&cf, key)
                        .ok()
                        .flatten()
                        .unwrap_or(0)
                };
                let bytes = property("rocksdb.total-sst-files-size")
                    + property("rocksdb.size-all-mem-tables");
                (*name, bytes)
            })
            .collect()
    }

    pub(crate) fn cf(&self, name: &'static str) -> Arc<rocksdb::BoundColumnFamily<'_>> {
        self.inner
            .cf_handle(name)
            .expect("every column family is created when the database is opened")
    }

    pub(crate) fn get(
        &self,
        cf: &'static str,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner
            .get_cf(&self.cf(cf), key)
            .map_err(|source| StorageError::Read { cf, source })
    }

    /// Write a batch and fsync the WAL before returning, whatever the flush mode: for small
    /// records (vote, purge) whose loss would break Raft's safety.
    pub(crate) fn write_synced(
        &self,
        cf: &'static str,
        batch: rocksdb::WriteBatch,
    ) -> Result<(), StorageError> {
        self.write_copy(cf, true, batch)
    }

    /// Write a batch to the WAL and memtable without waiting for an fsync.
    pub(crate) fn write(
        &self,
        cf: &'static str,
        batch: rocksdb::WriteBatch,
    ) -> Result<(), StorageError> {
        self.write_copy(cf, false, batch)
    }

    /// RocksDB consumes a batch even when it refuses it: keep a copy for the retries (the
    /// batches written this way are small; the log's large ones are rebuilt instead).
    fn write_copy(
        &self,
        cf: &'static str,
        sync: bool,
        batch: rocksdb::WriteBatch,
    ) -> Result<(), StorageError> {
        let copy = batch.data().to_vec();
        let mut first = Some(batch);
        self.write_when_space(cf, sync, || {
            first
                .take()
                .unwrap_or_else(|| rocksdb::WriteBatch::from_data(&copy))
        })
    }

    /// Write the batch `build` makes. On a full disk nothing is lost or failed: the write
    /// waits, retrying, until RocksDB takes it again. RocksDB stops all writes after an
    /// ENOSPC and resumes by itself once enough space is free (its SstFileManager checks every
    /// few seconds), first flushing its memtables so the WAL that saw the error is no longer
    /// needed. Meanwhile this node stalls like a paused one and the rest of the group goes on.
    pub(crate) fn write_when_space(
        &self,
        cf: &'static str,
        sync: bool,
        mut build: impl FnMut() -> rocksdb::WriteBatch,
    ) -> Result<(), StorageError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        let mut waiting_since: Option<Instant> = None;
        let stalls_before = self.space_stalls();
        loop {
            match self.inner.write_opt(build(), &opts) {
                Ok(()) => {
                    if let Some(since) = waiting_since {
                        self.waiting_for_space.store(false, Ordering::Relaxed);
                        tracing::warn!(
                            cf,
                            waited_ms = since.elapsed().as_millis() as u64,
                            "the disk has room again: writes go on"
                        );
                    }
                    return Ok(());
                }
                Err(source) if is_no_space(&source) => {
                    if waiting_since.is_none() {
                        waiting_since = Some(Instant::now());
                        self.waiting_for_space.store(true, Ordering::Relaxed);
                        self.space_stalls.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("raftmq_disk_full_stalls_total").increment(1);
                        tracing::error!(
                            cf,
                            error = %source,
                            "the data dir's disk is full: this node's writes wait until space is freed"
                        );
                    }
                    pause_for_space();
                }
                Err(source) => {
                    // A write beside one that met ENOSPC fails with "Writer has previous
                    // error", which does not name the disk: it is the same stall. That write
                    // may not have counted its stall yet, so look again after the pause.
                    pause_for_space();
                    if self.stalled_since(stalls_before) {
                        continue;
                    }
                    return Err(StorageError::Write { cf, source });
                }
            }
        }
    }

    /// Whether a write is waiting for the disk to have room (see [`Db::write_when_space`]).
    pub fn waiting_for_space(&self) -> bool {
        self.waiting_for_space.load(Ordering::Relaxed)
    }

    /// How many writes have had to wait for space since the database was opened.
    pub(crate) fn space_stalls(&self) -> u64 {
        self.space_stalls.load(Ordering::Relaxed)
    }

    /// Whether a write waits for space now, or one began waiting since `space_stalls` read
    /// `stalls`: an error that does not name the disk is then part of that stall.
    pub(crate) fn stalled_since(&self, stalls: u64) -> bool {
        self.waiting_for_space() || self.space_stalls() != stalls
    }

    /// Fsync the WAL: everything written before this call is durable when it returns.
    pub fn sync_wal(&self) -> Result<(), StorageError> {
        self.inner
            .flush_wal(true)
            .map_err(|source| StorageError::Write { cf: CF_LOG, source })
    }
}

/// Sleep between two attempts at a write on a full disk. Inside a multi-threaded Tokio runtime
/// the runtime is told first, so the other tasks of this worker thread (health checks, the
/// disk watch) keep running.
fn pause_for_space() {
    let pause = || std::thread::sleep(NO_SPACE_RETRY);
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(pause)
        }
        _ => pause(),
    }
}
