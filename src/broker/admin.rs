//! `raftmq.admin.v1.AdminService`: cluster status and topic management for operators.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use raftmq_proto::admin::v1::admin_service_client::AdminServiceClient;
use raftmq_proto::admin::v1::admin_service_server::{AdminService, AdminServiceServer};
use raftmq_proto::admin::v1::{self as admin};
use raftmq_proto::raft::v1 as pb;
use raftmq_raft::TransferError;
use tonic::{Request, Response, Status};

use super::Broker;
use super::status::Rejection;

/// Marks a request a follower passed on to the leader, so it is passed on at most once.
const FORWARDED_HEADER: &str = "x-raftmq-forwarded";
/// How long a leader transfer may take when the request names no timeout.
const DEFAULT_TRANSFER_TIMEOUT: Duration = Duration::from_secs(10);

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
            .node
            .state
            .topic(&name)
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
        let groups = self
            .broker
            .node
            .state
            .groups()
            .into_iter()
            .map(group_info)
            .collect();
        Ok(Response::new(admin::ListGroupsResponse { groups }))
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
                let addr = node
                    .members()
                    .get(&leader)
                    .map(|n| n.client_addr.clone())
                    .ok_or_else(|| Status::internal(format!("leader {leader} has no address")))?;
                let channel = node
                    .network()
                    .channel(&addr)
                    .map_err(|e| Status::unavailable(format!("leader {leader} at {addr}: {e}")))?;
                let mut forward = Request::new(request);
                forward.metadata_mut().insert(
                    FORWARDED_HEADER,
                    tonic::metadata::MetadataValue::from_static("1"),
                );
                AdminServiceClient::new(channel)
                    .transfer_leader(forward)
                    .await
            }
            Err(e @ TransferError::NotAVoter(_)) => Err(Status::invalid_argument(e.to_string())),
            Err(e @ TransferError::NotLeader { .. }) => Err(Status::unavailable(format!(
                "{e}; no leader is known yet, retry shortly"
            ))),
            Err(e @ (TransferError::NoFollower | TransferError::TimedOut(_))) => {
                Err(Status::failed_precondition(e.to_string()))
            }
            Err(e @ TransferError::Fatal(_)) => Err(Status::internal(e.to_string())),
        }
    }
}
