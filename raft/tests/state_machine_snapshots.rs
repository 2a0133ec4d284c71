//! When a node offers a snapshot. openraft asks for the current one at every start; a node
//! that has never built or installed one in this process answers none, instead of reading its
//! whole derived state (one consume-queue entry per message stored) to answer. One it builds
//! covers everything applied, and a node that installs it has the same state.

use std::sync::Arc;

use openraft::RaftSnapshotBuilder;
use openraft::storage::RaftStateMachine;
use raftmq_proto::raft::v1 as pb;
use raftmq_raft::state_machine::StateMachine;
use raftmq_storage::{ApplyItem, BrokerState, Db, FlushMode};

fn open(dir: &std::path::Path) -> Arc<BrokerState> {
    let db = Db::open(&dir.join("rocksdb"), FlushMode::Sync).expect("open RocksDB");
    Arc::new(BrokerState::open(db).expect("open broker state"))
}

fn create_topic(index: u64, name: &str) -> (pb::LogId, ApplyItem) {
    let log_id = pb::LogId {
        leader_id: Some(pb::LeaderId {
            term: 1,
            node_id: 1,
        }),
        index,
    };
    let command = pb::Command {
        kind: Some(pb::command::Kind::CreateTopic(pb::CreateTopic {
            name: name.to_string(),
            queues: 4,
            created_ms: 0,
            message_type: 0,
        })),
    };
    (log_id, ApplyItem::Command(Arc::new(command)))
}

#[tokio::test]
async fn a_restarted_node_offers_no_snapshot_until_it_builds_one() -> std::io::Result<()> {
    let dir = tempfile::tempdir().expect("temporary dir");
    {
        let state = open(dir.path());
        state
            .apply(vec![create_topic(1, "first"), create_topic(2, "second")])
            .expect("apply");
    }

    // The restart: a new process opens the same data dir.
    let mut restarted = StateMachine::new(open(dir.path()), Default::default());
    assert!(
        restarted.get_current_snapshot().await?.is_none(),
        "a restarted node must not export its state to answer openraft's startup question"
    );
    let (applied, _) = restarted.applied_state().await?;
    assert_eq!(
        Some(2),
        applied.map(|id| id.index),
        "the state survived the restart"
    );

    let built = restarted
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await?;
    assert_eq!(applied, built.meta.last_log_id);
    let offered = restarted
        .get_current_snapshot()
        .await?
        .expect("a snapshot once one was built");
    assert_eq!(built.meta.last_log_id, offered.meta.last_log_id);

    // A node with an empty disk installs it and has both topics.
    let empty_dir = tempfile::tempdir().expect("temporary dir");
    let empty_state = open(empty_dir.path());
    let mut joined = StateMachine::new(empty_state.clone(), Default::default());
    assert!(joined.get_current_snapshot().await?.is_none());
    joined
        .install_snapshot(&offered.meta, offered.snapshot)
        .await?;
    assert!(empty_state.topic("first").is_some() && empty_state.topic("second").is_some());
    let (joined_applied, _) = joined.applied_state().await?;
    assert_eq!(applied, joined_applied);
    let reoffered = joined
        .get_current_snapshot()
        .await?
        .expect("a snapshot once one was installed");
    assert_eq!(applied, reoffered.meta.last_log_id);
    Ok(())
}
