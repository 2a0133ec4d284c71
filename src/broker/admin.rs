//! `raftmq.admin.v1.AdminService`: cluster status and topic management for operators.

use std::sync::Arc;

use openraft::ServerState;
use raftmq_proto::admin::v1::admin_service_server::{AdminService, AdminServiceServer};
use raftmq_proto::admin::v1::{self as admin};
use raftmq_proto::raft::v1 as pb;
use tonic::{Request, Response, Status};

use super::Broker;
use super::status::Rejection;

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
}
