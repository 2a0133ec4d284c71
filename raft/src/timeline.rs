//! Where an entry's time goes between its proposal and its result, on the node that proposed
//! it (the leader).
//!
//! Each Raft entry the leader appends gets a slot in a ring keyed by its index; the log store,
//! the replication streams and the state machine stamp it as the entry passes, and the
//! proposer, once the result is back, turns the stamps into one observation per stage of
//! `raftmq_raft_stage_seconds`:
//!
//! | stage | from | to |
//! | --- | --- | --- |
//! | `submit` | `client_write` called | entry appended to the leader's log |
//! | `leader_flush` | appended | the leader's WAL fsync covering it done |
//! | `follower_ack` | appended | the first follower reported it stored (durable there) |
//! | `commit_to_apply` | the later of the two above | the state machine starts applying it |
//! | `apply` | apply started | its result handed back |
//! | `reply` | result handed back | `client_write` returned |
//!
//! A stamp is a few nanoseconds under an uncontended lock, once per entry and event (entries
//! carry whole batches of sends), so it stays on in production.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries tracked at once; older slots are reused. At thousands of entries per second this
/// covers seconds, far more than an entry spends between proposal and result.
const SLOTS: usize = 1 << 14;

#[derive(Clone, Copy, Default)]
struct Slot {
    /// Log index the stamps below belong to (an unused slot has no stamps).
    index: u64,
    appended: Option<Instant>,
    flushed: Option<Instant>,
    follower_acked: Option<Instant>,
    apply_started: Option<Instant>,
    applied: Option<Instant>,
}

struct Ring {
    slots: Vec<Slot>,
    /// Highest index any follower has reported stored; acks are stamped once, by the first.
    follower_acked_up_to: u64,
}

pub struct Timeline {
    ring: Mutex<Ring>,
}

impl Default for Timeline {
    fn default() -> Self {
        Timeline {
            ring: Mutex::new(Ring {
                slots: vec![Slot::default(); SLOTS],
                follower_acked_up_to: 0,
            }),
        }
    }
}

fn slot_of(slots: &mut [Slot], index: u64) -> &mut Slot {
    &mut slots[(index % SLOTS as u64) as usize]
}

impl Timeline {
    fn with_ring<T>(&self, work: impl FnOnce(&mut Ring) -> T) -> T {
        let mut ring = self.ring.lock().expect("timeline lock poisoned");
        work(&mut ring)
    }

    /// Entries `indexes` were written to this node's log (readable, not yet durable).
    pub fn appended(&self, indexes: impl IntoIterator<Item = u64>) {
        let now = Instant::now();
        self.with_ring(|ring| {
            for index in indexes {
                // Written again (a new leader replaced it): what was acked before is not this.
                ring.follower_acked_up_to = ring.follower_acked_up_to.min(index.saturating_sub(1));
                *slot_of(&mut ring.slots, index) = Slot {
                    index,
                    appended: Some(now),
                    ..Slot::default()
                };
            }
        });
    }

    /// Entries `indexes` are durable on this node.
    pub fn flushed(&self, indexes: impl IntoIterator<Item = u64>) {
        self.stamp(indexes, |slot, now| slot.flushed = Some(now));
    }

    /// A follower reported every entry up to `index` stored.
    pub fn follower_acked(&self, index: u64) {
        let now = Instant::now();
        self.with_ring(|ring| {
            let from = ring
                .follower_acked_up_to
                .max(index.saturating_sub(SLOTS as u64))
                + 1;
            if index < from {
                return;
            }
            ring.follower_acked_up_to = index;
            for index in from..=index {
                let slot = slot_of(&mut ring.slots, index);
                if slot.index == index && slot.follower_acked.is_none() {
                    slot.follower_acked = Some(now);
                }
            }
        });
    }

    pub fn apply_started(&self, indexes: impl IntoIterator<Item = u64>) {
        self.stamp(indexes, |slot, now| slot.apply_started = Some(now));
    }

    pub fn applied(&self, indexes: impl IntoIterator<Item = u64>) {
        self.stamp(indexes, |slot, now| slot.applied = Some(now));
    }

    fn stamp(&self, indexes: impl IntoIterator<Item = u64>, mark: impl Fn(&mut Slot, Instant)) {
        let now = Instant::now();
        self.with_ring(|ring| {
            for index in indexes {
                let slot = slot_of(&mut ring.slots, index);
                if slot.index == index {
                    mark(slot, now);
                }
            }
        });
    }

    /// `client_write`, called at `proposed`, returned the result of entry `index`: record
    /// how long each stage took. Stages whose stamps are missing (the slot was reused, or the
    /// entry was appended by an earlier leader) are left out.
    pub fn record_result(&self, index: u64, proposed: Instant) {
        let returned = Instant::now();
        let slot = self.with_ring(|ring| *slot_of(&mut ring.slots, index));
        if slot.index != index {
            return;
        }
        for (stage, took) in stage_durations(&slot, proposed, returned) {
            metrics::histogram!("raftmq_raft_stage_seconds", "stage" => stage)
                .record(took.as_secs_f64());
        }
    }
}

/// The stages of one entry whose two ends were both stamped.
fn stage_durations(
    slot: &Slot,
    proposed: Instant,
    returned: Instant,
) -> Vec<(&'static str, Duration)> {
    let between = |from: Option<Instant>, to: Option<Instant>| to?.checked_duration_since(from?);
    let committable = slot.flushed.zip(slot.follower_acked).map(|(a, b)| a.max(b));
    [
        ("submit", between(Some(proposed), slot.appended)),
        ("leader_flush", between(slot.appended, slot.flushed)),
        ("follower_ack", between(slot.appended, slot.follower_acked)),
        ("commit_to_apply", between(committable, slot.apply_started)),
        ("apply", between(slot.apply_started, slot.applied)),
        ("reply", between(slot.applied, Some(returned))),
    ]
    .into_iter()
    .filter_map(|(stage, took)| Some((stage, took?)))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stages(timeline: &Timeline, index: u64, proposed: Instant) -> Vec<&'static str> {
        let slot = timeline.with_ring(|ring| *slot_of(&mut ring.slots, index));
        if slot.index != index {
            return Vec::new();
        }
        stage_durations(&slot, proposed, Instant::now())
            .into_iter()
            .map(|(stage, _)| stage)
            .collect()
    }

    #[test]
    fn an_entry_that_went_all_the_way_has_every_stage() {
        let timeline = Timeline::default();
        let proposed = Instant::now();
        timeline.appended([7, 8]);
        timeline.flushed([7, 8]);
        timeline.follower_acked(8);
        timeline.apply_started([7, 8]);
        timeline.applied([7, 8]);
        let all = [
            "submit",
            "leader_flush",
            "follower_ack",
            "commit_to_apply",
            "apply",
            "reply",
        ];
        assert_eq!(all.to_vec(), stages(&timeline, 7, proposed));
        assert_eq!(all.to_vec(), stages(&timeline, 8, proposed));
    }

    #[test]
    fn only_the_first_follower_ack_counts() {
        let timeline = Timeline::default();
        timeline.appended([1, 2, 3]);
        timeline.follower_acked(2);
        let first = timeline.with_ring(|ring| ring.slots[2].follower_acked);
        std::thread::sleep(Duration::from_millis(2));
        timeline.follower_acked(3);
        let ring = timeline.ring.lock().unwrap();
        assert_eq!(
            first, ring.slots[2].follower_acked,
            "index 2 keeps its first ack"
        );
        assert!(
            ring.slots[3].follower_acked > first,
            "index 3 is acked by the later reply"
        );
    }

    #[test]
    fn a_reused_slot_belongs_to_its_newest_entry() {
        let timeline = Timeline::default();
        let proposed = Instant::now();
        timeline.appended([5]);
        timeline.appended([5 + SLOTS as u64]);
        timeline.flushed([5]);
        assert!(
            stages(&timeline, 5, proposed).is_empty(),
            "entry 5's slot was reused"
        );
        assert_eq!(
            vec!["submit"],
            stages(&timeline, 5 + SLOTS as u64, proposed)
        );
    }

    #[test]
    fn an_entry_written_again_is_acked_again() {
        let timeline = Timeline::default();
        timeline.appended([1, 2]);
        timeline.follower_acked(2);
        timeline.appended([2]);
        timeline.follower_acked(2);
        let ring = timeline.ring.lock().unwrap();
        assert!(ring.slots[2].follower_acked.is_some());
    }
}
