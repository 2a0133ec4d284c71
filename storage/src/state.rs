//! The broker state derived from the applied log: topics, consume queues, consumer offsets and
//! the message-id dedup index.
//!
//! Every apply call writes all of its derived records *and* the applied log id in one
//! `WriteBatch`, so after a crash the state is exactly "everything up to the applied log id"
//! and openraft re-applies the rest from the (durable) log. Queue offsets are assigned here, in
//! log order, so every replica holds byte-identical queues.

use std::collections::BTreeMap;
use std::sync::Mutex;

// Faster than std's SipHash, and seeded at random for each map, so no set of keys collides in
// every node (foldhash's "minimal" DoS resistance, not a keyed hash): the maps keyed by what
// clients choose (message ids) hold one apply call's keys and are dropped with it.
use foldhash::{HashMap, HashSet};
use prost::Message;
use raftmq_proto::raft::v1 as pb;
use raftmq_proto::rocketmq::v2;
use rocksdb::{Direction, IteratorMode, WriteBatch};
use tokio::sync::watch;

use crate::db::{CF_CQ, CF_INDEX, CF_META, CF_OFFSETS, CF_POP, Db, STATE_CFS};
use crate::error::StorageError;
use crate::keys;
use crate::log::read_entry;

/// How long a message id is remembered: a retry with the same id within this window returns
/// the first write's result instead of storing a second copy. Cluster-wide: every replica must
/// use the same value, since it decides what apply writes.
pub const DEDUP_WINDOW_MS: i64 = 15 * 60 * 1000;

/// The dedup index keeps ids in buckets of this much store time, and keeps only the newest
/// bucket the log has reached and the one before it: an id is remembered for one to two
/// bucket spans, then dropped with its whole bucket. Four windows wide, so that a send looks in
/// the bucket before its own only in the first quarter of a bucket. Cluster-wide, like the
/// window.
pub const DEDUP_BUCKET_MS: i64 = 4 * DEDUP_WINDOW_MS;

/// The dedup bucket of a store time.
fn dedup_bucket(time_ms: i64) -> u64 {
    (time_ms.max(0) / DEDUP_BUCKET_MS) as u64
}

/// What one applied log entry carries.
#[derive(Debug)]
pub enum ApplyItem {
    Blank,
    Membership(pb::Membership),
    /// Shared with the log's cache and the replication streams; applied by reference.
    Command(std::sync::Arc<pb::Command>),
}

/// The highest `Command.kind` field number this version applies. Raise it with every new
/// kind: nodes report it in their status, and a command of a new kind is only proposed once
/// every member applies it (an older replica stops at an entry it does not know).
pub const HIGHEST_COMMAND_KIND: u32 = 13;

/// A message read back from a queue.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub queue_offset: u64,
    pub log_index: u64,
    pub message: pb::StoredMessage,
}

/// How far a consumer group has come in one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueProgress {
    pub topic: String,
    pub queue_id: u32,
    /// The committed offset: every message below it is consumed. None: the group has
    /// committed nothing in this queue (yet has in another queue of the topic).
    pub committed: Option<u64>,
    /// The queue's next offset, one past its newest message.
    pub max_offset: u64,
}

impl QueueProgress {
    /// Messages not consumed yet (all of the queue's without a committed offset).
    pub fn lag(&self) -> u64 {
        self.max_offset.saturating_sub(self.committed.unwrap_or(0))
    }
}

/// A snapshot of the derived state.
#[derive(Debug, Clone)]
pub struct StateExport {
    pub data: Vec<u8>,
    pub applied: Option<pb::LogId>,
    pub membership: Option<pb::StoredMembership>,
}

/// A raw RocksDB record.
pub(crate) type KeyValue = (Vec<u8>, Vec<u8>);

/// Where apply looks for an appended message's earlier copy, and records the message.
///
/// Every message is recorded in the newest bucket the log has reached (the largest bucket of
/// any store time applied so far, kept in `meta`), and looked up in that bucket and, when its
/// window reaches back into it, the bucket before; older buckets are deleted. All of it
/// follows from the log alone, so every replica decides the same, however its apply calls
/// split the log.
#[derive(Debug)]
pub(crate) struct IdLookup {
    /// The newest bucket, once this message is applied.
    pub(crate) bucket: u64,
    /// The message's key in `bucket` and what the index held there before the apply call.
    pub(crate) newest: (Vec<u8>, Option<pb::DedupEntry>),
    /// The same in the bucket before, when the message's window reaches into it.
    pub(crate) older: Option<(Vec<u8>, Option<pb::DedupEntry>)>,
    /// The record a build before buckets kept, on a node that holds such records. Such a
    /// record is older than any bucketed one of the same id. Looking it up last makes this
    /// build decide as the earlier one did, so replicas on both builds agree during a
    /// rolling upgrade. Nothing deletes these records: no more are written.
    pub(crate) old: Option<(Vec<u8>, Option<pb::DedupEntry>)>,
}

/// (consumer group, topic, queue id)
pub(crate) type PopKey = (String, String, u32);

/// In-memory copies of small, hot records, rebuilt from `meta` and `pop` at open.
#[derive(Default)]
pub(crate) struct Cache {
    pub(crate) topics: BTreeMap<String, pb::TopicConfig>,
    pub(crate) queue_next: HashMap<(String, u32), u64>,
    pub(crate) groups: BTreeMap<String, pb::GroupConfig>,
    pub(crate) pops: HashMap<PopKey, pb::PopQueue>,
    /// The newest dedup bucket the applied log has reached.
    pub(crate) dedup_bucket: u64,
    /// Whether the dedup index holds records of a build before buckets.
    pub(crate) old_dedup_records: bool,
}

pub struct BrokerState {
    pub(crate) db: Db,
    pub(crate) cache: Mutex<Cache>,
    applied_tx: watch::Sender<u64>,
}

impl BrokerState {
    pub fn open(db: Db) -> Result<BrokerState, StorageError> {
        let state = BrokerState {
            db,
            cache: Mutex::new(Cache::default()),
            applied_tx: watch::channel(0).0,
        };
        state.reload_cache()?;
        if let Some(applied) = state.applied_log_id()? {
            state.applied_tx.send_replace(applied.index);
        }
        Ok(state)
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    fn reload_cache(&self) -> Result<(), StorageError> {
        let mut cache = Cache::default();
        for (key, value) in self.scan_prefix(CF_META, keys::TOPIC_PREFIX)? {
            let topic = pb::TopicConfig::decode(&*value)
                .map_err(|e| StorageError::corrupt(CF_META, &key, e))?;
            cache.topics.insert(topic.name.clone(), topic);
        }
        for (key, value) in self.scan_prefix(CF_META, keys::QUEUE_NEXT_PREFIX)? {
            let rest = &key[keys::QUEUE_NEXT_PREFIX.len()..];
            let split = rest.iter().position(|b| *b == 0);
            let (Some(split), Ok(next)) = (split, <[u8; 8]>::try_from(&*value)) else {
                return Err(StorageError::corrupt(
                    CF_META,
                    &key,
                    "bad queue next-offset record",
                ));
            };
            let topic = String::from_utf8_lossy(&rest[..split]).into_owned();
            let queue_bytes: [u8; 4] = rest[split + 1..]
                .try_into()
                .map_err(|_| StorageError::corrupt(CF_META, &key, "bad queue id"))?;
            cache.queue_next.insert(
                (topic, u32::from_be_bytes(queue_bytes)),
                u64::from_be_bytes(next),
            );
        }
        for (key, value) in self.scan_prefix(CF_META, keys::GROUP_PREFIX)? {
            let group = pb::GroupConfig::decode(&*value)
                .map_err(|e| StorageError::corrupt(CF_META, &key, e))?;
            cache.groups.insert(group.name.clone(), group);
        }
        for (key, value) in self.scan_prefix(CF_POP, b"")? {
            let pop_key = keys::decode_pop_key(&key)
                .ok_or_else(|| StorageError::corrupt(CF_POP, &key, "bad pop key"))?;
            let queue = pb::PopQueue::decode(&*value)
                .map_err(|e| StorageError::corrupt(CF_POP, &key, e))?;
            cache.pops.insert(pop_key, queue);
        }
        if let Some(value) = self.db.get(CF_META, keys::DEDUP_BUCKET_KEY)? {
            let bytes = <[u8; 8]>::try_from(&*value).map_err(|_| {
                StorageError::corrupt(CF_META, keys::DEDUP_BUCKET_KEY, "bad dedup bucket")
            })?;
            cache.dedup_bucket = u64::from_be_bytes(bytes);
        }
        cache.old_dedup_records = self.scan_first(CF_INDEX, keys::OLD_DEDUP_PREFIX)?.is_some();
        *self.cache.lock().expect("state cache lock poisoned") = cache;
        Ok(())
    }

    pub(crate) fn scan_prefix(
        &self,
        cf: &'static str,
        prefix: &[u8],
    ) -> Result<Vec<KeyValue>, StorageError> {
        let handle = self.db.cf(cf);
        let iter = self
            .db
            .inner
            .iterator_cf(&handle, IteratorMode::From(prefix, Direction::Forward));
        let mut out = Vec::new();
        for item in iter {
            let (key, value) = item.map_err(|source| StorageError::Read { cf, source })?;
            if !key.starts_with(prefix) {
                break;
            }
            out.push((key.to_vec(), value.to_vec()));
        }
        Ok(out)
    }

    pub fn applied_log_id(&self) -> Result<Option<pb::LogId>, StorageError> {
        self.get_meta(keys::APPLIED_KEY)
    }

    pub fn applied_membership(&self) -> Result<Option<pb::StoredMembership>, StorageError> {
        self.get_meta(keys::MEMBERSHIP_KEY)
    }

    fn get_meta<M: Message + Default>(&self, key: &[u8]) -> Result<Option<M>, StorageError> {
        match self.db.get(CF_META, key)? {
            None => Ok(None),
            Some(bytes) => M::decode(&*bytes)
                .map(Some)
                .map_err(|e| StorageError::corrupt(CF_META, key, e)),
        }
    }

    /// The index of the last entry applied.
    pub fn applied_index(&self) -> u64 {
        *self.applied_tx.borrow()
    }

    /// Watch the applied index: long polls wake when it moves.
    pub fn subscribe_applied(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    /// Apply entries in log order. Returns one result per item (`None` for blank and
    /// membership entries). All effects and the last log id land in one atomic write.
    pub fn apply(
        &self,
        items: Vec<(pb::LogId, ApplyItem)>,
    ) -> Result<Vec<Option<pb::CommandResult>>, StorageError> {
        let Some(last_log_id) = items.last().map(|(id, _)| *id) else {
            return Ok(Vec::new());
        };
        let (start_bucket, old_dedup_records) = {
            let cache = self.cache.lock().expect("state cache lock poisoned");
            (cache.dedup_bucket, cache.old_dedup_records)
        };
        let mut pending = PendingApply {
            id_lookups: self
                .look_up_message_ids(start_bucket, old_dedup_records, &items)?
                .into_iter(),
            dedup_bucket: start_bucket,
            ..PendingApply::default()
        };
        let mut batch = WriteBatch::default();
        let mut results = Vec::with_capacity(items.len());
        {
            let cache = self.cache.lock().expect("state cache lock poisoned");
            for (log_id, item) in items {
                let result = match item {
                    ApplyItem::Blank => None,
                    ApplyItem::Membership(membership) => {
                        let stored = pb::StoredMembership {
                            log_id: Some(log_id),
                            membership: Some(membership),
                        };
                        batch.put_cf(
                            &self.db.cf(CF_META),
                            keys::MEMBERSHIP_KEY,
                            stored.encode_to_vec(),
                        );
                        None
                    }
                    ApplyItem::Command(command) => Some(self.apply_command(
                        &cache,
                        &mut pending,
                        &mut batch,
                        log_id.index,
                        &command,
                    )?),
                };
                results.push(result);
            }
            // A receive that found nothing touches a queue's state without changing it:
            // rewriting it would only cost write bandwidth.
            pending
                .pops
                .retain(|key, pop| cache.pops.get(key) != Some(pop));
        }
        for ((topic, queue), next) in &pending.queue_next {
            batch.put_cf(
                &self.db.cf(CF_META),
                keys::queue_next_key(topic, *queue),
                next.to_be_bytes(),
            );
        }
        for ((group, topic, queue), pop) in &pending.pops {
            batch.put_cf(
                &self.db.cf(CF_POP),
                keys::pop_key(group, topic, *queue),
                pop.encode_to_vec(),
            );
            // The group's consumer offset: everything below it has been acknowledged.
            let committed = pop
                .in_flight
                .first()
                .map_or(pop.cursor, |f| f.offset.min(pop.cursor));
            batch.put_cf(
                &self.db.cf(CF_OFFSETS),
                keys::offset_key(group, topic, *queue),
                keys::encode_offset_record(committed, last_log_id.index),
            );
        }
        if pending.dedup_bucket != start_bucket {
            batch.put_cf(
                &self.db.cf(CF_META),
                keys::DEDUP_BUCKET_KEY,
                pending.dedup_bucket.to_be_bytes(),
            );
        }
        batch.put_cf(
            &self.db.cf(CF_META),
            keys::APPLIED_KEY,
            last_log_id.encode_to_vec(),
        );
        self.db.write(CF_META, batch)?;
        {
            let mut cache = self.cache.lock().expect("state cache lock poisoned");
            cache.dedup_bucket = pending.dedup_bucket;
            cache.queue_next.extend(pending.queue_next);
            cache.topics.extend(pending.topics);
            cache.groups.extend(pending.groups);
            cache.pops.extend(pending.pops);
        }
        self.applied_tx.send_replace(last_log_id.index);
        Ok(results)
    }

    /// Where each message the items append is looked up and recorded in the dedup index
    /// (see `IdLookup`), with what the index held there before this call, in the order
    /// `apply_append` meets them: one batched read instead of a lookup per message (those
    /// lookups were a tenth of a follower's CPU under load).
    fn look_up_message_ids(
        &self,
        start_bucket: u64,
        old_dedup_records: bool,
        items: &[(pb::LogId, ApplyItem)],
    ) -> Result<Vec<IdLookup>, StorageError> {
        use pb::command::Kind;
        let messages = items
            .iter()
            .filter_map(|(_, item)| match item {
                ApplyItem::Command(command) => match &command.kind {
                    Some(Kind::Append(append)) => Some(append),
                    _ => None,
                },
                _ => None,
            })
            .flat_map(|append| &append.messages);
        // Per message: its newest bucket, and whether the bucket before is searched too.
        let mut places = Vec::new();
        let mut keys = Vec::new();
        let mut bucket = start_bucket;
        for message in messages {
            let time = message.store_timestamp_ms;
            bucket = bucket.max(dedup_bucket(time));
            keys.push(keys::dedup_key(bucket, &message.topic, &message.message_id));
            let window_start = dedup_bucket(time.saturating_sub(DEDUP_WINDOW_MS));
            let search_older = window_start < bucket && bucket > 0;
            if search_older {
                keys.push(keys::dedup_key(
                    bucket - 1,
                    &message.topic,
                    &message.message_id,
                ));
            }
            if old_dedup_records {
                keys.push(keys::old_dedup_key(&message.topic, &message.message_id));
            }
            places.push((bucket, search_older));
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values = self.db.multi_get(CF_INDEX, &keys)?;
        let mut found = keys.into_iter().zip(values).map(|(key, value)| {
            let entry = value
                .map(|bytes| pb::DedupEntry::decode(&*bytes))
                .transpose()
                .map_err(|e| StorageError::corrupt(CF_INDEX, &key, e))?;
            Ok((key, entry))
        });
        let mut next = || found.next().expect("one lookup per key");
        places
            .into_iter()
            .map(|(bucket, search_older)| {
                Ok(IdLookup {
                    bucket,
                    newest: next()?,
                    older: if search_older { Some(next()?) } else { None },
                    old: if old_dedup_records {
                        Some(next()?)
                    } else {
                        None
                    },
                })
            })
            .collect()
    }

    pub(crate) fn apply_command(
        &self,
        cache: &Cache,
        pending: &mut PendingApply,
        batch: &mut WriteBatch,
        log_index: u64,
        command: &pb::Command,
    ) -> Result<pb::CommandResult, StorageError> {
        use pb::command::Kind;
        use pb::command_result::Kind as ResultKind;
        let kind = match &command.kind {
            Some(Kind::Append(append)) => {
                ResultKind::Append(self.apply_append(cache, pending, batch, log_index, append)?)
            }
            Some(Kind::CreateTopic(create)) => match pending.topic(cache, &create.name) {
                Some(topic) => ResultKind::Topic(pb::TopicResult {
                    topic: Some(topic.clone()),
                    created: false,
                }),
                None => {
                    let topic = pb::TopicConfig {
                        name: create.name.clone(),
                        queues: create.queues.max(1),
                        created_ms: create.created_ms,
                        message_type: create.message_type,
                    };
                    batch.put_cf(
                        &self.db.cf(CF_META),
                        keys::topic_key(&topic.name),
                        topic.encode_to_vec(),
                    );
                    pending.topics.insert(topic.name.clone(), topic.clone());
                    ResultKind::Topic(pb::TopicResult {
                        topic: Some(topic),
                        created: true,
                    })
                }
            },
            Some(Kind::CommitOffset(commit)) => {
                ResultKind::Offset(self.apply_commit_offset(pending, batch, log_index, commit)?)
            }
            Some(Kind::CreateGroup(create)) => {
                ResultKind::Group(self.apply_create_group(cache, pending, batch, create.clone()))
            }
            Some(Kind::Pop(pop)) => {
                ResultKind::Pop(self.apply_pop(cache, pending, batch, log_index, pop.clone())?)
            }
            Some(Kind::Ack(ack)) => ResultKind::Ack(self.apply_ack(cache, pending, ack.clone())),
            Some(Kind::Renew(renew)) => {
                ResultKind::Ack(self.apply_renew(cache, pending, renew.clone()))
            }
            Some(Kind::ResetPop(reset)) => {
                Self::apply_reset_pop(cache, pending, reset);
                ResultKind::Offset(pb::OffsetResult { changed_at: None })
            }
            Some(Kind::ChangeInvisible(change)) => ResultKind::Receipt(
                self.apply_change_invisible(cache, pending, log_index, change.clone()),
            ),
            Some(Kind::DeadLetter(dead)) => {
                ResultKind::Receipt(self.apply_dead_letter(cache, pending, batch, dead.clone())?)
            }
            Some(Kind::FireTimers(fire)) => {
                ResultKind::Timers(self.apply_fire_timers(cache, pending, batch, *fire)?)
            }
            Some(Kind::EndTransaction(end)) => ResultKind::Transaction(
                self.apply_end_transaction(cache, pending, batch, end.clone())?,
            ),
            Some(Kind::TransactionChecked(checked)) => ResultKind::Transaction(
                self.apply_transaction_checked(pending, batch, checked.clone())?,
            ),
            // An entry from a newer version this node does not understand: applying it as a
            // no-op would diverge from upgraded replicas, so refuse loudly.
            None => {
                return Err(StorageError::corrupt(
                    CF_META,
                    &keys::log_key(log_index),
                    "command of unknown kind",
                ));
            }
        };
        Ok(pb::CommandResult { kind: Some(kind) })
    }

    fn apply_append(
        &self,
        cache: &Cache,
        pending: &mut PendingApply,
        batch: &mut WriteBatch,
        log_index: u64,
        append: &pb::AppendMessages,
    ) -> Result<pb::AppendResult, StorageError> {
        let mut appended = Vec::with_capacity(append.messages.len());
        let index_cf = self.db.cf(CF_INDEX);
        for (slot, message) in append.messages.iter().enumerate() {
            let lookup = pending
                .id_lookups
                .next()
                .expect("`apply` looks up every appended message's id before applying");
            debug_assert_eq!(
                lookup.newest.0,
                keys::dedup_key(lookup.bucket, &message.topic, &message.message_id)
            );
            if lookup.bucket > pending.dedup_bucket {
                // The log reached a new bucket: ids two buckets back have left the window of
                // every message still to come.
                batch.delete_range_cf(
                    &index_cf,
                    keys::DEDUP_PREFIX,
                    keys::dedup_bucket_start(lookup.bucket - 1).as_slice(),
                );
                pending.dedup_bucket = lookup.bucket;
            }
            // Newest first; a retry within this same call is found among its own writes.
            let previous = std::iter::once(&lookup.newest)
                .chain(&lookup.older)
                .chain(&lookup.old)
                .find_map(|(key, stored)| pending.dedup.get(key).copied().or(*stored));
            if let Some(first) = previous
                && message.store_timestamp_ms - first.store_timestamp_ms <= DEDUP_WINDOW_MS
            {
                appended.push(pb::AppendedMessage {
                    queue_id: first.queue_id,
                    queue_offset: first.queue_offset,
                    duplicate: true,
                    store_timestamp_ms: first.store_timestamp_ms,
                    scheduled: false,
                });
                continue;
            }
            let location = pb::QueueEntry {
                log_index,
                slot: slot as u32,
                store_timestamp_ms: message.store_timestamp_ms,
                tag: message.tag.clone(),
            };
            // Half and delay messages join their queue later (at commit, or when due; see
            // `txn.rs` and `timer.rs`), and only then get a queue offset.
            let offset = if message.message_type == v2::MessageType::Transaction as i32 {
                self.hold_transaction(pending, batch, message, location);
                None
            } else if let Some(deliver_at) = message.delivery_timestamp_ms
                && deliver_at > message.store_timestamp_ms
            {
                self.schedule(pending, batch, deliver_at, message, location);
                None
            } else {
                Some(self.enqueue(
                    cache,
                    pending,
                    batch,
                    &message.topic,
                    message.queue_id,
                    location,
                ))
            };
            let dedup = pb::DedupEntry {
                queue_id: message.queue_id,
                queue_offset: offset.unwrap_or(0),
                store_timestamp_ms: message.store_timestamp_ms,
            };
            let (dedup_key, _) = lookup.newest;
            batch.put_cf(&index_cf, &dedup_key, dedup.encode_to_vec());
            pending.dedup.insert(dedup_key, dedup);
            appended.push(pb::AppendedMessage {
                queue_id: message.queue_id,
                queue_offset: offset.unwrap_or(0),
                duplicate: false,
                store_timestamp_ms: message.store_timestamp_ms,
                scheduled: offset.is_none(),
            });
        }
        Ok(pb::AppendResult { messages: appended })
    }

    /// Append a consume-queue entry at the queue's next offset; returns that offset.
    pub(crate) fn enqueue(
        &self,
        cache: &Cache,
        pending: &mut PendingApply,
        batch: &mut WriteBatch,
        topic: &str,
        queue_id: u32,
        location: pb::QueueEntry,
    ) -> u64 {
        let queue = (topic.to_string(), queue_id);
        let next = pending
            .queue_next
            .get(&queue)
            .or_else(|| cache.queue_next.get(&queue))
            .copied()
            .unwrap_or(0);
        batch.put_cf(
            &self.db.cf(CF_CQ),
            keys::cq_key(topic, queue_id, next),
            location.encode_to_vec(),
        );
        pending
            .cq
            .insert((topic.to_string(), queue_id, next), location);
        pending.queue_next.insert(queue, next + 1);
        next
    }

    pub fn topic(&self, name: &str) -> Option<pb::TopicConfig> {
        self.cache
            .lock()
            .expect("state cache lock poisoned")
            .topics
            .get(name)
            .cloned()
    }

    pub fn topics(&self) -> Vec<pb::TopicConfig> {
        self.cache
            .lock()
            .expect("state cache lock poisoned")
            .topics
            .values()
            .cloned()
            .collect()
    }

    /// The next offset of a queue: the number of messages it ever held.
    pub fn queue_next_offset(&self, topic: &str, queue_id: u32) -> u64 {
        self.cache
            .lock()
            .expect("state cache lock poisoned")
            .queue_next
            .get(&(topic.to_string(), queue_id))
            .copied()
            .unwrap_or(0)
    }

    /// The lowest offset still stored in a queue (equal to the next offset when it is empty).
    pub fn queue_min_offset(&self, topic: &str, queue_id: u32) -> Result<u64, StorageError> {
        let prefix = keys::cq_prefix(topic, queue_id);
        let first = self.scan_first(CF_CQ, &prefix)?;
        Ok(match first.and_then(|key| keys::decode_cq_offset(&key)) {
            Some(offset) => offset,
            None => self.queue_next_offset(topic, queue_id),
        })
    }

    /// The first offset of a queue whose message was stored at or after `timestamp_ms`
    /// (the next offset if there is none): a binary search over the consume queue.
    pub fn queue_offset_at_time(
        &self,
        topic: &str,
        queue_id: u32,
        timestamp_ms: i64,
    ) -> Result<u64, StorageError> {
        let (mut low, mut high) = (
            self.queue_min_offset(topic, queue_id)?,
            self.queue_next_offset(topic, queue_id),
        );
        while low < high {
            let middle = low + (high - low) / 2;
            let key = keys::cq_key(topic, queue_id, middle);
            let stored_ms = match self.db.get(CF_CQ, &key)? {
                Some(bytes) => {
                    pb::QueueEntry::decode(&*bytes)
                        .map_err(|e| StorageError::corrupt(CF_CQ, &key, e))?
                        .store_timestamp_ms
                }
                // Purged below us meanwhile: everything older is gone, search above.
                None => i64::MIN,
            };
            if stored_ms < timestamp_ms {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        Ok(low)
    }

    fn scan_first(&self, cf: &'static str, prefix: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let handle = self.db.cf(cf);
        let mut iter = self
            .db
            .inner
            .iterator_cf(&handle, IteratorMode::From(prefix, Direction::Forward));
        match iter.next() {
            Some(Ok((key, _))) if key.starts_with(prefix) => Ok(Some(key.to_vec())),
            Some(Err(source)) => Err(StorageError::Read { cf, source }),
            _ => Ok(None),
        }
    }

    /// Read up to `max_count` messages (and roughly `max_bytes` of bodies, at least one
    /// message) of a queue, starting at `from`. Only applied, hence committed, messages exist
    /// in the consume queue, so nothing uncommitted can be returned.
    pub fn read_queue(
        &self,
        topic: &str,
        queue_id: u32,
        from: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>, StorageError> {
        let prefix = keys::cq_prefix(topic, queue_id);
        let start = keys::cq_key(topic, queue_id, from);
        let handle = self.db.cf(CF_CQ);
        let iter = self
            .db
            .inner
            .iterator_cf(&handle, IteratorMode::From(&start, Direction::Forward));
        let mut records = Vec::new();
        let mut bytes = 0usize;
        // Messages of one batch share an entry: decode it once.
        let mut current: Option<(u64, pb::AppendMessages)> = None;
        for item in iter {
            if records.len() >= max_count || (bytes >= max_bytes && !records.is_empty()) {
                break;
            }
            let (key, value) = item.map_err(|source| StorageError::Read { cf: CF_CQ, source })?;
            if !key.starts_with(&prefix) {
                break;
            }
            let offset = keys::decode_cq_offset(&key)
                .ok_or_else(|| StorageError::corrupt(CF_CQ, &key, "bad key"))?;
            let location = pb::QueueEntry::decode(&*value)
                .map_err(|e| StorageError::corrupt(CF_CQ, &key, e))?;
            if current.as_ref().map(|(index, _)| *index) != Some(location.log_index) {
                current = Some((location.log_index, self.read_append(location.log_index)?));
            }
            let (_, append) = current.as_ref().expect("set just above");
            let message = append
                .messages
                .get(location.slot as usize)
                .cloned()
                .ok_or_else(|| {
                    StorageError::corrupt(CF_CQ, &key, "consume-queue entry points past its batch")
                })?;
            bytes += message.body.len();
            records.push(StoredRecord {
                queue_offset: offset,
                log_index: location.log_index,
                message,
            });
        }
        Ok(records)
    }

    /// The message a consume-queue or transaction record points at.
    pub fn read_location(
        &self,
        location: &pb::QueueEntry,
    ) -> Result<Option<pb::StoredMessage>, StorageError> {
        let mut append = self.read_append(location.log_index)?;
        let slot = location.slot as usize;
        Ok((slot < append.messages.len()).then(|| append.messages.swap_remove(slot)))
    }

    fn read_append(&self, log_index: u64) -> Result<pb::AppendMessages, StorageError> {
        let key = keys::log_key(log_index);
        let entry = read_entry(&self.db, log_index)?.ok_or_else(|| {
            StorageError::corrupt(CF_CQ, &key, "consume queue points to a missing log entry")
        })?;
        match entry.payload {
            Some(pb::entry::Payload::Command(pb::Command {
                kind: Some(pb::command::Kind::Append(append)),
            })) => Ok(append),
            _ => Err(StorageError::corrupt(
                CF_CQ,
                &key,
                "consume queue points to an entry without messages",
            )),
        }
    }

    pub fn consumer_offset(
        &self,
        group: &str,
        topic: &str,
        queue_id: u32,
    ) -> Result<Option<u64>, StorageError> {
        let key = keys::offset_key(group, topic, queue_id);
        Ok(self.offset_record(&key)?.map(|(offset, _)| offset))
    }

    /// How far `group` has consumed, as last applied: every queue of each topic it has
    /// committed an offset in, by topic and queue. POP consumers' progress is among them
    /// (see `apply`). Empty when the group has committed nothing.
    pub fn group_progress(&self, group: &str) -> Result<Vec<QueueProgress>, StorageError> {
        let mut prefix = group.as_bytes().to_vec();
        prefix.push(0);
        let offsets = self.committed_offsets(&prefix)?;
        Ok(self.progress_of(
            offsets
                .into_iter()
                .map(|(_, topic, queue, offset)| ((topic, queue), offset))
                .collect(),
        ))
    }

    /// Add to a group's `progress` every queue of each topic in `read` that the group has
    /// committed nothing in: its consumers read the topic, so each of those queues lags by all
    /// its messages. Topics that do not exist add nothing.
    pub fn add_topics_read<'a>(
        &self,
        progress: &mut Vec<QueueProgress>,
        read: impl IntoIterator<Item = &'a str>,
    ) {
        for topic in read {
            if progress.iter().any(|q| q.topic == topic) {
                continue;
            }
            let queues = self.topic(topic).map_or(0, |t| t.queues);
            progress.extend((0..queues).map(|queue_id| QueueProgress {
                topic: topic.to_string(),
                queue_id,
                committed: None,
                max_offset: self.queue_next_offset(topic, queue_id),
            }));
        }
    }

    /// `group_progress` of every group that has committed an offset, by group name.
    pub fn all_group_progress(&self) -> Result<BTreeMap<String, Vec<QueueProgress>>, StorageError> {
        let mut by_group: BTreeMap<String, BTreeMap<(String, u32), u64>> = BTreeMap::new();
        for (group, topic, queue, offset) in self.committed_offsets(&[])? {
            by_group
                .entry(group)
                .or_default()
                .insert((topic, queue), offset);
        }
        Ok(by_group
            .into_iter()
            .map(|(group, committed)| (group, self.progress_of(committed)))
            .collect())
    }

    /// (group, topic, queue id, offset) of every `offsets` key that starts with `prefix`.
    fn committed_offsets(
        &self,
        prefix: &[u8],
    ) -> Result<Vec<(String, String, u32, u64)>, StorageError> {
        let handle = self.db.cf(CF_OFFSETS);
        let mut offsets = Vec::new();
        let items = self
            .db
            .inner
            .iterator_cf(&handle, IteratorMode::From(prefix, Direction::Forward));
        for item in items {
            let (key, value) = item.map_err(|source| StorageError::Read {
                cf: CF_OFFSETS,
                source,
            })?;
            if !key.starts_with(prefix) {
                break;
            }
            let (group, topic, queue_id) = keys::decode_offset_key(&key)
                .ok_or_else(|| StorageError::corrupt(CF_OFFSETS, &key, "bad key"))?;
            let (offset, _) = keys::decode_offset_record(&value).ok_or_else(|| {
                StorageError::corrupt(CF_OFFSETS, &key, "malformed offset record")
            })?;
            offsets.push((group, topic, queue_id, offset));
        }
        Ok(offsets)
    }

    /// One group's progress in every queue of the topics it has committed in: a queue it has
    /// not committed in yet still counts towards its lag.
    fn progress_of(&self, committed: BTreeMap<(String, u32), u64>) -> Vec<QueueProgress> {
        let mut topics: Vec<&str> = committed.keys().map(|(t, _)| t.as_str()).collect();
        topics.dedup();
        let mut progress = Vec::new();
        for topic in topics {
            let configured = self.topic(topic).map_or(0, |t| t.queues);
            let highest_committed = committed
                .range((topic.to_string(), 0)..=(topic.to_string(), u32::MAX))
                .map(|((_, queue), _)| queue + 1)
                .max()
                .unwrap_or(0);
            // Never hide a committed offset, whatever the topic's configuration says.
            for queue_id in 0..configured.max(highest_committed) {
                progress.push(QueueProgress {
                    topic: topic.to_string(),
                    queue_id,
                    committed: committed.get(&(topic.to_string(), queue_id)).copied(),
                    max_offset: self.queue_next_offset(topic, queue_id),
                });
            }
        }
        progress
    }

    /// (offset, log index that last changed it) of one `offsets` key, as last applied.
    fn offset_record(&self, key: &[u8]) -> Result<Option<(u64, u64)>, StorageError> {
        match self.db.get(CF_OFFSETS, key)? {
            None => Ok(None),
            Some(bytes) => keys::decode_offset_record(&bytes)
                .map(Some)
                .ok_or_else(|| StorageError::corrupt(CF_OFFSETS, key, "malformed offset record")),
        }
    }

    /// Set a consumer offset, unless the commit is conditional and the offset changed after
    /// the index it names: then it is a late commit that its caller already superseded.
    fn apply_commit_offset(
        &self,
        pending: &mut PendingApply,
        batch: &mut WriteBatch,
        log_index: u64,
        commit: &pb::CommitOffset,
    ) -> Result<pb::OffsetResult, StorageError> {
        let key = keys::offset_key(&commit.group, &commit.topic, commit.queue_id);
        if let Some(seen) = commit.unless_changed_after {
            let changed_at = match pending.offsets_changed_at.get(&key) {
                Some(index) => Some(*index),
                None => self.offset_record(&key)?.map(|(_, index)| index),
            };
            if let Some(changed_at) = changed_at.filter(|index| *index > seen) {
                return Ok(pb::OffsetResult {
                    changed_at: Some(changed_at),
                });
            }
        }
        batch.put_cf(
            &self.db.cf(CF_OFFSETS),
            &key,
            keys::encode_offset_record(commit.offset, log_index),
        );
        pending.offsets_changed_at.insert(key, log_index);
        Ok(pb::OffsetResult { changed_at: None })
    }

    /// Serialize every derived column family (a snapshot's data), read from one consistent
    /// RocksDB snapshot, together with the applied log id and membership it corresponds to.
    pub fn export(&self) -> Result<StateExport, StorageError> {
        let snapshot = self.db.inner.snapshot();
        let meta = |key: &[u8]| {
            snapshot
                .get_cf(&self.db.cf(CF_META), key)
                .map_err(|source| StorageError::Read {
                    cf: CF_META,
                    source,
                })
        };
        let applied = match meta(keys::APPLIED_KEY)? {
            None => None,
            Some(bytes) => Some(
                pb::LogId::decode(&*bytes)
                    .map_err(|e| StorageError::corrupt(CF_META, keys::APPLIED_KEY, e))?,
            ),
        };
        let membership = match meta(keys::MEMBERSHIP_KEY)? {
            None => None,
            Some(bytes) => Some(
                pb::StoredMembership::decode(&*bytes)
                    .map_err(|e| StorageError::corrupt(CF_META, keys::MEMBERSHIP_KEY, e))?,
            ),
        };
        let mut data = Vec::new();
        for (cf_index, cf) in STATE_CFS.iter().enumerate() {
            let handle = self.db.cf(cf);
            for item in snapshot.iterator_cf(&handle, IteratorMode::Start) {
                let (key, value) = item.map_err(|source| StorageError::Read { cf, source })?;
                data.push(cf_index as u8);
                data.extend_from_slice(&(key.len() as u32).to_be_bytes());
                data.extend_from_slice(&key);
                data.extend_from_slice(&(value.len() as u32).to_be_bytes());
                data.extend_from_slice(&value);
            }
        }
        Ok(StateExport {
            data,
            applied,
            membership,
        })
    }

    /// Replace every derived column family with a snapshot's data, atomically.
    pub fn import(&self, data: &[u8]) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        for cf in STATE_CFS {
            let handle = self.db.cf(cf);
            batch.delete_range_cf(&handle, [0u8].as_slice(), [0xffu8; 64].as_slice());
        }
        let mut rest = data;
        while !rest.is_empty() {
            let bad = || StorageError::corrupt(CF_META, b"snapshot", "truncated snapshot record");
            let (&cf_index, tail) = rest.split_first().ok_or_else(bad)?;
            let cf = *STATE_CFS.get(cf_index as usize).ok_or_else(bad)?;
            let (key, tail) = take_framed(tail).ok_or_else(bad)?;
            let (value, tail) = take_framed(tail).ok_or_else(bad)?;
            batch.put_cf(&self.db.cf(cf), key, value);
            rest = tail;
        }
        self.db.write_synced(CF_META, batch)?;
        self.reload_cache()?;
        if let Some(applied) = self.applied_log_id()? {
            self.applied_tx.send_replace(applied.index);
        }
        Ok(())
    }
}

fn take_framed(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let body = data.get(4..4 + len)?;
    Some((body, &data[4 + len..]))
}

/// Changes made by the apply call in progress, visible to later items of the same call.
#[derive(Default)]
pub(crate) struct PendingApply {
    pub(crate) topics: BTreeMap<String, pb::TopicConfig>,
    pub(crate) queue_next: HashMap<(String, u32), u64>,
    pub(crate) dedup: HashMap<Vec<u8>, pb::DedupEntry>,
    /// Where each appended message is looked up and recorded in the dedup index, in apply
    /// order (see `BrokerState::look_up_message_ids`).
    pub(crate) id_lookups: std::vec::IntoIter<IdLookup>,
    /// The newest dedup bucket as of the item being applied.
    pub(crate) dedup_bucket: u64,
    pub(crate) groups: BTreeMap<String, pb::GroupConfig>,
    pub(crate) pops: HashMap<PopKey, pb::PopQueue>,
    /// Consume-queue entries written by this call: (topic, queue, offset) → location.
    pub(crate) cq: HashMap<(String, u32, u64), pb::QueueEntry>,
    /// Timers scheduled by this call, and timer keys fired (deleted) by it.
    pub(crate) timers: BTreeMap<[u8; 20], pb::TimerEntry>,
    pub(crate) fired_timers: HashSet<[u8; 20]>,
    /// Transaction records written by this call, by `txn` key.
    pub(crate) txns: HashMap<Vec<u8>, pb::TransactionRecord>,
    /// Consumer offsets committed by this call: `offsets` key → log index of the commit.
    pub(crate) offsets_changed_at: HashMap<Vec<u8>, u64>,
}

impl PendingApply {
    /// A topic as of the item being applied: created earlier in this call, or before it.
    pub(crate) fn topic<'a>(&'a self, cache: &'a Cache, name: &str) -> Option<&'a pb::TopicConfig> {
        self.topics.get(name).or_else(|| cache.topics.get(name))
    }
}

#[cfg(test)]
#[path = "state_test.rs"]
mod tests;
