//! A small RocketMQ 5 gRPC client for raftmq's own CLI and benchmarks.
//!
//! It knows every node of a group (the endpoints given on the command line) and moves to the
//! next one when a node does not answer, retrying the same request: a send keeps its message
//! ids, so the broker deduplicates a retry whose first attempt did land.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use raftmq_proto::admin::v1::{self as admin, admin_service_client::AdminServiceClient};
use raftmq_proto::rocketmq::v2::messaging_service_client::MessagingServiceClient;
use raftmq_proto::rocketmq::v2::{self as v2, Code};
use tonic::transport::{Channel, Endpoint};

pub(crate) const MAX_MESSAGE_BYTES: usize = 130 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("rejected with {code:?}: {message}")]
    Rejected {
        code: Code,
        message: String,
        /// An earlier attempt of the same call went unanswered or failed in a way worth
        /// retrying: it may have taken effect even though this one was refused.
        after_unanswered: bool,
    },
    /// An admin call refused; the gRPC code says why (NotFound, InvalidArgument, ...).
    #[error("{message} ({code:?})")]
    AdminRefused { code: tonic::Code, message: String },
    #[error("no node answered: {0}")]
    Unavailable(String),
    #[error("bad endpoint `{0}`")]
    BadEndpoint(String),
}

impl ClientError {
    /// Worth retrying on another node or a little later.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Unavailable(_) => true,
            ClientError::Rejected { code, .. } => {
                matches!(
                    code,
                    Code::HaNotAvailable
                        | Code::MasterPersistenceTimeout
                        | Code::InternalServerError
                )
            }
            ClientError::BadEndpoint(_) | ClientError::AdminRefused { .. } => false,
        }
    }
}

/// A reply's in-band status as a result: OK (or MULTIPLE_RESULTS) or the rejection.
pub(crate) fn check(status: Option<&v2::Status>) -> Result<(), ClientError> {
    let status = status.cloned().unwrap_or_default();
    match Code::try_from(status.code).unwrap_or(Code::Unspecified) {
        Code::Ok | Code::MultipleResults => Ok(()),
        code => Err(ClientError::Rejected {
            code,
            message: status.message,
            after_unanswered: false,
        }),
    }
}

pub struct Client {
    endpoints: Vec<String>,
    /// Sent with every call (`x-mq-client-id`, as the official clients do), so the broker can
    /// tell this consumer from others of its group.
    client_id: tonic::metadata::AsciiMetadataValue,
    channels: Vec<Channel>,
    current: AtomicUsize,
    pub timeout: Duration,
}

impl Client {
    /// `endpoints` are `host:port` client addresses of the group's nodes.
    pub fn new(endpoints: &[String]) -> Result<Client, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::BadEndpoint("no endpoint given".into()));
        }
        let channels = endpoints
            .iter()
            .map(|addr| {
                Endpoint::from_shared(format!("http://{addr}"))
                    .map(|e| {
                        e.connect_timeout(Duration::from_millis(500))
                            .tcp_nodelay(true)
                            .connect_lazy()
                    })
                    .map_err(|_| ClientError::BadEndpoint(addr.clone()))
            })
            .collect::<Result<_, _>>()?;
        let started_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let client_id = format!("raftmq-cli@{}@{started_ms:x}", std::process::id())
            .parse()
            .expect("a client id is ASCII");
        Ok(Client {
            endpoints: endpoints.to_vec(),
            client_id,
            channels,
            current: AtomicUsize::new(0),
            timeout: Duration::from_secs(5),
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    fn messaging(&self, index: usize) -> MessagingServiceClient<Channel> {
        MessagingServiceClient::new(self.channels[index].clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub fn admin_at(&self, index: usize) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channels[index].clone())
    }

    /// `message` as a call carrying this client's timeout.
    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        request
            .metadata_mut()
            .insert("x-mq-client-id", self.client_id.clone());
        request
    }

    /// Run `call` against the current node, moving on to the next nodes when one fails with
    /// a transport error or a retryable rejection; at most two rounds over all nodes.
    async fn with_failover<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(MessagingServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let mut last = ClientError::Unavailable("no attempt made".into());
        let mut unanswered = false;
        for attempt in 0..self.endpoints.len() * 2 {
            let index = self.current.load(Ordering::Relaxed) % self.endpoints.len();
            match call(self.messaging(index)).await {
                Ok(value) => return Ok(value),
                Err(err) if err.is_retryable() => {
                    unanswered = true;
                    last = err;
                    self.current.store(index + 1, Ordering::Relaxed);
                    if attempt + 1 >= self.endpoints.len() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                Err(ClientError::Rejected { code, message, .. }) => {
                    return Err(ClientError::Rejected {
                        code,
                        message,
                        after_unanswered: unanswered,
                    });
                }
                Err(err) => return Err(err),
            }
        }
        // Every attempt before the last failed in a way worth retrying too.
        Err(match last {
            ClientError::Rejected { code, message, .. } => ClientError::Rejected {
                code,
                message,
                after_unanswered: true,
            },
            other => other,
        })
    }

    pub async fn send(
        &self,
        messages: Vec<v2::Message>,
    ) -> Result<Vec<v2::SendResultEntry>, ClientError> {
        self.with_failover(|mut client| {
            let request = self.request(v2::SendMessageRequest {
                messages: messages.clone(),
            });
            async move {
                let reply = client
                    .send_message(request)
                    .await
                    .map_err(|s| ClientError::Unavailable(s.message().to_string()))?
                    .into_inner();
                check(reply.status.as_ref())?;
                Ok(reply.entries)
            }
        })
        .await
    }

    /// A Heartbeat call: the broker answers it without doing any work.
    pub async fn heartbeat(&self) -> Result<(), ClientError> {
        self.with_failover(|mut client| {
            let request = self.request(producer_heartbeat());
            async move {
                let reply = client
                    .heartbeat(request)
                    .await
                    .map_err(|s| ClientError::Unavailable(s.message().to_string()))?
                    .into_inner();
                check(reply.status.as_ref())
            }
        })
        .await
    }

    /// Tell every node that this consumer of `group` stops (NotifyClientTermination), so that
    /// the group counts it as gone at once instead of after its silence. Best effort: a node
    /// that does not answer forgets the client by itself.
    pub async fn notify_termination(&self, group: &str) {
        let calls = (0..self.endpoints.len()).map(|index| {
            let mut client = self.messaging(index);
            let mut request = self.request(v2::NotifyClientTerminationRequest {
                group: Some(resource(group)),
            });
            request.set_timeout(Duration::from_secs(1));
            async move {
                let call = client.notify_client_termination(request);
                let _ = tokio::time::timeout(Duration::from_secs(1), call).await;
            }
        });
        futures::future::join_all(calls).await;
    }

    pub async fn route(&self, topic: &str) -> Result<Vec<v2::MessageQueue>, ClientError> {
        self.with_failover(|mut client| {
            let request = self.request(v2::QueryRouteRequest {
                topic: Some(resource(topic)),
                endpoints: None,
            });
            async move {
                let reply = client
                    .query_route(request)
                    .await
                    .map_err(|s| ClientError::Unavailable(s.message().to_string()))?
                    .into_inner();
                check(reply.status.as_ref())?;
                Ok(reply.message_queues)
            }
        })
        .await
    }

    /// Pull from one queue; returns the messages and the next offset to pull from.
    pub async fn pull(
        &self,
        group: &str,
        topic: &str,
        queue_id: i32,
        offset: u64,
        batch: i32,
        long_poll: Duration,
    ) -> Result<(Vec<v2::Message>, u64), ClientError> {
        use v2::pull_message_response::Content;
        self.with_failover(|mut client| {
            let mut request = self.request(v2::PullMessageRequest {
                group: Some(resource(group)),
                message_queue: Some(queue(topic, queue_id)),
                offset: offset as i64,
                batch_size: batch,
                filter_expression: None,
                long_polling_timeout: prost_types::Duration::try_from(long_poll).ok(),
            });
            request.set_timeout(self.timeout + long_poll);
            async move {
                let mut stream = client
                    .pull_message(request)
                    .await
                    .map_err(|s| ClientError::Unavailable(s.message().to_string()))?
                    .into_inner();
                let mut messages = Vec::new();
                let mut next = offset;
                while let Some(frame) = stream
                    .message()
                    .await
                    .map_err(|s| ClientError::Unavailable(s.message().to_string()))?
                {
                    match frame.content {
                        Some(Content::Status(status))
                            if status.code != Code::MessageNotFound as i32 =>
                        {
                            check(Some(&status))?
                        }
                        Some(Content::Message(message)) => messages.push(message),
                        Some(Content::NextOffset(n)) => next = n.max(0) as u64,
                        _ => {}
                    }
                }
                Ok((messages, next))
            }
        })
        .await
    }

    /// POP-receive up to `batch` messages of `topic` for `group` (any queue), each invisible
    /// to other receives for `invisible`; empty after `long_poll` when there are none.
    pub async fn receive(
        &self,
        group: &str,
        topic: &str,
        batch: i32,
        invisible: Duration,
        long_poll: Duration,
    ) -> Result<Vec<v2::Message>, ClientError> {
        use v2::receive_message_response::Content;
        self.with_failover(|mut client| {
            let mut request = self.request(v2::ReceiveMessageRequest {
                group: Some(resource(group)),
                message_queue: Some(queue(topic, -1)),
                filter_expression: None,
                batch_size: batch,
                invisible_duration: prost_types::Duration::try_from(invisible).ok(),
                auto_renew: false,
                long_polling_timeout: prost_types::Duration::try_from(long_poll).ok(),
                attempt_id: None,
            });
            request.set_timeout(self.timeout + long_poll);
            async move {
                let mut stream = client
                    .receive_message(request)
                    .await
                    .map_err(|s| ClientError::Unavailable(s.message().to_string()))?
                    .into_inner();
                let mut messages = Vec::new();
                while let Some(frame) = stream
                    .message()
                    .await
                    .map_err(|s| ClientError::Unavailable(s.message().to_string()))?
                {
                    match frame.content {
                        Some(Content::Status(status))
                            if status.code != Code::MessageNotFound as i32 =>
                        {
                            check(Some(&status))?
                        }
                        Some(Content::Message(message)) => messages.push(message),
                        _ => {}
                    }
                }
                Ok(messages)
            }
        })
        .await
    }

    /// Acknowledge received messages by their receipt handles; one status per handle.
    pub async fn ack(
        &self,
        group: &str,
        topic: &str,
        handles: &[String],
    ) -> Result<Vec<v2::Status>, ClientError> {
        self.with_failover(|mut client| {
            let request = self.request(v2::AckMessageRequest {
                group: Some(resource(group)),
                topic: Some(resource(topic)),
                entries: handles
                    .iter()
                    .map(|handle| v2::AckMessageEntry {
                        message_id: String::new(),
                        receipt_handle: handle.clone(),
                        lite_topic: None,
                    })
                    .collect(),
            });
            async move {
                let reply = client
                    .ack_message(request)
                    .await
                    .map_err(|s| ClientError::Unavailable(s.message().to_string()))?
                    .into_inner();
                let status = reply.status.unwrap_or_default();
                // Per-entry outcomes decide; only a failure of the call as a whole is retried.
                if status.code != Code::Ok as i32
                    && status.code != Code::MultipleResults as i32
                    && reply.entries.is_empty()
                {
                    check(Some(&status))?;
                }
                Ok(reply
                    .entries
                    .into_iter()
                    .map(|e| e.status.unwrap_or_default())
                    .collect())
            }
        })
        .await
    }

    pub async fn query_offset(
        &self,
        topic: &str,
        queue_id: i32,
        policy: v2::QueryOffsetPolicy,
    ) -> Result<u64, ClientError> {
        self.with_failover(|mut client| {
            let request = self.request(v2::QueryOffsetRequest {
                message_queue: Some(queue(topic, queue_id)),
                query_offset_policy: policy as i32,
                timestamp: None,
            });
            async move {
                let reply = client
                    .query_offset(request)
                    .await
                    .map_err(|s| ClientError::Unavailable(s.message().to_string()))?
                    .into_inner();
                check(reply.status.as_ref())?;
                Ok(reply.offset.max(0) as u64)
            }
        })
        .await
    }

    /// The group's committed offset of a queue, if it has one.
    pub async fn get_offset(
        &self,
        group: &str,
        topic: &str,
        queue_id: i32,
    ) -> Result<Option<u64>, ClientError> {
        let result = self
            .with_failover(|mut client| {
                let request = self.request(v2::GetOffsetRequest {
                    group: Some(resource(group)),
                    message_queue: Some(queue(topic, queue_id)),
                });
                async move {
                    let reply = client
                        .get_offset(request)
                        .await
                        .map_err(|s| ClientError::Unavailable(s.message().to_string()))?
                        .into_inner();
                    check(reply.status.as_ref())?;
                    Ok(reply.offset.max(0) as u64)
                }
            })
            .await;
        match result {
            Ok(offset) => Ok(Some(offset)),
            Err(ClientError::Rejected {
                code: Code::OffsetNotFound | Code::NotFound,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn update_offset(
        &self,
        group: &str,
        topic: &str,
        queue_id: i32,
        offset: u64,
    ) -> Result<(), ClientError> {
        self.with_failover(|mut client| {
            let request = self.request(v2::UpdateOffsetRequest {
                group: Some(resource(group)),
                message_queue: Some(queue(topic, queue_id)),
                offset: offset as i64,
            });
            async move {
                let reply = client
                    .update_offset(request)
                    .await
                    .map_err(|s| ClientError::Unavailable(s.message().to_string()))?
                    .into_inner();
                check(reply.status.as_ref())
            }
        })
        .await
    }

    /// Ask every endpoint for its own view of the group, all at once: a node that hangs
    /// (paused, cut off) costs its timeout once, not once per node after it. The wait is this
    /// client's timeout, at most 2 s: a status view must not stall on one silent node.
    pub async fn cluster_status(&self) -> Vec<(String, Result<admin::NodeStatus, String>)> {
        let timeout = self.timeout.min(Duration::from_secs(2));
        let asks = self.endpoints.iter().enumerate().map(|(index, endpoint)| {
            let mut client = self.admin_at(index);
            let mut request = tonic::Request::new(admin::ClusterStatusRequest {});
            request.set_timeout(timeout);
            async move {
                let status = client
                    .cluster_status(request)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|s| s.message().to_string());
                (endpoint.clone(), status)
            }
        });
        futures::future::join_all(asks).await
    }

    /// The endpoint of the node that reports itself leader, if one does; of two (an old leader
    /// cut off from the rest has not yet heard of the new one), the one with the higher term.
    pub async fn leader_endpoint(&self) -> Option<String> {
        self.cluster_status()
            .await
            .into_iter()
            .filter_map(|(endpoint, status)| match status {
                Ok(status) if status.role == "leader" => Some((status.term, endpoint)),
                _ => None,
            })
            .max_by_key(|(term, _)| *term)
            .map(|(_, endpoint)| endpoint)
    }

    /// Run an admin call on the first node that answers.
    pub async fn admin<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(AdminServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let mut last = String::new();
        for index in 0..self.endpoints.len() {
            match call(self.admin_at(index)).await {
                Ok(value) => return Ok(value),
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    last = status.message().to_string()
                }
                Err(status) => {
                    return Err(ClientError::AdminRefused {
                        code: status.code(),
                        message: status.message().to_string(),
                    });
                }
            }
        }
        Err(ClientError::Unavailable(last))
    }
}

/// The Heartbeat a producer without a group sends.
pub(crate) fn producer_heartbeat() -> v2::HeartbeatRequest {
    v2::HeartbeatRequest {
        group: None,
        client_type: v2::ClientType::Producer as i32,
    }
}

pub fn resource(name: &str) -> v2::Resource {
    v2::Resource {
        resource_namespace: String::new(),
        name: name.to_string(),
    }
}

pub fn queue(topic: &str, queue_id: i32) -> v2::MessageQueue {
    v2::MessageQueue {
        topic: Some(resource(topic)),
        id: queue_id,
        ..Default::default()
    }
}

/// A unique message id: 32 uppercase hex digits from the time, the process id and a counter.
pub fn new_message_id() -> String {
    use std::sync::atomic::AtomicU32;
    static SEQUENCE: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    format!(
        "{nanos:016X}{:08X}{:08X}",
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn message(topic: &str, body: Vec<u8>, tag: Option<&str>, keys: &[String]) -> v2::Message {
    let now = std::time::SystemTime::now();
    v2::Message {
        topic: Some(resource(topic)),
        user_properties: Default::default(),
        system_properties: Some(v2::SystemProperties {
            message_id: new_message_id(),
            tag: tag.map(str::to_string),
            keys: keys.to_vec(),
            message_type: v2::MessageType::Normal as i32,
            body_encoding: v2::Encoding::Identity as i32,
            born_timestamp: Some(prost_types::Timestamp::from(now)),
            born_host: std::env::var("HOSTNAME").unwrap_or_else(|_| "raftmq-cli".into()),
            ..Default::default()
        }),
        body: body.into(),
    }
}
