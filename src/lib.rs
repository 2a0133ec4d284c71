//! raftmq: a RocketMQ-style message broker in which every broker group is a Raft group.
//!
//! # Layout
//! * [`config`]: broker configuration (defaults → TOML file → `RAFTMQ_*` env → flags).
//! * [`broker`]: one broker node: the RocketMQ 5 gRPC service, the admin service, input
//!   validation, and wiring of the Raft node (crate `raftmq-raft`) to the network.
//! * [`client`]: a small RocketMQ 5 gRPC client with endpoint failover, used by the CLI.
//! * [`cli`]: the `produce`, `consume`, `admin`, `bench` and `local` subcommands.
//! * [`logging`]: text or JSON logs, with a filter that can change at runtime.

pub mod broker;
pub mod cli;
pub mod client;
pub mod config;
pub mod logging;
