//! POP consumption for the official clients' simple and push consumers: ReceiveMessage,
//! AckMessage, ChangeInvisibleDuration, ForwardMessageToDeadLetterQueue and QueryAssignment.
//!
//! ```text
//!  receive ─► local hint: anything visible for the group? ── no ─► wait for an apply,
//!     │                                                          an expiry or the deadline
//!     └ yes ─► propose Pop (through the leader) ─► wait until this node applied the pop
//!              ─► read the delivered messages from the local consume queues
//! ```
//! Every change (pop, ack, new invisibility, dead letter) is a Raft command, so all of it
//! survives a failover; the state machine itself lives in `raftmq_storage::pop`.

use std::time::Duration;

use raftmq_proto::raft::v1 as pb;
use raftmq_proto::rocketmq::v2::{self as v2, Code};
use raftmq_storage::dead_letter_topic;

use super::filter::TagFilter;
use super::messages::{now_ms, to_delivered};
use super::status::Rejection;
use super::{Broker, PROPOSE_DEADLINE, validate};

/// Most messages one receive returns (RocketMQ's limit for a pop).
pub const RECEIVE_BATCH_MAX: usize = 32;
/// Longest long poll a receive gets, whatever the client asks (RocketMQ's proxy: 20 s).
pub const RECEIVE_POLL_MAX: Duration = Duration::from_secs(20);
/// Accepted invisible durations of a receive. RocketMQ's lower bound is 10 s; a shorter one
/// is harmless here and makes redelivery quick to try.
pub const INVISIBLE_MIN: Duration = Duration::from_secs(1);
pub const INVISIBLE_MAX: Duration = Duration::from_secs(12 * 3600);
/// Answer this long before the client's deadline, so the reply beats it.
const DEADLINE_MARGIN: Duration = Duration::from_millis(500);

/// A receipt handle: which delivery of which message. Opaque to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiptHandle {
    pub queue_id: u32,
    pub offset: u64,
    pub epoch: u64,
}

impl ReceiptHandle {
    pub fn encode(&self) -> String {
        format!("rmq1.{}.{}.{}", self.queue_id, self.offset, self.epoch)
    }

    pub fn decode(text: &str) -> Result<ReceiptHandle, Rejection> {
        let invalid = || {
            Rejection::new(
                Code::InvalidReceiptHandle,
                format!("`{text}` is not a receipt handle issued by raftmq"),
            )
        };
        let mut parts = text.strip_prefix("rmq1.").ok_or_else(invalid)?.split('.');
        let mut next = || parts.next().ok_or_else(invalid);
        let handle = ReceiptHandle {
            queue_id: next()?.parse().map_err(|_| invalid())?,
            offset: next()?.parse().map_err(|_| invalid())?,
            epoch: next()?.parse().map_err(|_| invalid())?,
        };
        if parts.next().is_some() {
            return Err(invalid());
        }
        Ok(handle)
    }

    fn to_pb(self) -> pb::Receipt {
        pb::Receipt {
            queue_id: self.queue_id,
            offset: self.offset,
            epoch: self.epoch,
        }
    }

    fn from_pb(receipt: pb::Receipt) -> ReceiptHandle {
        ReceiptHandle {
            queue_id: receipt.queue_id,
            offset: receipt.offset,
            epoch: receipt.epoch,
        }
    }
}

fn stale_handle(handle: &str) -> Rejection {
    Rejection::new(
        Code::InvalidReceiptHandle,
        format!(
            "receipt handle `{handle}` is no longer valid: the message was acknowledged, \
             or its invisible time ran out and it was delivered again"
        ),
    )
}

/// The name of a request's consumer group, checked.
fn valid_group(group: Option<&v2::Resource>) -> Result<&str, Rejection> {
    let name = group.map(|g| g.name.as_str()).unwrap_or("");
    validate::group_name(name)?;
    Ok(name)
}

/// The name of a request's topic, checked.
pub fn valid_topic(topic: Option<&v2::Resource>) -> Result<&str, Rejection> {
    let name = topic.map(|t| t.name.as_str()).unwrap_or("");
    validate::topic_name(name)?;
    Ok(name)
}

/// What a ChangeInvisible or DeadLetter command found: the delivery's new receipt, or a
/// stale-handle rejection.
fn receipt_outcome(
    result: pb::CommandResult,
    handle: &str,
    what: &str,
) -> Result<pb::Receipt, Rejection> {
    match result.kind {
        Some(pb::command_result::Kind::Receipt(result))
            if result.outcome == pb::ReceiptOutcome::ReceiptDone as i32 =>
        {
            Ok(result.receipt.unwrap_or_default())
        }
        Some(pb::command_result::Kind::Receipt(_)) => Err(stale_handle(handle)),
        other => Err(Rejection::internal(format!(
            "unexpected result of {what}: {other:?}"
        ))),
    }
}

fn duration_of(duration: Option<&prost_types::Duration>) -> Option<Duration> {
    duration.and_then(|d| Duration::try_from(*d).ok())
}

fn check_invisible(duration: Duration, min: Duration) -> Result<Duration, Rejection> {
    if duration < min || duration > INVISIBLE_MAX {
        return Err(Rejection::new(
            Code::IllegalInvisibleTime,
            format!(
                "invisible duration {duration:?} is outside {min:?}..={:?}",
                INVISIBLE_MAX
            ),
        ));
    }
    Ok(duration)
}

/// Parse a `grpc-timeout` header value ("40000m", "20S", ...).
pub fn grpc_timeout(value: &str) -> Option<Duration> {
    let (amount, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = amount.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// The topic a delivered message is read from: its own, or a dead-letter topic that points
/// at it.
fn delivered_from(topic: &str, mut message: v2::Message) -> v2::Message {
    if topic.starts_with("%DLQ%")
        && let Some(props) = message.system_properties.as_mut()
    {
        let original = message.topic.as_ref().map(|t| t.name.clone());
        props.dead_letter_queue = Some(v2::DeadLetterQueue {
            topic: original.unwrap_or_default(),
            message_id: props.message_id.clone(),
        });
        message.topic = Some(v2::Resource {
            resource_namespace: String::new(),
            name: topic.to_string(),
        });
    }
    message
}

impl Broker {
    /// ReceiveMessage: up to a batch of visible messages, each with a fresh receipt handle;
    /// empty after the long poll when there are none. `deadline` is the client's gRPC timeout.
    pub async fn receive(
        &self,
        request: &v2::ReceiveMessageRequest,
        deadline: Option<Duration>,
        client_id: &str,
    ) -> Result<Vec<v2::Message>, Rejection> {
        let group = valid_group(request.group.as_ref())?;
        let queue = request
            .message_queue
            .as_ref()
            .ok_or_else(|| Rejection::bad_request("ReceiveMessage without message_queue"))?;
        let topic = self
            .topic_for_read(queue.topic.as_ref().map(|t| t.name.as_str()).unwrap_or(""))
            .await?;
        let filter = TagFilter::parse(request.filter_expression.as_ref())?;
        let tags = match filter {
            TagFilter::All => Vec::new(),
            TagFilter::AnyOf(tags) => tags,
        };
        let batch = match request.batch_size {
            n if n <= 0 => RECEIVE_BATCH_MAX,
            n => (n as usize).min(RECEIVE_BATCH_MAX),
        };
        let invisible = if request.auto_renew {
            // Push consumers send none: the broker renews it until they ack (`renewals.rs`).
            self.config.push_invisible
        } else {
            let requested = duration_of(request.invisible_duration.as_ref()).ok_or_else(|| {
                Rejection::new(
                    Code::IllegalInvisibleTime,
                    "ReceiveMessage without invisible_duration",
                )
            })?;
            check_invisible(requested, INVISIBLE_MIN)?
        };
        let mut poll = duration_of(request.long_polling_timeout.as_ref())
            .unwrap_or(RECEIVE_POLL_MAX)
            .min(RECEIVE_POLL_MAX);
        if let Some(deadline) = deadline {
            poll = poll.min(deadline.saturating_sub(DEADLINE_MARGIN));
        }
        // Any queue of the topic, the one asked for first (id -1 means "any").
        let start = u32::try_from(queue.id).unwrap_or(0) % topic.queues.max(1);
        let queues: Vec<u32> = (0..topic.queues)
            .map(|i| (start + i) % topic.queues)
            .collect();

        let state = &self.node.state;
        let give_up = tokio::time::Instant::now() + poll;
        let mut applied = state.subscribe_applied();
        loop {
            applied.borrow_and_update();
            let now = now_ms();
            let hint = state.pop_hint(group, &topic.name, &queues, now, false);
            if hint.ready {
                let command = pb::Command {
                    kind: Some(pb::command::Kind::Pop(pb::Pop {
                        group: group.to_string(),
                        topic: topic.name.clone(),
                        queue_ids: queues.clone(),
                        max_messages: batch as u32,
                        now_ms: now,
                        invisible_ms: invisible.as_millis() as i64,
                        tags: tags.clone(),
                        start_at_end: false,
                    })),
                };
                let popped = match self.node.propose(command, PROPOSE_DEADLINE).await?.kind {
                    Some(pb::command_result::Kind::Pop(popped)) => popped,
                    other => {
                        return Err(Rejection::internal(format!(
                            "unexpected result of a pop: {other:?}"
                        )));
                    }
                };
                // The deliveries are read from this node's state: wait until it has applied
                // the pop (hence every message before it).
                let reached = tokio::time::timeout(
                    PROPOSE_DEADLINE,
                    applied.wait_for(|a| *a >= popped.log_index),
                )
                .await;
                if !matches!(reached, Ok(Ok(_))) {
                    return Err(Rejection::new(
                        Code::ProxyTimeout,
                        "this node fell behind the group; retry",
                    ));
                }
                if !popped.deliveries.is_empty() {
                    if request.auto_renew {
                        self.renewals
                            .track(group, &topic.name, client_id, &popped.deliveries);
                    }
                    return self.read_deliveries(&topic.name, popped.deliveries, invisible);
                }
                continue;
            }
            let mut wake = give_up;
            if let Some(expiry) = hint.next_expiry_ms {
                let wait = Duration::from_millis((expiry - now).max(0) as u64);
                wake = wake.min(tokio::time::Instant::now() + wait);
            }
            if tokio::time::Instant::now() >= give_up {
                return Ok(Vec::new());
            }
            let _ = tokio::time::timeout_at(wake, applied.changed()).await;
        }
    }

    fn read_deliveries(
        &self,
        topic: &str,
        deliveries: Vec<pb::Delivery>,
        invisible: Duration,
    ) -> Result<Vec<v2::Message>, Rejection> {
        let store_host = &self.config.me().client_addr;
        let mut messages = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            let receipt = delivery.receipt.unwrap_or_default();
            let Some(record) =
                self.node
                    .state
                    .read_message(topic, receipt.queue_id, receipt.offset)?
            else {
                tracing::warn!(
                    topic,
                    queue = receipt.queue_id,
                    offset = receipt.offset,
                    "a delivered message is no longer stored"
                );
                continue;
            };
            let mut message = delivered_from(topic, to_delivered(record, store_host));
            if let Some(props) = message.system_properties.as_mut() {
                props.receipt_handle = Some(ReceiptHandle::from_pb(receipt).encode());
                props.delivery_attempt = Some(delivery.attempt as i32);
                props.invisible_duration = prost_types::Duration::try_from(invisible).ok();
            }
            messages.push(message);
        }
        Ok(messages)
    }

    /// AckMessage: one outcome per entry, in order.
    pub async fn ack(
        &self,
        request: &v2::AckMessageRequest,
    ) -> Result<Vec<Result<(), Rejection>>, Rejection> {
        let group = valid_group(request.group.as_ref())?;
        let topic = valid_topic(request.topic.as_ref())?;
        if request.entries.is_empty() {
            return Err(Rejection::bad_request("AckMessage without entries"));
        }
        let handles: Vec<Result<ReceiptHandle, Rejection>> = request
            .entries
            .iter()
            .map(|e| ReceiptHandle::decode(&e.receipt_handle))
            .collect();
        let receipts: Vec<pb::Receipt> = handles
            .iter()
            .filter_map(|h| h.as_ref().ok().map(|h| h.to_pb()))
            .collect();
        for receipt in &receipts {
            self.renewals.forget(group, topic, receipt);
        }
        let mut outcomes = Vec::new();
        if !receipts.is_empty() {
            let command = pb::Command {
                kind: Some(pb::command::Kind::Ack(pb::Ack {
                    group: group.to_string(),
                    topic: topic.to_string(),
                    receipts,
                })),
            };
            match self.node.propose(command, PROPOSE_DEADLINE).await?.kind {
                Some(pb::command_result::Kind::Ack(result)) => outcomes = result.outcomes,
                other => {
                    return Err(Rejection::internal(format!(
                        "unexpected result of an ack: {other:?}"
                    )));
                }
            }
        }
        let mut outcomes = outcomes.into_iter();
        Ok(handles
            .into_iter()
            .zip(&request.entries)
            .map(|(handle, entry)| {
                handle?;
                match outcomes.next() {
                    Some(o) if o == pb::ReceiptOutcome::ReceiptDone as i32 => Ok(()),
                    _ => Err(stale_handle(&entry.receipt_handle)),
                }
            })
            .collect())
    }

    /// ChangeInvisibleDuration: the message becomes visible again after `invisible_duration`
    /// (0 = now: a nack); returns the new receipt handle.
    pub async fn change_invisible(
        &self,
        request: &v2::ChangeInvisibleDurationRequest,
    ) -> Result<String, Rejection> {
        let group = valid_group(request.group.as_ref())?;
        let topic = valid_topic(request.topic.as_ref())?;
        let handle = ReceiptHandle::decode(&request.receipt_handle)?;
        let duration = duration_of(request.invisible_duration.as_ref()).ok_or_else(|| {
            Rejection::new(
                Code::IllegalInvisibleTime,
                "ChangeInvisibleDuration without a valid invisible_duration",
            )
        })?;
        let duration = check_invisible(duration, Duration::ZERO)?;
        let command = pb::Command {
            kind: Some(pb::command::Kind::ChangeInvisible(pb::ChangeInvisible {
                group: group.to_string(),
                topic: topic.to_string(),
                receipt: Some(handle.to_pb()),
                now_ms: now_ms(),
                invisible_ms: duration.as_millis() as i64,
            })),
        };
        let result = self.node.propose(command, PROPOSE_DEADLINE).await?;
        let receipt = receipt_outcome(result, &request.receipt_handle, "change invisible")?;
        Ok(ReceiptHandle::from_pb(receipt).encode())
    }

    /// ForwardMessageToDeadLetterQueue: move a delivered message to `%DLQ%<group>` now.
    pub async fn forward_to_dead_letter(
        &self,
        request: &v2::ForwardMessageToDeadLetterQueueRequest,
    ) -> Result<(), Rejection> {
        let group = valid_group(request.group.as_ref())?;
        let topic = valid_topic(request.topic.as_ref())?;
        let handle = ReceiptHandle::decode(&request.receipt_handle)?;
        let command = pb::Command {
            kind: Some(pb::command::Kind::DeadLetter(pb::DeadLetter {
                group: group.to_string(),
                topic: topic.to_string(),
                receipt: Some(handle.to_pb()),
                now_ms: now_ms(),
            })),
        };
        let result = self.node.propose(command, PROPOSE_DEADLINE).await?;
        receipt_outcome(result, &request.receipt_handle, "a dead-letter forward")?;
        tracing::info!(
            group,
            topic,
            dead_letter_topic = %dead_letter_topic(group),
            message_id = %request.message_id,
            "message forwarded to the dead-letter topic"
        );
        Ok(())
    }

    /// QueryAssignment (push consumers): which queues to receive from. A FIFO group gets one
    /// assignment per queue (each consumed in order); any other group one assignment with
    /// queue id -1, meaning "any queue", as RocketMQ's proxy answers.
    pub async fn assignments(
        &self,
        request: &v2::QueryAssignmentRequest,
        endpoints: impl Fn(i32) -> v2::Endpoints,
    ) -> Result<Vec<v2::Assignment>, Rejection> {
        let group = valid_group(request.group.as_ref())?;
        let topic_name = request
            .topic
            .as_ref()
            .map(|t| t.name.as_str())
            .unwrap_or("");
        let topic = self.topic_for_read(topic_name).await?;
        let fifo = self.node.state.group(group).is_some_and(|g| g.fifo);
        let queue_ids: Vec<i32> = if fifo {
            (0..topic.queues as i32).collect()
        } else {
            vec![-1]
        };
        Ok(queue_ids
            .into_iter()
            .map(|id| v2::Assignment {
                message_queue: Some(v2::MessageQueue {
                    topic: request.topic.clone(),
                    id,
                    permission: v2::Permission::ReadWrite as i32,
                    broker: Some(v2::Broker {
                        name: self.config.group.clone(),
                        id: 0,
                        endpoints: Some(endpoints(id)),
                    }),
                    accept_message_types: validate::accepted_message_types(topic.message_type),
                }),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipt_handles_round_trip_and_junk_is_refused() {
        let handle = ReceiptHandle {
            queue_id: 7,
            offset: 123_456,
            epoch: 99,
        };
        assert_eq!(
            Ok(handle),
            ReceiptHandle::decode(&handle.encode()).map_err(|e| e.code)
        );
        for junk in [
            "",
            "rmq1.",
            "rmq1.1.2",
            "rmq1.1.2.3.4",
            "x.1.2.3",
            "rmq1.a.2.3",
        ] {
            assert_eq!(
                Err(Code::InvalidReceiptHandle),
                ReceiptHandle::decode(junk).map_err(|e| e.code),
                "{junk}"
            );
        }
    }

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(Some(Duration::from_secs(40)), grpc_timeout("40000m"));
        assert_eq!(Some(Duration::from_secs(20)), grpc_timeout("20S"));
        assert_eq!(Some(Duration::from_secs(120)), grpc_timeout("2M"));
        assert_eq!(Some(Duration::from_millis(3)), grpc_timeout("3000u"));
        assert_eq!(None, grpc_timeout("5x"));
        assert_eq!(None, grpc_timeout(""));
    }

    #[test]
    fn invisible_durations_outside_the_range_are_refused() {
        assert!(check_invisible(Duration::from_secs(15), INVISIBLE_MIN).is_ok());
        assert_eq!(
            Some(Code::IllegalInvisibleTime),
            check_invisible(Duration::from_millis(10), INVISIBLE_MIN)
                .err()
                .map(|e| e.code)
        );
        assert_eq!(
            Some(Code::IllegalInvisibleTime),
            check_invisible(Duration::from_secs(13 * 3600), Duration::ZERO)
                .err()
                .map(|e| e.code)
        );
    }
}
