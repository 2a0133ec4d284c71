//! `raftmq bench produce`: a load generator reporting acknowledged messages per second and
//! ack latency percentiles, with a progress line every second.
//! `raftmq bench fsync`: the disk's own write+fsync latency, the floor under every durable ack.
//! `bench produce --fsync-probe DIR` measures the same beside the load, so that acks can be set
//! against what the disk did during that very run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use serde_json::json;

use raftmq_proto::rocketmq::v2;

use super::EndpointArgs;
use super::bench_connection::LeaderConnection;
use super::bench_load::{
    self, Load, drive, fsync_latencies, latency_json, latency_line, measure, parse_duration,
};
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

/// How the load generator's calls reach the group, for `bench produce` and `bench rpc`.
#[derive(Debug, Clone, clap::Args)]
pub struct CallArgs {
    /// How the load generator reaches the leader.
    #[arg(long, value_enum, default_value_t = Connection::Direct)]
    pub connection: Connection,
    /// A call unanswered this long fails (and counts as failed), e.g. `2s`. With the default
    /// direct connection, a call that times out also asks the group whether the leader moved.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
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
    #[command(flatten)]
    pub calls: CallArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Connection {
    /// One HTTP/2 connection to the leader, each call its headers and one gRPC frame on the
    /// `h2` crate, without a general client's per-call tasks and buffers: the least CPU per
    /// call. When the leader's node goes away it moves to the new leader.
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
    #[command(flatten)]
    pub calls: CallArgs,
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

/// The runtime a benchmark runs on: `--threads 1` (the default) is a single-threaded one.
pub fn runtime(args: &BenchArgs) -> anyhow::Result<tokio::runtime::Runtime> {
    bench_load::runtime(match &args.command {
        BenchCommand::Produce(bench) => bench.threads,
        BenchCommand::Rpc(bench) => bench.threads,
        BenchCommand::Fsync(_) => 1,
    })
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

/// A client whose first endpoint is the group's leader: a follower would forward every
/// send (an extra hop).
async fn leader_first_client(
    endpoints: &EndpointArgs,
    timeout: Duration,
) -> anyhow::Result<Arc<Client>> {
    anyhow::ensure!(!timeout.is_zero(), "the timeout must be more than 0");
    let mut endpoints = endpoints.list();
    let probe = Client::new(&endpoints)?;
    if let Some(leader) = probe.leader_endpoint().await {
        endpoints.retain(|e| *e != leader);
        endpoints.insert(0, leader);
    }
    let mut client = Client::new(&endpoints)?;
    client.timeout = timeout;
    Ok(Arc::new(client))
}

/// What the workers call through: the CLI's client, or a direct connection to the leader
/// (calls still carry and keep the client's timeout).
#[derive(Clone)]
enum Caller {
    Channel(Arc<Client>),
    Direct(Arc<LeaderConnection>),
}

const SEND_MESSAGE_PATH: &str = "/apache.rocketmq.v2.MessagingService/SendMessage";
const HEARTBEAT_PATH: &str = "/apache.rocketmq.v2.MessagingService/Heartbeat";

impl Caller {
    async fn new(client: Arc<Client>, connection: Connection) -> anyhow::Result<Caller> {
        Ok(match connection {
            Connection::Channel => Caller::Channel(client),
            // The leader is the client's first endpoint.
            Connection::Direct => {
                Caller::Direct(Arc::new(LeaderConnection::connect(client).await?))
            }
        })
    }

    /// One send; the error says why it failed.
    async fn send(self, messages: Vec<v2::Message>) -> Result<(), String> {
        match self {
            Caller::Channel(client) => client
                .send(messages)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Caller::Direct(leader) => {
                let request = v2::SendMessageRequest { messages };
                let reply: v2::SendMessageResponse = leader
                    .unary(SEND_MESSAGE_PATH, &request)
                    .await
                    .map_err(|e| e.to_string())?;
                check(reply.status.as_ref()).map_err(|e| e.to_string())
            }
        }
    }

    async fn heartbeat(self) -> Result<(), String> {
        match self {
            Caller::Channel(client) => client.heartbeat().await.map_err(|e| e.to_string()),
            Caller::Direct(leader) => {
                let reply: v2::HeartbeatResponse = leader
                    .unary(HEARTBEAT_PATH, &producer_heartbeat())
                    .await
                    .map_err(|e| e.to_string())?;
                check(reply.status.as_ref()).map_err(|e| e.to_string())
            }
        }
    }
}

async fn produce(bench: ProduceBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        bench.concurrency > 0 && bench.batch > 0 && bench.size > 0,
        "concurrency, batch and size must be > 0"
    );
    let client = leader_first_client(&bench.endpoints, bench.calls.timeout).await?;
    client.route(&bench.topic).await?;
    let caller = Caller::new(client, bench.calls.connection).await?;
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
    let measured = measure(&load, bench.fsync_probe.clone(), move || {
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
    if bench.json {
        let mut result = measured.json(&load, bench.size);
        result["batch"] = bench.batch.into();
        result["body"] = option_name(bench.body).into();
        result["threads"] = bench.threads.into();
        result["connection"] = option_name(bench.calls.connection).into();
        println!("{result}");
    } else {
        println!("{}", measured.text(bench.size, "messages"));
    }
    measured.outcome.ensure_some_succeeded()
}

/// The name a command-line option's value is given by, as the JSON reports it.
fn option_name(value: impl ValueEnum) -> Option<String> {
    value.to_possible_value().map(|v| v.get_name().to_string())
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
    let client = leader_first_client(&bench.endpoints, bench.calls.timeout).await?;
    let caller = Caller::new(client, bench.calls.connection).await?;
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
                "first_failure": outcome.first_failure,
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
        if let Some(line) = outcome.first_failure_line() {
            println!("{line}");
        }
    }
    outcome.ensure_some_succeeded()
}
