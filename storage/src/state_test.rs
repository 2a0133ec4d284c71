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
fn given_a_retry_within_the_window_but_in_the_next_bucket_then_it_is_a_duplicate() {
    let mut fx = Fixture::new();
    let bucket_end = DEDUP_BUCKET_MS;
    let first = appended(fx.commit(append(vec![message("T", 0, "x", bucket_end - 1_000)])));
    let retry = appended(fx.commit(append(vec![message("T", 1, "x", bucket_end + 1_000)])));
    assert!(!first[0].duplicate);
    assert!(retry[0].duplicate, "the bucket before is searched too");
    assert_eq!(first[0].queue_offset, retry[0].queue_offset);
    assert_eq!(
        0,
        fx.state.queue_next_offset("T", 1),
        "the retry stored nothing"
    );

    // The same across a bucket boundary inside one apply call.
    let next_end = 2 * DEDUP_BUCKET_MS;
    let batch = appended(fx.commit(append(vec![
        message("T", 0, "y", next_end - 1_000),
        message("T", 0, "y", next_end + 1_000),
    ])));
    assert!(!batch[0].duplicate && batch[1].duplicate);
}

/// The message keys the dedup index holds, as (bucket, message id).
fn dedup_records(state: &BrokerState) -> Vec<(u64, String)> {
    let prefix = crate::keys::DEDUP_PREFIX;
    state
        .scan_prefix(crate::db::CF_INDEX, b"")
        .unwrap()
        .into_iter()
        .map(|(key, _)| {
            assert!(key.starts_with(prefix), "only bucketed keys: {key:?}");
            let rest = &key[prefix.len()..];
            let bucket = u64::from_be_bytes(rest[..8].try_into().unwrap());
            let id = rest[8..].split(|b| *b == 0).nth(1).unwrap();
            (bucket, String::from_utf8(id.to_vec()).unwrap())
        })
        .collect()
}

#[test]
fn given_the_log_two_buckets_on_then_the_older_ids_are_dropped_for_good() {
    let mut fx = Fixture::new();
    let at = |bucket: i64| bucket * DEDUP_BUCKET_MS + 1_000;
    fx.commit(append(vec![message("T", 0, "a", at(0))]));
    fx.commit(append(vec![message("T", 0, "b", at(1))]));
    let both = vec![(0, "a".to_string()), (1, "b".to_string())];
    assert_eq!(both, dedup_records(&fx.state));

    fx.commit(append(vec![message("T", 0, "c", at(2))]));
    let mut expected = vec![(1, "b".to_string()), (2, "c".to_string())];
    assert_eq!(expected, dedup_records(&fx.state));

    // The newest bucket outlives a restart: a message stamped by a clock that is behind is
    // recorded in it, not in a bucket already dropped.
    fx.state = BrokerState::open(fx.state.db().clone()).unwrap();
    let late = appended(fx.commit(append(vec![message("T", 0, "d", at(0))])));
    assert!(!late[0].duplicate);
    expected.push((2, "d".to_string()));
    assert_eq!(expected, dedup_records(&fx.state));

    // A jump of several buckets at once keeps only the newest and the one before.
    fx.commit(append(vec![message("T", 0, "e", at(7))]));
    assert_eq!(vec![(7, "e".to_string())], dedup_records(&fx.state));
}

#[test]
fn given_records_of_a_build_before_buckets_then_retries_within_their_window_are_found() {
    let mut fx = Fixture::new();
    // As an earlier build recorded a send of "old" at time 1_000 (queue 0, offset 7).
    let record = pb::DedupEntry {
        queue_id: 0,
        queue_offset: 7,
        store_timestamp_ms: 1_000,
    };
    let db = fx.state.db();
    db.inner
        .put_cf(
            &db.cf(crate::db::CF_INDEX),
            crate::keys::old_dedup_key("T", "old"),
            record.encode_to_vec(),
        )
        .unwrap();
    // The node restarts on this build.
    fx.state = BrokerState::open(fx.state.db().clone()).unwrap();

    let retry = appended(fx.commit(append(vec![message("T", 0, "old", 2_000)])));
    assert!(retry[0].duplicate);
    assert_eq!(
        7, retry[0].queue_offset,
        "the first result, from the old record"
    );
    assert_eq!(
        0,
        fx.state.queue_next_offset("T", 0),
        "the retry stored nothing"
    );

    let past = 1_000 + DEDUP_WINDOW_MS + 1;
    let late = appended(fx.commit(append(vec![message("T", 0, "old", past)])));
    assert!(
        !late[0].duplicate,
        "past the old record's window the id is new"
    );
    let again = appended(fx.commit(append(vec![message("T", 0, "old", past + 1)])));
    assert!(again[0].duplicate);
    assert_eq!(
        late[0].queue_offset, again[0].queue_offset,
        "the bucketed record, newer, comes first"
    );
}

#[test]
fn given_a_snapshot_then_the_newest_dedup_bucket_goes_with_it() {
    let mut source = Fixture::new();
    source.commit(append(vec![message("T", 0, "a", 3 * DEDUP_BUCKET_MS)]));
    let mut target = Fixture::new();
    target
        .state
        .import(&source.state.export().unwrap().data)
        .unwrap();
    target.next_index = source.next_index;
    for fx in [&mut source, &mut target] {
        fx.commit(append(vec![message("T", 0, "late", 1_000)]));
        assert_eq!(
            vec![(3, "a".to_string()), (3, "late".to_string())],
            dedup_records(&fx.state)
        );
    }
}

mod dedup_properties {
    use proptest::prelude::*;

    use super::*;

    /// (message id, store time) of each send, ids from a small set so that retries are common.
    fn sends(max_step_ms: i64, backwards: bool) -> impl Strategy<Value = Vec<(u8, i64)>> {
        let step = if backwards {
            -max_step_ms..max_step_ms
        } else {
            0..max_step_ms
        };
        prop::collection::vec((0u8..4, step), 1..40).prop_map(|steps| {
            let mut time = 10 * DEDUP_BUCKET_MS;
            steps
                .into_iter()
                .map(|(id, step)| {
                    time += step;
                    (id, time)
                })
                .collect()
        })
    }

    /// (duplicate, queue offset) of each send, applied in calls of the given sizes.
    fn apply_in_calls(sends: &[(u8, i64)], call_sizes: &[usize]) -> Vec<(bool, u64)> {
        let mut fx = Fixture::new();
        let mut results = Vec::new();
        let mut rest = sends;
        for size in call_sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (call, tail) = rest.split_at((*size).clamp(1, rest.len()));
            rest = tail;
            let commands = call
                .iter()
                .map(|(id, time)| append(vec![message("T", 0, &id.to_string(), *time)]))
                .collect();
            for result in fx.commit_all(commands) {
                let message = appended(result).remove(0);
                results.push((message.duplicate, message.queue_offset));
            }
        }
        results
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// With store times that never go back, a send is a duplicate exactly when the latest
        /// stored copy of its id is at most one window older, as if every id were kept forever.
        #[test]
        fn with_clocks_that_never_go_back_dedup_is_as_if_nothing_were_dropped(
            sends in sends(DEDUP_WINDOW_MS / 2, false),
        ) {
            let mut latest = std::collections::HashMap::new();
            let expected: Vec<bool> = sends
                .iter()
                .map(|(id, time)| match latest.get(id) {
                    Some(first) if time - first <= DEDUP_WINDOW_MS => true,
                    _ => {
                        latest.insert(*id, *time);
                        false
                    }
                })
                .collect();
            let duplicates: Vec<bool> =
                apply_in_calls(&sends, &[1]).into_iter().map(|(dup, _)| dup).collect();
            prop_assert_eq!(expected, duplicates);
        }

        /// Replicas split the log into apply calls differently: whatever the split, and
        /// whatever the store times (clocks of successive leaders can disagree), every send
        /// gets the same answer.
        #[test]
        fn every_split_of_the_log_into_apply_calls_decides_the_same(
            sends in sends(DEDUP_BUCKET_MS, true),
            call_sizes in prop::collection::vec(1usize..8, 1..5),
        ) {
            prop_assert_eq!(apply_in_calls(&sends, &[1]), apply_in_calls(&sends, &call_sizes));
        }
    }
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

#[test]
fn given_offsets_of_two_groups_then_each_group_sees_only_its_own_progress() {
    let dir = tempfile::tempdir().unwrap();
    let state = BrokerState::open(Db::open(dir.path(), FlushMode::Sync).unwrap()).unwrap();
    let commit = |group: &str, topic: &str, queue_id: u32, offset: u64| {
        ApplyItem::Command(
            pb::Command {
                kind: Some(pb::command::Kind::CommitOffset(pb::CommitOffset {
                    group: group.into(),
                    topic: topic.into(),
                    queue_id,
                    offset,
                    unless_changed_after: None,
                })),
            }
            .into(),
        )
    };
    // "G" is a prefix of "G2": the scan must stop at the name's end, not at the prefix.
    state
        .apply(vec![
            (log_id(1), commit("G", "orders", 3, 7)),
            (log_id(2), commit("G2", "orders", 0, 99)),
            (log_id(3), commit("G", "audit", 0, 2)),
            (log_id(4), commit("G", "orders", 0, 5)),
            (log_id(5), commit("G", "orders", 0, 6)),
        ])
        .unwrap();
    let progress = |topic: &str, queue_id: u32, committed: Option<u64>| QueueProgress {
        topic: topic.to_string(),
        queue_id,
        committed,
        max_offset: 0,
    };
    // No topic exists here, so the queues listed are those up to the highest committed one.
    let g = vec![
        progress("audit", 0, Some(2)),
        progress("orders", 0, Some(6)),
        progress("orders", 1, None),
        progress("orders", 2, None),
        progress("orders", 3, Some(7)),
    ];
    assert_eq!(g, state.group_progress("G").unwrap());
    let g2 = vec![progress("orders", 0, Some(99))];
    assert_eq!(g2, state.group_progress("G2").unwrap());
    assert!(state.group_progress("nobody").unwrap().is_empty());
    let all = state.all_group_progress().unwrap();
    assert_eq!(vec!["G", "G2"], all.keys().collect::<Vec<_>>());
    assert_eq!((&g, &g2), (&all["G"], &all["G2"]));
}

#[test]
fn given_messages_in_a_topic_then_a_group_lags_by_what_it_has_not_committed() {
    let mut fx = Fixture::new();
    fx.commit(pb::Command {
        kind: Some(pb::command::Kind::CreateTopic(pb::CreateTopic {
            name: "T".into(),
            queues: 2,
            created_ms: 1,
            message_type: 0,
        })),
    });
    let mut messages: Vec<_> = (0..5)
        .map(|i| message("T", 0, &format!("a{i}"), 1))
        .collect();
    messages.extend((0..3).map(|i| message("T", 1, &format!("b{i}"), 1)));
    fx.commit(append(messages));
    fx.commit(pb::Command {
        kind: Some(pb::command::Kind::CommitOffset(pb::CommitOffset {
            group: "G".into(),
            topic: "T".into(),
            queue_id: 0,
            offset: 4,
            unless_changed_after: None,
        })),
    });
    let progress = fx.state.group_progress("G").unwrap();
    assert_eq!(
        vec![(0, Some(4), 5, 1), (1, None, 3, 3)],
        progress
            .iter()
            .map(|q| (q.queue_id, q.committed, q.max_offset, q.lag()))
            .collect::<Vec<_>>()
    );
}
