//! Converting messages between the RocketMQ v2 wire form and the stored form.

use md5::{Digest, Md5};
use raftmq_proto::raft::v1 as pb;
use raftmq_proto::rocketmq::v2;
use raftmq_storage::StoredRecord;

pub use raftmq_raft::now_ms;

fn timestamp_ms(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds.saturating_mul(1000) + i64::from(ts.nanos / 1_000_000)
}

fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// Bodies below this size are copied out of the request's decode buffer; see `compact_body`.
const COMPACT_BODY_BELOW: usize = 64 * 1024;

/// A small body in an allocation of its own. tonic decodes every call into a fresh buffer of
/// at least 8 KiB and hands out the body as a view into it, which keeps the whole buffer alive
/// as long as the body: in the leader's cache of recent entries a 1 KiB message then held
/// about 9 KiB. A larger body's view wastes a small fraction and is kept as it is.
fn compact_body(body: bytes::Bytes) -> bytes::Bytes {
    if body.len() < COMPACT_BODY_BELOW {
        bytes::Bytes::copy_from_slice(&body)
    } else {
        body
    }
}

/// The stored form of a validated client message, placed in `queue_id`.
pub fn to_stored(
    message: v2::Message,
    topic: &str,
    queue_id: u32,
    store_timestamp_ms: i64,
) -> pb::StoredMessage {
    let props = message.system_properties.unwrap_or_default();
    pb::StoredMessage {
        topic: topic.to_string(),
        queue_id,
        message_id: props.message_id,
        tag: props.tag,
        keys: props.keys,
        properties: message.user_properties,
        body: compact_body(message.body),
        born_timestamp_ms: props
            .born_timestamp
            .as_ref()
            .map(timestamp_ms)
            .unwrap_or_default(),
        born_host: props.born_host,
        message_group: props.message_group,
        message_type: props.message_type,
        store_timestamp_ms,
        delivery_timestamp_ms: props.delivery_timestamp.as_ref().map(timestamp_ms),
        trace_context: props.trace_context,
        producer_client_id: String::new(),
        first_check_ms: 0,
    }
}

/// The wire form of a stored message, as delivered to consumers.
pub fn to_delivered(record: StoredRecord, store_host: &str) -> v2::Message {
    let stored = record.message;
    // The official clients verify an uppercase MD5 of the body.
    let checksum = hex::encode_upper(Md5::digest(&stored.body));
    let message_type = if stored.message_type == v2::MessageType::Unspecified as i32 {
        v2::MessageType::Normal as i32
    } else {
        stored.message_type
    };
    v2::Message {
        topic: Some(v2::Resource {
            resource_namespace: String::new(),
            name: stored.topic,
        }),
        user_properties: stored.properties,
        system_properties: Some(v2::SystemProperties {
            tag: stored.tag,
            keys: stored.keys,
            message_id: stored.message_id,
            body_digest: Some(v2::Digest {
                r#type: v2::DigestType::Md5 as i32,
                checksum,
            }),
            body_encoding: v2::Encoding::Identity as i32,
            message_type,
            born_timestamp: Some(timestamp(stored.born_timestamp_ms)),
            born_host: stored.born_host,
            store_timestamp: Some(timestamp(stored.store_timestamp_ms)),
            store_host: store_host.to_string(),
            delivery_timestamp: stored.delivery_timestamp_ms.map(timestamp),
            queue_id: stored.queue_id as i32,
            queue_offset: Some(record.queue_offset as i64),
            message_group: stored.message_group,
            trace_context: stored.trace_context,
            ..Default::default()
        }),
        body: stored.body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_body_leaves_its_decode_buffer_and_a_large_one_stays_a_view() {
        // As tonic hands bodies out: views into one larger buffer.
        let buffer = bytes::Bytes::from(vec![7u8; 256 * 1024]);
        let small = buffer.slice(100..1124);
        let compacted = compact_body(small.clone());
        assert_eq!(small, compacted);
        assert_ne!(
            small.as_ptr(),
            compacted.as_ptr(),
            "copied into its own allocation"
        );
        let large = buffer.slice(0..COMPACT_BODY_BELOW);
        let kept = compact_body(large.clone());
        assert_eq!(large.as_ptr(), kept.as_ptr(), "a large body is not copied");
    }

    #[test]
    fn a_message_survives_storage_and_delivery_with_an_uppercase_md5() {
        let sent = v2::Message {
            topic: Some(v2::Resource {
                resource_namespace: String::new(),
                name: "T".into(),
            }),
            user_properties: [("a".to_string(), "1".to_string())].into_iter().collect(),
            system_properties: Some(v2::SystemProperties {
                message_id: "id-1".into(),
                tag: Some("TagA".into()),
                keys: vec!["k".into()],
                born_timestamp: Some(timestamp(1_700_000_000_123)),
                born_host: "h".into(),
                ..Default::default()
            }),
            body: bytes::Bytes::from_static(b"hello"),
        };
        let stored = to_stored(sent.clone(), "T", 3, 1_700_000_000_999);
        let delivered = to_delivered(
            StoredRecord {
                queue_offset: 7,
                log_index: 1,
                message: stored,
            },
            "127.0.0.1:8081",
        );
        let props = delivered.system_properties.unwrap();
        assert_eq!("id-1", props.message_id);
        assert_eq!(Some("TagA".to_string()), props.tag);
        assert_eq!(3, props.queue_id);
        assert_eq!(Some(7), props.queue_offset);
        assert_eq!(v2::Encoding::Identity as i32, props.body_encoding);
        assert_eq!(
            "5D41402ABC4B2A76B9719D911017C592",
            props.body_digest.unwrap().checksum
        );
        assert_eq!(Some(timestamp(1_700_000_000_123)), props.born_timestamp);
        assert_eq!(sent.user_properties, delivered.user_properties);
        assert_eq!(sent.body, delivered.body);
    }
}
