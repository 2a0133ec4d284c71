//! `chaos`: workload and checker for drills against a running raftmq group (the local
//! cluster, the compose cluster, a Kubernetes StatefulSet).
//!
//! ```text
//! chaos run   --nodes 3 --seed 7 --faults kill-leader,split,... --out target/chaos/run-7
//! chaos load  --endpoints H:P,... --topic T --duration 20s --rate 200 --history run.jsonl
//! chaos check --endpoints H:P,... --topic T --history run.jsonl
//! ```
//!
//! `load` sends unique, checkable messages at a steady rate, prints a progress line every
//! second and, at the end, one JSON line: attempted, acknowledged, failed sends, ack latency
//! percentiles and the longest time without any acknowledgement (the unavailability a fault
//! caused). Every acknowledged send and every failed one (whose outcome is unknown) goes to
//! the history file. `check` reads the topic back from every node and compares it with the
//! history: lost, duplicated, reordered and phantom messages, and whether the replicas are
//! identical; it exits 1 when anything is wrong.
//!
//! `run` is the whole experiment on its own group (network namespaces, needs root): it
//! starts the nodes, drives producers and consumers through a seeded schedule of faults,
//! checks every replica and writes report.txt, report.json, latency.svg and history.jsonl.
//! Exit status: 0 clean, 1 the checker found something, 2 the harness itself failed.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chaos_tests::history::{self, Ack, History};
use clap::Parser;
use hdrhistogram::Histogram;
use raftmq::client::Client;
use serde_json::json;
use tokio::sync::Mutex;

#[derive(Parser)]
#[command(
    name = "chaos",
    about = "Workload and checker for raftmq failover drills"
)]
enum Command {
    /// Start a group, inject seeded faults under load, check and report.
    Run(RunArgs),
    /// Send unique messages at a steady rate and record every outcome.
    Load(LoadArgs),
    /// Compare what the group holds with a history written by `load`.
    Check(CheckArgs),
}

#[derive(clap::Args)]
struct LoadArgs {
    /// Client addresses of the group's nodes, comma-separated.
    #[arg(long)]
    endpoints: String,
    #[arg(long)]
    topic: String,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Messages per second over all workers.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Concurrent senders.
    #[arg(long, default_value_t = 8)]
    workers: u32,
    /// Where to write the history (JSON lines).
    #[arg(long)]
    history: PathBuf,
    /// Per-request timeout before the client tries another node (ms). Short, so that a node
    /// that stops answering without closing its connections (killed behind a proxy, paused)
    /// is left quickly; a retry keeps the message id, so it cannot store a second copy.
    #[arg(long, default_value_t = 1000)]
    request_timeout_ms: u64,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Nodes in the group (3 or 5; the bridge fault needs 5).
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Every choice of the run derives from it; a random one is printed when omitted.
    #[arg(long)]
    seed: Option<u64>,
    /// Comma-separated faults, or `all` (every fault that fits the group size, but the slow
    /// disks, which need a run of their own).
    #[arg(long, default_value = "all")]
    faults: String,
    /// Passes over the fault list, each in a new seeded order.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Soak: keep going with new rounds until this many seconds have passed.
    #[arg(long, default_value_t = 0)]
    duration: u64,
    /// Messages per second over all producers.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    #[arg(long, default_value_t = 4)]
    producers: u32,
    #[arg(long, default_value_t = 2)]
    consumers: u32,
    /// `sync` (default) or `async`.
    #[arg(long, default_value = "sync")]
    flush: String,
    /// Run every node on 127.0.0.1 instead of in its own namespace (no network faults).
    #[arg(long)]
    no_netns: bool,
    /// Checker-bites mode (debug builds of raftmq only): nodes lose unwritten acknowledged
    /// writes when killed. A run with kill faults must then FAIL; it shows the checker bites.
    #[arg(long)]
    unsafe_lose_unsynced: bool,
    /// Where the report, history, plot and node data go (default target/chaos/seed-<seed>).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(clap::Args)]
struct CheckArgs {
    /// Client addresses of the group's nodes, comma-separated; each is read and checked.
    #[arg(long)]
    endpoints: String,
    #[arg(long)]
    topic: String,
    #[arg(long)]
    history: PathBuf,
    /// How long to wait for every node to apply everything committed.
    #[arg(long, default_value_t = 60)]
    catch_up_secs: u64,
}

fn endpoints(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Command::parse() {
        Command::Run(args) => run(args).await,
        Command::Load(args) => load(args).await,
        Command::Check(args) => check(args).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    use chaos_tests::nemesis::{self, Fault};
    use chaos_tests::run::RunOptions;
    let seed = args.seed.unwrap_or_else(rand::random);
    let faults: Vec<Fault> = if args.faults == "all" {
        nemesis::ALL
            .iter()
            .copied()
            .filter(|f| *f != Fault::Bridge || args.nodes >= 5)
            .filter(|f| !args.no_netns || !f.needs_network())
            // Small data dirs are tmpfs mounts: root, as the namespaces.
            .filter(|f| !args.no_netns || !f.needs_small_disks())
            // Slow disks need ext4 data dirs, the disk-full faults tmpfs: name them apart
            // (`--faults slow-disk-leader,slow-disk-follower,slow-disk-majority`).
            .filter(|f| !f.needs_slow_disks())
            .collect()
    } else {
        args.faults
            .split(',')
            .map(|name| name.trim().parse::<Fault>())
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)?
    };
    let flush: &'static str = match args.flush.as_str() {
        "sync" => "sync",
        "async" => "async",
        other => bail!("--flush must be sync or async, not `{other}`"),
    };
    anyhow::ensure!(args.nodes >= 3, "--nodes must be at least 3");
    let options = RunOptions {
        nodes: args.nodes,
        seed,
        faults,
        rounds: args.rounds.max(1),
        duration: Duration::from_secs(args.duration),
        rate: args.rate.max(1),
        producers: args.producers.max(1),
        consumers: args.consumers,
        flush,
        netns: !args.no_netns,
        lose_unsynced: args.unsafe_lose_unsynced,
        out: args
            .out
            .unwrap_or_else(|| PathBuf::from(format!("target/chaos/seed-{seed}"))),
    };
    eprintln!("chaos run, seed {seed}: {}", options.replay_command());
    eprintln!("output in {}", options.out.display());
    match chaos_tests::run::run(&options).await {
        Ok(report) => {
            println!("{}", report.text());
            println!(
                "report, history, plot and node logs in {}",
                options.out.display()
            );
            if !report.clean {
                eprintln!("FAILED; replay with: {}", options.replay_command());
                std::process::exit(1);
            }
            Ok(())
        }
        Err(e) => {
            eprintln!("harness error (not a finding about the broker): {e:#}");
            eprintln!("replay with: {}", options.replay_command());
            std::process::exit(2);
        }
    }
}

/// What the workers share.
struct Progress {
    started: Instant,
    history: History,
    failed: AtomicU64,
    attempted: AtomicU64,
    latency_us: Mutex<Histogram<u64>>,
    /// Milliseconds since start of every acknowledgement, for the longest gap.
    ack_times_ms: Mutex<Vec<u64>>,
}

async fn load(args: LoadArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate > 0 && args.workers > 0,
        "--rate and --workers must be > 0"
    );
    let mut client = Client::new(&endpoints(&args.endpoints))?;
    client.timeout = Duration::from_millis(args.request_timeout_ms);
    let client = Arc::new(client);
    let run = format!("{:x}", std::process::id());
    let progress = Arc::new(Progress {
        started: Instant::now(),
        history: History::default(),
        failed: AtomicU64::new(0),
        attempted: AtomicU64::new(0),
        latency_us: Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3)?),
        ack_times_ms: Mutex::new(Vec::new()),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let duration = Duration::from_secs_f64(args.duration);
    // Each worker sends one message every `interval`, offset so that the sends interleave.
    let interval = Duration::from_secs_f64(f64::from(args.workers) / f64::from(args.rate));
    let mut workers = Vec::new();
    for worker in 0..args.workers {
        let (client, progress, stop) = (client.clone(), progress.clone(), stop.clone());
        let topic = args.topic.clone();
        let run = run.clone();
        workers.push(tokio::spawn(async move {
            let first = progress.started + interval * worker / args.workers;
            let mut ticks = tokio::time::interval_at(first.into(), interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                ticks.tick().await;
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let body = format!("{run}:w{worker}:s{seq}");
                seq += 1;
                progress.attempted.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                // One attempt (the client itself tries the other nodes): an error is a
                // failed send whose outcome is unknown.
                match progress
                    .history
                    .send_until_acked(&client, &topic, body, Duration::ZERO)
                    .await
                {
                    Ok(_) => {
                        let took = sent.elapsed().as_micros() as u64;
                        let _ = progress.latency_us.lock().await.record(took.max(1));
                        let at = progress.started.elapsed().as_millis() as u64;
                        progress.ack_times_ms.lock().await.push(at);
                    }
                    Err(_) => {
                        progress.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    let mut last = 0usize;
    while progress.started.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(1).min(duration)).await;
        let acked = progress.history.acked();
        eprintln!(
            "[{:5.1}s] acked {acked} (+{}), failed {}, p99 {:.1} ms",
            progress.started.elapsed().as_secs_f64(),
            acked - last,
            progress.failed.load(Ordering::Relaxed),
            progress.latency_us.lock().await.value_at_quantile(0.99) as f64 / 1000.0
        );
        last = acked;
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await?;
    }

    write_history(&args.history, &progress.history)?;
    let mut times = progress.ack_times_ms.lock().await.clone();
    times.sort_unstable();
    // The longest stretch without an acknowledgement, from the start to the end of the run.
    let end = progress.started.elapsed().as_millis() as u64;
    let mut gap = (0u64, 0u64);
    let mut previous = 0u64;
    for at in times.iter().copied().chain([end]) {
        if at - previous > gap.1 {
            gap = (previous, at - previous);
        }
        previous = at;
    }
    let latency = progress.latency_us.lock().await;
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    let summary = json!({
        "topic": args.topic,
        "attempted": progress.attempted.load(Ordering::Relaxed),
        "acked": progress.history.acked(),
        "failed": progress.failed.load(Ordering::Relaxed),
        "latency_ms": {"p50": ms(0.5), "p99": ms(0.99), "p999": ms(0.999), "max": latency.max() as f64 / 1000.0},
        "longest_gap_ms": gap.1,
        "longest_gap_from_s": gap.0 as f64 / 1000.0,
        "history": args.history.display().to_string(),
    });
    println!("{summary}");
    Ok(())
}

fn write_history(path: &PathBuf, history: &History) -> anyhow::Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for ack in history.acks() {
        let line = json!({
            "body": ack.body, "message_id": ack.message_id, "offset": ack.offset,
            "started": ack.started, "acked": ack.acked,
        });
        writeln!(out, "{line}")?;
    }
    for body in history.unknown() {
        writeln!(out, "{}", json!({"body": body, "unknown": true}))?;
    }
    out.flush()?;
    Ok(())
}

fn read_history(path: &PathBuf) -> anyhow::Result<(Vec<Ack>, Vec<String>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let (mut acks, mut unknown) = (Vec::new(), Vec::new());
    for (n, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", path.display(), n + 1))?;
        let body = v["body"]
            .as_str()
            .context("a history line without body")?
            .to_string();
        if v["unknown"] == true {
            unknown.push(body);
            continue;
        }
        let number = |key: &str| {
            v[key]
                .as_u64()
                .with_context(|| format!("line {} lacks {key}", n + 1))
        };
        acks.push(Ack {
            body,
            message_id: v["message_id"].as_str().unwrap_or_default().to_string(),
            offset: number("offset")?,
            started: number("started")?,
            acked: number("acked")?,
        });
    }
    Ok((acks, unknown))
}

/// Wait until every reachable node has applied what the leader committed.
async fn wait_caught_up(nodes: &[String], timeout: Duration) -> anyhow::Result<()> {
    let give_up = Instant::now() + timeout;
    loop {
        let statuses = Client::new(nodes)?.cluster_status().await;
        let leader_commit = statuses
            .iter()
            .filter_map(|(_, s)| s.as_ref().ok())
            .find(|s| s.role == "leader")
            .and_then(|s| s.committed_index);
        let behind: Vec<&str> = statuses
            .iter()
            .filter(|(_, s)| s.as_ref().map_or(true, |s| s.applied_index < leader_commit))
            .map(|(addr, _)| addr.as_str())
            .collect();
        if leader_commit.is_some() && behind.is_empty() {
            return Ok(());
        }
        if Instant::now() > give_up {
            bail!(
                "nodes {behind:?} did not catch up with the leader's commit index {leader_commit:?} within {timeout:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn check(args: CheckArgs) -> anyhow::Result<()> {
    let nodes = endpoints(&args.endpoints);
    let (acks, unknown) = read_history(&args.history)?;
    wait_caught_up(&nodes, Duration::from_secs(args.catch_up_secs)).await?;
    let routes = Client::new(&nodes)?.route(&args.topic).await?;
    let queues = routes.iter().map(|q| q.id + 1).max().unwrap_or(0);
    let mut clean = true;
    let mut replicas = Vec::new();
    for node in &nodes {
        let stored = history::read_topic(
            &Client::new(std::slice::from_ref(node))?,
            &args.topic,
            queues,
        )
        .await?;
        let report = history::check(&acks, &unknown, &stored);
        clean &= report.is_clean();
        println!(
            "{}",
            json!({
                "node": node, "acknowledged": report.acknowledged, "stored": report.stored,
                "lost": report.lost.len(), "duplicated": report.duplicated.len(),
                "reordered": report.reordered.len(), "phantom": report.phantom.len(),
                "wrong_offset": report.wrong_offset.len(), "offset_gaps": report.offset_gaps.len(),
                "unknown_sends": unknown.len(), "unknown_present": report.unknown_present,
                "lost_examples": report.lost.iter().take(5).collect::<Vec<_>>(),
            })
        );
        replicas.push(stored);
    }
    let identical = replicas
        .windows(2)
        .all(|w| history::replicas_identical(&w[0], &w[1]));
    println!(
        "{}",
        json!({"replicas_identical": identical, "clean": clean && identical})
    );
    if !(clean && identical) {
        std::process::exit(1);
    }
    Ok(())
}
