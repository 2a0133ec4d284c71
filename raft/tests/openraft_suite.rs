//! openraft's own conformance suite for log storage and state machine, run against the
//! RocksDB-backed implementations (a fresh database per test case).

use std::sync::Arc;

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use raftmq_raft::TypeConfig;
use raftmq_raft::log_store::RaftLogStore;
use raftmq_raft::state_machine::StateMachine;
use raftmq_storage::{BrokerState, Db, FlushMode, LogStore};

struct RocksBuilder;

impl StoreBuilder<TypeConfig, RaftLogStore, StateMachine, tempfile::TempDir> for RocksBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, RaftLogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temporary dir");
        let db = Db::open(&dir.path().join("rocksdb"), FlushMode::Sync).expect("open RocksDB");
        let log = RaftLogStore::new(LogStore::new(db.clone()), Default::default());
        let state = Arc::new(BrokerState::open(db).expect("open broker state"));
        Ok((dir, log, StateMachine::new(state, Default::default())))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(RocksBuilder).await
}
