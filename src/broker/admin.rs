//! `raftmq.admin.v1.AdminService`: cluster status and topic management for operators.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use raftmq_proto::admin::v1::admin_service_client::AdminServiceClient;
use raftmq_proto::admin::v1::admin_service_server::{AdminService, AdminServiceServer};
use raftmq_proto::admin::v1::{self as admin};
use raftmq_proto::raft::v1 as pb;
use raftmq_raft::{MembershipError, TransferError};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::Broker;
use super::group_clients::ConsumerKind;
use super::status::Rejection;

/// Marks a request a follower passed on to the leader, so it is passed on at most once.
const FORWARDED_HEADER: &str = "x-raftmq-forwarded";
/// How long a leader transfer may take when the request names no timeout.
const DEFAULT_TRANSFER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new member may take to receive the log when the request names no timeout.
const DEFAULT_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a member may take to say which command kinds it applies.
const MEMBER_STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// `Command.kind` field number of ResetPop (proto/raftmq/raft/v1/raft.proto).
const RESET_POP_KIND: u32 = 13;
// This version must report that it applies ResetPop.
const _: () = assert!(RESET_POP_KIND <= raftmq_storage::HIGHEST_COMMAND_KIND);

pub struct Admin {
    broker: Arc<Broker>,
}

pub fn service(broker: Arc<Broker>) -> AdminServiceServer<Admin> {
    AdminServiceServer::new(Admin { broker })
}

/// Admin errors are ordinary gRPC errors: the CLI is ours and shows their message.
fn to_status(rejection: Rejection) -> Status {
    use raftmq_proto::rocketmq::v2::Code;
    match rejection.code {
        Code::IllegalTopic | Code::IllegalConsumerGroup | Code::BadRequest => {
            Status::invalid_argument(rejection.message)
        }
        Code::TopicNotFound => Status::not_found(rejection.message),
        Code::HaNotAvailable | Code::MasterPersistenceTimeout => {
            Status::unavailable(rejection.message)
        }
        _ => Status::internal(rejection.message),
    }
}

fn role(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

impl Admin {
    fn topic_info(&self, topic: pb::TopicConfig) -> admin::TopicInfo {
        let state = &self.broker.node.state;
        admin::TopicInfo {
            queue_max_offsets: (0..topic.queues)
                .map(|q| state.queue_next_offset(&topic.name, q))
                .collect(),
            message_type: super::validate::topic_message_type_name(topic.message_type).into(),
            name: topic.name,
            queues: topic.queues,
            created_ms: topic.created_ms,
        }
    }
}

fn group_info(group: pb::GroupConfig) -> admin::GroupInfo {
    admin::GroupInfo {
        max_delivery_attempts: match group.max_delivery_attempts {
            0 => raftmq_storage::DEFAULT_MAX_DELIVERY_ATTEMPTS,
            n => n,
        },
        name: group.name,
        fifo: group.fifo,
        created_ms: group.created_ms,
        created: true,
        lag: None,
        consumers_online: None,
    }
}

#[tonic::async_trait]
impl AdminService for Admin {
    async fn cluster_status(
        &self,
        _request: Request<admin::ClusterStatusRequest>,
    ) -> Result<Response<admin::NodeStatus>, Status> {
        let node = &self.broker.node;
        let metrics = node.metrics();
        let replication = metrics
            .replication
            .as_ref()
            .map(|progress| {
                progress
                    .iter()
                    .map(|(id, matched)| admin::ReplicationProgress {
                        node_id: *id,
                        matched_index: matched.as_ref().map(|log_id| log_id.index),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let members = metrics
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| admin::NodeInfo {
                node_id: *id,
                raft_addr: n.raft_addr.clone(),
                client_addr: n.client_addr.clone(),
            })
            .collect();
        Ok(Response::new(admin::NodeStatus {
            node_id: node.id,
            group: self.broker.config.group.clone(),
            role: role(metrics.state).into(),
            term: metrics.current_term,
            leader_id: metrics.current_leader,
            last_log_index: metrics.last_log_index,
            committed_index: metrics.local_committed.as_ref().map(|id| id.index),
            applied_index: metrics.last_applied.as_ref().map(|id| id.index),
            purged_index: metrics.purged.as_ref().map(|id| id.index),
            members,
            replication,
            flush: node.flush.to_string(),
            disk_free_bytes: node.disk.free_bytes(),
            min_free_disk_bytes: node.disk.min_free_bytes(),
            disk_low: node.disk.is_low(),
            disk_full: node.disk_full(),
            leading_since_ms: node.leading_since_ms(),
            highest_command_kind: raftmq_storage::HIGHEST_COMMAND_KIND,
        }))
    }

    async fn create_topic(
        &self,
        request: Request<admin::CreateTopicRequest>,
    ) -> Result<Response<admin::CreateTopicResponse>, Status> {
        let request = request.into_inner();
        let queues = if request.queues == 0 {
            self.broker.config.default_queues
        } else {
            request.queues
        };
        let result = self
            .broker
            .create_topic(
                &request.name,
                queues,
                super::validate::topic_message_type(&request.message_type).map_err(to_status)?,
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(admin::CreateTopicResponse {
            topic: result.topic.map(|t| self.topic_info(t)),
            created: result.created,
        }))
    }

    async fn list_topics(
        &self,
        _request: Request<admin::ListTopicsRequest>,
    ) -> Result<Response<admin::ListTopicsResponse>, Status> {
        let topics = self
            .broker
            .node
            .state
            .topics()
            .into_iter()
            .map(|t| self.topic_info(t))
            .collect();
        Ok(Response::new(admin::ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<admin::DescribeTopicRequest>,
    ) -> Result<Response<admin::DescribeTopicResponse>, Status> {
        let name = request.into_inner().name;
        let topic = self
            .broker
            .existing_topic(&name)
            .await
            .map_err(to_status)?
            .ok_or_else(|| Status::not_found(format!("topic `{name}` does not exist")))?;
        Ok(Response::new(admin::DescribeTopicResponse {
            topic: Some(self.topic_info(topic)),
        }))
    }

    async fn create_group(
        &self,
        request: Request<admin::CreateGroupRequest>,
    ) -> Result<Response<admin::CreateGroupResponse>, Status> {
        let request = request.into_inner();
        let result = self
            .broker
            .create_group(&request.name, request.fifo, request.max_delivery_attempts)
            .await
            .map_err(to_status)?;
        Ok(Response::new(admin::CreateGroupResponse {
            group: result.group.map(group_info),
            created: result.created,
        }))
    }

    async fn list_groups(
        &self,
        _request: Request<admin::ListGroupsRequest>,
    ) -> Result<Response<admin::ListGroupsResponse>, Status> {
        let (clients, unanswered_nodes) = self.group_clients_of_every_member(None).await;
        let state = &self.broker.node.state;
        let mut progress = state.all_group_progress().map_err(|e| {
            tracing::error!(error = %e, "reading the groups' offsets failed");
            Status::internal(format!("reading the groups' offsets failed: {e}"))
        })?;
        // Topics their consumers read and they have not committed in lag too, as in describe.
        for client in &clients {
            let mut queues = progress.remove(&client.group).unwrap_or_default();
            state.add_topics_read(&mut queues, client.topics.iter().map(String::as_str));
            if !queues.is_empty() {
                progress.insert(client.group.clone(), queues);
            }
        }
        let mut groups: std::collections::BTreeMap<String, admin::GroupInfo> = state
            .groups()
            .into_iter()
            .map(|g| (g.name.clone(), group_info(g)))
            .collect();
        // Pull consumers commit offsets without creating their group: list those groups too.
        for (name, queues) in progress {
            let lag = queues.iter().map(|q| q.lag()).sum();
            groups
                .entry(name.clone())
                .or_insert_with(|| admin::GroupInfo {
                    name,
                    ..Default::default()
                })
                .lag = Some(lag);
        }
        // And groups whose consumers run before anything is committed.
        for group in groups.values_mut() {
            group.consumers_online = Some(0);
        }
        for client in clients {
            let group = groups
                .entry(client.group.clone())
                .or_insert_with(|| admin::GroupInfo {
                    name: client.group,
                    ..Default::default()
                });
            *group.consumers_online.get_or_insert(0) += 1;
        }
        Ok(Response::new(admin::ListGroupsResponse {
            groups: groups.into_values().collect(),
            unanswered_nodes,
        }))
    }

    async fn describe_group(
        &self,
        request: Request<admin::DescribeGroupRequest>,
    ) -> Result<Response<admin::DescribeGroupResponse>, Status> {
        let name = request.into_inner().name;
        super::validate::group_name(&name).map_err(to_status)?;
        let (clients, unanswered_nodes) = self.group_clients_of_every_member(Some(&name)).await;
        let state = &self.broker.node.state;
        // Read the applied index first: the figures below are at least that recent.
        let applied_index = state.applied_index();
        let group = state.group(&name).map(group_info);
        let mut progress = state.group_progress(&name).map_err(|e| {
            tracing::error!(group = %name, error = %e, "reading a group's offsets failed");
            Status::internal(format!("reading the offsets of group `{name}` failed: {e}"))
        })?;
        // A topic its consumers read but the group has not committed in yet lags too.
        let read = clients
            .iter()
            .flat_map(|c| c.topics.iter().map(String::as_str));
        state.add_topics_read(&mut progress, read);
        progress.sort_by(|a, b| (&a.topic, a.queue_id).cmp(&(&b.topic, b.queue_id)));
        if group.is_none() && progress.is_empty() && clients.is_empty() {
            return Err(Status::not_found(format!(
                "consumer group `{name}` was never created, has committed no offset and has \
                 no consumer online"
            )));
        }
        let queues = progress
            .into_iter()
            .map(|q| admin::QueueProgress {
                lag: q.lag(),
                topic: q.topic,
                queue_id: q.queue_id,
                committed_offset: q.committed,
                max_offset: q.max_offset,
            })
            .collect();
        Ok(Response::new(admin::DescribeGroupResponse {
            group,
            queues,
            applied_index,
            node_id: self.broker.node.id,
            clients,
            unanswered_nodes,
        }))
    }

    async fn list_group_clients(
        &self,
        request: Request<admin::ListGroupClientsRequest>,
    ) -> Result<Response<admin::ListGroupClientsResponse>, Status> {
        let group = request.into_inner().group;
        if !group.is_empty() {
            super::validate::group_name(&group).map_err(to_status)?;
        }
        let group = Some(group.as_str()).filter(|g| !g.is_empty());
        Ok(Response::new(admin::ListGroupClientsResponse {
            clients: self.local_group_clients(group),
        }))
    }

    async fn reset_offsets(
        &self,
        request: Request<admin::ResetOffsetsRequest>,
    ) -> Result<Response<admin::ResetOffsetsResponse>, Status> {
        use admin::reset_offsets_request::To;
        let request = request.into_inner();
        let (group, topic_name) = (&request.group, &request.topic);
        super::validate::group_name(group).map_err(to_status)?;
        super::validate::topic_name(topic_name).map_err(to_status)?;
        let to = request.to.ok_or_else(|| {
            Status::invalid_argument(
                "say where the offsets move to: earliest, latest, a timestamp or an offset",
            )
        })?;
        let state = &self.broker.node.state;
        let topic = state
            .topic(topic_name)
            .ok_or_else(|| Status::not_found(format!("topic `{topic_name}` does not exist")))?;
        let read_failed = |e: raftmq_storage::StorageError| {
            tracing::error!(%group, topic = %topic_name, error = %e, "reading offsets for a reset failed");
            Status::internal(format!("reading the queues of `{topic_name}` failed: {e}"))
        };
        let mut queues = Vec::new();
        for queue_id in 0..topic.queues {
            let end = state.queue_next_offset(topic_name, queue_id);
            let new_offset = match to {
                To::Earliest(_) => state
                    .queue_min_offset(topic_name, queue_id)
                    .map_err(read_failed)?,
                To::Latest(_) => end,
                To::TimestampMs(ms) => state
                    .queue_offset_at_time(topic_name, queue_id, ms)
                    .map_err(read_failed)?,
                To::Offset(offset) => offset.min(end),
            };
            queues.push(admin::OffsetReset {
                queue_id,
                previous_offset: state
                    .consumer_offset(group, topic_name, queue_id)
                    .map_err(read_failed)?,
                new_offset,
            });
        }
        if !request.dry_run {
            // Simple and push consumers keep their progress in pop records (a cursor and the
            // deliveries in flight), which the next acknowledgement would write back over a
            // moved offset: they are reset in one command of their own. Pull consumers' offsets
            // are plain commits, which replicas of every version understand.
            let pop = state.has_pop_progress(group, topic_name);
            if pop {
                self.require_every_member_applies(
                    RESET_POP_KIND,
                    "reset a simple or push consumer group",
                )
                .await?;
            }
            if !request.force {
                self.refuse_while_pull_consumers_online(group, topic_name)
                    .await?;
            }
            let commands: Vec<pb::Command> = if pop {
                vec![pb::Command {
                    kind: Some(pb::command::Kind::ResetPop(pb::ResetPop {
                        group: group.clone(),
                        topic: topic_name.clone(),
                        queues: queues
                            .iter()
                            .map(|q| pb::QueueCursor {
                                queue_id: q.queue_id,
                                cursor: q.new_offset,
                            })
                            .collect(),
                    })),
                }]
            } else {
                queues
                    .iter()
                    .map(|queue| pb::Command {
                        kind: Some(pb::command::Kind::CommitOffset(pb::CommitOffset {
                            group: group.clone(),
                            topic: topic_name.clone(),
                            queue_id: queue.queue_id,
                            offset: queue.new_offset,
                            unless_changed_after: None,
                        })),
                    })
                    .collect()
            };
            for command in commands {
                self.broker
                    .node
                    .propose(command, super::PROPOSE_DEADLINE)
                    .await
                    .map_err(|e| to_status(e.into()))?;
            }
            tracing::info!(%group, topic = %topic_name, ?to, "consumer offsets reset");
        }
        Ok(Response::new(admin::ResetOffsetsResponse {
            queues,
            committed: !request.dry_run,
        }))
    }

    async fn transfer_leader(
        &self,
        request: Request<admin::TransferLeaderRequest>,
    ) -> Result<Response<admin::TransferLeaderResponse>, Status> {
        let forwarded = request.metadata().contains_key(FORWARDED_HEADER);
        let request = request.into_inner();
        let timeout = match request.timeout_ms {
            0 => DEFAULT_TRANSFER_TIMEOUT,
            ms => Duration::from_millis(u64::from(ms)),
        };
        let node = &self.broker.node;
        let started = Instant::now();
        match node.transfer_leadership(request.to, timeout).await {
            Ok(leader) => Ok(Response::new(admin::TransferLeaderResponse {
                previous_leader: node.id,
                leader,
                took_ms: started.elapsed().as_millis() as u64,
            })),
            Err(TransferError::NotLeader {
                leader: Some(leader),
                ..
            }) if !forwarded && leader != node.id => {
                let mut client = self.admin_of(leader)?;
                client.transfer_leader(forwarded_request(request)).await
            }
            Err(e @ TransferError::NotAVoter(_)) => Err(Status::invalid_argument(e.to_string())),
            Err(e @ TransferError::NotLeader { .. }) => Err(no_leader(e)),
            Err(
                e @ (TransferError::NoFollower
                | TransferError::TimedOut(_)
                | TransferError::TargetBehind { .. }
                | TransferError::TargetNotAnswering(_)),
            ) => Err(Status::failed_precondition(e.to_string())),
            Err(e @ TransferError::Fatal(_)) => Err(Status::internal(e.to_string())),
        }
    }

    async fn list_members(
        &self,
        _request: Request<admin::ListMembersRequest>,
    ) -> Result<Response<admin::ListMembersResponse>, Status> {
        Ok(Response::new(admin::ListMembersResponse {
            leader_id: self.broker.node.metrics().current_leader,
            members: self.members(),
        }))
    }

    async fn add_member(
        &self,
        request: Request<admin::AddMemberRequest>,
    ) -> Result<Response<admin::AddMemberResponse>, Status> {
        let forwarded = request.metadata().contains_key(FORWARDED_HEADER);
        let request = request.into_inner();
        for (what, addr) in [
            ("raft_addr", &request.raft_addr),
            ("client_addr", &request.client_addr),
        ] {
            if !valid_addr(addr) {
                return Err(Status::invalid_argument(format!(
                    "{what} `{addr}` is not HOST:PORT"
                )));
            }
        }
        let catch_up = match request.catch_up_timeout_ms {
            0 => DEFAULT_CATCH_UP_TIMEOUT,
            ms => Duration::from_millis(u64::from(ms)),
        };
        let member = pb::Node {
            raft_addr: request.raft_addr.clone(),
            client_addr: request.client_addr.clone(),
        };
        let node = &self.broker.node;
        let started = Instant::now();
        match node.add_voter(request.node_id, member, catch_up).await {
            Ok(()) => Ok(Response::new(admin::AddMemberResponse {
                members: self.members(),
                took_ms: started.elapsed().as_millis() as u64,
            })),
            Err(MembershipError::NotLeader {
                leader: Some(leader),
                ..
            }) if !forwarded && leader != node.id => {
                let mut client = self.admin_of(leader)?;
                client.add_member(forwarded_request(request)).await
            }
            Err(e) => Err(membership_status(e)),
        }
    }

    async fn remove_member(
        &self,
        request: Request<admin::RemoveMemberRequest>,
    ) -> Result<Response<admin::RemoveMemberResponse>, Status> {
        let forwarded = request.metadata().contains_key(FORWARDED_HEADER);
        let request = request.into_inner();
        let node = &self.broker.node;
        match node.remove_member(request.node_id).await {
            Ok(()) => Ok(Response::new(admin::RemoveMemberResponse {
                members: self.members(),
            })),
            Err(MembershipError::NotLeader {
                leader: Some(leader),
                ..
            }) if !forwarded && leader != node.id => {
                let mut client = self.admin_of(leader)?;
                client.remove_member(forwarded_request(request)).await
            }
            Err(e) => Err(membership_status(e)),
        }
    }
}

impl Admin {
    /// The admin service of another member (the leader, for a request only it can serve),
    /// through its client address.
    fn admin_of(&self, id: u64) -> Result<AdminServiceClient<Channel>, Status> {
        let node = &self.broker.node;
        let addr = node
            .node_addr(id)
            .map(|n| n.client_addr)
            .ok_or_else(|| Status::internal(format!("node {id} has no known address")))?;
        let channel = node
            .network()
            .channel(&addr)
            .map_err(|e| Status::unavailable(format!("node {id} at {addr}: {e}")))?;
        Ok(AdminServiceClient::new(channel))
    }

    /// Refuse to propose a command of `kind` unless every member says it applies that kind:
    /// an older replica stops at an entry it does not know, and again after every restart,
    /// until it is upgraded. A member that does not answer may be such a replica.
    async fn require_every_member_applies(&self, kind: u32, what: &str) -> Result<(), Status> {
        let node = &self.broker.node;
        let members: Vec<u64> = node
            .metrics()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect();
        for id in members.into_iter().filter(|id| *id != node.id) {
            let mut request = Request::new(admin::ClusterStatusRequest {});
            request.set_timeout(MEMBER_STATUS_TIMEOUT);
            let highest = match self.admin_of(id)?.cluster_status(request).await {
                Ok(status) => status.into_inner().highest_command_kind,
                // Not UNAVAILABLE: clients take that for this node being down and try
                // another, which would meet the same silent member.
                Err(e) => {
                    return Err(Status::failed_precondition(format!(
                        "cannot {what} while node {id} does not answer ({}): every member must \
                         be known to run a version that applies it",
                        e.message()
                    )));
                }
            };
            if highest < kind {
                return Err(Status::failed_precondition(format!(
                    "cannot {what} yet: node {id} runs an older raftmq that does not know how; \
                     finish upgrading every node first"
                )));
            }
        }
        Ok(())
    }

    /// The clients of `group` (of every group: None) this node heard from within the online
    /// window.
    fn local_group_clients(&self, group: Option<&str>) -> Vec<admin::GroupClient> {
        self.broker
            .group_clients
            .online(group)
            .into_iter()
            .map(|client| admin::GroupClient {
                group: client.group,
                client_id: client.client_id,
                kind: client
                    .kind
                    .map(ConsumerKind::name)
                    .unwrap_or_default()
                    .into(),
                topics: client.topics,
                idle_ms: u64::try_from(client.idle.as_millis()).unwrap_or(u64::MAX),
                node_ids: vec![self.broker.node.id],
            })
            .collect()
    }

    /// The clients of `group` (of every group: None) as every member heard from them, one
    /// entry per group and client id, and the members that could not say (down, or a version
    /// without ListGroupClients).
    async fn group_clients_of_every_member(
        &self,
        group: Option<&str>,
    ) -> (Vec<admin::GroupClient>, Vec<u64>) {
        let node = &self.broker.node;
        let others: Vec<u64> = node
            .metrics()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .filter(|id| *id != node.id)
            .collect();
        let asks = others.into_iter().map(|id| async move {
            let request = admin::ListGroupClientsRequest {
                group: group.unwrap_or_default().to_string(),
            };
            let answer = match self.admin_of(id) {
                Ok(mut member) => {
                    let call = member.list_group_clients(request);
                    match tokio::time::timeout(MEMBER_STATUS_TIMEOUT, call).await {
                        Ok(Ok(reply)) => Some(reply.into_inner().clients),
                        Ok(Err(_)) | Err(_) => None,
                    }
                }
                Err(_) => None,
            };
            (id, answer)
        });
        let mut clients = self.local_group_clients(group);
        let mut unanswered = Vec::new();
        for (id, answer) in futures::future::join_all(asks).await {
            match answer {
                Some(theirs) => clients.extend(theirs),
                None => unanswered.push(id),
            }
        }
        (merge_group_clients(clients), unanswered)
    }

    /// A pull consumer keeps its position in memory and commits it again after a reset, so a
    /// reset waits until the group's pull consumers on the topic are stopped (Kafka refuses a
    /// reset of an active group for the same reason).
    async fn refuse_while_pull_consumers_online(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<(), Status> {
        let (clients, unanswered) = self.group_clients_of_every_member(Some(group)).await;
        let online: Vec<String> = clients
            .iter()
            .filter(|c| c.kind == ConsumerKind::Pull.name() && c.topics.iter().any(|t| t == topic))
            .map(|c| {
                format!(
                    "`{}` (via node {}, heard from {:.1} s ago)",
                    c.client_id,
                    node_list(&c.node_ids),
                    c.idle_ms as f64 / 1000.0
                )
            })
            .collect();
        if !online.is_empty() {
            return Err(Status::failed_precondition(format!(
                "group `{group}` has {} pull consumer(s) online on `{topic}`: {}. A pull \
                 consumer keeps its position in memory and would commit it again over the \
                 reset: stop the group's consumers first, or pass --force",
                online.len(),
                online.join(", ")
            )));
        }
        if !unanswered.is_empty() {
            return Err(Status::failed_precondition(format!(
                "cannot tell whether group `{group}` has pull consumers online on `{topic}`: \
                 node {} did not say. Bring it back (or finish upgrading it), or pass --force \
                 once the group's consumers are stopped",
                node_list(&unanswered)
            )));
        }
        Ok(())
    }

    /// The group's members as this node sees them, with the leader's replication progress.
    fn members(&self) -> Vec<admin::MemberInfo> {
        let metrics = self.broker.node.metrics();
        let membership = metrics.membership_config.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, n)| admin::MemberInfo {
                node_id: *id,
                raft_addr: n.raft_addr.clone(),
                client_addr: n.client_addr.clone(),
                voter: voters.contains(id),
                matched_index: metrics
                    .replication
                    .as_ref()
                    .and_then(|progress| progress.get(id).cloned().flatten())
                    .map(|log_id| log_id.index),
            })
            .collect()
    }
}

fn node_list(ids: &[u64]) -> String {
    let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
    ids.join(", ")
}

/// One entry per group and client id: a client that called several members appears once,
/// with every topic and member, the shortest silence, and its kind (pull wins: it is the kind
/// a reset must know about).
fn merge_group_clients(clients: Vec<admin::GroupClient>) -> Vec<admin::GroupClient> {
    let mut merged: std::collections::BTreeMap<(String, String), admin::GroupClient> =
        Default::default();
    for client in clients {
        let key = (client.group.clone(), client.client_id.clone());
        match merged.get_mut(&key) {
            None => {
                merged.insert(key, client);
            }
            Some(known) => {
                known.topics.extend(client.topics);
                known.node_ids.extend(client.node_ids);
                known.idle_ms = known.idle_ms.min(client.idle_ms);
                if known.kind.is_empty() || client.kind == ConsumerKind::Pull.name() {
                    known.kind = client.kind;
                }
            }
        }
    }
    merged
        .into_values()
        .map(|mut client| {
            client.topics.sort();
            client.topics.dedup();
            client.node_ids.sort();
            client.node_ids.dedup();
            client
        })
        .collect()
}

/// The request again, marked so that the leader does not pass it on a second time.
fn forwarded_request<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        FORWARDED_HEADER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    request
}

fn no_leader(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("{e}; no leader is known yet, retry shortly"))
}

fn membership_status(e: MembershipError) -> Status {
    match e {
        MembershipError::NotLeader { .. } => no_leader(e),
        MembershipError::Invalid(_) => Status::invalid_argument(e.to_string()),
        MembershipError::CatchUpTimedOut { .. } => Status::deadline_exceeded(e.to_string()),
        MembershipError::Failed(_) => Status::internal(e.to_string()),
    }
}

fn valid_addr(addr: &str) -> bool {
    addr.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    /// RESET_POP_KIND is ResetPop's field number on the wire.
    #[test]
    fn the_reset_pop_kind_is_its_field_number() {
        let command = pb::Command {
            kind: Some(pb::command::Kind::ResetPop(pb::ResetPop::default())),
        };
        let key = command.encode_to_vec()[0];
        assert_eq!(RESET_POP_KIND, u32::from(key >> 3));
    }

    #[test]
    fn a_client_seen_by_several_members_is_listed_once() {
        let seen = |group: &str, id: &str, kind: &str, topic: &str, idle_ms: u64, node: u64| {
            admin::GroupClient {
                group: group.into(),
                client_id: id.into(),
                kind: kind.into(),
                topics: vec![topic.into()],
                idle_ms,
                node_ids: vec![node],
            }
        };
        let merged = merge_group_clients(vec![
            seen("g", "b", "simple", "orders", 900, 1),
            seen("g", "a", "simple", "orders", 500, 2),
            seen("g", "a", "pull", "refunds", 2000, 3),
            seen("h", "a", "simple", "orders", 700, 2),
            seen("g", "a", "simple", "orders", 100, 1),
        ]);
        assert_eq!(
            merged,
            vec![
                admin::GroupClient {
                    group: "g".into(),
                    client_id: "a".into(),
                    kind: "pull".into(),
                    topics: vec!["orders".into(), "refunds".into()],
                    idle_ms: 100,
                    node_ids: vec![1, 2, 3],
                },
                seen("g", "b", "simple", "orders", 900, 1),
                seen("h", "a", "simple", "orders", 700, 2),
            ]
        );
    }
}
