//! `apache.rocketmq.v2.MessagingService`: the client API the official RocketMQ 5 clients use.
//!
//! Every reply carries its outcome in-band (`Status{code, message}`) with gRPC OK, as the
//! official proxy does. Implemented here: routes, heartbeats, telemetry settings, sends, and
//! offset-based consumption (PullMessage and the offset RPCs). The POP-style calls
//! (ReceiveMessage, Ack, ChangeInvisibleDuration, DLQ), transactions and lite topics answer
//! NOT_IMPLEMENTED for now.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use raftmq_proto::raft::v1 as pb;
use raftmq_proto::rocketmq::v2::messaging_service_server::{
    MessagingService, MessagingServiceServer,
};
use raftmq_proto::rocketmq::v2::{self as v2, Code};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::consumer::grpc_timeout;
use super::filter::TagFilter;
use super::group_clients::{Activity, ConsumerKind};
use super::messages::{now_ms, to_delivered, to_stored};
use super::status::{ClientKind, Rejection, ok};
use super::{Broker, MAX_CLIENT_MESSAGE_BYTES, PROPOSE_DEADLINE, validate};

/// When the client gives up on a call: its `grpc-timeout`, if it sent one.
fn client_timeout<T>(request: &Request<T>) -> Option<Duration> {
    request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(grpc_timeout)
}

/// How long a call may take to write: until the client gives up, and never longer than
/// `PROPOSE_DEADLINE`.
fn call_deadline<T>(request: &Request<T>) -> Duration {
    client_timeout(request).map_or(PROPOSE_DEADLINE, |timeout| timeout.min(PROPOSE_DEADLINE))
}

/// Longest long poll the broker grants, whatever the client asks.
const LONG_POLL_MAX: Duration = Duration::from_secs(30);
/// Most messages one PullMessage returns.
const PULL_BATCH_MAX: usize = 1024;
/// Roughly how many body bytes one PullMessage returns (at least one message).
const PULL_BYTES_MAX: usize = 8 * 1024 * 1024;

#[derive(Clone)]
pub struct Messaging {
    broker: Arc<Broker>,
    /// Handles looked up once: `metrics::histogram!` and the like look their metric up in
    /// the registry on every call, and a send is one call per message for most producers.
    send_seconds: metrics::Histogram,
    messages_produced: metrics::Counter,
}

impl Messaging {
    /// Call after the metrics recorder is installed: the handles are bound to it here.
    pub fn new(broker: Arc<Broker>) -> Messaging {
        Messaging {
            broker,
            send_seconds: metrics::histogram!("raftmq_send_seconds"),
            messages_produced: metrics::counter!("raftmq_messages_produced_total"),
        }
    }
}

/// The tonic service over `messaging`, for every call the client port does not serve itself.
pub fn service(messaging: Arc<Messaging>) -> MessagingServiceServer<Messaging> {
    MessagingServiceServer::from_arc(messaging)
        .max_decoding_message_size(MAX_CLIENT_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_CLIENT_MESSAGE_BYTES)
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn resource_name(resource: Option<&v2::Resource>) -> &str {
    resource.map(|r| r.name.as_str()).unwrap_or_default()
}

/// The client id the official clients send with every call.
fn client_id_of<T>(request: &Request<T>) -> String {
    request
        .metadata()
        .get("x-mq-client-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Who made a call, for the list of a group's clients: the client id the official clients
/// send, or the peer's address for a client that sends none.
fn caller_of<T>(request: &Request<T>) -> String {
    let id = client_id_of(request);
    if !id.is_empty() {
        return id;
    }
    match request.remote_addr() {
        Some(addr) => format!("unnamed client at {addr}"),
        None => "unnamed client".into(),
    }
}

fn rejected(rpc: &'static str, client: ClientKind, rejection: &Rejection) -> v2::Status {
    if rejection.code == Code::TooManyRequests {
        // Overload and a full disk refuse every send while they last; each is logged once
        // where it starts and ends, and a line per refused call would add to the load.
        tracing::debug!(rpc, code = ?rejection.code, message = %rejection.message, "request rejected");
    } else {
        tracing::info!(rpc, code = ?rejection.code, message = %rejection.message, "request rejected");
    }
    metrics::counter!(
        "raftmq_requests_rejected_total",
        "rpc" => rpc,
        "code" => rejection.code.as_str_name()
    )
    .increment(1);
    client.status(rejection)
}

fn not_implemented(rpc: &str) -> v2::Status {
    v2::Status {
        code: Code::NotImplemented as i32,
        message: format!("{rpc} is not implemented by raftmq yet"),
    }
}

fn endpoints_of(addrs: &[&str], own: &str) -> v2::Endpoints {
    let parsed: Vec<(String, i32)> = addrs
        .iter()
        .filter_map(|addr| {
            let (host, port) = addr.rsplit_once(':')?;
            Some((
                host.trim_matches(['[', ']']).to_string(),
                port.parse().ok()?,
            ))
        })
        .collect();
    let all = |f: fn(&std::net::IpAddr) -> bool| {
        parsed
            .iter()
            .all(|(host, _)| host.parse::<std::net::IpAddr>().as_ref().is_ok_and(f))
    };
    let (scheme, chosen) = if all(std::net::IpAddr::is_ipv4) {
        (v2::AddressScheme::IPv4, parsed)
    } else if all(std::net::IpAddr::is_ipv6) {
        (v2::AddressScheme::IPv6, parsed)
    } else {
        // Clients accept a single address with DOMAIN_NAME: advertise this node only.
        let own = own
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host.to_string(), port.parse().ok()?)))
            .into_iter()
            .collect();
        (v2::AddressScheme::DomainName, own)
    };
    v2::Endpoints {
        scheme: scheme as i32,
        addresses: chosen
            .into_iter()
            .map(|(host, port)| v2::Address { host, port })
            .collect(),
    }
}

impl Messaging {
    /// A consumer's call that succeeded, for the group's list of consumers online.
    fn consumer_seen(
        &self,
        caller: &str,
        group: Option<&v2::Resource>,
        topic: Option<&v2::Resource>,
        activity: Activity,
    ) {
        self.broker.group_clients.touched(
            resource_name(group),
            caller,
            resource_name(topic),
            activity,
        );
    }

    /// The endpoints a client is told to use for queue `queue_id` (-1: any queue).
    ///
    /// The Rust client balances over several addresses in one `Endpoints`, so it gets every
    /// node and survives the death of any. Other clients (Python's gRPC) send such a list as
    /// one malformed HTTP/2 `:authority`, which the server must reject; they get one node per
    /// queue, spread over the group, and reach the other nodes by retrying on another queue.
    fn endpoints(&self, client: ClientKind, queue_id: i32) -> v2::Endpoints {
        let broker = &self.broker;
        let own = broker.config.me().client_addr.as_str();
        // The current voters: members added or removed at runtime are reflected at once.
        let voters = broker.node.voters();
        let addrs: Vec<&str> = voters.iter().map(|(_, n)| n.client_addr.as_str()).collect();
        if client == ClientKind::Rust {
            return endpoints_of(&addrs, own);
        }
        let chosen = match usize::try_from(queue_id) {
            Ok(queue) if !addrs.is_empty() => addrs[queue % addrs.len()],
            _ => own,
        };
        endpoints_of(&[chosen], own)
    }

    async fn route(
        &self,
        request: &v2::QueryRouteRequest,
        client: ClientKind,
    ) -> Result<Vec<v2::MessageQueue>, Rejection> {
        let broker = &self.broker;
        let topic = broker
            .topic_for_read(resource_name(request.topic.as_ref()))
            .await?;
        let resource = request.topic.clone().unwrap_or_default();
        Ok((0..topic.queues)
            .map(|id| v2::MessageQueue {
                topic: Some(resource.clone()),
                id: id as i32,
                permission: v2::Permission::ReadWrite as i32,
                broker: Some(v2::Broker {
                    name: broker.config.group.clone(),
                    id: 0,
                    endpoints: Some(self.endpoints(client, id as i32)),
                }),
                accept_message_types: validate::accepted_message_types(topic.message_type),
            })
            .collect())
    }

    /// Store the request's messages; returns, for each in order, where it was stored and
    /// whether it is a transaction's half message.
    async fn send(
        &self,
        request: v2::SendMessageRequest,
        client_id: &str,
    ) -> Result<Vec<(pb::AppendedMessage, bool)>, Rejection> {
        let broker = &self.broker;
        let Some(first) = request.messages.first() else {
            return Err(Rejection::new(
                Code::MessageCorrupted,
                "SendMessage without messages",
            ));
        };
        let topic_name = resource_name(first.topic.as_ref()).to_string();
        if request
            .messages
            .iter()
            .any(|m| resource_name(m.topic.as_ref()) != topic_name)
        {
            return Err(Rejection::new(
                Code::MessageCorrupted,
                "all messages of one SendMessage must share a topic",
            ));
        }
        validate::topic_name(&topic_name)?;
        let now = now_ms();
        for message in &request.messages {
            validate::message(message, broker.config.max_body_bytes)?;
            validate::delivery_time(message, now, broker.config.max_delay)?;
        }
        let topic = broker.topic_for_send(&topic_name).await?;
        for message in &request.messages {
            validate::message_type_fits(message, topic.message_type)?;
        }
        let group = first
            .system_properties
            .as_ref()
            .and_then(|p| p.message_group.as_deref());
        let queue_id = broker.choose_queue(&topic, group);
        let store_ms = now_ms();
        let count = request.messages.len();
        let mut transactional = Vec::with_capacity(count);
        let mut messages = Vec::with_capacity(count);
        for message in request.messages {
            let is_half = message
                .system_properties
                .as_ref()
                .is_some_and(|p| p.message_type == v2::MessageType::Transaction as i32);
            let first_check = if is_half {
                super::transactions::first_check_ms(
                    &message,
                    store_ms,
                    broker.config.transaction_check_after,
                )?
            } else {
                0
            };
            let mut stored = to_stored(message, &topic_name, queue_id, store_ms);
            if is_half {
                stored.producer_client_id = client_id.to_string();
                stored.first_check_ms = first_check;
            }
            transactional.push(is_half);
            messages.push(stored);
        }
        let appended = broker.sends.append(messages).await?;
        if appended.len() != count {
            return Err(Rejection::internal(
                "the broker stored a different number of messages than it was sent",
            ));
        }
        Ok(appended.into_iter().zip(transactional).collect())
    }

    async fn pull(
        &self,
        request: &v2::PullMessageRequest,
    ) -> Result<(Vec<v2::Message>, u64), Rejection> {
        let broker = &self.broker;
        validate::group_name(resource_name(request.group.as_ref()))?;
        let queue = request
            .message_queue
            .as_ref()
            .ok_or_else(|| Rejection::bad_request("PullMessage without message_queue"))?;
        let topic = broker
            .topic_for_read(resource_name(queue.topic.as_ref()))
            .await?;
        let queue_id = broker.check_queue(&topic, queue.id)?;
        let filter = TagFilter::parse(request.filter_expression.as_ref())?;
        let batch = match request.batch_size {
            n if n <= 0 => 32,
            n => (n as usize).min(PULL_BATCH_MAX),
        };
        let poll = request
            .long_polling_timeout
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or_default()
            .min(LONG_POLL_MAX);
        let state = &broker.node.state;
        let next = state.queue_next_offset(&topic.name, queue_id);
        let requested = u64::try_from(request.offset)
            .map_err(|_| Rejection::new(Code::IllegalOffset, "negative offset"))?;
        if requested > next {
            return Err(Rejection::new(
                Code::IllegalOffset,
                format!("offset {requested} is past the end of the queue ({next})"),
            ));
        }
        // Below the retained range: start from the oldest retained message, as RocketMQ does.
        let mut from = requested.max(state.queue_min_offset(&topic.name, queue_id)?);
        let deadline = tokio::time::Instant::now() + poll;
        let mut applied = state.subscribe_applied();
        loop {
            applied.borrow_and_update();
            let records = state.read_queue(&topic.name, queue_id, from, batch, PULL_BYTES_MAX)?;
            if let Some(last) = records.last() {
                from = last.queue_offset + 1;
                let store_host = &broker.config.me().client_addr;
                let matching: Vec<v2::Message> = records
                    .into_iter()
                    .filter(|r| filter.matches(r.message.tag.as_deref()))
                    .map(|r| to_delivered(r, store_host))
                    .collect();
                if !matching.is_empty() {
                    return Ok((matching, from));
                }
                continue;
            }
            if tokio::time::timeout_at(deadline, applied.changed())
                .await
                .is_err()
            {
                return Ok((Vec::new(), from));
            }
        }
    }

    fn message_queue<'a>(
        &self,
        queue: Option<&'a v2::MessageQueue>,
    ) -> Result<&'a v2::MessageQueue, Rejection> {
        queue.ok_or_else(|| Rejection::bad_request("request without message_queue"))
    }

    async fn query_offset(&self, request: &v2::QueryOffsetRequest) -> Result<u64, Rejection> {
        let queue = self.message_queue(request.message_queue.as_ref())?;
        let topic = self
            .broker
            .topic_for_read(resource_name(queue.topic.as_ref()))
            .await?;
        let queue_id = self.broker.check_queue(&topic, queue.id)?;
        let state = &self.broker.node.state;
        let policy =
            v2::QueryOffsetPolicy::try_from(request.query_offset_policy).map_err(|_| {
                Rejection::bad_request(format!(
                    "unknown query_offset_policy {}",
                    request.query_offset_policy
                ))
            })?;
        Ok(match policy {
            v2::QueryOffsetPolicy::Beginning => state.queue_min_offset(&topic.name, queue_id)?,
            v2::QueryOffsetPolicy::End => state.queue_next_offset(&topic.name, queue_id),
            v2::QueryOffsetPolicy::Timestamp => {
                let ts = request
                    .timestamp
                    .as_ref()
                    .ok_or_else(|| Rejection::bad_request("TIMESTAMP policy without timestamp"))?;
                let ms = ts.seconds.saturating_mul(1000) + i64::from(ts.nanos / 1_000_000);
                state.queue_offset_at_time(&topic.name, queue_id, ms)?
            }
        })
    }

    async fn get_offset(&self, request: &v2::GetOffsetRequest) -> Result<u64, Rejection> {
        let group = resource_name(request.group.as_ref());
        validate::group_name(group)?;
        let queue = self.message_queue(request.message_queue.as_ref())?;
        let topic = self
            .broker
            .topic_for_read(resource_name(queue.topic.as_ref()))
            .await?;
        let queue_id = self.broker.check_queue(&topic, queue.id)?;
        // A consumer resumes from this offset: a node that lags behind (or was cut off and
        // does not know it yet) must not hand out an offset older than one already
        // committed, or the group would consume a stretch again. Read what is committed.
        self.broker.node.read_barrier(PROPOSE_DEADLINE).await?;
        self.broker
            .node
            .state
            .consumer_offset(group, &topic.name, queue_id)?
            .ok_or_else(|| {
                Rejection::new(
                    Code::OffsetNotFound,
                    format!(
                        "group `{group}` has no offset for {}:{queue_id}",
                        topic.name
                    ),
                )
            })
    }

    /// Commit a consumer offset. The commit is conditional: it applies only if the offset has
    /// not changed since the view this node had while the caller was still waiting. So a
    /// commit held up on the way (a slow link, a leader change) and applied after its caller
    /// timed out and committed a newer offset is dropped, and cannot move the offset back.
    /// A newer commit from elsewhere seen on the way is taken in and the commit retried, so
    /// concurrent committers still get the last one's offset, as in RocketMQ.
    async fn update_offset(
        &self,
        request: &v2::UpdateOffsetRequest,
        deadline: Duration,
    ) -> Result<(), Rejection> {
        let give_up = std::time::Instant::now() + deadline;
        let group = resource_name(request.group.as_ref());
        validate::group_name(group)?;
        let queue = self.message_queue(request.message_queue.as_ref())?;
        let topic = self
            .broker
            .topic_for_read(resource_name(queue.topic.as_ref()))
            .await?;
        let queue_id = self.broker.check_queue(&topic, queue.id)?;
        let offset = u64::try_from(request.offset)
            .map_err(|_| Rejection::new(Code::IllegalOffset, "negative offset"))?;
        let next = self
            .broker
            .node
            .state
            .queue_next_offset(&topic.name, queue_id);
        if offset > next {
            return Err(Rejection::new(
                Code::IllegalOffset,
                format!("offset {offset} is past the end of the queue ({next})"),
            ));
        }
        // Any index seen before the deadline is safe to name: a commit the caller makes after
        // giving up on this one lands later in the log, so it is never taken in.
        let mut seen = self.broker.node.state.applied_index();
        loop {
            let left = give_up.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(Rejection::new(
                    Code::ProxyTimeout,
                    format!(
                        "the offset of group `{group}` on {}:{queue_id} kept changing while this \
                         commit waited, and the call's deadline passed; nothing was written",
                        topic.name
                    ),
                ));
            }
            let command = pb::Command {
                kind: Some(pb::command::Kind::CommitOffset(pb::CommitOffset {
                    group: group.to_string(),
                    topic: topic.name.clone(),
                    queue_id,
                    offset,
                    unless_changed_after: Some(seen),
                })),
            };
            match self.broker.node.propose(command, left).await?.kind {
                Some(pb::command_result::Kind::Offset(pb::OffsetResult { changed_at: None })) => {
                    return Ok(());
                }
                Some(pb::command_result::Kind::Offset(pb::OffsetResult {
                    changed_at: Some(changed_at),
                })) => seen = seen.max(changed_at),
                other => {
                    return Err(Rejection::internal(format!(
                        "an offset commit was applied with an unexpected result: {other:?}"
                    )));
                }
            }
        }
    }

    /// The settings a client gets back on Telemetry: its own, completed with the broker's.
    fn merged_settings(&self, mut settings: v2::Settings) -> v2::Settings {
        match settings.pub_sub.as_mut() {
            Some(v2::settings::PubSub::Publishing(publishing)) => {
                publishing.max_body_size = self.broker.config.max_body_bytes as i32;
                settings.backoff_policy = Some(v2::RetryPolicy {
                    max_attempts: 3,
                    strategy: Some(v2::retry_policy::Strategy::ExponentialBackoff(
                        v2::ExponentialBackoff {
                            initial: Some(prost_types::Duration {
                                seconds: 0,
                                nanos: 10_000_000,
                            }),
                            max: Some(prost_types::Duration {
                                seconds: 1,
                                nanos: 0,
                            }),
                            multiplier: 2.0,
                        },
                    )),
                });
            }
            Some(v2::settings::PubSub::Subscription(subscription)) => {
                subscription.receive_batch_size = Some(super::consumer::RECEIVE_BATCH_MAX as i32);
                // The group's settings decide, not the client's wish (as in RocketMQ).
                let group = subscription
                    .group
                    .as_ref()
                    .and_then(|g| self.broker.node.state.group(&g.name));
                subscription.fifo = Some(group.as_ref().is_some_and(|g| g.fifo));
                let max_attempts = group
                    .map(|g| g.max_delivery_attempts)
                    .filter(|n| *n > 0)
                    .unwrap_or(raftmq_storage::DEFAULT_MAX_DELIVERY_ATTEMPTS);
                // RocketMQ's redelivery ladder; push consumers nack with these delays.
                let ladder = [
                    1, 5, 10, 30, 60, 120, 180, 240, 300, 360, 420, 480, 540, 600, 1200, 1800,
                    3600, 7200,
                ];
                settings.backoff_policy = Some(v2::RetryPolicy {
                    max_attempts: max_attempts as i32,
                    strategy: Some(v2::retry_policy::Strategy::CustomizedBackoff(
                        v2::CustomizedBackoff {
                            next: ladder
                                .iter()
                                .map(|s| prost_types::Duration {
                                    seconds: *s,
                                    nanos: 0,
                                })
                                .collect(),
                        },
                    )),
                });
                let requested = subscription
                    .long_polling_timeout
                    .and_then(|d| Duration::try_from(d).ok())
                    .unwrap_or(Duration::from_secs(20));
                let granted = requested.clamp(Duration::from_secs(5), Duration::from_secs(20));
                subscription.long_polling_timeout = prost_types::Duration::try_from(granted).ok();
            }
            None => {}
        }
        settings.metric = Some(v2::Metric {
            on: false,
            endpoints: None,
        });
        settings
    }
}

#[tonic::async_trait]
impl MessagingService for Messaging {
    async fn query_route(
        &self,
        request: Request<v2::QueryRouteRequest>,
    ) -> Result<Response<v2::QueryRouteResponse>, Status> {
        let client = ClientKind::of(&request);
        let reply = match self.route(request.get_ref(), client).await {
            Ok(message_queues) => v2::QueryRouteResponse {
                status: Some(ok()),
                message_queues,
            },
            Err(rejection) => v2::QueryRouteResponse {
                status: Some(rejected("QueryRoute", client, &rejection)),
                message_queues: Vec::new(),
            },
        };
        Ok(Response::new(reply))
    }

    async fn heartbeat(
        &self,
        request: Request<v2::HeartbeatRequest>,
    ) -> Result<Response<v2::HeartbeatResponse>, Status> {
        let caller = caller_of(&request);
        let request = request.into_inner();
        let kind = ConsumerKind::from_client_type(request.client_type);
        if let (Some(group), Some(kind)) = (request.group, kind)
            && validate::group_name(&group.name).is_ok()
        {
            self.broker
                .group_clients
                .heartbeat(&group.name, &caller, kind);
        }
        Ok(Response::new(v2::HeartbeatResponse { status: Some(ok()) }))
    }

    async fn send_message(
        &self,
        request: Request<v2::SendMessageRequest>,
    ) -> Result<Response<v2::SendMessageResponse>, Status> {
        let client = ClientKind::of(&request);
        let client_id = client_id_of(&request);
        let request = request.into_inner();
        let count = request.messages.len().max(1);
        let ids: Vec<String> = request
            .messages
            .iter()
            .map(|m| {
                m.system_properties
                    .as_ref()
                    .map(|p| p.message_id.clone())
                    .unwrap_or_default()
            })
            .collect();
        let started = std::time::Instant::now();
        let reply = match self.send(request, &client_id).await {
            Ok(stored) => {
                self.send_seconds.record(started.elapsed().as_secs_f64());
                self.messages_produced.increment(stored.len() as u64);
                let entries = ids
                    .into_iter()
                    .zip(stored)
                    .map(|(message_id, (stored, is_half))| v2::SendResultEntry {
                        status: Some(ok()),
                        // A half message's transaction id is its message id.
                        transaction_id: if is_half {
                            message_id.clone()
                        } else {
                            String::new()
                        },
                        message_id,
                        offset: stored.queue_offset as i64,
                        recall_handle: String::new(),
                    })
                    .collect();
                v2::SendMessageResponse {
                    status: Some(ok()),
                    entries,
                }
            }
            Err(rejection) => {
                let status = rejected("SendMessage", client, &rejection);
                // One entry per message even when refused: some clients index into them.
                let entries = (0..count)
                    .map(|i| v2::SendResultEntry {
                        status: Some(status.clone()),
                        message_id: ids.get(i).cloned().unwrap_or_default(),
                        ..Default::default()
                    })
                    .collect();
                v2::SendMessageResponse {
                    status: Some(status),
                    entries,
                }
            }
        };
        Ok(Response::new(reply))
    }

    async fn query_assignment(
        &self,
        request: Request<v2::QueryAssignmentRequest>,
    ) -> Result<Response<v2::QueryAssignmentResponse>, Status> {
        let client = ClientKind::of(&request);
        let reply = match self
            .broker
            // "Any queue" (-1) is served by queue 0's node: a node the client's routes name,
            // so the client also holds a Telemetry stream there (push renewals need it).
            .assignments(request.get_ref(), |queue| {
                self.endpoints(client, queue.max(0))
            })
            .await
        {
            Ok(assignments) => {
                let query = request.get_ref();
                let (group, topic) = (query.group.as_ref(), query.topic.as_ref());
                self.consumer_seen(&caller_of(&request), group, topic, Activity::Receive);
                v2::QueryAssignmentResponse {
                    status: Some(ok()),
                    assignments,
                }
            }
            Err(rejection) => v2::QueryAssignmentResponse {
                status: Some(rejected("QueryAssignment", client, &rejection)),
                assignments: Vec::new(),
            },
        };
        Ok(Response::new(reply))
    }

    type ReceiveMessageStream = BoxStream<v2::ReceiveMessageResponse>;

    async fn receive_message(
        &self,
        request: Request<v2::ReceiveMessageRequest>,
    ) -> Result<Response<Self::ReceiveMessageStream>, Status> {
        use v2::receive_message_response::Content;
        let client = ClientKind::of(&request);
        let client_id = client_id_of(&request);
        let caller = caller_of(&request);
        let deadline = client_timeout(&request);
        let request = request.into_inner();
        // Status first, then the messages, then (always last) the delivery timestamp.
        let received = self.broker.receive(&request, deadline, &client_id).await;
        if received.is_ok() {
            let topic = request
                .message_queue
                .as_ref()
                .and_then(|q| q.topic.as_ref());
            self.consumer_seen(&caller, request.group.as_ref(), topic, Activity::Receive);
        }
        let mut frames = match received {
            Ok(messages) if messages.is_empty() => vec![Content::Status(v2::Status {
                code: Code::MessageNotFound as i32,
                message: "no new message".into(),
            })],
            Ok(messages) => {
                metrics::counter!("raftmq_messages_consumed_total", "via" => "receive")
                    .increment(messages.len() as u64);
                std::iter::once(Content::Status(ok()))
                    .chain(messages.into_iter().map(Content::Message))
                    .collect()
            }
            Err(rejection) => vec![Content::Status(rejected(
                "ReceiveMessage",
                client,
                &rejection,
            ))],
        };
        frames.push(Content::DeliveryTimestamp(prost_types::Timestamp::from(
            std::time::SystemTime::now(),
        )));
        let stream = futures::stream::iter(frames.into_iter().map(|content| {
            Ok(v2::ReceiveMessageResponse {
                content: Some(content),
            })
        }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn ack_message(
        &self,
        request: Request<v2::AckMessageRequest>,
    ) -> Result<Response<v2::AckMessageResponse>, Status> {
        let client = ClientKind::of(&request);
        let caller = caller_of(&request);
        let request = request.into_inner();
        let outcomes = match self.broker.ack(&request).await {
            Ok(outcomes) => {
                let (group, topic) = (request.group.as_ref(), request.topic.as_ref());
                self.consumer_seen(&caller, group, topic, Activity::Receive);
                outcomes
            }
            Err(rejection) => request
                .entries
                .iter()
                .map(|_| Err(rejection.clone()))
                .collect(),
        };
        let statuses: Vec<v2::Status> = outcomes
            .iter()
            .map(|outcome| match outcome {
                Ok(()) => ok(),
                Err(rejection) => rejected("AckMessage", client, rejection),
            })
            .collect();
        let status = match statuses.first() {
            // An ack without entries: refused as a whole.
            None => rejected(
                "AckMessage",
                client,
                &Rejection::bad_request("AckMessage without entries"),
            ),
            Some(first) if statuses.iter().all(|s| s.code == first.code) => first.clone(),
            Some(_) => v2::Status {
                code: Code::MultipleResults as i32,
                message: "the entries have different outcomes".into(),
            },
        };
        let entries = request
            .entries
            .into_iter()
            .zip(statuses)
            .map(|(entry, status)| v2::AckMessageResultEntry {
                message_id: entry.message_id,
                receipt_handle: entry.receipt_handle,
                status: Some(status),
            })
            .collect();
        Ok(Response::new(v2::AckMessageResponse {
            status: Some(status),
            entries,
        }))
    }

    async fn forward_message_to_dead_letter_queue(
        &self,
        request: Request<v2::ForwardMessageToDeadLetterQueueRequest>,
    ) -> Result<Response<v2::ForwardMessageToDeadLetterQueueResponse>, Status> {
        let client = ClientKind::of(&request);
        let status = match self.broker.forward_to_dead_letter(request.get_ref()).await {
            Ok(()) => ok(),
            Err(rejection) => rejected("ForwardMessageToDeadLetterQueue", client, &rejection),
        };
        Ok(Response::new(v2::ForwardMessageToDeadLetterQueueResponse {
            status: Some(status),
        }))
    }

    type PullMessageStream = BoxStream<v2::PullMessageResponse>;

    async fn pull_message(
        &self,
        request: Request<v2::PullMessageRequest>,
    ) -> Result<Response<Self::PullMessageStream>, Status> {
        use v2::pull_message_response::Content;
        let client = ClientKind::of(&request);
        let caller = caller_of(&request);
        let request = request.into_inner();
        let frames = match self.pull(&request).await {
            Ok((messages, next_offset)) => {
                let topic = request
                    .message_queue
                    .as_ref()
                    .and_then(|q| q.topic.as_ref());
                self.consumer_seen(&caller, request.group.as_ref(), topic, Activity::Pull);
                metrics::counter!("raftmq_messages_consumed_total", "via" => "pull")
                    .increment(messages.len() as u64);
                let status = if messages.is_empty() {
                    v2::Status {
                        code: Code::MessageNotFound as i32,
                        message: "no new message".into(),
                    }
                } else {
                    ok()
                };
                let mut frames = Vec::with_capacity(messages.len() + 2);
                frames.push(Content::Status(status));
                frames.extend(messages.into_iter().map(Content::Message));
                frames.push(Content::NextOffset(next_offset as i64));
                frames
            }
            Err(rejection) => vec![
                Content::Status(rejected("PullMessage", client, &rejection)),
                Content::NextOffset(request.offset),
            ],
        };
        let stream = futures::stream::iter(frames.into_iter().map(|content| {
            Ok(v2::PullMessageResponse {
                content: Some(content),
            })
        }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn update_offset(
        &self,
        request: Request<v2::UpdateOffsetRequest>,
    ) -> Result<Response<v2::UpdateOffsetResponse>, Status> {
        let client = ClientKind::of(&request);
        let deadline = call_deadline(&request);
        let status = match self.update_offset(request.get_ref(), deadline).await {
            Ok(()) => {
                let update = request.get_ref();
                let topic = update.message_queue.as_ref().and_then(|q| q.topic.as_ref());
                let group = update.group.as_ref();
                self.consumer_seen(&caller_of(&request), group, topic, Activity::Pull);
                ok()
            }
            Err(rejection) => rejected("UpdateOffset", client, &rejection),
        };
        Ok(Response::new(v2::UpdateOffsetResponse {
            status: Some(status),
        }))
    }

    async fn get_offset(
        &self,
        request: Request<v2::GetOffsetRequest>,
    ) -> Result<Response<v2::GetOffsetResponse>, Status> {
        let client = ClientKind::of(&request);
        let reply = match self.get_offset(request.get_ref()).await {
            Ok(offset) => v2::GetOffsetResponse {
                status: Some(ok()),
                offset: offset as i64,
            },
            Err(rejection) => v2::GetOffsetResponse {
                status: Some(rejected("GetOffset", client, &rejection)),
                offset: 0,
            },
        };
        Ok(Response::new(reply))
    }

    async fn query_offset(
        &self,
        request: Request<v2::QueryOffsetRequest>,
    ) -> Result<Response<v2::QueryOffsetResponse>, Status> {
        let client = ClientKind::of(&request);
        let reply = match self.query_offset(request.get_ref()).await {
            Ok(offset) => v2::QueryOffsetResponse {
                status: Some(ok()),
                offset: offset as i64,
            },
            Err(rejection) => v2::QueryOffsetResponse {
                status: Some(rejected("QueryOffset", client, &rejection)),
                offset: 0,
            },
        };
        Ok(Response::new(reply))
    }

    async fn end_transaction(
        &self,
        request: Request<v2::EndTransactionRequest>,
    ) -> Result<Response<v2::EndTransactionResponse>, Status> {
        let client = ClientKind::of(&request);
        let status = match self.broker.end_transaction(request.get_ref()).await {
            Ok(()) => ok(),
            Err(rejection) => rejected("EndTransaction", client, &rejection),
        };
        Ok(Response::new(v2::EndTransactionResponse {
            status: Some(status),
        }))
    }

    type TelemetryStream = BoxStream<v2::TelemetryCommand>;

    async fn telemetry(
        &self,
        request: Request<Streaming<v2::TelemetryCommand>>,
    ) -> Result<Response<Self::TelemetryStream>, Status> {
        // Reply headers must go out at once (the Rust client awaits them with no timeout), so
        // the inbound stream is read by a task of its own.
        let (tx, rx) = mpsc::channel(16);
        let client_id = client_id_of(&request);
        let mut inbound = request.into_inner();
        let this = self.clone();
        tokio::spawn(async move {
            let stream = this.broker.clients.new_stream();
            while let Some(Ok(command)) = inbound.next().await {
                if let Some(v2::telemetry_command::Command::Settings(settings)) = command.command {
                    if !client_id.is_empty() {
                        this.broker
                            .clients
                            .register(&client_id, stream, &tx, &settings);
                    }
                    let reply = v2::TelemetryCommand {
                        status: Some(ok()),
                        command: Some(v2::telemetry_command::Command::Settings(
                            this.merged_settings(settings),
                        )),
                    };
                    // Never block on a client that stopped reading.
                    if tx.try_send(Ok(reply)).is_err() {
                        break;
                    }
                }
            }
            // The client closed its side: dropping every sender completes our side.
            this.broker.clients.unregister(&client_id, stream);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn notify_client_termination(
        &self,
        request: Request<v2::NotifyClientTerminationRequest>,
    ) -> Result<Response<v2::NotifyClientTerminationResponse>, Status> {
        let caller = caller_of(&request);
        let group = request.get_ref().group.as_ref().map(|g| g.name.as_str());
        self.broker.group_clients.terminated(group, &caller);
        Ok(Response::new(v2::NotifyClientTerminationResponse {
            status: Some(ok()),
        }))
    }

    async fn change_invisible_duration(
        &self,
        request: Request<v2::ChangeInvisibleDurationRequest>,
    ) -> Result<Response<v2::ChangeInvisibleDurationResponse>, Status> {
        let client = ClientKind::of(&request);
        let reply = match self.broker.change_invisible(request.get_ref()).await {
            Ok(receipt_handle) => {
                let change = request.get_ref();
                let (group, topic) = (change.group.as_ref(), change.topic.as_ref());
                self.consumer_seen(&caller_of(&request), group, topic, Activity::Receive);
                v2::ChangeInvisibleDurationResponse {
                    status: Some(ok()),
                    receipt_handle,
                }
            }
            Err(rejection) => v2::ChangeInvisibleDurationResponse {
                status: Some(rejected("ChangeInvisibleDuration", client, &rejection)),
                receipt_handle: request.into_inner().receipt_handle,
            },
        };
        Ok(Response::new(reply))
    }

    async fn recall_message(
        &self,
        _request: Request<v2::RecallMessageRequest>,
    ) -> Result<Response<v2::RecallMessageResponse>, Status> {
        Ok(Response::new(v2::RecallMessageResponse {
            status: Some(not_implemented("RecallMessage")),
            message_id: String::new(),
        }))
    }

    async fn sync_lite_subscription(
        &self,
        _request: Request<v2::SyncLiteSubscriptionRequest>,
    ) -> Result<Response<v2::SyncLiteSubscriptionResponse>, Status> {
        Ok(Response::new(v2::SyncLiteSubscriptionResponse {
            status: Some(not_implemented("SyncLiteSubscription")),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_advertise_every_ip_member_but_one_domain_name() {
        let ips = endpoints_of(&["127.0.0.1:8081", "127.0.0.1:8082"], "127.0.0.1:8081");
        assert_eq!(v2::AddressScheme::IPv4 as i32, ips.scheme);
        assert_eq!(2, ips.addresses.len());
        let names = endpoints_of(
            &["raftmq-0.raftmq:8081", "raftmq-1.raftmq:8081"],
            "raftmq-1.raftmq:8081",
        );
        assert_eq!(v2::AddressScheme::DomainName as i32, names.scheme);
        assert_eq!(
            vec![v2::Address {
                host: "raftmq-1.raftmq".into(),
                port: 8081
            }],
            names.addresses
        );
    }
}
