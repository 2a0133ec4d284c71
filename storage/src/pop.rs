//! POP-style consumption (RocketMQ 5's ReceiveMessage / AckMessage) as replicated state.
//!
//! For each (consumer group, topic, queue) the state machine keeps a [`pb::PopQueue`]: the
//! next offset never handed out (`cursor`) and the deliveries not yet acknowledged, each with
//! its attempt number, the time it becomes visible again, and its epoch (the log index of the
//! entry that delivered it, which makes every receipt handle unique). Pops, acks and
//! invisibility changes are Raft commands carrying the proposer's clock, so every replica
//! makes the same decisions and a failover neither loses an ack nor drops a delivery: at worst
//! a message is delivered again.
//!
//! A delivery that expires is handed out again with attempt + 1; once a message has been
//! delivered `max_delivery_attempts` times, its next expiry moves it to the group's
//! dead-letter topic `%DLQ%<group>`, whose consume queue points at the same log entry (the
//! message is never copied). A FIFO group gets nothing more from a queue while one of its
//! deliveries there is in flight, which keeps each message group's order.

use prost::Message;
use raftmq_proto::raft::v1 as pb;
use rocksdb::WriteBatch;

use crate::db::{CF_CQ, CF_META};
use crate::error::StorageError;
use crate::keys;
use crate::state::{BrokerState, Cache, PendingApply, PopKey, StoredRecord};

/// RocketMQ's default: 16 retries after the first delivery.
pub const DEFAULT_MAX_DELIVERY_ATTEMPTS: u32 = 17;
/// Most unacknowledged deliveries a group may hold on one queue; past it the queue only
/// redelivers until acknowledgements make room (and the state record stays small).
pub const MAX_IN_FLIGHT_PER_QUEUE: usize = 2048;

/// The dead-letter topic of a consumer group.
pub fn dead_letter_topic(group: &str) -> String {
    format!("%DLQ%{group}")
}

/// What a receive may find right now, judged from this node's applied state.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PopHint {
    /// Some queue has a message to hand out (new, or an expired delivery).
    pub ready: bool,
    /// The earliest time a delivery in flight becomes visible again.
    pub next_expiry_ms: Option<i64>,
}

impl BrokerState {
    pub fn group(&self, name: &str) -> Option<pb::GroupConfig> {
        self.cache
            .lock()
            .expect("state cache lock poisoned")
            .groups
            .get(name)
            .cloned()
    }

    pub fn groups(&self) -> Vec<pb::GroupConfig> {
        self.cache
            .lock()
            .expect("state cache lock poisoned")
            .groups
            .values()
            .cloned()
            .collect()
    }

    /// Whether `group` has consumed from `topic` with simple or push consumers (POP), whose
    /// progress lives in the `pop` column family, not in the group's offsets alone.
    pub fn has_pop_progress(&self, group: &str, topic: &str) -> bool {
        self.cache
            .lock()
            .expect("state cache lock poisoned")
            .pops
            .keys()
            .any(|(g, t, _)| g == group && t == topic)
    }

    /// Whether a pop for `group` on these queues would find something at `now_ms`.
    pub fn pop_hint(
        &self,
        group: &str,
        topic: &str,
        queue_ids: &[u32],
        now_ms: i64,
        start_at_end: bool,
    ) -> PopHint {
        let cache = self.cache.lock().expect("state cache lock poisoned");
        let fifo = cache.groups.get(group).is_some_and(|g| g.fifo);
        let mut hint = PopHint::default();
        for queue_id in queue_ids {
            let next = cache
                .queue_next
                .get(&(topic.to_string(), *queue_id))
                .copied()
                .unwrap_or(0);
            let key = (group.to_string(), topic.to_string(), *queue_id);
            let Some(pop) = cache.pops.get(&key) else {
                hint.ready |= !start_at_end && next > 0;
                continue;
            };
            for delivery in &pop.in_flight {
                if delivery.invisible_until_ms <= now_ms {
                    hint.ready = true;
                }
                hint.next_expiry_ms = Some(
                    hint.next_expiry_ms
                        .map_or(delivery.invisible_until_ms, |t| {
                            t.min(delivery.invisible_until_ms)
                        }),
                );
            }
            let blocked = (fifo && !pop.in_flight.is_empty())
                || pop.in_flight.len() >= MAX_IN_FLIGHT_PER_QUEUE;
            hint.ready |= !blocked && pop.cursor < next;
        }
        hint
    }

    /// One message of a queue, if it is (still) stored.
    pub fn read_message(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
    ) -> Result<Option<StoredRecord>, StorageError> {
        let mut records = self.read_queue(topic, queue_id, offset, 1, usize::MAX)?;
        Ok(records.pop().filter(|r| r.queue_offset == offset))
    }

    pub(crate) fn apply_create_group(
        &self,
        cache: &Cache,
        pending: &mut PendingApply,
        batch: &mut WriteBatch,
        create: pb::CreateGroup,
    ) -> pb::GroupResult {
        let existed =
            pending.groups.contains_key(&create.name) || cache.groups.contains_key(&create.name);
        let group = pb::GroupConfig {
            name: create.name.clone(),
            fifo: create.fifo,
            max_delivery_attempts: create.max_delivery_attempts,
            created_ms: create.created_ms,
        };
        batch.put_cf(
            &self.db.cf(CF_META),
            keys::group_key(&group.name),
            group.encode_to_vec(),
        );
        pending.groups.insert(group.name.clone(), group.clone());
        pb::GroupResult {
            group: Some(group),
            created: !existed,
        }
    }

    fn group_config(cache: &Cache, pending: &PendingApply, name: &str) -> (bool, u32) {
        let group = pending.groups.get(name).or_else(|| cache.groups.get(name));
        let fifo = group.is_some_and(|g| g.fifo);
        let attempts = group
            .map(|g| g.max_delivery_attempts)
            .filter(|n| *n > 0)
            .unwrap_or(DEFAULT_MAX_DELIVERY_ATTEMPTS);
        (fifo, attempts)
    }

    fn queue_next(cache: &Cache, pending: &PendingApply, topic: &str, queue_id: u32) -> u64 {
        let key = (topic.to_string(), queue_id);
        pending
            .queue_next
            .get(&key)
            .or_else(|| cache.queue_next.get(&key))
            .copied()
            .unwrap_or(0)
    }

    /// The state of a queue for a group, copied into the pending changes on first touch.
    fn pop_queue<'p>(
        cache: &Cache,
        pending: &'p mut PendingApply,
        key: PopKey,
        start: u64,
    ) -> &'p mut pb::PopQueue {
        let existing = cache.pops.get(&key).cloned();
        pending.pops.entry(key).or_insert_with(|| {
            existing.unwrap_or(pb::PopQueue {
                cursor: start,
                in_flight: Vec::new(),
            })
        })
    }

    /// A consume-queue entry, including those written earlier in this apply call.
    fn queue_entry(
        &self,
        pending: &PendingApply,
        topic: &str,
        queue_id: u32,
        offset: u64,
    ) -> Result<Option<pb::QueueEntry>, StorageError> {
        if let Some(entry) = pending.cq.get(&(topic.to_string(), queue_id, offset)) {
            return Ok(Some(entry.clone()));
        }
        let key = keys::cq_key(topic, queue_id, offset);
        match self.db.get(CF_CQ, &key)? {
            None => Ok(None),
            Some(bytes) => pb::QueueEntry::decode(&*bytes)
                .map(Some)
                .map_err(|e| StorageError::corrupt(CF_CQ, &key, e)),
        }
    }

    /// Append a pointer to the message at (topic, queue, offset) to the group's dead-letter
    /// topic, creating that topic (one queue) on first use.
    fn send_to_dead_letter(
        &self,
        cache: &Cache,
        pending: &mut PendingApply,
        batch: &mut WriteBatch,
        group: &str,
        origin: (&str, u32, u64),
    ) -> Result<(), StorageError> {
        let (topic, queue_id, offset) = origin;
        let Some(entry) = self.queue_entry(pending, topic, queue_id, offset)? else {
            // Already purged by retention: nothing left to keep.
            return Ok(());
        };
        let dlq = dead_letter_topic(group);
        if pending.topic(cache, &dlq).is_none() {
            let config = pb::TopicConfig {
                name: dlq.clone(),
                queues: 1,
                created_ms: entry.store_timestamp_ms,
                message_type: 0,
            };
            batch.put_cf(
                &self.db.cf(CF_META),
                keys::topic_key(&dlq),
                config.encode_to_vec(),
            );
            pending.topics.insert(dlq.clone(), config);
        }
        self.enqueue(cache, pending, batch, &dlq, 0, entry);
        Ok(())
    }

    pub(crate) fn apply_pop(
        &self,
        cache: &Cache,
        pending: &mut PendingApply,
        batch: &mut WriteBatch,
        log_index: u64,
        pop: pb::Pop,
    ) -> Result<pb::PopResult, StorageError> {
        let mut result = pb::PopResult {
            log_index,
            deliveries: Vec::new(),
        };
        let queues = match pending.topic(cache, &pop.topic) {
            Some(topic) => topic.queues,
            None => return Ok(result),
        };
        let (fifo, max_attempts) = Self::group_config(cache, pending, &pop.group);
        let max = pop.max_messages as usize;
        let invisible_until_ms = pop.now_ms.saturating_add(pop.invisible_ms);
        let mut seen = Vec::new();
        for &queue_id in &pop.queue_ids {
            if result.deliveries.len() >= max {
                break;
            }
            if queue_id >= queues || seen.contains(&queue_id) {
                continue;
            }
            seen.push(queue_id);
            let next = Self::queue_next(cache, pending, &pop.topic, queue_id);
            let start = if pop.start_at_end { next } else { 0 };
            let key = (pop.group.clone(), pop.topic.clone(), queue_id);

            // Expired deliveries first, in offset order: redeliver or dead-letter them.
            let mut dead = Vec::new();
            {
                let state = Self::pop_queue(cache, pending, key.clone(), start);
                state.in_flight.retain_mut(|delivery| {
                    if delivery.invisible_until_ms > pop.now_ms || result.deliveries.len() >= max {
                        return true;
                    }
                    if delivery.attempt >= max_attempts {
                        dead.push(delivery.offset);
                        return false;
                    }
                    delivery.attempt += 1;
                    delivery.epoch = log_index;
                    delivery.invisible_until_ms = invisible_until_ms;
                    result.deliveries.push(delivered(queue_id, delivery));
                    true
                });
            }
            for offset in dead {
                self.send_to_dead_letter(
                    cache,
                    pending,
                    batch,
                    &pop.group,
                    (&pop.topic, queue_id, offset),
                )?;
            }

            // Then new messages, unless the queue is held by a FIFO delivery or full.
            let mut cursor = Self::pop_queue(cache, pending, key.clone(), start).cursor;
            let mut taken = Vec::new();
            {
                let state = &pending.pops[&key];
                if (fifo && !state.in_flight.is_empty())
                    || state.in_flight.len() >= MAX_IN_FLIGHT_PER_QUEUE
                {
                    continue;
                }
            }
            let room = MAX_IN_FLIGHT_PER_QUEUE - pending.pops[&key].in_flight.len();
            while cursor < next && result.deliveries.len() + taken.len() < max && taken.len() < room
            {
                let offset = cursor;
                cursor += 1;
                let Some(entry) = self.queue_entry(pending, &pop.topic, queue_id, offset)? else {
                    continue; // purged by retention
                };
                if tag_matches(&pop.tags, entry.tag.as_deref()) {
                    taken.push(pb::InFlight {
                        offset,
                        epoch: log_index,
                        attempt: 1,
                        invisible_until_ms,
                    });
                }
            }
            let state = pending.pops.get_mut(&key).expect("inserted above");
            state.cursor = cursor;
            for delivery in taken {
                result.deliveries.push(delivered(queue_id, &delivery));
                state.in_flight.push(delivery);
            }
        }
        Ok(result)
    }

    /// Move the group's POP progress: each queue named starts over at its new cursor with
    /// nothing in flight, including queues the group never received from (a later receive
    /// would otherwise start those at the beginning or the end, not where the reset said).
    /// The group's consumer offsets follow, as for every change of a pop record.
    /// Queues the topic does not have (or a topic that does not exist) are left alone.
    pub(crate) fn apply_reset_pop(cache: &Cache, pending: &mut PendingApply, reset: &pb::ResetPop) {
        let queues = pending
            .topic(cache, &reset.topic)
            .map_or(0, |topic| topic.queues);
        for queue in reset.queues.iter().filter(|q| q.queue_id < queues) {
            pending.pops.insert(
                (reset.group.clone(), reset.topic.clone(), queue.queue_id),
                pb::PopQueue {
                    cursor: queue.cursor,
                    in_flight: Vec::new(),
                },
            );
        }
    }

    /// Find the delivery a receipt names.
    fn find_receipt<'p>(
        cache: &Cache,
        pending: &'p mut PendingApply,
        group: &str,
        topic: &str,
        receipt: &pb::Receipt,
    ) -> Found<'p> {
        let key = (group.to_string(), topic.to_string(), receipt.queue_id);
        if !pending.pops.contains_key(&key) && !cache.pops.contains_key(&key) {
            return Found::Stale;
        }
        let state = Self::pop_queue(cache, pending, key, 0);
        match state
            .in_flight
            .iter()
            .position(|d| d.offset == receipt.offset)
        {
            Some(position) if state.in_flight[position].epoch == receipt.epoch => {
                Found::InFlight(state, position)
            }
            Some(_) => Found::Stale,
            None if receipt.offset < state.cursor => Found::AlreadyAcked,
            None => Found::Stale,
        }
    }

    pub(crate) fn apply_ack(
        &self,
        cache: &Cache,
        pending: &mut PendingApply,
        ack: pb::Ack,
    ) -> pb::AckResult {
        let outcomes = ack
            .receipts
            .iter()
            .map(|receipt| {
                match Self::find_receipt(cache, pending, &ack.group, &ack.topic, receipt) {
                    Found::InFlight(state, position) => {
                        state.in_flight.remove(position);
                        pb::ReceiptOutcome::ReceiptDone
                    }
                    // A retried ack (its first reply lost in a failover) succeeds again.
                    Found::AlreadyAcked => pb::ReceiptOutcome::ReceiptDone,
                    Found::Stale => pb::ReceiptOutcome::ReceiptStale,
                }
            })
            .map(|o| o as i32)
            .collect();
        pb::AckResult { outcomes }
    }

    pub(crate) fn apply_renew(
        &self,
        cache: &Cache,
        pending: &mut PendingApply,
        renew: pb::Renew,
    ) -> pb::AckResult {
        let until = renew.now_ms.saturating_add(renew.invisible_ms);
        let outcomes = renew
            .receipts
            .iter()
            .map(|receipt| {
                match Self::find_receipt(cache, pending, &renew.group, &renew.topic, receipt) {
                    Found::InFlight(state, position) => {
                        let delivery = &mut state.in_flight[position];
                        delivery.invisible_until_ms = delivery.invisible_until_ms.max(until);
                        pb::ReceiptOutcome::ReceiptDone
                    }
                    Found::AlreadyAcked | Found::Stale => pb::ReceiptOutcome::ReceiptStale,
                }
            })
            .map(|o| o as i32)
            .collect();
        pb::AckResult { outcomes }
    }

    pub(crate) fn apply_change_invisible(
        &self,
        cache: &Cache,
        pending: &mut PendingApply,
        log_index: u64,
        change: pb::ChangeInvisible,
    ) -> pb::ReceiptResult {
        let receipt = change.receipt.unwrap_or_default();
        match Self::find_receipt(cache, pending, &change.group, &change.topic, &receipt) {
            Found::InFlight(state, position) => {
                let delivery = &mut state.in_flight[position];
                delivery.epoch = log_index;
                delivery.invisible_until_ms = change.now_ms.saturating_add(change.invisible_ms);
                pb::ReceiptResult {
                    outcome: pb::ReceiptOutcome::ReceiptDone as i32,
                    receipt: Some(pb::Receipt {
                        queue_id: receipt.queue_id,
                        offset: receipt.offset,
                        epoch: log_index,
                    }),
                }
            }
            Found::AlreadyAcked | Found::Stale => stale(),
        }
    }

    pub(crate) fn apply_dead_letter(
        &self,
        cache: &Cache,
        pending: &mut PendingApply,
        batch: &mut WriteBatch,
        dead: pb::DeadLetter,
    ) -> Result<pb::ReceiptResult, StorageError> {
        let receipt = dead.receipt.unwrap_or_default();
        match Self::find_receipt(cache, pending, &dead.group, &dead.topic, &receipt) {
            Found::InFlight(state, position) => {
                state.in_flight.remove(position);
                self.send_to_dead_letter(
                    cache,
                    pending,
                    batch,
                    &dead.group,
                    (&dead.topic, receipt.queue_id, receipt.offset),
                )?;
                Ok(pb::ReceiptResult {
                    outcome: pb::ReceiptOutcome::ReceiptDone as i32,
                    receipt: Some(receipt),
                })
            }
            Found::AlreadyAcked | Found::Stale => Ok(stale()),
        }
    }
}

enum Found<'p> {
    InFlight(&'p mut pb::PopQueue, usize),
    AlreadyAcked,
    Stale,
}

fn stale() -> pb::ReceiptResult {
    pb::ReceiptResult {
        outcome: pb::ReceiptOutcome::ReceiptStale as i32,
        receipt: None,
    }
}

fn delivered(queue_id: u32, delivery: &pb::InFlight) -> pb::Delivery {
    pb::Delivery {
        receipt: Some(pb::Receipt {
            queue_id,
            offset: delivery.offset,
            epoch: delivery.epoch,
        }),
        attempt: delivery.attempt,
        invisible_until_ms: delivery.invisible_until_ms,
    }
}

/// RocketMQ tag filtering: no tags means everything; otherwise the message's tag must be one
/// of them (an untagged message matches only "everything").
fn tag_matches(tags: &[String], tag: Option<&str>) -> bool {
    tags.is_empty() || tag.is_some_and(|tag| tags.iter().any(|t| t == tag))
}

#[cfg(test)]
#[path = "pop_test.rs"]
mod tests;
