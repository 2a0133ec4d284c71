//! A whole chaos run: start a group, drive producers and consumers through a seeded schedule
//! of faults, heal, then check every replica against what the clients were told.
//!
//! An `Err` from [`run`] is a harness error (a fault that could not be installed, a node
//! that would not start): it says nothing about the broker. Findings about the broker are
//! in the returned [`RunReport`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use raftmq::client::{Client, ClientError};
use raftmq_proto::rocketmq::v2::Code;
use raftmq_storage::db::UNSAFE_LOSE_UNSYNCED_ENV;

use crate::cluster::{Cluster, ClusterOptions};
use crate::disk::SmallDisk;
use crate::history::{self, History, Stored};
use crate::nemesis::{self, Fault, Step};
use crate::report::{self, FaultWindow, Op, RunReport};

pub const TOPIC: &str = "chaos";
pub const QUEUES: u32 = 8;
const CONSUMER_GROUP: &str = "chaos-consumers";

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub nodes: u64,
    pub seed: u64,
    pub faults: Vec<Fault>,
    /// How many times the fault list is run through (each time in a new seeded order).
    pub rounds: u32,
    /// Keep starting new rounds until this much time has passed (a soak); 0 = `rounds` only.
    pub duration: Duration,
    /// Messages per second over all producers.
    pub rate: u32,
    pub producers: u32,
    pub consumers: u32,
    /// `sync` or `async`.
    pub flush: &'static str,
    pub netns: bool,
    /// Checker-bites mode: the nodes lose what they have not written out when killed
    /// (see `raftmq_storage::db::UNSAFE_LOSE_UNSYNCED_ENV`); the run must then fail.
    pub lose_unsynced: bool,
    /// Where the report, the history, the plot and every node's data dir and log go.
    pub out: PathBuf,
}

impl RunOptions {
    /// The command that repeats this run exactly.
    pub fn replay_command(&self) -> String {
        let faults: Vec<&str> = self.faults.iter().map(|f| f.name()).collect();
        let mut command = format!(
            "chaos run --nodes {} --seed {} --faults {} --rounds {} --rate {} --producers {} --consumers {} --flush {}",
            self.nodes,
            self.seed,
            faults.join(","),
            self.rounds,
            self.rate,
            self.producers,
            self.consumers,
            self.flush
        );
        if !self.duration.is_zero() {
            command.push_str(&format!(" --duration {}", self.duration.as_secs()));
        }
        if !self.netns {
            command.push_str(" --no-netns");
        }
        if self.lose_unsynced {
            command.push_str(" --unsafe-lose-unsynced");
        }
        command
    }
}

/// What the workload tasks share.
struct Workload {
    started: Instant,
    /// `started` on the wall clock (ms since the epoch), to place a node's `leading_since_ms`
    /// on the run's timeline; the nodes run on this host and share its clock.
    started_wall_ms: i64,
    history: History,
    ops: Mutex<Vec<Op>>,
    /// Bodies some consumer received (each must be committed: still present at the end).
    consumed: Mutex<HashSet<String>>,
    /// Per queue, the highest offset an UpdateOffset was acknowledged for.
    committed_offsets: Mutex<BTreeMap<i32, u64>>,
    /// Offsets a consumer read back lower than it had committed before.
    offset_regressions: Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl Workload {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// A node's `leading_since_ms` on the run's timeline, no later than now (ms since start).
    fn since_start_ms(&self, wall_ms: i64) -> u64 {
        let at = u64::try_from(wall_ms.saturating_sub(self.started_wall_ms)).unwrap_or(0);
        at.min(self.now_ms())
    }
}

pub async fn run(options: &RunOptions) -> anyhow::Result<RunReport> {
    for fault in &options.faults {
        if fault.needs_network() && !options.netns {
            anyhow::bail!("harness: fault {fault} needs network namespaces (drop --no-netns)");
        }
        if *fault == Fault::Bridge && options.nodes < 5 {
            anyhow::bail!("harness: fault bridge needs --nodes 5");
        }
    }
    // Disk faults fill each node's own small filesystem; the min_free_disk mark scales down
    // with it. Runs without them keep the data dirs on the real disk.
    let small_disks = options.faults.iter().any(|f| f.needs_small_disks());
    // Slow-disk faults throttle a block device: the data dirs are then ext4 images on loop
    // devices, which the disk-full faults (on tmpfs, which fills and frees at once) do not use.
    let slow_disks = options.faults.iter().any(|f| f.needs_slow_disks());
    if small_disks && slow_disks {
        anyhow::bail!("harness: run the disk-full and the slow-disk faults in separate runs");
    }
    let mut env = Vec::new();
    if options.lose_unsynced {
        env.push((UNSAFE_LOSE_UNSYNCED_ENV.to_string(), "1".to_string()));
    }
    if small_disks || slow_disks {
        env.push((
            "RAFTMQ_MIN_FREE_DISK_MB".to_string(),
            nemesis::SMALL_DISK_MIN_FREE_MB.to_string(),
        ));
    }
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("harness: create {}", options.out.display()))?;
    let cluster_options = ClusterOptions {
        nodes: options.nodes,
        flush: options.flush,
        netns: options.netns,
        root: Some(options.out.join("nodes")),
        env,
        data_dir_mb: (small_disks || slow_disks).then_some(nemesis::SMALL_DISK_MB),
        data_dir_fs: if slow_disks {
            SmallDisk::Ext4
        } else {
            SmallDisk::Tmpfs
        },
        ..Default::default()
    };
    let mut cluster = Cluster::start(cluster_options).await?;
    cluster.create_topic(TOPIC, QUEUES).await?;

    let workload = Arc::new(Workload {
        started: Instant::now(),
        started_wall_ms: raftmq::broker::messages::now_ms(),
        history: History::default(),
        ops: Mutex::new(Vec::new()),
        consumed: Mutex::new(HashSet::new()),
        committed_offsets: Mutex::new(BTreeMap::new()),
        offset_regressions: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
    });
    let endpoints = cluster.endpoints();
    let mut tasks = Vec::new();
    for producer in 0..options.producers {
        tasks.push(tokio::spawn(produce(
            workload.clone(),
            endpoints.clone(),
            producer,
            options.producers,
            options.rate,
        )));
    }
    for consumer in 0..options.consumers {
        tasks.push(tokio::spawn(consume(
            workload.clone(),
            endpoints.clone(),
            consumer,
            options.consumers,
        )));
    }

    let pause_at_least = Duration::from_millis(2_000);
    let mut windows = Vec::new();
    let mut round = 0u64;
    loop {
        let steps = nemesis::schedule(
            options.seed.wrapping_add(round),
            &options.faults,
            1,
            pause_at_least,
        );
        for step in steps {
            let window = run_step(&mut cluster, &workload, &step).await?;
            eprintln!(
                "[{:6.1}s] {:<15} {:<45} unavailable {:>6} ms, recovered after {:>6} ms",
                window.injected_ms as f64 / 1000.0,
                window.fault,
                window.description,
                window
                    .measure_unavailable(&workload.ops.lock().unwrap())
                    .map_or("-".into(), |ms| ms.to_string()),
                window.recovered_ms.saturating_sub(window.injected_ms)
            );
            windows.push(window);
        }
        round += 1;
        let soaking = !options.duration.is_zero() && workload.started.elapsed() < options.duration;
        if round >= u64::from(options.rounds) && !soaking {
            break;
        }
    }

    // Quiet tail so that the last fault's recovery is followed by normal traffic.
    tokio::time::sleep(Duration::from_secs(2)).await;
    workload.stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.context("harness: a workload task panicked")?;
    }
    let exited = cluster.reap_exited();
    let final_check = final_check(&cluster, &workload, exited).await?;
    let ops = std::mem::take(&mut *workload.ops.lock().unwrap());
    let report = RunReport::build(options, ops, windows, final_check);
    report::write(&report, &options.out, &workload.history)?;
    Ok(report)
}

/// Inject one fault, keep it for its duration, heal, and wait until the group is whole.
async fn run_step(
    cluster: &mut Cluster,
    workload: &Arc<Workload>,
    step: &Step,
) -> anyhow::Result<FaultWindow> {
    tokio::time::sleep(step.quiet_before).await;
    let before = cluster.statuses().await;
    let old_term = before
        .iter()
        .filter_map(|(_, s)| s.as_ref())
        .map(|s| s.term)
        .max()
        .unwrap_or(0);
    let injected = nemesis::inject(cluster, step).await?;
    // From the moment the fault is in place.
    let injected_ms = workload.now_ms();
    let watcher = tokio::spawn(watch_new_leader(
        workload.clone(),
        cluster.endpoints(),
        injected.old_leader,
        old_term,
    ));
    tokio::time::sleep(step.duration).await;
    let healed_ms = workload.now_ms();
    let seen = nemesis::heal(cluster, &injected, step.pick).await?;
    let recovered = cluster.wait_caught_up(Duration::from_secs(60)).await;
    let recovered_ms = workload.now_ms();
    // Give the watcher a moment after recovery in case the election came late.
    tokio::time::sleep(Duration::from_millis(100)).await;
    watcher.abort();
    let mut new_leader = watcher.await.ok().flatten();
    // A leader restarted with its committed vote resumes leading in the same term without an
    // election (openraft), which the watcher does not count as new: after a restart of the
    // old leader, its leadership at recovery is the one that counts (time: an upper bound).
    if new_leader.is_none()
        && injected
            .old_leader
            .is_some_and(|old| injected.killed.contains(&old))
        && recovered.is_ok()
        && let Ok(leader) = cluster.wait_for_leader(Duration::from_secs(1)).await
    {
        new_leader = Some((leader, recovered_ms));
    }
    Ok(FaultWindow {
        fault: step.fault,
        description: match seen {
            Some(seen) => format!("{}; {seen}", injected.description),
            None => injected.description,
        },
        old_leader: injected.old_leader,
        injected_ms,
        healed_ms,
        recovered_ms,
        recovery_error: recovered.err().map(|e| format!("{e:#}")),
        new_leader_ms: new_leader.map(|(_, at)| at),
        new_leader: new_leader.map(|(id, _)| id),
        unavailable_ms: None,
    })
}

/// The first node seen leading other than `old_leader` in `old_term`, and when it took the
/// lead (ms since start): its own `leading_since_ms`, so the time does not depend on how often
/// this watch polls (the moment it was seen when a node does not report it). Every node is
/// probed on its own, each probe bounded and on a fresh connection, so a paused or cut-off
/// node cannot slow the watch down.
async fn watch_new_leader(
    workload: Arc<Workload>,
    endpoints: Vec<String>,
    old_leader: Option<u64>,
    old_term: u64,
) -> Option<(u64, u64)> {
    let watchers = endpoints.into_iter().map(|endpoint| {
        let workload = workload.clone();
        Box::pin(async move {
            loop {
                if let Ok(mut client) = Client::new(std::slice::from_ref(&endpoint)) {
                    client.timeout = Duration::from_millis(200);
                    let answers =
                        tokio::time::timeout(Duration::from_millis(250), client.cluster_status())
                            .await
                            .unwrap_or_default();
                    for (_, status) in answers {
                        if let Ok(s) = status
                            && s.role == "leader"
                            && (s.term > old_term || Some(s.node_id) != old_leader)
                        {
                            let at = s.leading_since_ms.map_or_else(
                                || workload.now_ms(),
                                |ms| workload.since_start_ms(ms),
                            );
                            return (s.node_id, at);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    });
    let (first, _, _) = futures::future::select_all(watchers).await;
    Some(first)
}

/// One producer: unique bodies `p<producer>:<seq>` at its share of the rate. One attempt per
/// message (the client itself tries the other nodes, keeping the message id): an error is an
/// unknown outcome.
async fn produce(
    workload: Arc<Workload>,
    endpoints: Vec<String>,
    producer: u32,
    producers: u32,
    rate: u32,
) {
    let Ok(mut client) = Client::new(&endpoints) else {
        return;
    };
    // Short, so that a node that stops answering without closing its connections (paused,
    // partitioned) is left for another one quickly.
    client.timeout = Duration::from_millis(1000);
    let interval = Duration::from_secs_f64(f64::from(producers) / f64::from(rate.max(1)));
    let first = workload.started + interval * producer / producers;
    let mut ticks = tokio::time::interval_at(first.into(), interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    while !workload.stop.load(Ordering::SeqCst) {
        ticks.tick().await;
        let body = format!("p{producer}:{seq}");
        seq += 1;
        let start_ms = workload.now_ms();
        let result = workload
            .history
            .send_until_acked(&client, TOPIC, body.clone(), Duration::ZERO)
            .await;
        let end_ms = workload.now_ms();
        workload.ops.lock().unwrap().push(Op {
            body,
            start_ms,
            end_ms,
            ok: result.is_ok(),
            refused: result.as_ref().is_err_and(history::is_refused_for_room),
        });
    }
}

/// One consumer: pulls its share of the queues and commits offsets as it goes. Every few
/// rounds it reads its committed offsets back, as a restarted consumer would, and records
/// any that went backwards.
async fn consume(workload: Arc<Workload>, endpoints: Vec<String>, consumer: u32, consumers: u32) {
    let Ok(mut client) = Client::new(&endpoints) else {
        return;
    };
    client.timeout = Duration::from_millis(1000);
    let queues: Vec<i32> = (0..QUEUES as i32)
        .filter(|q| *q as u32 % consumers == consumer)
        .collect();
    let mut next: HashMap<i32, u64> = queues.iter().map(|&q| (q, 0)).collect();
    let mut round = 0u64;
    while !workload.stop.load(Ordering::SeqCst) {
        round += 1;
        for &queue in &queues {
            let offset = next[&queue];
            let Ok((messages, after)) = client
                .pull(
                    CONSUMER_GROUP,
                    TOPIC,
                    queue,
                    offset,
                    64,
                    Duration::from_millis(100),
                )
                .await
            else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            {
                let mut consumed = workload.consumed.lock().unwrap();
                for m in &messages {
                    consumed.insert(String::from_utf8_lossy(&m.body).into_owned());
                }
            }
            if after > offset
                && client
                    .update_offset(CONSUMER_GROUP, TOPIC, queue, after)
                    .await
                    .is_ok()
            {
                next.insert(queue, after);
                let mut committed = workload.committed_offsets.lock().unwrap();
                let entry = committed.entry(queue).or_default();
                *entry = (*entry).max(after);
            }
        }
        if round.is_multiple_of(10) {
            for &queue in &queues {
                let acked = workload
                    .committed_offsets
                    .lock()
                    .unwrap()
                    .get(&queue)
                    .copied();
                if let (Some(acked), Ok(Some(read))) =
                    (acked, client.get_offset(CONSUMER_GROUP, TOPIC, queue).await)
                    && read < acked
                {
                    workload.offset_regressions.lock().unwrap().push(format!(
                        "queue {queue}: read back offset {read} after {acked} was committed (at {} ms)",
                        workload.now_ms()
                    ));
                }
            }
        }
    }
}

/// What the checker found once the group was whole again.
#[derive(Debug, Default, serde::Serialize)]
pub struct FinalCheck {
    pub acknowledged: usize,
    /// Refused cleanly for lack of disk room; one stored would show up as a phantom.
    pub refused_sends: usize,
    pub unknown_sends: usize,
    pub unknown_present: usize,
    /// Union over the nodes.
    pub lost: BTreeSet<String>,
    pub duplicated: BTreeSet<String>,
    pub reordered: BTreeSet<(String, String)>,
    pub phantom: BTreeSet<String>,
    pub wrong_offset: BTreeSet<String>,
    pub offset_gaps: BTreeSet<String>,
    pub replicas_identical: bool,
    /// Nodes whose stored messages differ from node 1's.
    pub divergent_nodes: Vec<u64>,
    /// Messages a consumer received that the group does not hold in the end (a read of
    /// something never committed).
    pub dirty_reads: Vec<String>,
    pub offset_regressions: Vec<String>,
    pub consumed: usize,
    /// Nodes that did not catch up with the leader's commit index after the faults.
    pub not_caught_up: Option<String>,
    /// Nodes whose process ended by itself during the run, with how; they are not read back.
    pub exited: Vec<(u64, String)>,
}

impl FinalCheck {
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.reordered.is_empty()
            && self.phantom.is_empty()
            && self.wrong_offset.is_empty()
            && self.offset_gaps.is_empty()
            && self.replicas_identical
            && self.dirty_reads.is_empty()
            && self.offset_regressions.is_empty()
            && self.not_caught_up.is_none()
            && self.exited.is_empty()
    }
}

async fn final_check(
    cluster: &Cluster,
    workload: &Workload,
    exited: Vec<(u64, String)>,
) -> anyhow::Result<FinalCheck> {
    let mut check = FinalCheck {
        exited,
        not_caught_up: cluster
            .wait_caught_up(Duration::from_secs(120))
            .await
            .err()
            .map(|e| format!("{e:#}")),
        replicas_identical: true,
        ..Default::default()
    };
    let acks = workload.history.acks();
    let unknown = workload.history.unknown();
    check.acknowledged = acks.len();
    check.unknown_sends = unknown.len();
    check.refused_sends = workload.history.refused();
    let mut first: Option<Vec<Stored>> = None;
    for node in cluster.nodes.iter().filter(|n| n.is_running()) {
        let client = cluster.node_client(node.id);
        let stored = match history::read_topic(&client, TOPIC, QUEUES as i32).await {
            Ok(stored) => stored,
            // The node lost the topic itself (only a broken broker does): it holds nothing.
            Err(ClientError::Rejected {
                code: Code::TopicNotFound,
                ..
            }) => Vec::new(),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("harness: read the topic back from node {}", node.id)
                });
            }
        };
        let found = history::check(&acks, &unknown, &stored);
        check.unknown_present = check.unknown_present.max(found.unknown_present);
        check.lost.extend(found.lost);
        check.duplicated.extend(found.duplicated);
        check.phantom.extend(found.phantom);
        check.wrong_offset.extend(found.wrong_offset);
        check.reordered.extend(found.reordered);
        for (queue, offset) in found.offset_gaps {
            check.offset_gaps.insert(format!(
                "node {}: queue {queue} has no offset {offset}",
                node.id
            ));
        }
        let committed = workload.committed_offsets.lock().unwrap().clone();
        for (queue, acked) in committed {
            match client.get_offset(CONSUMER_GROUP, TOPIC, queue).await {
                Ok(Some(held)) if held >= acked => {}
                other => check.offset_regressions.push(format!(
                    "node {}: queue {queue} holds offset {other:?}, {acked} was committed",
                    node.id
                )),
            }
        }
        match &first {
            None => {
                let bodies: HashSet<&str> = stored.iter().map(|s| s.body.as_str()).collect();
                check.dirty_reads = workload
                    .consumed
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|b| !bodies.contains(b.as_str()))
                    .cloned()
                    .collect();
                first = Some(stored);
            }
            Some(reference) => {
                if !history::replicas_identical(reference, &stored) {
                    check.replicas_identical = false;
                    check.divergent_nodes.push(node.id);
                }
            }
        }
    }
    check.consumed = workload.consumed.lock().unwrap().len();
    check
        .offset_regressions
        .extend(workload.offset_regressions.lock().unwrap().iter().cloned());
    Ok(check)
}
