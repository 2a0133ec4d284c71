//! Checks of client input, each failure carrying the RocketMQ v2 `Code` the official proxy
//! answers with (see the protocol reference, §5.1). Pure functions: no I/O.

use raftmq_proto::rocketmq::v2::{self as v2, Code};

use super::status::Rejection;

pub const TOPIC_NAME_MAX: usize = 127;
pub const GROUP_NAME_MAX: usize = 120;
pub const PROPERTIES_MAX: usize = 128;
/// User properties (keys and values) plus tag plus keys, in bytes.
pub const PROPERTIES_BYTES_MAX: usize = 16 * 1024;
/// A message group of this many UTF-8 bytes or more is refused.
pub const MESSAGE_GROUP_BYTES_LIMIT: usize = 64;

/// Topics that exist inside RocketMQ brokers and must not be used by applications.
const SYSTEM_TOPICS: &[&str] = &[
    "SCHEDULE_TOPIC_XXXX",
    "RMQ_SYS_TRANS_HALF_TOPIC",
    "RMQ_SYS_TRANS_OP_HALF_TOPIC",
    "TRANS_CHECK_MAX_TIME_TOPIC",
    "RMQ_SYS_TRACE_TOPIC",
    "BenchmarkTest",
    "SELF_TEST_TOPIC",
    "OFFSET_MOVED_EVENT",
    "TBW102",
];

/// Property names RocketMQ reserves for itself (its `MessageConst`).
const RESERVED_PROPERTY_KEYS: &[&str] = &[
    "KEYS",
    "TAGS",
    "WAIT",
    "DELAY",
    "RETRY_TOPIC",
    "REAL_TOPIC",
    "REAL_QID",
    "TRAN_MSG",
    "PGROUP",
    "MIN_OFFSET",
    "MAX_OFFSET",
    "BUYER_ID",
    "ORIGIN_MESSAGE_ID",
    "TRANSFER_FLAG",
    "CORRECTION_FLAG",
    "MQ2_FLAG",
    "RECONSUME_TIME",
    "MSG_REGION",
    "TRACE_ON",
    "UNIQ_KEY",
    "MAX_RECONSUME_TIMES",
    "CONSUME_START_TIME",
    "POP_CK",
    "POP_CK_OFFSET",
    "1ST_POP_TIME",
    "TRAN_PREPARED_QUEUE_OFFSET",
    "TRANSACTION_CHECK_TIMES",
    "CHECK_IMMUNITY_TIME_IN_SECONDS",
    "INSTANCE_ID",
    "CORRELATION_ID",
    "REPLY_TO_CLIENT",
    "TTL",
    "ARRIVE_TIME",
    "PUSH_REPLY_TIME",
    "CLUSTER",
    "MSG_TYPE",
    "__STARTDELIVERTIME",
    "TIMER_DELIVER_MS",
    "TIMER_DELAY_SEC",
    "TIMER_DELAY_MS",
    "TIMER_OUT_MS",
    "TIMER_ENQUEUE_MS",
    "TIMER_DEQUEUE_MS",
    "TIMER_ROLL_TIMES",
    "TIMER_DEL_UNIQKEY",
    "__SHARDINGKEY",
    "DUP_INFO",
    "EXTEND_UNIQ_INFO",
    "INNER_MULTI_DISPATCH",
    "INNER_MULTI_QUEUE_OFFSET",
    "TRACE_CONTEXT",
];

fn name_chars_ok(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'%' | b'|' | b'_' | b'-'))
}

pub fn topic_name(name: &str) -> Result<(), Rejection> {
    let bad = |why: &str| {
        Err(Rejection::new(
            Code::IllegalTopic,
            format!("illegal topic name `{name}`: {why}"),
        ))
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > TOPIC_NAME_MAX {
        return bad(&format!("longer than {TOPIC_NAME_MAX} characters"));
    }
    if !name_chars_ok(name) {
        return bad("only letters, digits and % | _ - are allowed");
    }
    if SYSTEM_TOPICS.contains(&name) || name.starts_with("rmq_sys_") {
        return bad("it is reserved for the system");
    }
    Ok(())
}

pub fn group_name(name: &str) -> Result<(), Rejection> {
    let bad = |why: &str| {
        Err(Rejection::new(
            Code::IllegalConsumerGroup,
            format!("illegal consumer group `{name}`: {why}"),
        ))
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > GROUP_NAME_MAX {
        return bad(&format!("longer than {GROUP_NAME_MAX} characters"));
    }
    if !name_chars_ok(name) {
        return bad("only letters, digits and % | _ - are allowed");
    }
    Ok(())
}

fn blank_or_control(text: &str) -> bool {
    text.trim().is_empty() || text.chars().any(char::is_control)
}

/// Check one message of a SendMessage request. `max_body_bytes` is the broker's limit.
pub fn message(message: &v2::Message, max_body_bytes: usize) -> Result<(), Rejection> {
    let Some(props) = &message.system_properties else {
        return Err(Rejection::new(
            Code::MessageCorrupted,
            "message without system_properties",
        ));
    };
    if props.message_id.trim().is_empty() {
        return Err(Rejection::new(
            Code::IllegalMessageId,
            "message_id must not be blank",
        ));
    }
    if let Some(tag) = &props.tag
        && (blank_or_control(tag) || tag.contains('|'))
    {
        return Err(Rejection::new(
            Code::IllegalMessageTag,
            format!(
                "illegal tag `{}`: it must be non-blank, without `|` or control characters",
                tag.escape_debug()
            ),
        ));
    }
    for key in &props.keys {
        if blank_or_control(key) {
            return Err(Rejection::new(
                Code::IllegalMessageKey,
                format!(
                    "illegal key `{}`: it must be non-blank, without control characters",
                    key.escape_debug()
                ),
            ));
        }
    }
    if let Some(group) = &props.message_group
        && (blank_or_control(group) || group.len() >= MESSAGE_GROUP_BYTES_LIMIT)
    {
        return Err(Rejection::new(
            Code::IllegalMessageGroup,
            format!(
                "illegal message group: it must be non-blank, without control characters, shorter than {MESSAGE_GROUP_BYTES_LIMIT} bytes"
            ),
        ));
    }
    if message.user_properties.len() > PROPERTIES_MAX {
        return Err(Rejection::new(
            Code::MessagePropertiesTooLarge,
            format!(
                "{} user properties; at most {PROPERTIES_MAX} are allowed",
                message.user_properties.len()
            ),
        ));
    }
    let mut property_bytes = props.tag.as_ref().map_or(0, String::len)
        + props.keys.iter().map(String::len).sum::<usize>();
    for (key, value) in &message.user_properties {
        if key.is_empty() || key.chars().any(char::is_control) {
            return Err(Rejection::new(
                Code::IllegalMessagePropertyKey,
                format!("illegal property key `{}`", key.escape_debug()),
            ));
        }
        if RESERVED_PROPERTY_KEYS.contains(&key.as_str()) {
            return Err(Rejection::new(
                Code::IllegalMessagePropertyKey,
                format!("property key `{key}` is reserved by RocketMQ"),
            ));
        }
        property_bytes += key.len() + value.len();
    }
    if property_bytes > PROPERTIES_BYTES_MAX {
        return Err(Rejection::new(
            Code::MessagePropertiesTooLarge,
            format!(
                "properties, tag and keys take {property_bytes} bytes; at most {PROPERTIES_BYTES_MAX} are allowed"
            ),
        ));
    }
    if message.body.is_empty() {
        return Err(Rejection::new(
            Code::MessageBodyEmpty,
            "message body is empty",
        ));
    }
    if message.body.len() > max_body_bytes {
        return Err(Rejection::new(
            Code::MessageBodyTooLarge,
            format!(
                "message body is {} bytes; the limit is {max_body_bytes}",
                message.body.len()
            ),
        ));
    }
    Ok(())
}

/// The message type of a topic, by name as operators write it ("" and "mixed" = every type).
pub fn topic_message_type(name: &str) -> Result<i32, Rejection> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "" | "mixed" => v2::MessageType::Unspecified as i32,
        "normal" => v2::MessageType::Normal as i32,
        "fifo" => v2::MessageType::Fifo as i32,
        "delay" => v2::MessageType::Delay as i32,
        "transaction" => v2::MessageType::Transaction as i32,
        other => {
            return Err(Rejection::bad_request(format!(
                "unknown message type `{other}`: use normal, fifo, delay, transaction or mixed"
            )));
        }
    })
}

/// The name of a topic message type, for operators.
pub fn topic_message_type_name(message_type: i32) -> &'static str {
    match v2::MessageType::try_from(message_type) {
        Ok(v2::MessageType::Normal) => "normal",
        Ok(v2::MessageType::Fifo) => "fifo",
        Ok(v2::MessageType::Delay) => "delay",
        Ok(v2::MessageType::Transaction) => "transaction",
        _ => "mixed",
    }
}

/// The message types a topic accepts, as routes advertise them.
pub fn accepted_message_types(topic_type: i32) -> Vec<i32> {
    if topic_type == v2::MessageType::Unspecified as i32 {
        [
            v2::MessageType::Normal,
            v2::MessageType::Fifo,
            v2::MessageType::Delay,
            v2::MessageType::Transaction,
        ]
        .iter()
        .map(|t| *t as i32)
        .collect()
    } else {
        vec![topic_type]
    }
}

/// A message's type as RocketMQ derives it from what it carries, checked against the topic's.
pub fn message_type_fits(message: &v2::Message, topic_type: i32) -> Result<(), Rejection> {
    if topic_type == v2::MessageType::Unspecified as i32 {
        return Ok(());
    }
    let props = message.system_properties.as_ref();
    let derived = if props.is_some_and(|p| p.message_type == v2::MessageType::Transaction as i32) {
        v2::MessageType::Transaction
    } else if props.is_some_and(|p| p.delivery_timestamp.is_some()) {
        v2::MessageType::Delay
    } else if props.is_some_and(|p| p.message_group.is_some()) {
        v2::MessageType::Fifo
    } else {
        v2::MessageType::Normal
    };
    if derived as i32 != topic_type {
        return Err(Rejection::new(
            Code::MessagePropertyConflictWithType,
            format!(
                "a {} message cannot be sent to a {} topic",
                topic_message_type_name(derived as i32),
                topic_message_type_name(topic_type)
            ),
        ));
    }
    Ok(())
}

/// A delay message's delivery time: at most `max_delay` ahead of `now_ms` (a time in the past
/// means "deliver now").
pub fn delivery_time(
    message: &v2::Message,
    now_ms: i64,
    max_delay: std::time::Duration,
) -> Result<(), Rejection> {
    let Some(ts) = message
        .system_properties
        .as_ref()
        .and_then(|p| p.delivery_timestamp.as_ref())
    else {
        return Ok(());
    };
    let deliver_at = ts.seconds.saturating_mul(1000) + i64::from(ts.nanos / 1_000_000);
    let latest = now_ms.saturating_add(max_delay.as_millis() as i64);
    if deliver_at > latest {
        return Err(Rejection::new(
            Code::IllegalDeliveryTime,
            format!(
                "delivery timestamp {}s is more than {}s ahead (the broker's max_delay_secs); \
                 the timestamp is in seconds since the epoch",
                ts.seconds,
                max_delay.as_secs()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> v2::Message {
        v2::Message {
            topic: Some(v2::Resource {
                resource_namespace: String::new(),
                name: "T".into(),
            }),
            user_properties: Default::default(),
            system_properties: Some(v2::SystemProperties {
                message_id: "01ABC".into(),
                tag: Some("TagA".into()),
                keys: vec!["k1".into()],
                ..Default::default()
            }),
            body: bytes::Bytes::from_static(b"hello"),
        }
    }

    fn code_of(result: Result<(), Rejection>) -> Code {
        result.err().map(|r| r.code).unwrap_or(Code::Ok)
    }

    #[test]
    fn topic_names_follow_rocketmq_rules() {
        for ok in ["T", "a-b_c%d|e", &"x".repeat(127)] {
            assert_eq!(Code::Ok, code_of(topic_name(ok)), "{ok}");
        }
        for bad in [
            "",
            "bad topic!",
            "a/b",
            &"x".repeat(128),
            "SCHEDULE_TOPIC_XXXX",
            "rmq_sys_foo",
            "é",
        ] {
            assert_eq!(Code::IllegalTopic, code_of(topic_name(bad)), "{bad}");
        }
    }

    #[test]
    fn group_names_follow_rocketmq_rules() {
        assert_eq!(Code::Ok, code_of(group_name("GID_orders-1")));
        assert_eq!(Code::IllegalConsumerGroup, code_of(group_name("")));
        assert_eq!(
            Code::IllegalConsumerGroup,
            code_of(group_name(&"g".repeat(121)))
        );
        assert_eq!(Code::IllegalConsumerGroup, code_of(group_name("a b")));
    }

    #[test]
    fn message_types_must_fit_the_topic_unless_it_is_mixed() {
        let fifo = {
            let mut m = valid();
            m.system_properties.as_mut().unwrap().message_group = Some("g".into());
            m
        };
        let normal = topic_message_type("normal").unwrap();
        let fifo_topic = topic_message_type("FIFO").unwrap();
        let mixed = topic_message_type("").unwrap();
        assert_eq!(Code::Ok, code_of(message_type_fits(&valid(), normal)));
        assert_eq!(
            Code::MessagePropertyConflictWithType,
            code_of(message_type_fits(&fifo, normal))
        );
        assert_eq!(Code::Ok, code_of(message_type_fits(&fifo, fifo_topic)));
        assert_eq!(Code::Ok, code_of(message_type_fits(&fifo, mixed)));
        assert_eq!(4, accepted_message_types(mixed).len());
        assert_eq!(vec![fifo_topic], accepted_message_types(fifo_topic));
        assert_eq!("fifo", topic_message_type_name(fifo_topic));
        assert!(topic_message_type("lite").is_err());
    }

    #[test]
    fn delivery_times_beyond_the_maximum_are_refused() {
        let at = |seconds: i64| {
            let mut m = valid();
            m.system_properties.as_mut().unwrap().delivery_timestamp =
                Some(prost_types::Timestamp { seconds, nanos: 0 });
            code_of(delivery_time(
                &m,
                1_000_000,
                std::time::Duration::from_secs(60),
            ))
        };
        assert_eq!(
            Code::Ok,
            code_of(delivery_time(&valid(), 0, Default::default()))
        );
        assert_eq!(Code::Ok, at(1_000 + 60), "exactly the maximum");
        assert_eq!(Code::Ok, at(0), "in the past: deliver now");
        assert_eq!(Code::IllegalDeliveryTime, at(1_000 + 61));
        // Milliseconds put in the seconds field, a known client mix-up.
        assert_eq!(Code::IllegalDeliveryTime, at(1_700_000_000_000));
    }

    #[test]
    fn each_bad_message_gets_its_code() {
        let limit = 1024;
        assert_eq!(Code::Ok, code_of(message(&valid(), limit)));
        type Mutation = Box<dyn Fn(&mut v2::Message)>;
        let cases: Vec<(Code, Mutation)> = vec![
            (
                Code::MessageCorrupted,
                Box::new(|m| m.system_properties = None),
            ),
            (
                Code::IllegalMessageId,
                Box::new(|m| m.system_properties.as_mut().unwrap().message_id = " ".into()),
            ),
            (
                Code::IllegalMessageTag,
                Box::new(|m| m.system_properties.as_mut().unwrap().tag = Some("a|b".into())),
            ),
            (
                Code::IllegalMessageTag,
                Box::new(|m| m.system_properties.as_mut().unwrap().tag = Some("  ".into())),
            ),
            (
                Code::IllegalMessageKey,
                Box::new(|m| m.system_properties.as_mut().unwrap().keys = vec!["a\nb".into()]),
            ),
            (
                Code::IllegalMessageGroup,
                Box::new(|m| {
                    m.system_properties.as_mut().unwrap().message_group = Some("g".repeat(64))
                }),
            ),
            (
                Code::MessageBodyEmpty,
                Box::new(|m| m.body = bytes::Bytes::new()),
            ),
            (
                Code::MessageBodyTooLarge,
                Box::new(|m| m.body = vec![0u8; 1025].into()),
            ),
            (
                Code::IllegalMessagePropertyKey,
                Box::new(|m| {
                    m.user_properties.insert("UNIQ_KEY".into(), "x".into());
                }),
            ),
            (
                Code::MessagePropertiesTooLarge,
                Box::new(|m| {
                    for i in 0..129 {
                        m.user_properties.insert(format!("p{i}"), "v".into());
                    }
                }),
            ),
            (
                Code::MessagePropertiesTooLarge,
                Box::new(|m| {
                    m.user_properties
                        .insert("big".into(), "v".repeat(16 * 1024));
                }),
            ),
        ];
        for (expected, mutate) in cases {
            let mut m = valid();
            mutate(&mut m);
            assert_eq!(expected, code_of(message(&m, limit)));
        }
        let mut at_limit = valid();
        at_limit.body = vec![1u8; limit].into();
        assert_eq!(Code::Ok, code_of(message(&at_limit, limit)));
        let mut group_63 = valid();
        group_63.system_properties.as_mut().unwrap().message_group = Some("g".repeat(63));
        assert_eq!(Code::Ok, code_of(message(&group_63, limit)));
    }
}
