//! The `raftmq` binary: parses flags, starts tracing, and hands over to the library.

use clap::{Parser, Subcommand};
use raftmq::cli;
use raftmq::config::BrokerArgs;
use raftmq::logging::{self, LogFormat};

// The broker allocates and frees a few buffers per message; mimalloc does that with less
// CPU than glibc's allocator (see docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "raftmq",
    version,
    about = "A RocketMQ-compatible message broker replicated with Raft"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one broker node (one member of a Raft broker group).
    Broker {
        // Boxed: the broker's flags are many, and the other commands should not pay for them.
        #[command(flatten)]
        args: Box<BrokerArgs>,
        /// Write this process's id to the file (used by `raftmq local`).
        #[arg(long)]
        pid_file: Option<std::path::PathBuf>,
    },
    /// Start a local three-node group on 127.0.0.1, one process per node.
    Local(cli::local::LocalArgs),
    /// Send messages.
    Produce(cli::produce::ProduceArgs),
    /// Read messages with offset-based pulls, committing the group's offsets.
    Consume(cli::consume::ConsumeArgs),
    /// Cluster status and topic management.
    Admin(cli::admin::AdminArgs),
    /// Load generators that report throughput and latency.
    Bench(cli::bench::BenchArgs),
}

fn init_tracing(default: &str) {
    logging::init(default, LogFormat::Text);
}

/// The broker's runtime. Without tokio's LIFO slot: a task woken by another runs after the
/// tasks already queued, not next. When a batch of sends commits, each call's task wakes its
/// connection's HTTP/2 task; run next, the connection task was polled (and wrote its socket)
/// once for every reply or two, instead of once for all the replies ready together. Measured:
/// 11 % less of the leader's CPU per one-message send (docs/BENCHMARKS.md, 2026-12-05).
/// The setting needs `--cfg tokio_unstable` (set in .cargo/config.toml); a build without it
/// keeps the slot and works the same, only slower.
fn broker_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.enable_all().build()
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // One line with the chain of causes. Returning the error from `main` would print
            // its Debug form instead, which adds a backtrace whenever RUST_BACKTRACE is set
            // (common where Rust programs are run), burying the one line the user needs.
            eprintln!("Error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = match &cli.command {
        // The load generator sizes its own runtime (see `raftmq bench produce --threads`).
        Command::Bench(args) => cli::bench::runtime(args)?,
        Command::Broker { .. } => broker_runtime()?,
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
    };
    match cli.command {
        Command::Broker { args, pid_file } => {
            logging::init(logging::BROKER_DEFAULT_FILTER, args.log_format);
            let config = args.resolve()?;
            if let Some(path) = pid_file {
                std::fs::write(&path, format!("{}\n", std::process::id()))?;
            }
            runtime.block_on(raftmq::broker::run(config, cli::shutdown_signal()))
        }
        Command::Local(args) => {
            init_tracing("warn");
            runtime.block_on(cli::local::run(args))
        }
        Command::Produce(args) => {
            init_tracing("warn");
            runtime.block_on(cli::produce::run(args))
        }
        Command::Consume(args) => {
            init_tracing("warn");
            runtime.block_on(cli::consume::run(args))
        }
        Command::Admin(args) => {
            init_tracing("warn");
            runtime.block_on(cli::admin::run(args))
        }
        Command::Bench(args) => {
            init_tracing("warn");
            runtime.block_on(cli::bench::run(args))
        }
    }
}
