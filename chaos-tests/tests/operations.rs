//! Operating a running group, with three real broker processes: the HTTP health, readiness
//! and metrics endpoints, leader transfer from the CLI, a leader that is stopped with SIGTERM
//! handing over before it goes, and a follower stopped with SIGTERM under load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use chaos_tests::cluster::{Cluster, ClusterOptions, raftmq_binary, sample};
use chaos_tests::history::{History, check_every_node};
use raftmq::client::message;

/// GET `path` from a node's HTTP port: (status, body).
async fn get(http: &reqwest::Client, addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let response = http
        .get(format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .with_context(|| format!("GET http://{addr}{path}"))?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

/// Wait until `path` answers `status` on `addr`.
async fn wait_for_status(
    http: &reqwest::Client,
    addr: &str,
    path: &str,
    status: u16,
    timeout: Duration,
) -> anyhow::Result<String> {
    let give_up = Instant::now() + timeout;
    loop {
        let last = get(http, addr, path).await;
        if let Ok((got, body)) = &last
            && *got == status
        {
            return Ok(body.clone());
        }
        anyhow::ensure!(
            Instant::now() < give_up,
            "{addr}{path} did not answer {status} within {timeout:?}; last answer {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_readiness_and_metrics_follow_the_group() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.create_topic("ops", 4).await?;
    let http = reqwest::Client::new();
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;

    for node in &cluster.nodes {
        let (status, body) = get(&http, &node.http_addr, "/healthz").await?;
        assert_eq!((status, body.as_str()), (200, "ok\n"), "node {}", node.id);
        let body = wait_for_status(
            &http,
            &node.http_addr,
            "/readyz",
            200,
            Duration::from_secs(10),
        )
        .await?;
        let ready: serde_json::Value = serde_json::from_str(&body)?;
        assert_eq!(ready["ready"], true, "node {}: {body}", node.id);
        assert_eq!(ready["leader_id"], leader, "node {}: {body}", node.id);
    }

    // Ten sends and one refused send (illegal topic name), then the counters show them.
    let client = cluster.client();
    for i in 0..10 {
        client
            .send(vec![message(
                "ops",
                format!("m{i}").into_bytes(),
                None,
                &[],
            )])
            .await?;
    }
    assert!(
        client
            .send(vec![message("bad topic!", b"x".to_vec(), None, &[])])
            .await
            .is_err(),
        "an illegal topic name is refused"
    );
    let leader_http = cluster.node(leader).http_addr.clone();
    let follower = cluster
        .nodes
        .iter()
        .find(|n| n.id != leader)
        .context("a follower")?;
    // And read them back, so that consumption is counted too; the group commits its offset
    // in queue 0 only, so its lag is every message of the other queues.
    let mut in_queue_0 = 0;
    for queue in 0..4 {
        let (_, next) = client
            .pull("ops-g", "ops", queue, 0, 32, Duration::ZERO)
            .await?;
        if queue == 0 {
            client.update_offset("ops-g", "ops", 0, next).await?;
            in_queue_0 = next;
        }
    }
    let mut totals = (0.0, 0.0, 0.0);
    let mut every_node = String::new();
    for node in &cluster.nodes {
        let (status, text) = get(&http, &node.http_addr, "/metrics").await?;
        every_node.push_str(&text);
        assert_eq!(status, 200, "node {}", node.id);
        let role = |r: &str| sample(&text, &format!("raftmq_raft_role{{role=\"{r}\"}}"));
        let expected = if node.id == leader {
            "leader"
        } else {
            "follower"
        };
        assert_eq!(role(expected), Some(1.0), "node {} role\n{text}", node.id);
        assert_eq!(sample(&text, "raftmq_raft_leader_id"), Some(leader as f64));
        assert!(sample(&text, "raftmq_raft_applied_index").unwrap_or(0.0) > 0.0);
        assert!(sample(&text, "raftmq_data_dir_free_bytes").unwrap_or(0.0) > 0.0);
        assert!(
            sample(&text, "raftmq_wal_fsync_seconds_count").unwrap_or(0.0) > 0.0,
            "every node fsyncs its log (flush = sync)\n{text}"
        );
        totals.0 += sample(&text, "raftmq_messages_produced_total").unwrap_or(0.0);
        totals.1 += sample(
            &text,
            "raftmq_requests_rejected_total{rpc=\"SendMessage\",code=\"ILLEGAL_TOPIC\"}",
        )
        .unwrap_or(0.0);
        totals.2 += sample(
            &text,
            "raftmq_consumers_online{group=\"ops-g\",kind=\"pull\"}",
        )
        .unwrap_or(0.0);
    }
    assert_eq!(
        totals,
        (10.0, 1.0, 1.0),
        "sends and refusals counted once, where served; the pull consumer by the node it called"
    );
    let (_, text) = get(&http, &leader_http, "/metrics").await?;
    let lag = format!(
        "raftmq_raft_replication_lag_entries{{follower=\"{}\"}}",
        follower.id
    );
    assert!(
        sample(&text, &lag).is_some(),
        "the leader reports {lag}\n{text}"
    );
    // The leader has applied the offset commit before answering it.
    assert_eq!(
        sample(
            &text,
            "raftmq_consumer_lag_messages{group=\"ops-g\",topic=\"ops\"}"
        ),
        Some((10 - in_queue_0) as f64),
        "{text}"
    );

    // Every series the Grafana dashboard charts is one the brokers export.
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana-dashboard.json"),
    )?;
    let mut charted: Vec<&str> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("raftmq_"))
        .collect();
    charted.sort_unstable();
    charted.dedup();
    assert!(charted.len() > 10, "{charted:?}");
    for name in charted {
        assert!(
            every_node.lines().any(|l| l.starts_with(name)),
            "the dashboard charts {name}, which /metrics does not export"
        );
    }

    // Without a majority, the last node is alive but not ready.
    let others: Vec<u64> = cluster
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|id| *id != leader)
        .collect();
    let survivor = others[0];
    cluster.kill_node(leader);
    cluster.kill_node(others[1]);
    let addr = cluster.node(survivor).http_addr.clone();
    let body = wait_for_status(&http, &addr, "/readyz", 503, Duration::from_secs(10)).await?;
    eprintln!("survivor /readyz: {body}");
    assert!(body.contains("\"ready\":false"), "{body}");
    let (status, _) = get(&http, &addr, "/healthz").await?;
    assert_eq!(status, 200, "a node without quorum is still alive");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_moves_leadership_to_the_chosen_node() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let binary = raftmq_binary()?;
    for _ in 0..2 {
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
        let target = cluster
            .nodes
            .iter()
            .map(|n| n.id)
            .find(|id| *id != leader)
            .context("a follower")?;
        // Asked of the third node, which passes the request on to the leader.
        let asked = cluster
            .nodes
            .iter()
            .find(|n| n.id != leader && n.id != target)
            .context("a third node")?;
        let output = tokio::process::Command::new(&binary)
            .args([
                "admin",
                "--endpoints",
                &asked.client_addr,
                "leader",
                "transfer",
            ])
            .args(["--to", &target.to_string()])
            .output()
            .await?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "transfer failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        eprintln!("{}", stdout.trim());
        assert!(
            stdout.contains(&format!("from node {leader} to node {target}")),
            "{stdout}"
        );
        assert_eq!(
            cluster.wait_for_leader(Duration::from_secs(5)).await?,
            target
        );
    }

    let output = tokio::process::Command::new(&binary)
        .args(["admin", "--endpoints", &cluster.endpoints().join(",")])
        .args(["leader", "transfer", "--to", "42"])
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a transfer to an unknown node fails"
    );
    assert!(stderr.contains("42 is not a voter"), "{stderr}");

    // A node that is down is not handed the leadership: the leader keeps it.
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await?;
    let down = cluster
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|id| *id != leader)
        .context("a follower")?;
    cluster.kill_node(down);
    let (ok, _, stderr) = admin(
        &cluster.node(leader).client_addr,
        &[
            "leader",
            "transfer",
            "--to",
            &down.to_string(),
            "--timeout-secs",
            "4",
        ],
    )
    .await?;
    assert!(
        !ok && stderr.contains("has not answered since the hand-over was asked for"),
        "{stderr}"
    );
    assert_eq!(
        cluster.wait_for_leader(Duration::from_secs(5)).await?,
        leader
    );
    Ok(())
}

/// Producers that send one message at a time, one attempt each, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicUsize>,
    producers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(cluster: &Cluster, history: &Arc<History>, topic: &'static str) -> Load {
        const PRODUCERS: usize = 8;
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicUsize::new(0));
        let producers = (0..PRODUCERS)
            .map(|producer| {
                let client = cluster.client();
                let (history, stop, failed) = (history.clone(), stop.clone(), failed.clone());
                tokio::spawn(async move {
                    let mut seq = 0;
                    while !stop.load(Ordering::Relaxed) {
                        // One attempt per message: any error counts as a failed send.
                        let body = format!("p{producer}:s{seq}");
                        if history
                            .send_until_acked(&client, topic, body, Duration::ZERO)
                            .await
                            .is_err()
                        {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        seq += 1;
                    }
                })
            })
            .collect();
        Load {
            stop,
            failed,
            producers,
        }
    }

    /// Stop the producers; the number of sends that failed.
    async fn finish(self) -> anyhow::Result<usize> {
        self.stop.store(true, Ordering::Relaxed);
        for producer in self.producers {
            producer.await?;
        }
        Ok(self.failed.load(Ordering::Relaxed))
    }
}

/// The lines a node logged at ERROR.
fn logged_errors(cluster: &Cluster, node: u64) -> anyhow::Result<Vec<String>> {
    let log = std::fs::read_to_string(cluster.node(node).log_file())?;
    Ok(log
        .lines()
        .filter(|line| line.contains(" ERROR "))
        .map(str::to_string)
        .collect())
}

/// The topic the SIGTERM tests send to, with 4 queues.
const DRAIN_TOPIC: &str = "drain";

/// A fresh group with a load running for 2 s on `DRAIN_TOPIC`, and its leader.
async fn group_under_load() -> anyhow::Result<(Cluster, Arc<History>, Load, u64)> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.create_topic(DRAIN_TOPIC, 4).await?;
    let history = Arc::new(History::default());
    let load = Load::start(&cluster, &history, DRAIN_TOPIC);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await?;
    Ok((cluster, history, load, leader))
}

/// SIGTERM to the leader under a steady load: it hands leadership to a follower before it
/// stops, so no send fails and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_stopped_with_sigterm_hands_over_and_no_send_fails() -> anyhow::Result<()> {
    let (mut cluster, history, load, leader) = group_under_load().await?;
    let before = history.acked();
    let stopping = Instant::now();
    cluster.stop_node(leader);
    let stopped_in = stopping.elapsed();
    let new_leader = cluster.wait_for_leader(Duration::from_secs(5)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let failed = load.finish().await?;
    let log = std::fs::read_to_string(cluster.node(leader).log_file())?;
    eprintln!(
        "leader {leader} stopped in {stopped_in:?}; node {new_leader} leads; {} acked \
         ({before} before the stop), {failed} failed",
        history.acked(),
    );
    assert!(
        log.contains("leadership handed over"),
        "the stopping leader handed over first:\n{}",
        cluster.log_tails(30)
    );
    assert_ne!(new_leader, leader);
    assert_eq!(failed, 0, "sends failed during the handover");
    assert!(history.acked() > before, "sends went on after the stop");
    assert_eq!(Vec::<String>::new(), logged_errors(&cluster, leader)?);
    cluster.wait_caught_up(Duration::from_secs(30)).await?;
    check_every_node(&cluster, &history, DRAIN_TOPIC, 4).await?;
    Ok(())
}

/// SIGTERM to a follower under a steady load: the other two go on without a failed send, and
/// the follower stops without an error in its log (its peers' appends end before its Raft
/// core stops, instead of reaching a stopped core).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_stopped_with_sigterm_logs_no_error_and_no_send_fails() -> anyhow::Result<()> {
    let (mut cluster, history, load, leader) = group_under_load().await?;
    let follower = leader % 3 + 1;
    let before = history.acked();
    cluster.stop_node(follower);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let failed = load.finish().await?;
    let log = std::fs::read_to_string(cluster.node(follower).log_file())?;
    assert!(
        log.contains("broker stopped"),
        "the follower stopped cleanly:\n{log}"
    );
    assert_eq!(Vec::<String>::new(), logged_errors(&cluster, follower)?);
    assert_eq!(failed, 0, "sends failed while a follower stopped");
    assert!(history.acked() > before, "sends went on after the stop");
    cluster.start_node(follower)?;
    cluster.wait_caught_up(Duration::from_secs(30)).await?;
    check_every_node(&cluster, &history, DRAIN_TOPIC, 4).await?;
    Ok(())
}

/// Run `raftmq admin ARGS` against `endpoints`: (success, stdout, stderr).
async fn admin(endpoints: &str, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let output = tokio::process::Command::new(raftmq_binary()?)
        .args(["admin", "--endpoints", endpoints])
        .args(args)
        .output()
        .await?;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// The voters `raftmq admin member list --json` reports, in id order.
async fn voters(endpoints: &str) -> anyhow::Result<Vec<u64>> {
    let (ok, stdout, stderr) = admin(endpoints, &["member", "list", "--json"]).await?;
    anyhow::ensure!(ok, "member list: {stderr}");
    let listed: serde_json::Value = serde_json::from_str(&stdout)?;
    let mut voters: Vec<u64> = listed["members"]
        .as_array()
        .context("members")?
        .iter()
        .filter(|m| m["voter"] == true)
        .filter_map(|m| m["node_id"].as_u64())
        .collect();
    voters.sort_unstable();
    Ok(voters)
}

/// Grow a running group from three voters to five, lose two of the first three, go on
/// writing, then remove the dead ones: nothing acknowledged is lost at any step.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_group_grows_to_five_voters_and_replaces_dead_ones() -> anyhow::Result<()> {
    const TOPIC: &str = "members";
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.create_topic(TOPIC, 2).await?;
    let history = History::default();
    let client = cluster.client();
    history
        .send_numbered(&client, TOPIC, "before", 50, Duration::from_secs(10))
        .await?;

    let via = cluster.endpoints().join(",");
    for _ in 0..2 {
        let id = cluster.start_new_node()?;
        let node = cluster.node(id);
        let (raft_addr, client_addr) = (node.raft_addr.clone(), node.client_addr.clone());
        let (ok, stdout, stderr) = admin(
            &via,
            &["member", "add", &id.to_string(), "--raft-addr", &raft_addr]
                .into_iter()
                .chain(["--client-addr", &client_addr])
                .collect::<Vec<_>>(),
        )
        .await?;
        assert!(ok, "member add {id}: {stdout}{stderr}");
        eprintln!("{}", stdout.lines().next().unwrap_or_default());
    }
    assert_eq!(voters(&via).await?, vec![1, 2, 3, 4, 5]);

    // Two of the first three die: three of five voters remain, a majority.
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let dead: Vec<u64> = [leader]
        .into_iter()
        .chain((1..=3).filter(|id| *id != leader).take(1))
        .collect();
    for id in &dead {
        cluster.kill_node(*id);
    }
    let client = cluster.client();
    history
        .send_numbered(&client, TOPIC, "after", 50, Duration::from_secs(15))
        .await
        .with_context(|| format!("nodes {dead:?} killed\n{}", cluster.log_tails(30)))?;

    // The dead nodes are removed; the group is three voters again, without them.
    let alive = cluster
        .nodes
        .iter()
        .filter(|n| n.is_running())
        .map(|n| n.client_addr.clone())
        .collect::<Vec<_>>()
        .join(",");
    for id in &dead {
        let (ok, stdout, stderr) = admin(&alive, &["member", "remove", &id.to_string()]).await?;
        assert!(ok, "member remove {id}: {stdout}{stderr}");
    }
    let expected: Vec<u64> = (1..=5).filter(|id| !dead.contains(id)).collect();
    assert_eq!(voters(&alive).await?, expected);

    // Bad requests are refused with a clear message and change nothing.
    let (ok, _, stderr) = admin(&alive, &["member", "remove", "42"]).await?;
    assert!(!ok && stderr.contains("42 is not a member"), "{stderr}");
    let (ok, _, stderr) = admin(
        &alive,
        &[
            "member",
            "add",
            "6",
            "--raft-addr",
            "nowhere",
            "--client-addr",
            "x:1",
        ],
    )
    .await?;
    assert!(!ok && stderr.contains("is not HOST:PORT"), "{stderr}");

    history
        .send_numbered(&client, TOPIC, "shrunk", 20, Duration::from_secs(15))
        .await?;
    cluster.wait_caught_up(Duration::from_secs(30)).await?;
    let stored = check_every_node(&cluster, &history, TOPIC, 2).await?;
    assert_eq!(stored.len(), 120);
    Ok(())
}

/// Wait (15 s at most) until `node` leads.
async fn wait_for_leader_to_be(cluster: &Cluster, node: u64) -> anyhow::Result<()> {
    let give_up = Instant::now() + Duration::from_secs(15);
    loop {
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
        if leader == node {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < give_up,
            "node {leader} still leads, not node {node}\n{}",
            cluster.log_tails(20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `preferred_leader`: the group hands leadership to the preferred node, and back to it once
/// it returns from a crash and has caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_preferred_leader_takes_leadership_and_takes_it_back() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions {
        extra_args: vec!["--preferred-leader".into(), "3".into()],
        ..ClusterOptions::default()
    })
    .await?;
    wait_for_leader_to_be(&cluster, 3).await?;
    cluster.kill_node(3);
    let other = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    assert_ne!(other, 3);
    cluster.create_topic("preferred", 2).await?;
    cluster.start_node(3)?;
    wait_for_leader_to_be(&cluster, 3).await?;
    Ok(())
}

/// `--log-format json` writes one JSON object per line, and `PUT /loglevel` changes the
/// filter of a running broker (a bad filter is refused and changes nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn json_logs_and_a_log_filter_changed_at_runtime() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions {
        extra_args: vec!["--log-format".into(), "json".into()],
        ..ClusterOptions::default()
    })
    .await?;
    let node = cluster.node(1);
    let http = reqwest::Client::new();
    let (status, filter) = get(&http, &node.http_addr, "/loglevel").await?;
    // The harness leaves brokers their default filter (EnvFilter may reorder it).
    assert_eq!(status, 200);
    let sorted = |filter: &str| {
        let mut directives: Vec<String> = filter.split(',').map(|d| d.trim().to_string()).collect();
        directives.sort_unstable();
        directives
    };
    if std::env::var_os("RAFTMQ_TEST_LOG").is_none() {
        assert_eq!(
            sorted(filter.trim()),
            sorted(raftmq::logging::BROKER_DEFAULT_FILTER)
        );
    }

    let put = |body: &'static str| {
        http.put(format!("http://{}/loglevel", node.http_addr))
            .body(body)
            .send()
    };
    let refused = put("=[nonsense").await?;
    assert_eq!(refused.status().as_u16(), 400);
    assert!(refused.text().await?.contains("invalid log filter"));
    assert_eq!(put("debug").await?.status().as_u16(), 200);
    let (_, filter) = get(&http, &node.http_addr, "/loglevel").await?;
    assert_eq!(filter.trim(), "debug");
    cluster.create_topic("logs", 1).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let log = std::fs::read_to_string(node.log_file())?;
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("every log line is a JSON object")?;
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "log filter changed"),
        "the change is logged"
    );
    assert!(
        lines.iter().any(|l| l["level"] == "DEBUG"),
        "debug lines appear once the filter allows them"
    );
    Ok(())
}

/// A group whose nodes are all below `min_free_disk` refuses new messages with
/// TOO_MANY_REQUESTS and a message that says why, on every node, and stores none of them;
/// consumer progress still goes through, and the CLI and metrics show the state. (Filling
/// real disks, a node recovering, and a leader handing over are in the chaos suite.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_without_disk_room_refuses_sends_and_keeps_consumers_going() -> anyhow::Result<()> {
    use raftmq::client::ClientError;
    use raftmq_proto::rocketmq::v2::Code;
    // A mark no disk reaches: every node is low from its first check.
    let cluster = Cluster::start(ClusterOptions {
        extra_args: vec!["--min-free-disk-mb".into(), "1000000000000".into()],
        ..Default::default()
    })
    .await?;
    cluster.create_topic("room", 2).await?;
    for node in 1..=3 {
        let client = cluster.node_client(node);
        let refused = client
            .send(vec![message(
                "room",
                format!("m{node}").into_bytes(),
                None,
                &[],
            )])
            .await;
        match refused {
            Err(ClientError::Rejected {
                code: Code::TooManyRequests,
                message,
                ..
            }) => assert!(
                message.contains("disk full") && message.contains("min_free_disk"),
                "unclear refusal: {message}"
            ),
            other => panic!("node {node}: expected TOO_MANY_REQUESTS, got {other:?}"),
        }
        // Consumer progress is not a new message: it still commits (offset 0: the queue is
        // empty, and a group that never committed has no offset at all).
        client
            .update_offset("room-consumers", "room", 0, 0)
            .await
            .with_context(|| format!("update an offset through node {node}"))?;
    }
    let client = cluster.client();
    assert_eq!(
        Some(0),
        client.get_offset("room-consumers", "room", 0).await?
    );
    for queue in 0..2 {
        let (messages, _) = client
            .pull("room-reader", "room", queue, 0, 16, Duration::ZERO)
            .await?;
        assert!(messages.is_empty(), "a refused message was stored");
    }
    let (ok, stdout, stderr) =
        admin(&cluster.endpoints().join(","), &["cluster", "--json"]).await?;
    anyhow::ensure!(ok, "admin cluster: {stderr}");
    let status: serde_json::Value = serde_json::from_str(&stdout)?;
    for node in status["nodes"].as_array().context("nodes")? {
        assert_eq!(node["disk_low"], true, "{node}");
        assert!(node["disk_free_bytes"].as_u64().unwrap_or(0) > 0, "{node}");
    }
    let http = reqwest::Client::new();
    let (_, metrics) = get(&http, &cluster.node(1).http_addr, "/metrics").await?;
    assert_eq!(Some(1.0), sample(&metrics, "raftmq_disk_low"));
    Ok(())
}

/// A follower that dies is reported by its leader once, with the reason, and once more when it
/// is back; openraft's line per failed heartbeat (several a second) stays out of the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_follower_is_logged_once_when_it_goes_and_once_when_it_is_back() -> anyhow::Result<()>
{
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let follower = if leader == 1 { 2 } else { 1 };
    let leader_log = cluster.node(leader).log_file();
    let lines_with = |text: &str| -> anyhow::Result<usize> {
        let log = std::fs::read_to_string(&leader_log)?;
        Ok(log
            .lines()
            .filter(|line| line.contains(text) && line.contains(&format!("follower={follower}")))
            .count())
    };
    let wait_for_line = |text: &'static str| async move {
        let give_up = Instant::now() + Duration::from_secs(10);
        while lines_with(text)? == 0 {
            anyhow::ensure!(Instant::now() < give_up, "the leader never logged `{text}`");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::Ok(())
    };

    cluster.kill_node(follower);
    wait_for_line("a follower is not answering").await?;
    // Dozens of heartbeats fail meanwhile; none of them adds a line.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = std::fs::read_to_string(&leader_log)?;
    assert_eq!(lines_with("a follower is not answering")?, 1, "{log}");
    assert!(
        log.lines()
            .any(|line| line.contains("a follower is not answering")
                && line.contains("last_error=\"tcp connect error\"")),
        "the line names why the follower is unreachable:\n{log}"
    );
    assert!(
        !log.contains("failed to send a heartbeat"),
        "openraft's per-heartbeat warnings are filtered out:\n{log}"
    );

    cluster.start_node(follower)?;
    wait_for_line("a follower answers again").await?;
    cluster.wait_caught_up(Duration::from_secs(30)).await?;
    Ok(())
}

/// The sends a node holds unanswered are bounded in bytes (`max_pending_send_mb`): with
/// nothing able to commit, the leader takes sends until the budget is spent and refuses the
/// rest at once with TOO_MANY_REQUESTS, storing none of them; once the group commits again,
/// the sends it held are acknowledged and the budget is free for new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sends_past_the_pending_budget_are_refused_at_once_and_taken_again_later()
-> anyhow::Result<()> {
    use raftmq::client::ClientError;
    use raftmq_proto::rocketmq::v2::Code;
    const BODY: usize = 1_000_000;
    // 4 MiB holds four 1 MB messages (each with its envelope), not five.
    const HELD: usize = 4;
    const SENT: usize = 12;
    let cluster = Cluster::start(ClusterOptions {
        extra_args: vec!["--max-pending-send-mb".into(), "4".into()],
        ..Default::default()
    })
    .await?;
    cluster.create_topic("busy", 1).await?;
    cluster.wait_caught_up(Duration::from_secs(30)).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    // No majority: nothing the leader takes can commit, so every send it takes stays held.
    for &follower in &followers {
        cluster.pause_node(follower, true)?;
    }
    let client = Arc::new(cluster.node_client(leader));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..SENT {
        let client = client.clone();
        let done_tx = done_tx.clone();
        tokio::spawn(async move {
            let body = vec![i as u8; BODY];
            let outcome = client.send(vec![message("busy", body, None, &[])]).await;
            let _ = done_tx.send((i, outcome));
        });
    }
    drop(done_tx);
    // The refusals come back while the followers are still paused: they were not held.
    let mut refused = Vec::new();
    let give_up = Instant::now() + Duration::from_secs(20);
    while refused.len() < SENT - HELD {
        let left = give_up.saturating_duration_since(Instant::now());
        let (i, outcome) = tokio::time::timeout(left, done_rx.recv())
            .await
            .context("the sends past the budget were not refused while nothing could commit")?
            .context("every send ended")?;
        match outcome {
            Err(ClientError::Rejected {
                code: Code::TooManyRequests,
                message,
                ..
            }) => {
                assert!(
                    message.contains("broker busy") && message.contains("max_pending_send_mb"),
                    "unclear refusal: {message}"
                );
                refused.push(i);
            }
            other => panic!("send {i} ended while nothing could commit: {other:?}"),
        }
    }
    let http = reqwest::Client::new();
    let (_, metrics) = get(&http, &cluster.node(leader).http_addr, "/metrics").await?;
    let pending = sample(&metrics, "raftmq_send_pending_bytes").unwrap_or_default();
    assert!(
        pending > (HELD * BODY) as f64 && pending <= (4 << 20) as f64,
        "the leader should hold the {HELD} sends it took: {pending} bytes"
    );

    for &follower in &followers {
        cluster.pause_node(follower, false)?;
    }
    let mut held = Vec::new();
    while let Some((i, outcome)) = done_rx.recv().await {
        let entries =
            outcome.with_context(|| format!("held send {i} after the group came back"))?;
        assert_eq!(1, entries.len());
        held.push(i);
    }
    assert_eq!(HELD, held.len(), "held {held:?}, refused {refused:?}");

    // The budget is free again: a send of the same size goes through at once.
    let after = client
        .send(vec![message("busy", vec![0xEE; BODY], None, &[])])
        .await
        .context("a send after the held ones were answered")?;
    assert_eq!(1, after.len());
    // Read where every node has applied it (leadership may have moved when the followers
    // woke up).
    cluster.wait_caught_up(Duration::from_secs(30)).await?;
    let (messages, _) = client
        .pull("busy-reader", "busy", 0, 0, 64, Duration::ZERO)
        .await?;
    let mut stored: Vec<u8> = messages.iter().map(|m| m.body[0]).collect();
    stored.sort_unstable();
    let mut expected: Vec<u8> = held.iter().map(|&i| i as u8).chain([0xEE]).collect();
    expected.sort_unstable();
    assert_eq!(
        expected, stored,
        "exactly the held sends and the last one are stored"
    );
    let (_, metrics) = get(&http, &cluster.node(leader).http_addr, "/metrics").await?;
    assert_eq!(Some(0.0), sample(&metrics, "raftmq_send_pending_bytes"));
    assert_eq!(
        Some((SENT - HELD) as f64),
        sample(
            &metrics,
            "raftmq_requests_rejected_total{rpc=\"SendMessage\",code=\"TOO_MANY_REQUESTS\"}"
        )
    );
    // The busy spell is logged once when it starts and once when it ends, not per refusal.
    let log = std::fs::read_to_string(cluster.node(leader).log_file())?;
    let count = |text: &str| log.lines().filter(|line| line.contains(text)).count();
    assert_eq!(1, count("broker busy: sends are refused"), "{log}");
    assert_eq!(1, count("sends are taken again"), "{log}");
    assert_eq!(0, count("request rejected"), "{log}");
    Ok(())
}
