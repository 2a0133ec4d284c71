//! Delay messages: stored in the log at send time like any message, but entered into their
//! consume queue only when their delivery time comes.
//!
//! A delay message leaves a record in the `timer` column family keyed by (deliver time, log
//! index, slot). The leader proposes `FireTimers{now_ms}` when the earliest timer is due;
//! applying it moves every timer due at `now_ms` into its queue, in deliver-time order. The
//! timers are replicated state like everything else, so they fire after a failover too.

use prost::Message;
use raftmq_proto::raft::v1 as pb;
use rocksdb::{Direction, IteratorMode, WriteBatch};

use crate::db::CF_TIMER;
use crate::error::StorageError;
use crate::keys;
use crate::state::{BrokerState, Cache, PendingApply};

impl BrokerState {
    /// Record a delay message due at `deliver_at_ms`.
    pub(crate) fn schedule(
        &self,
        pending: &mut PendingApply,
        batch: &mut WriteBatch,
        deliver_at_ms: i64,
        message: &pb::StoredMessage,
        location: pb::QueueEntry,
    ) {
        let key = keys::timer_key(deliver_at_ms, location.log_index, location.slot);
        let timer = pb::TimerEntry {
            topic: message.topic.clone(),
            queue_id: message.queue_id,
            location: Some(location),
        };
        batch.put_cf(&self.db.cf(CF_TIMER), key, timer.encode_to_vec());
        pending.timers.insert(key, timer);
    }

    /// The deliver time of the earliest delay message still waiting, if any.
    pub fn next_timer_ms(&self) -> Result<Option<i64>, StorageError> {
        let handle = self.db.cf(CF_TIMER);
        let mut iter = self.db.inner.iterator_cf(&handle, IteratorMode::Start);
        match iter.next() {
            None => Ok(None),
            Some(Ok((key, _))) => Ok(keys::decode_timer_time(&key)),
            Some(Err(source)) => Err(StorageError::Read {
                cf: CF_TIMER,
                source,
            }),
        }
    }

    /// Timers due at `now_ms`, earliest first: those on disk not fired by this apply call,
    /// merged with those scheduled by it.
    fn due_timers(
        &self,
        pending: &PendingApply,
        now_ms: i64,
        max: usize,
    ) -> Result<Vec<([u8; 20], pb::TimerEntry)>, StorageError> {
        let handle = self.db.cf(CF_TIMER);
        let mut due: Vec<([u8; 20], pb::TimerEntry)> = Vec::new();
        let iter = self
            .db
            .inner
            .iterator_cf(&handle, IteratorMode::From(&[], Direction::Forward));
        for item in iter {
            let (key, value) = item.map_err(|source| StorageError::Read {
                cf: CF_TIMER,
                source,
            })?;
            if due.len() >= max || keys::decode_timer_time(&key).is_none_or(|t| t > now_ms) {
                break;
            }
            let key: [u8; 20] = (*key)
                .try_into()
                .map_err(|_| StorageError::corrupt(CF_TIMER, &key, "bad timer key"))?;
            if pending.fired_timers.contains(&key) {
                continue;
            }
            let timer = pb::TimerEntry::decode(&*value)
                .map_err(|e| StorageError::corrupt(CF_TIMER, &key, e))?;
            due.push((key, timer));
        }
        for (key, timer) in &pending.timers {
            if keys::decode_timer_time(key).is_none_or(|t| t > now_ms) {
                break;
            }
            due.push((*key, timer.clone()));
        }
        due.sort_by_key(|(key, _)| *key);
        due.truncate(max);
        Ok(due)
    }

    pub(crate) fn apply_fire_timers(
        &self,
        cache: &Cache,
        pending: &mut PendingApply,
        batch: &mut WriteBatch,
        fire: pb::FireTimers,
    ) -> Result<pb::TimersResult, StorageError> {
        let due = self.due_timers(pending, fire.now_ms, fire.max.max(1) as usize)?;
        let fired = due.len() as u32;
        for (key, timer) in due {
            let location = timer.location.unwrap_or_default();
            self.enqueue(
                cache,
                pending,
                batch,
                &timer.topic,
                timer.queue_id,
                location,
            );
            batch.delete_cf(&self.db.cf(CF_TIMER), key);
            pending.timers.remove(&key);
            pending.fired_timers.insert(key);
        }
        Ok(pb::TimersResult { fired })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use raftmq_proto::raft::v1 as pb;

    use crate::test_support::*;

    fn delayed(id: &str, store_ms: i64, deliver_ms: i64) -> pb::StoredMessage {
        pb::StoredMessage {
            delivery_timestamp_ms: Some(deliver_ms),
            body: Bytes::from(id.to_string()),
            ..message("T", 0, id, store_ms)
        }
    }

    fn fire(now_ms: i64) -> pb::Command {
        pb::Command {
            kind: Some(pb::command::Kind::FireTimers(pb::FireTimers {
                now_ms,
                max: 1024,
            })),
        }
    }

    #[test]
    fn given_delay_messages_then_each_enters_its_queue_when_due_in_time_order() {
        let mut fx = Fixture::new();
        let result = fx.commit(append(vec![
            delayed("late", 1_000, 9_000),
            message("T", 0, "now", 1_000),
            delayed("soon", 1_000, 5_000),
            delayed("past", 1_000, 500),
        ]));
        let Some(pb::command_result::Kind::Append(appended)) = result.kind else {
            panic!("append result expected");
        };
        let scheduled: Vec<bool> = appended.messages.iter().map(|m| m.scheduled).collect();
        assert_eq!(vec![true, false, true, false], scheduled);
        assert_eq!(vec!["now", "past"], queue_ids(&fx));
        assert_eq!(Some(5_000), fx.state.next_timer_ms().unwrap());

        fx.commit(fire(4_999));
        assert_eq!(vec!["now", "past"], queue_ids(&fx), "nothing is due yet");
        fx.commit(fire(10_000));
        assert_eq!(vec!["now", "past", "soon", "late"], queue_ids(&fx));
        assert_eq!(None, fx.state.next_timer_ms().unwrap());
        let delivered = fx.state.read_message("T", 0, 2).unwrap().unwrap();
        assert_eq!(Some(5_000), delivered.message.delivery_timestamp_ms);
    }

    #[test]
    fn given_a_timer_scheduled_and_fired_in_one_apply_call_then_it_enters_once() {
        let mut fx = Fixture::new();
        fx.commit_all(vec![
            append(vec![delayed("a", 1_000, 2_000)]),
            fire(3_000),
            fire(3_001),
            append(vec![delayed("b", 1_000, 2_500)]),
            fire(3_002),
        ]);
        assert_eq!(vec!["a", "b"], queue_ids(&fx));
        assert_eq!(None, fx.state.next_timer_ms().unwrap());
    }
}
