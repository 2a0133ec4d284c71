//! A node cut off from the majority of its group stops serving clients until it is back.
//!
//! Such a node can neither commit a send nor confirm a read, so every send it takes waits for
//! the propose deadline and fails. A client whose gRPC channel keeps one connection (gRPC's
//! default pick_first) retries on it, and stays stuck on a cut-off node for as long as the cut
//! lasts; one that spreads its calls over the nodes loses a deadline on each call that lands
//! there. Once this node has been out of touch with
//! a majority for `cut_off_after` (see `RaftNode::in_touch_with_quorum`), the client port
//! closes its connections and refuses new ones (`client_port::serve`): the clients' next
//! connection attempt goes to another endpoint, and their retries of the failed calls keep
//! the message ids, which the group deduplicates. The HTTP port keeps answering (`/readyz`
//! says why the node is not ready). A leader also marks its appends while it is cut off, so
//! that its followers stop counting its heartbeats as contact with the group
//! (`RaftNode::report_cut_off`).
//!
//! A node that has not been in touch with a majority since it started (the group is still
//! forming, or restarting as a whole) is not cut off: there is nowhere better to send clients,
//! and operators still reach it with `raftmq admin`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Broker;

/// Out of touch this long by this task's own clock, on top of the evidence being older than
/// `cut_off_after`: a process that was paused finds all its evidence old when it resumes, and
/// hears from its group again within a heartbeat or two.
const CONFIRM_FOR: Duration = Duration::from_millis(200);

pub async fn run(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    metrics::gauge!("raftmq_cut_off").set(0.0);
    let window = broker.config.cut_off_after;
    if window.is_zero() {
        return;
    }
    let node = &broker.node;
    let mut tick = tokio::time::interval(broker.config.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut been_in_touch = false;
    let mut out_of_touch_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            _ = tick.tick() => {}
        }
        if node.in_touch_with_quorum(window) {
            been_in_touch = true;
            out_of_touch_since = None;
            if broker
                .cut_off
                .send_if_modified(|cut| std::mem::replace(cut, false))
            {
                node.report_back_in_touch();
                metrics::gauge!("raftmq_cut_off").set(0.0);
                tracing::info!(
                    node_id = node.id,
                    "back in touch with the majority of the group: serving clients again"
                );
            }
            continue;
        }
        if !been_in_touch || *broker.cut_off.borrow() {
            continue;
        }
        let since = *out_of_touch_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= CONFIRM_FOR {
            broker.cut_off.send_replace(true);
            node.report_cut_off(window);
            metrics::gauge!("raftmq_cut_off").set(1.0);
            metrics::counter!("raftmq_cut_off_total").increment(1);
            tracing::warn!(
                node_id = node.id,
                after_ms = window.as_millis() as u64,
                "out of touch with the majority of the group (no leader heard, too few peers \
                 answering): closing client connections and refusing new ones until it is \
                 back, so that clients move to a node that can serve them"
            );
        }
    }
}
