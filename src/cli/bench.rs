//! `raftmq bench produce`: a load generator reporting acknowledged messages per second and
//! ack latency percentiles, with a progress line every second.
//! `raftmq bench fsync`: the disk's own write+fsync latency, the floor under every durable ack.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

use super::EndpointArgs;
use crate::client::{Client, message};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Send messages from many concurrent workers and measure acknowledgements.
    Produce(ProduceBench),
    /// Append small blocks to a file in a folder and fsync each one, as a WAL does.
    Fsync(FsyncBench),
}

#[derive(Debug, Clone, clap::Args)]
pub struct FsyncBench {
    /// Folder on the disk to measure (a temporary file is created and removed there).
    #[arg(long, default_value = ".")]
    pub dir: std::path::PathBuf,
    /// Bytes written before each fsync.
    #[arg(long, default_value_t = 4096)]
    pub size: usize,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ProduceBench {
    #[command(flatten)]
    pub endpoints: EndpointArgs,
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// Sends in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Messages per SendMessage call.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// How long to send, e.g. `30s`.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Target messages per second over all workers; 0 sends as fast as acks allow.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| text.split_at(i))
        .unwrap_or((text, "s"));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 30s or 500ms"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("`{text}`: unit must be ms, s or m")),
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Produce(bench) => produce(bench).await,
        BenchCommand::Fsync(bench) => tokio::task::spawn_blocking(move || fsync(bench)).await?,
    }
}

fn fsync(bench: FsyncBench) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = tempfile::NamedTempFile::new_in(&bench.dir)?;
    let block = vec![0xA5u8; bench.size.max(1)];
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let start = Instant::now();
    while start.elapsed() < bench.duration {
        let began = Instant::now();
        file.write_all(&block)?;
        file.as_file().sync_data()?;
        histogram.saturating_record(began.elapsed().as_micros() as u64);
    }
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    if bench.json {
        println!(
            "{}",
            json!({"fsyncs": histogram.len(), "size": bench.size,
                   "fsync_latency_ms": {"p50": ms(0.5), "p99": ms(0.99), "p999": ms(0.999), "max": histogram.max() as f64 / 1000.0}})
        );
    } else {
        println!(
            "{} fsyncs of {} bytes: p50 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms  max {:.2} ms",
            histogram.len(),
            bench.size,
            ms(0.5),
            ms(0.99),
            ms(0.999),
            histogram.max() as f64 / 1000.0
        );
    }
    Ok(())
}

#[derive(Default)]
struct Counters {
    acked: AtomicU64,
    failed: AtomicU64,
}

async fn produce(bench: ProduceBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        bench.concurrency > 0 && bench.batch > 0 && bench.size > 0,
        "concurrency, batch and size must be > 0"
    );
    // Talk to the leader first: a follower would forward every send (an extra hop).
    let mut endpoints = bench.endpoints.list();
    let probe = Client::new(&endpoints)?;
    if let Some(leader) = probe
        .cluster_status()
        .await
        .into_iter()
        .find(|(_, s)| s.as_ref().is_ok_and(|s| s.role == "leader"))
        .map(|(e, _)| e)
    {
        endpoints.retain(|e| *e != leader);
        endpoints.insert(0, leader);
    }
    let client = Arc::new(Client::new(&endpoints)?);
    client.route(&bench.topic).await?;

    let counters = Arc::new(Counters::default());
    let start = Instant::now();
    let end = start + bench.duration;
    let per_worker_interval = (bench.rate > 0).then(|| {
        Duration::from_secs_f64(bench.concurrency as f64 * bench.batch as f64 / bench.rate as f64)
    });
    let mut workers = Vec::new();
    for worker in 0..bench.concurrency {
        let client = client.clone();
        let counters = counters.clone();
        let bench = bench.clone();
        workers.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .expect("valid histogram bounds");
            let body = vec![b'x'; bench.size];
            // Spread the workers' schedules over one interval so that a target rate is an even
            // stream of sends, not a burst of `concurrency` sends at every tick.
            let mut next_send = Instant::now()
                + per_worker_interval.map_or(Duration::ZERO, |i| {
                    i.mul_f64(worker as f64 / bench.concurrency as f64)
                });
            while Instant::now() < end {
                if let Some(interval) = per_worker_interval {
                    let now = Instant::now();
                    if next_send > now {
                        tokio::time::sleep(next_send - now).await;
                    }
                    next_send += interval;
                }
                let messages = (0..bench.batch)
                    .map(|_| message(&bench.topic, body.clone(), None, &[]))
                    .collect();
                let sent = Instant::now();
                match client.send(messages).await {
                    Ok(_) => {
                        histogram.saturating_record(sent.elapsed().as_micros() as u64);
                        counters
                            .acked
                            .fetch_add(bench.batch as u64, Ordering::Relaxed);
                    }
                    Err(_) => {
                        counters
                            .failed
                            .fetch_add(bench.batch as u64, Ordering::Relaxed);
                    }
                }
            }
            histogram
        }));
    }

    let progress = {
        let counters = counters.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let acked = counters.acked.load(Ordering::Relaxed);
                eprintln!(
                    "[{:>4.0}s] acked {acked} ({}/s), failed {}",
                    start.elapsed().as_secs_f64(),
                    acked - last,
                    counters.failed.load(Ordering::Relaxed)
                );
                last = acked;
            }
        })
    };
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for worker in workers {
        histogram.add(worker.await?)?;
    }
    progress.abort();
    let elapsed = start.elapsed().as_secs_f64();
    let acked = counters.acked.load(Ordering::Relaxed);
    let failed = counters.failed.load(Ordering::Relaxed);
    let rate = acked as f64 / elapsed;
    let mb = rate * bench.size as f64 / 1_000_000.0;
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    if bench.json {
        println!(
            "{}",
            json!({
                "acked": acked, "failed": failed, "seconds": elapsed,
                "msgs_per_sec": rate, "mb_per_sec": mb,
                "ack_latency_ms": {"p50": ms(0.5), "p99": ms(0.99), "p999": ms(0.999), "max": histogram.max() as f64 / 1000.0},
                "concurrency": bench.concurrency, "size": bench.size, "batch": bench.batch, "target_rate": bench.rate,
            })
        );
    } else {
        println!(
            "acked {acked} messages in {elapsed:.1}s: {rate:.0} msgs/s, {mb:.1} MB/s; failed {failed}\nack latency ms: p50 {:.2}  p99 {:.2}  p999 {:.2}  max {:.2}",
            ms(0.5),
            ms(0.99),
            ms(0.999),
            histogram.max() as f64 / 1000.0
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(Ok(Duration::from_secs(30)), parse_duration("30s"));
        assert_eq!(Ok(Duration::from_millis(500)), parse_duration("500ms"));
        assert_eq!(Ok(Duration::from_secs(120)), parse_duration("2m"));
        assert_eq!(Ok(Duration::from_secs(7)), parse_duration("7"));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3h").is_err());
    }
}
