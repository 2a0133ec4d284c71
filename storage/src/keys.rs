//! Key encodings for every column family.
//!
//! Integers are big-endian so that RocksDB's byte order is numeric order, which range scans
//! (log replay, queue reads) rely on. Names are separated by a 0 byte, which topic and group
//! names cannot contain (they are validated to `[%|a-zA-Z0-9_-]`).

/// Raft log (`log` CF): the entry index.
pub fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub fn decode_log_key(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// Consume queue (`cq` CF): topic, queue id, queue offset.
pub fn cq_key(topic: &str, queue_id: u32, offset: u64) -> Vec<u8> {
    let mut key = cq_prefix(topic, queue_id);
    key.extend_from_slice(&offset.to_be_bytes());
    key
}

/// All entries of one queue start with this prefix.
pub fn cq_prefix(topic: &str, queue_id: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(topic.len() + 1 + 4 + 8);
    key.extend_from_slice(topic.as_bytes());
    key.push(0);
    key.extend_from_slice(&queue_id.to_be_bytes());
    key
}

/// The queue offset at the end of a `cq` key.
pub fn decode_cq_offset(key: &[u8]) -> Option<u64> {
    let tail = key.len().checked_sub(8)?;
    Some(u64::from_be_bytes(key[tail..].try_into().ok()?))
}

/// Consumer offsets (`offsets` CF): group, topic, queue id.
pub fn offset_key(group: &str, topic: &str, queue_id: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(group.len() + topic.len() + 6);
    key.extend_from_slice(group.as_bytes());
    key.push(0);
    key.extend_from_slice(topic.as_bytes());
    key.push(0);
    key.extend_from_slice(&queue_id.to_be_bytes());
    key
}

/// A consumer offset record (`offsets` CF value): the offset, and the log index of the entry
/// that last set it.
pub fn encode_offset_record(offset: u64, changed_at: u64) -> [u8; 16] {
    let mut value = [0; 16];
    value[..8].copy_from_slice(&offset.to_be_bytes());
    value[8..].copy_from_slice(&changed_at.to_be_bytes());
    value
}

/// (offset, changed-at log index) of an `offsets` value. Records written before the index was
/// kept hold the offset alone; they read as changed at index 0.
pub fn decode_offset_record(value: &[u8]) -> Option<(u64, u64)> {
    let offset = u64::from_be_bytes(value.get(..8)?.try_into().ok()?);
    let changed_at = match value.len() {
        8 => 0,
        16 => u64::from_be_bytes(value[8..].try_into().ok()?),
        _ => return None,
    };
    Some((offset, changed_at))
}

/// POP progress (`pop` CF): group, topic, queue id.
pub fn pop_key(group: &str, topic: &str, queue_id: u32) -> Vec<u8> {
    offset_key(group, topic, queue_id)
}

/// The (group, topic, queue id) of a `pop` key.
pub fn decode_pop_key(key: &[u8]) -> Option<(String, String, u32)> {
    decode_offset_key(key)
}

/// The (group, topic, queue id) of an `offsets` key.
pub fn decode_offset_key(key: &[u8]) -> Option<(String, String, u32)> {
    let (names, queue) = key.split_at(key.len().checked_sub(4)?);
    let names = names.strip_suffix(&[0])?;
    let split = names.iter().position(|b| *b == 0)?;
    let group = std::str::from_utf8(&names[..split]).ok()?;
    let topic = std::str::from_utf8(&names[split + 1..]).ok()?;
    Some((
        group.to_string(),
        topic.to_string(),
        u32::from_be_bytes(queue.try_into().ok()?),
    ))
}

/// Delay timers (`timer` CF): deliver time (ms, sign bit flipped so that byte order is time
/// order, earlier times first), log index, slot.
pub fn timer_key(deliver_at_ms: i64, log_index: u64, slot: u32) -> [u8; 20] {
    let mut key = [0u8; 20];
    key[..8].copy_from_slice(&((deliver_at_ms as u64) ^ (1 << 63)).to_be_bytes());
    key[8..16].copy_from_slice(&log_index.to_be_bytes());
    key[16..].copy_from_slice(&slot.to_be_bytes());
    key
}

/// The deliver time of a `timer` key.
pub fn decode_timer_time(key: &[u8]) -> Option<i64> {
    let time: [u8; 8] = key.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(time) ^ (1 << 63)) as i64)
}

/// Transactions (`txn` CF): topic, 0x00, transaction id.
pub fn txn_key(topic: &str, transaction_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(topic.len() + 1 + transaction_id.len());
    key.extend_from_slice(topic.as_bytes());
    key.push(0);
    key.extend_from_slice(transaction_id.as_bytes());
    key
}

/// `meta` CF: a consumer group's configuration.
pub fn group_key(group: &str) -> Vec<u8> {
    let mut key = GROUP_PREFIX.to_vec();
    key.extend_from_slice(group.as_bytes());
    key
}

pub const GROUP_PREFIX: &[u8] = b"group/";

/// Message-id dedup index (`index` CF): the dedup bucket the id was recorded in, topic,
/// message id. Ids are grouped by bucket (a span of store time, see
/// `state::DEDUP_BUCKET_MS`) so that apply drops each bucket with one range delete once it
/// has left the dedup window.
pub fn dedup_key(bucket: u64, topic: &str, message_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(DEDUP_PREFIX.len() + 8 + topic.len() + 1 + message_id.len());
    key.extend_from_slice(DEDUP_PREFIX);
    key.extend_from_slice(&bucket.to_be_bytes());
    key.extend_from_slice(topic.as_bytes());
    key.push(0);
    key.extend_from_slice(message_id.as_bytes());
    key
}

/// Every dedup key of `bucket` and of later buckets sorts at or after this one, every key of
/// an earlier bucket before it.
pub fn dedup_bucket_start(bucket: u64) -> Vec<u8> {
    let mut key = DEDUP_PREFIX.to_vec();
    key.extend_from_slice(&bucket.to_be_bytes());
    key
}

pub const DEDUP_PREFIX: &[u8] = b"dd/";

/// A message's dedup record as builds before buckets kept it (topic, message id), still looked
/// up where such records exist (see `state::IdLookup`).
pub fn old_dedup_key(topic: &str, message_id: &str) -> Vec<u8> {
    [
        OLD_DEDUP_PREFIX,
        topic.as_bytes(),
        &[0],
        message_id.as_bytes(),
    ]
    .concat()
}

pub const OLD_DEDUP_PREFIX: &[u8] = b"id/";

/// `meta` CF: the next offset of a queue (= how many messages it ever held).
pub fn queue_next_key(topic: &str, queue_id: u32) -> Vec<u8> {
    let mut key = b"qnext/".to_vec();
    key.extend_from_slice(&cq_prefix(topic, queue_id));
    key
}

pub const QUEUE_NEXT_PREFIX: &[u8] = b"qnext/";

/// `meta` CF: a topic's configuration.
pub fn topic_key(topic: &str) -> Vec<u8> {
    let mut key = TOPIC_PREFIX.to_vec();
    key.extend_from_slice(topic.as_bytes());
    key
}

pub const TOPIC_PREFIX: &[u8] = b"topic/";

/// `meta` CF: the last applied log id.
pub const APPLIED_KEY: &[u8] = b"applied";
/// `meta` CF: the newest dedup bucket the applied log has reached.
pub const DEDUP_BUCKET_KEY: &[u8] = b"dedup_bucket";
/// `meta` CF: the last applied membership.
pub const MEMBERSHIP_KEY: &[u8] = b"membership";
/// `raft` CF: the vote.
pub const VOTE_KEY: &[u8] = b"vote";
/// `raft` CF: the committed log id.
pub const COMMITTED_KEY: &[u8] = b"committed";
/// `raft` CF: the last purged log id.
pub const PURGED_KEY: &[u8] = b"purged";
/// `raft` CF: which node this data dir belongs to (never replicated, never in a snapshot).
pub const IDENTITY_KEY: &[u8] = b"identity";

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn log_keys_sort_like_their_indexes(a: u64, b: u64) {
            prop_assert_eq!(a.cmp(&b), log_key(a).cmp(&log_key(b)));
        }

        #[test]
        fn log_keys_round_trip(index: u64) {
            prop_assert_eq!(Some(index), decode_log_key(&log_key(index)));
        }

        #[test]
        fn cq_keys_of_one_queue_sort_like_offsets(topic in "[a-zA-Z0-9_%|-]{1,127}", queue: u32, a: u64, b: u64) {
            prop_assert_eq!(a.cmp(&b), cq_key(&topic, queue, a).cmp(&cq_key(&topic, queue, b)));
            prop_assert_eq!(Some(a), decode_cq_offset(&cq_key(&topic, queue, a)));
            prop_assert!(cq_key(&topic, queue, a).starts_with(&cq_prefix(&topic, queue)));
        }

        #[test]
        fn timer_keys_sort_by_time_then_position(a: i64, b: i64, ia: u64, ib: u64) {
            let (ka, kb) = (timer_key(a, ia, 0), timer_key(b, ib, 0));
            prop_assert_eq!((a, ia).cmp(&(b, ib)), ka.cmp(&kb));
            prop_assert_eq!(Some(a), decode_timer_time(&ka));
        }

        #[test]
        fn dedup_keys_sort_by_bucket_first_and_bucket_starts_bound_them(
            a: u64, b in 0..u64::MAX, topic in "[a-zA-Z0-9_%|-]{1,127}", id in "[ -~]{0,64}", other_id in "[ -~]{0,64}",
        ) {
            let (ka, kb) = (dedup_key(a, &topic, &id), dedup_key(b, &topic, &other_id));
            if a != b {
                prop_assert_eq!(a.cmp(&b), ka.cmp(&kb));
            }
            prop_assert!(dedup_bucket_start(a) <= ka);
            prop_assert!(dedup_key(b, &topic, &other_id) < dedup_bucket_start(b + 1));
        }

        #[test]
        fn old_and_new_dedup_keys_never_meet(
            bucket: u64, topic in "[a-zA-Z0-9_%|-]{1,127}", id in "[ -~]{0,64}",
        ) {
            prop_assert!(old_dedup_key(&topic, &id).starts_with(OLD_DEDUP_PREFIX));
            prop_assert!(!dedup_key(bucket, &topic, &id).starts_with(OLD_DEDUP_PREFIX));
        }

        #[test]
        fn offset_records_round_trip_and_old_ones_read_as_changed_at_zero(offset: u64, changed_at: u64) {
            prop_assert_eq!(
                Some((offset, changed_at)),
                decode_offset_record(&encode_offset_record(offset, changed_at))
            );
            prop_assert_eq!(Some((offset, 0)), decode_offset_record(&offset.to_be_bytes()));
            prop_assert_eq!(None, decode_offset_record(&encode_offset_record(offset, changed_at)[..12]));
        }

        #[test]
        fn pop_keys_round_trip(group in "[a-zA-Z0-9_%|-]{1,20}", topic in "[a-zA-Z0-9_%|-]{1,20}", queue: u32) {
            prop_assert_eq!(
                Some((group.clone(), topic.clone(), queue)),
                decode_pop_key(&pop_key(&group, &topic, queue))
            );
        }

        #[test]
        fn cq_prefixes_of_different_queues_never_nest(
            t1 in "[a-zA-Z0-9_%|-]{1,20}", t2 in "[a-zA-Z0-9_%|-]{1,20}", q1: u32, q2: u32, offset: u64,
        ) {
            prop_assume!((t1.as_str(), q1) != (t2.as_str(), q2));
            prop_assert!(!cq_key(&t1, q1, offset).starts_with(&cq_prefix(&t2, q2)));
        }
    }

    #[test]
    fn decode_rejects_short_keys() {
        assert_eq!(None, decode_log_key(&[1, 2, 3]));
        assert_eq!(None, decode_cq_offset(&[1, 2]));
    }
}
