//! The openraft type configuration.

use std::fmt;
use std::sync::Arc;

use raftmq_proto::raft::v1 as pb;

/// A node's id within its broker group.
pub type NodeId = u64;

/// Application data of a log entry: one broker command.
///
/// Shared, not copied: the same command (a send's messages) is held by the proposer, the log's
/// recent-entries cache, every replication stream and the state machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Request(pub Arc<pb::Command>);

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use pb::command::Kind;
        match &self.0.kind {
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
