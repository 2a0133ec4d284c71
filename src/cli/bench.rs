//! `raftmq bench produce`: a load generator reporting acknowledged messages per second and
//! ack latency percentiles, with a progress line every second.
//! `raftmq bench fsync`: the disk's own write+fsync latency, the floor under every durable ack.
//! `bench produce --fsync-probe DIR` measures the same beside the load, so that acks can be set
//! against what the disk did during that very run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use hdrhistogram::Histogram;
use serde_json::json;

use raftmq_proto::rocketmq::v2;

use super::EndpointArgs;
use super::bench_connection::BenchConnection;
use crate::client::{Client, check, message, new_message_id, producer_heartbeat};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Send messages from many concurrent workers and measure acknowledgements.
    Produce(ProduceBench),
    /// Heartbeat calls the broker answers without work: the cost of a gRPC call alone.
    Rpc(RpcBench),
    /// Append small blocks to a file in a folder and fsync each one, as a WAL does.
    Fsync(FsyncBench),
}

#[derive(Debug, Clone, clap::Args)]
pub struct RpcBench {
    #[command(flatten)]
    pub endpoints: EndpointArgs,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 1024)]
    pub concurrency: usize,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Load before the measured duration, left out of every figure (see `bench produce`).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Threads the load generator runs on (see `bench produce --threads`).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// How the load generator reaches the leader.
    #[arg(long, value_enum, default_value_t = Connection::Direct)]
    pub connection: Connection,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Connection {
    /// One HTTP/2 connection to the leader, each call its headers and one gRPC frame on the
    /// `h2` crate, without a general client's per-call tasks and buffers: the least CPU per
    /// call.
    Direct,
    /// The CLI's tonic channel: a queue and a worker task per call, and failover to the other
    /// nodes.
    Channel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Body {
    /// One byte repeated: compresses to almost nothing, so the brokers' storage compression
    /// costs little.
    Repeated,
    /// Random bytes, a different body for each of up to `RANDOM_BODIES` messages in turn:
    /// incompressible, like encrypted or already compressed payloads.
    Random,
}

/// Distinct random bodies `--body random` cycles through: far more than a storage block
/// holds, so that no block finds one body twice; fewer for large bodies, so that all of them
/// together stay within `RANDOM_POOL_BYTES` (large bodies fill blocks of their own anyway).
const RANDOM_BODIES: usize = 1024;
const RANDOM_POOL_BYTES: usize = 64 << 20;

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
    /// What the bodies hold.
    #[arg(long, value_enum, default_value_t = Body::Repeated)]
    pub body: Body,
    /// How long to send, e.g. `30s`.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Load before the measured duration, left out of every figure: the first calls on new
    /// connections, and a fresh group's first memtables, are slower than the steady state.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Target messages per second over all workers; 0 sends as fast as acks allow. With a
    /// rate, latency is also reported from when each send was due, which counts the sends a
    /// stall kept from starting.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Threads the load generator runs on. One thread drives a thousand sends in flight with
    /// the least CPU per message (no wake-ups across threads), which leaves the most CPU to
    /// brokers that share the machine; more help only when the load generator has cores to
    /// itself.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// How the load generator reaches the leader.
    #[arg(long, value_enum, default_value_t = Connection::Direct)]
    pub connection: Connection,
    /// Also measure the disk's write+fsync latency in this folder while the load runs, as
    /// `bench fsync` does but with a 2 ms pause between fsyncs so that the probe adds little
    /// load. A disk's latency swings with the machine's load, so acks are best compared with
    /// what the disk did during the same run.
    #[arg(long, value_name = "DIR")]
    pub fsync_probe: Option<std::path::PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Pause between two fsyncs of `bench produce --fsync-probe`: at most 500 fsyncs a second,
/// a few thousand samples in a 10 s run, about 1 % of a core.
const FSYNC_PROBE_PAUSE: Duration = Duration::from_millis(2);
/// Bytes each fsync of a probe writes first, as `bench fsync` does by default.
const FSYNC_PROBE_BYTES: usize = 4096;

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

/// The runtime a benchmark runs on: `--threads 1` (the default) is a single-threaded one.
pub fn runtime(args: &BenchArgs) -> anyhow::Result<tokio::runtime::Runtime> {
    let threads = match &args.command {
        BenchCommand::Produce(bench) => bench.threads,
        BenchCommand::Rpc(bench) => bench.threads,
        BenchCommand::Fsync(_) => 1,
    };
    anyhow::ensure!(threads > 0, "--threads must be at least 1");
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    Ok(builder.enable_all().build()?)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Produce(bench) => produce(bench).await,
        BenchCommand::Rpc(bench) => rpc(bench).await,
        BenchCommand::Fsync(bench) => tokio::task::spawn_blocking(move || fsync(bench)).await?,
    }
}

fn fsync(bench: FsyncBench) -> anyhow::Result<()> {
    let start = Instant::now();
    let histogram = fsync_latencies(
        &bench.dir,
        bench.size,
        start,
        start + bench.duration,
        Duration::ZERO,
    )?;
    if bench.json {
        let mut result = json!({"fsyncs": histogram.len(), "size": bench.size});
        result["fsync_latency_ms"] = latency_json(&histogram);
        println!("{result}");
    } else {
        println!(
            "{} fsyncs of {} bytes: {} ms",
            histogram.len(),
            bench.size,
            latency_line(&histogram)
        );
    }
    Ok(())
}

/// Append `size` bytes to a temporary file in `dir` and fsync it, over and over from `from`
/// until `until` with `pause` between fsyncs; the latency of each write+fsync in microseconds.
fn fsync_latencies(
    dir: &std::path::Path,
    size: usize,
    from: Instant,
    until: Instant,
    pause: Duration,
) -> anyhow::Result<Histogram<u64>> {
    use std::io::Write;
    let mut file = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| anyhow::anyhow!("cannot create a file in {}: {e}", dir.display()))?;
    let block = vec![0xA5u8; size.max(1)];
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    std::thread::sleep(from.saturating_duration_since(Instant::now()));
    while Instant::now() < until {
        let began = Instant::now();
        file.write_all(&block)?;
        file.as_file().sync_data()?;
        histogram.saturating_record(began.elapsed().as_micros() as u64);
        std::thread::sleep(pause);
    }
    Ok(histogram)
}

#[derive(Default)]
struct Counters {
    acked: AtomicU64,
    failed: AtomicU64,
    /// Slowest answer since the last progress line, in microseconds.
    slowest_us: AtomicU64,
}

/// How a load is driven: `concurrency` workers, each starting its next call when the last one
/// is answered (and, with a target rate, not before its turn).
struct Load {
    concurrency: usize,
    /// Unmeasured load before `duration`.
    warmup: Duration,
    duration: Duration,
    /// Target calls per second over all workers; 0: as fast as answers come.
    calls_per_sec: f64,
    /// Messages one call carries (what the counters count).
    messages_per_call: u64,
}

/// What a run of a load measured.
struct Outcome {
    acked: u64,
    failed: u64,
    elapsed: Duration,
    /// Latency of each answered call from when it was sent.
    histogram: Histogram<u64>,
    /// With a target rate: the same from when the call was due. A stall that holds a worker
    /// past its next turn delays calls that were never sent; this counts them (wrk2-style).
    from_schedule: Option<Histogram<u64>>,
}

/// Latencies in microseconds, shared by all workers.
struct Latencies {
    from_send: Histogram<u64>,
    from_schedule: Histogram<u64>,
}

/// Run `call` from `load.concurrency` workers until the duration is over, printing a progress
/// line every second. `call()` makes one call and says whether it succeeded; the latency of
/// each successful call is recorded.
async fn drive<F, Fut>(load: &Load, call: F) -> anyhow::Result<Outcome>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let counters = Arc::new(Counters::default());
    let start = Instant::now() + load.warmup;
    let end = start + load.duration;
    let per_worker_interval = (load.calls_per_sec > 0.0)
        .then(|| Duration::from_secs_f64(load.concurrency as f64 / load.calls_per_sec));
    // One histogram for all workers: one per worker (140 KB each at this precision) would cost
    // a thousand workers 140 MB of freshly zeroed pages and a cache miss per recorded answer.
    let histogram = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3);
    let latencies = Arc::new(std::sync::Mutex::new(Latencies {
        from_send: histogram()?,
        from_schedule: histogram()?,
    }));
    let mut workers = Vec::new();
    for worker in 0..load.concurrency {
        let (counters, call, latencies) = (counters.clone(), call.clone(), latencies.clone());
        let (concurrency, messages) = (load.concurrency, load.messages_per_call);
        workers.push(tokio::spawn(async move {
            // Spread the workers' schedules over one interval so that a target rate is an even
            // stream of calls, not a burst of `concurrency` calls at every tick.
            let mut next_call = Instant::now()
                + per_worker_interval.map_or(Duration::ZERO, |i| {
                    i.mul_f64(worker as f64 / concurrency as f64)
                });
            while Instant::now() < end {
                let due = per_worker_interval.map(|interval| {
                    let due = next_call;
                    next_call += interval;
                    due
                });
                if let Some(due) = due.filter(|due| *due > Instant::now()) {
                    tokio::time::sleep_until(due.into()).await;
                }
                let called = Instant::now();
                let ok = call().await;
                if called < start {
                    continue;
                }
                if ok {
                    let micros = called.elapsed().as_micros() as u64;
                    let mut latencies = latencies.lock().expect("latency histogram lock poisoned");
                    latencies.from_send.saturating_record(micros);
                    if let Some(due) = due {
                        let late_micros = due.elapsed().as_micros() as u64;
                        latencies.from_schedule.saturating_record(late_micros);
                    }
                    drop(latencies);
                    counters.slowest_us.fetch_max(micros, Ordering::Relaxed);
                    counters.acked.fetch_add(messages, Ordering::Relaxed);
                } else {
                    counters.failed.fetch_add(messages, Ordering::Relaxed);
                }
            }
        }));
    }

    let progress = {
        let counters = counters.clone();
        let warmup = load.warmup;
        tokio::spawn(async move {
            if !warmup.is_zero() {
                eprintln!("warming up for {:.1}s (not measured)", warmup.as_secs_f64());
                tokio::time::sleep_until(start.into()).await;
            }
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let acked = counters.acked.load(Ordering::Relaxed);
                let slowest_us = counters.slowest_us.swap(0, Ordering::Relaxed);
                eprintln!(
                    "[{:>4.0}s] acked {acked} ({}/s), failed {}, slowest {:.1} ms",
                    start.elapsed().as_secs_f64(),
                    acked - last,
                    counters.failed.load(Ordering::Relaxed),
                    slowest_us as f64 / 1000.0
                );
                last = acked;
            }
        })
    };
    for worker in workers {
        worker.await?;
    }
    progress.abort();
    let latencies = std::mem::replace(
        &mut *latencies.lock().expect("latency histogram lock poisoned"),
        Latencies {
            from_send: Histogram::new(1)?,
            from_schedule: Histogram::new(1)?,
        },
    );
    Ok(Outcome {
        acked: counters.acked.load(Ordering::Relaxed),
        failed: counters.failed.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
        histogram: latencies.from_send,
        from_schedule: per_worker_interval.map(|_| latencies.from_schedule),
    })
}

impl Outcome {
    fn per_sec(&self) -> f64 {
        self.acked as f64 / self.elapsed.as_secs_f64()
    }

    fn latency_json(&self) -> serde_json::Value {
        latency_json(&self.histogram)
    }

    fn latency_line(&self) -> String {
        latency_line(&self.histogram)
    }
}

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

fn latency_json(histogram: &Histogram<u64>) -> serde_json::Value {
    json!({"p50": ms(histogram, 0.5), "p99": ms(histogram, 0.99), "p999": ms(histogram, 0.999),
           "max": histogram.max() as f64 / 1000.0})
}

fn latency_line(histogram: &Histogram<u64>) -> String {
    format!(
        "p50 {:.2}  p99 {:.2}  p999 {:.2}  max {:.2}",
        ms(histogram, 0.5),
        ms(histogram, 0.99),
        ms(histogram, 0.999),
        histogram.max() as f64 / 1000.0
    )
}

/// A client whose first endpoint is the group's leader: a follower would forward every
/// send (an extra hop).
async fn leader_first_client(endpoints: &EndpointArgs) -> anyhow::Result<Arc<Client>> {
    let mut endpoints = endpoints.list();
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
    Ok(Arc::new(Client::new(&endpoints)?))
}

/// What the workers call through: the CLI's client, or a direct connection to the leader
/// (calls still carry the client's timeout).
#[derive(Clone)]
enum Caller {
    Channel(Arc<Client>),
    Direct(BenchConnection),
}

const SEND_MESSAGE_PATH: &str = "/apache.rocketmq.v2.MessagingService/SendMessage";
const HEARTBEAT_PATH: &str = "/apache.rocketmq.v2.MessagingService/Heartbeat";

impl Caller {
    async fn new(client: Arc<Client>, connection: Connection) -> anyhow::Result<Caller> {
        Ok(match connection {
            Connection::Channel => Caller::Channel(client),
            // The leader is the client's first endpoint.
            Connection::Direct => Caller::Direct(
                BenchConnection::connect(&client.endpoints()[0], client.timeout).await?,
            ),
        })
    }

    async fn send(self, messages: Vec<v2::Message>) -> bool {
        match self {
            Caller::Channel(client) => client.send(messages).await.is_ok(),
            Caller::Direct(leader) => leader
                .unary::<_, v2::SendMessageResponse>(
                    SEND_MESSAGE_PATH,
                    &v2::SendMessageRequest { messages },
                )
                .await
                .is_ok_and(|reply| check(reply.status.as_ref()).is_ok()),
        }
    }

    async fn heartbeat(self) -> bool {
        match self {
            Caller::Channel(client) => client.heartbeat().await.is_ok(),
            Caller::Direct(leader) => leader
                .unary::<_, v2::HeartbeatResponse>(HEARTBEAT_PATH, &producer_heartbeat())
                .await
                .is_ok_and(|reply| check(reply.status.as_ref()).is_ok()),
        }
    }
}

async fn produce(bench: ProduceBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        bench.concurrency > 0 && bench.batch > 0 && bench.size > 0,
        "concurrency, batch and size must be > 0"
    );
    let client = leader_first_client(&bench.endpoints).await?;
    client.route(&bench.topic).await?;
    let caller = Caller::new(client, bench.connection).await?;
    // Built once: each send only stamps a fresh message id and birth time on a copy of a
    // template, and every copy shares its template's body buffer.
    let templates: Arc<[v2::Message]> = match bench.body {
        Body::Repeated => vec![message(&bench.topic, vec![b'x'; bench.size], None, &[])],
        Body::Random => {
            let mut rng = rand::rng();
            let count = RANDOM_BODIES.min(RANDOM_POOL_BYTES / bench.size).max(16);
            (0..count)
                .map(|_| {
                    let mut body = vec![0; bench.size];
                    rand::RngCore::fill_bytes(&mut rng, &mut body);
                    message(&bench.topic, body, None, &[])
                })
                .collect()
        }
    }
    .into();
    let next_template = Arc::new(AtomicU64::new(0));
    let batch = bench.batch;
    let load = Load {
        concurrency: bench.concurrency,
        warmup: bench.warmup,
        duration: bench.duration,
        calls_per_sec: bench.rate as f64 / batch as f64,
        messages_per_call: batch as u64,
    };
    // The probe covers the measured duration only, like every other figure.
    let probe = bench.fsync_probe.clone().map(|dir| {
        let from = Instant::now() + bench.warmup;
        let until = from + bench.duration;
        std::thread::spawn(move || {
            fsync_latencies(&dir, FSYNC_PROBE_BYTES, from, until, FSYNC_PROBE_PAUSE)
        })
    });
    let outcome = drive(&load, move || {
        let (caller, templates, next) = (caller.clone(), templates.clone(), next_template.clone());
        async move {
            let messages = (0..batch)
                .map(|_| {
                    let turn = next.fetch_add(1, Ordering::Relaxed) as usize;
                    restamped(&templates[turn % templates.len()])
                })
                .collect();
            caller.send(messages).await
        }
    })
    .await?;
    let probed = match probe {
        Some(thread) => Some(
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("the fsync probe panicked"))??,
        ),
        None => None,
    };
    let rate = outcome.per_sec();
    let mb = rate * bench.size as f64 / 1_000_000.0;
    if bench.json {
        let mut result = json!({
            "acked": outcome.acked, "failed": outcome.failed,
            "seconds": outcome.elapsed.as_secs_f64(),
            "msgs_per_sec": rate, "mb_per_sec": mb,
            "ack_latency_ms": outcome.latency_json(),
            "concurrency": bench.concurrency, "size": bench.size, "batch": bench.batch,
            "body": bench.body.to_possible_value().map(|v| v.get_name().to_string()),
            "target_rate": bench.rate, "threads": bench.threads,
            "connection": bench.connection.to_possible_value().map(|v| v.get_name().to_string()),
            "warmup_seconds": bench.warmup.as_secs_f64(),
        });
        if let Some(from_schedule) = &outcome.from_schedule {
            result["ack_latency_from_schedule_ms"] = latency_json(from_schedule);
        }
        if let Some(probed) = &probed {
            result["fsyncs_during_run"] = probed.len().into();
            result["fsync_latency_during_run_ms"] = latency_json(probed);
        }
        println!("{result}");
    } else {
        println!(
            "acked {} messages in {:.1}s: {rate:.0} msgs/s, {mb:.1} MB/s; failed {}\nack latency ms: {}",
            outcome.acked,
            outcome.elapsed.as_secs_f64(),
            outcome.failed,
            outcome.latency_line()
        );
        if let Some(from_schedule) = &outcome.from_schedule {
            println!(
                "from when each send was due: {}",
                latency_line(from_schedule)
            );
        }
        if let Some(probed) = &probed {
            println!(
                "disk write+fsync during the run ({} fsyncs): {}",
                probed.len(),
                latency_line(probed)
            );
        }
    }
    Ok(())
}

/// A copy of `template` with its own message id and birth time.
fn restamped(template: &v2::Message) -> v2::Message {
    let mut message = template.clone();
    if let Some(props) = message.system_properties.as_mut() {
        props.message_id = new_message_id();
        props.born_timestamp = Some(prost_types::Timestamp::from(std::time::SystemTime::now()));
    }
    message
}

/// Heartbeat round trips, which the broker answers without any work: what one gRPC call costs
/// the client, the HTTP/2 stack and tonic on this machine, the floor under every send.
async fn rpc(bench: RpcBench) -> anyhow::Result<()> {
    anyhow::ensure!(bench.concurrency > 0, "concurrency must be > 0");
    let client = leader_first_client(&bench.endpoints).await?;
    let caller = Caller::new(client, bench.connection).await?;
    let load = Load {
        concurrency: bench.concurrency,
        warmup: bench.warmup,
        duration: bench.duration,
        calls_per_sec: 0.0,
        messages_per_call: 1,
    };
    let outcome = drive(&load, move || caller.clone().heartbeat()).await?;
    if bench.json {
        println!(
            "{}",
            json!({
                "calls": outcome.acked, "failed": outcome.failed,
                "seconds": outcome.elapsed.as_secs_f64(),
                "calls_per_sec": outcome.per_sec(),
                "latency_ms": outcome.latency_json(),
                "concurrency": bench.concurrency, "threads": bench.threads,
                "warmup_seconds": bench.warmup.as_secs_f64(),
            })
        );
    } else {
        println!(
            "{} heartbeat calls in {:.1}s: {:.0} calls/s; failed {}\nlatency ms: {}",
            outcome.acked,
            outcome.elapsed.as_secs_f64(),
            outcome.per_sec(),
            outcome.failed,
            outcome.latency_line()
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

    #[test]
    fn the_fsync_probe_times_every_fsync_and_names_a_missing_folder() {
        let dir = tempfile::tempdir().unwrap();
        let from = Instant::now();
        let until = from + Duration::from_millis(100);
        let probed = fsync_latencies(dir.path(), 4096, from, until, Duration::from_millis(2))
            .expect("probe a writable folder");
        // Each round trip sleeps 2 ms, so 100 ms hold at most 50 fsyncs.
        assert!((1..=50).contains(&probed.len()), "{} fsyncs", probed.len());
        assert!(probed.min() > 0);
        // The probe's file is removed when it ends.
        assert_eq!(0, std::fs::read_dir(dir.path()).unwrap().count());

        let missing = dir.path().join("no-such-folder");
        let err = fsync_latencies(&missing, 4096, from, until, Duration::ZERO).unwrap_err();
        assert!(err.to_string().contains("no-such-folder"), "{err}");
    }
}
