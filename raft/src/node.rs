//! One Raft node of a broker group: storage, openraft, bootstrap and the propose path.
//!
//! ```text
//!  client call ─► any node ─► propose(command)
//!                               │ leader here?  ── yes ─► Raft::client_write ─► replicated,
//!                               │                                committed, applied ─► result
//!                               └─ no ─► Propose RPC to the leader (retried while an
//!                                        election is in progress, up to a deadline)
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, LinearizableReadError};
use openraft::raft::{VoteRequest, VoteResponse};
use openraft::{Config, RaftMetrics, SnapshotPolicy};
use raftmq_proto::raft::v1 as pb;
use raftmq_storage::{BrokerState, Db, DiskSpace, FlushMode, LogStore, StorageError};

use crate::catchup::CatchUpLimit;
use crate::dead_leader::LeaderLiveness;
use crate::log_store::RaftLogStore;
use crate::network::Network;
use crate::state_machine::StateMachine;
use crate::timeline::Timeline;
use crate::types::{NodeId, Raft, Request, TypeConfig};

/// What a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: NodeId,
    /// The broker group's name, recorded in the data dir's identity.
    pub group: String,
    pub data_dir: PathBuf,
    pub flush: FlushMode,
    /// Every voter of the group, this node included: id → addresses.
    pub members: BTreeMap<NodeId, pb::Node>,
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Below this many free bytes on the data dir's filesystem the node counts as having no
    /// room for new messages (0: never).
    pub min_free_disk: u64,
    /// RocksDB's block cache and memtables together, in bytes.
    pub storage_memory: usize,
    /// Bytes a second this node, as leader, sends of entries its followers are catching up on
    /// (see [`crate::catchup`]); 0: no limit.
    pub catchup_bytes_per_sec: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("node {0} is not among the configured members")]
    NotAMember(NodeId),
    #[error("invalid raft settings: {0}")]
    Config(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("start raft: {0}")]
    Raft(String),
    #[error(
        "the data dir belongs to node {found} of group `{found_group}`, not to node {configured} \
         of group `{configured_group}`: wrong volume attached? (give this node its own data dir, \
         or an empty one to rejoin as a new replica)"
    )]
    WrongDataDir {
        found: NodeId,
        found_group: String,
        configured: NodeId,
        configured_group: String,
    },
}

/// How long a follower may go without answering its leader before the leader logs it.
pub const FOLLOWER_SILENT_AFTER: Duration = Duration::from_secs(1);

/// Why a proposal did not produce a result.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ProposeError {
    /// No leader could be reached before the deadline; the command was not written.
    #[error("no leader available in the broker group (election in progress or no quorum)")]
    NoLeader,
    /// The command may or may not have been committed (for example the leader failed after
    /// receiving it). Retrying a send with the same message id is safe.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The node is shutting down or its Raft core failed.
    #[error("raft node failed: {0}")]
    Fatal(String),
    /// Refused before it reached the log: too few nodes have disk space for new messages.
    #[error("{0}")]
    NoRoom(String),
}

/// Read the data dir's identity, or write it when there is none. Returns whether the node
/// starts with an empty disk. A data dir of another node or group is refused.
fn check_identity(log: &LogStore, config: &NodeConfig) -> Result<bool, StartError> {
    if let Some(identity) = log.read_identity()? {
        if identity.node_id != config.node_id || identity.group != config.group {
            return Err(StartError::WrongDataDir {
                found: identity.node_id,
                found_group: identity.group,
                configured: config.node_id,
                configured_group: config.group.clone(),
            });
        }
        return Ok(false);
    }
    // A data dir written before identities existed still holds its vote and log.
    let empty = log.read_vote()?.is_none() && log.last()?.is_none();
    let identity = pb::NodeIdentity {
        node_id: config.node_id,
        group: config.group.clone(),
        storage_id: uuid::Uuid::new_v4().to_string(),
        created_ms: crate::now_ms(),
    };
    log.save_identity(&identity)?;
    if empty {
        tracing::info!(storage_id = %identity.storage_id, "new data dir");
    }
    Ok(empty)
}

/// Why leadership could not be handed over.
#[derive(Clone, Debug, thiserror::Error)]
pub enum TransferError {
    #[error("node {me} is not the leader (the leader is {leader:?}); ask the leader")]
    NotLeader { me: NodeId, leader: Option<NodeId> },
    #[error("node {0} is not a voter of this group")]
    NotAVoter(NodeId),
    #[error("the group has no other voter to take over")]
    NoFollower,
    #[error("no other node became leader within {0:?}")]
    TimedOut(Duration),
    #[error(
        "node {target} does not hold the whole log (it has up to {matched:?}, the leader {last:?}): \
         it is down or behind; leadership stays"
    )]
    TargetBehind {
        target: NodeId,
        matched: Option<u64>,
        last: Option<u64>,
    },
    #[error(
        "node {0} has not answered since the hand-over was asked for: it is down or stopping; \
         leadership stays"
    )]
    TargetNotAnswering(NodeId),
    #[error("raft node failed: {0}")]
    Fatal(String),
}

/// Why a membership change was not made.
#[derive(Clone, Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("node {me} is not the leader (the leader is {leader:?}); ask the leader")]
    NotLeader { me: NodeId, leader: Option<NodeId> },
    #[error("{0}")]
    Invalid(String),
    #[error(
        "node {id} did not catch up within {waited:?}; it stays a learner (add it again to retry)"
    )]
    CatchUpTimedOut { id: NodeId, waited: Duration },
    #[error("membership change failed: {0}")]
    Failed(String),
}

pub struct RaftNode {
    pub id: NodeId,
    pub raft: Raft,
    pub state: Arc<BrokerState>,
    pub flush: FlushMode,
    /// Free space of this node's data dir; checked by the broker's disk watch.
    pub disk: Arc<DiskSpace>,
    /// The voters the group was first started with (used to initialize it once).
    initial_members: BTreeMap<NodeId, pb::Node>,
    network: Network,
    /// This node started with an empty disk and has not seen a leader since: it may have
    /// voted before its disk was lost, so it grants no vote to a candidate with a non-empty
    /// log (that is, outside a brand-new group's first election) until it follows a leader.
    rejoining: AtomicBool,
    timeline: Arc<Timeline>,
    /// Set when the node begins to stop: the Raft server then refuses peers' calls and ends
    /// their append streams, so that none reaches a stopped core (openraft logs each such
    /// message at ERROR). Each open append stream holds a receiver until it ends.
    stopping: tokio::sync::watch::Sender<bool>,
    /// While this node leads: when it became leader (wall clock, ms since the epoch); else 0.
    leading_since_ms: AtomicI64,
    /// When this node, as a follower, last heard from its leader (see [`crate::dead_leader`]).
    pub(crate) liveness: LeaderLiveness,
    /// Read-only use: the last entry's id, which peers ask for when their leader is gone.
    log: LogStore,
}

impl RaftNode {
    pub async fn start(config: NodeConfig) -> Result<Arc<RaftNode>, StartError> {
        if !config.members.contains_key(&config.node_id) {
            return Err(StartError::NotAMember(config.node_id));
        }
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            StartError::Config(format!(
                "create data dir {}: {e}",
                config.data_dir.display()
            ))
        })?;
        let disk = Arc::new(DiskSpace::new(&config.data_dir, config.min_free_disk));
        if let Err(e) = disk.check() {
            tracing::warn!(error = %e, "cannot read the data dir's free space");
        }
        let db = Db::open_with_memory(
            &config.data_dir.join("rocksdb"),
            config.flush,
            config.storage_memory,
            config.node_id,
        )?;
        let log = LogStore::new(db.clone());
        let own_log = LogStore::new(db.clone());
        let empty_disk = check_identity(&log, &config)?;
        let state = Arc::new(BrokerState::open(db)?);
        let raft_config = Config {
            cluster_name: "raftmq".into(),
            heartbeat_interval: config.heartbeat_interval.as_millis() as u64,
            election_timeout_min: config.election_timeout_min.as_millis() as u64,
            election_timeout_max: config.election_timeout_max.as_millis() as u64,
            // Snapshots never delete messages: the log is the commit log and is bounded by
            // retention, not by snapshots.
            max_in_snapshot_log_to_keep: u64::MAX,
            snapshot_policy: SnapshotPolicy::Never,
            enable_pre_vote: Some(true),
            // A follower whose disk was replaced comes back with an empty log; the leader must
            // then send everything again instead of treating it as a bug.
            allow_log_reversion: Some(true),
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))?;
        let own_raft_addr = config
            .members
            .get(&config.node_id)
            .map(|node| node.raft_addr.clone())
            .unwrap_or_default();
        let timeline = Arc::new(Timeline::default());
        let network = Network::from_own_address(
            &own_raft_addr,
            timeline.clone(),
            CatchUpLimit::new(config.catchup_bytes_per_sec),
        );
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            network.clone(),
            RaftLogStore::new(log, timeline.clone()),
            StateMachine::new(state.clone(), timeline.clone()),
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
        Ok(Arc::new(RaftNode {
            id: config.node_id,
            raft,
            state,
            flush: config.flush,
            disk,
            initial_members: config.members,
            network,
            timeline,
            rejoining: AtomicBool::new(empty_disk),
            stopping: tokio::sync::watch::channel(false).0,
            leading_since_ms: AtomicI64::new(0),
            liveness: LeaderLiveness::default(),
            log: own_log,
        }))
    }

    /// Stop the Raft core, after ending the peers' append streams and refusing their calls
    /// (waiting at most `STREAMS_END_WITHIN` for the streams).
    pub async fn shutdown(
        &self,
    ) -> Result<(), openraft::type_config::alias::JoinErrorOf<TypeConfig>> {
        const STREAMS_END_WITHIN: Duration = Duration::from_millis(200);
        self.stopping.send_replace(true);
        let started = Instant::now();
        while self.stopping.receiver_count() > 0 && started.elapsed() < STREAMS_END_WITHIN {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.raft.shutdown().await
    }

    /// Whether the node has begun to stop.
    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Whether the node has begun to stop, for an append stream: it keeps this receiver (or a
    /// clone) until it ends, which `shutdown` waits for.
    pub fn watch_stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// While this node leads: when it became leader, in ms since the epoch by its wall clock
    /// (a failover drill compares it with when it injected the fault).
    pub fn leading_since_ms(&self) -> Option<i64> {
        Some(self.leading_since_ms.load(Ordering::Relaxed)).filter(|ms| *ms > 0)
    }

    /// Log each change of the group's leader as this node sees it, once (openraft's own lines
    /// on elections are left out by the default filter), and note when this node starts to
    /// lead. Woken by each change of the server metrics (role, vote, leader, membership; not
    /// the log indexes, which change with every write), so the time is that of the election,
    /// not of a poll.
    pub async fn watch_leadership(self: Arc<Self>) {
        let mut server = self.raft.server_metrics();
        let mut known: Option<(NodeId, u64)> = None;
        loop {
            // From the server metrics themselves: the full metrics are published after them.
            let (leader, term) = {
                let m = server.borrow_watched();
                (m.current_leader, m.vote.leader_id.term)
            };
            let was_leading = known.is_some_and(|(id, _)| id == self.id);
            match leader {
                Some(id) if known != Some((id, term)) => {
                    if id == self.id {
                        self.leading_since_ms
                            .store(crate::now_ms(), Ordering::Relaxed);
                        tracing::info!(term, "this node leads the group");
                    } else {
                        self.leading_since_ms.store(0, Ordering::Relaxed);
                        tracing::info!(leader = id, term, "following a new leader");
                    }
                    known = Some((id, term));
                }
                // Candidates and partitions change terms without a leader several times a
                // second: only losing this node's own leadership is worth a line.
                None if was_leading => {
                    self.leading_since_ms.store(0, Ordering::Relaxed);
                    tracing::info!(term, "this node no longer leads");
                    known = None;
                }
                _ => {}
            }
            if server.changed().await.is_err() {
                self.leading_since_ms.store(0, Ordering::Relaxed);
                return;
            }
        }
    }

    /// Stop refusing votes once a leader is followed (see `rejoining`).
    pub async fn watch_rejoin(self: Arc<Self>) {
        if !self.rejoining.load(Ordering::Relaxed) {
            return;
        }
        let seen = self
            .raft
            .wait(None)
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await;
        if let Ok(metrics) = seen {
            self.rejoining.store(false, Ordering::Relaxed);
            tracing::info!(
                leader = ?metrics.current_leader,
                term = metrics.current_term,
                "following the group's leader; this node votes again"
            );
        }
    }

    /// While this node leads, log once when a follower stops answering (for longer than
    /// [`FOLLOWER_SILENT_AFTER`]) and once when it answers again. openraft itself reports
    /// every failed heartbeat and replication attempt, several lines a second per lost
    /// follower; the default log filter leaves those out in favour of these two lines.
    pub async fn watch_followers(self: Arc<Self>) {
        // Followers reported silent, with when they went quiet.
        let mut silent: BTreeMap<NodeId, Instant> = BTreeMap::new();
        let mut leading_since: Option<Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let metrics = self.metrics();
            if metrics.running_state.is_err() {
                return;
            }
            let acks = match &metrics.heartbeat {
                Some(acks) if metrics.current_leader == Some(self.id) => acks,
                _ => {
                    leading_since = None;
                    silent.clear();
                    continue;
                }
            };
            let leading_from = *leading_since.get_or_insert_with(Instant::now);
            let now = Instant::now();
            for (&peer, ack) in acks {
                if peer == self.id {
                    continue;
                }
                // Acks are stamped with tokio's clock; this loop runs on tokio's too.
                let last_heard = ack
                    .as_ref()
                    .and_then(|at| now.checked_sub(openraft::Instant::elapsed(&at.into_inner())))
                    .map_or(leading_from, |at| at.max(leading_from));
                let quiet = now.saturating_duration_since(last_heard);
                match (quiet >= FOLLOWER_SILENT_AFTER, silent.get(&peer)) {
                    (true, None) => {
                        tracing::warn!(
                            follower = peer,
                            quiet_ms = quiet.as_millis() as u64,
                            last_error = self
                                .network
                                .peer_errors()
                                .last_since(peer, last_heard)
                                .as_deref()
                                .unwrap_or("none (no answer in time)"),
                            "a follower is not answering; it gets no new entries until it does"
                        );
                        silent.insert(peer, last_heard);
                    }
                    (false, Some(since)) => {
                        tracing::info!(
                            follower = peer,
                            silent_ms = now.saturating_duration_since(*since).as_millis() as u64,
                            "a follower answers again"
                        );
                        silent.remove(&peer);
                    }
                    _ => {}
                }
            }
            silent.retain(|peer, _| acks.contains_key(peer));
        }
    }

    /// A refusal for a vote request this node must not grant while it rejoins with an empty
    /// disk; `None` lets openraft decide as usual.
    pub fn refuse_vote(
        &self,
        request: &VoteRequest<TypeConfig>,
    ) -> Option<VoteResponse<TypeConfig>> {
        let candidate_has_log = request.last_log_id.as_ref().is_some_and(|id| id.index > 0);
        if !self.rejoining.load(Ordering::Relaxed) || !candidate_has_log {
            return None;
        }
        tracing::info!(
            candidate = %request.vote,
            "vote refused: this node started with an empty disk and follows no leader yet"
        );
        let metrics = self.raft.metrics();
        let vote = metrics.borrow_watched().vote;
        Some(VoteResponse::new(vote, None, false))
    }

    /// Where node `id` can be reached: from the group's current membership, or from the
    /// configured members for a node the membership does not know (yet).
    pub fn node_addr(&self, id: NodeId) -> Option<pb::Node> {
        let metrics = self.raft.metrics();
        let from_membership = metrics
            .borrow_watched()
            .membership_config
            .membership()
            .get_node(&id)
            .cloned();
        from_membership.or_else(|| self.initial_members.get(&id).cloned())
    }

    /// The group's current voters and their addresses.
    pub fn voters(&self) -> Vec<(NodeId, pb::Node)> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        let membership = metrics.membership_config.membership();
        let voters: Vec<(NodeId, pb::Node)> = membership
            .voter_ids()
            .filter_map(|id| Some((id, membership.get_node(&id)?.clone())))
            .collect();
        if voters.is_empty() {
            // Not initialized yet: the configured members are the group to be.
            return self
                .initial_members
                .iter()
                .map(|(id, node)| (*id, node.clone()))
                .collect();
        }
        voters
    }

    /// The id of the last entry in this node's log (written, maybe not yet flushed), read
    /// from the store: openraft's own view of it is not public. A log purged up to its end
    /// (just after a snapshot was installed) ends at its last purged entry, as openraft sees it.
    pub fn last_log_id(&self) -> Result<Option<crate::types::LogId>, String> {
        let last = match self.log.last().map_err(|e| e.to_string())? {
            Some(entry) => entry.log_id,
            None => self.log.read_purged().map_err(|e| e.to_string())?,
        };
        crate::convert::opt_log_id_from_pb(last.as_ref()).map_err(|e| e.to_string())
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    pub fn metrics(&self) -> RaftMetrics<TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    /// Wait until the Raft core stops by itself (a storage error it cannot go on from), and
    /// say why. Such a node would otherwise keep serving with frozen state: its caller exits,
    /// so a supervisor restarts it from what is durable.
    pub async fn core_stopped(&self) -> String {
        let mut metrics = self.raft.metrics();
        loop {
            if let Err(fatal) = &metrics.borrow_watched().running_state {
                return fatal.to_string();
            }
            if metrics.changed().await.is_err() {
                return "the raft core ended".to_string();
            }
        }
    }

    /// Hand leadership to `to`, or to the voter whose log is furthest along, and wait until
    /// another node leads. Writes that arrive meanwhile are forwarded to the new leader by
    /// [`RaftNode::propose`], so a planned move fails no send.
    pub async fn transfer_leadership(
        &self,
        to: Option<NodeId>,
        deadline: Duration,
    ) -> Result<NodeId, TransferError> {
        let give_up = Instant::now() + deadline;
        let metrics = self.metrics();
        if metrics.current_leader != Some(self.id) {
            return Err(TransferError::NotLeader {
                me: self.id,
                leader: metrics.current_leader,
            });
        }
        let voters: Vec<NodeId> = metrics.membership_config.membership().voter_ids().collect();
        let matched = |metrics: &RaftMetrics<TypeConfig>, id: NodeId| {
            metrics
                .replication
                .as_ref()
                .and_then(|progress| progress.get(&id).cloned().flatten())
                .map(|log_id| log_id.index)
        };
        let target = match to {
            Some(id) if id == self.id => return Ok(self.id),
            Some(id) if !voters.contains(&id) => return Err(TransferError::NotAVoter(id)),
            Some(id) => id,
            None => voters
                .iter()
                .copied()
                .filter(|id| *id != self.id)
                .max_by_key(|id| {
                    // The most complete log, and of those the one heard from last.
                    let last_ack = metrics
                        .heartbeat
                        .as_ref()
                        .and_then(|acks| acks.get(id).cloned().flatten())
                        .map(|at| at.into_inner());
                    (matched(&metrics, *id), last_ack)
                })
                .ok_or(TransferError::NoFollower)?,
        };
        // Give the target a moment to catch up: it takes over only once its log holds
        // everything this leader has. A target still behind after that (down, or far
        // behind) is not asked: the group would wait for an election instead.
        let catch_up_until = Instant::now() + deadline / 4;
        // A follower that is up answers every heartbeat interval; one with the whole log that
        // stays silent for an election timeout is stopping too (a whole group stopping at
        // once), and waiting out the catch-up time for it only delays this node's stop.
        let silent_after = Instant::now()
            + Duration::from_millis(self.raft.config().election_timeout_max).max(
                Duration::from_millis(3 * self.raft.config().heartbeat_interval),
            );
        let asked_at = <openraft::TokioInstant as openraft::Instant>::now();
        loop {
            let now = self.metrics();
            // On an idle group a dead follower still looks caught up: it must also have
            // acknowledged something since this transfer was asked for (heartbeats go out
            // every heartbeat interval).
            let answering = now
                .heartbeat
                .as_ref()
                .and_then(|acks| acks.get(&target).cloned().flatten())
                .is_some_and(|at| at.into_inner() > asked_at);
            let matched = matched(&now, target);
            let complete = matched >= now.last_log_index;
            if answering && complete {
                break;
            }
            // A log that is complete but silent is a node that went away: saying it is
            // behind would send the operator looking for a lag that is not there.
            if complete && Instant::now() >= silent_after {
                return Err(TransferError::TargetNotAnswering(target));
            }
            if Instant::now() >= catch_up_until {
                return Err(TransferError::TargetBehind {
                    target,
                    matched,
                    last: now.last_log_index,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::info!(to = target, "transferring leadership");
        self.raft
            .trigger()
            .transfer_leader(target)
            .await
            .map_err(|e| TransferError::Fatal(e.to_string()))?;
        let me = self.id;
        let wait = give_up.saturating_duration_since(Instant::now());
        match self
            .raft
            .wait(Some(wait))
            .metrics(
                |m| m.current_leader.is_some_and(|leader| leader != me),
                "another node leads",
            )
            .await
        {
            Ok(m) => Ok(m.current_leader.unwrap_or(target)),
            Err(_) => Err(TransferError::TimedOut(deadline)),
        }
    }

    fn ensure_leader_for_membership(&self) -> Result<RaftMetrics<TypeConfig>, MembershipError> {
        let metrics = self.metrics();
        if metrics.current_leader != Some(self.id) {
            return Err(MembershipError::NotLeader {
                me: self.id,
                leader: metrics.current_leader,
            });
        }
        Ok(metrics)
    }

    /// Add node `id` as a voter: first as a learner that receives the whole log, then, once
    /// it has caught up, promoted to voter through joint consensus. Adding a voter again with
    /// the same addresses does nothing.
    pub async fn add_voter(
        &self,
        id: NodeId,
        node: pb::Node,
        catch_up: Duration,
    ) -> Result<(), MembershipError> {
        let metrics = self.ensure_leader_for_membership()?;
        let membership = metrics.membership_config.membership();
        if let Some(existing) = membership.get_node(&id)
            && (existing.raft_addr != node.raft_addr || existing.client_addr != node.client_addr)
        {
            return Err(MembershipError::Invalid(format!(
                "node {id} is already a member at {}/{}; remove it first to change its addresses",
                existing.raft_addr, existing.client_addr
            )));
        }
        if membership.voter_ids().any(|v| v == id) {
            return Ok(());
        }
        let failed =
            |e: openraft::errors::RaftError<TypeConfig, ClientWriteError<TypeConfig>>| match e {
                openraft::errors::RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                    MembershipError::NotLeader {
                        me: self.id,
                        leader: f.leader_id,
                    }
                }
                other => MembershipError::Failed(other.to_string()),
            };
        tracing::info!(node = id, raft_addr = %node.raft_addr, "adding a learner");
        match tokio::time::timeout(catch_up, self.raft.add_learner(id, node, true)).await {
            Ok(result) => {
                result.map_err(failed)?;
            }
            Err(_) => {
                return Err(MembershipError::CatchUpTimedOut {
                    id,
                    waited: catch_up,
                });
            }
        }
        // openraft's blocking add returns once the learner is within its lag threshold,
        // even before the learner has answered once. Promote only a learner that holds the
        // log and follows this leader: an empty voter would refuse votes (see `rejoining`).
        let target = self.metrics().last_log_index.unwrap_or(0);
        let caught_up = self
            .raft
            .wait(Some(catch_up))
            .metrics(
                |m| {
                    m.replication
                        .as_ref()
                        .and_then(|progress| progress.get(&id).cloned().flatten())
                        .is_some_and(|matched| matched.index >= target)
                },
                "the learner holds the log",
            )
            .await;
        if caught_up.is_err() {
            return Err(MembershipError::CatchUpTimedOut {
                id,
                waited: catch_up,
            });
        }
        tracing::info!(node = id, "learner caught up; promoting it to voter");
        self.raft
            .change_membership(
                openraft::ChangeMembers::AddVoterIds([id].into_iter().collect()),
                false,
            )
            .await
            .map_err(failed)?;
        Ok(())
    }

    /// Remove node `id` from the group (voter or learner). The group must keep at least one
    /// voter; a removed leader steps down once the change is committed.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), MembershipError> {
        let metrics = self.ensure_leader_for_membership()?;
        let membership = metrics.membership_config.membership();
        if membership.get_node(&id).is_none() {
            return Err(MembershipError::Invalid(format!(
                "node {id} is not a member of this group"
            )));
        }
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let change = if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(MembershipError::Invalid(format!(
                    "node {id} is the group's only voter"
                )));
            }
            openraft::ChangeMembers::RemoveVoters([id].into_iter().collect())
        } else {
            openraft::ChangeMembers::RemoveNodes([id].into_iter().collect())
        };
        tracing::info!(node = id, "removing a member");
        self.raft
            .change_membership(change, false)
            .await
            .map_err(|e| MembershipError::Failed(e.to_string()))?;
        Ok(())
    }

    /// The lowest-id member initializes the group, once, when no member has been initialized
    /// yet. Every other node (and a node restarted with an empty disk) waits to be replicated
    /// to by the leader.
    pub async fn bootstrap(self: Arc<Self>) {
        let lowest = self.initial_members.keys().next().copied();
        if lowest != Some(self.id) {
            return;
        }
        loop {
            match self.raft.is_initialized().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, "bootstrap: raft core stopped");
                    return;
                }
            }
            let mut all_empty = true;
            for (id, node) in &self.initial_members {
                if *id == self.id {
                    continue;
                }
                match self.peer_initialized(node).await {
                    Some(true) => {
                        tracing::info!(
                            peer = id,
                            "group already initialized; waiting for the leader to replicate"
                        );
                        return;
                    }
                    Some(false) => {}
                    None => all_empty = false,
                }
            }
            if all_empty {
                let voters: BTreeMap<_, _> = self.initial_members.clone();
                match self.raft.initialize(voters).await {
                    Ok(()) => {
                        tracing::info!(members = ?self.initial_members.keys().collect::<Vec<_>>(), "initialized the group")
                    }
                    Err(e) => tracing::warn!(error = %e, "initialize"),
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn peer_initialized(&self, node: &pb::Node) -> Option<bool> {
        let mut client = self.network.client(&node.raft_addr).ok()?;
        let mut request = tonic::Request::new(pb::NodeStatusRequest {});
        request.set_timeout(Duration::from_millis(800));
        client
            .node_status(request)
            .await
            .ok()
            .map(|r| r.into_inner().initialized)
    }

    /// On the leader, refuse a command that stores new messages when the group has no room
    /// for them: this node's disk is low, or fewer than a majority of voters have room (a
    /// voter that has not replied lately counts as having room: Raft itself waits for it).
    /// Everything else (offsets, acks, topics) still goes through, so consumers keep going.
    pub fn check_room(&self, command: &pb::Command) -> Result<(), ProposeError> {
        if !matches!(command.kind, Some(pb::command::Kind::Append(_))) {
            return Ok(());
        }
        let voters: Vec<NodeId> = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow_watched();
            if metrics.current_leader != Some(self.id) {
                return Ok(());
            }
            metrics.membership_config.membership().voter_ids().collect()
        };
        const MIB: u64 = 1 << 20;
        if self.disk.is_low() {
            return Err(ProposeError::NoRoom(format!(
                "disk full: the leader (node {}) has {} MiB free on its data dir, below \
                 min_free_disk ({} MiB); new messages are refused until space is freed or a node \
                 with room takes over",
                self.id,
                self.disk.free_bytes() / MIB,
                self.disk.min_free_bytes() / MIB
            )));
        }
        let low: Vec<NodeId> = voters
            .iter()
            .copied()
            .filter(|id| *id != self.id && self.network.disk_reports().is_low(*id) == Some(true))
            .collect();
        if voters.len() - low.len() <= voters.len() / 2 {
            return Err(ProposeError::NoRoom(format!(
                "disk full: nodes {low:?} of the {} voters are below min_free_disk, so no \
                 majority can store new messages; they are refused until space is freed",
                voters.len()
            )));
        }
        Ok(())
    }

    /// Whether a write of this node is waiting for its full disk to have room.
    pub fn disk_full(&self) -> bool {
        self.state.db().waiting_for_space()
    }

    /// The leader to hand a call to without waiting for this node's Raft core, when that core
    /// cannot answer in time: this node's writes wait for disk space (a full disk stops the
    /// core in its log append), or a leader of a newer term than the core has taken in is
    /// sending appends (the core is stuck or behind). A leader whose disk filled to the
    /// last byte is then replaced by its followers, and without this it would hold its
    /// clients' calls, or refuse them for want of room, until the disk had room again.
    fn leader_past_core(&self) -> Option<NodeId> {
        let lease = Duration::from_millis(self.raft.config().election_timeout_max);
        let (leader, term) = self.liveness.in_touch_leader_within(lease)?;
        let core_term = self.raft.metrics().borrow_watched().vote.leader_id.term;
        let past = term > core_term || (term == core_term && self.disk_full());
        (past && leader != self.id).then_some(leader)
    }

    /// Replicate a command through the group's leader and return what applying it produced.
    pub async fn propose(
        &self,
        command: pb::Command,
        deadline: Duration,
    ) -> Result<pb::CommandResult, ProposeError> {
        let give_up = Instant::now() + deadline;
        let mut forwarded_once = false;
        // Shared: a retry or a forward to another leader needs it again after openraft took it.
        let command = Arc::new(command);
        loop {
            let leader = match self.leader_past_core() {
                Some(leader) => Some(leader),
                None => match self.write_here(&command, give_up).await? {
                    Written::Applied(result) => return Ok(result),
                    Written::Elsewhere(leader) => leader,
                },
            };
            if let Some(leader) = leader.filter(|id| *id != self.id)
                && let Some(node) = self.node_addr(leader)
            {
                match self.forward(leader, &node, &command, give_up).await {
                    Forwarded::Done(result) => return Ok(result),
                    Forwarded::NoRoom(reason) => return Err(ProposeError::NoRoom(reason)),
                    Forwarded::NotLeader => {}
                    Forwarded::Unknown(reason) => {
                        // The leader may have received it: say so rather than "failed".
                        if Instant::now() >= give_up || forwarded_once {
                            return Err(ProposeError::Unknown(reason));
                        }
                        forwarded_once = true;
                    }
                }
            }
            if Instant::now() >= give_up {
                return Err(ProposeError::NoLeader);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Propose `command` to this node's Raft core.
    async fn write_here(
        &self,
        command: &Arc<pb::Command>,
        give_up: Instant,
    ) -> Result<Written, ProposeError> {
        self.check_room(command)?;
        let proposed = Instant::now();
        let write = self.raft.client_write(Request::new(command.clone()));
        tokio::pin!(write);
        // A leader cut off from its majority holds the write until it hears from them
        // again: answer by the deadline all the same. The entry stays in its log and may
        // still commit; a retry with the same message id is deduplicated. A core that stopped
        // in a write (a full disk) or fell behind a newer leader is left to it: the call goes
        // to that leader, as a client's retry would.
        let mut look_again = proposed + PAST_CORE_CHECK_EVERY;
        let written = loop {
            tokio::select! {
                written = &mut write => break written,
                () = tokio::time::sleep_until(look_again.min(give_up).into()) => {}
            }
            if Instant::now() >= give_up {
                return Err(ProposeError::Unknown(
                    "not committed within the deadline: this leader may have lost its majority"
                        .into(),
                ));
            }
            if let Some(leader) = self.leader_past_core() {
                return Ok(Written::Elsewhere(Some(leader)));
            }
            look_again = Instant::now() + PAST_CORE_CHECK_EVERY;
        };
        match written {
            Ok(response) => {
                self.timeline.record_result(response.log_id.index, proposed);
                let result = response.data.0.ok_or_else(|| {
                    ProposeError::Fatal("a command was applied without a result".into())
                })?;
                Ok(Written::Applied(result))
            }
            Err(openraft::errors::RaftError::APIError(ClientWriteError::ForwardToLeader(
                forward,
            ))) => Ok(Written::Elsewhere(forward.leader_id)),
            Err(openraft::errors::RaftError::APIError(other)) => {
                Err(ProposeError::Fatal(other.to_string()))
            }
            Err(openraft::errors::RaftError::Fatal(fatal)) => {
                Err(ProposeError::Fatal(fatal.to_string()))
            }
        }
    }

    /// Wait until this node has applied everything committed before the call: after it, a
    /// read of the local state sees every write acknowledged so far. A follower asks the
    /// leader for its read index; the leader confirms its leadership with a quorum.
    pub async fn read_barrier(&self, deadline: Duration) -> Result<(), ProposeError> {
        let give_up = Instant::now() + deadline;
        let index = self.read_index(give_up).await?;
        let mut applied = self.state.subscribe_applied();
        let reached =
            tokio::time::timeout_at(give_up.into(), applied.wait_for(|a| *a >= index)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ProposeError::NoLeader),
        }
    }

    /// The group's commit index as the leader confirms it with a quorum: everything
    /// acknowledged before the call is at or below it.
    pub async fn read_index(&self, give_up: Instant) -> Result<u64, ProposeError> {
        loop {
            let leader = match self.leader_past_core() {
                Some(leader) => Some(leader),
                None => {
                    let read = self
                        .raft
                        .ensure_linearizable(openraft::ReadPolicy::ReadIndex);
                    match tokio::time::timeout_at(give_up.into(), read).await {
                        Err(_) => return Err(ProposeError::NoLeader),
                        Ok(Ok(read)) => return Ok(read.index()),
                        Ok(Err(openraft::errors::RaftError::APIError(
                            LinearizableReadError::ForwardToLeader(forward),
                        ))) => forward.leader_id,
                        // Leadership could not be confirmed with a quorum: try again until
                        // the deadline.
                        Ok(Err(openraft::errors::RaftError::APIError(_))) => None,
                        Ok(Err(openraft::errors::RaftError::Fatal(fatal))) => {
                            return Err(ProposeError::Fatal(fatal.to_string()));
                        }
                    }
                }
            };
            if let Some(node) = leader
                .filter(|id| *id != self.id)
                .and_then(|id| self.node_addr(id))
                && let Ok(mut client) = self.network.client(&node.raft_addr)
            {
                let mut request = tonic::Request::new(pb::ReadIndexRequest {});
                request.set_timeout(time_left(give_up));
                if let Ok(reply) = client.read_index(request).await
                    && let Some(pb::read_index_response::Outcome::Index(index)) =
                        reply.into_inner().outcome
                {
                    return Ok(index);
                }
            }
            if Instant::now() >= give_up {
                return Err(ProposeError::NoLeader);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn forward(
        &self,
        leader_id: NodeId,
        leader: &pb::Node,
        command: &pb::Command,
        give_up: Instant,
    ) -> Forwarded {
        let mut client = match self.network.client(&leader.raft_addr) {
            Ok(client) => client,
            Err(e) => return Forwarded::Unknown(e.to_string()),
        };
        let mut request = tonic::Request::new(pb::ProposeRequest {
            command: Some(command.clone()),
        });
        request.set_timeout(time_left(give_up));
        // A leader that stopped answering without closing its connections (paused, cut
        // off) would hold the write until the deadline: give up on it as soon as this node
        // stops following it, and let the caller try the next leader. A leader named past
        // this node's core (`leader_past_core`), which the core does not know, is given the
        // call's own timeout.
        let mut metrics = self.raft.metrics();
        let followed = metrics.borrow_watched().current_leader == Some(leader_id);
        let leader_gone = async move {
            if !followed {
                std::future::pending::<()>().await;
            }
            loop {
                if metrics.borrow_watched().current_leader != Some(leader_id) {
                    return;
                }
                if metrics.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        let reply = tokio::select! {
            reply = client.propose(request) => reply,
            () = leader_gone => {
                return Forwarded::Unknown(format!(
                    "node {leader_id} stopped leading while the write was forwarded to it"
                ));
            }
        };
        match reply {
            Ok(reply) => match reply.into_inner().outcome {
                Some(pb::propose_response::Outcome::Result(result)) => Forwarded::Done(result),
                Some(pb::propose_response::Outcome::NotLeader(_)) => Forwarded::NotLeader,
                Some(pb::propose_response::Outcome::NoRoom(reason)) => Forwarded::NoRoom(reason),
                Some(pb::propose_response::Outcome::Error(e)) => Forwarded::Unknown(e),
                None => Forwarded::Unknown("empty propose reply".into()),
            },
            // Refused before reaching the leader's Raft: nothing was written.
            Err(status) if status.code() == tonic::Code::Unavailable => Forwarded::NotLeader,
            Err(status) => Forwarded::Unknown(status.message().to_string()),
        }
    }
}

/// How often a write waiting on this node's Raft core looks for a leader past it (see
/// `RaftNode::leader_past_core`).
const PAST_CORE_CHECK_EVERY: Duration = Duration::from_millis(50);

/// Timeout for an RPC made on the way to `give_up`: what is left, but never less than 100 ms
/// so a call made at the deadline still has a chance to be answered.
fn time_left(give_up: Instant) -> Duration {
    give_up
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100))
}

/// What this node's Raft core made of a proposed command.
enum Written {
    Applied(pb::CommandResult),
    /// Not written here: it goes to this leader, if one is known.
    Elsewhere(Option<NodeId>),
}

enum Forwarded {
    Done(pb::CommandResult),
    NotLeader,
    /// The leader refused it for lack of disk space (nothing was written).
    NoRoom(String),
    Unknown(String),
}
