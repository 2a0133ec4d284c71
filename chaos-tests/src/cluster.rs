//! A broker group of real `raftmq broker` processes on 127.0.0.1.
//!
//! Each node gets its own data dir and log file under one temporary folder. The folder is
//! removed when the cluster is dropped after a passing test and kept (its path printed) when
//! the test panics or `RAFTMQ_KEEP_CLUSTER` is set, so the logs of a failure can be read.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use raftmq::client::Client;
use raftmq_proto::admin::v1 as admin;

use crate::netns::{self, Network};

#[derive(Clone)]
pub struct ClusterOptions {
    pub nodes: u64,
    /// `sync` or `async`.
    pub flush: &'static str,
    pub auto_create_topics: bool,
    /// More `raftmq broker` flags for every node.
    pub extra_args: Vec<String>,
    /// Each node in its own network namespace (see [`crate::netns`]; needs root), so that
    /// links between nodes can be cut. Otherwise every node listens on 127.0.0.1.
    pub netns: bool,
    /// Where the nodes' data dirs and logs go, kept afterwards; by default a temporary
    /// folder removed when a passing test drops the cluster.
    pub root: Option<PathBuf>,
    /// Extra environment variables for every node.
    pub env: Vec<(String, String)>,
    /// Each node's data dir on its own tmpfs of this many MiB (root needed), so that it can
    /// be filled up (see [`crate::disk`]).
    pub data_dir_mb: Option<u64>,
    /// What those small data dirs are: tmpfs (default) or ext4 images that can fail.
    pub data_dir_fs: crate::disk::SmallDisk,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 3,
            flush: "sync",
            auto_create_topics: false,
            extra_args: Vec::new(),
            netns: false,
            root: None,
            env: Vec::new(),
            data_dir_mb: None,
            data_dir_fs: crate::disk::SmallDisk::Tmpfs,
        }
    }
}

pub struct Node {
    pub id: u64,
    pub raft_addr: String,
    pub client_addr: String,
    /// /healthz, /readyz and /metrics.
    pub http_addr: String,
    pub dir: PathBuf,
    /// The `--members` this node starts with: the group it was created in, plus itself.
    members: String,
    child: Option<Child>,
}

impl Node {
    /// A node that is not started yet, on ports free a moment ago.
    fn with_free_ports(id: u64, dir: PathBuf) -> anyhow::Result<Node> {
        Ok(Node {
            id,
            raft_addr: format!("127.0.0.1:{}", free_port()?),
            client_addr: format!("127.0.0.1:{}", free_port()?),
            http_addr: format!("127.0.0.1:{}", free_port()?),
            dir,
            members: String::new(),
            child: None,
        })
    }

    /// A node that is not started yet, on its own address in `network`.
    fn in_namespace(id: u64, dir: PathBuf, network: &Network) -> Node {
        let ip = network.ip(id);
        Node {
            id,
            raft_addr: format!("{ip}:{}", netns::RAFT_PORT),
            client_addr: format!("{ip}:{}", netns::CLIENT_PORT),
            http_addr: format!("{ip}:{}", netns::HTTP_PORT),
            dir,
            members: String::new(),
            child: None,
        }
    }

    /// This node's entry in a `--members` list.
    pub fn member_spec(&self) -> String {
        format!("{}={}/{}", self.id, self.raft_addr, self.client_addr)
    }
}

impl Node {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.join("broker.log")
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

pub struct Cluster {
    binary: PathBuf,
    options: ClusterOptions,
    root: PathBuf,
    /// Owns `root` when it is a temporary folder.
    temp: Option<tempfile::TempDir>,
    pub nodes: Vec<Node>,
    /// Present when the nodes run in network namespaces; dropped after the nodes are killed.
    pub network: Option<Network>,
    /// Data dirs mounted as small filesystems, unmounted when the cluster is dropped.
    small_disks: Vec<PathBuf>,
}

/// The `raftmq` executable: `RAFTMQ_BIN`, or the one cargo built next to the test binary.
pub fn raftmq_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("RAFTMQ_BIN") {
        return Ok(PathBuf::from(path));
    }
    // Next to the running executable (the `chaos` binary in target/<profile>/), or one level
    // up from a test binary (target/<profile>/deps/<test>).
    let exe = std::env::current_exe()?;
    let exe_dir = exe.parent().context("locate the target directory")?;
    let candidates = [exe_dir.join("raftmq"), exe_dir.join("../raftmq")];
    let Some(binary) = candidates.iter().find(|path| path.exists()).cloned() else {
        bail!(
            "{} does not exist: build it first (`cargo build --workspace --all-targets`) or set RAFTMQ_BIN",
            candidates[1].display()
        );
    };
    Ok(binary)
}

/// A port that was free a moment ago; the broker binds it soon after.
/// A free port below Linux's ephemeral range (32768-60999): a port the kernel hands out for
/// port 0 can be taken again by some outgoing connection before the broker binds it.
fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(7919).wrapping_add(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()),
    );
    for _ in 0..1000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed).wrapping_add(seed);
        let port = 20_000 + (n.wrapping_mul(2_654_435_761) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Cluster {
    /// Start every node and wait until the group has a leader. A start that fails because a
    /// node could not come up (a port taken meanwhile) is tried again on other ports.
    pub async fn start(options: ClusterOptions) -> anyhow::Result<Cluster> {
        let mut attempt = 1;
        loop {
            match Self::start_once(options.clone()).await {
                Ok(cluster) => return Ok(cluster),
                Err(e) if attempt < 3 => {
                    eprintln!("cluster start attempt {attempt} failed, trying other ports: {e:#}");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn start_once(options: ClusterOptions) -> anyhow::Result<Cluster> {
        let binary = raftmq_binary()?;
        let (root, temp) = match &options.root {
            Some(dir) => {
                // A fresh start: what an earlier attempt left there is not this group's.
                if dir.exists() {
                    std::fs::remove_dir_all(dir)
                        .with_context(|| format!("harness: clear {}", dir.display()))?;
                }
                std::fs::create_dir_all(dir)?;
                (dir.clone(), None)
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("raftmq-cluster-")
                    .tempdir()?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        let ids: Vec<u64> = (1..=options.nodes).collect();
        let network = if options.netns {
            Some(Network::create(&ids)?)
        } else {
            None
        };
        let mut nodes = Vec::new();
        for &id in &ids {
            let dir = root.join(format!("node-{id}"));
            nodes.push(match &network {
                Some(network) => Node::in_namespace(id, dir, network),
                None => Node::with_free_ports(id, dir)?,
            });
        }
        let members = nodes
            .iter()
            .map(Node::member_spec)
            .collect::<Vec<_>>()
            .join(",");
        for node in &mut nodes {
            node.members = members.clone();
        }
        let mut cluster = Cluster {
            binary,
            options,
            root,
            temp,
            nodes,
            network,
            small_disks: Vec::new(),
        };
        if let Some(mb) = cluster.options.data_dir_mb {
            for node in &cluster.nodes {
                crate::disk::mount(&node.data_dir(), cluster.options.data_dir_fs, mb)?;
                cluster.small_disks.push(node.data_dir());
            }
        }
        for id in 1..=cluster.options.nodes {
            cluster.start_node(id)?;
        }
        cluster.wait_for_leader(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    /// The nodes whose process ended by itself (a crash, a fatal error), with how it ended;
    /// from then on they count as stopped.
    pub fn reap_exited(&mut self) -> Vec<(u64, String)> {
        let mut exited = Vec::new();
        for node in &mut self.nodes {
            let Some(child) = node.child.as_mut() else {
                continue;
            };
            if let Ok(Some(status)) = child.try_wait() {
                node.child = None;
                exited.push((node.id, status.to_string()));
            }
        }
        exited
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.client_addr.clone()).collect()
    }

    /// A client that knows every node and fails over between them.
    pub fn client(&self) -> Client {
        Client::new(&self.endpoints()).expect("valid endpoints")
    }

    /// A client bound to one node only.
    pub fn node_client(&self, id: u64) -> Client {
        Client::new(&[self.node(id).client_addr.clone()]).expect("valid endpoint")
    }

    /// Start (or restart) one node with its existing data dir.
    pub fn start_node(&mut self, id: u64) -> anyhow::Result<()> {
        let binary = self.binary.clone();
        let flush = self.options.flush;
        let auto_create = self.options.auto_create_topics.to_string();
        let extra = self.options.extra_args.clone();
        let env = self.options.env.clone();
        let node = self.node(id);
        if node.child.is_some() {
            bail!("node {id} is already running");
        }
        let members = node.members.clone();
        let http_port = node
            .http_addr
            .rsplit_once(':')
            .map(|(_, port)| port.to_string())
            .context("http_addr has a port")?;
        std::fs::create_dir_all(&node.dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.log_file())?;
        let mut command = match &self.network {
            Some(network) => {
                let [program, rest @ ..] = network.exec_prefix(id);
                let mut command = Command::new(program);
                command.args(rest).arg(&binary);
                command
            }
            None => Command::new(&binary),
        };
        let node = &mut self.nodes[(id - 1) as usize];
        let child = command
            .arg("broker")
            .args(["--node-id", &id.to_string()])
            .arg("--data-dir")
            .arg(node.data_dir())
            .args([
                "--members",
                &members,
                "--flush",
                flush,
                "--auto-create-topics",
                &auto_create,
                "--http-port",
                &http_port,
            ])
            .args(&extra)
            .envs(env)
            // The broker's own default filter unless a test run asks for another.
            .env_remove("RUST_LOG")
            .envs(std::env::var("RAFTMQ_TEST_LOG").map(|filter| ("RUST_LOG", filter)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start node {id} ({})", binary.display()))?;
        node.child = Some(child);
        Ok(())
    }

    /// The `--members` node `id` is started with.
    pub fn members_of(&self, id: u64) -> String {
        self.node(id).members.clone()
    }

    /// Start a new node (the next id) that is not a member yet: it knows the group's first
    /// members and itself, and waits to be added (`raftmq admin member add`).
    pub fn start_new_node(&mut self) -> anyhow::Result<u64> {
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        let first = self.nodes.first().context("a cluster has nodes")?;
        let dir = self.root().join(format!("node-{id}"));
        let mut node = match &mut self.network {
            Some(network) => {
                network.add_node(id)?;
                Node::in_namespace(id, dir, network)
            }
            None => Node::with_free_ports(id, dir)?,
        };
        node.members = format!("{},{}", first.members, node.member_spec());
        self.nodes.push(node);
        self.start_node(id)?;
        Ok(id)
    }

    /// SIGKILL one node and reap it.
    pub fn kill_node(&mut self, id: u64) {
        if let Some(mut child) = self.node_mut(id).child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP (`paused`) or SIGCONT one running node.
    pub fn pause_node(&self, id: u64, paused: bool) -> anyhow::Result<()> {
        let pid = self
            .node(id)
            .pid()
            .with_context(|| format!("node {id} is not running"))?;
        let signal = if paused {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        };
        kill(Pid::from_raw(pid as i32), signal)
            .with_context(|| format!("harness: send {signal} to node {id}"))
    }

    /// SIGTERM one node and wait (bounded) for it to stop.
    pub fn stop_node(&mut self, id: u64) {
        if let Some(mut child) = self.node_mut(id).child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let give_up = Instant::now() + Duration::from_secs(10);
            while Instant::now() < give_up {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kill one node and delete what its data dir holds, as if its disk had been replaced.
    /// (The dir itself stays: it may be a mount point.)
    pub fn wipe_node(&mut self, id: u64) -> anyhow::Result<()> {
        self.kill_node(id);
        let data = self.node(id).data_dir();
        if data.exists() {
            for entry in std::fs::read_dir(&data)? {
                let path = entry?.path();
                let removed = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                removed.with_context(|| format!("remove {}", path.display()))?;
            }
        }
        Ok(())
    }

    /// Fill node `id`'s data dir until at most `leave` bytes are free (0: full). Returns the
    /// free bytes left. Needs `data_dir_mb`: filling the machine's own disk is not a test.
    pub fn fill_disk(&self, id: u64, leave: u64) -> anyhow::Result<u64> {
        crate::disk::fill(&self.small_disk(id)?, leave)
    }

    /// Make node `id`'s data dir fail: it turns read-only under the running node. Needs
    /// ext4 data dirs ([`ClusterOptions::data_dir_fs`]).
    pub fn fail_disk(&self, id: u64) -> anyhow::Result<()> {
        crate::disk::fail_disk(&self.small_disk(id)?)
    }

    /// Check and remount node `id`'s failed data dir (see [`Cluster::fail_disk`]); the node
    /// must have stopped.
    pub fn repair_disk(&self, id: u64) -> anyhow::Result<()> {
        crate::disk::repair_disk(&self.small_disk(id)?)
    }

    /// Node `id`'s `/metrics` page.
    pub async fn metrics(&self, id: u64) -> anyhow::Result<String> {
        let url = format!("http://{}/metrics", self.node(id).http_addr);
        let response = reqwest::Client::new()
            .get(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        Ok(response.text().await?)
    }

    /// Node `id`'s WAL fsyncs so far: (count, seconds in all).
    pub async fn wal_fsyncs(&self, id: u64) -> anyhow::Result<(f64, f64)> {
        let text = self.metrics(id).await?;
        let count = sample(&text, "raftmq_wal_fsync_seconds_count").unwrap_or(0.0);
        let seconds = sample(&text, "raftmq_wal_fsync_seconds_sum").unwrap_or(0.0);
        Ok((count, seconds))
    }

    /// Slow node `id`'s writes to its data dir to `writes_per_sec` (see
    /// [`crate::disk::slow_down`]). Needs ext4 data dirs and a running node.
    pub fn slow_disk(&self, id: u64, writes_per_sec: u32) -> anyhow::Result<()> {
        let pid = self
            .node(id)
            .pid()
            .with_context(|| format!("harness: node {id} is not running"))?;
        crate::disk::slow_down(&self.small_disk(id)?, pid, writes_per_sec)
    }

    /// Undo [`Cluster::slow_disk`].
    pub fn unslow_disk(&self, id: u64) -> anyhow::Result<()> {
        let pid = self.node(id).pid().unwrap_or(0);
        crate::disk::speed_up(&self.small_disk(id)?, pid)
    }

    fn small_disk(&self, id: u64) -> anyhow::Result<PathBuf> {
        let data = self.node(id).data_dir();
        if !self.small_disks.contains(&data) {
            bail!("harness: disk faults need small data dirs (ClusterOptions::data_dir_mb)");
        }
        Ok(data)
    }

    /// Wait (bounded) for node `id`'s process to exit by itself and reap it.
    pub async fn wait_exited(
        &mut self,
        id: u64,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let give_up = Instant::now() + timeout;
        loop {
            let node = self.node_mut(id);
            let child = node
                .child
                .as_mut()
                .with_context(|| format!("node {id} is not running"))?;
            if let Some(status) = child.try_wait()? {
                node.child = None;
                return Ok(status);
            }
            if Instant::now() > give_up {
                bail!("node {id} still runs after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Give node `id`'s data dir its space back.
    pub fn unfill_disk(&self, id: u64) -> anyhow::Result<()> {
        crate::disk::unfill(&self.node(id).data_dir())
    }

    /// Each running node's own status.
    pub async fn statuses(&self) -> Vec<(u64, Option<admin::NodeStatus>)> {
        let mut out = Vec::new();
        for node in &self.nodes {
            if !node.is_running() {
                out.push((node.id, None));
                continue;
            }
            let status = self
                .node_client(node.id)
                .cluster_status()
                .await
                .pop()
                .and_then(|(_, s)| s.ok());
            out.push((node.id, status));
        }
        out
    }

    /// Wait until a running node is leader and a majority of the running nodes agree on it.
    pub async fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<u64> {
        let give_up = Instant::now() + timeout;
        let majority = self.nodes.len() / 2 + 1;
        loop {
            let statuses = self.statuses().await;
            let leader = statuses
                .iter()
                .filter_map(|(_, s)| s.as_ref())
                .find(|s| s.role == "leader")
                .map(|s| (s.node_id, s.term));
            if let Some((leader, term)) = leader {
                let agreeing = statuses
                    .iter()
                    .filter_map(|(_, s)| s.as_ref())
                    .filter(|s| s.leader_id == Some(leader) && s.term == term)
                    .count();
                if agreeing >= majority {
                    return Ok(leader);
                }
            }
            if Instant::now() > give_up {
                bail!("no leader after {timeout:?}; statuses: {statuses:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until every running node has applied everything the leader has committed.
    pub async fn wait_caught_up(&self, timeout: Duration) -> anyhow::Result<()> {
        let give_up = Instant::now() + timeout;
        loop {
            let leader = self
                .wait_for_leader(give_up.saturating_duration_since(Instant::now()))
                .await?;
            let statuses = self.statuses().await;
            let committed = statuses
                .iter()
                .find(|(id, _)| *id == leader)
                .and_then(|(_, s)| s.as_ref())
                .and_then(|s| s.committed_index);
            let behind: Vec<_> = statuses
                .iter()
                .filter(|(id, _)| self.node(*id).is_running())
                .filter(|(_, s)| s.as_ref().and_then(|s| s.applied_index) < committed)
                .map(|(id, s)| (*id, s.as_ref().and_then(|s| s.applied_index)))
                .collect();
            if committed.is_some() && behind.is_empty() {
                return Ok(());
            }
            if Instant::now() > give_up {
                bail!(
                    "nodes still behind commit index {committed:?} after {timeout:?}: {behind:?}\n{}",
                    self.log_tails(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The topics the group holds, (name, queues) each, through the admin API.
    pub async fn topics(&self) -> anyhow::Result<Vec<(String, u32)>> {
        let listed = self
            .client()
            .admin(|mut c| async move { c.list_topics(admin::ListTopicsRequest {}).await })
            .await?;
        Ok(listed
            .into_inner()
            .topics
            .into_iter()
            .map(|t| (t.name, t.queues))
            .collect())
    }

    /// Create a topic through the admin API.
    pub async fn create_topic(&self, name: &str, queues: u32) -> anyhow::Result<()> {
        let client = self.client();
        let give_up = Instant::now() + Duration::from_secs(20);
        loop {
            let result = client
                .admin(|mut admin_client| {
                    let request = admin::CreateTopicRequest {
                        name: name.to_string(),
                        queues,
                        message_type: String::new(),
                    };
                    async move { admin_client.create_topic(request).await }
                })
                .await;
            match result {
                Ok(_) => return Ok(()),
                Err(e) if e.is_retryable() && Instant::now() < give_up => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => bail!("create topic {name}: {e}"),
            }
        }
    }

    /// Create a consumer group (or update its settings) through the admin API.
    /// `max_delivery_attempts` 0 means the broker default.
    pub async fn create_group(
        &self,
        name: &str,
        fifo: bool,
        max_delivery_attempts: u32,
    ) -> anyhow::Result<()> {
        let client = self.client();
        let give_up = Instant::now() + Duration::from_secs(20);
        loop {
            let result = client
                .admin(|mut admin_client| {
                    let request = admin::CreateGroupRequest {
                        name: name.to_string(),
                        fifo,
                        max_delivery_attempts,
                    };
                    async move { admin_client.create_group(request).await }
                })
                .await;
            match result {
                Ok(_) => return Ok(()),
                Err(e) if e.is_retryable() && Instant::now() < give_up => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => bail!("create group {name}: {e}"),
            }
        }
    }

    /// What node `id`'s RocksDB logged about background errors, stalls and resuming (the last
    /// `lines` such lines), for failure messages.
    pub fn rocksdb_errors(&self, id: u64, lines: usize) -> String {
        crate::disk::rocksdb_error_lines(&self.node(id).data_dir().join("rocksdb"), lines)
    }

    /// The tail of every node's log, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let text = std::fs::read_to_string(node.log_file()).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            out.push_str(&format!(
                "--- node {} ({})\n{}\n",
                node.id,
                node.log_file().display(),
                tail.join("\n")
            ));
        }
        out
    }
}

/// The value of one sample line (`name{labels} value`) in Prometheus text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for id in 1..=self.nodes.len() as u64 {
            self.kill_node(id);
        }
        let keep = std::thread::panicking() || std::env::var_os("RAFTMQ_KEEP_CLUSTER").is_some();
        // Data dirs of a run kept on disk (an explicit root, or a failure) outlive the mounts.
        let keep_data = keep || self.temp.is_none();
        for dir in std::mem::take(&mut self.small_disks) {
            if let Err(e) = crate::disk::unmount(&dir, keep_data) {
                eprintln!("{e:#}");
            }
        }
        if keep && let Some(temp) = self.temp.take() {
            let kept = temp.keep();
            eprintln!("cluster data and logs kept in {}", kept.display());
        }
    }
}
