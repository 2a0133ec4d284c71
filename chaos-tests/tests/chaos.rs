//! The short chaos suite CI runs: every fault kind at least once with fixed seeds, each node
//! in its own network namespace (root needed, as in CI), and the checker shown to bite.
//! `chaos run --duration N` is the longer soak.

use std::path::PathBuf;
use std::time::Duration;

use chaos_tests::nemesis::{ALL, Fault};
use chaos_tests::report::{FaultRow, RunReport};
use chaos_tests::run::{RunOptions, run};

fn options(name: &str, nodes: u64, seed: u64, faults: Vec<Fault>) -> RunOptions {
    RunOptions {
        nodes,
        seed,
        faults,
        rounds: 1,
        duration: Duration::ZERO,
        rate: 150,
        producers: 4,
        consumers: 2,
        flush: "sync",
        netns: true,
        lose_unsynced: false,
        // Kept after the run: report, plot, history and every node's log.
        out: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("chaos-{name}")),
    }
}

async fn run_and_print(options: &RunOptions) -> RunReport {
    let report = run(options)
        .await
        .unwrap_or_else(|e| panic!("harness error: {e:#}\nreplay: {}", options.replay_command()));
    println!("{}", report.text());
    println!("output kept in {}", options.out.display());
    report
}

fn assert_clean(report: &RunReport, options: &RunOptions) {
    assert!(
        report.clean,
        "the checker found problems; replay: {}",
        options.replay_command()
    );
}

/// Three nodes, each of `faults` twice: every fault ran and the checker found nothing.
async fn run_each_twice_and_assert_clean(name: &str, seed: u64, faults: &[Fault]) -> RunReport {
    let mut options = options(name, 3, seed, faults.to_vec());
    options.rounds = 2;
    let report = run_and_print(&options).await;
    assert_every_fault_ran(&report, faults);
    assert_clean(&report, &options);
    report
}

/// The report's table row of `fault`.
fn fault_row(report: &RunReport, fault: Fault) -> &FaultRow {
    report
        .faults
        .iter()
        .find(|r| r.fault == fault.name())
        .unwrap_or_else(|| panic!("no row for {fault}"))
}

fn assert_every_fault_ran(report: &RunReport, faults: &[Fault]) {
    for fault in faults {
        let row = report.faults.iter().find(|r| r.fault == fault.name());
        assert!(
            row.is_some_and(|r| r.injections >= 1),
            "fault {fault} was never injected"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_fault_on_three_nodes_loses_no_acknowledged_message() {
    // Disk faults run on small data dirs of their own: they have their own tests below, so
    // that these faults keep the nodes on the real disk.
    let faults: Vec<Fault> = ALL
        .iter()
        .copied()
        .filter(|f| *f != Fault::Bridge && !f.needs_small_disks() && !f.needs_slow_disks())
        .collect();
    let options = options("three-nodes", 3, 20261201, faults.clone());
    let report = run_and_print(&options).await;
    assert_every_fault_ran(&report, &faults);
    assert!(
        report.check.acknowledged > 1000,
        "too little traffic to mean anything: {} acknowledged",
        report.check.acknowledged
    );
    assert!(report.check.consumed > 0, "the consumers received nothing");
    assert_clean(&report, &options);
    // Every leader-taking fault ended with a leader of a newer term.
    for window in report.windows.iter().filter(|w| w.fault.targets_leader()) {
        assert!(
            window.new_leader.is_some(),
            "no new leader was seen after {} ({})",
            window.fault,
            window.description
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitions_of_five_nodes_lose_no_acknowledged_message() {
    let faults = vec![
        Fault::Bridge,
        Fault::Split,
        Fault::IsolateLeader,
        Fault::OneWay,
        Fault::KillMajority,
    ];
    let options = options("five-nodes", 5, 5, faults.clone());
    let report = run_and_print(&options).await;
    assert_every_fault_ran(&report, &faults);
    assert_clean(&report, &options);
}

/// Disks that fill up: a follower's to the last byte (its writes wait; the others go on), the
/// leader's (another node takes over), and a majority's below `min_free_disk` (new messages
/// are refused cleanly, and none of them is stored). Space comes back at each heal and the
/// group must recover by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_disks_refuse_cleanly_and_recover_by_themselves() {
    let faults = vec![
        Fault::DiskFullFollower,
        Fault::DiskFullLeader,
        Fault::DiskLowMajority,
    ];
    let report = run_each_twice_and_assert_clean("disks", 11, &faults).await;
    let row = |fault: Fault| fault_row(&report, fault);
    // A majority has room while one disk is full: sends go on being acknowledged.
    assert!(
        row(Fault::DiskFullFollower).acknowledged > 0,
        "nothing was acknowledged while one follower's disk was full"
    );
    assert!(
        row(Fault::DiskFullLeader).acknowledged > 0,
        "nothing was acknowledged after the leader's disk filled up"
    );
    // Without a majority with room, sends are refused with TOO_MANY_REQUESTS (the report
    // counts them apart from unknown outcomes), and the group takes them again once space
    // is back (every window recovered).
    assert!(
        row(Fault::DiskLowMajority).refused > 0,
        "no send was refused while a majority's disks were low"
    );
    assert!(report.check.refused_sends > 0);
    for window in &report.windows {
        assert!(
            window.unavailable_ms.is_some(),
            "no send was acknowledged after {} ({}) healed",
            window.fault,
            window.description
        );
    }
}

/// Slow disks: the leader's, a follower's, or a majority's may write only 20 times a second,
/// so that each of their fsyncs waits tens of milliseconds. With one slow node, the fast
/// majority commits without it; with a slow majority, every commit waits for a slow fsync.
/// Either way sends go on being acknowledged, none is lost, and every node ends with the same
/// messages once the disks are fast again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_disks_lose_nothing_and_sends_go_on() {
    let faults = vec![
        Fault::SlowDiskLeader,
        Fault::SlowDiskFollower,
        Fault::SlowDiskMajority,
    ];
    let report = run_each_twice_and_assert_clean("slow-disks", 5, &faults).await;
    for fault in faults {
        assert!(
            fault_row(&report, fault).acknowledged > 0,
            "nothing was acknowledged while a disk was slow ({fault})"
        );
    }
}

/// With nodes that lose what they have not written out (the test mode a debug build offers),
/// killing every node must show up as lost acknowledged messages: the checker bites.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_checker_catches_acknowledged_writes_lost_by_a_crash() {
    let mut options = options("checker-bites", 3, 3, vec![Fault::KillAll]);
    options.lose_unsynced = true;
    options.rounds = 2;
    let report = run_and_print(&options).await;
    assert!(!report.clean, "a run that lost writes was reported clean");
    assert!(
        !report.check.lost.is_empty(),
        "killing nodes that keep their WAL in memory lost no acknowledged message"
    );
}
