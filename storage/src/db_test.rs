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
    let db = Db::open_with_memory(dir.path(), FlushMode::Async, budget as usize).expect("open");
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
