//! The openraft type configuration.

use std::fmt;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use raftmq_proto::raft::v1 as pb;

/// A node's id within its broker group.
pub type NodeId = u64;

/// Application data of a log entry: one broker command.
///
/// Shared, not copied: the same command (a send's messages) is held by the proposer, the log's
/// recent-entries cache, every replication stream and the state machine. So is its encoding:
/// the leader encodes an entry once for its log record and sends those bytes to every
/// follower, and a follower writes the bytes it received (see `convert::encode_entry`).
#[derive(Debug, Clone)]
pub struct Request {
    pub command: Arc<pb::Command>,
    /// The encoded `pb::Entry` that holds this command, with that entry's log id: a command
    /// proposed again after a leader change lands in another entry, which is encoded anew.
    encoded: Arc<OnceLock<(LogId, Bytes)>>,
}

impl Request {
    pub fn new(command: Arc<pb::Command>) -> Request {
        Request {
            command,
            encoded: Arc::default(),
        }
    }

    /// The encoding of the entry `log_id` that holds this command, if one was kept.
    pub fn encoded(&self, log_id: &LogId) -> Option<Bytes> {
        self.encoded
            .get()
            .filter(|(encoded_id, _)| encoded_id == log_id)
            .map(|(_, bytes)| bytes.clone())
    }

    /// Keep `bytes` as the encoding of the entry `log_id` that holds this command; the first
    /// encoding kept stays.
    pub fn keep_encoded(&self, log_id: &LogId, bytes: Bytes) {
        let _ = self.encoded.set((*log_id, bytes));
    }
}

/// Two requests are equal when their commands are; a kept encoding is a cache.
impl PartialEq for Request {
    fn eq(&self, other: &Request) -> bool {
        self.command == other.command
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use pb::command::Kind;
        match &self.command.kind {
            Some(Kind::Append(append)) => write!(f, "append({} messages)", append.messages.len()),
            Some(Kind::CreateTopic(create)) => write!(f, "create_topic({})", create.name),
            Some(Kind::CommitOffset(commit)) => {
                write!(
                    f,
                    "commit_offset({}/{}/{}={})",
                    commit.group, commit.topic, commit.queue_id, commit.offset
                )
            }
            Some(Kind::CreateGroup(create)) => write!(f, "create_group({})", create.name),
            Some(Kind::Pop(pop)) => write!(
                f,
                "pop({}/{} max {})",
                pop.group, pop.topic, pop.max_messages
            ),
            Some(Kind::Ack(ack)) => write!(
                f,
                "ack({}/{} x{})",
                ack.group,
                ack.topic,
                ack.receipts.len()
            ),
            Some(Kind::ChangeInvisible(change)) => {
                write!(f, "change_invisible({}/{})", change.group, change.topic)
            }
            Some(Kind::DeadLetter(dead)) => write!(f, "dead_letter({}/{})", dead.group, dead.topic),
            Some(Kind::FireTimers(fire)) => write!(f, "fire_timers(now {})", fire.now_ms),
            Some(Kind::EndTransaction(end)) => {
                write!(
                    f,
                    "end_transaction({}/{} commit {})",
                    end.topic, end.transaction_id, end.commit
                )
            }
            Some(Kind::TransactionChecked(checked)) => {
                write!(
                    f,
                    "transaction_checked({}/{})",
                    checked.topic, checked.transaction_id
                )
            }
            Some(Kind::ResetPop(reset)) => write!(
                f,
                "reset_pop({}/{} x{})",
                reset.group,
                reset.topic,
                reset.queues.len()
            ),
            Some(Kind::Renew(renew)) => {
                write!(
                    f,
                    "renew({}/{} x{})",
                    renew.group,
                    renew.topic,
                    renew.receipts.len()
                )
            }
            None => f.write_str("unknown"),
        }
    }
}

/// What applying an entry returned: a result for commands, nothing for blank and membership
/// entries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Response(pub Option<pb::CommandResult>);

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = pb::Node,
);

pub type Raft = openraft::Raft<TypeConfig, crate::state_machine::StateMachine>;

/// Snapshot data: the serialized derived state (see `raftmq_storage::BrokerState::export`).
pub type SnapshotData = Vec<u8>;

pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type LeaderId = openraft::alias::LeaderIdOf<TypeConfig>;
pub type Membership = openraft::Membership<NodeId, pb::Node>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
