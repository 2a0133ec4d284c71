//! Test fixtures shared by the storage crate's tests: a real RocksDB in a temporary
//! directory, with commands appended to the log and applied as committed entries would be.

use bytes::Bytes;
use raftmq_proto::raft::v1 as pb;

use crate::{ApplyItem, BrokerState, Db, FlushMode, LogStore};

pub(crate) struct Fixture {
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) log: LogStore,
    pub(crate) state: BrokerState,
    pub(crate) next_index: u64,
}

impl Fixture {
    pub(crate) fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Db::open(dir.path(), FlushMode::Sync).expect("open db");
        Fixture {
            log: LogStore::new(db.clone()),
            state: BrokerState::open(db).expect("open state"),
            _dir: dir,
            next_index: 1,
        }
    }

    /// Append a command to the log and apply it, as a committed entry would be.
    pub(crate) fn commit(&mut self, command: pb::Command) -> pb::CommandResult {
        self.commit_all(vec![command]).pop().expect("one result")
    }

    /// Append several commands and apply them in one apply call, as a node that fell behind
    /// would: later commands must see what earlier ones of the same call changed.
    pub(crate) fn commit_all(&mut self, commands: Vec<pb::Command>) -> Vec<pb::CommandResult> {
        let mut entries = Vec::new();
        let mut items = Vec::new();
        for command in commands {
            let log_id = log_id(self.next_index);
            self.next_index += 1;
            entries.push(pb::Entry {
                log_id: Some(log_id),
                payload: Some(pb::entry::Payload::Command(command.clone())),
            });
            items.push((log_id, ApplyItem::Command(command.into())));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        self.log
            .append(&entries, Box::new(move |res| tx.send(res.is_ok()).unwrap()))
            .expect("append");
        assert!(rx.recv().unwrap(), "append became durable");
        self.state
            .apply(items)
            .expect("apply")
            .into_iter()
            .map(|r| r.expect("a command has a result"))
            .collect()
    }
}

pub(crate) fn log_id(index: u64) -> pb::LogId {
    pb::LogId {
        leader_id: Some(pb::LeaderId {
            term: 1,
            node_id: 1,
        }),
        index,
    }
}

pub(crate) fn message(topic: &str, queue_id: u32, id: &str, store_ms: i64) -> pb::StoredMessage {
    pb::StoredMessage {
        topic: topic.into(),
        queue_id,
        message_id: id.into(),
        body: Bytes::from(format!("body-{id}")),
        store_timestamp_ms: store_ms,
        ..Default::default()
    }
}

pub(crate) fn append(messages: Vec<pb::StoredMessage>) -> pb::Command {
    pb::Command {
        kind: Some(pb::command::Kind::Append(pb::AppendMessages { messages })),
    }
}

pub(crate) fn appended(result: pb::CommandResult) -> Vec<pb::AppendedMessage> {
    match result.kind {
        Some(pb::command_result::Kind::Append(r)) => r.messages,
        other => panic!("expected an append result, got {other:?}"),
    }
}

/// The message ids of queue 0 of topic T, in queue order.
pub(crate) fn queue_ids(fx: &Fixture) -> Vec<String> {
    fx.state
        .read_queue("T", 0, 0, 100, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| r.message.message_id)
        .collect()
}
