//! Watches this node's free disk space (see DESIGN.md: disk full is an expected condition).
//!
//! Every check updates what the metrics and the admin API show, a change is logged once, and
//! a leader whose disk is low
//! hands leadership to a caught-up voter that reports room: the group then goes on taking
//! messages while a majority has space. Refusing the messages themselves is the leader's
//! check in `RaftNode::check_room`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use raftmq_storage::DiskChange;
use tokio::sync::watch;

use super::Broker;

const CHECK_EVERY: Duration = Duration::from_millis(250);
/// A failed handover is tried again after this long.
const HANDOVER_RETRY: Duration = Duration::from_secs(2);
const HANDOVER_DEADLINE: Duration = Duration::from_secs(3);
const MIB: u64 = 1 << 20;

pub async fn run(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    let node = &broker.node;
    let mut last_handover: Option<Instant> = None;
    let mut read_failed = false;
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
        match node.disk.check() {
            Ok(change) => {
                read_failed = false;
                log_change(&broker, change);
            }
            Err(e) if !read_failed => {
                read_failed = true;
                tracing::warn!(error = %e, path = %node.disk.path().display(), "cannot read the data dir's free space");
            }
            Err(_) => {}
        }

        let handover_due = last_handover.is_none_or(|at| at.elapsed() >= HANDOVER_RETRY);
        if node.disk.is_low()
            && handover_due
            && !broker.draining.load(Ordering::Relaxed)
            && let Some(target) = voter_with_room(&broker)
        {
            last_handover = Some(Instant::now());
            tracing::warn!(
                to = target,
                "this leader's disk is low: handing leadership to a node with room"
            );
            if let Err(e) = node
                .transfer_leadership(Some(target), HANDOVER_DEADLINE)
                .await
            {
                tracing::warn!(
                    error = %e,
                    to = target,
                    "leadership not handed over; new messages stay refused"
                );
            }
        }
    }
}

fn log_change(broker: &Broker, change: DiskChange) {
    let disk = &broker.node.disk;
    match change {
        DiskChange::Unchanged => {}
        DiskChange::BecameLow => tracing::warn!(
            free_mib = disk.free_bytes() / MIB,
            min_free_disk_mib = disk.min_free_bytes() / MIB,
            path = %disk.path().display(),
            "the data dir's disk is below min_free_disk: this node counts as having no room for new messages"
        ),
        DiskChange::Recovered => tracing::info!(
            free_mib = disk.free_bytes() / MIB,
            "the data dir's disk has room again"
        ),
    }
}

/// When this node leads: the voter, other than itself, with the most complete log among
/// those that reported room lately.
fn voter_with_room(broker: &Broker) -> Option<u64> {
    let node = &broker.node;
    let metrics = node.metrics();
    if metrics.current_leader != Some(node.id) {
        return None;
    }
    let reports = node.network().disk_reports();
    metrics
        .membership_config
        .membership()
        .voter_ids()
        .filter(|id| *id != node.id && reports.is_low(*id) == Some(false))
        .max_by_key(|id| {
            metrics
                .replication
                .as_ref()
                .and_then(|progress| progress.get(id).cloned().flatten())
                .map(|log_id| log_id.index)
        })
}
