//! Raft RPC server: hands peers' messages to openraft, and serves `Propose` (writes forwarded by
//! followers) and `NodeStatus` (used by bootstrap).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::{Stream, StreamExt};
use openraft::errors::{ClientWriteError, RaftError};
use raftmq_proto::raft::v1 as pb;
use raftmq_proto::raft::v1::raft_service_server::{RaftService, RaftServiceServer};
use tonic::{Request, Response, Status, Streaming};

use crate::convert;
use crate::network::MAX_RAFT_MESSAGE_BYTES;
use crate::node::{ProposeError, RaftNode};
use crate::types::{Request as Command, Snapshot, SnapshotMeta};

pub struct RaftGrpc {
    node: Arc<RaftNode>,
}

impl RaftGrpc {
    pub fn server(node: Arc<RaftNode>) -> RaftServiceServer<RaftGrpc> {
        RaftServiceServer::new(RaftGrpc { node })
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
    }
}

fn fatal(err: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft node stopped: {err}"))
}

impl RaftGrpc {
    /// A stopping node takes no more calls from its peers (see `RaftNode::shutdown`).
    fn refuse_if_stopping(&self) -> Result<(), Status> {
        if self.node.is_stopping() {
            return Err(Status::unavailable("raft node is stopping"));
        }
        Ok(())
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl RaftService for RaftGrpc {
    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        self.refuse_if_stopping()?;
        let req = convert::transfer_leader_request_from_pb(request.get_ref())?;
        let refused = match self
            .node
            .raft
            .handle_transfer_leader(req)
            .await
            .map_err(fatal)?
        {
            Ok(()) => String::new(),
            Err(refusal) => refusal.to_string(),
        };
        Ok(Response::new(pb::TransferLeaderResponse { refused }))
    }

    async fn vote(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        self.refuse_if_stopping()?;
        let req = convert::vote_request_from_pb(request.get_ref())?;
        if let Some(refusal) = self.node.refuse_vote(&req) {
            return Ok(Response::new(convert::vote_response_to_pb(&refusal)));
        }
        let resp = self.node.raft.vote(req).await.map_err(fatal)?;
        Ok(Response::new(convert::vote_response_to_pb(&resp)))
    }

    async fn pre_vote(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        self.refuse_if_stopping()?;
        let req = convert::vote_request_from_pb(request.get_ref())?;
        if let Some(refusal) = self.node.refuse_vote(&req) {
            return Ok(Response::new(convert::vote_response_to_pb(&refusal)));
        }
        let resp = self.node.raft.pre_vote(req).await.map_err(fatal)?;
        Ok(Response::new(convert::vote_response_to_pb(&resp)))
    }

    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        self.refuse_if_stopping()?;
        let request = request.into_inner();
        let leader_cut_off = request.leader_cut_off;
        let req = convert::append_request_from_pb(request)?;
        self.node.heard_from_leader(&req.vote, leader_cut_off);
        let resp = self.node.raft.append_entries(req).await.map_err(fatal)?;
        let mut reply = convert::append_response_to_pb(&resp);
        reply.disk_low = self.node.disk.is_low();
        Ok(Response::new(reply))
    }

    type StreamAppendStream = ResponseStream<pb::AppendEntriesResponse>;

    async fn stream_append(
        &self,
        request: Request<Streaming<pb::AppendEntriesRequest>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        self.refuse_if_stopping()?;
        // The input ends when the node begins to stop; the answers hold `stopping` until the
        // last one is out, so that the node's shutdown waits for them.
        let stopping = self.node.watch_stopping();
        let mut until_stopping = stopping.clone();
        // Answers come in the order of the requests: pair them by position to time each one.
        let received_at = Arc::new(Mutex::new(VecDeque::new()));
        let received = received_at.clone();
        // An error (a request that does not decode, or a broken connection) ends the input;
        // the leader then reconnects, unless its process is gone: `leader_stream_broke` checks.
        let node = self.node.clone();
        let heard = self.node.clone();
        let input = request
            .into_inner()
            .take_while(move |item| {
                if item.is_err() {
                    node.leader_stream_broke();
                }
                futures::future::ready(item.is_ok())
            })
            .filter_map(move |item| {
                let decoded = item.ok().and_then(|request| {
                    let leader_cut_off = request.leader_cut_off;
                    match convert::append_request_from_pb(request) {
                        Ok(req) => {
                            heard.heard_from_leader(&req.vote, leader_cut_off);
                            Some(req)
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "dropping malformed append request");
                            None
                        }
                    }
                });
                futures::future::ready(decoded)
            })
            .inspect(move |_| {
                let mut received = received.lock().expect("received-at lock poisoned");
                received.push_back(Instant::now());
            })
            .take_until(async move {
                let _ = until_stopping.wait_for(|stopping| *stopping).await;
            });
        let disk = self.node.disk.clone();
        let output = self.node.raft.stream_append(input).map(move |result| {
            // Owned by the answer stream, so dropped only when the stream ends.
            let _open = &stopping;
            match result {
                Ok(result) => {
                    let received = received_at
                        .lock()
                        .expect("received-at lock poisoned")
                        .pop_front();
                    if let Some(received) = received {
                        metrics::histogram!("raftmq_follower_append_seconds")
                            .record(received.elapsed().as_secs_f64());
                    }
                    let mut reply = convert::stream_result_to_pb(&result);
                    reply.disk_low = disk.is_low();
                    Ok(reply)
                }
                Err(e) => Err(fatal(e)),
            }
        });
        Ok(Response::new(Box::pin(output)))
    }

    async fn snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        self.refuse_if_stopping()?;
        let mut chunks = request.into_inner();
        let Some(first) = chunks.next().await.transpose()? else {
            return Err(Status::invalid_argument("empty snapshot stream"));
        };
        let Some(pb::snapshot_chunk::Payload::Meta(meta)) = first.payload else {
            return Err(Status::invalid_argument(
                "a snapshot stream must start with its meta",
            ));
        };
        let mut data = Vec::new();
        while let Some(chunk) = chunks.next().await.transpose()? {
            match chunk.payload {
                Some(pb::snapshot_chunk::Payload::Data(bytes)) => data.extend_from_slice(&bytes),
                _ => return Err(Status::invalid_argument("snapshot meta sent twice")),
            }
        }
        let vote = convert::vote_from_pb(
            meta.vote
                .as_ref()
                .ok_or_else(|| Status::invalid_argument("snapshot without vote"))?,
        )?;
        let membership = meta
            .last_membership
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("snapshot without membership"))?;
        let snapshot = Snapshot {
            meta: SnapshotMeta {
                last_log_id: convert::opt_log_id_from_pb(meta.last_log_id.as_ref())?,
                last_membership: convert::stored_membership_from_pb(membership)?,
            },
            snapshot: data,
        };
        let resp = self
            .node
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(fatal)?;
        Ok(Response::new(pb::SnapshotResponse {
            vote: Some(convert::vote_to_pb(&resp.vote)),
        }))
    }

    async fn propose(
        &self,
        request: Request<pb::ProposeRequest>,
    ) -> Result<Response<pb::ProposeResponse>, Status> {
        self.refuse_if_stopping()?;
        let command = request
            .into_inner()
            .command
            .ok_or_else(|| Status::invalid_argument("propose without a command"))?;
        if let Err(ProposeError::NoRoom(reason)) = self.node.check_room(&command) {
            return Ok(Response::new(pb::ProposeResponse {
                outcome: Some(pb::propose_response::Outcome::NoRoom(reason)),
            }));
        }
        let outcome = match self
            .node
            .raft
            .client_write(Command::new(Arc::new(command)))
            .await
        {
            Ok(resp) => match resp.data.0 {
                Some(result) => pb::propose_response::Outcome::Result(result),
                None => pb::propose_response::Outcome::Error("applied without a result".into()),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                pb::propose_response::Outcome::NotLeader(pb::NotLeader {
                    leader_id: forward.leader_id,
                })
            }
            Err(e) => pb::propose_response::Outcome::Error(e.to_string()),
        };
        Ok(Response::new(pb::ProposeResponse {
            outcome: Some(outcome),
        }))
    }

    async fn read_index(
        &self,
        _request: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        self.refuse_if_stopping()?;
        use pb::read_index_response::Outcome;
        let outcome = match self
            .node
            .raft
            .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
            .await
        {
            Ok(read) => Outcome::Index(read.index()),
            Err(RaftError::APIError(openraft::errors::LinearizableReadError::ForwardToLeader(
                forward,
            ))) => Outcome::NotLeader(pb::NotLeader {
                leader_id: forward.leader_id,
            }),
            Err(e) => Outcome::Error(e.to_string()),
        };
        Ok(Response::new(pb::ReadIndexResponse {
            outcome: Some(outcome),
        }))
    }

    async fn node_status(
        &self,
        _request: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatusResponse>, Status> {
        self.refuse_if_stopping()?;
        let initialized = self.node.raft.is_initialized().await.map_err(fatal)?;
        let last_log_id = self.node.last_log_id().map_err(Status::internal)?;
        Ok(Response::new(pb::NodeStatusResponse {
            node_id: self.node.id,
            initialized,
            last_log_id: last_log_id.as_ref().map(convert::log_id_to_pb),
        }))
    }
}
