//! `nats-bench`: the NATS JetStream side of `scripts/bench-vs-nats.sh`.
//!
//! It measures publishes the way `raftmq bench produce` measures sends, so that the two
//! figures compare: `--concurrency` workers on one connection, each publishing one message and
//! waiting for the stream's acknowledgement before the next; the same latency histogram; the
//! same JSON fields (`msgs_per_sec`, `ack_latency_ms`, ...).
//!
//!   nats-bench --servers 127.0.0.1:4222 --replicas 3 --concurrency 1024 --seconds 10 --json

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, stream};
use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::json;

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
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Threads the load generator runs on; the same default as `raftmq bench produce`.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.threads > 0, "--threads must be at least 1");
    let mut runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(args.threads);
        builder
    };
    runtime.enable_all().build()?.block_on(run(args))
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

    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let payload = bytes::Bytes::from(vec![b'x'; args.size]);
    let start = Instant::now();
    let end = start + Duration::from_secs(args.seconds);
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (js, subject, payload) = (js.clone(), subject.clone(), payload.clone());
        let (acked, failed) = (acked.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .expect("valid histogram bounds");
            while Instant::now() < end {
                let sent = Instant::now();
                let ack = match js.publish(subject.clone(), payload.clone()).await {
                    Ok(pending) => pending.await.map(|_| ()).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match ack {
                    Ok(()) => {
                        histogram.saturating_record(sent.elapsed().as_micros() as u64);
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            histogram
        }));
    }
    let progress = {
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = acked.load(Ordering::Relaxed);
                eprintln!(
                    "[{:>4.0}s] acked {now} ({}/s)",
                    start.elapsed().as_secs_f64(),
                    now - last
                );
                last = now;
            }
        })
    };
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for worker in workers {
        histogram.add(worker.await?)?;
    }
    progress.abort();
    let elapsed = start.elapsed().as_secs_f64();
    let (acked, failed) = (
        acked.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    let rate = acked as f64 / elapsed;
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    if args.json {
        println!(
            "{}",
            json!({
                "acked": acked, "failed": failed, "seconds": elapsed,
                "msgs_per_sec": rate, "mb_per_sec": rate * args.size as f64 / 1_000_000.0,
                "ack_latency_ms": {"p50": ms(0.5), "p99": ms(0.99), "p999": ms(0.999), "max": histogram.max() as f64 / 1000.0},
                "concurrency": args.concurrency, "size": args.size, "replicas": args.replicas,
                "threads": args.threads,
            })
        );
    } else {
        println!(
            "acked {acked} publishes in {elapsed:.1}s: {rate:.0} msgs/s; failed {failed}\n\
             ack latency ms: p50 {:.2}  p99 {:.2}  p999 {:.2}  max {:.2}",
            ms(0.5),
            ms(0.99),
            ms(0.999),
            histogram.max() as f64 / 1000.0
        );
    }
    Ok(())
}
