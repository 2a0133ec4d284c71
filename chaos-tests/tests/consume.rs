//! Offset-based consumption: long polling, offsets, and the CLI on a real cluster.

use std::process::Command;
use std::time::{Duration, Instant};

use chaos_tests::cluster::{Cluster, ClusterOptions, raftmq_binary, sample};
use chaos_tests::history::read_topic;
use raftmq::client::message;
use raftmq_proto::raft::v1 as pb;
use raftmq_proto::raft::v1::raft_service_client::RaftServiceClient;
use raftmq_proto::rocketmq::v2::QueryOffsetPolicy;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiting_pull_wakes_when_a_message_is_committed() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.create_topic("poll", 1).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let follower = (1..=3).find(|id| *id != leader).unwrap();

    // A follower holds the long poll: it must wake when its own state machine applies.
    let reader = cluster.node_client(follower);
    let started = Instant::now();
    let pull = tokio::spawn(async move {
        reader
            .pull("g", "poll", 0, 0, 16, Duration::from_secs(20))
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!pull.is_finished(), "an empty queue holds the pull");
    cluster
        .client()
        .send(vec![message("poll", b"wake up".to_vec(), None, &[])])
        .await?;
    let (messages, next) = pull.await??;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "woke before the long-poll timeout"
    );
    assert_eq!(messages.len(), 1);
    assert_eq!(&messages[0].body[..], b"wake up");
    assert_eq!(next, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offsets_are_queried_and_committed() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.create_topic("offsets", 2).await?;
    let client = cluster.client();
    for i in 0..10 {
        client
            .send(vec![message(
                "offsets",
                format!("m{i}").into_bytes(),
                None,
                &[],
            )])
            .await?;
    }
    let begin = client
        .query_offset("offsets", 0, QueryOffsetPolicy::Beginning)
        .await?;
    let end = client
        .query_offset("offsets", 0, QueryOffsetPolicy::End)
        .await?;
    assert_eq!((begin, end), (0, 5), "round robin over 2 queues");
    assert_eq!(client.get_offset("g", "offsets", 0).await?, None);
    client.update_offset("g", "offsets", 0, 3).await?;
    cluster.wait_caught_up(Duration::from_secs(20)).await?;
    for node in 1..=3 {
        assert_eq!(
            cluster
                .node_client(node)
                .get_offset("g", "offsets", 0)
                .await?,
            Some(3)
        );
    }
    // Committing past the end of the queue is refused.
    assert!(client.update_offset("g", "offsets", 0, 6).await.is_err());
    Ok(())
}

/// Propose one offset commit straight to the leader's Raft port, as a follower forwarding a
/// client's call would, and return what applying it produced.
async fn propose_commit(
    cluster: &Cluster,
    offset: u64,
    unless_changed_after: u64,
) -> anyhow::Result<pb::OffsetResult> {
    use pb::propose_response::Outcome;
    for _ in 0..50 {
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
        let mut raft =
            RaftServiceClient::connect(format!("http://{}", cluster.node(leader).raft_addr))
                .await?;
        let request = pb::ProposeRequest {
            command: Some(pb::Command {
                kind: Some(pb::command::Kind::CommitOffset(pb::CommitOffset {
                    group: "g".into(),
                    topic: "late".into(),
                    queue_id: 0,
                    offset,
                    unless_changed_after: Some(unless_changed_after),
                })),
            }),
        };
        match raft.propose(request).await?.into_inner().outcome {
            Some(Outcome::Result(pb::CommandResult {
                kind: Some(pb::command_result::Kind::Offset(result)),
            })) => return Ok(result),
            Some(Outcome::NotLeader(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            other => anyhow::bail!("unexpected propose outcome {other:?}"),
        }
    }
    anyhow::bail!("no leader took the commit")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_applied_after_a_newer_one_leaves_the_offset_alone() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.create_topic("late", 1).await?;
    let client = cluster.client();
    for i in 0..10 {
        client
            .send(vec![message(
                "late",
                format!("m{i}").into_bytes(),
                None,
                &[],
            )])
            .await?;
    }
    // What a node saw when it took a client's commit: the log up to here.
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let seen = cluster
        .node_client(leader)
        .cluster_status()
        .await
        .pop()
        .and_then(|(_, status)| status.ok())
        .and_then(|status| status.applied_index)
        .expect("the leader reports its applied index");

    // The client gave up on that commit and committed a newer offset; then the old commit
    // reaches the leader. It must not move the offset back.
    client.update_offset("g", "late", 0, 8).await?;
    let late = propose_commit(&cluster, 3, seen).await?;
    let changed_at = late.changed_at.expect("the late commit is dropped");
    assert!(changed_at > seen, "changed at {changed_at}, seen {seen}");
    cluster.wait_caught_up(Duration::from_secs(20)).await?;
    for node in 1..=3 {
        assert_eq!(
            cluster.node_client(node).get_offset("g", "late", 0).await?,
            Some(8),
            "node {node}"
        );
    }

    // A commit that saw the newer one applies, even one that moves the offset back (a reset).
    let reset = propose_commit(&cluster, 5, changed_at).await?;
    assert_eq!(reset.changed_at, None);
    assert_eq!(client.get_offset("g", "late", 0).await?, Some(5));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_produces_consumes_and_reports() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions {
        auto_create_topics: true,
        ..Default::default()
    })
    .await?;
    let cli = Cli::for_cluster(&cluster)?;
    let run = |args: &[&str]| cli.ok(args);
    run(&["produce", "--topic", "cli", "--count", "25"]);
    let consumed = run(&[
        "consume",
        "--topic",
        "cli",
        "--from",
        "beginning",
        "--count",
        "25",
    ]);
    assert_eq!(
        consumed.lines().filter(|l| !l.trim().is_empty()).count(),
        25,
        "{consumed}"
    );

    let status: serde_json::Value = serde_json::from_str(&run(&["admin", "cluster", "--json"]))?;
    let nodes = status["nodes"].as_array().expect("nodes array");
    assert_eq!(nodes.len(), 3);
    assert_eq!(
        nodes.iter().filter(|n| n["role"] == "leader").count(),
        1,
        "{status}"
    );
    let table = run(&["admin", "cluster"]);
    assert!(table.contains("leader"), "{table}");
    let leader_id = nodes.iter().find(|n| n["role"] == "leader").unwrap()["node_id"].clone();
    assert!(
        table.contains(&format!("node {leader_id} has led term")),
        "the table says how long the leader has led:\n{table}"
    );

    let described = run(&["admin", "topic", "describe", "cli"]);
    assert!(described.contains("cli"), "{described}");

    // A read never creates a topic, even where sends do: a mistyped name is refused.
    let typo = cli.run(&["consume", "--topic", "clj", "--from", "beginning"]);
    let stderr = String::from_utf8_lossy(&typo.stderr);
    assert!(!typo.status.success(), "{stderr}");
    assert!(
        stderr.contains("topic `clj` does not exist, so there is nothing to consume"),
        "{stderr}"
    );
    let listed = run(&["admin", "topic", "list"]);
    assert!(
        !listed.contains("clj"),
        "the consume created the topic:\n{listed}"
    );
    assert!(listed.contains("cli"), "{listed}");

    // The produce benchmark: what it sends during its warmup is stored but left out of its
    // figures.
    cluster.create_topic("bench-cli", 2).await?;
    let (rate, seconds, concurrency) = (40, 2, 4);
    let report: serde_json::Value = serde_json::from_str(&run(&[
        "bench",
        "produce",
        "--topic",
        "bench-cli",
        "--concurrency",
        &concurrency.to_string(),
        "--rate",
        &rate.to_string(),
        "--warmup",
        "1s",
        "--duration",
        &format!("{seconds}s"),
        "--json",
    ]))?;
    let acked = report["acked"].as_u64().expect("acked count");
    assert_eq!(report["failed"], 0, "{report}");
    assert!(
        acked > 0 && acked <= rate * seconds + concurrency,
        "at most the measured seconds' sends are counted: {report}"
    );
    let stored = read_topic(&cluster.client(), "bench-cli", 2).await?.len() as u64;
    assert!(
        stored > acked,
        "the warmup's sends are stored but not counted: {stored} stored, {report}"
    );

    // Random bodies: every acknowledged send is stored, and the bodies differ from each other.
    cluster.create_topic("bench-random", 1).await?;
    let report: serde_json::Value = serde_json::from_str(&run(&[
        "bench",
        "produce",
        "--topic",
        "bench-random",
        "--body",
        "random",
        "--size",
        "64",
        "--concurrency",
        "4",
        "--duration",
        "1s",
        "--json",
    ]))?;
    assert_eq!(report["failed"], 0, "{report}");
    let stored = read_topic(&cluster.client(), "bench-random", 1).await?;
    assert_eq!(
        Some(stored.len() as u64),
        report["acked"].as_u64(),
        "{report}"
    );
    let bodies: std::collections::HashSet<&str> = stored.iter().map(|m| m.body.as_str()).collect();
    assert!(
        stored.len() > 1 && bodies.len() > 1 && !bodies.contains("x".repeat(64).as_str()),
        "{} stored, {} distinct bodies",
        stored.len(),
        bodies.len()
    );

    // Over both of the load generator's connections: bare calls, and a send the broker
    // refuses (a body over the 4 MiB limit), which counts as failed, not acked: with nothing
    // acknowledged the run fails, naming the broker's reason, and still reports its figures.
    for connection in ["direct", "channel"] {
        let bench = |args: &[&str]| -> anyhow::Result<serde_json::Value> {
            let mut all = vec!["bench"];
            all.extend_from_slice(args);
            all.extend_from_slice(&["--duration", "1s", "--connection", connection, "--json"]);
            Ok(serde_json::from_str(&run(&all))?)
        };
        let report = bench(&["rpc", "--concurrency", "8"])?;
        assert!(report["calls"].as_u64() > Some(0), "{report}");
        assert_eq!(report["failed"], 0, "{report}");

        let too_large = (4 * 1024 * 1024 + 1).to_string();
        let output = cli.run(&[
            "bench",
            "produce",
            "--topic",
            "bench-cli",
            "--size",
            &too_large,
            "--concurrency",
            "1",
            "--duration",
            "1s",
            "--connection",
            connection,
            "--json",
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        let cause = "rejected with MessageBodyTooLarge";
        assert!(
            stderr.contains("nothing was acknowledged") && stderr.contains(cause),
            "{stderr}"
        );
        let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        assert_eq!(report["acked"], 0, "{report}");
        assert!(report["failed"].as_u64() > Some(0), "{report}");
        assert!(
            report["first_failure"]
                .as_str()
                .is_some_and(|first| first.starts_with(cause)),
            "{report}"
        );
    }
    Ok(())
}

/// `admin cluster` prints every node it asked, and fails when none of them answered, so that a
/// script can tell a group that is down (or a wrong endpoint list) from a healthy one.
#[test]
fn admin_cluster_fails_when_no_node_answers() -> anyhow::Result<()> {
    // A port nothing listens on: bound, then released.
    let nobody = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string();
    for (format, unreachable_shown) in [
        (None, "unreachable"),
        (Some("--json"), "\"reachable\": false"),
    ] {
        let output = Command::new(raftmq_binary()?)
            .args(["admin", "cluster", "--endpoints", &nobody])
            .args(format)
            .output()?;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
        assert!(!output.status.success(), "{format:?}: exited 0\n{stdout}");
        assert!(stdout.contains(unreachable_shown), "{format:?}: {stdout}");
        if format.is_none() {
            assert!(stdout.contains("cut off from the majority"), "{stdout}");
        }
        assert!(
            stderr.contains("no node answered") && stderr.contains(&nobody),
            "{format:?}: {stderr}"
        );
    }
    Ok(())
}

/// A node that accepts connections but never answers (a paused process) costs `admin cluster`
/// the `--timeout-ms` given, not the 2 s default: the failover drills poll the leader this way
/// and would otherwise report a paused leader's failover seconds longer than it was.
#[test]
fn admin_cluster_waits_for_a_silent_node_only_as_long_as_asked() -> anyhow::Result<()> {
    // Bound and listening, never accepting: the kernel completes the handshake, nobody speaks.
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let silent_addr = silent.local_addr()?.to_string();
    let started = std::time::Instant::now();
    let output = Command::new(raftmq_binary()?)
        .args(["admin", "--timeout-ms", "100", "cluster", "--json"])
        .args(["--endpoints", &silent_addr])
        .output()?;
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "exited 0\n{stdout}");
    assert!(stdout.contains("\"reachable\": false"), "{stdout}");
    assert!(
        took < std::time::Duration::from_millis(1900),
        "waited {took:?} for a silent node with --timeout-ms 100"
    );

    let output = Command::new(raftmq_binary()?)
        .args(["admin", "--timeout-ms", "0", "cluster"])
        .args(["--endpoints", &silent_addr])
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--timeout-ms"), "{stderr}");
    Ok(())
}

/// The `raftmq` binary pointed at one cluster.
struct Cli {
    binary: std::path::PathBuf,
    endpoints: String,
}

impl Cli {
    fn for_cluster(cluster: &Cluster) -> anyhow::Result<Cli> {
        Ok(Cli {
            binary: raftmq_binary()?,
            endpoints: cluster.endpoints().join(","),
        })
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.binary)
            .args(args)
            .args(["--endpoints", &self.endpoints])
            .output()
            .expect("run raftmq")
    }

    /// Stdout of a command that must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "raftmq {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// `admin group describe` shows how far a group has consumed: its committed offset and lag in
/// every queue of the topics it reads, also queues it has not committed in yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_group_describe_shows_committed_offsets_and_lag() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.create_topic("lagged", 2).await?;
    let cli = Cli::for_cluster(&cluster)?;
    let describe = |group: &str| -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(
            &cli.ok(&["admin", "group", "describe", group, "--json"]),
        )?)
    };
    let sum = |queues: &serde_json::Value, field: &str| -> u64 {
        queues
            .as_array()
            .expect("queues array")
            .iter()
            .map(|q| q[field].as_u64().unwrap_or(0))
            .sum()
    };

    cli.ok(&["produce", "--topic", "lagged", "--count", "40"]);
    // 10 messages: all from queue 0 (the CLI drains queue by queue), none from queue 1.
    cli.ok(&[
        "consume",
        "--topic",
        "lagged",
        "--group",
        "readers",
        "--from",
        "beginning",
        "--count",
        "10",
    ]);
    let progress = describe("readers")?;
    let queues = &progress["queues"];
    assert_eq!(2, queues.as_array().unwrap().len(), "{progress}");
    assert_eq!(40, sum(queues, "max_offset"), "{progress}");
    assert_eq!(10, sum(queues, "committed_offset"), "{progress}");
    assert_eq!(30, progress["lag"].as_u64().unwrap(), "{progress}");
    assert!(
        queues[1]["committed_offset"].is_null(),
        "queue 1 has no committed offset: {progress}"
    );
    assert_eq!(
        queues[1]["max_offset"], queues[1]["lag"],
        "a queue without an offset lags by all its messages: {progress}"
    );
    assert!(progress["group"].is_null(), "never created: {progress}");

    // Drain the rest from the committed offsets: no lag left.
    cli.ok(&["consume", "--topic", "lagged", "--group", "readers"]);
    let progress = describe("readers")?;
    assert_eq!(
        40,
        sum(&progress["queues"], "committed_offset"),
        "{progress}"
    );
    assert_eq!(0, progress["lag"].as_u64().unwrap(), "{progress}");
    let table = cli.ok(&["admin", "group", "describe", "readers"]);
    assert!(table.contains("total lag 0 message(s)"), "{table}");

    // A created group that has consumed nothing yet.
    cli.ok(&["admin", "group", "create", "idle"]);
    let progress = describe("idle")?;
    assert_eq!("idle", progress["group"]["name"], "{progress}");
    assert!(
        progress["queues"].as_array().unwrap().is_empty(),
        "{progress}"
    );

    // `group list` names both, with their lag: the pull group, never created, too.
    let listed: serde_json::Value =
        serde_json::from_str(&cli.ok(&["admin", "group", "list", "--json"]))?;
    let listed = listed["groups"].as_array().expect("groups array");
    let entry = |name: &str| listed.iter().find(|g| g["name"] == name).cloned();
    let readers = entry("readers").expect("readers listed");
    assert_eq!(
        (Some(false), Some(0), Some(0)),
        (
            readers["created"].as_bool(),
            readers["lag"].as_u64(),
            readers["consumers_online"].as_u64()
        ),
        "{readers}: its consumers said goodbye when they stopped"
    );
    let idle = entry("idle").expect("idle listed");
    assert!(idle["created"] == true && idle["lag"].is_null(), "{idle}");
    let table = cli.ok(&["admin", "group", "list"]);
    assert!(
        table.contains("LAG") && table.contains("readers"),
        "{table}"
    );

    // Unknown and illegal names fail with their reason.
    for (group, reason) in [
        (
            "nobody",
            "was never created, has committed no offset and has no consumer online (NotFound)",
        ),
        ("bad group!", "illegal consumer group"),
    ] {
        let output = cli.run(&["admin", "group", "describe", group]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{group}: exited 0");
        assert!(stderr.contains(reason), "{group}: {stderr}");
    }
    Ok(())
}

/// `admin group reset-offsets` moves a pull group's offsets in every queue of a topic: back to
/// the start, to a point in time, to an offset, or past the end; a dry run commits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_group_reset_offsets_replays_and_skips() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.create_topic("replay", 2).await?;
    let cli = Cli::for_cluster(&cluster)?;
    let lag = || -> anyhow::Result<u64> {
        let progress: serde_json::Value =
            serde_json::from_str(&cli.ok(&["admin", "group", "describe", "replayers", "--json"]))?;
        Ok(progress["lag"].as_u64().unwrap_or(u64::MAX))
    };
    let consume = || {
        cli.ok(&["consume", "--topic", "replay", "--group", "replayers"])
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count()
    };
    let reset = |to: &[&str]| {
        let mut args = vec![
            "admin",
            "group",
            "reset-offsets",
            "replayers",
            "--topic",
            "replay",
        ];
        args.extend_from_slice(to);
        cli.ok(&args)
    };

    cli.ok(&["produce", "--topic", "replay", "--count", "10"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis()
        .to_string();
    tokio::time::sleep(Duration::from_millis(100)).await;
    cli.ok(&["produce", "--topic", "replay", "--count", "6"]);
    assert_eq!(16, consume());
    assert_eq!(0, lag()?);

    // A dry run shows the move and commits nothing.
    let shown = reset(&["--to-earliest", "--dry-run"]);
    assert!(shown.contains("dry run, nothing committed"), "{shown}");
    assert_eq!(0, lag()?);

    reset(&["--to-earliest"]);
    assert_eq!(16, lag()?);
    assert_eq!(
        16,
        consume(),
        "everything again after a reset to the earliest"
    );

    reset(&["--to-timestamp-ms", &later]);
    assert_eq!(6, lag()?, "the messages stored after the timestamp");
    assert_eq!(6, consume());

    reset(&["--to-offset", "2"]);
    assert_eq!(12, lag()?, "two messages in each of two queues are skipped");
    reset(&["--to-latest"]);
    assert_eq!(0, lag()?);
    assert_eq!(0, consume());

    // Bad input: no target, an unknown topic, an illegal group name.
    let output = cli.run(&[
        "admin",
        "group",
        "reset-offsets",
        "replayers",
        "--topic",
        "replay",
    ]);
    assert!(!output.status.success());
    for (args, reason) in [
        (
            vec!["replayers", "--topic", "nope", "--to-latest"],
            "topic `nope` does not exist",
        ),
        (
            vec!["bad group!", "--topic", "replay", "--to-latest"],
            "illegal consumer group",
        ),
    ] {
        let mut all = vec!["admin", "group", "reset-offsets"];
        all.extend(args);
        let output = cli.run(&all);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{all:?}: exited 0");
        assert!(stderr.contains(reason), "{all:?}: {stderr}");
    }
    Ok(())
}

/// A pull consumer keeps its position in memory and commits it again, so a reset of its
/// group's offsets on its topic is refused while it runs, naming it, unless forced. `admin
/// group describe` lists it; once it stops it says goodbye and the reset goes through at once.
/// A member that cannot say which consumers call it also stops a reset, short of --force.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reset_is_refused_while_a_pull_consumer_of_the_group_runs() -> anyhow::Result<()> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.create_topic("watched", 2).await?;
    cluster.create_topic("unwatched", 1).await?;
    cluster.create_topic("looked", 1).await?;
    let cli = Cli::for_cluster(&cluster)?;
    cli.ok(&["produce", "--topic", "watched", "--count", "4"]);
    let describe = || -> anyhow::Result<serde_json::Value> {
        let output = cli.ok(&["admin", "group", "describe", "watchers", "--json"]);
        Ok(serde_json::from_str(&output)?)
    };
    let reset = |topic: &str, extra: &[&str]| {
        let mut args = vec![
            "admin",
            "group",
            "reset-offsets",
            "watchers",
            "--topic",
            topic,
        ];
        args.extend_from_slice(extra);
        cli.run(&args)
    };

    let mut consumer = KillOnDrop(
        Command::new(&cli.binary)
            .args([
                "consume", "--topic", "watched", "--group", "watchers", "--follow",
            ])
            .args(["--endpoints", &cli.endpoints])
            .stdout(std::process::Stdio::null())
            .spawn()?,
    );
    // Listed once it has pulled, and caught up once its commits reach the end.
    let deadline = Instant::now() + Duration::from_secs(20);
    let consumer_id = loop {
        let listed = cli.run(&["admin", "group", "describe", "watchers", "--json"]);
        if listed.status.success() {
            let progress: serde_json::Value = serde_json::from_slice(&listed.stdout)?;
            if let [client] = progress["clients"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[])
                && progress["lag"] == 0
                && progress["queues"].as_array().is_some_and(|q| q.len() == 2)
            {
                assert_eq!(client["kind"], "pull", "{progress}");
                assert_eq!(
                    client["topics"],
                    serde_json::json!(["watched"]),
                    "{progress}"
                );
                assert_eq!(progress["unanswered_nodes"], serde_json::json!([]));
                break client["client_id"].as_str().unwrap_or_default().to_string();
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the running consumer was never listed with its commits: {}",
            String::from_utf8_lossy(&listed.stdout)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(consumer_id.starts_with("raftmq-cli@"), "{consumer_id}");

    let refused = reset("watched", &["--to-earliest"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "a reset under a running consumer"
    );
    for part in [
        "group `watchers` has 1 pull consumer(s) online on `watched`",
        consumer_id.as_str(),
        "--force",
    ] {
        assert!(stderr.contains(part), "`{part}` missing: {stderr}");
    }
    assert_eq!(describe()?["lag"], 0, "the refused reset moved nothing");
    // A dry run and a topic the consumer does not read are not refused.
    assert!(
        reset("watched", &["--to-earliest", "--dry-run"])
            .status
            .success()
    );
    assert!(reset("unwatched", &["--to-latest"]).status.success());
    // Forced, the reset happens.
    let forced = reset("watched", &["--to-earliest", "--force"]);
    assert!(forced.status.success(), "{forced:?}");
    assert_eq!(describe()?["lag"], 4);

    // A consumer that commits nothing: its group, never created, is described by the topic it
    // reads, every queue lagging by all its messages.
    cli.ok(&["produce", "--topic", "looked", "--count", "3"]);
    let _looker = KillOnDrop(
        Command::new(&cli.binary)
            .args(["consume", "--topic", "looked", "--group", "lookers"])
            .args(["--follow", "--no-commit", "--endpoints", &cli.endpoints])
            .stdout(std::process::Stdio::null())
            .spawn()?,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = cli.run(&["admin", "group", "describe", "lookers", "--json"]);
        if listed.status.success() {
            let progress: serde_json::Value = serde_json::from_slice(&listed.stdout)?;
            assert_eq!(progress["group"], serde_json::Value::Null, "{progress}");
            assert_eq!(
                progress["queues"],
                serde_json::json!([{
                    "topic": "looked",
                    "queue_id": 0,
                    "committed_offset": null,
                    "max_offset": 3,
                    "lag": 3,
                }]),
                "{progress}"
            );
            break;
        }
        let stderr = String::from_utf8_lossy(&listed.stderr);
        assert!(stderr.contains("no consumer online"), "{stderr}");
        anyhow::ensure!(Instant::now() < deadline, "the reader was never listed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // `group list` counts each group's consumers online, and names a group known by nothing
    // else, with the lag of the topic its consumer reads.
    let listed: serde_json::Value =
        serde_json::from_str(&cli.ok(&["admin", "group", "list", "--json"]))?;
    let online: Vec<_> = listed["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            (
                g["name"].clone(),
                g["consumers_online"].clone(),
                g["lag"].clone(),
            )
        })
        .collect();
    assert_eq!(
        online,
        vec![
            (json!("lookers"), json!(1), json!(3)),
            (json!("watchers"), json!(1), json!(4)),
        ],
        "{listed}"
    );

    // So does `/metrics`, on the node the consumer calls.
    let series = r#"raftmq_consumer_lag_messages{group="lookers",topic="looked"}"#;
    let mut reported = Vec::new();
    for id in 1..=3 {
        reported.push(sample(&cluster.metrics(id).await?, series));
    }
    assert!(
        reported.contains(&Some(3.0)) && reported.iter().flatten().all(|lag| *lag == 3.0),
        "{series} on nodes 1..=3: {reported:?}"
    );

    // Stopped, it says goodbye: no longer listed, and a reset needs no force.
    kill(Pid::from_raw(consumer.0.id() as i32), Signal::SIGINT)?;
    let status = consumer.0.wait()?;
    assert!(status.success(), "consume stopped by SIGINT: {status}");
    assert_eq!(describe()?["clients"], serde_json::json!([]));
    let after = reset("watched", &["--to-latest"]);
    assert!(after.status.success(), "{after:?}");
    assert_eq!(describe()?["lag"], 0);

    // A member that does not answer might serve a pull consumer.
    cluster.stop_node(3);
    cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let mut progress = describe()?;
    for _ in 0..50 {
        if progress["unanswered_nodes"] == serde_json::json!([3]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        progress = describe()?;
    }
    assert_eq!(
        progress["unanswered_nodes"],
        serde_json::json!([3]),
        "{progress}"
    );
    let unknown = reset("watched", &["--to-earliest"]);
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(!unknown.status.success(), "a reset with a member silent");
    assert!(stderr.contains("node 3 did not say"), "{stderr}");
    assert!(
        reset("watched", &["--to-earliest", "--force"])
            .status
            .success()
    );
    assert_eq!(describe()?["lag"], 4);
    Ok(())
}

/// A child process that must not outlive a failed test.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
