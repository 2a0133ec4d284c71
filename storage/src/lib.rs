//! raftmq's storage: one RocksDB database per node, split into column families.
//!
//! # Layout
//! * [`keys`]: key encodings of every column family (big-endian, so byte order = numeric order).
//! * [`db`]: opening the database, column-family names, write options for `flush = sync|async`.
//! * [`disk`]: free space on the data dir's filesystem and the node's high-water mark.
//! * [`log`]: the Raft log, which *is* the commit log: entries keyed by index, plus the vote,
//!   the committed log id and the last purged log id.
//! * [`state`]: the broker state derived from applied entries (topics, consume queues, consumer
//!   offsets, the message-id dedup index), always written in the same `WriteBatch` as the
//!   applied log id, so a crash never half-applies an entry.
//! * [`timer`]: delay messages, entered into their queues when due.
//! * [`txn`]: transactional (half) messages, entered into their queues at commit.
//! * [`pop`]: POP consumption (receive, ack, invisibility, dead letters) as replicated state.
//!
//! This crate knows nothing about openraft: the `raft` crate converts openraft's types to the
//! protobuf records stored here.

pub mod db;
pub mod disk;
pub mod error;
pub mod keys;
pub mod log;
pub mod pop;
pub mod state;
#[cfg(test)]
mod test_support;
pub mod timer;
pub mod txn;

pub use db::{Db, FlushMode, StorageMemory};
pub use disk::{DiskChange, DiskSpace};
pub use error::StorageError;
pub use log::{LogRecord, LogStore};
pub use pop::{DEFAULT_MAX_DELIVERY_ATTEMPTS, PopHint, dead_letter_topic};
pub use state::{
    ApplyItem, BrokerState, HIGHEST_COMMAND_KIND, QueueProgress, StateExport, StoredRecord,
};
