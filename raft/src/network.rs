//! Raft RPC client: openraft's network over tonic.
//!
//! One HTTP/2 channel per peer address, shared by every replication stream, vote and snapshot
//! to that peer. Replication uses the bidirectional `StreamAppend` RPC so that appends to a
//! follower are pipelined instead of waiting one round trip each.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkFactory, RaftNetworkV2};
use prost::Message;
use raftmq_proto::raft::v1 as pb;
use raftmq_proto::raft::v1::raft_service_client::RaftServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::catchup::CatchUpLimit;
use crate::contact::{CutOffMark, PeerContact};
use crate::convert;
use crate::timeline::Timeline;
use crate::types::{NodeId, Snapshot, SnapshotData, TypeConfig, Vote};

/// Snapshot data is sent in chunks of this size.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Largest Raft RPC message accepted or sent (a batch of entries can carry many messages).
pub const MAX_RAFT_MESSAGE_BYTES: usize = 256 << 20;

/// A peer's disk report counts for this long after its last reply; an older one is unknown.
const DISK_REPORT_FRESH_FOR: Duration = Duration::from_secs(3);

/// What the peers said of their disks in their last replies to this node's appends and
/// heartbeats (only a leader sends those, so only a leader's view is current).
#[derive(Default)]
pub struct DiskReports {
    peers: Mutex<HashMap<NodeId, (bool, Instant)>>,
}

impl DiskReports {
    fn record(&self, peer: NodeId, disk_low: bool) {
        let mut peers = self.peers.lock().expect("disk reports lock poisoned");
        peers.insert(peer, (disk_low, Instant::now()));
    }

    /// Whether `peer` reported a low disk lately; `None` if it has not replied lately.
    pub fn is_low(&self, peer: NodeId) -> Option<bool> {
        let peers = self.peers.lock().expect("disk reports lock poisoned");
        peers
            .get(&peer)
            .filter(|(_, at)| at.elapsed() < DISK_REPORT_FRESH_FOR)
            .map(|(low, _)| *low)
    }
}

/// The last error each peer's calls failed with: what the leader's follower watch reports
/// when a follower goes silent (see `RaftNode::watch_followers`).
#[derive(Default)]
pub struct PeerErrors {
    last: Mutex<HashMap<NodeId, (String, Instant)>>,
}

impl PeerErrors {
    /// Keep a failed call's error for the follower watch, then turn it into openraft's.
    fn failed(&self, peer: NodeId, status: tonic::Status) -> RPCError<TypeConfig> {
        let mut last = self.last.lock().expect("peer errors lock poisoned");
        last.insert(peer, (status.message().to_string(), Instant::now()));
        status_to_rpc_error(status)
    }

    /// The last error of `peer`'s calls if it came after `since`.
    pub fn last_since(&self, peer: NodeId, since: Instant) -> Option<String> {
        let last = self.last.lock().expect("peer errors lock poisoned");
        last.get(&peer)
            .filter(|(_, at)| *at >= since)
            .map(|(error, _)| error.clone())
    }
}

/// Creates clients to peers; channels are cached by address.
#[derive(Clone, Default)]
pub struct Network {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    disk_reports: Arc<DiskReports>,
    peer_errors: Arc<PeerErrors>,
    peer_contact: Arc<PeerContact>,
    /// Whether this node's appends say that it is cut off from its group.
    cut_off: Arc<CutOffMark>,
    /// Source address of outgoing connections (see [`Network::from_own_address`]).
    local_address: Option<std::net::IpAddr>,
    /// Followers' acks are stamped here (see [`Timeline`]).
    timeline: Arc<Timeline>,
    /// Shared by the replication streams to every follower.
    catch_up: Arc<CatchUpLimit>,
}

impl Network {
    /// A network whose outgoing connections leave from this node's own Raft address when it
    /// is a loopback address: several nodes on one machine (`raftmq local`, each on its own
    /// 127.0.0.N) can then be told apart by address, so a drill can cut one node off with a
    /// packet filter. Elsewhere the system picks the source address as usual.
    pub fn from_own_address(
        raft_addr: &str,
        timeline: Arc<Timeline>,
        catch_up: CatchUpLimit,
    ) -> Network {
        let local_address = raft_addr
            .parse::<std::net::SocketAddr>()
            .ok()
            .map(|addr| addr.ip())
            .filter(|ip| ip.is_loopback());
        Network {
            local_address,
            timeline,
            catch_up: Arc::new(catch_up),
            ..Network::default()
        }
    }

    /// The address this node's outgoing Raft connections leave from, when it picks one.
    pub fn local_address(&self) -> Option<std::net::IpAddr> {
        self.local_address
    }

    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.channels.lock().expect("channel cache lock poisoned");
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .local_address(self.local_address)
            .connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    pub fn disk_reports(&self) -> &DiskReports {
        &self.disk_reports
    }

    pub fn peer_errors(&self) -> &PeerErrors {
        &self.peer_errors
    }

    /// When each peer last answered this node (see [`crate::contact`]).
    pub fn contact(&self) -> &PeerContact {
        &self.peer_contact
    }

    pub(crate) fn cut_off_mark(&self) -> &CutOffMark {
        &self.cut_off
    }

    pub fn catch_up(&self) -> &CatchUpLimit {
        &self.catch_up
    }

    pub fn client(
        &self,
        addr: &str,
    ) -> Result<RaftServiceClient<Channel>, tonic::transport::Error> {
        Ok(RaftServiceClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES))
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &pb::Node) -> PeerClient {
        PeerClient {
            target,
            client: self.client(&node.raft_addr).map_err(|e| e.to_string()),
            disk_reports: self.disk_reports.clone(),
            peer_errors: self.peer_errors.clone(),
            contact: self.peer_contact.clone(),
            cut_off: self.cut_off.clone(),
            timeline: self.timeline.clone(),
            catch_up: self.catch_up.clone(),
            failed_streams: 0,
        }
    }
}

/// The connection to one peer.
pub struct PeerClient {
    target: NodeId,
    client: Result<RaftServiceClient<Channel>, String>,
    disk_reports: Arc<DiskReports>,
    peer_errors: Arc<PeerErrors>,
    contact: Arc<PeerContact>,
    cut_off: Arc<CutOffMark>,
    timeline: Arc<Timeline>,
    catch_up: Arc<CatchUpLimit>,
    /// Replication streams to this peer that failed to open in a row.
    failed_streams: u32,
}

/// Pause before reporting a stream that could not be opened: openraft opens the next one at
/// once, and a dead peer would otherwise cost a busy loop of connection attempts (and a log
/// line each). Grows from 10 ms to 320 ms while the peer stays unreachable.
fn reconnect_pause(failed_streams: u32) -> std::time::Duration {
    std::time::Duration::from_millis(10u64 << failed_streams.min(5))
}

fn status_to_rpc_error(status: tonic::Status) -> RPCError<TypeConfig> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Cancelled => {
            RPCError::Unreachable(Unreachable::new(&status))
        }
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

fn bad_reply(err: convert::MissingField) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::new(&err))
}

/// Turn an append request into its wire form, marked when this node counts itself cut off
/// (see [`CutOffMark`]); one that carries only entries the follower is catching up on first
/// waits for room under the catch-up limit.
async fn append_request_on_wire(
    request: AppendEntriesRequest<TypeConfig>,
    leader_cut_off: bool,
    catch_up: &CatchUpLimit,
) -> pb::AppendEntriesRequest {
    let catching_up = request.entries.last().is_some_and(|last| {
        CatchUpLimit::is_catch_up(
            last.log_id.index,
            request.leader_commit.as_ref().map(|id| id.index),
        )
    });
    let mut request = convert::append_request_to_pb(request);
    request.leader_cut_off = leader_cut_off;
    if catching_up {
        catch_up.admit(request.encoded_len()).await;
    }
    request
}

fn with_timeout<T>(message: T, option: &RPCOption) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(option.hard_ttl());
    request
}

#[derive(Debug, thiserror::Error)]
#[error("invalid address of node {node}: {reason}")]
struct BadAddress {
    node: NodeId,
    reason: String,
}

impl PeerClient {
    fn client(&self) -> Result<RaftServiceClient<Channel>, RPCError<TypeConfig>> {
        self.client.clone().map_err(|reason| {
            RPCError::Unreachable(Unreachable::new(&BadAddress {
                node: self.target,
                reason,
            }))
        })
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let rpc_last_index = rpc.entries.last().map(|entry| entry.log_id.index);
        let cut_off = self.cut_off.leader_cut_off(&self.contact);
        let request = append_request_on_wire(rpc, cut_off, &self.catch_up).await;
        let request = with_timeout(request, &option);
        let reply = self
            .client()?
            .append_entries(request)
            .await
            .map_err(|status| self.peer_errors.failed(self.target, status))?
            .into_inner();
        self.contact.answered(self.target);
        self.disk_reports.record(self.target, reply.disk_low);
        let response = convert::append_response_from_pb(&reply).map_err(bad_reply)?;
        let stored = match &response {
            AppendEntriesResponse::Success => rpc_last_index,
            AppendEntriesResponse::PartialSuccess(last) => last.as_ref().map(|id| id.index),
            _ => None,
        };
        if let Some(index) = stored {
            self.timeline.follower_acked(index);
        }
        Ok(response)
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        _option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<
            BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        Box::pin(async move {
            let mut client = self.client()?;
            // The follower answers the requests of a stream in order: pair them by position.
            let sent_at = Arc::new(Mutex::new(std::collections::VecDeque::new()));
            let sent = sent_at.clone();
            let (cut_off, contact) = (self.cut_off.clone(), self.contact.clone());
            let catch_up = self.catch_up.clone();
            let requests = input.then(move |request| {
                let (sent, catch_up) = (sent.clone(), catch_up.clone());
                let leader_cut_off = cut_off.leader_cut_off(&contact);
                async move {
                    let request = append_request_on_wire(request, leader_cut_off, &catch_up).await;
                    sent.lock()
                        .expect("sent-at lock poisoned")
                        .push_back(Instant::now());
                    request
                }
            });
            let replies = match client.stream_append(requests).await {
                Ok(replies) => {
                    self.failed_streams = 0;
                    replies.into_inner()
                }
                Err(status) => {
                    tokio::time::sleep(reconnect_pause(self.failed_streams)).await;
                    self.failed_streams = self.failed_streams.saturating_add(1);
                    return Err(self.peer_errors.failed(self.target, status));
                }
            };
            let (target, disk_reports) = (self.target, self.disk_reports.clone());
            let (timeline, peer_errors) = (self.timeline.clone(), self.peer_errors.clone());
            let contact = self.contact.clone();
            let results = replies.map(move |reply| {
                let reply = reply.map_err(|status| peer_errors.failed(target, status))?;
                contact.answered(target);
                if let Some(sent) = sent_at.lock().expect("sent-at lock poisoned").pop_front() {
                    metrics::histogram!("raftmq_replication_round_trip_seconds")
                        .record(sent.elapsed().as_secs_f64());
                }
                disk_reports.record(target, reply.disk_low);
                let result = convert::stream_result_from_pb(&reply).map_err(bad_reply)?;
                if let Ok(Some(stored)) = &result {
                    timeline.follower_acked(stored.index);
                }
                Ok(result)
            });
            Ok(Box::pin(results) as BoxStream<'s, _>)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = with_timeout(convert::vote_request_to_pb(&rpc), &option);
        let reply = self
            .client()?
            .vote(request)
            .await
            .map_err(|status| self.peer_errors.failed(self.target, status))?
            .into_inner();
        self.contact.answered(self.target);
        convert::vote_response_from_pb(&reply).map_err(bad_reply)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = with_timeout(convert::vote_request_to_pb(&rpc), &option);
        let reply = self
            .client()?
            .pre_vote(request)
            .await
            .map_err(|status| self.peer_errors.failed(self.target, status))?
            .into_inner();
        self.contact.answered(self.target);
        convert::vote_response_from_pb(&reply).map_err(bad_reply)
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = with_timeout(convert::transfer_leader_request_to_pb(&req), &option);
        let reply = self
            .client()?
            .transfer_leader(request)
            .await
            .map_err(|status| self.peer_errors.failed(self.target, status))?
            .into_inner();
        if reply.refused.is_empty() {
            Ok(Ok(()))
        } else {
            // openraft only logs the outcome; the refusal's text is what matters there.
            Err(RPCError::Network(NetworkError::new(
                &std::io::Error::other(format!(
                    "node {} refused the leadership: {}",
                    req.to_node_id(),
                    reply.refused
                )),
            )))
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut client = self.client().map_err(|e| match e {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            other => StreamingError::Network(NetworkError::new(&other)),
        })?;
        let meta = pb::SnapshotMeta {
            vote: Some(convert::vote_to_pb(&vote)),
            last_log_id: snapshot
                .meta
                .last_log_id
                .as_ref()
                .map(convert::log_id_to_pb),
            last_membership: Some(convert::stored_membership_to_pb(
                &snapshot.meta.last_membership,
            )),
        };
        let mut chunks = vec![pb::SnapshotChunk {
            payload: Some(pb::snapshot_chunk::Payload::Meta(meta)),
        }];
        for piece in snapshot.snapshot.chunks(SNAPSHOT_CHUNK_BYTES) {
            chunks.push(pb::SnapshotChunk {
                payload: Some(pb::snapshot_chunk::Payload::Data(
                    bytes::Bytes::copy_from_slice(piece),
                )),
            });
        }
        // A snapshot only goes to a follower that is catching up.
        let catch_up = self.catch_up.clone();
        let chunks = futures::stream::iter(chunks).then(move |chunk| {
            let catch_up = catch_up.clone();
            async move {
                catch_up.admit(chunk.encoded_len()).await;
                chunk
            }
        });
        let send = client.snapshot(chunks);
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            reply = send => reply.map_err(|status| StreamingError::Network(NetworkError::new(&status)))?,
        };
        let vote = reply.into_inner().vote.ok_or_else(|| {
            StreamingError::Network(NetworkError::new(&convert::MissingField {
                record: "SnapshotResponse",
                reason: "missing field `vote`".into(),
            }))
        })?;
        let vote = convert::vote_from_pb(&vote)
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        Ok(SnapshotResponse { vote })
    }
}
