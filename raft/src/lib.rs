//! raftmq's Raft layer: everything that touches openraft lives in this crate.
//!
//! # Layout
//! * [`types`]: the openraft type configuration (`TypeConfig`) and the application data types.
//! * [`convert`]: `From`/`TryFrom` between openraft's types and the protobuf records that go on
//!   disk and on the wire (openraft's own layout is never persisted).
//! * [`log_store`]: `RaftLogStorage` over the RocksDB commit log, with group commit.
//! * [`state_machine`]: `RaftStateMachine` over the derived broker state.
//! * [`network`]: Raft RPC client over tonic, one channel per peer.
//! * [`contact`]: whether this node is in touch with a majority of its group.
//! * [`dead_leader`]: a follower whose leader's process is gone elects a successor without
//!   waiting out the leader lease.
//! * [`catchup`]: the leader's byte-rate limit on replication to followers far behind.
//! * [`service`]: the Raft RPC server, including `Propose`, through which followers hand writes
//!   to the leader.
//! * [`node`]: one Raft node: open storage, start openraft, bootstrap, propose.
//! * [`timeline`]: per-entry timestamps on the leader, turned into per-stage latency metrics.

pub mod catchup;
pub mod contact;
pub mod convert;
pub mod dead_leader;
pub mod log_store;
pub mod network;
pub mod node;
pub mod service;
pub mod state_machine;
pub mod timeline;
pub mod types;

pub use node::{MembershipError, NodeConfig, ProposeError, RaftNode, TransferError};
pub use types::{NodeId, Raft, TypeConfig};

/// Milliseconds since the Unix epoch by this node's wall clock (0 if the clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
