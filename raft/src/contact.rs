//! Whether this node is in touch with a majority of its group.
//!
//! A node that is cut off from the majority (a partition, a one-way link, a leader whose
//! followers stopped answering) can neither commit a write nor confirm a read, yet clients
//! that hold a connection to it keep sending there: a gRPC channel that keeps one connection
//! (pick_first, gRPC's default) only moves on when it breaks. The broker asks here, and stops
//! serving clients while the answer is no (see `src/broker/cut_off.rs`).
//!
//! The evidence is what already flows: an append or heartbeat from a leader, or an answer
//! from a peer to one of this node's own calls (appends as a leader, votes as a candidate).
//! Answers count whatever they say: a refused vote still shows the peer can be reached.
//! A leader's appends count only while that leader is itself in touch: a leader left on the
//! minority side of a split keeps its followers there from elections with its heartbeats,
//! so it marks its appends once it counts itself cut off ([`RaftNode::report_cut_off`]), and
//! those followers then find themselves cut off as well.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::node::RaftNode;
use crate::types::NodeId;

/// When each peer last answered one of this node's Raft calls.
#[derive(Default)]
pub struct PeerContact {
    answered: Mutex<HashMap<NodeId, Instant>>,
}

impl PeerContact {
    pub(crate) fn answered(&self, peer: NodeId) {
        let now = Instant::now();
        self.answered
            .lock()
            .expect("peer contact lock poisoned")
            .insert(peer, now);
    }

    /// Whether `peer` answered within the last `window`.
    fn answered_within(&self, peer: NodeId, window: Duration) -> bool {
        let answered = self.answered.lock().expect("peer contact lock poisoned");
        answered.get(&peer).is_some_and(|at| at.elapsed() < window)
    }
}

/// What this node's appends say about it: marked once the broker counts this node cut off,
/// unmarked as soon as enough peers answer again, without waiting for the broker's next
/// check, so that followers coming back hear at once that their leader is in touch (until
/// they do, they count themselves cut off).
#[derive(Default)]
pub(crate) struct CutOffMark {
    marked: AtomicBool,
    /// This node, the voters and the window at the time it was marked.
    basis: Mutex<(NodeId, Vec<NodeId>, Duration)>,
}

impl CutOffMark {
    fn mark(&self, me: NodeId, voters: Vec<NodeId>, window: Duration) {
        *self.basis.lock().expect("cut-off mark lock poisoned") = (me, voters, window);
        self.marked.store(true, Ordering::Release);
    }

    fn unmark(&self) {
        self.marked.store(false, Ordering::Release);
    }

    /// Whether an append sent now says that this node is cut off.
    pub(crate) fn leader_cut_off(&self, contact: &PeerContact) -> bool {
        if !self.marked.load(Ordering::Acquire) {
            return false;
        }
        let basis = self.basis.lock().expect("cut-off mark lock poisoned");
        let (me, voters, window) = &*basis;
        !majority_in_touch(voters, *me, false, |peer| {
            contact.answered_within(peer, *window)
        })
    }
}

/// Whether `me` and the peers in touch with it make a majority of `voters`. A node that heard
/// from a leader counts as in touch: that leader had a majority to be elected, and follows the
/// same rule itself, so it is heard only while it does not count itself cut off (its appends
/// say so). A node that is no voter (a learner) never counts as cut off.
pub(crate) fn majority_in_touch(
    voters: &[NodeId],
    me: NodeId,
    heard_from_leader: bool,
    peer_answered: impl Fn(NodeId) -> bool,
) -> bool {
    if !voters.contains(&me) || heard_from_leader {
        return true;
    }
    let peers_in_touch = voters
        .iter()
        .filter(|id| **id != me && peer_answered(**id))
        .count();
    peers_in_touch + 1 > voters.len() / 2
}

impl RaftNode {
    /// Whether, within the last `window`, this node heard from a leader or enough peers
    /// answered its calls to make a majority of the voters with it.
    pub fn in_touch_with_quorum(&self, window: Duration) -> bool {
        let voters: Vec<NodeId> = self.voters().into_iter().map(|(id, _)| id).collect();
        // Whether it still follows that leader does not matter: a follower that takes its
        // leader for dead, or starts a campaign, stops following at once.
        let heard_from_leader = self.liveness.heard_from_in_touch_leader_within(window);
        let contact = self.network().contact();
        majority_in_touch(&voters, self.id, heard_from_leader, |peer| {
            contact.answered_within(peer, window)
        })
    }

    /// The broker found this node out of touch with its group for `window`: while it is, its
    /// appends (as a leader) tell its followers so.
    pub fn report_cut_off(&self, window: Duration) {
        let voters = self.voters().into_iter().map(|(id, _)| id).collect();
        self.network().cut_off_mark().mark(self.id, voters, window);
    }

    /// The broker found this node back in touch with its group: its appends are unmarked.
    pub fn report_back_in_touch(&self) {
        self.network().cut_off_mark().unmark();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_alone_of_three_is_cut_off_and_with_one_peer_is_not() {
        let voters = [1, 2, 3];
        assert!(!majority_in_touch(&voters, 1, false, |_| false));
        assert!(majority_in_touch(&voters, 1, false, |peer| peer == 3));
        assert!(majority_in_touch(&voters, 1, false, |_| true));
    }

    #[test]
    fn five_voters_need_two_peers_in_touch() {
        let voters = [1, 2, 3, 4, 5];
        assert!(!majority_in_touch(&voters, 1, false, |peer| peer == 2));
        assert!(majority_in_touch(&voters, 1, false, |peer| peer == 2 || peer == 5));
        // Its own id among the answers (it never calls itself) does not count twice.
        assert!(!majority_in_touch(&voters, 1, false, |peer| peer == 1 || peer == 2));
    }

    #[test]
    fn hearing_from_a_leader_is_enough_and_learners_are_never_cut_off() {
        assert!(majority_in_touch(&[1, 2, 3], 2, true, |_| false));
        assert!(majority_in_touch(&[1, 2, 3], 4, false, |_| false));
        assert!(majority_in_touch(&[1], 1, false, |_| false));
    }

    #[test]
    fn a_marked_leader_reads_as_in_touch_once_enough_peers_answer() {
        let (mark, contact) = (CutOffMark::default(), PeerContact::default());
        assert!(!mark.leader_cut_off(&contact));
        mark.mark(1, vec![1, 2, 3, 4, 5], Duration::from_secs(60));
        assert!(mark.leader_cut_off(&contact));
        contact.answered(2);
        assert!(mark.leader_cut_off(&contact), "two of five");
        contact.answered(3);
        assert!(!mark.leader_cut_off(&contact), "three of five");
        mark.unmark();
        assert!(!mark.leader_cut_off(&PeerContact::default()));
    }

    #[test]
    fn an_answer_counts_for_the_window_only() {
        let contact = PeerContact::default();
        assert!(!contact.answered_within(2, Duration::from_secs(1)));
        contact.answered(2);
        assert!(contact.answered_within(2, Duration::from_secs(1)));
        std::thread::sleep(Duration::from_millis(20));
        assert!(!contact.answered_within(2, Duration::from_millis(10)));
    }
}
