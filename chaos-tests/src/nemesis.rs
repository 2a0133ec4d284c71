//! The faults a chaos run injects, and the schedule a seed turns into.
//!
//! A fault is chosen and timed by the seed; which node it hits is decided when it is
//! injected (the leader at that moment, a follower picked by the seed from the sorted
//! followers), so a replay with the same seed makes the same choices.

use std::fmt;
use std::time::Duration;

use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

use crate::cluster::Cluster;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// SIGKILL the leader; restart it after a random delay.
    KillLeader,
    KillFollower,
    /// SIGKILL a majority, the leader among them; restart them.
    KillMajority,
    /// SIGKILL every node at once; restart them all.
    KillAll,
    /// SIGSTOP the leader for longer than the election timeout, then SIGCONT.
    PauseLeader,
    PauseFollower,
    /// Cut the leader off from every other node (clients still reach it).
    IsolateLeader,
    /// Split the group into a majority and a minority; the old leader lands on either side.
    Split,
    /// Five nodes: two halves that cannot talk, and one node that sees both.
    Bridge,
    /// One node can receive from the others but whatever it sends them is lost.
    OneWay,
    /// 20% of the packets to and from the leader lost.
    Lossy,
    /// The leader's outgoing link slowed down (netem delay, or a token bucket without netem).
    Slow,
    /// A follower's data dir deleted; it restarts empty and must catch up.
    Wipe,
    /// A follower's disk filled to the last byte: its writes meet ENOSPC and wait; the other
    /// nodes go on. Space comes back at heal and it catches up by itself.
    DiskFullFollower,
    /// The leader's disk filled to the last byte: another node must take over.
    DiskFullLeader,
    /// A majority's disks (the leader's among them) filled below `min_free_disk`: new messages
    /// are refused with a clear error until space comes back.
    DiskLowMajority,
    /// The leader's disk slowed to `SLOW_DISK_WRITES_PER_SEC` writes: each of its fsyncs takes
    /// tens of milliseconds; the followers' disks stay fast.
    SlowDiskLeader,
    /// A follower's disk slowed the same way.
    SlowDiskFollower,
    /// A majority's disks (the leader's among them) slowed: no fast majority is left, so every
    /// commit waits for a slow fsync, and nothing may fail or be lost for it.
    SlowDiskMajority,
}

pub const ALL: [Fault; 19] = [
    Fault::KillLeader,
    Fault::KillFollower,
    Fault::KillMajority,
    Fault::KillAll,
    Fault::PauseLeader,
    Fault::PauseFollower,
    Fault::IsolateLeader,
    Fault::Split,
    Fault::Bridge,
    Fault::OneWay,
    Fault::Lossy,
    Fault::Slow,
    Fault::Wipe,
    Fault::DiskFullFollower,
    Fault::DiskFullLeader,
    Fault::DiskLowMajority,
    Fault::SlowDiskLeader,
    Fault::SlowDiskFollower,
    Fault::SlowDiskMajority,
];

/// Size of each node's data dir when a run has disk faults: room for a run's messages plus
/// RocksDB's preallocated WAL, and, once a filler is deleted, for the 64 MiB RocksDB wants
/// free before it resumes writing.
pub const SMALL_DISK_MB: u64 = 512;
/// The nodes' `min_free_disk` in runs with disk faults.
pub const SMALL_DISK_MIN_FREE_MB: u64 = 128;
/// Writes a second a slowed disk takes from its node: a WAL fsync needs at least one, so a
/// slowed node fsyncs about this often at best, against thousands a second on a fast disk.
pub const SLOW_DISK_WRITES_PER_SEC: u32 = 20;
/// The least mean WAL fsync time that shows a slowed disk was slowed.
const SLOW_DISK_MIN_FSYNC_MS: f64 = 10.0;

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "kill-leader",
            Fault::KillFollower => "kill-follower",
            Fault::KillMajority => "kill-majority",
            Fault::KillAll => "kill-all",
            Fault::PauseLeader => "pause-leader",
            Fault::PauseFollower => "pause-follower",
            Fault::IsolateLeader => "isolate-leader",
            Fault::Split => "split",
            Fault::Bridge => "bridge",
            Fault::OneWay => "one-way",
            Fault::Lossy => "lossy",
            Fault::Slow => "slow",
            Fault::Wipe => "wipe",
            Fault::DiskFullFollower => "disk-full-follower",
            Fault::DiskFullLeader => "disk-full-leader",
            Fault::DiskLowMajority => "disk-low-majority",
            Fault::SlowDiskLeader => "slow-disk-leader",
            Fault::SlowDiskFollower => "slow-disk-follower",
            Fault::SlowDiskMajority => "slow-disk-majority",
        }
    }

    /// Faults that need each node's data dir on a small filesystem of its own.
    pub fn needs_small_disks(self) -> bool {
        matches!(
            self,
            Fault::DiskFullFollower | Fault::DiskFullLeader | Fault::DiskLowMajority
        )
    }

    /// Faults that need each node's data dir on an ext4 filesystem of its own, on a block
    /// device whose writes can be throttled per process.
    pub fn needs_slow_disks(self) -> bool {
        matches!(
            self,
            Fault::SlowDiskLeader | Fault::SlowDiskFollower | Fault::SlowDiskMajority
        )
    }

    /// Faults that need the nodes in network namespaces.
    pub fn needs_network(self) -> bool {
        matches!(
            self,
            Fault::IsolateLeader
                | Fault::Split
                | Fault::Bridge
                | Fault::OneWay
                | Fault::Lossy
                | Fault::Slow
        )
    }

    /// Faults that take the leader away, for which a new leader is expected.
    pub fn targets_leader(self) -> bool {
        matches!(
            self,
            Fault::KillLeader
                | Fault::KillMajority
                | Fault::KillAll
                | Fault::PauseLeader
                | Fault::IsolateLeader
                | Fault::DiskFullLeader
        )
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Fault, String> {
        ALL.iter().copied().find(|f| f.name() == s).ok_or_else(|| {
            let names: Vec<_> = ALL.iter().map(|f| f.name()).collect();
            format!("unknown fault `{s}`; known: {}", names.join(", "))
        })
    }
}

/// One planned fault: quiet time before it, how long it lasts, and the seed-drawn choices.
#[derive(Clone, Debug)]
pub struct Step {
    pub fault: Fault,
    pub quiet_before: Duration,
    pub duration: Duration,
    /// Picks among candidate nodes (followers, sides of a split) when the fault is injected.
    pub pick: u64,
}

/// The faults, in a seed-shuffled order, `rounds` times over, with seed-drawn timings.
/// `pause_at_least` keeps pauses longer than the election timeout.
pub fn schedule(seed: u64, faults: &[Fault], rounds: u32, pause_at_least: Duration) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut steps = Vec::new();
    for _ in 0..rounds {
        let mut order = faults.to_vec();
        order.shuffle(&mut rng);
        for fault in order {
            let mut duration = Duration::from_millis(rng.random_range(1_500..4_000));
            if matches!(fault, Fault::PauseLeader | Fault::PauseFollower) {
                duration = duration.max(pause_at_least);
            }
            steps.push(Step {
                fault,
                quiet_before: Duration::from_millis(rng.random_range(1_000..2_500)),
                duration,
                pick: rng.random(),
            });
        }
    }
    steps
}

/// What was done to the cluster, so that it can be undone.
#[derive(Debug, Default)]
pub struct Injected {
    pub killed: Vec<u64>,
    pub paused: Vec<u64>,
    /// Nodes whose data dir was filled.
    pub filled: Vec<u64>,
    /// Nodes whose disk was slowed, with their WAL fsyncs (count, seconds) until then.
    pub slowed: Vec<(u64, (f64, f64))>,
    pub network: bool,
    /// Human-readable: which nodes, which filter.
    pub description: String,
    /// The leader when the fault was injected.
    pub old_leader: Option<u64>,
}

fn pick_one(nodes: &[u64], pick: u64) -> anyhow::Result<u64> {
    if nodes.is_empty() {
        bail!("harness: no node to pick");
    }
    Ok(nodes[(pick % nodes.len() as u64) as usize])
}

/// The leader and seed-drawn followers enough to make a majority with it.
fn majority_with(leader: u64, followers: &[u64], rng: &mut StdRng) -> Vec<u64> {
    let mut others = followers.to_vec();
    others.shuffle(rng);
    let mut majority = vec![leader];
    majority.extend(others.into_iter().take(followers.len().div_ceil(2)));
    majority
}

/// Inject `step.fault`. Errors are harness errors (a fault that could not be installed).
pub async fn inject(cluster: &mut Cluster, step: &Step) -> anyhow::Result<Injected> {
    let leader = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .context("harness: no leader to aim the fault at")?;
    let mut ids: Vec<u64> = cluster.nodes.iter().map(|n| n.id).collect();
    ids.sort_unstable();
    let followers: Vec<u64> = ids.iter().copied().filter(|&id| id != leader).collect();
    let mut rng = StdRng::seed_from_u64(step.pick);
    let mut done = Injected {
        old_leader: Some(leader),
        ..Default::default()
    };
    let network = || {
        cluster
            .network
            .as_ref()
            .with_context(|| format!("harness: fault {} needs --netns", step.fault))
    };
    match step.fault {
        Fault::KillLeader => done.killed = vec![leader],
        Fault::KillFollower => done.killed = vec![pick_one(&followers, step.pick)?],
        Fault::KillMajority => done.killed = majority_with(leader, &followers, &mut rng),
        Fault::KillAll => done.killed = ids.clone(),
        Fault::PauseLeader => done.paused = vec![leader],
        Fault::PauseFollower => done.paused = vec![pick_one(&followers, step.pick)?],
        Fault::IsolateLeader => {
            network()?.partition(&[leader], &followers)?;
            done.network = true;
            done.description = format!("node {leader} cut off from {followers:?}");
        }
        Fault::Split => {
            let mut shuffled = ids.clone();
            shuffled.shuffle(&mut rng);
            let minority: Vec<u64> = shuffled[..ids.len() / 2].to_vec();
            let majority: Vec<u64> = shuffled[ids.len() / 2..].to_vec();
            network()?.partition(&minority, &majority)?;
            done.network = true;
            done.description = format!("{minority:?} | {majority:?}");
        }
        Fault::Bridge => {
            if ids.len() < 5 {
                bail!("harness: a bridge partition needs 5 nodes");
            }
            let mut shuffled = ids.clone();
            shuffled.shuffle(&mut rng);
            // The leader sits on one side; the bridge node sees both halves.
            let (left, bridge, right) = (&shuffled[..2], shuffled[2], &shuffled[3..]);
            network()?.partition(left, right)?;
            done.network = true;
            done.description = format!("{left:?} | {right:?}, node {bridge} sees both");
        }
        Fault::OneWay => {
            let speaker = if step.pick.is_multiple_of(2) {
                leader
            } else {
                pick_one(&followers, step.pick / 2)?
            };
            let network = network()?;
            for &other in ids.iter().filter(|&&id| id != speaker) {
                network.cut(speaker, other)?;
            }
            done.network = true;
            done.description = format!("node {speaker} hears but is not heard");
        }
        Fault::Lossy => {
            network()?.lossy(leader, 20)?;
            done.network = true;
            done.description = format!("node {leader} loses 20% of its packets");
        }
        Fault::Slow => {
            let how = network()?.slow(leader, 100, 512)?;
            done.network = true;
            done.description = format!("node {leader}: {how}");
        }
        Fault::Wipe => {
            let victim = pick_one(&followers, step.pick)?;
            cluster.wipe_node(victim)?;
            done.killed = vec![victim];
            done.description = format!("node {victim} data dir deleted");
        }
        Fault::DiskFullFollower | Fault::DiskFullLeader => {
            let victim = if step.fault == Fault::DiskFullLeader {
                leader
            } else {
                pick_one(&followers, step.pick)?
            };
            done.filled = vec![victim];
            let free = cluster.fill_disk(victim, 0)?;
            done.description = format!("node {victim} disk full ({} KiB left)", free >> 10);
        }
        Fault::DiskLowMajority => {
            done.filled = majority_with(leader, &followers, &mut rng);
            // A quarter under the mark: low, yet above the reserve a node's writes keep free
            // for RocksDB (64 MiB), so what is in flight still lands.
            let leave = (SMALL_DISK_MIN_FREE_MB << 20) * 3 / 4;
            for &id in &done.filled {
                cluster.fill_disk(id, leave)?;
            }
            done.description = format!(
                "nodes {:?} below min_free_disk ({} MiB left of {SMALL_DISK_MIN_FREE_MB})",
                done.filled,
                leave >> 20
            );
        }
        Fault::SlowDiskLeader | Fault::SlowDiskFollower | Fault::SlowDiskMajority => {
            let victims = match step.fault {
                Fault::SlowDiskLeader => vec![leader],
                Fault::SlowDiskFollower => vec![pick_one(&followers, step.pick)?],
                _ => majority_with(leader, &followers, &mut rng),
            };
            for &victim in &victims {
                let fsyncs = cluster.wal_fsyncs(victim).await?;
                cluster.slow_disk(victim, SLOW_DISK_WRITES_PER_SEC)?;
                done.slowed.push((victim, fsyncs));
            }
            done.description = match victims.as_slice() {
                [one] => format!("node {one} disk slowed to {SLOW_DISK_WRITES_PER_SEC} writes/s"),
                all => format!("nodes {all:?} disks slowed to {SLOW_DISK_WRITES_PER_SEC} writes/s"),
            };
        }
    }
    for &id in &done.killed {
        cluster.kill_node(id);
    }
    for &id in &done.paused {
        cluster.pause_node(id, true)?;
    }
    if done.description.is_empty() {
        let nodes = if done.killed.is_empty() {
            &done.paused
        } else {
            &done.killed
        };
        done.description = format!("nodes {nodes:?}");
    }
    Ok(done)
}

/// Undo a fault: heal the network, resume paused nodes, restart killed ones (in a
/// seed-drawn order with short gaps, so restarts are not always simultaneous). Returns what
/// the fault was seen to do, where that is worth a note in the report.
pub async fn heal(
    cluster: &mut Cluster,
    injected: &Injected,
    pick: u64,
) -> anyhow::Result<Option<String>> {
    if injected.network
        && let Some(network) = &cluster.network
    {
        network.heal()?;
    }
    for &id in &injected.paused {
        cluster.pause_node(id, false)?;
    }
    for &id in &injected.filled {
        cluster.unfill_disk(id)?;
    }
    let mut slowed_fsyncs = Vec::new();
    for &(id, (count_before, seconds_before)) in &injected.slowed {
        let (count, seconds) = cluster.wal_fsyncs(id).await?;
        cluster.unslow_disk(id)?;
        // A node that did not fsync while slowed was not slowed: the fault would prove nothing.
        if count <= count_before {
            bail!("harness: node {id} made no WAL fsync while its disk was slowed");
        }
        let mean_ms = (seconds - seconds_before) / (count - count_before) * 1000.0;
        // A fast disk fsyncs in well under a millisecond, a slowed one in tens: a throttle the
        // kernel did not apply would make the run prove nothing.
        if mean_ms < SLOW_DISK_MIN_FSYNC_MS {
            bail!(
                "harness: node {id}'s disk was not slowed (its WAL fsyncs took {mean_ms:.1} ms on average)"
            );
        }
        slowed_fsyncs.push(format!(
            "node {id} fsynced {} times, in {mean_ms:.0} ms on average",
            count - count_before
        ));
    }
    let seen = (!slowed_fsyncs.is_empty()).then(|| slowed_fsyncs.join(", "));
    let mut rng = StdRng::seed_from_u64(pick ^ 0x9e37_79b9);
    let mut order = injected.killed.clone();
    order.shuffle(&mut rng);
    for id in order {
        cluster.start_node(id)?;
        let gap = *[0u64, 100, 400].choose(&mut rng).unwrap_or(&0);
        tokio::time::sleep(Duration::from_millis(gap)).await;
    }
    Ok(seen)
}
