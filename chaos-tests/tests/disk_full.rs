//! The storage layer on a disk that fills to the last byte (root needed: the data dir is a small
//! tmpfs, as in the chaos suite's disk faults).
//!
//! Writes stop short of a full disk, keeping a reserve free for RocksDB; the chaos suite's disk
//! faults therefore meet that reserve, not ENOSPC. Here the writes are large enough to need new
//! space at once: each must wait while the disk is full, none may fail, and all must be there,
//! durable, once space returns, both at the reserve and, with the reserve off, when RocksDB
//! itself meets ENOSPC and must resume.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chaos_tests::disk;
use raftmq_proto::raft::v1 as pb;
use raftmq_storage::{Db, FlushMode, LogStore};

/// Unmounts the small disk even when the test fails.
struct SmallDisk(PathBuf);

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if let Err(e) = disk::unmount(&self.0, false) {
            eprintln!("{e:#}");
        }
    }
}

const BODY_BYTES: usize = 1 << 20;
const ENTRIES: u64 = 120;

fn entry(index: u64) -> pb::Entry {
    let message = pb::StoredMessage {
        topic: "full".into(),
        message_id: format!("m{index}"),
        body: vec![(index % 251) as u8; BODY_BYTES].into(),
        ..Default::default()
    };
    pb::Entry {
        log_id: Some(pb::LogId {
            leader_id: Some(pb::LeaderId {
                term: 1,
                node_id: 1,
            }),
            index,
        }),
        payload: Some(pb::entry::Payload::Command(pb::Command {
            kind: Some(pb::command::Kind::Append(pb::AppendMessages {
                messages: vec![message],
            })),
        })),
    }
}

fn body_of(entry: &pb::Entry) -> Option<&[u8]> {
    match &entry.payload {
        Some(pb::entry::Payload::Command(pb::Command {
            kind: Some(pb::command::Kind::Append(append)),
        })) => append.messages.first().map(|m| &m.body[..]),
        _ => None,
    }
}

fn check_all_entries(log: &LogStore) {
    let entries = log.read_range(1, ENTRIES + 1).expect("read the log back");
    assert_eq!(ENTRIES as usize, entries.len(), "entries missing");
    for (i, entry) in entries.iter().enumerate() {
        let index = i as u64 + 1;
        let body = body_of(entry).expect("a message entry");
        assert!(
            body.len() == BODY_BYTES && body.iter().all(|b| *b == (index % 251) as u8),
            "entry {index} came back damaged"
        );
    }
}

/// Whether writes keep the disk reserve free (the default) or fill the disk to the last byte,
/// so that RocksDB itself meets ENOSPC.
#[derive(Clone, Copy)]
enum Reserve {
    Kept,
    Off,
}

fn open(dir: &Path, reserve: Reserve) -> (Db, LogStore) {
    let db = Db::open(&dir.join("rocksdb"), FlushMode::Sync).expect("open the database");
    let db = match reserve {
        Reserve::Kept => db,
        Reserve::Off => db.without_space_reserve(),
    };
    let log = LogStore::new(db.clone());
    (db, log)
}

type Writer = std::thread::JoinHandle<Result<(), String>>;

/// Wait until the writer's appends wait on the full disk; none may have failed or gone through.
fn wait_until_a_write_waits(db: &Db, writer: &Writer) {
    let give_up = Instant::now() + Duration::from_secs(60);
    while !db.waiting_for_space() {
        assert!(
            !writer.is_finished(),
            "every write went through on a full disk"
        );
        assert!(Instant::now() < give_up, "no write ever waited for space");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait up to a minute for the writer to end, or fail with `what` and RocksDB's error lines.
fn wait_until_finished(writer: &Writer, dir: &Path, what: &str) {
    let give_up = Instant::now() + Duration::from_secs(60);
    while !writer.is_finished() {
        assert!(
            Instant::now() < give_up,
            "{what}; RocksDB logged:\n{}",
            disk::rocksdb_error_lines(&dir.join("rocksdb"), 40)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn log_writes_on_a_full_disk_wait_at_the_reserve_and_all_land_once_space_returns() {
    appends_on_a_full_disk_wait_and_land(Reserve::Kept);
}

/// RocksDB stops all writes after an ENOSPC; a WAL sync in that state would make it stop for
/// good, so durability must wait for it to resume.
#[test]
fn log_writes_that_meet_enospc_wait_and_all_land_once_rocksdb_resumes() {
    appends_on_a_full_disk_wait_and_land(Reserve::Off);
}

fn appends_on_a_full_disk_wait_and_land(reserve: Reserve) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    disk::mount_small_disk(&dir, 256).expect("mount a small disk (root needed)");
    let _mounted = SmallDisk(dir.clone());
    let (db, log) = open(&dir, reserve);
    disk::fill(&dir, 0).expect("fill the disk");

    // Append from another thread, as openraft's core would; each append reports durability.
    let (durable_tx, durable_rx) = mpsc::channel();
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for index in 1..=ENTRIES {
                let tx = durable_tx.clone();
                log.append(
                    &[entry(index)],
                    Box::new(move |result| {
                        let _ = tx.send((index, result.map_err(|e| e.to_string())));
                    }),
                )
                .map_err(|e| format!("append {index}: {e}"))?;
            }
            Ok::<(), String>(())
        })
    };

    // The writes must come to wait on the full disk, not fail.
    wait_until_a_write_waits(&db, &writer);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !writer.is_finished(),
        "a write stopped waiting while the disk was still full"
    );

    disk::unfill(&dir).expect("free the space");
    // At the reserve, writes go on at once; after an ENOSPC, once RocksDB has resumed (it
    // checks the free space every 5 s).
    wait_until_finished(&writer, &dir, "writes did not resume after space came back");
    writer.join().unwrap().expect("no append failed");
    let mut durable = Vec::new();
    while durable.len() < ENTRIES as usize {
        let (index, result) = durable_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("every append reports durability");
        result.unwrap_or_else(|e| panic!("append {index} was not made durable: {e}"));
        durable.push(index);
    }
    assert!(!db.waiting_for_space());
    check_all_entries(&log);

    // And it survives a restart.
    drop(log);
    drop(db);
    let (_db, log) = open(&dir, reserve);
    check_all_entries(&log);
}

/// A whole group with the mark off (`min_free_disk_mb = 0`), so that a follower's disk really
/// fills: large messages go on being acknowledged by the two other nodes while that follower
/// waits on ENOSPC (the admin API shows it FULL), and once space returns it catches up by
/// itself and holds every message, like the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_whose_disk_fills_stalls_and_catches_up_by_itself() -> anyhow::Result<()> {
    use chaos_tests::cluster::{Cluster, ClusterOptions};
    use chaos_tests::history::{History, check_every_node};

    let cluster = Cluster::start(ClusterOptions {
        // Room for the 150 MiB of messages, RocksDB's WAL and the 64 MiB reserve each node
        // keeps free, on the two nodes that go on.
        data_dir_mb: Some(384),
        extra_args: vec!["--min-free-disk-mb".into(), "0".into()],
        ..Default::default()
    })
    .await?;
    cluster.create_topic("big", 2).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let follower = cluster
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|id| *id != leader)
        .expect("a follower");
    cluster.fill_disk(follower, 0)?;

    // 1 MiB bodies: more than RocksDB preallocated for its WAL, so the follower meets ENOSPC.
    let history = History::default();
    let client = cluster.node_client(leader);
    let mut saw_full = false;
    for seq in 0..150 {
        let body = format!("{seq}:{}", "x".repeat(1 << 20));
        history
            .send_until_acked(&client, "big", body, Duration::from_secs(10))
            .await
            .map_err(|e| anyhow::anyhow!("send {seq} with one follower full: {e}"))?;
        if seq % 10 == 9 && !saw_full {
            saw_full = cluster
                .statuses()
                .await
                .iter()
                .any(|(id, s)| *id == follower && s.as_ref().is_some_and(|s| s.disk_full));
        }
    }
    assert!(saw_full, "node {follower} never reported its disk full");
    assert!(
        cluster
            .wait_caught_up(Duration::from_secs(2))
            .await
            .is_err(),
        "node {follower} kept up on a full disk"
    );

    cluster.unfill_disk(follower)?;
    cluster
        .wait_caught_up(Duration::from_secs(60))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{e:#}\nnode {follower}'s RocksDB logged:\n{}\n{}",
                cluster.rocksdb_errors(follower, 40),
                cluster.log_tails(30)
            )
        })?;
    let stored = check_every_node(&cluster, &history, "big", 2).await?;
    assert_eq!(150, stored.len());
    Ok(())
}

/// A RocksDB that has stopped for good (made so here on purpose, with the WAL sync during a
/// stall that `log::sync_when_space` avoids) never takes a write again, whatever space is
/// freed. The waiting write must then fail, once the disk has had room for a while, with an
/// error that says so (the node's Raft core stops and the process exits for its supervisor to
/// restart it) instead of waiting forever; the reopened database takes writes again and has
/// lost nothing that was durable.
#[test]
fn a_write_fails_clearly_once_rocksdb_has_stopped_for_good_and_a_reopen_heals_it() {
    const DURABLE: u64 = 5;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    disk::mount_small_disk(&dir, 256).expect("mount a small disk (root needed)");
    let _mounted = SmallDisk(dir.clone());
    let db = Db::open(&dir.join("rocksdb"), FlushMode::Sync)
        .expect("open the database")
        .without_space_reserve()
        // Past two of RocksDB's 5 s looks at the free space: it has tried to resume by then.
        .stopped_for_good_after(Duration::from_secs(12));
    let log = LogStore::new(db.clone());
    let (durable_tx, durable_rx) = mpsc::channel();
    for index in 1..=DURABLE {
        let tx = durable_tx.clone();
        log.append(
            &[entry(index)],
            Box::new(move |result| {
                let _ = tx.send(result.map_err(|e| e.to_string()));
            }),
        )
        .expect("append before the disk fills");
    }
    for _ in 1..=DURABLE {
        durable_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("durability reported")
            .expect("durable before the disk fills");
    }

    disk::fill(&dir, 0).expect("fill the disk");
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for index in DURABLE + 1..=ENTRIES {
                log.append(&[entry(index)], Box::new(|_| {}))
                    .map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        })
    };
    wait_until_a_write_waits(&db, &writer);
    std::thread::sleep(Duration::from_millis(300));
    // The WAL writer has failed with ENOSPC: syncing it now is what RocksDB rates fatal.
    assert!(
        db.sync_wal().is_err(),
        "a WAL sync during the stall succeeded"
    );
    disk::unfill(&dir).expect("free the space");

    wait_until_finished(
        &writer,
        &dir,
        "the write still waits a minute after space came back",
    );
    let failed = writer
        .join()
        .unwrap()
        .expect_err("a write went through on a database stopped for good");
    assert!(
        failed.contains("stopped for good") && failed.contains("restarting the node"),
        "unclear error: {failed}"
    );
    assert!(
        disk::rocksdb_error_lines(&dir.join("rocksdb"), 40).contains("Fatal"),
        "the test did not make RocksDB stop for good"
    );

    // Reopened (what a restart does), the database has every durable entry and takes more.
    drop(log);
    drop(db);
    let (_db, log) = open(&dir, Reserve::Kept);
    let entries = log.read_range(1, ENTRIES + 1).expect("read the log back");
    assert!(entries.len() as u64 >= DURABLE, "durable entries lost");
    for (i, entry) in entries.iter().enumerate() {
        let index = i as u64 + 1;
        assert!(
            body_of(entry).is_some_and(
                |b| b.len() == BODY_BYTES && b.iter().all(|x| *x == (index % 251) as u8)
            ),
            "entry {index} came back damaged"
        );
    }
    let next = entries.len() as u64 + 1;
    let (tx, rx) = mpsc::channel();
    log.append(
        &[entry(next)],
        Box::new(move |result| {
            let _ = tx.send(result.map_err(|e| e.to_string()));
        }),
    )
    .expect("an append after the reopen");
    rx.recv_timeout(Duration::from_secs(30))
        .expect("durability reported")
        .expect("durable after the reopen");
}

/// A leader whose disk fills to the last byte stops in its first log append (its Raft core
/// waits there for space), and its followers elect another. Its clients must not wait for its
/// disk: it passes their calls to the new leader, which it hears from. `min_free_disk` is off
/// here, so that nothing but the stalled core stands between those calls and the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_stopped_by_a_full_disk_passes_its_clients_calls_to_its_successor()
-> anyhow::Result<()> {
    use chaos_tests::cluster::{Cluster, ClusterOptions};
    use chaos_tests::history::{History, check_every_node};

    let cluster = Cluster::start(ClusterOptions {
        data_dir_mb: Some(384),
        extra_args: vec!["--min-free-disk-mb".into(), "0".into()],
        ..Default::default()
    })
    .await?;
    cluster.create_topic("t", 2).await?;
    let old_leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let history = History::default();
    // Only the old leader's client port: every call of this client goes through it.
    let client = cluster.node_client(old_leader);
    history
        .send_until_acked(&client, "t", "before".into(), Duration::from_secs(10))
        .await?;

    cluster.fill_disk(old_leader, 0)?;
    let filled = Instant::now();
    let mut first_ack_after = None;
    for seq in 0..20 {
        history
            .send_until_acked(&client, "t", format!("full-{seq}"), Duration::from_secs(10))
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "send {seq} through node {old_leader}, its disk full: {e}\n{}",
                    cluster.log_tails(20)
                )
            })?;
        first_ack_after.get_or_insert(filled.elapsed());
    }
    let statuses = cluster.statuses().await;
    let stalled = statuses
        .iter()
        .any(|(id, s)| *id == old_leader && s.as_ref().is_some_and(|s| s.disk_full));
    assert!(
        stalled,
        "node {old_leader}'s writes should still wait for space; statuses: {statuses:?}"
    );
    let new_leader = statuses
        .iter()
        .filter(|(id, _)| *id != old_leader)
        .find_map(|(_, s)| s.as_ref().and_then(|s| s.leader_id))
        .expect("a follower names a leader");
    assert_ne!(
        new_leader, old_leader,
        "the followers should elect another leader"
    );
    eprintln!(
        "first ack through node {old_leader} {:?} after its disk filled; node {new_leader} leads",
        first_ack_after.expect("twenty acks")
    );

    cluster.unfill_disk(old_leader)?;
    cluster.wait_caught_up(Duration::from_secs(60)).await?;
    let stored = check_every_node(&cluster, &history, "t", 2).await?;
    assert_eq!(21, stored.len());
    Ok(())
}
