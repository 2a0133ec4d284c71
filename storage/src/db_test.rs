use rand::RngCore;
use rocksdb::WriteBatch;

use super::*;
use crate::keys;

/// Write `chunks` MiB of incompressible 1 KiB log entries, each with its dedup record,
/// starting at log index `first`.
fn write_log(db: &Db, first: u64, chunks: u64) {
    let mut rng = rand::rng();
    let mut body = vec![0u8; 1024];
    for chunk in 0..chunks {
        let mut batch = WriteBatch::default();
        let start = first + chunk * 1024;
        for n in start..start + 1024 {
            rng.fill_bytes(&mut body);
            batch.put_cf(&db.cf(CF_LOG), keys::log_key(n), &body);
            batch.put_cf(&db.cf(CF_INDEX), dedup_id(n), b"first");
        }
        db.inner.write(batch).expect("write");
    }
}

fn dedup_id(n: u64) -> Vec<u8> {
    keys::dedup_key(0, "topic", &format!("{n:032x}"))
}

/// A node whose RocksDB may use 64 MiB stores 160 MiB of log: the memtables are charged to
/// the shared cache, and the files' index and filter blocks are held in that cache instead of
/// piling up outside it as the log grows.
#[test]
fn memtables_index_and_filter_blocks_all_count_in_the_shared_cache() {
    let dir = tempfile::tempdir().expect("temp dir");
    let budget: u64 = 64 << 20;
    let db = Db::open_with_memory(dir.path(), FlushMode::Async, budget as usize, 1).expect("open");
    assert_eq!(budget, db.memory().budget);

    // 8 MiB, far from any flush: all of it in memtables, and charged to the cache.
    write_log(&db, 0, 8);
    let memory = db.memory();
    assert!(memory.memtables >= 8 << 20, "{memory:?}");
    assert!(
        memory.block_cache >= memory.memtables,
        "the memtables are not charged to the shared cache: {memory:?}"
    );

    write_log(&db, 8 * 1024, 152);
    db.inner.flush_cf(&db.cf(CF_LOG)).expect("flush the log");
    db.inner
        .flush_cf(&db.cf(CF_INDEX))
        .expect("flush the index");
    // Read from every part of the files, as consumers and dedup lookups do.
    for n in (0..160 * 1024).step_by(997) {
        assert!(db.get(CF_LOG, &keys::log_key(n)).expect("read").is_some());
        assert!(db.get(CF_INDEX, &dedup_id(n)).expect("read").is_some());
    }
    let memory = db.memory();
    println!("{memory:?}");
    // Outside the cache only the table readers' own small structures remain (kept outside,
    // these files' index blocks took 1.1 MB: about 7 MB per GB of log, for ever).
    assert!(
        memory.table_readers < 128 << 10,
        "index and filter blocks are held outside the cache: {memory:?}"
    );
    assert!(
        memory.block_cache > 0 && memory.block_cache <= budget,
        "the shared cache holds {} bytes, budget {budget}",
        memory.block_cache
    );
}

/// Names the folder `wal_crash_writer` writes to; without it that test does nothing.
const WAL_CRASH_DIR_ENV: &str = "RAFTMQ_TEST_WAL_CRASH_DIR";
/// Synced appends between two flushes of every column family, which make the WAL file in use
/// spent: the next WAL file is then a recycled one, written over.
const APPENDS_PER_WAL_FILE: u64 = 500;

/// A 1 KiB log record whose bytes say which index it is for.
fn crash_record(index: u64) -> Vec<u8> {
    index.to_be_bytes().repeat(128)
}

/// The writer half of `a_writer_killed_on_recycled_wal_files_loses_no_synced_entry`, run by
/// it in a child process: appends records through the log store with `flush = sync`, one at a
/// time, prints `durable N` once record N is synced, and makes its WAL file spent every
/// `APPENDS_PER_WAL_FILE` records, until it is killed.
#[test]
#[ignore = "started by a_writer_killed_on_recycled_wal_files_loses_no_synced_entry"]
fn wal_crash_writer() {
    use std::io::Write;
    let Some(dir) = std::env::var_os(WAL_CRASH_DIR_ENV) else {
        return;
    };
    let db = Db::open(Path::new(&dir), FlushMode::Sync).expect("open");
    let log = crate::log::LogStore::new(db.clone());
    let mut out = std::io::stdout().lock();
    for index in 1.. {
        let record = crate::log::LogRecord {
            index,
            bytes: crash_record(index).into(),
        };
        let (durable, synced) = std::sync::mpsc::channel();
        log.append_records(
            &[record],
            Box::new(move |result| durable.send(result).expect("the writer waits")),
        )
        .expect("append");
        synced
            .recv()
            .expect("the sync thread answers")
            .expect("sync");
        writeln!(out, "durable {index}").expect("stdout");
        out.flush().expect("stdout");
        if index % APPENDS_PER_WAL_FILE == 0 {
            for name in ALL_CFS {
                db.inner.flush_cf(&db.cf(name)).expect("flush");
            }
        }
    }
}

/// kill -9 while the WAL is written over recycled files: after reopening, every record
/// reported synced is there, byte for byte, and no stale record of a file's earlier life is
/// taken for a new one (the log holds nothing but a gapless run of this writer's records).
#[test]
fn a_writer_killed_on_recycled_wal_files_loses_no_synced_entry() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut writer = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "db::tests::wal_crash_writer",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(WAL_CRASH_DIR_ENV, dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the writer");
    let mut lines = std::io::BufReader::new(writer.stdout.take().expect("piped")).lines();
    let durable_index = |line: &str| line.strip_prefix("durable ")?.parse::<u64>().ok();
    // Past six spent WAL files, and mid-way through the next one, the writer is killed.
    let kill_after = 6 * APPENDS_PER_WAL_FILE + APPENDS_PER_WAL_FILE / 3;
    let mut last_durable = 0;
    for line in lines.by_ref() {
        if let Some(index) = durable_index(&line.expect("read the writer")) {
            last_durable = index;
            if index >= kill_after {
                break;
            }
        }
    }
    assert!(
        last_durable >= kill_after,
        "the writer stopped at {last_durable}"
    );
    writer.kill().expect("SIGKILL the writer");
    // Lines the writer printed before it died are still in the pipe.
    for line in lines.map_while(Result::ok) {
        last_durable = durable_index(&line).unwrap_or(last_durable);
    }
    writer.wait().expect("reap the writer");

    let info_log = std::fs::read_to_string(dir.path().join("LOG")).expect("RocksDB's info log");
    let reused = info_log.matches("from recycle list").count();
    assert!(
        reused >= 3,
        "the writer wrote over {reused} spent WAL files; the test needs at least 3"
    );
    let db = Db::open(dir.path(), FlushMode::Sync).expect("reopen after the kill");
    let mut index = 1;
    while let Some(bytes) = db.get(CF_LOG, &keys::log_key(index)).expect("read") {
        assert_eq!(crash_record(index), bytes, "record {index}");
        index += 1;
    }
    let stored = index - 1;
    assert!(
        stored >= last_durable,
        "records {} to {last_durable} were reported synced and are lost",
        stored + 1
    );
    let log_keys = db
        .inner
        .iterator_cf(&db.cf(CF_LOG), rocksdb::IteratorMode::Start)
        .count() as u64;
    assert_eq!(stored, log_keys, "the log holds records past a gap");
}

/// The nodes of a group flush their log at different points (see `FLUSH_STEPS`): after the
/// same 46 MiB of log, node 3's 40 MiB memtable has gone to a file, while nodes 1 and 2 (64
/// and 52 MiB) still hold all of it in memory. Node 4 flushes where node 1 does.
#[test]
fn the_nodes_of_a_group_flush_their_log_at_different_points() {
    let flushed: Vec<u64> = (1..=4)
        .map(|node_id| {
            let dir = tempfile::tempdir().expect("temp dir");
            let db =
                Db::open_with_memory(dir.path(), FlushMode::Async, DEFAULT_MEMORY_BYTES, node_id)
                    .expect("open");
            write_log(&db, 0, 46);
            // A full memtable is flushed in the background: wait until none is left to flush.
            let give_up = Instant::now() + Duration::from_secs(30);
            while db.int_property(CF_LOG, "rocksdb.num-immutable-mem-table") > 0 {
                assert!(
                    Instant::now() < give_up,
                    "node {node_id}: the log's flush never ended"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            db.int_property(CF_LOG, "rocksdb.total-sst-files-size")
        })
        .collect();
    assert_eq!(flushed[0], 0, "node 1 flushed its log early: {flushed:?}");
    assert_eq!(flushed[1], 0, "node 2 flushed its log early: {flushed:?}");
    assert!(
        flushed[2] > 32 << 20,
        "node 3 did not flush its log: {flushed:?}"
    );
    assert_eq!(flushed[3], 0, "node 4 flushed its log early: {flushed:?}");
}
