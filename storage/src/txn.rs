//! Transactional messages: a half message is stored in the log at send time but enters its
//! consume queue only when its transaction commits.
//!
//! Applying a half message writes a [`pb::TransactionRecord`] (`txn` column family) instead of
//! a consume-queue entry. `EndTransaction` commits it (the queue entry is written then, so its
//! offset is assigned at commit) or rolls it back. While the outcome stays unknown the broker
//! asks the producer (`TransactionChecked` counts those checks, and rolls the transaction back
//! after the maximum). Resolved records stay as tombstones, so a repeated EndTransaction gets
//! the same answer.

use prost::Message;
use raftmq_proto::raft::v1 as pb;
use rocksdb::{IteratorMode, WriteBatch};

use crate::db::CF_TXN;
use crate::error::StorageError;
use crate::keys;
use crate::state::{BrokerState, Cache, PendingApply};

/// Transaction id of a half message: its message id, unique within the topic (the dedup
/// index refuses a second message with the same id).
pub fn transaction_id(message: &pb::StoredMessage) -> &str {
    &message.message_id
}

impl BrokerState {
    /// Record a half message.
    pub(crate) fn hold_transaction(
        &self,
        pending: &mut PendingApply,
        batch: &mut WriteBatch,
        message: &pb::StoredMessage,
        location: pb::QueueEntry,
    ) {
        let record = pb::TransactionRecord {
            topic: message.topic.clone(),
            queue_id: message.queue_id,
            location: Some(location),
            message_id: message.message_id.clone(),
            producer_client_id: message.producer_client_id.clone(),
            check_count: 0,
            next_check_ms: message.first_check_ms,
            state: pb::TransactionState::TransactionPending as i32,
            delivery_timestamp_ms: message.delivery_timestamp_ms,
        };
        let key = keys::txn_key(&message.topic, transaction_id(message));
        batch.put_cf(&self.db.cf(CF_TXN), &key, record.encode_to_vec());
        pending.txns.insert(key, record);
    }

    fn transaction(
        &self,
        pending: &PendingApply,
        key: &[u8],
    ) -> Result<Option<pb::TransactionRecord>, StorageError> {
        if let Some(record) = pending.txns.get(key) {
            return Ok(Some(record.clone()));
        }
        match self.db.get(CF_TXN, key)? {
            None => Ok(None),
            Some(bytes) => pb::TransactionRecord::decode(&*bytes)
                .map(Some)
                .map_err(|e| StorageError::corrupt(CF_TXN, key, e)),
        }
    }

    fn save_transaction(
        &self,
        pending: &mut PendingApply,
        batch: &mut WriteBatch,
        key: Vec<u8>,
        record: pb::TransactionRecord,
    ) {
        batch.put_cf(&self.db.cf(CF_TXN), &key, record.encode_to_vec());
        pending.txns.insert(key, record);
    }

    pub(crate) fn apply_end_transaction(
        &self,
        cache: &Cache,
        pending: &mut PendingApply,
        batch: &mut WriteBatch,
        end: pb::EndTransaction,
    ) -> Result<pb::TransactionResult, StorageError> {
        use pb::TransactionState as State;
        let key = keys::txn_key(&end.topic, &end.transaction_id);
        let Some(mut record) = self.transaction(pending, &key)? else {
            return Ok(pb::TransactionResult {
                done: false,
                state: State::TransactionPending as i32,
            });
        };
        let wanted = if end.commit {
            State::TransactionCommitted
        } else {
            State::TransactionRolledBack
        };
        if record.state == State::TransactionPending as i32 {
            if end.commit {
                // The message enters its queue now.
                let location = record.location.clone().unwrap_or_default();
                self.enqueue(
                    cache,
                    pending,
                    batch,
                    &record.topic,
                    record.queue_id,
                    location,
                );
            }
            record.state = wanted as i32;
            self.save_transaction(pending, batch, key, record.clone());
        }
        Ok(pb::TransactionResult {
            done: record.state == wanted as i32,
            state: record.state,
        })
    }

    pub(crate) fn apply_transaction_checked(
        &self,
        pending: &mut PendingApply,
        batch: &mut WriteBatch,
        checked: pb::TransactionChecked,
    ) -> Result<pb::TransactionResult, StorageError> {
        use pb::TransactionState as State;
        let key = keys::txn_key(&checked.topic, &checked.transaction_id);
        let Some(mut record) = self.transaction(pending, &key)? else {
            return Ok(pb::TransactionResult {
                done: false,
                state: State::TransactionPending as i32,
            });
        };
        let current = record.state == State::TransactionPending as i32
            && record.check_count == checked.check_count;
        if current {
            if record.check_count >= checked.max_checks {
                // Nobody could tell in time: roll back, as RocketMQ does.
                record.state = State::TransactionRolledBack as i32;
            } else {
                record.check_count += 1;
                record.next_check_ms = checked.now_ms.saturating_add(checked.check_interval_ms);
            }
            self.save_transaction(pending, batch, key, record.clone());
        }
        Ok(pb::TransactionResult {
            done: current,
            state: record.state,
        })
    }

    /// Pending transactions whose next check is due at `now_ms`.
    pub fn transactions_due(
        &self,
        now_ms: i64,
    ) -> Result<Vec<pb::TransactionRecord>, StorageError> {
        let handle = self.db.cf(CF_TXN);
        let mut due = Vec::new();
        for item in self.db.inner.iterator_cf(&handle, IteratorMode::Start) {
            let (key, value) = item.map_err(|source| StorageError::Read { cf: CF_TXN, source })?;
            let record = pb::TransactionRecord::decode(&*value)
                .map_err(|e| StorageError::corrupt(CF_TXN, &key, e))?;
            if record.state == pb::TransactionState::TransactionPending as i32
                && record.next_check_ms <= now_ms
            {
                due.push(record);
            }
        }
        Ok(due)
    }
}

#[cfg(test)]
mod tests {
    use raftmq_proto::raft::v1 as pb;

    use crate::test_support::*;

    fn half(id: &str) -> pb::StoredMessage {
        pb::StoredMessage {
            message_type: raftmq_proto::rocketmq::v2::MessageType::Transaction as i32,
            producer_client_id: "producer-1".into(),
            first_check_ms: 7_000,
            ..message("T", 0, id, 1_000)
        }
    }

    fn end(id: &str, commit: bool) -> pb::Command {
        pb::Command {
            kind: Some(pb::command::Kind::EndTransaction(pb::EndTransaction {
                topic: "T".into(),
                transaction_id: id.into(),
                commit,
            })),
        }
    }

    fn checked(id: &str, check_count: u32, now_ms: i64) -> pb::Command {
        pb::Command {
            kind: Some(pb::command::Kind::TransactionChecked(
                pb::TransactionChecked {
                    topic: "T".into(),
                    transaction_id: id.into(),
                    check_count,
                    now_ms,
                    check_interval_ms: 1_000,
                    max_checks: 2,
                },
            )),
        }
    }

    fn outcome(result: pb::CommandResult) -> (bool, pb::TransactionState) {
        match result.kind {
            Some(pb::command_result::Kind::Transaction(r)) => {
                (r.done, pb::TransactionState::try_from(r.state).unwrap())
            }
            other => panic!("expected a transaction result, got {other:?}"),
        }
    }

    #[test]
    fn given_half_messages_then_only_committed_ones_enter_the_queue_in_commit_order() {
        use pb::TransactionState::*;
        let mut fx = Fixture::new();
        fx.commit(append(vec![half("a"), half("b"), half("c")]));
        assert!(queue_ids(&fx).is_empty(), "half messages are invisible");
        assert_eq!(
            (true, TransactionCommitted),
            outcome(fx.commit(end("b", true)))
        );
        assert_eq!(
            (true, TransactionRolledBack),
            outcome(fx.commit(end("c", false)))
        );
        assert_eq!(
            (true, TransactionCommitted),
            outcome(fx.commit(end("a", true)))
        );
        assert_eq!(vec!["b", "a"], queue_ids(&fx));

        // Repeats get the same answer and change nothing; a contradiction is refused.
        assert_eq!(
            (true, TransactionCommitted),
            outcome(fx.commit(end("b", true)))
        );
        assert_eq!(
            (false, TransactionRolledBack),
            outcome(fx.commit(end("c", true)))
        );
        assert_eq!(
            (false, TransactionPending),
            outcome(fx.commit(end("zzz", true)))
        );
        assert_eq!(vec!["b", "a"], queue_ids(&fx));
    }

    #[test]
    fn given_an_unknown_outcome_then_checks_are_counted_and_the_last_one_rolls_back() {
        use pb::TransactionState::*;
        let mut fx = Fixture::new();
        fx.commit(append(vec![half("a")]));
        assert!(fx.state.transactions_due(6_999).unwrap().is_empty());
        let due = fx.state.transactions_due(7_000).unwrap();
        assert_eq!(
            vec!["producer-1"],
            due.iter()
                .map(|r| r.producer_client_id.as_str())
                .collect::<Vec<_>>()
        );

        assert_eq!(
            (true, TransactionPending),
            outcome(fx.commit(checked("a", 0, 7_000)))
        );
        assert_eq!(
            (false, TransactionPending),
            outcome(fx.commit(checked("a", 0, 7_001))),
            "the same check reported twice counts once"
        );
        assert!(fx.state.transactions_due(7_999).unwrap().is_empty());
        assert_eq!(
            (true, TransactionPending),
            outcome(fx.commit(checked("a", 1, 8_000)))
        );
        assert_eq!(
            (true, TransactionRolledBack),
            outcome(fx.commit(checked("a", 2, 9_000)))
        );
        assert!(fx.state.transactions_due(100_000).unwrap().is_empty());
        assert_eq!(
            (false, TransactionRolledBack),
            outcome(fx.commit(end("a", true)))
        );
        assert!(queue_ids(&fx).is_empty());
    }
}
