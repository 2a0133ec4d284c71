//! Durability across leader failures, with three real broker processes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chaos_tests::cluster::{Cluster, ClusterOptions, sample};
use chaos_tests::history::{History, check_every_node, read_topic, replicas_identical};
use raftmq::client::ClientError;
use raftmq_proto::rocketmq::v2::Code;

const TOPIC: &str = "durable";
const QUEUES: i32 = 8;
const PRODUCERS: usize = 32;
const MESSAGES_PER_PRODUCER: usize = 320;

/// Wait until `history` holds at least `count` acknowledgements.
async fn wait_for_acks(history: &History, count: usize, timeout: Duration) {
    let give_up = Instant::now() + timeout;
    while history.acked() < count {
        assert!(
            Instant::now() < give_up,
            "only {} of {count} sends acknowledged after {timeout:?}",
            history.acked()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_messages_survive_two_leader_kills() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.create_topic(TOPIC, QUEUES as u32).await?;
    let history = Arc::new(History::default());
    let stop = Arc::new(AtomicBool::new(false));

    // Each producer sends its messages one after another, retrying each (same message id)
    // until it is acknowledged.
    let mut producers = Vec::new();
    for producer in 0..PRODUCERS {
        let client = cluster.client();
        let history = history.clone();
        let stop = stop.clone();
        producers.push(tokio::spawn(async move {
            for seq in 0..MESSAGES_PER_PRODUCER {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let body = format!("p{producer}:s{seq}");
                if let Err(e) = history
                    .send_until_acked(&client, TOPIC, body.clone(), Duration::from_secs(30))
                    .await
                {
                    panic!("{body} was never acknowledged: {e}");
                }
            }
        }));
    }

    let total = PRODUCERS * MESSAGES_PER_PRODUCER;
    let mut killed = Vec::new();
    for at in [total / 3, 2 * total / 3] {
        wait_for_acks(&history, at, Duration::from_secs(120)).await;
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
        let wall_ms = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
        };
        let killed_wall_ms = wall_ms();
        cluster.kill_node(leader);
        killed.push(leader);
        let killed_at = Instant::now();
        let new_leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
        assert_ne!(new_leader, leader);
        // The new leader says when it was elected (the drills time failovers by it); the
        // others lead nothing.
        for (id, status) in cluster.statuses().await {
            let Some(status) = status else { continue };
            match status.leading_since_ms {
                Some(since) if id == new_leader => assert!(
                    (killed_wall_ms..=wall_ms()).contains(&since),
                    "node {id} says it leads since {since}, the kill was at {killed_wall_ms}"
                ),
                None if id != new_leader => {}
                other => panic!("node {id} (leader {new_leader}) reports leading since {other:?}"),
            }
        }
        let before = history.acked();
        wait_for_acks(&history, before + 1, Duration::from_secs(10)).await;
        eprintln!(
            "killed leader {leader} at {} acks; node {new_leader} leads; next ack after {:?}",
            before,
            killed_at.elapsed()
        );
        // Bring the killed node back so that the next kill leaves a majority.
        cluster.start_node(leader)?;
    }

    for producer in producers {
        producer.await?;
    }
    assert_eq!(history.acked(), total, "every send was acknowledged");
    eprintln!(
        "killed leaders {killed:?}; {} acknowledged",
        history.acked()
    );

    cluster.wait_caught_up(Duration::from_secs(60)).await?;
    let stored = check_every_node(&cluster, &history, TOPIC, QUEUES).await?;
    assert_eq!(stored.len(), total);
    let used_queues: std::collections::BTreeSet<i32> = stored.iter().map(|s| s.queue_id).collect();
    assert_eq!(
        used_queues.len(),
        QUEUES as usize,
        "messages spread over every queue"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_follower_catches_up_completely() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.create_topic(TOPIC, QUEUES as u32).await?;
    let history = History::default();
    let client = cluster.client();
    history
        .send_numbered(&client, TOPIC, "before", 500, Duration::from_secs(10))
        .await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    cluster.wipe_node(follower)?;
    // Writes continue while the follower is gone, and after it is back.
    history
        .send_numbered(&client, TOPIC, "during", 300, Duration::from_secs(10))
        .await?;
    cluster.start_node(follower)?;
    history
        .send_numbered(&client, TOPIC, "after", 200, Duration::from_secs(10))
        .await?;
    cluster.wait_caught_up(Duration::from_secs(60)).await?;
    let stored = check_every_node(&cluster, &history, TOPIC, QUEUES).await?;
    assert_eq!(stored.len(), 1000);
    Ok(())
}

/// With `catchup_mb_per_sec`, a follower refilling an empty disk gets what it missed no faster
/// than the limit allows, sends go on being acknowledged meanwhile, and it still ends with
/// every message. Live replication is not counted as catch-up, and the limit can be lifted
/// while the node runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_follower_refills_within_the_catchup_limit() -> anyhow::Result<()> {
    const LIMIT_MIB: u64 = 1;
    // One entry per send (they go one at a time); the 1,000 entries nearest the commit index
    // are not catch-up, so about 1,500 x 4 KiB = 6 MiB of these are limited.
    const FILL: usize = 2_500;
    let mut cluster = Cluster::start(ClusterOptions {
        extra_args: vec!["--catchup-mb-per-sec".into(), LIMIT_MIB.to_string()],
        ..Default::default()
    })
    .await?;
    cluster.create_topic(TOPIC, QUEUES as u32).await?;
    let history = History::default();
    let client = cluster.client();
    let padding = "x".repeat(4096);
    for seq in 0..FILL {
        history
            .send_until_acked(
                &client,
                TOPIC,
                format!("fill:{seq}:{padding}"),
                Duration::from_secs(10),
            )
            .await?;
    }
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let catchup_bytes = |text: &str| sample(text, "raftmq_replication_catchup_bytes_total");
    let live_only = catchup_bytes(&cluster.metrics(leader).await?);
    assert!(
        live_only.unwrap_or(0.0) == 0.0,
        "live replication counted as catch-up: {live_only:?} bytes"
    );

    let follower = (1..=3).find(|id| *id != leader).unwrap();
    cluster.wipe_node(follower)?;
    cluster.start_node(follower)?;
    let started = Instant::now();
    history
        .send_numbered(&client, TOPIC, "during", 50, Duration::from_secs(10))
        .await?;
    cluster.wait_caught_up(Duration::from_secs(60)).await?;
    let refill = started.elapsed();
    let sent = catchup_bytes(&cluster.metrics(leader).await?).unwrap_or(0.0);
    eprintln!("refilled in {refill:?}; {sent} bytes sent as catch-up");
    assert!(
        sent >= 5.0 * 1024.0 * 1024.0,
        "{sent} bytes sent as catch-up"
    );
    // The first second's budget goes at once; the rest at the limit.
    let fastest = Duration::from_secs_f64(sent / (LIMIT_MIB << 20) as f64 - 1.0);
    assert!(
        refill >= fastest,
        "{sent} bytes of catch-up in {refill:?}: faster than {LIMIT_MIB} MiB/s"
    );

    // The limit changes at run time on the HTTP port: lifted, the next refill is faster than
    // the old limit would allow.
    let http = reqwest::Client::new();
    let catchup_url = format!("http://{}/catchup", cluster.node(leader).http_addr);
    let put = |body: &'static str| http.put(&catchup_url).body(body).send();
    assert_eq!(
        "1",
        http.get(&catchup_url).send().await?.text().await?.trim()
    );
    let refused = put("fast").await?;
    assert_eq!(400, refused.status().as_u16());
    assert!(refused.text().await?.contains("MiB per second"));
    assert_eq!(200, put("0").await?.status().as_u16());
    assert_eq!(
        "0",
        http.get(&catchup_url).send().await?.text().await?.trim()
    );
    cluster.wipe_node(follower)?;
    cluster.start_node(follower)?;
    let started = Instant::now();
    cluster.wait_caught_up(Duration::from_secs(60)).await?;
    let unlimited_refill = started.elapsed();
    eprintln!("with the limit lifted, refilled in {unlimited_refill:?}");
    assert!(
        unlimited_refill < fastest,
        "lifted, the refill still took {unlimited_refill:?}"
    );

    let stored = check_every_node(&cluster, &history, TOPIC, QUEUES).await?;
    assert_eq!(stored.len(), FILL + 50);
    Ok(())
}

/// The leader dies and a follower's disk is wiped at the same time. The surviving follower
/// may lack entries that only the dead leader and the wiped disk held; the wiped node must not
/// elect it (an empty log would vote for anyone) or acknowledged messages would be lost. So
/// the group waits, and recovers with everything once the old leader returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_node_does_not_elect_a_leader_that_may_lack_acknowledged_messages()
-> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.create_topic(TOPIC, QUEUES as u32).await?;
    let history = History::default();
    let client = cluster.client();
    history
        .send_numbered(&client, TOPIC, "before", 200, Duration::from_secs(10))
        .await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let wiped = (1..=3).find(|id| *id != leader).unwrap();
    let survivor = (1..=3).find(|id| *id != leader && *id != wiped).unwrap();
    cluster.kill_node(leader);
    cluster.wipe_node(wiped)?;
    cluster.start_node(wiped)?;

    // Three election timeouts and more: no leader, because the wiped node refuses its vote.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let statuses = cluster.statuses().await;
    let leaders: Vec<u64> = statuses
        .iter()
        .filter_map(|(id, s)| s.as_ref().filter(|s| s.role == "leader").map(|_| *id))
        .collect();
    assert!(
        leaders.is_empty(),
        "node {leaders:?} was elected with the vote of an empty disk\n{}",
        cluster.log_tails(20)
    );
    let log = std::fs::read_to_string(cluster.node(wiped).log_file())?;
    assert!(log.contains("vote refused"), "{}", cluster.log_tails(20));
    assert!(log.contains("new data dir"), "{}", cluster.log_tails(20));

    cluster.start_node(leader)?;
    let new_leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    eprintln!(
        "killed {leader}, wiped {wiped}; {survivor} waited; {new_leader} leads after {leader} returned"
    );
    history
        .send_numbered(&client, TOPIC, "after", 50, Duration::from_secs(10))
        .await?;
    cluster.wait_caught_up(Duration::from_secs(60)).await?;
    let stored = check_every_node(&cluster, &history, TOPIC, QUEUES).await?;
    assert_eq!(stored.len(), 250);
    let log = std::fs::read_to_string(cluster.node(wiped).log_file())?;
    assert!(
        log.contains("this node votes again"),
        "{}",
        cluster.log_tails(20)
    );
    Ok(())
}

/// A data dir that belongs to another node (a volume attached to the wrong pod) is refused
/// with a clear message before the node joins anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_data_dir_of_another_node_is_refused() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let other = (1..=3).find(|id| *id != leader).unwrap();
    cluster.kill_node(other);
    let output = tokio::process::Command::new(chaos_tests::cluster::raftmq_binary()?)
        .args([
            "broker",
            "--node-id",
            &leader.to_string(),
            "--http-port",
            "0",
        ])
        .arg("--data-dir")
        .arg(cluster.node(other).data_dir())
        .args(["--members", &cluster.members_of(other)])
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("belongs to node {other}")) && stderr.contains("wrong volume"),
        "{stderr}"
    );
    // The data dir is untouched: its node starts from it as before.
    cluster.start_node(other)?;
    cluster.wait_caught_up(Duration::from_secs(20)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarting_every_node_at_once_loses_nothing() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.create_topic(TOPIC, QUEUES as u32).await?;
    let history = History::default();
    let client = cluster.client();
    for seq in 0..600 {
        history
            .send_until_acked(&client, TOPIC, format!("m:{seq}"), Duration::from_secs(10))
            .await?;
    }
    client.update_offset("restart-group", TOPIC, 3, 42).await?;
    // SIGKILL, not a clean stop: whatever was acknowledged must already be on disk.
    for id in 1..=3 {
        cluster.kill_node(id);
    }
    for id in 1..=3 {
        cluster.start_node(id)?;
    }
    cluster.wait_for_leader(Duration::from_secs(30)).await?;
    assert_eq!(
        client.get_offset("restart-group", TOPIC, 3).await?,
        Some(42),
        "committed consumer offset survives"
    );
    // The group works again.
    for seq in 600..700 {
        history
            .send_until_acked(&client, TOPIC, format!("m:{seq}"), Duration::from_secs(10))
            .await?;
    }
    cluster.wait_caught_up(Duration::from_secs(60)).await?;
    let stored = check_every_node(&cluster, &history, TOPIC, QUEUES).await?;
    assert_eq!(stored.len(), 700);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retried_sends_across_a_leader_kill_are_stored_once() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.create_topic(TOPIC, QUEUES as u32).await?;
    let client = cluster.client();
    let messages: Vec<_> = (0..50)
        .map(|i| raftmq::client::message(TOPIC, format!("once:{i}").into_bytes(), None, &[]))
        .collect();
    let mut first_offsets = Vec::new();
    for m in &messages {
        first_offsets.push(client.send(vec![m.clone()]).await?[0].offset);
    }

    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    cluster.kill_node(leader);
    cluster.wait_for_leader(Duration::from_secs(10)).await?;

    // The same messages again (same ids): same answers, no new copies.
    for (m, first) in messages.iter().zip(&first_offsets) {
        let entries = client.send(vec![m.clone()]).await?;
        assert_eq!(entries.len(), 1);
        assert_eq!(
            entries[0].offset, *first,
            "a retry answers with the first send's offset"
        );
        assert_eq!(
            entries[0].message_id,
            m.system_properties.as_ref().unwrap().message_id
        );
    }
    // A batch retried as a whole is deduplicated too.
    let batch: Vec<_> = messages[..10].to_vec();
    let entries = client.send(batch).await?;
    assert_eq!(entries.len(), 10);
    for (entry, first) in entries.iter().zip(&first_offsets) {
        assert_eq!(entry.offset, *first);
    }

    cluster.start_node(leader)?;
    cluster.wait_caught_up(Duration::from_secs(60)).await?;
    for node in 1..=3 {
        let stored =
            chaos_tests::history::read_topic(&cluster.node_client(node), TOPIC, QUEUES).await?;
        assert_eq!(stored.len(), 50, "node {node} holds each message once");
    }
    Ok(())
}

/// How many times node `id` has taken its leader for dead (0 before the first time).
async fn dead_leaders_seen(cluster: &Cluster, id: u64) -> anyhow::Result<f64> {
    let text = cluster.metrics(id).await?;
    Ok(sample(&text, "raftmq_dead_leader_detected_total").unwrap_or(0.0))
}

/// A leader killed with SIGKILL leaves its Raft port closed: the followers notice, end its
/// lease, and the one whose log is furthest along stands for election at once and is
/// elected, while sends go on. A paused (SIGSTOP) leader's port still completes connections: no follower takes it
/// for dead, the usual election replaces it, and nothing acknowledged is lost either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_leader_is_taken_for_dead_and_a_paused_one_is_not() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.create_topic(TOPIC, QUEUES as u32).await?;
    let history = Arc::new(History::default());
    let client = cluster.client();
    history
        .send_numbered(&client, TOPIC, "before", 100, Duration::from_secs(10))
        .await?;

    // Sends keep flowing through both faults, so the leader's append streams are open.
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (history, client, stop) = (history.clone(), cluster.client(), stop.clone());
        tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let body = format!("during:{seq}");
                // A send that fails for good is simply not acknowledged; the checker
                // only holds the acknowledged ones to account.
                let _ = history
                    .send_until_acked(&client, TOPIC, body, Duration::from_secs(10))
                    .await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let acked_before_kill = history.acked();
    cluster.kill_node(leader);
    let successor = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    // The new leader is the node its peers named: it took the old one for dead itself and
    // stood as the successor, rather than winning an election on its own timeout.
    assert!(
        dead_leaders_seen(&cluster, successor).await? >= 1.0,
        "node {successor} did not take the killed leader {leader} for dead\n{}",
        cluster.log_tails(30)
    );
    let log = std::fs::read_to_string(cluster.node(successor).log_file())?;
    assert!(
        log.contains(&format!("node {successor} stands for election now")),
        "{}",
        cluster.log_tails(30)
    );
    wait_for_acks(&history, acked_before_kill + 50, Duration::from_secs(10)).await;

    cluster.start_node(leader)?;
    cluster.wait_caught_up(Duration::from_secs(60)).await?;
    let mut seen_before_pause = Vec::new();
    for id in 1..=3 {
        seen_before_pause.push(dead_leaders_seen(&cluster, id).await?);
    }
    let paused = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    cluster.pause_node(paused, true)?;
    // Longer than the lease and an election timeout: the others elect one of themselves.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let acked_in_pause = history.acked();
    wait_for_acks(&history, acked_in_pause + 20, Duration::from_secs(10)).await;
    cluster.pause_node(paused, false)?;
    for id in 1..=3 {
        assert_eq!(
            dead_leaders_seen(&cluster, id).await?,
            seen_before_pause[id as usize - 1],
            "node {id} took the paused leader {paused} for dead\n{}",
            cluster.log_tails(30)
        );
    }

    stop.store(true, Ordering::Relaxed);
    sender.await?;
    cluster.wait_caught_up(Duration::from_secs(60)).await?;
    let stored = check_every_node(&cluster, &history, TOPIC, QUEUES).await?;
    assert_eq!(stored.len(), history.acked());
    Ok(())
}

/// `raftmq bench produce`, on its default direct connection to the leader, goes on through a
/// leader kill: it moves to the new leader, so the sends after the failover are acknowledged
/// instead of every call after the kill failing on the dead connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_produce_benchmark_follows_a_new_leader() -> anyhow::Result<()> {
    bench_through_a_leader_fault(LeaderFault::Kill).await
}

/// The same through a paused (SIGSTOP) leader, whose connection stays open and never answers:
/// the calls time out, and the first to do so finds the group's new leader and moves there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_produce_benchmark_leaves_a_paused_leader() -> anyhow::Result<()> {
    bench_through_a_leader_fault(LeaderFault::Pause).await
}

enum LeaderFault {
    Kill,
    Pause,
}

async fn bench_through_a_leader_fault(fault: LeaderFault) -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.create_topic("bench-failover", 2).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let (rate, fault_after) = (200u64, 2u64);
    // A paused leader costs a call timeout (1 s) and a status query that waits for it (2 s).
    let seconds = match fault {
        LeaderFault::Kill => 6,
        LeaderFault::Pause => 9,
    };
    let bench = tokio::process::Command::new(chaos_tests::cluster::raftmq_binary()?)
        .args(["bench", "produce", "--topic", "bench-failover"])
        .args(["--concurrency", "16", "--rate", &rate.to_string()])
        .args(["--warmup", "0s", "--timeout", "1s", "--json"])
        .args(["--duration", &format!("{seconds}s")])
        .args(["--endpoints", &cluster.endpoints().join(",")])
        .kill_on_drop(true)
        .output();
    let bench = tokio::spawn(bench);
    tokio::time::sleep(Duration::from_secs(fault_after)).await;
    match fault {
        LeaderFault::Kill => cluster.kill_node(leader),
        LeaderFault::Pause => cluster.pause_node(leader, true)?,
    }

    let output = bench.await??;
    if let LeaderFault::Pause = fault {
        cluster.pause_node(leader, false)?;
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let acked = report["acked"].as_u64().expect("acked count");
    // Before the fault it can have sent at most `rate * fault_after`; the rest came after it.
    assert!(
        acked > rate * (fault_after + 1) + 16,
        "too few sends acknowledged after the leader's fault: {report}\n{stderr}"
    );
    assert!(
        stderr.contains("now sending to"),
        "no move to another node reported: {stderr}"
    );
    Ok(())
}

/// Whether node `id`'s client port serves a call: a new connection, one try.
async fn serves_clients(cluster: &Cluster, id: u64) -> bool {
    let mut client = cluster.node_client(id);
    client.timeout = Duration::from_secs(2);
    client.heartbeat().await.is_ok()
}

async fn cut_off_gauge(cluster: &Cluster, id: u64) -> anyhow::Result<(f64, f64)> {
    let text = cluster.metrics(id).await?;
    Ok((
        sample(&text, "raftmq_cut_off").unwrap_or(-1.0),
        sample(&text, "raftmq_cut_off_total").unwrap_or(0.0),
    ))
}

/// Wait until every node of `ids` serves clients again, at most 15 s after the fault healed.
async fn wait_until_serving(cluster: &Cluster, ids: &[u64]) {
    let give_up = Instant::now() + Duration::from_secs(15);
    for id in ids {
        while !serves_clients(cluster, *id).await {
            assert!(
                Instant::now() < give_up,
                "node {id} still refuses clients 15 s after the fault healed\n{}",
                cluster.log_tails(20)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One more send once the fault healed, then every acknowledged message on every node.
async fn send_after_and_check(
    cluster: &Cluster,
    history: &History,
    client: &raftmq::client::Client,
) -> anyhow::Result<()> {
    history
        .send_until_acked(client, TOPIC, "after".into(), Duration::from_secs(30))
        .await?;
    cluster.wait_caught_up(Duration::from_secs(30)).await?;
    let stored = check_every_node(cluster, history, TOPIC, QUEUES).await?;
    assert!(stored.len() >= history.acked());
    Ok(())
}

/// A leader whose followers stop answering can commit nothing: it closes its client
/// connections, so that a send waiting there fails with its connection, before the broker's
/// propose deadline would answer it with an error on that same connection (a gRPC client
/// with one connection would retry there), refuses new connections and says why on /readyz,
/// and serves again as soon as its followers are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_its_followers_refuses_clients_until_they_are_back()
-> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.create_topic(TOPIC, QUEUES as u32).await?;
    let history = History::default();
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let mut on_leader = cluster.node_client(leader);
    on_leader.timeout = Duration::from_secs(30);
    history
        .send_until_acked(&on_leader, TOPIC, "before".into(), Duration::ZERO)
        .await?;
    assert_eq!(cut_off_gauge(&cluster, leader).await?, (0.0, 0.0));

    for id in &followers {
        cluster.pause_node(*id, true)?;
    }
    let paused_at = Instant::now();
    // Waits for a commit that cannot come, on a connection the leader closes once it counts
    // itself cut off; then the client finds the port refusing and gives up.
    let outcome = history
        .send_until_acked(&on_leader, TOPIC, "during".into(), Duration::ZERO)
        .await;
    let failed_after = paused_at.elapsed();
    eprintln!("the send on the cut-off leader failed after {failed_after:?}: {outcome:?}");
    assert!(
        matches!(outcome, Err(ClientError::Unavailable(_))),
        "the send was answered, not cut with its connection: {outcome:?} after \
         {failed_after:?}\n{}",
        cluster.log_tails(20)
    );
    assert!(!serves_clients(&cluster, leader).await);
    assert_eq!(cut_off_gauge(&cluster, leader).await?, (1.0, 1.0));
    let url = format!("http://{}/readyz", cluster.node(leader).http_addr);
    let readyz = reqwest::get(&url).await?;
    assert_eq!(readyz.status().as_u16(), 503);
    let body = readyz.text().await?;
    assert!(body.contains("cut off from the majority"), "{body}");
    let log = std::fs::read_to_string(cluster.node(leader).log_file())?;
    assert!(log.contains("out of touch with the majority"), "{log}");

    for id in &followers {
        cluster.pause_node(*id, false)?;
    }
    wait_until_serving(&cluster, &[leader]).await;
    assert_eq!(cut_off_gauge(&cluster, leader).await?, (0.0, 1.0));
    // Resumed processes find their evidence old, yet hear from the group within a heartbeat
    // or two: they never count themselves cut off.
    for id in &followers {
        assert_eq!(cut_off_gauge(&cluster, *id).await?, (0.0, 0.0), "node {id}");
    }
    send_after_and_check(&cluster, &history, &cluster.client()).await
}

/// Five nodes, and the leader left with one follower (the three others paused): the leader is
/// cut off, and so is its follower, although that one still hears from a leader. The leader's
/// appends say that it is cut off, so its follower stops counting them as contact with the
/// group. Both serve again once the others are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_of_a_cut_off_leader_refuses_clients_too() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions {
        nodes: 5,
        ..ClusterOptions::default()
    })
    .await?;
    cluster.create_topic(TOPIC, QUEUES as u32).await?;
    let history = History::default();
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    history
        .send_until_acked(&cluster.client(), TOPIC, "before".into(), Duration::ZERO)
        .await?;
    let mut others = (1..=5).filter(|id| *id != leader);
    let follower = others.next().expect("five nodes");
    let paused: Vec<u64> = others.collect();
    for id in &paused {
        cluster.pause_node(*id, true)?;
    }
    let paused_at = Instant::now();
    for id in [leader, follower] {
        let give_up = paused_at + Duration::from_secs(10);
        while serves_clients(&cluster, id).await {
            assert!(
                Instant::now() < give_up,
                "node {id} (leader {leader}) still serves clients 10 s after the rest of the \
                 group was paused\n{}",
                cluster.log_tails(20)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "node {id} refused clients {:?} after the pause",
            paused_at.elapsed()
        );
        assert_eq!(cut_off_gauge(&cluster, id).await?, (1.0, 1.0), "node {id}");
    }
    let url = format!("http://{}/readyz", cluster.node(follower).http_addr);
    assert_eq!(reqwest::get(&url).await?.status().as_u16(), 503);

    for id in &paused {
        cluster.pause_node(*id, false)?;
    }
    wait_until_serving(&cluster, &[leader, follower]).await;
    for id in &paused {
        assert_eq!(cut_off_gauge(&cluster, *id).await?, (0.0, 0.0), "node {id}");
    }
    send_after_and_check(&cluster, &history, &cluster.client()).await
}

/// Every packet towards the leader dropped, the other way open: the leader can commit
/// nothing, and its heartbeats would keep its followers from standing for election. Over TCP
/// they stop arriving too (nothing it sends is acknowledged, so its connections stall after a
/// few segments), the followers elect one of them, and the group serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_that_hears_nothing_from_its_followers_is_replaced() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions {
        netns: true,
        ..ClusterOptions::default()
    })
    .await?;
    cluster.create_topic(TOPIC, QUEUES as u32).await?;
    let history = History::default();
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let mut client = cluster.client();
    client.timeout = Duration::from_secs(2);
    history
        .send_until_acked(&client, TOPIC, "before".into(), Duration::ZERO)
        .await?;
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let network = cluster.network.as_ref().expect("a netns cluster");
    for id in &followers {
        network.cut(*id, leader)?;
    }
    let cut_at = Instant::now();
    history
        .send_until_acked(&client, TOPIC, "during".into(), Duration::from_secs(30))
        .await?;
    let served_after = cut_at.elapsed();
    let statuses = cluster.statuses().await;
    eprintln!("a send sent after the cut was acknowledged {served_after:?} after it");
    let new_leaders: Vec<u64> = statuses
        .iter()
        .filter_map(|(_, status)| status.as_ref())
        .filter(|s| s.role == "leader")
        .map(|s| s.node_id)
        .filter(|id| *id != leader)
        .collect();
    assert_eq!(new_leaders.len(), 1, "{statuses:?}");
    assert!(
        served_after < Duration::from_secs(5),
        "the group served again only {served_after:?} after the cut\n{}",
        cluster.log_tails(20)
    );

    network.heal()?;
    send_after_and_check(&cluster, &history, &client).await
}

/// With the cut-off turned off, a send that reaches a leader just as it loses its majority
/// is held by Raft until the majority is back; the broker answers it by its propose deadline
/// all the same, as an unknown outcome (the entry may still commit), instead of leaving the
/// client to its own timeout. Once the followers are back the held entry commits, and a retry
/// with its message id stores no second copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_held_by_a_leader_without_majority_is_answered_by_the_deadline()
-> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions {
        env: vec![("RAFTMQ_CUT_OFF_AFTER_MS".into(), "0".into())],
        ..ClusterOptions::default()
    })
    .await?;
    cluster.create_topic(TOPIC, QUEUES as u32).await?;
    let history = History::default();
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let mut on_leader = cluster.node_client(leader);
    on_leader.timeout = Duration::from_secs(30);
    history
        .send_until_acked(&on_leader, TOPIC, "before".into(), Duration::ZERO)
        .await?;
    for id in (1..=3).filter(|id| *id != leader) {
        cluster.pause_node(id, true)?;
    }
    let held = raftmq::client::message(TOPIC, b"held".to_vec(), None, &[]);
    let outcome = on_leader.send(vec![held.clone()]).await;
    eprintln!("the send held by the leader: {outcome:?}");
    assert!(
        // The client tries twice: the second attempt may find the leader's lease run out,
        // which openraft refuses at once (no leader known).
        matches!(
            &outcome,
            Err(ClientError::Rejected { code, .. })
                if [Code::MasterPersistenceTimeout, Code::HaNotAvailable].contains(code)
        ),
        "{outcome:?}"
    );
    for id in (1..=3).filter(|id| *id != leader) {
        cluster.pause_node(id, false)?;
    }
    let retried = cluster.client().send(vec![held]).await?;
    assert_eq!(retried.len(), 1);
    cluster.wait_caught_up(Duration::from_secs(30)).await?;
    // "held" is not in the history (sent without it, to retry it with its own message id):
    // read the replicas directly.
    let mut replicas = Vec::new();
    for id in 1..=3 {
        replicas.push(read_topic(&cluster.node_client(id), TOPIC, QUEUES).await?);
    }
    for replica in &replicas[1..] {
        assert!(replicas_identical(&replicas[0], replica), "{replicas:?}");
    }
    let bodies: Vec<&str> = replicas[0].iter().map(|m| m.body.as_str()).collect();
    assert_eq!(
        bodies.iter().filter(|b| **b == "held").count(),
        1,
        "{bodies:?}"
    );
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    Ok(())
}
