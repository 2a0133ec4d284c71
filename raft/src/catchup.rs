//! A leader's limit on catch-up replication.
//!
//! A follower that was down for a while, or came back with an empty disk, needs everything it
//! missed. Sent flat out, reading and sending that takes the leader's CPU and network from the
//! sends being committed meanwhile (docs/BENCHMARKS.md: their p99 rose seventeenfold during
//! one refill). With a limit set, entries a follower is catching up on go out at most that many
//! bytes a second, for all followers together, like Kafka's throttled replication rate. Recent
//! entries are never held back: those near or above the commit index go at once. (Should the
//! group's only other up-to-date follower fail during a refill, new commits wait until the
//! refilling one has passed the limited stretch; the limit can then be lifted at run time.)

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use governor::{DefaultDirectRateLimiter, Quota};

/// Entries this many or more below the leader's commit index are catch-up traffic: a majority
/// holds them already, and a follower that is merely a little slow (a few hundred entries
/// behind under load) stays unlimited.
pub const CATCH_UP_DISTANCE: u64 = 1_000;

/// The limiter counts KiB, so that a `u32` budget holds any rate.
const CELL_BYTES: u64 = 1024;

struct Bucket {
    limiter: DefaultDirectRateLimiter,
    /// Cells of one second, the most one wait may ask for.
    per_second: NonZeroU32,
    bytes_per_second: u64,
}

/// The byte budget for catch-up traffic, shared by every replication stream of a node. It
/// can be changed while the node runs (`PUT /catchup` on the HTTP port), for example lifted
/// when a refilling follower is suddenly needed for the quorum.
pub struct CatchUpLimit {
    bucket: Mutex<Option<Arc<Bucket>>>,
}

fn bucket(bytes_per_second: u64) -> Option<Arc<Bucket>> {
    let cells = bytes_per_second
        .div_ceil(CELL_BYTES)
        .min(u64::from(u32::MAX)) as u32;
    let per_second = NonZeroU32::new(cells)?;
    Some(Arc::new(Bucket {
        limiter: DefaultDirectRateLimiter::direct(Quota::per_second(per_second)),
        per_second,
        bytes_per_second,
    }))
}

/// No limit.
impl Default for CatchUpLimit {
    fn default() -> Self {
        CatchUpLimit::new(0)
    }
}

impl CatchUpLimit {
    /// At most `bytes_per_second` of catch-up entries a second (0: no limit).
    pub fn new(bytes_per_second: u64) -> CatchUpLimit {
        // Exported at 0 from the start, so that a dashboard's rate of it is 0, not "no data".
        metrics::counter!("raftmq_replication_catchup_bytes_total").increment(0);
        CatchUpLimit {
            bucket: Mutex::new(bucket(bytes_per_second)),
        }
    }

    fn current(&self) -> Option<Arc<Bucket>> {
        self.bucket
            .lock()
            .expect("catch-up limit lock poisoned")
            .clone()
    }

    /// The limit in force, in bytes a second (0: none).
    pub fn bytes_per_second(&self) -> u64 {
        self.current().map_or(0, |bucket| bucket.bytes_per_second)
    }

    /// Replace the limit (0: none); waits already under way move to the new one within a
    /// second's worth of the old.
    pub fn set(&self, bytes_per_second: u64) {
        *self.bucket.lock().expect("catch-up limit lock poisoned") = bucket(bytes_per_second);
    }

    /// Whether an append request whose last entry is `last_index` carries only entries a
    /// follower is catching up on (see [`CATCH_UP_DISTANCE`]).
    pub fn is_catch_up(last_index: u64, leader_commit: Option<u64>) -> bool {
        leader_commit
            .and_then(|commit| commit.checked_sub(CATCH_UP_DISTANCE))
            .is_some_and(|edge| last_index <= edge)
    }

    /// Wait until `bytes` more of catch-up traffic fit the limit.
    pub async fn admit(&self, bytes: usize) {
        metrics::counter!("raftmq_replication_catchup_bytes_total").increment(bytes as u64);
        let started = Instant::now();
        let mut cells = (bytes as u64).div_ceil(CELL_BYTES);
        // One request may hold more than a second's budget: take it a second's worth at a
        // time, from the limit in force at each step.
        while cells > 0 {
            let Some(bucket) = self.current() else {
                break;
            };
            let take = cells.min(u64::from(bucket.per_second.get()));
            if let Some(take) = NonZeroU32::new(take as u32) {
                // Never more than the burst, so the limiter can always grant it.
                let _ = bucket.limiter.until_n_ready(take).await;
            }
            cells -= take;
        }
        metrics::histogram!("raftmq_replication_catchup_wait_seconds")
            .record(started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn only_entries_well_below_the_commit_are_catch_up() {
        assert!(!CatchUpLimit::is_catch_up(10, None));
        assert!(!CatchUpLimit::is_catch_up(5_000, Some(5_000)));
        assert!(!CatchUpLimit::is_catch_up(6_000, Some(5_000)));
        assert!(!CatchUpLimit::is_catch_up(4_001, Some(5_000)));
        assert!(CatchUpLimit::is_catch_up(4_000, Some(5_000)));
        assert!(CatchUpLimit::is_catch_up(1, Some(5_000)));
        assert!(!CatchUpLimit::is_catch_up(0, Some(999)));
        assert!(!CatchUpLimit::is_catch_up(u64::MAX, Some(u64::MAX)));
    }

    #[tokio::test]
    async fn no_limit_never_waits() {
        let limit = CatchUpLimit::new(0);
        assert_eq!(0, limit.bytes_per_second());
        let started = Instant::now();
        for _ in 0..100 {
            limit.admit(64 << 20).await;
        }
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    /// 1 MiB/s: the first second's budget is there at once, and each MiB after it takes a
    /// second, also when one request is larger than a second's budget.
    #[tokio::test]
    async fn a_limit_spreads_bytes_over_time() {
        let limit = CatchUpLimit::new(1 << 20);
        assert_eq!(1 << 20, limit.bytes_per_second());
        let started = Instant::now();
        limit.admit(1 << 20).await;
        assert!(started.elapsed() < Duration::from_millis(500));
        limit.admit(5 << 19).await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(2_400) && waited < Duration::from_secs(10),
            "2.5 MiB over the burst took {waited:?}"
        );
    }

    /// A limit lifted while a large request waits under it lets that request go at once.
    #[tokio::test]
    async fn a_lifted_limit_releases_a_waiting_request() {
        let limit = Arc::new(CatchUpLimit::new(1 << 20));
        let started = Instant::now();
        let waiting = tokio::spawn({
            let limit = limit.clone();
            async move { limit.admit(30 << 20).await }
        });
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert!(
            !waiting.is_finished(),
            "30 MiB went through a 1 MiB/s limit"
        );
        limit.set(0);
        assert_eq!(0, limit.bytes_per_second());
        waiting.await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
    }
}
