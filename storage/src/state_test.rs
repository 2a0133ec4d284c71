//! Tests of the derived broker state against a real RocksDB in a temporary directory.

use bytes::Bytes;
use raftmq_proto::raft::v1 as pb;

use super::*;
use crate::test_support::*;
use crate::{Db, FlushMode, LogStore};

#[test]
fn given_batches_on_two_queues_when_applied_then_offsets_are_dense_per_queue() {
    let mut fx = Fixture::new();
    let first = appended(fx.commit(append(vec![
        message("T", 0, "a", 1),
        message("T", 1, "b", 1),
        message("T", 0, "c", 1),
    ])));
    let second = appended(fx.commit(append(vec![message("T", 0, "d", 2)])));
    let offsets: Vec<_> = first
        .iter()
        .chain(&second)
        .map(|m| (m.queue_id, m.queue_offset))
        .collect();
    assert_eq!(vec![(0, 0), (1, 0), (0, 1), (0, 2)], offsets);
    assert_eq!(3, fx.state.queue_next_offset("T", 0));
    assert_eq!(1, fx.state.queue_next_offset("T", 1));

    let read = fx.state.read_queue("T", 0, 0, 100, usize::MAX).unwrap();
    let ids: Vec<_> = read
        .iter()
        .map(|r| (r.queue_offset, r.message.message_id.as_str()))
        .collect();
    assert_eq!(vec![(0, "a"), (1, "c"), (2, "d")], ids);
    assert_eq!(Bytes::from("body-c"), read[1].message.body);

    let tail = fx.state.read_queue("T", 0, 2, 100, usize::MAX).unwrap();
    assert_eq!(1, tail.len());
    assert!(
        fx.state
            .read_queue("T", 0, 3, 100, usize::MAX)
            .unwrap()
            .is_empty()
    );
    assert!(
        fx.state
            .read_queue("other", 0, 0, 100, usize::MAX)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn given_a_retried_message_id_within_the_window_then_the_first_result_is_returned() {
    let mut fx = Fixture::new();
    let first = appended(fx.commit(append(vec![message("T", 0, "x", 1_000)])));
    let retry = appended(fx.commit(append(vec![message("T", 3, "x", 5_000)])));
    assert!(!first[0].duplicate);
    assert!(retry[0].duplicate);
    assert_eq!(
        (first[0].queue_id, first[0].queue_offset),
        (retry[0].queue_id, retry[0].queue_offset)
    );
    assert_eq!(1, fx.state.queue_next_offset("T", 0));
    assert_eq!(
        0,
        fx.state.queue_next_offset("T", 3),
        "the retry stored nothing"
    );

    // Same id inside one batch: the second copy is a duplicate too.
    let batch = appended(fx.commit(append(vec![
        message("T", 0, "y", 6_000),
        message("T", 0, "y", 6_000),
    ])));
    assert!(!batch[0].duplicate && batch[1].duplicate);

    // Past the window the id is new again.
    let late = appended(fx.commit(append(vec![message(
        "T",
        0,
        "x",
        1_000 + DEDUP_WINDOW_MS + 1,
    )])));
    assert!(!late[0].duplicate);
    assert_eq!(2, late[0].queue_offset);
}

#[test]
fn given_a_topic_created_twice_then_the_second_reports_the_existing_one() {
    let mut fx = Fixture::new();
    let create = |queues| pb::Command {
        kind: Some(pb::command::Kind::CreateTopic(pb::CreateTopic {
            name: "T".into(),
            queues,
            created_ms: 7,
            message_type: 0,
        })),
    };
    let topic = |r: pb::CommandResult| match r.kind {
        Some(pb::command_result::Kind::Topic(t)) => t,
        other => panic!("expected a topic result, got {other:?}"),
    };
    let first = topic(fx.commit(create(4)));
    let second = topic(fx.commit(create(8)));
    assert!(first.created);
    assert!(!second.created);
    assert_eq!(4, second.topic.unwrap().queues);
    assert_eq!(
        vec!["T".to_string()],
        fx.state
            .topics()
            .iter()
            .map(|t| t.name.clone())
            .collect::<Vec<_>>()
    );
}

#[test]
fn given_state_written_when_reopened_then_caches_and_applied_id_are_restored() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), FlushMode::Sync).unwrap();
        let log = LogStore::new(db.clone());
        let state = BrokerState::open(db).unwrap();
        let command = append(vec![message("T", 2, "a", 1), message("T", 2, "b", 1)]);
        let entry = pb::Entry {
            log_id: Some(log_id(5)),
            payload: Some(pb::entry::Payload::Command(command.clone())),
        };
        log.append(&[entry], Box::new(|_| {})).unwrap();
        state
            .apply(vec![(log_id(5), ApplyItem::Command(command.into()))])
            .unwrap();
        let commit = pb::Command {
            kind: Some(pb::command::Kind::CommitOffset(pb::CommitOffset {
                group: "G".into(),
                topic: "T".into(),
                queue_id: 2,
                offset: 1,
                unless_changed_after: None,
            })),
        };
        state
            .apply(vec![(log_id(6), ApplyItem::Command(commit.into()))])
            .unwrap();
    }
    let db = Db::open(dir.path(), FlushMode::Sync).unwrap();
    let state = BrokerState::open(db).unwrap();
    assert_eq!(Some(6), state.applied_log_id().unwrap().map(|id| id.index));
    assert_eq!(6, *state.subscribe_applied().borrow());
    assert_eq!(2, state.queue_next_offset("T", 2));
    assert_eq!(0, state.queue_min_offset("T", 2).unwrap());
    assert_eq!(Some(1), state.consumer_offset("G", "T", 2).unwrap());
    assert_eq!(None, state.consumer_offset("G", "T", 1).unwrap());
    assert_eq!(
        2,
        state.read_queue("T", 2, 0, 10, usize::MAX).unwrap().len()
    );
}

#[test]
fn given_a_snapshot_export_when_imported_elsewhere_then_the_state_is_identical() {
    let mut source = Fixture::new();
    source.commit(append(vec![
        message("T", 0, "a", 1),
        message("T", 1, "b", 1),
    ]));
    let export = source.state.export().unwrap();
    assert_eq!(Some(1), export.applied.as_ref().map(|id| id.index));
    let data = export.data;

    let target = Fixture::new();
    target.state.import(&data).unwrap();
    assert_eq!(1, target.state.queue_next_offset("T", 0));
    assert_eq!(1, target.state.queue_next_offset("T", 1));
    assert_eq!(
        source.state.applied_log_id().unwrap(),
        target.state.applied_log_id().unwrap()
    );
    assert_eq!(data, target.state.export().unwrap().data);

    assert!(
        target.state.import(&data[..data.len() - 1]).is_err(),
        "a truncated snapshot is refused"
    );
}

#[test]
fn given_a_byte_budget_then_a_read_stops_early_but_returns_at_least_one_message() {
    let mut fx = Fixture::new();
    fx.commit(append(
        (0..10)
            .map(|i| message("T", 0, &format!("m{i}"), 1))
            .collect(),
    ));
    assert_eq!(1, fx.state.read_queue("T", 0, 0, 100, 1).unwrap().len());
    assert_eq!(
        3,
        fx.state.read_queue("T", 0, 0, 3, usize::MAX).unwrap().len()
    );
}

#[test]
fn given_messages_stored_over_time_then_offset_lookup_by_time_finds_the_first_at_or_after() {
    let mut fx = Fixture::new();
    for (i, ts) in [100, 200, 200, 300].into_iter().enumerate() {
        fx.commit(append(vec![message("T", 0, &format!("m{i}"), ts)]));
    }
    let at = |ts| fx.state.queue_offset_at_time("T", 0, ts).unwrap();
    assert_eq!(0, at(0));
    assert_eq!(0, at(100));
    assert_eq!(1, at(150));
    assert_eq!(1, at(200));
    assert_eq!(3, at(201));
    assert_eq!(4, at(301), "after the last message: the next offset");
    assert_eq!(0, fx.state.queue_offset_at_time("empty", 0, 5).unwrap());
}

fn commit_offset(offset: u64, unless_changed_after: Option<u64>) -> ApplyItem {
    ApplyItem::Command(
        pb::Command {
            kind: Some(pb::command::Kind::CommitOffset(pb::CommitOffset {
                group: "G".into(),
                topic: "T".into(),
                queue_id: 0,
                offset,
                unless_changed_after,
            })),
        }
        .into(),
    )
}

fn offset_result(result: &Option<pb::CommandResult>) -> pb::OffsetResult {
    match result.as_ref().and_then(|r| r.kind.clone()) {
        Some(pb::command_result::Kind::Offset(offset)) => offset,
        other => panic!("expected an offset result, got {other:?}"),
    }
}

#[test]
fn given_a_newer_commit_when_a_late_conditional_commit_is_applied_then_the_offset_stays() {
    let dir = tempfile::tempdir().unwrap();
    let state = BrokerState::open(Db::open(dir.path(), FlushMode::Sync).unwrap()).unwrap();
    // The late commit (offset 5) was proposed seeing index 3; the newer one (offset 9) landed
    // at index 4, before it. In one apply call and in separate ones.
    let results = state
        .apply(vec![
            (log_id(3), commit_offset(2, None)),
            (log_id(4), commit_offset(9, Some(3))),
            (log_id(5), commit_offset(5, Some(3))),
        ])
        .unwrap();
    assert_eq!(None, offset_result(&results[1]).changed_at);
    assert_eq!(Some(4), offset_result(&results[2]).changed_at);
    assert_eq!(Some(9), state.consumer_offset("G", "T", 0).unwrap());
    let results = state
        .apply(vec![(log_id(6), commit_offset(1, Some(3)))])
        .unwrap();
    assert_eq!(Some(4), offset_result(&results[0]).changed_at);
    assert_eq!(Some(9), state.consumer_offset("G", "T", 0).unwrap());

    // A commit that saw the latest change applies, also when it moves the offset back (a
    // reset); so does an unconditional one.
    let results = state
        .apply(vec![(log_id(7), commit_offset(3, Some(4)))])
        .unwrap();
    assert_eq!(None, offset_result(&results[0]).changed_at);
    assert_eq!(Some(3), state.consumer_offset("G", "T", 0).unwrap());
    state
        .apply(vec![(log_id(8), commit_offset(7, None))])
        .unwrap();
    assert_eq!(Some(7), state.consumer_offset("G", "T", 0).unwrap());
}

#[test]
fn given_an_offset_written_before_change_indexes_were_kept_then_it_reads_and_any_commit_applies() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), FlushMode::Sync).unwrap();
    let key = crate::keys::offset_key("G", "T", 0);
    let mut batch = rocksdb::WriteBatch::default();
    batch.put_cf(&db.cf(crate::db::CF_OFFSETS), &key, 4u64.to_be_bytes());
    db.write(crate::db::CF_OFFSETS, batch).unwrap();
    let state = BrokerState::open(db).unwrap();
    assert_eq!(Some(4), state.consumer_offset("G", "T", 0).unwrap());
    let results = state
        .apply(vec![(log_id(2), commit_offset(6, Some(1)))])
        .unwrap();
    assert_eq!(None, offset_result(&results[0]).changed_at);
    assert_eq!(Some(6), state.consumer_offset("G", "T", 0).unwrap());
}
