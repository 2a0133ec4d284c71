//! A leader whose process is gone is replaced at once, not after its lease.
//!
//! openraft lets a follower campaign only once the leader lease (the maximum election timeout)
//! and then its own election timeout have passed without a heartbeat, and its peers grant a
//! vote only once their own lease has run out: 450–600 ms with the default timeouts. That wait
//! is right while the leader may still be alive (paused, partitioned, slow). But when the
//! leader's append stream to this follower breaks and the leader's Raft port then refuses
//! connections, nothing listens there any more: its process died (or its host's network
//! stack answers for it). Then each follower ends its lease on that leader, and one follower
//! stands for election at once, as openraft does for a leadership transfer: the one whose log
//! is furthest along (each asks the other voters), the lowest id among equals.
//!
//! Only "connection refused" counts. A paused process still completes a TCP handshake (the
//! kernel accepts into its backlog), and a partitioned or vanished host times out or is
//! unreachable: those keep openraft's usual timing. Nothing here weakens Raft's safety: the
//! vote still needs a majority whose logs are no newer than the candidate's, and raftmq reads
//! with ReadIndex, never by lease.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::raft::TransferLeaderRequest;

use crate::node::RaftNode;
use raftmq_proto::raft::v1 as pb;

use crate::convert;
use crate::types::{LogId, NodeId, Vote};

/// How long one probe of the leader's Raft port may take; longer means "cannot tell".
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);

/// The waits before each probe (so probes at 0, 20 and 100 ms). A killed process may still
/// hold its listening socket for a moment after its connections closed; for a live leader
/// that merely restarted its stream, three connects are all the check costs.
const PROBE_AFTER: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(20),
    Duration::from_millis(80),
];

/// What a connect to the leader's Raft port said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    /// Something listens there.
    Listening,
    /// The host answered that nothing listens there.
    Refused,
    /// No answer, an unreachable host, a name that does not resolve: cannot tell.
    Unknown,
}

/// Connect to `addr` (host:port) once, from `local` when given, and drop the connection.
pub(crate) async fn probe(addr: &str, local: Option<IpAddr>) -> Probe {
    let target = match tokio::net::lookup_host(addr).await {
        Ok(mut found) => match found.next() {
            Some(target) => target,
            None => return Probe::Unknown,
        },
        Err(_) => return Probe::Unknown,
    };
    let connect = async {
        let socket = match target {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        if let Some(ip) = local.filter(|ip| ip.is_ipv4() == target.is_ipv4()) {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        socket.connect(target).await
    };
    match tokio::time::timeout(PROBE_TIMEOUT, connect).await {
        Ok(Ok(_connection)) => Probe::Listening,
        Ok(Err(e)) if e.kind() == ErrorKind::ConnectionRefused => Probe::Refused,
        Ok(Err(_)) | Err(_) => Probe::Unknown,
    }
}

/// The voter that stands for election when `leader` is gone, from the last log ids of the
/// voters that answered: the one whose log is furthest along (its peers would refuse any
/// other their vote), the lowest id among equals. The leader's followers find the same logs
/// (nothing is appended once the leader is gone), so they agree without more talk.
pub(crate) fn successor(logs: &[(NodeId, Option<LogId>)], leader: NodeId) -> Option<NodeId> {
    logs.iter()
        .filter(|(id, _)| *id != leader)
        .max_by(|(a_id, a_log), (b_id, b_log)| a_log.cmp(b_log).then(b_id.cmp(a_id)))
        .map(|(id, _)| *id)
}

/// Tracks what this node, as a follower, last heard from its leader, and keeps one check of
/// the leader's port running at a time.
#[derive(Debug)]
pub(crate) struct LeaderLiveness {
    started: Instant,
    /// One more than the milliseconds after `started` at which the last append or heartbeat
    /// arrived; 0 while none has.
    last_heard_ms: AtomicU64,
    /// The same for the last one from a leader that did not count itself cut off.
    last_heard_in_touch_ms: AtomicU64,
    /// The highest term an append came from. A deposed leader that has not yet learned of
    /// its successor keeps sending appends of its older term; openraft refuses them, and
    /// they must not count as word from the leader either.
    highest_term: AtomicU64,
    /// The node that leads `highest_term`.
    leader_of_highest_term: AtomicU64,
    checking: AtomicBool,
    /// The vote of the last leader this node took for dead: a broken stream and a quiet
    /// spell often both find the same leader gone, and one hand-over is enough.
    taken_for_dead: Mutex<Option<Vote>>,
}

impl Default for LeaderLiveness {
    fn default() -> Self {
        LeaderLiveness {
            started: Instant::now(),
            last_heard_ms: AtomicU64::new(0),
            last_heard_in_touch_ms: AtomicU64::new(0),
            highest_term: AtomicU64::new(0),
            leader_of_highest_term: AtomicU64::new(0),
            checking: AtomicBool::new(false),
            taken_for_dead: Mutex::new(None),
        }
    }
}

impl LeaderLiveness {
    /// An append or heartbeat arrived from the leader of `term`, which says whether it counts
    /// itself cut off from its group. One from an older term than already heard is ignored.
    pub(crate) fn heard(&self, term: u64, leader: NodeId, leader_cut_off: bool) {
        let before = self.highest_term.fetch_max(term, Ordering::Relaxed);
        if before > term {
            return;
        }
        if before < term {
            // One leader per term: a reader between the two stores at worst names the last
            // term's leader, which then refuses what it is sent.
            self.leader_of_highest_term.store(leader, Ordering::Relaxed);
        }
        let stamp = self.started.elapsed().as_millis() as u64 + 1;
        self.last_heard_ms.store(stamp, Ordering::Relaxed);
        if !leader_cut_off {
            self.last_heard_in_touch_ms.store(stamp, Ordering::Relaxed);
        }
    }

    /// Whether an append or heartbeat arrived within the last `window` from a leader that did
    /// not count itself cut off.
    pub(crate) fn heard_from_in_touch_leader_within(&self, window: Duration) -> bool {
        let stamp = self.last_heard_in_touch_ms.load(Ordering::Relaxed);
        stamp != 0 && self.since(stamp) < window
    }

    /// The leader, and its term, of the last append or heartbeat from a leader in touch with
    /// its group, if one came within `window`.
    pub(crate) fn in_touch_leader_within(&self, window: Duration) -> Option<(NodeId, u64)> {
        if !self.heard_from_in_touch_leader_within(window) {
            return None;
        }
        let term = self.highest_term.load(Ordering::Relaxed);
        Some((self.leader_of_highest_term.load(Ordering::Relaxed), term))
    }

    /// Time since the last append or heartbeat, or since the process started if none came.
    fn quiet_for(&self) -> Duration {
        self.since(self.last_heard_ms.load(Ordering::Relaxed))
    }

    fn since(&self, stamp: u64) -> Duration {
        let at = Duration::from_millis(stamp.saturating_sub(1));
        self.started.elapsed().saturating_sub(at)
    }
}

/// Clears `checking` when a check ends, however it ends.
struct CheckRunning<'a>(&'a AtomicBool);

impl Drop for CheckRunning<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl RaftNode {
    /// An append or a heartbeat from the leader arrived (see [`LeaderLiveness::heard`]).
    pub(crate) fn heard_from_leader(&self, vote: &Vote, leader_cut_off: bool) {
        self.liveness
            .heard(vote.leader_id.term, vote.leader_id.node_id, leader_cut_off);
    }

    /// The append stream from the leader to this node broke: check, in the background,
    /// whether the leader's process is gone.
    pub(crate) fn leader_stream_broke(self: &Arc<Self>) {
        if self.is_stopping() {
            return;
        }
        tokio::spawn(self.clone().replace_leader_if_gone());
    }

    /// Check the leader's port each time it has been quiet for two heartbeat intervals (an
    /// idle group has no append stream to break). One check per quiet spell.
    pub async fn watch_leader_liveness(self: Arc<Self>) {
        let heartbeat = Duration::from_millis(self.raft.config().heartbeat_interval);
        let mut tick = tokio::time::interval(heartbeat / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut checked_this_spell = false;
        loop {
            tick.tick().await;
            let core_stopped = self.raft.metrics().borrow_watched().running_state.is_err();
            if self.is_stopping() || core_stopped {
                return;
            }
            let quiet = self.liveness.quiet_for() >= heartbeat * 2;
            if !quiet || self.followed_leader().is_none() {
                checked_this_spell = false;
                continue;
            }
            if !checked_this_spell {
                checked_this_spell = true;
                self.clone().replace_leader_if_gone().await;
            }
        }
    }

    async fn replace_leader_if_gone(self: Arc<Self>) {
        if self.liveness.checking.swap(true, Ordering::Acquire) {
            return;
        }
        let _running = CheckRunning(&self.liveness.checking);
        let Some((leader, _)) = self.followed_leader() else {
            return;
        };
        let Some(addr) = self.node_addr(leader).map(|node| node.raft_addr) else {
            return;
        };
        let mut refused = false;
        for wait in PROBE_AFTER {
            tokio::time::sleep(wait).await;
            if probe(&addr, self.network().local_address()).await == Probe::Refused {
                refused = true;
                break;
            }
        }
        if !refused || self.is_stopping() {
            return;
        }
        // Read again: another leader may have been elected meanwhile (a planned hand-over
        // ends the old leader's streams too), and then there is nothing to do.
        let Some((still, vote)) = self.followed_leader() else {
            return;
        };
        if still != leader {
            return;
        }
        {
            let mut taken = self
                .liveness
                .taken_for_dead
                .lock()
                .expect("liveness poisoned");
            if taken.as_ref() == Some(&vote) {
                return;
            }
            *taken = Some(vote);
        }
        let logs = self.voter_logs(leader).await;
        let Some(successor) = successor(&logs, leader) else {
            return;
        };
        tracing::warn!(
            leader,
            successor,
            raft_addr = %addr,
            "the leader's Raft port refuses connections (its process is gone): ending its lease; \
             node {successor} stands for election now"
        );
        metrics::counter!("raftmq_dead_leader_detected_total").increment(1);
        let request = TransferLeaderRequest::new(vote, successor, None);
        if let Err(e) = self.raft.handle_transfer_leader(request).await {
            tracing::warn!(error = %e, "could not end the gone leader's lease");
        }
    }

    /// The last log id of this node and of each other voter but `leader` that answers within
    /// `PROBE_TIMEOUT`; one that does not answer is left out (it may be down too).
    async fn voter_logs(&self, leader: NodeId) -> Vec<(NodeId, Option<LogId>)> {
        let asks = self
            .voters()
            .into_iter()
            .filter(|(id, _)| *id != leader)
            .map(|(id, node)| async move {
                if id == self.id {
                    return self.last_log_id().ok().map(|log| (id, log));
                }
                let mut client = self.network().client(&node.raft_addr).ok()?;
                let mut request = tonic::Request::new(pb::NodeStatusRequest {});
                request.set_timeout(PROBE_TIMEOUT);
                let status = tokio::time::timeout(PROBE_TIMEOUT, client.node_status(request))
                    .await
                    .ok()?
                    .ok()?
                    .into_inner();
                let log = convert::opt_log_id_from_pb(status.last_log_id.as_ref()).ok()?;
                Some((id, log))
            });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// The leader this node follows, with the committed vote it holds for it; `None` when it
    /// leads, is a candidate, or knows no leader.
    fn followed_leader(&self) -> Option<(NodeId, Vote)> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        let leader = metrics.current_leader?;
        let vote = metrics.vote;
        let follows = leader != self.id && vote.committed && vote.leader_id.node_id == leader;
        follows.then_some((leader, vote))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_that_heard_no_leader_yet_has_not_heard_one_recently() {
        let liveness = LeaderLiveness::default();
        let minute = Duration::from_secs(60);
        assert!(!liveness.heard_from_in_touch_leader_within(minute));
        liveness.heard(1, 1, false);
        assert!(liveness.heard_from_in_touch_leader_within(minute));
        assert!(!liveness.heard_from_in_touch_leader_within(Duration::ZERO));
    }

    #[test]
    fn a_leader_that_counts_itself_cut_off_keeps_the_follower_quiet_but_not_in_touch() {
        let liveness = LeaderLiveness::default();
        liveness.heard(1, 1, true);
        assert!(liveness.quiet_for() < Duration::from_secs(60));
        assert!(!liveness.heard_from_in_touch_leader_within(Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(20));
        liveness.heard(1, 1, false);
        std::thread::sleep(Duration::from_millis(20));
        liveness.heard(1, 1, true);
        // The last append from a leader in touch is older than the last append.
        assert!(liveness.quiet_for() < Duration::from_millis(20));
        assert!(!liveness.heard_from_in_touch_leader_within(Duration::from_millis(20)));
        assert!(liveness.heard_from_in_touch_leader_within(Duration::from_secs(60)));
    }

    #[test]
    fn appends_from_a_deposed_leader_of_an_older_term_do_not_count() {
        let liveness = LeaderLiveness::default();
        let window = Duration::from_millis(30);
        liveness.heard(2, 1, true);
        liveness.heard(3, 2, false);
        std::thread::sleep(window);
        liveness.heard(2, 1, false);
        assert!(liveness.quiet_for() >= window);
        assert!(!liveness.heard_from_in_touch_leader_within(window));
        assert_eq!(liveness.in_touch_leader_within(window), None);
        liveness.heard(3, 2, false);
        assert!(liveness.quiet_for() < window);
        assert_eq!(liveness.in_touch_leader_within(window), Some((2, 3)));
    }

    fn log(term: u64, index: u64) -> Option<LogId> {
        Some(LogId::new(
            crate::types::LeaderId { term, node_id: 1 },
            index,
        ))
    }

    #[test]
    fn the_voter_with_the_furthest_log_succeeds_and_the_lowest_id_among_equals() {
        let equal = [(1, log(2, 10)), (2, log(2, 10)), (3, log(2, 10))];
        assert_eq!(successor(&equal, 1), Some(2));
        assert_eq!(successor(&equal, 2), Some(1));
        let third_ahead = [(2, log(2, 10)), (3, log(2, 11))];
        assert_eq!(successor(&third_ahead, 1), Some(3));
        // A later term outranks a longer log of an earlier one, as in a vote.
        let newer_term = [(2, log(3, 9)), (3, log(2, 11)), (4, None)];
        assert_eq!(successor(&newer_term, 1), Some(2));
        assert_eq!(successor(&[(1, log(1, 1))], 1), None);
    }

    #[tokio::test]
    async fn a_closed_port_is_refused_and_an_open_one_listens() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        assert_eq!(probe(&addr, None).await, Probe::Listening);
        drop(listener);
        assert_eq!(probe(&addr, None).await, Probe::Refused);
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_cannot_tell() {
        assert_eq!(probe("no-such-host.invalid:1", None).await, Probe::Unknown);
        assert_eq!(probe("not an address", None).await, Probe::Unknown);
    }
}
