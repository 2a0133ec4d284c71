//! A disk that fails under a running node (root needed: each data dir is a small ext4 image on a
//! loop device). The kernel turns the leader's filesystem read-only, as ext4 does on a disk
//! error: that node must exit with the reason rather than linger with frozen state, the other
//! two must elect a leader and go on acknowledging, and once its filesystem is repaired the
//! node restarts from what it had made durable and catches up.

use std::time::Duration;

use chaos_tests::cluster::{Cluster, ClusterOptions};
use chaos_tests::disk::SmallDisk;
use chaos_tests::history::{History, check_every_node};

const TOPIC: &str = "ledger";
const QUEUES: i32 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_whose_disk_fails_exits_and_the_group_goes_on() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions {
        data_dir_mb: Some(256),
        data_dir_fs: SmallDisk::Ext4,
        // The small disks are below the default free-space mark; this test is not about it.
        extra_args: vec!["--min-free-disk-mb".into(), "0".into()],
        ..Default::default()
    })
    .await?;
    cluster.create_topic(TOPIC, QUEUES as u32).await?;
    let history = History::default();
    let client = cluster.client();
    let send = |seq: u32| {
        history.send_until_acked(
            &client,
            TOPIC,
            format!("payment-{seq}"),
            Duration::from_secs(20),
        )
    };
    for seq in 0..50 {
        send(seq).await?;
    }

    let failed = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    cluster.fail_disk(failed)?;
    // Sends go on through every endpoint: the first ones after the fault may meet the dying
    // leader and are retried with the same message id.
    for seq in 50..150 {
        send(seq)
            .await
            .map_err(|e| anyhow::anyhow!("send {seq} after node {failed}'s disk failed: {e}"))?;
    }
    let status = cluster.wait_exited(failed, Duration::from_secs(30)).await?;
    assert!(!status.success(), "node {failed} exited with {status}");
    let log = std::fs::read_to_string(cluster.node(failed).log_file())?;
    assert!(
        log.contains("the raft core stopped"),
        "node {failed}'s log does not say why it stopped:\n{}",
        cluster.log_tails(20)
    );
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    assert_ne!(leader, failed, "the failed node still leads");

    cluster.repair_disk(failed)?;
    cluster.start_node(failed)?;
    cluster.wait_caught_up(Duration::from_secs(60)).await?;
    let stored = check_every_node(&cluster, &history, TOPIC, QUEUES).await?;
    assert_eq!(150, stored.len(), "messages stored on every node");
    Ok(())
}
