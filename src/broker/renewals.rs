//! Auto-renewal for push consumers: they receive with `auto_renew` and no invisible
//! duration, and expect the broker to keep their messages invisible until they ack (RocketMQ's
//! proxy renews for up to 3 hours while the client is connected).
//!
//! The node that served such a receive remembers its deliveries and, shortly before each
//! would become visible again, proposes a `Renew` command that extends it under the same
//! receipt handle. A delivery is forgotten when it is acknowledged, when a renew finds it
//! gone (acked through another node, or expired), after 3 hours, or when the client's
//! Telemetry stream to this node has closed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftmq_proto::raft::v1 as pb;
use tokio::sync::watch;

use super::messages::now_ms;
use super::{Broker, PROPOSE_DEADLINE};

/// Longest time a delivery is kept invisible by renewals.
const RENEW_FOR_AT_MOST_MS: i64 = 3 * 3600 * 1000;
/// How often due renewals are looked for.
const TICK: Duration = Duration::from_millis(500);

struct Renewal {
    group: String,
    topic: String,
    receipt: pb::Receipt,
    client_id: String,
    started_ms: i64,
    invisible_until_ms: i64,
}

#[derive(Default)]
pub struct Renewals {
    deliveries: Mutex<HashMap<(String, String, u32, u64), Renewal>>,
}

impl Renewals {
    /// Start renewing these deliveries of an auto-renew receive.
    pub fn track(&self, group: &str, topic: &str, client_id: &str, deliveries: &[pb::Delivery]) {
        let now = now_ms();
        let mut tracked = self.deliveries.lock().expect("renewals poisoned");
        for delivery in deliveries {
            let receipt = delivery.receipt.unwrap_or_default();
            tracked.insert(
                (group.into(), topic.into(), receipt.queue_id, receipt.offset),
                Renewal {
                    group: group.into(),
                    topic: topic.into(),
                    receipt,
                    client_id: client_id.into(),
                    started_ms: now,
                    invisible_until_ms: delivery.invisible_until_ms,
                },
            );
        }
    }

    /// Stop renewing an acknowledged delivery.
    pub fn forget(&self, group: &str, topic: &str, receipt: &pb::Receipt) {
        self.deliveries.lock().expect("renewals poisoned").remove(&(
            group.into(),
            topic.into(),
            receipt.queue_id,
            receipt.offset,
        ));
    }
}

pub async fn run(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    let invisible = broker.config.push_invisible;
    // Renew a third of the invisible time ahead (at most 10 s ahead, as RocketMQ does).
    let ahead_ms = (invisible.as_millis() as i64 / 3).min(10_000);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        let now = now_ms();
        // Due renewals, grouped by (group, topic): one command each.
        let mut due: HashMap<(String, String), Vec<pb::Receipt>> = HashMap::new();
        {
            let mut tracked = broker
                .renewals
                .deliveries
                .lock()
                .expect("renewals poisoned");
            tracked.retain(|_, r| {
                now - r.started_ms < RENEW_FOR_AT_MOST_MS
                    && (r.client_id.is_empty() || broker.clients.is_connected(&r.client_id))
            });
            for r in tracked.values() {
                if r.invisible_until_ms - now <= ahead_ms {
                    due.entry((r.group.clone(), r.topic.clone()))
                        .or_default()
                        .push(r.receipt);
                }
            }
        }
        for ((group, topic), receipts) in due {
            let command = pb::Command {
                kind: Some(pb::command::Kind::Renew(pb::Renew {
                    group: group.clone(),
                    topic: topic.clone(),
                    receipts: receipts.clone(),
                    now_ms: now,
                    invisible_ms: invisible.as_millis() as i64,
                })),
            };
            let outcomes = match broker.node.propose(command, PROPOSE_DEADLINE).await {
                Ok(pb::CommandResult {
                    kind: Some(pb::command_result::Kind::Ack(result)),
                }) => result.outcomes,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "renew push-consumer deliveries");
                    continue;
                }
            };
            let mut tracked = broker
                .renewals
                .deliveries
                .lock()
                .expect("renewals poisoned");
            for (receipt, outcome) in receipts.iter().zip(outcomes) {
                let key = (
                    group.clone(),
                    topic.clone(),
                    receipt.queue_id,
                    receipt.offset,
                );
                if outcome == pb::ReceiptOutcome::ReceiptDone as i32 {
                    if let Some(r) = tracked.get_mut(&key) {
                        r.invisible_until_ms = now + invisible.as_millis() as i64;
                    }
                } else {
                    tracked.remove(&key);
                }
            }
        }
    }
}
