//! `preferred_leader`: while this node leads and the preferred node is a voter whose log is
//! complete, hand leadership to it. Checked every few seconds, so a preferred node that
//! restarts takes leadership back once it has caught up.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use super::Broker;

const CHECK_EVERY: Duration = Duration::from_secs(2);
const TRANSFER_DEADLINE: Duration = Duration::from_secs(5);

pub async fn run(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    let Some(preferred) = broker.config.preferred_leader else {
        return;
    };
    let node = &broker.node;
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
        if preferred == node.id || broker.draining.load(Ordering::Relaxed) {
            continue;
        }
        let metrics = node.metrics();
        let is_voter = metrics
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == preferred);
        let caught_up = metrics
            .replication
            .as_ref()
            .and_then(|progress| progress.get(&preferred).cloned().flatten())
            .is_some_and(|matched| Some(matched.index) >= metrics.last_log_index);
        // A preferred node short of disk space would hand leadership straight back.
        let has_room = node.network().disk_reports().is_low(preferred) == Some(false);
        if metrics.current_leader != Some(node.id) || !is_voter || !caught_up || !has_room {
            continue;
        }
        tracing::info!(to = preferred, "handing leadership to the preferred leader");
        if let Err(e) = node
            .transfer_leadership(Some(preferred), TRANSFER_DEADLINE)
            .await
        {
            tracing::warn!(error = %e, to = preferred, "preferred leader did not take over");
        }
    }
}
