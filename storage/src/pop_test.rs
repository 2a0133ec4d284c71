//! POP consumption against a real RocksDB: deliveries, acks, expiry, dead letters, FIFO
//! groups, and that a crash or a snapshot keeps every delivery in flight.

use raftmq_proto::raft::v1 as pb;

use super::*;
use crate::test_support::*;

const INVISIBLE_MS: i64 = 10_000;

fn tagged(topic: &str, queue_id: u32, id: &str, tag: Option<&str>) -> pb::StoredMessage {
    pb::StoredMessage {
        tag: tag.map(str::to_string),
        ..message(topic, queue_id, id, 1)
    }
}

fn create_topic(name: &str, queues: u32) -> pb::Command {
    pb::Command {
        kind: Some(pb::command::Kind::CreateTopic(pb::CreateTopic {
            name: name.into(),
            queues,
            created_ms: 1,
            message_type: 0,
        })),
    }
}

fn create_group(name: &str, fifo: bool, max_delivery_attempts: u32) -> pb::Command {
    pb::Command {
        kind: Some(pb::command::Kind::CreateGroup(pb::CreateGroup {
            name: name.into(),
            fifo,
            max_delivery_attempts,
            created_ms: 1,
        })),
    }
}

fn pop(group: &str, queues: &[u32], max: u32, now_ms: i64, tags: &[&str]) -> pb::Command {
    pb::Command {
        kind: Some(pb::command::Kind::Pop(pb::Pop {
            group: group.into(),
            topic: "T".into(),
            queue_ids: queues.to_vec(),
            max_messages: max,
            now_ms,
            invisible_ms: INVISIBLE_MS,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            start_at_end: false,
        })),
    }
}

fn ack(group: &str, receipts: Vec<pb::Receipt>) -> pb::Command {
    pb::Command {
        kind: Some(pb::command::Kind::Ack(pb::Ack {
            group: group.into(),
            topic: "T".into(),
            receipts,
        })),
    }
}

fn change_invisible(group: &str, receipt: pb::Receipt, now_ms: i64, ms: i64) -> pb::Command {
    pb::Command {
        kind: Some(pb::command::Kind::ChangeInvisible(pb::ChangeInvisible {
            group: group.into(),
            topic: "T".into(),
            receipt: Some(receipt),
            now_ms,
            invisible_ms: ms,
        })),
    }
}

fn deliveries(result: pb::CommandResult) -> Vec<pb::Delivery> {
    match result.kind {
        Some(pb::command_result::Kind::Pop(r)) => r.deliveries,
        other => panic!("expected a pop result, got {other:?}"),
    }
}

fn acked(result: pb::CommandResult) -> Vec<pb::ReceiptOutcome> {
    match result.kind {
        Some(pb::command_result::Kind::Ack(r)) => r
            .outcomes
            .into_iter()
            .map(|o| pb::ReceiptOutcome::try_from(o).unwrap())
            .collect(),
        other => panic!("expected an ack result, got {other:?}"),
    }
}

fn receipt_result(result: pb::CommandResult) -> pb::ReceiptResult {
    match result.kind {
        Some(pb::command_result::Kind::Receipt(r)) => r,
        other => panic!("expected a receipt result, got {other:?}"),
    }
}

/// (queue, offset, attempt) of each delivery.
fn positions(deliveries: &[pb::Delivery]) -> Vec<(u32, u64, u32)> {
    deliveries
        .iter()
        .map(|d| {
            let r = d.receipt.unwrap();
            (r.queue_id, r.offset, d.attempt)
        })
        .collect()
}

fn receipts(deliveries: &[pb::Delivery]) -> Vec<pb::Receipt> {
    deliveries.iter().map(|d| d.receipt.unwrap()).collect()
}

/// A fixture with topic T (2 queues): queue 0 holds a, b, c; queue 1 holds d.
fn with_messages() -> Fixture {
    let mut fx = Fixture::new();
    fx.commit(create_topic("T", 2));
    fx.commit(append(vec![
        message("T", 0, "a", 1),
        message("T", 0, "b", 1),
        message("T", 1, "d", 1),
        message("T", 0, "c", 1),
    ]));
    fx
}

#[test]
fn given_new_messages_when_popped_then_each_is_delivered_once_until_its_invisibility_ends() {
    let mut fx = with_messages();
    let first = deliveries(fx.commit(pop("G", &[1, 0], 3, 1_000, &[])));
    assert_eq!(vec![(1, 0, 1), (0, 0, 1), (0, 1, 1)], positions(&first));
    assert!(
        first
            .iter()
            .all(|d| d.invisible_until_ms == 1_000 + INVISIBLE_MS)
    );

    let second = deliveries(fx.commit(pop("G", &[0, 1], 32, 2_000, &[])));
    assert_eq!(vec![(0, 2, 1)], positions(&second), "only the rest is new");
    let idle = deliveries(fx.commit(pop("G", &[0, 1], 32, 3_000, &[])));
    assert!(idle.is_empty(), "everything is in flight");

    // Another group has its own progress.
    let other = deliveries(fx.commit(pop("H", &[0], 32, 3_000, &[])));
    assert_eq!(3, other.len());

    let outcomes = acked(fx.commit(ack("G", receipts(&first))));
    assert_eq!(vec![pb::ReceiptOutcome::ReceiptDone; 3], outcomes);
    let after_expiry = deliveries(fx.commit(pop("G", &[0, 1], 32, 20_000, &[])));
    assert_eq!(
        vec![(0, 2, 2)],
        positions(&after_expiry),
        "only the unacknowledged message comes back, as attempt 2"
    );
    assert_eq!(Some(2), fx.state.consumer_offset("G", "T", 0).unwrap());
    assert_eq!(Some(1), fx.state.consumer_offset("G", "T", 1).unwrap());
}

#[test]
fn given_a_redelivered_message_then_the_old_handle_is_stale_and_a_repeated_ack_is_ok() {
    let mut fx = with_messages();
    let first = deliveries(fx.commit(pop("G", &[1], 1, 1_000, &[])));
    let again = deliveries(fx.commit(pop("G", &[1], 1, 1_000 + INVISIBLE_MS, &[])));
    assert_eq!(vec![(1, 0, 2)], positions(&again));
    assert_ne!(
        first[0].receipt.unwrap().epoch,
        again[0].receipt.unwrap().epoch
    );

    let stale = acked(fx.commit(ack("G", receipts(&first))));
    assert_eq!(vec![pb::ReceiptOutcome::ReceiptStale], stale);
    let done = acked(fx.commit(ack("G", receipts(&again))));
    assert_eq!(vec![pb::ReceiptOutcome::ReceiptDone], done);
    let retried = acked(fx.commit(ack("G", receipts(&again))));
    assert_eq!(
        vec![pb::ReceiptOutcome::ReceiptDone],
        retried,
        "an ack retried after a lost reply succeeds"
    );
    let never = pb::Receipt {
        queue_id: 1,
        offset: 99,
        epoch: 1,
    };
    assert_eq!(
        vec![pb::ReceiptOutcome::ReceiptStale],
        acked(fx.commit(ack("G", vec![never])))
    );
}

#[test]
fn given_a_tag_filter_then_other_messages_are_skipped_for_good() {
    let mut fx = Fixture::new();
    fx.commit(create_topic("T", 1));
    fx.commit(append(vec![
        tagged("T", 0, "a", Some("A")),
        tagged("T", 0, "b", Some("B")),
        tagged("T", 0, "n", None),
        tagged("T", 0, "a2", Some("A")),
    ]));
    let only_a = deliveries(fx.commit(pop("G", &[0], 32, 1_000, &["A"])));
    assert_eq!(vec![(0, 0, 1), (0, 3, 1)], positions(&only_a));
    fx.commit(ack("G", receipts(&only_a)));
    let rest = deliveries(fx.commit(pop("G", &[0], 32, 50_000, &[])));
    assert!(
        rest.is_empty(),
        "filtered-out messages are not delivered later"
    );
    assert_eq!(Some(4), fx.state.consumer_offset("G", "T", 0).unwrap());
}

#[test]
fn given_max_attempts_reached_then_the_message_moves_to_the_dead_letter_topic() {
    let mut fx = with_messages();
    fx.commit(create_group("G", false, 2));
    let mut now = 1_000;
    let first = deliveries(fx.commit(pop("G", &[1], 1, now, &[])));
    assert_eq!(vec![(1, 0, 1)], positions(&first));
    now += INVISIBLE_MS;
    let second = deliveries(fx.commit(pop("G", &[1], 1, now, &[])));
    assert_eq!(vec![(1, 0, 2)], positions(&second));
    now += INVISIBLE_MS;
    let third = deliveries(fx.commit(pop("G", &[1], 1, now, &[])));
    assert!(third.is_empty(), "two attempts were the maximum");

    let dlq = dead_letter_topic("G");
    assert_eq!(Some(1), fx.state.topic(&dlq).map(|t| t.queues));
    let dead = fx
        .state
        .read_message(&dlq, 0, 0)
        .unwrap()
        .expect("in the DLQ");
    assert_eq!("d", dead.message.message_id);
    assert_eq!(
        "T", dead.message.topic,
        "the stored message keeps its topic"
    );
    assert_eq!(Some(1), fx.state.consumer_offset("G", "T", 1).unwrap());
}

#[test]
fn given_a_fifo_group_then_a_queue_waits_for_its_delivery_in_flight() {
    let mut fx = with_messages();
    fx.commit(create_group("F", true, 0));
    let first = deliveries(fx.commit(pop("F", &[0], 1, 1_000, &[])));
    assert_eq!(vec![(0, 0, 1)], positions(&first));
    let blocked = deliveries(fx.commit(pop("F", &[0, 1], 32, 2_000, &[])));
    assert_eq!(
        vec![(1, 0, 1)],
        positions(&blocked),
        "queue 0 is held; queue 1 is free"
    );
    // Expired: the same message comes back before anything after it.
    let retry = deliveries(fx.commit(pop("F", &[0], 32, 1_000 + INVISIBLE_MS, &[])));
    assert_eq!(vec![(0, 0, 2)], positions(&retry));
    fx.commit(ack("F", receipts(&retry)));
    let next = deliveries(fx.commit(pop("F", &[0], 32, 20_000, &[])));
    assert_eq!(vec![(0, 1, 1), (0, 2, 1)], positions(&next));
}

#[test]
fn given_a_changed_invisibility_then_the_message_returns_at_the_new_time_under_a_new_handle() {
    let mut fx = with_messages();
    let first = deliveries(fx.commit(pop("G", &[1], 1, 1_000, &[])));
    let old = first[0].receipt.unwrap();
    let changed = receipt_result(fx.commit(change_invisible("G", old, 2_000, 60_000)));
    assert_eq!(pb::ReceiptOutcome::ReceiptDone as i32, changed.outcome);
    let new = changed.receipt.unwrap();
    assert_ne!(old.epoch, new.epoch);

    let early = deliveries(fx.commit(pop("G", &[1], 1, 1_000 + INVISIBLE_MS, &[])));
    assert!(early.is_empty(), "the old invisibility no longer applies");
    assert_eq!(
        vec![pb::ReceiptOutcome::ReceiptStale],
        acked(fx.commit(ack("G", vec![old])))
    );
    let late = deliveries(fx.commit(pop("G", &[1], 1, 62_000, &[])));
    assert_eq!(vec![(1, 0, 2)], positions(&late));
    let stale_change = receipt_result(fx.commit(change_invisible("G", new, 70_000, 1)));
    assert_eq!(
        pb::ReceiptOutcome::ReceiptStale as i32,
        stale_change.outcome
    );
}

#[test]
fn given_an_append_and_a_pop_in_one_apply_call_then_the_pop_sees_the_new_messages() {
    let mut fx = Fixture::new();
    let results = fx.commit_all(vec![
        create_topic("T", 1),
        append(vec![tagged("T", 0, "a", Some("A"))]),
        pop("G", &[0], 32, 1_000, &["A"]),
        pop("G", &[0], 32, 1_001, &["A"]),
    ]);
    let mut results = results.into_iter();
    assert_eq!(
        vec![(0, 0, 1)],
        positions(&deliveries(results.nth(2).unwrap()))
    );
    assert!(deliveries(results.next().unwrap()).is_empty());
}

#[test]
fn given_deliveries_in_flight_when_reopened_or_snapshotted_then_they_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut fx = with_messages();
    let first = deliveries(fx.commit(pop("G", &[0], 2, 1_000, &[])));
    let export = fx.state.export().unwrap();

    let restored = {
        let db = crate::Db::open(dir.path(), crate::FlushMode::Sync).unwrap();
        let state = BrokerState::open(db).unwrap();
        state.import(&export.data).unwrap();
        state
    };
    let hint = restored.pop_hint("G", "T", &[0], 2_000, false);
    assert_eq!(
        PopHint {
            ready: true,
            next_expiry_ms: Some(1_000 + INVISIBLE_MS)
        },
        hint,
        "offset 2 is still new; two deliveries are in flight"
    );
    assert!(!restored.pop_hint("G", "T", &[1], 2_000, true).ready);

    // The same state comes back from disk after a restart.
    let Fixture {
        _dir, log, state, ..
    } = fx;
    drop((log, state));
    let db = crate::Db::open(_dir.path(), crate::FlushMode::Sync).unwrap();
    let reopened = BrokerState::open(db).unwrap();
    assert_eq!(hint, reopened.pop_hint("G", "T", &[0], 2_000, false));
    assert_eq!(2, first.len());
}

#[test]
fn given_a_group_that_starts_at_the_end_then_older_messages_are_not_delivered() {
    let mut fx = with_messages();
    let command = pb::Command {
        kind: Some(pb::command::Kind::Pop(pb::Pop {
            start_at_end: true,
            ..match pop("L", &[0], 32, 1_000, &[]).kind {
                Some(pb::command::Kind::Pop(p)) => p,
                _ => unreachable!(),
            }
        })),
    };
    assert!(deliveries(fx.commit(command.clone())).is_empty());
    fx.commit(append(vec![message("T", 0, "e", 2)]));
    assert_eq!(vec![(0, 3, 1)], positions(&deliveries(fx.commit(command))));
}

#[test]
fn given_a_renewed_delivery_then_it_stays_invisible_under_the_same_handle() {
    let mut fx = with_messages();
    let first = deliveries(fx.commit(pop("G", &[1], 1, 1_000, &[])));
    let receipt = first[0].receipt.unwrap();
    let renew = pb::Command {
        kind: Some(pb::command::Kind::Renew(pb::Renew {
            group: "G".into(),
            topic: "T".into(),
            receipts: vec![receipt],
            now_ms: 9_000,
            invisible_ms: INVISIBLE_MS,
        })),
    };
    assert_eq!(
        vec![pb::ReceiptOutcome::ReceiptDone],
        acked(fx.commit(renew.clone()))
    );
    let early = deliveries(fx.commit(pop("G", &[1], 1, 1_000 + INVISIBLE_MS, &[])));
    assert!(early.is_empty(), "renewed past its first invisible time");
    assert_eq!(
        vec![pb::ReceiptOutcome::ReceiptDone],
        acked(fx.commit(ack("G", vec![receipt]))),
        "the original handle still acknowledges"
    );
    assert_eq!(
        vec![pb::ReceiptOutcome::ReceiptStale],
        acked(fx.commit(renew))
    );
}

fn reset_pop(group: &str, cursors: &[(u32, u64)]) -> pb::Command {
    pb::Command {
        kind: Some(pb::command::Kind::ResetPop(pb::ResetPop {
            group: group.into(),
            topic: "T".into(),
            queues: cursors
                .iter()
                .map(|&(queue_id, cursor)| pb::QueueCursor { queue_id, cursor })
                .collect(),
        })),
    }
}

#[test]
fn given_a_reset_then_receives_start_at_the_new_cursor_and_old_receipts_are_settled() {
    let mut fx = with_messages();
    let first = deliveries(fx.commit(pop("G", &[0], 3, 1_000, &[])));
    assert_eq!(vec![(0, 0, 1), (0, 1, 1), (0, 2, 1)], positions(&first));

    // Queue 0 back to offset 1; queue 1 (never received from) to its end; queue 7 does not
    // exist and stays untouched.
    fx.commit(reset_pop("G", &[(0, 1), (1, 1), (7, 0)]));
    assert_eq!(Some(1), fx.state.consumer_offset("G", "T", 0).unwrap());
    assert_eq!(Some(1), fx.state.consumer_offset("G", "T", 1).unwrap());
    assert_eq!(None, fx.state.consumer_offset("G", "T", 7).unwrap());

    // Nothing is in flight any more: offsets 1 and 2 come again as first attempts, before
    // their old invisibility ends; queue 1 has nothing past its new cursor.
    let again = deliveries(fx.commit(pop("G", &[0, 1], 32, 2_000, &[])));
    assert_eq!(vec![(0, 1, 1), (0, 2, 1)], positions(&again));

    // A receipt from before the reset: below the cursor it counts as acknowledged, at or
    // above it is stale (the message went out again under a new handle).
    let old = receipts(&first);
    assert_eq!(
        vec![pb::ReceiptOutcome::ReceiptDone],
        acked(fx.commit(ack("G", vec![old[0]])))
    );
    assert_eq!(
        vec![pb::ReceiptOutcome::ReceiptStale],
        acked(fx.commit(ack("G", vec![old[1]])))
    );
    assert_eq!(
        vec![pb::ReceiptOutcome::ReceiptDone; 2],
        acked(fx.commit(ack("G", receipts(&again))))
    );
    assert_eq!(Some(3), fx.state.consumer_offset("G", "T", 0).unwrap());

    // Forward past everything: nothing more to receive until a new message arrives.
    fx.commit(reset_pop("G", &[(0, 3)]));
    assert!(deliveries(fx.commit(pop("G", &[0], 32, 3_000, &[]))).is_empty());
    fx.commit(append(vec![message("T", 0, "e", 2)]));
    assert_eq!(
        vec![(0, 3, 1)],
        positions(&deliveries(fx.commit(pop("G", &[0], 32, 4_000, &[]))))
    );
    // Another group is not moved.
    assert_eq!(None, fx.state.consumer_offset("H", "T", 0).unwrap());
}
