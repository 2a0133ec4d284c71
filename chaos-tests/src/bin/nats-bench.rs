//! `nats-bench`: the NATS JetStream side of `scripts/bench-vs-nats.sh`.
//!
//! It drives publishes with the very load driver `raftmq bench produce` drives sends with
//! (`raftmq::cli::bench_load`), so that the two figures compare: `--concurrency` workers on
//! one connection, each publishing one message and waiting for the stream's acknowledgement
//! before the next (and, with `--rate`, not before its turn); the same warmup, histogram,
//! fsync probe and JSON fields (`msgs_per_sec`, `ack_latency_ms`, ...).
//!
//!   nats-bench --servers 127.0.0.1:4222 --replicas 3 --concurrency 1024 --duration 10s --json
//!   nats-bench --servers ... --rate 10000 --warmup 2s --fsync-probe /path/on/the/disk --json

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, stream};
use clap::Parser;

use raftmq::cli::bench_load::{self, Load, measure, parse_duration};

#[derive(Parser, Debug, Clone)]
struct Args {
    /// NATS servers, comma-separated.
    #[arg(long, default_value = "127.0.0.1:4222")]
    servers: String,
    #[arg(long, default_value = "bench")]
    stream: String,
    /// Replicas of the stream (created when missing, file storage).
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Publishes in flight at once.
    #[arg(long, default_value_t = 1024)]
    concurrency: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// How long to publish, e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Load before the measured duration, left out of every figure.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    warmup: Duration,
    /// Target publishes per second over all workers; 0 publishes as fast as acks allow.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Threads the load generator runs on; the same default as `raftmq bench produce`.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Also time a write+fsync in this folder every 2 ms while the load runs (as `raftmq
    /// bench produce --fsync-probe` does).
    #[arg(long, value_name = "DIR")]
    fsync_probe: Option<std::path::PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    bench_load::runtime(args.threads)?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.concurrency > 0 && args.size > 0,
        "concurrency and size must be > 0"
    );
    let servers: Vec<async_nats::ServerAddr> = args
        .servers
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .context("--servers")?;
    let client = async_nats::ConnectOptions::new()
        .connect(servers)
        .await
        .context("connect to NATS")?;
    let js = jetstream::new(client);
    let subject = format!("{}.messages", args.stream);
    js.get_or_create_stream(stream::Config {
        name: args.stream.clone(),
        subjects: vec![subject.clone()],
        num_replicas: args.replicas,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .context("create the stream")?;

    let load = Load {
        concurrency: args.concurrency,
        warmup: args.warmup,
        duration: args.duration,
        calls_per_sec: args.rate as f64,
        messages_per_call: 1,
    };
    let payload = bytes::Bytes::from(vec![b'x'; args.size]);
    let measured = measure(&load, args.fsync_probe.clone(), move || {
        let (js, subject, payload) = (js.clone(), subject.clone(), payload.clone());
        async move {
            let pending = js
                .publish(subject, payload)
                .await
                .map_err(|e| e.to_string())?;
            pending.await.map(drop).map_err(|e| e.to_string())
        }
    })
    .await?;
    if args.json {
        let mut result = measured.json(&load, args.size);
        result["replicas"] = args.replicas.into();
        result["threads"] = args.threads.into();
        println!("{result}");
    } else {
        println!("{}", measured.text(args.size, "publishes"));
    }
    measured.outcome.ensure_some_succeeded()
}
