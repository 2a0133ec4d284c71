//! The official RocketMQ 5 Python client (`rocketmq-python-client` 5.1.2) against a real
//! three-node cluster.
//!
//! Each test starts a cluster and runs one scenario of `chaos-tests/python/rocketmq_scenarios.py`
//! with the Python of the virtualenv that `scripts/python-env.sh` creates
//! (`target/python-venv`), or with `RAFTMQ_PYTHON`. The script prints its progress and, as its
//! last line, a JSON summary; it exits non-zero when an expectation about the broker fails.
//! Without the virtualenv these tests fail: they never pass by skipping.
//!
//! The client is given one node as its access point, a follower, so that its requests take the
//! forwarding path most clients take. One address only: Python 5.1.2 joins several addresses of
//! one `Endpoints` into one gRPC target, `ipv4:h1:p1,h2:p2,h3:p3`, and gRPC sends that whole
//! list as the HTTP/2 `:authority`, which the server's HTTP/2 layer rejects as malformed. The
//! broker therefore routes Python clients to one node per queue, spread over the group.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chaos_tests::cluster::{Cluster, ClusterOptions};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// The Python that has `rocketmq-python-client` installed.
fn python() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("RAFTMQ_PYTHON") {
        return Ok(PathBuf::from(path));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("locate the workspace root")?;
    let venv_python = workspace.join("target/python-venv/bin/python");
    if !venv_python.exists() {
        bail!(
            "{} does not exist: run scripts/python-env.sh first (or set RAFTMQ_PYTHON to a Python \
             with rocketmq-python-client 5.1.2)",
            venv_python.display()
        );
    }
    Ok(venv_python)
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python/rocketmq_scenarios.py")
}

/// The client's access point: one follower's address.
async fn follower_access_point(cluster: &Cluster) -> anyhow::Result<String> {
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let follower = cluster
        .nodes
        .iter()
        .find(|n| n.id != leader)
        .context("a follower")?;
    Ok(follower.client_addr.clone())
}

/// A running scenario script whose output is collected line by line.
struct Scenario {
    name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

/// How a scenario ended.
struct Outcome {
    status: ExitStatus,
    output: String,
    summary: Value,
}

impl Scenario {
    fn spawn(scenario: &str, args: &[String]) -> anyhow::Result<Scenario> {
        let python = python()?;
        let mut child = Command::new(&python)
            .arg("-u")
            .arg(script())
            .arg(scenario)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {} {}", python.display(), script().display()))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().context("take stdout")?;
        let stderr = child.stderr.take().context("take stderr")?;
        let readers = vec![
            tokio::spawn(collect(stdout, lines.clone(), "")),
            tokio::spawn(collect(stderr, lines.clone(), "stderr: ")),
        ];
        Ok(Scenario {
            name: scenario.to_string(),
            child,
            lines,
            readers,
        })
    }

    fn output(&self) -> String {
        self.lines.lock().expect("lines lock").join("\n")
    }

    /// Wait until the script printed a line containing `marker`.
    async fn wait_for_line(&self, marker: &str, timeout: Duration) -> anyhow::Result<()> {
        let give_up = Instant::now() + timeout;
        loop {
            if self
                .lines
                .lock()
                .expect("lines lock")
                .iter()
                .any(|l| l.contains(marker))
            {
                return Ok(());
            }
            if Instant::now() > give_up {
                bail!(
                    "scenario {} printed no {marker:?} within {timeout:?}:\n{}",
                    self.name,
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait (bounded) for the script to exit and parse its JSON summary.
    async fn finish(mut self, timeout: Duration) -> anyhow::Result<Outcome> {
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status?,
            Err(_) => {
                let _ = self.child.kill().await;
                bail!(
                    "scenario {} still running after {timeout:?}; killed it. Output:\n{}",
                    self.name,
                    self.output()
                );
            }
        };
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
        let output = self.output();
        let summary = output
            .lines()
            .rev()
            .find_map(|l| {
                serde_json::from_str::<Value>(l)
                    .ok()
                    .filter(Value::is_object)
            })
            .unwrap_or(Value::Null);
        Ok(Outcome {
            status,
            output,
            summary,
        })
    }
}

async fn collect(stream: impl AsyncRead + Unpin, lines: Arc<Mutex<Vec<String>>>, prefix: &str) {
    let mut reader = BufReader::new(stream).lines();
    while let Ok(Some(line)) = reader.next_line().await {
        eprintln!("py| {prefix}{line}");
        lines
            .lock()
            .expect("lines lock")
            .push(format!("{prefix}{line}"));
    }
}

impl Outcome {
    /// Panic with the script's output and the brokers' logs unless the scenario passed.
    fn assert_passed(&self, cluster: &Cluster) {
        assert!(
            self.status.success() && self.summary["ok"] == Value::Bool(true),
            "python scenario failed ({}): {}\nsummary: {}\n--- script output\n{}\n--- broker logs\n{}",
            self.status,
            self.summary["error"]
                .as_str()
                .unwrap_or("(no error in the summary)"),
            self.summary,
            self.output,
            cluster.log_tails(40)
        );
    }

    fn number(&self, key: &str) -> u64 {
        self.summary[key]
            .as_u64()
            .unwrap_or_else(|| panic!("summary has no number {key:?}: {}", self.summary))
    }
}

/// Run one scenario to its end with a follower as the access point.
async fn run(
    cluster: &Cluster,
    scenario: &str,
    topic: &str,
    group: Option<&str>,
) -> anyhow::Result<Outcome> {
    run_with(
        &follower_access_point(cluster).await?,
        scenario,
        topic,
        group,
    )
    .await
}

async fn run_with(
    access_point: &str,
    scenario: &str,
    topic: &str,
    group: Option<&str>,
) -> anyhow::Result<Outcome> {
    let mut args = vec![
        "--endpoints".to_string(),
        access_point.to_string(),
        "--topic".to_string(),
        topic.to_string(),
        "--queues".to_string(),
        QUEUES.to_string(),
        "--timeout".to_string(),
        "50".to_string(),
    ];
    if let Some(group) = group {
        args.extend(["--group".to_string(), group.to_string()]);
    }
    Scenario::spawn(scenario, &args)?
        .finish(Duration::from_secs(60))
        .await
}

const QUEUES: u32 = 4;

async fn cluster_with_topic(topic: &str) -> anyhow::Result<Cluster> {
    // Fail before starting brokers when the client is not installed.
    python()?;
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.create_topic(topic, QUEUES).await?;
    Ok(cluster)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_producer_sends_normal_messages_from_1_byte_to_4_mib() -> anyhow::Result<()> {
    let cluster = cluster_with_topic("py-produce").await?;
    let outcome = run(&cluster, "produce", "py-produce", None).await?;
    outcome.assert_passed(&cluster);
    // 7 body sizes, 20 small messages and one FIFO message.
    assert_eq!(outcome.number("sent"), 28, "{}", outcome.summary);
    assert!(
        outcome.summary["oversize_refused_with"].is_string(),
        "{}",
        outcome.summary
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_simple_consumer_receives_matching_tags_and_acks() -> anyhow::Result<()> {
    let cluster = cluster_with_topic("py-simple").await?;
    let outcome = run(&cluster, "simple", "py-simple", None).await?;
    outcome.assert_passed(&cluster);
    assert_eq!(outcome.number("received"), 20, "{}", outcome.summary);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_simple_consumer_gets_unacked_messages_back_after_their_invisible_duration()
-> anyhow::Result<()> {
    let cluster = cluster_with_topic("py-redeliver").await?;
    let outcome = run(&cluster, "redeliver", "py-redeliver", None).await?;
    outcome.assert_passed(&cluster);
    assert_eq!(
        outcome.summary["redelivered_late_s"]
            .as_object()
            .map(|o| o.len()),
        Some(2),
        "{}",
        outcome.summary
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_fifo_consumer_sees_each_message_group_in_send_order() -> anyhow::Result<()> {
    let cluster = cluster_with_topic("py-fifo").await?;
    cluster.create_group("py-fifo-group", true, 17).await?;
    let outcome = run(&cluster, "fifo", "py-fifo", Some("py-fifo-group")).await?;
    outcome.assert_passed(&cluster);
    assert_eq!(outcome.number("acked"), 100, "{}", outcome.summary);
    assert_eq!(
        outcome.summary["overlap"],
        serde_json::json!([]),
        "{}",
        outcome.summary
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_push_consumer_acks_and_gets_a_failed_message_again() -> anyhow::Result<()> {
    let cluster = cluster_with_topic("py-push").await?;
    let outcome = run(&cluster, "push", "py-push", None).await?;
    outcome.assert_passed(&cluster);
    assert_eq!(outcome.number("delivered"), 20, "{}", outcome.summary);
    assert_eq!(outcome.number("acked"), 20, "{}", outcome.summary);
    assert_eq!(
        outcome.summary["failed_attempts"],
        serde_json::json!([1, 2]),
        "{}",
        outcome.summary
    );
    Ok(())
}

/// The names of the topics the group holds.
async fn topic_names(cluster: &Cluster) -> anyhow::Result<Vec<String>> {
    Ok(cluster
        .topics()
        .await?
        .into_iter()
        .map(|(name, _)| name)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_consumers_started_before_their_topic_exists_get_its_first_messages()
-> anyhow::Result<()> {
    python()?;
    let cluster = Cluster::start(ClusterOptions {
        auto_create_topics: true,
        extra_args: vec!["--default-queues".into(), QUEUES.to_string()],
        ..Default::default()
    })
    .await?;
    let hold_file = cluster.root().join("consumers-looked-at");
    let args = vec![
        "--endpoints".to_string(),
        follower_access_point(&cluster).await?,
        "--topic".to_string(),
        "py-first".to_string(),
        "--group".to_string(),
        "py-first-g".to_string(),
        "--timeout".to_string(),
        "50".to_string(),
        "--hold-file".to_string(),
        hold_file.display().to_string(),
    ];
    let scenario = Scenario::spawn("consumer_first", &args)?;
    scenario
        .wait_for_line("PHASE consumers started", Duration::from_secs(40))
        .await?;
    // Route queries, assignments and receives of the starting consumers created nothing.
    assert_eq!(topic_names(&cluster).await?, Vec::<String>::new());
    // Both running consumers are listed among their groups' consumers online, each of its
    // kind (the push consumer's Heartbeat says push) and with the topic it reads.
    scenario
        .wait_for_line("PHASE consumers caught up", Duration::from_secs(40))
        .await?;
    for (group, kind) in [("py-first-g-push", "push"), ("py-first-g", "simple")] {
        let output = std::process::Command::new(chaos_tests::cluster::raftmq_binary()?)
            .args(["admin", "group", "describe", group, "--json"])
            .args(["--endpoints", &cluster.endpoints().join(",")])
            .output()?;
        let described: serde_json::Value = serde_json::from_slice(&output.stdout)
            .with_context(|| String::from_utf8_lossy(&output.stderr).into_owned())?;
        let clients = described["clients"].as_array().cloned().unwrap_or_default();
        anyhow::ensure!(
            clients.len() == 1
                && clients[0]["kind"] == kind
                && clients[0]["topics"] == serde_json::json!(["py-first"]),
            "group {group}: one {kind} consumer of py-first expected: {described}"
        );
    }
    std::fs::write(&hold_file, b"")?;
    let outcome = scenario.finish(Duration::from_secs(60)).await?;
    outcome.assert_passed(&cluster);
    assert_eq!(outcome.number("received"), 10, "{}", outcome.summary);
    assert_eq!(outcome.number("pushed"), 10, "{}", outcome.summary);
    // The producer's first send created it.
    assert_eq!(topic_names(&cluster).await?, vec!["py-first".to_string()]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_delay_messages_arrive_at_their_delivery_time() -> anyhow::Result<()> {
    let cluster = cluster_with_topic("py-delay").await?;
    let outcome = run(&cluster, "delay", "py-delay", None).await?;
    outcome.assert_passed(&cluster);
    eprintln!(
        "delay messages late by (ms): {}",
        outcome.summary["late_ms"]
    );
    assert_eq!(outcome.number("delivered"), 4, "{}", outcome.summary);
    assert!(
        outcome.summary["too_far_refused_with"].is_string(),
        "{}",
        outcome.summary
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_transactions_commit_roll_back_and_resolve_by_check_back() -> anyhow::Result<()> {
    let cluster = cluster_with_topic("py-tx").await?;
    let outcome = run(&cluster, "transaction", "py-tx", None).await?;
    outcome.assert_passed(&cluster);
    eprintln!(
        "delivered after (s): {}; checked after (s): {}",
        outcome.summary["delivered_after_s"], outcome.summary["checked_after_s"]
    );
    assert_eq!(
        outcome.summary["delivered"],
        serde_json::json!(["check-commit", "commit"]),
        "{}",
        outcome.summary
    );
    Ok(())
}

/// Which node a failover test kills while the Python clients run.
#[derive(Clone, Copy, Debug)]
enum Victim {
    Leader,
    /// The node the clients were given as their one access point (a follower).
    AccessPoint,
}

/// The same producer and consumer objects, connected to a follower, keep working while
/// `victim` is SIGKILLed. Every acknowledged send is received; duplicates are only reported.
async fn python_clients_survive_a_kill(victim: Victim) -> anyhow::Result<()> {
    const PRODUCE: Duration = Duration::from_secs(15);
    let topic = format!("py-failover-{victim:?}").to_lowercase();
    let mut cluster = cluster_with_topic(&topic).await?;
    let access_point = follower_access_point(&cluster).await?;
    let args = vec![
        "--endpoints".to_string(),
        access_point.clone(),
        "--topic".to_string(),
        topic.clone(),
        "--duration".to_string(),
        PRODUCE.as_secs().to_string(),
        "--drain".to_string(),
        "25".to_string(),
        "--timeout".to_string(),
        "52".to_string(),
    ];
    let scenario = Scenario::spawn("failover", &args)?;
    scenario
        .wait_for_line("PHASE producing", Duration::from_secs(25))
        .await?;
    let producing = Instant::now();

    tokio::time::sleep(PRODUCE / 3).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await?;
    assert_ne!(
        cluster.node(leader).client_addr,
        access_point,
        "the access point was a follower when the script started"
    );
    let killed = match victim {
        Victim::Leader => leader,
        Victim::AccessPoint => cluster
            .nodes
            .iter()
            .find(|n| n.client_addr == access_point)
            .map(|n| n.id)
            .context("the access point node")?,
    };
    cluster.kill_node(killed);
    let new_leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    eprintln!(
        "killed node {killed} ({victim:?}) {:?} into producing; node {new_leader} leads",
        producing.elapsed()
    );

    let outcome = scenario.finish(Duration::from_secs(50)).await?;
    eprintln!(
        "killed node {killed} ({victim:?}); summary {}",
        outcome.summary
    );
    outcome.assert_passed(&cluster);
    assert_eq!(outcome.number("missing"), 0, "{}", outcome.summary);
    assert!(outcome.number("sent") > 0, "{}", outcome.summary);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_clients_keep_working_when_the_leader_is_killed() -> anyhow::Result<()> {
    python_clients_survive_a_kill(Victim::Leader).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_clients_keep_working_when_their_access_point_is_killed() -> anyhow::Result<()> {
    python_clients_survive_a_kill(Victim::AccessPoint).await
}

/// The leader cut off from the other two nodes (each node in its own network namespace; the
/// client still reaches all three). The Python client routes a third of the queues to each
/// node and, on a failed send, retries on the next queue. The cut-off node closes its client
/// connections and refuses new ones once it counts itself cut off, so a send routed there
/// fails at once and its retry goes elsewhere. While the node kept accepting calls it cannot
/// commit, each send routed there waited for the broker's 2.5 s propose deadline before the
/// client retried (measured with `cut_off_after_ms = 0`: 2.3 to 3.0 s, and 45 % fewer sends).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_sends_leave_a_node_cut_off_from_its_group_at_once() -> anyhow::Result<()> {
    const PRODUCE: Duration = Duration::from_secs(22);
    const CUT_AT: Duration = Duration::from_secs(5);
    const CUT_FOR: Duration = Duration::from_secs(10);
    /// Time for the node to count itself cut off (1 s without contact, by default) and for
    /// the sends it held until then to be retried.
    const SETTLE: Duration = Duration::from_secs(3);
    let topic = "py-cut-off";
    python()?;
    let cluster = Cluster::start(ClusterOptions {
        netns: true,
        ..ClusterOptions::default()
    })
    .await?;
    cluster.create_topic(topic, 6).await?;
    let access_point = follower_access_point(&cluster).await?;
    let args = vec![
        "--endpoints".to_string(),
        access_point,
        "--topic".to_string(),
        topic.to_string(),
        "--queues".to_string(),
        "6".to_string(),
        "--duration".to_string(),
        PRODUCE.as_secs().to_string(),
        "--drain".to_string(),
        "20".to_string(),
        "--timeout".to_string(),
        "55".to_string(),
    ];
    let scenario = Scenario::spawn("failover", &args)?;
    scenario
        .wait_for_line("PHASE producing", Duration::from_secs(25))
        .await?;
    let producing = Instant::now();
    tokio::time::sleep(CUT_AT).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await?;
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let network = cluster.network.as_ref().context("netns cluster")?;
    network.partition(&[leader], &others)?;
    let cut_at = producing.elapsed().as_secs_f64();
    tokio::time::sleep(CUT_FOR).await;
    network.heal()?;
    let healed_at = producing.elapsed().as_secs_f64();
    eprintln!("node {leader} cut off from {others:?} from {cut_at:.2}s to {healed_at:.2}s");

    let outcome = scenario.finish(Duration::from_secs(50)).await?;
    outcome.assert_passed(&cluster);
    assert_eq!(outcome.number("missing"), 0, "{}", outcome.summary);
    let spans = outcome.summary["send_spans"]
        .as_array()
        .context("send_spans")?;
    let settled = cut_at + SETTLE.as_secs_f64();
    let mut during = 0;
    for span in spans {
        let (start, took, ok) = (
            span[0].as_f64().unwrap_or_default(),
            span[1].as_f64().unwrap_or_default(),
            span[2].as_bool().unwrap_or_default(),
        );
        if start < settled || start >= healed_at {
            continue;
        }
        during += 1;
        assert!(
            ok && took < 1.5,
            "a send started {start:.2}s into the run, with node {leader} cut off since \
             {cut_at:.2}s, took {took:.2}s (ok: {ok})\n{}",
            cluster.log_tails(20)
        );
    }
    eprintln!("{during} sends while node {leader} was cut off, each done within 1.5 s");
    assert!(
        during > 20,
        "only {during} sends while the node was cut off"
    );
    Ok(())
}
