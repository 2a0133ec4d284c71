//! One broker node: a member of a broker group (a Raft group), serving RocketMQ 5 clients.
//!
//! ```text
//!   client port  ── apache.rocketmq.v2.MessagingService  (messaging.rs)
//!                └─ raftmq.admin.v1.AdminService          (admin.rs)
//!   raft port    ── raftmq.raft.v1.RaftService            (raftmq-raft)
//! ```
//! Writes (sends, topic creation, offset commits) become Raft commands proposed through the
//! group's leader, whichever node received them; reads are served by the receiving node from
//! its applied, hence committed, state.

pub mod admin;
pub mod batcher;
pub mod client_port;
pub mod clients;
pub mod consumer;
pub mod cut_off;
pub mod disk;
pub mod filter;
pub mod group_clients;
pub mod http;
pub mod messages;
pub mod messaging;
pub mod preferred;
pub mod renewals;
pub mod status;
pub mod timers;
pub mod transactions;
pub mod unary;
pub mod validate;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use raftmq_proto::raft::v1 as pb;
use raftmq_proto::rocketmq::v2::Code;
use raftmq_raft::node::NodeConfig;
use raftmq_raft::service::RaftGrpc;
use raftmq_raft::{RaftNode, TransferError};
use tonic::transport::server::TcpIncoming;

use crate::config::BrokerConfig;
use status::Rejection;

/// How long a write waits for the group to commit it (covers a leader election).
pub const PROPOSE_DEADLINE: Duration = Duration::from_millis(2500);
/// Highest max-delivery-attempts a group may set.
pub const MAX_DELIVERY_ATTEMPTS_LIMIT: u32 = 1000;
/// Largest gRPC message a client may send: a 128 MiB body plus its envelope.
pub const MAX_CLIENT_MESSAGE_BYTES: usize = 130 * 1024 * 1024;

pub struct Broker {
    pub config: Arc<BrokerConfig>,
    pub node: Arc<RaftNode>,
    /// Packs concurrent sends into shared Raft entries.
    pub sends: batcher::SendBatcher,
    /// Clients with a Telemetry stream to this node.
    pub clients: clients::ClientRegistry,
    /// The consumers each group has on this node, by the calls they make.
    pub group_clients: group_clients::GroupClients,
    /// Push-consumer deliveries this node keeps invisible until they are acknowledged.
    pub renewals: renewals::Renewals,
    /// Set when shutdown starts: `/readyz` fails from then on.
    pub draining: AtomicBool,
    /// True while this node is cut off from the majority of its group: the client port
    /// refuses connections (see `cut_off.rs`).
    pub cut_off: tokio::sync::watch::Sender<bool>,
    round_robin: AtomicU64,
}

impl Broker {
    /// The topic a send stores into: known, or created now when auto-create is on.
    pub async fn topic_for_send(&self, name: &str) -> Result<pb::TopicConfig, Rejection> {
        if let Some(topic) = self.topic_if_known(name).await? {
            return Ok(topic);
        }
        let created = self
            .create_topic(name, self.config.default_queues, 0)
            .await?;
        Ok(created.topic.unwrap_or_default())
    }

    /// The topic a route query, a read or an offset names. These never create a topic: with
    /// auto-create on, an unknown name is an empty topic of the default queue count, the
    /// queues its first send will create. So a consumer may start before its producer, and a
    /// consumer with a mistyped name leaves nothing behind.
    pub async fn topic_for_read(&self, name: &str) -> Result<pb::TopicConfig, Rejection> {
        Ok(self
            .topic_if_known(name)
            .await?
            .unwrap_or_else(|| pb::TopicConfig {
                name: name.to_string(),
                queues: self.config.default_queues,
                ..Default::default()
            }))
    }

    /// A valid topic name's config if the topic exists; `None` if it does not but sends may
    /// create it; refused with TOPIC_NOT_FOUND if they may not.
    async fn topic_if_known(&self, name: &str) -> Result<Option<pb::TopicConfig>, Rejection> {
        validate::topic_name(name)?;
        match self.existing_topic(name).await? {
            Some(topic) => Ok(Some(topic)),
            None if self.config.auto_create_topics => Ok(None),
            None => Err(Rejection::new(
                Code::TopicNotFound,
                format!(
                    "topic `{name}` does not exist (create it with `raftmq admin topic create {name}`)"
                ),
            )),
        }
    }

    /// A topic as the group has committed it. This node may lag behind (a follower catching
    /// up): when it does not know the name, it looks again once it has applied everything
    /// committed so far, so that no node denies a topic that exists.
    pub async fn existing_topic(&self, name: &str) -> Result<Option<pb::TopicConfig>, Rejection> {
        if let Some(topic) = self.node.state.topic(name) {
            return Ok(Some(topic));
        }
        self.node.read_barrier(PROPOSE_DEADLINE).await?;
        Ok(self.node.state.topic(name))
    }

    /// Create a topic; `message_type` is the one type it accepts (0: every type).
    pub async fn create_topic(
        &self,
        name: &str,
        queues: u32,
        message_type: i32,
    ) -> Result<pb::TopicResult, Rejection> {
        validate::topic_name(name)?;
        if queues == 0 || queues > crate::config::MAX_QUEUES {
            return Err(Rejection::bad_request(format!(
                "a topic needs 1..={} queues, not {queues}",
                crate::config::MAX_QUEUES
            )));
        }
        let command = pb::Command {
            kind: Some(pb::command::Kind::CreateTopic(pb::CreateTopic {
                name: name.to_string(),
                queues,
                created_ms: messages::now_ms(),
                message_type,
            })),
        };
        match self.node.propose(command, PROPOSE_DEADLINE).await?.kind {
            Some(pb::command_result::Kind::Topic(result)) => {
                if result.created {
                    tracing::info!(topic = name, queues, "topic created");
                }
                Ok(result)
            }
            other => Err(Rejection::internal(format!(
                "unexpected result of create topic: {other:?}"
            ))),
        }
    }

    /// Create a consumer group or update its settings.
    pub async fn create_group(
        &self,
        name: &str,
        fifo: bool,
        max_delivery_attempts: u32,
    ) -> Result<pb::GroupResult, Rejection> {
        validate::group_name(name)?;
        if max_delivery_attempts > MAX_DELIVERY_ATTEMPTS_LIMIT {
            return Err(Rejection::bad_request(format!(
                "max delivery attempts must be at most {MAX_DELIVERY_ATTEMPTS_LIMIT}, not {max_delivery_attempts}"
            )));
        }
        let command = pb::Command {
            kind: Some(pb::command::Kind::CreateGroup(pb::CreateGroup {
                name: name.to_string(),
                fifo,
                max_delivery_attempts,
                created_ms: messages::now_ms(),
            })),
        };
        match self.node.propose(command, PROPOSE_DEADLINE).await?.kind {
            Some(pb::command_result::Kind::Group(result)) => {
                tracing::info!(
                    group = name,
                    fifo,
                    max_delivery_attempts,
                    created = result.created,
                    "consumer group saved"
                );
                Ok(result)
            }
            other => Err(Rejection::internal(format!(
                "unexpected result of create group: {other:?}"
            ))),
        }
    }

    /// Queue for a batch: by message group (same group, same queue, so its order is kept),
    /// otherwise round-robin.
    pub fn choose_queue(&self, topic: &pb::TopicConfig, message_group: Option<&str>) -> u32 {
        let queues = topic.queues.max(1);
        match message_group {
            Some(group) => crc32fast::hash(group.as_bytes()) % queues,
            None => (self.round_robin.fetch_add(1, Ordering::Relaxed) % u64::from(queues)) as u32,
        }
    }

    pub fn check_queue(&self, topic: &pb::TopicConfig, queue_id: i32) -> Result<u32, Rejection> {
        u32::try_from(queue_id)
            .ok()
            .filter(|q| *q < topic.queues)
            .ok_or_else(|| {
                Rejection::bad_request(format!(
                    "queue {queue_id} does not exist: topic `{}` has queues 0..{}",
                    topic.name, topic.queues
                ))
            })
    }
}

/// How long a stopping leader waits for another node to take over.
const LEADERSHIP_DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Run a broker node until `shutdown` completes, then stop in order: leadership handed to a
/// caught-up follower, client RPCs and the HTTP port, Raft, storage.
pub async fn run(
    config: BrokerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    // Installed first, so that nothing recorded during startup is lost.
    if let Some(handle) = http::recorder() {
        tokio::spawn(http::upkeep(handle));
    }
    let client_listen = config.listen_addr(&config.me().client_addr)?;
    let raft_listen = config.listen_addr(&config.me().raft_addr)?;
    let node = RaftNode::start(NodeConfig {
        node_id: config.node_id,
        group: config.group.clone(),
        data_dir: config.data_dir.clone(),
        flush: config.flush,
        members: config.members.clone(),
        heartbeat_interval: config.heartbeat_interval,
        election_timeout_min: config.election_timeout_min,
        election_timeout_max: config.election_timeout_max,
        min_free_disk: config.min_free_disk,
        storage_memory: config.storage_memory_bytes,
        catchup_bytes_per_sec: config.catchup_bytes_per_sec,
    })
    .await
    .context("start the raft node")?;
    let broker = Arc::new(Broker {
        config: config.clone(),
        node: node.clone(),
        sends: batcher::SendBatcher::start(node.clone(), config.max_pending_send_bytes),
        clients: clients::ClientRegistry::default(),
        group_clients: group_clients::GroupClients::default(),
        renewals: renewals::Renewals::default(),
        draining: AtomicBool::new(false),
        cut_off: tokio::sync::watch::Sender::new(false),
        round_robin: AtomicU64::new(0),
    });

    let raft_listener = tokio::net::TcpListener::bind(raft_listen)
        .await
        .with_context(|| format!("listen for raft on {raft_listen}"))?;
    let client_listener = tokio::net::TcpListener::bind(client_listen)
        .await
        .with_context(|| format!("listen for clients on {client_listen}"))?;
    let http_listener = match config.http_port {
        0 => None,
        port => {
            let mut addr = client_listen;
            addr.set_port(port);
            Some(http::bind(addr).await?)
        }
    };
    tracing::info!(
        node_id = config.node_id,
        group = %config.group,
        %client_listen,
        %raft_listen,
        flush = %config.flush,
        data_dir = %config.data_dir.display(),
        "broker started"
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    // Nagle's algorithm must be off on accepted sockets: a small reply (an append ack) would
    // otherwise wait for the peer's delayed ACK, about 40 ms on Linux. Server::tcp_nodelay does
    // not apply to a listener we bound ourselves, so it is set on the incoming stream.
    let raft_incoming = TcpIncoming::from(raft_listener).with_nodelay(Some(true));
    let raft_server = tonic::transport::Server::builder()
        .add_service(RaftGrpc::server(node.clone()))
        .serve_with_incoming_shutdown(raft_incoming, stopped(stop_rx.clone()));
    let client_server = client_port::serve(
        client_listener,
        client_port::ClientApi::new(
            Arc::new(messaging::Messaging::new(broker.clone())),
            admin::service(broker.clone()),
        ),
        broker.cut_off.subscribe(),
        stopped(stop_rx.clone()),
    );
    let timer_task = tokio::spawn(timers::run(broker.clone(), stop_rx.clone()));
    let transaction_task = tokio::spawn(transactions::run(broker.clone(), stop_rx.clone()));
    let renewal_task = tokio::spawn(renewals::run(broker.clone(), stop_rx.clone()));
    tokio::spawn(preferred::run(broker.clone(), stop_rx.clone()));
    tokio::spawn(disk::run(broker.clone(), stop_rx.clone()));
    tokio::spawn(cut_off::run(broker.clone(), stop_rx.clone()));
    let mut raft_task = tokio::spawn(raft_server);
    let client_task = tokio::spawn(client_server);
    let http_task = http_listener.map(|listener| {
        tokio::spawn(http::serve(
            broker.clone(),
            listener,
            stopped(stop_rx.clone()),
        ))
    });
    tokio::spawn(node.clone().bootstrap());
    tokio::spawn(node.clone().watch_rejoin());
    tokio::spawn(node.clone().watch_followers());
    tokio::spawn(node.clone().watch_leader_liveness());
    tokio::spawn(node.clone().watch_leadership());

    // A stopped Raft core does not come back: the process exits non-zero so that its
    // supervisor (systemd, the StatefulSet) restarts it from what is durable, instead of
    // leaving a node that answers with frozen state.
    let core_stopped = tokio::select! {
        () = shutdown => None,
        reason = node.core_stopped() => Some(reason),
    };
    if let Some(reason) = &core_stopped {
        tracing::error!(%reason, "the raft core stopped: this node exits so it can be restarted");
    }
    let started = std::time::Instant::now();
    broker.draining.store(true, Ordering::Relaxed);
    // A leader hands over before it stops, so the group does not wait an election timeout
    // and sends in flight are forwarded to the new leader rather than failed.
    if core_stopped.is_none() && node.metrics().current_leader == Some(node.id) {
        tracing::info!(stage = "transfer leadership", "shutting down");
        match node
            .transfer_leadership(None, LEADERSHIP_DRAIN_DEADLINE)
            .await
        {
            Ok(leader) => tracing::info!(
                leader,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "leadership handed over"
            ),
            // Usual when the whole group stops together: not worth a warning.
            Err(e @ TransferError::TargetNotAnswering(_)) => {
                tracing::info!(reason = %e, "leadership not handed over; stopping anyway")
            }
            Err(e) => tracing::warn!(error = %e, "leadership not handed over; stopping anyway"),
        }
    }
    tracing::info!(stage = "stop client rpc", "shutting down");
    let _ = stop_tx.send(true);
    if let Some(task) = http_task {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), client_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(3), timer_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(3), transaction_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(3), renewal_task).await;
    tracing::info!(
        stage = "stop raft",
        elapsed_ms = started.elapsed().as_millis() as u64,
        "shutting down"
    );
    if let Err(e) = node.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    // With the core stopped, what the Raft server still holds open are the peers'
    // connections, which they never close on their own: waiting for them only delays the
    // stop (by the whole timeout, on every node of a group stopping together).
    if tokio::time::timeout(Duration::from_millis(200), &mut raft_task)
        .await
        .is_err()
    {
        raft_task.abort();
    }
    if let Some(reason) = core_stopped {
        anyhow::bail!("the raft core stopped: {reason}");
    }
    node.state
        .db()
        .sync_wal()
        .context("sync the WAL at shutdown")?;
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "broker stopped"
    );
    Ok(())
}
