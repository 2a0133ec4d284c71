//! The leader's timer task: when the earliest delay message is due, propose `FireTimers`, which
//! enters every due message into its queue on every replica (see `raftmq_storage::timer`).

use std::sync::Arc;
use std::time::Duration;

use raftmq_proto::raft::v1 as pb;
use tokio::sync::watch;

use super::messages::now_ms;
use super::{Broker, PROPOSE_DEADLINE};

/// Most timers one entry fires; more due ones follow in the next entry at once.
const FIRE_BATCH: u32 = 1024;
/// How often a follower checks whether it became the leader, and the longest sleep between
/// looks at the timer column family.
const IDLE_CHECK: Duration = Duration::from_millis(200);

pub async fn run(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    let state = broker.node.state.clone();
    let mut applied = state.subscribe_applied();
    loop {
        if *stop.borrow() {
            return;
        }
        applied.borrow_and_update();
        let is_leader = broker.node.metrics().current_leader == Some(broker.node.id);
        let next = match state.next_timer_ms() {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(error = %e, "read the timer column family");
                None
            }
        };
        let now = now_ms();
        let mut sleep = IDLE_CHECK;
        if let (true, Some(due)) = (is_leader, next) {
            if due <= now {
                let command = pb::Command {
                    kind: Some(pb::command::Kind::FireTimers(pb::FireTimers {
                        now_ms: now,
                        max: FIRE_BATCH,
                    })),
                };
                match broker.node.propose(command, PROPOSE_DEADLINE).await {
                    Ok(_) => continue,
                    Err(e) => tracing::warn!(error = %e, "fire delay-message timers"),
                }
            } else {
                sleep = sleep.min(Duration::from_millis((due - now) as u64));
            }
        }
        // A new delay message (an apply) may be due sooner than what we sleep for.
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = applied.changed() => {}
            _ = stop.changed() => {}
        }
    }
}
