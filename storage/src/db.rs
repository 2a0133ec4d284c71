//! Opening the node's RocksDB database and its column families.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, Options,
    WriteBufferManager, WriteOptions,
};

use crate::disk::DiskSpace;
use crate::error::{StorageError, is_no_space};

/// How long a write that found the disk full waits before it tries again.
pub(crate) const NO_SPACE_RETRY: Duration = Duration::from_millis(200);

/// RocksDB's memory budget (block cache and memtables) unless the node is configured
/// otherwise (`storage_memory_mb`).
pub const DEFAULT_MEMORY_BYTES: usize = 512 << 20;

/// The log's memtable size, the largest of all column families (on the nodes of flush step 0,
/// see `FLUSH_STEPS`).
const LOG_WRITE_BUFFER_BYTES: usize = 64 << 20;
/// The WAL's size past which every column family is flushed (on the nodes of flush step 0).
const MAX_TOTAL_WAL_BYTES: u64 = 256 << 20;
/// The nodes of a group store the same bytes in the same order: with equal sizes their log
/// memtables fill, and flush, at the same moment on every node, and their WALs reach the limit
/// together, when every column family is flushed at once. All nodes then stall together and
/// every ack waits. So node `id` takes flush step `(id - 1) % FLUSH_STEPS`, and each step makes
/// its log memtable `LOG_WRITE_BUFFER_STEP` and its WAL limit `WAL_LIMIT_STEP` smaller: the
/// nodes flush at different moments, and the leader and one follower commit while the other
/// flushes (at 10,000 sends/s the median ack p99 halved, docs/BENCHMARKS.md, 2026-12-06). The
/// steps go down, never up, so that `DISK_RESERVE_BYTES` still holds the largest memtable.
const FLUSH_STEPS: u64 = 3;
const LOG_WRITE_BUFFER_STEP: usize = 12 << 20;
const WAL_LIMIT_STEP: u64 = 48 << 20;
/// Spent WAL files kept to be written over: as many as become spent at once when the WAL
/// reaches its limit (at most 256 MiB, a file per log memtable, and some smaller).
const WAL_FILES_RECYCLED: usize = 8;
/// Free space a write must leave on the disk, or it waits as on a full disk. RocksDB needs
/// room of its own: memtable flushes, new WAL files. Once it meets ENOSPC it stops all writes
/// and resumes only when a write buffer's worth is free again (and a wrong step meanwhile stops
/// it for good, see `log::sync_when_space`). Writes that stop this much short of a full disk
/// spare RocksDB all of that; they go on the moment space is freed.
pub const DISK_RESERVE_BYTES: u64 = LOG_WRITE_BUFFER_BYTES as u64;
/// A free-space reading further than this above what a write needs is trusted for
/// `SPACE_READING_TTL`; closer to the line, every write reads the filesystem again.
const SPACE_READING_SLACK: u64 = 256 << 20;
const SPACE_READING_TTL: Duration = Duration::from_millis(100);
/// How long RocksDB may go on refusing writes after the disk has room again before it counts
/// as stopped for good. It resumes by itself within seconds of `DISK_RESERVE_BYTES` being free
/// (it looks every 5 s, then flushes its memtables); one that has rated an error fatal never
/// does, until the database is reopened.
const STOPPED_FOR_GOOD_AFTER: Duration = Duration::from_secs(60);

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

/// Memory RocksDB holds, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageMemory {
    /// Memtables: writes not yet flushed to files, and those being flushed.
    pub memtables: u64,
    /// Index and filter blocks of open files held outside the block cache.
    pub table_readers: u64,
    /// The shared block cache: blocks read from files, their index and filter blocks, and
    /// what the memtables are charged.
    pub block_cache: u64,
    /// The block cache's capacity: the node's budget for all of the above.
    pub budget: u64,
}

/// The database handle shared by the log store and the broker state.
#[derive(Clone)]
pub struct Db {
    pub(crate) inner: Arc<rocksdb::DB>,
    pub(crate) flush: FlushMode,
    /// Set while a write waits for the disk to have room again.
    waiting_for_space: Arc<AtomicBool>,
    /// Set while a write waits because RocksDB refused it for want of space (RocksDB has
    /// stopped all writes until it resumes).
    refused_for_space: Arc<AtomicBool>,
    /// How many times RocksDB has refused a write for want of space: a WAL sync after that
    /// must wait for RocksDB to resume (see `log::sync_when_space`).
    space_stalls: Arc<AtomicU64>,
    /// Keeps writes `DISK_RESERVE_BYTES` short of a full disk (`None`: tests of RocksDB's own
    /// handling of ENOSPC).
    space_guard: Option<Arc<SpaceGuard>>,
    /// The database's folder: its filesystem's free space is what the reserve keeps and what
    /// tells a stall from a stop.
    path: Arc<PathBuf>,
    /// See `STOPPED_FOR_GOOD_AFTER`.
    stopped_for_good_after: Duration,
    /// The block cache every column family shares, charged for the memtables too, and its
    /// capacity.
    cache: Cache,
    memory_budget: usize,
}

/// Checks that a write leaves the reserve free on the data dir's filesystem.
struct SpaceGuard {
    reserve: u64,
    epoch: Instant,
    /// The last reading: free bytes, and when (milliseconds since `epoch`).
    free: AtomicU64,
    read_at_ms: AtomicU64,
}

impl SpaceGuard {
    fn new(reserve: u64) -> SpaceGuard {
        SpaceGuard {
            reserve,
            epoch: Instant::now(),
            free: AtomicU64::new(0),
            read_at_ms: AtomicU64::new(0),
        }
    }

    /// `Err(free bytes)` when a write of `bytes` would leave less than the reserve on the
    /// filesystem of `path` (the database's folder). A recent
    /// reading far from the line is trusted; otherwise the filesystem is read again.
    fn check(&self, path: &Path, bytes: u64) -> Result<(), u64> {
        let needed = self.reserve.saturating_add(bytes);
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        let fresh = now_ms.saturating_sub(self.read_at_ms.load(Ordering::Relaxed))
            < SPACE_READING_TTL.as_millis() as u64;
        if fresh && self.free.load(Ordering::Relaxed) >= needed.saturating_add(SPACE_READING_SLACK)
        {
            return Ok(());
        }
        // A filesystem that cannot tell its free space leaves the decision to RocksDB.
        let Ok(free) = DiskSpace::available_bytes(path) else {
            return Ok(());
        };
        self.free.store(free, Ordering::Relaxed);
        self.read_at_ms.store(now_ms, Ordering::Relaxed);
        if free >= needed { Ok(()) } else { Err(free) }
    }
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
    /// Open with the default memory budget (`DEFAULT_MEMORY_BYTES`), as node 1.
    pub fn open(path: &Path, flush: FlushMode) -> Result<Db, StorageError> {
        Db::open_with_memory(path, flush, DEFAULT_MEMORY_BYTES, 1)
    }

    /// Open with `memory_bytes` for RocksDB's block cache and memtables together: one cache
    /// serves every column family, holds the files' index and filter blocks as well as their
    /// data blocks, and is charged for the memtables, which may take half of it. Without it
    /// each column family had a cache of its own and every open file's index and filter
    /// stayed in memory outside any cache, so a node's memory grew with the log it stores.
    /// `node_id` sets where this node's memtables flush (see `FLUSH_STEPS`).
    pub fn open_with_memory(
        path: &Path,
        mut flush: FlushMode,
        memory_bytes: usize,
        node_id: u64,
    ) -> Result<Db, StorageError> {
        let flush_step = node_id.saturating_sub(1) % FLUSH_STEPS;
        let log_write_buffer_bytes =
            LOG_WRITE_BUFFER_BYTES - flush_step as usize * LOG_WRITE_BUFFER_STEP;
        let max_total_wal_bytes = MAX_TOTAL_WAL_BYTES - flush_step * WAL_LIMIT_STEP;
        tracing::debug!(
            flush_step,
            log_memtable_mib = log_write_buffer_bytes >> 20,
            wal_limit_mib = max_total_wal_bytes >> 20,
            "RocksDB flush points of this node"
        );
        let cache = Cache::new_lru_cache(memory_bytes);
        // Past their half, the memtables are flushed early. Writers are not stalled for it: a
        // stalled write waits inside RocksDB for a flush, which on a full disk never comes,
        // and the full-disk handling (`write_when_space`) needs writes that return.
        let write_buffers = WriteBufferManager::new_write_buffer_manager_with_cache(
            memory_bytes / 2,
            false,
            cache.clone(),
        );
        let mut opts = Options::default();
        opts.set_write_buffer_manager(&write_buffers);
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
        opts.set_max_total_wal_size(max_total_wal_bytes);
        // Write flushed and compacted files out as they grow instead of all at their end: on
        // ext4 a WAL fsync that lands behind 64 MiB of dirty file data waits for all of it
        // (spikes of 100 ms and more in the ack latency).
        opts.set_bytes_per_sync(1 << 20);
        // WAL files no longer needed are kept and written over instead of deleted. Deleting one
        // frees 64-220 MB at once, and on a disk mounted with `discard` (as this project's
        // development VM is) the discard of that range held the device for 25-55 ms per
        // request: every fsync of all three nodes waited behind it (docs/BENCHMARKS.md,
        // 2026-12-06). Overwriting also spares each fsync the file size update. Recovery tells
        // a recycled file's old records from new ones by the log number each record carries.
        opts.set_recycle_log_file_num(WAL_FILES_RECYCLED);
        let cfs = ALL_CFS.iter().map(|name| {
            let mut cf_opts = Options::default();
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            table.set_cache_index_and_filter_blocks(true);
            table.set_cache_index_and_filter_blocks_with_high_priority(true);
            // The newest files take most reads (consumers near the head, dedup lookups):
            // their index and filter blocks stay in the cache.
            table.set_pin_l0_filter_and_index_blocks_in_cache(true);
            if *name == CF_LOG {
                cf_opts.set_write_buffer_size(log_write_buffer_bytes);
                // One compression for every level: the log's keys only grow, so its flushed
                // files never overlap and move down the levels as they are, unless the
                // compression differs at the next level, which would decompress and rewrite
                // every message once more (Zstd at the last level cost a sixth of the
                // throughput, see docs/BENCHMARKS.md). LZ4 gives up quickly on bodies that do
                // not compress.
                cf_opts.set_compression_type(DBCompressionType::Lz4);
            }
            if *name == CF_INDEX {
                // Every stored message looks up its (topic, message id) here to catch a retried
                // send, and almost every lookup misses: a bloom filter answers most misses
                // without reading the files' index blocks.
                table.set_bloom_filter(10.0, false);
                // The memtables too: the newest ids live there, and without a filter every
                // miss walks each memtable's skip list (6 % of a follower's CPU at 10,000
                // sends/s went to these lookups, half of it in memtables).
                cf_opts.set_memtable_prefix_bloom_ratio(0.1);
                cf_opts.set_memtable_whole_key_filtering(true);
            }
            cf_opts.set_block_based_table_factory(&table);
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
            refused_for_space: Arc::new(AtomicBool::new(false)),
            space_stalls: Arc::new(AtomicU64::new(0)),
            space_guard: Some(Arc::new(SpaceGuard::new(DISK_RESERVE_BYTES))),
            path: Arc::new(path.to_path_buf()),
            stopped_for_good_after: STOPPED_FOR_GOOD_AFTER,
            cache,
            memory_budget: memory_bytes,
        })
    }

    /// Let writes fill the disk to the last byte, so that RocksDB itself meets ENOSPC: for
    /// tests of how a node rides that out (see [`Db::write_when_space`]).
    pub fn without_space_reserve(mut self) -> Db {
        self.space_guard = None;
        self
    }

    /// Count RocksDB as stopped for good after `after` of refusals on a disk with room, instead
    /// of a minute: for tests.
    pub fn stopped_for_good_after(mut self, after: Duration) -> Db {
        self.stopped_for_good_after = after;
        self
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
                let bytes = self.int_property(name, "rocksdb.total-sst-files-size")
                    + self.int_property(name, "rocksdb.size-all-mem-tables");
                (*name, bytes)
            })
            .collect()
    }

    /// The memory RocksDB holds, summed over the column families.
    pub fn memory(&self) -> StorageMemory {
        let sum = |key: &str| -> u64 {
            ALL_CFS
                .iter()
                .map(|name| self.int_property(name, key))
                .sum()
        };
        StorageMemory {
            memtables: sum("rocksdb.size-all-mem-tables"),
            table_readers: sum("rocksdb.estimate-table-readers-mem"),
            block_cache: self.cache.get_usage() as u64,
            budget: self.memory_budget as u64,
        }
    }

    /// A column family's integer property (0 if RocksDB does not report it).
    fn int_property(&self, cf: &'static str, key: &str) -> u64 {
        self.inner
            .property_int_value_cf(&self.cf(cf), key)
            .ok()
            .flatten()
            .unwrap_or(0)
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

    /// Look several keys of one column family up in one batched read: RocksDB then takes its
    /// view of the memtables and files once, and checks each file's filter and index for all
    /// the keys together, instead of once per key.
    pub(crate) fn multi_get<K: AsRef<[u8]>>(
        &self,
        cf: &'static str,
        keys: &[K],
    ) -> Result<Vec<Option<rocksdb::DBPinnableSlice<'_>>>, StorageError> {
        self.inner
            .batched_multi_get_cf(&self.cf(cf), keys.iter(), false)
            .into_iter()
            .map(|value| value.map_err(|source| StorageError::Read { cf, source }))
            .collect()
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
    /// waits, retrying, until there is room again. Writes stop `DISK_RESERVE_BYTES` short of
    /// a full disk, so RocksDB seldom meets ENOSPC itself; when it does (another program
    /// filled the disk) it stops all writes and resumes by itself once enough space is free
    /// (its SstFileManager checks every few seconds), first flushing its memtables so the WAL
    /// that saw the error is no longer needed. Meanwhile this node stalls like a paused one
    /// and the rest of the group goes on.
    pub(crate) fn write_when_space(
        &self,
        cf: &'static str,
        sync: bool,
        build: impl FnMut() -> rocksdb::WriteBatch,
    ) -> Result<(), StorageError> {
        self.write_retrying(cf, sync, true, build)
    }

    /// Make every write that went before durable with a synced write of an empty batch,
    /// waiting while RocksDB refuses writes for want of space. Unlike a WAL sync, RocksDB
    /// turns that write away untouched while it is stopped (see `log::sync_when_space`). The
    /// write adds nothing, so the disk's reserve does not apply to it.
    pub(crate) fn sync_by_write(&self) -> Result<(), StorageError> {
        self.write_retrying(CF_RAFT, true, false, rocksdb::WriteBatch::default)
    }

    fn write_retrying(
        &self,
        cf: &'static str,
        sync: bool,
        keep_reserve: bool,
        mut build: impl FnMut() -> rocksdb::WriteBatch,
    ) -> Result<(), StorageError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        let mut waiting_since: Option<Instant> = None;
        // Since when RocksDB has refused writes although the disk has room.
        let mut room_since: Option<Instant> = None;
        let stalls_before = self.space_stalls();
        loop {
            let batch = build();
            if keep_reserve
                && let Some(guard) = &self.space_guard
                && let Err(free) = guard.check(&self.path, batch.size_in_bytes() as u64)
            {
                if waiting_since.is_none() {
                    waiting_since = Some(Instant::now());
                    let reason = format!(
                        "{free} bytes free, the last {} MiB are kept for RocksDB",
                        DISK_RESERVE_BYTES >> 20
                    );
                    self.begin_space_stall(cf, &reason);
                }
                pause_for_space();
                continue;
            }
            match self.inner.write_opt(batch, &opts) {
                Ok(()) => {
                    if let Some(since) = waiting_since {
                        self.waiting_for_space.store(false, Ordering::Relaxed);
                        self.refused_for_space.store(false, Ordering::Relaxed);
                        tracing::warn!(
                            cf,
                            waited_ms = since.elapsed().as_millis() as u64,
                            "the disk has room again: writes go on"
                        );
                    }
                    return Ok(());
                }
                Err(source) if is_no_space(&source) => {
                    if !self.refused_for_space.swap(true, Ordering::Relaxed) {
                        self.space_stalls.fetch_add(1, Ordering::Relaxed);
                    }
                    if waiting_since.is_none() {
                        waiting_since = Some(Instant::now());
                        self.begin_space_stall(cf, &source);
                    }
                    pause_for_space();
                    self.check_not_stopped_for_good(cf, &mut room_since)?;
                }
                Err(source) => {
                    // A write beside one that met ENOSPC fails with "Writer has previous
                    // error", which does not name the disk: it is the same stall. That write
                    // may not have counted its stall yet, so look again after the pause.
                    pause_for_space();
                    if self.stalled_since(stalls_before) {
                        self.check_not_stopped_for_good(cf, &mut room_since)?;
                        continue;
                    }
                    return Err(StorageError::Write { cf, source });
                }
            }
        }
    }

    /// Fail a write that RocksDB has gone on refusing for `stopped_for_good_after` while the
    /// disk had room for it to resume: it has rated an error fatal (see
    /// `log::sync_when_space`) and will not take a write again until the database is reopened.
    /// The failed write stops the node's Raft core and the process exits, so its supervisor
    /// restarts it: waiting on would leave the group a replica short for good, unannounced.
    fn check_not_stopped_for_good(
        &self,
        cf: &'static str,
        room_since: &mut Option<Instant>,
    ) -> Result<(), StorageError> {
        let room =
            DiskSpace::available_bytes(&self.path).is_ok_and(|free| free >= 2 * DISK_RESERVE_BYTES);
        if !room {
            *room_since = None;
            return Ok(());
        }
        let waited = room_since.get_or_insert_with(Instant::now).elapsed();
        if waited < self.stopped_for_good_after {
            return Ok(());
        }
        Err(StorageError::StoppedForGood {
            cf,
            waited_secs: waited.as_secs(),
        })
    }

    fn begin_space_stall(&self, cf: &'static str, reason: &dyn std::fmt::Display) {
        self.waiting_for_space.store(true, Ordering::Relaxed);
        metrics::counter!("raftmq_disk_full_stalls_total").increment(1);
        tracing::error!(
            cf,
            reason = %reason,
            "the data dir's disk is full: this node's writes wait until space is freed"
        );
    }

    /// Whether a write is waiting for the disk to have room (see [`Db::write_when_space`]).
    pub fn waiting_for_space(&self) -> bool {
        self.waiting_for_space.load(Ordering::Relaxed)
    }

    /// How many times RocksDB has stopped for want of space since the database was opened.
    pub(crate) fn space_stalls(&self) -> u64 {
        self.space_stalls.load(Ordering::Relaxed)
    }

    /// Whether RocksDB refuses writes for want of space now, or began to since `space_stalls`
    /// read `stalls`: an error that does not name the disk is then part of that stall.
    pub(crate) fn stalled_since(&self, stalls: u64) -> bool {
        self.refused_for_space.load(Ordering::Relaxed) || self.space_stalls() != stalls
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

#[cfg(test)]
#[path = "db_test.rs"]
mod tests;
