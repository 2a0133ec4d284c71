//! `raftmq local`: a three-node broker group on this machine for trying raftmq out. Clients
//! reach the nodes on 127.0.0.1; each node's Raft traffic uses its own 127.0.0.N, so that a
//! drill can cut one node off with a packet filter (scripts/failover-drill.sh).
//!
//! Each node is its own `raftmq broker` process, so any one can be killed (`kill -9`) and
//! restarted by hand with the command recorded in `cluster.json`. Ctrl-C or SIGTERM stops
//! every node, including nodes restarted by hand (found through their pid files).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

use crate::client::Client;

#[derive(Debug, clap::Args)]
pub struct LocalArgs {
    /// Folder for data, logs and cluster.json.
    #[arg(long, default_value = "raftmq-local")]
    pub dir: PathBuf,
    /// Number of nodes (3 or 5).
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Client port of node 1; node N listens on this + N - 1.
    #[arg(long, default_value_t = 8081)]
    pub client_port: u16,
    /// Raft port of node 1; node N listens on this + N - 1.
    #[arg(long, default_value_t = 9091)]
    pub raft_port: u16,
    /// HTTP port (/healthz, /readyz, /metrics) of node 1; node N listens on this + N - 1.
    #[arg(long, default_value_t = 8091)]
    pub http_port: u16,
    /// `sync` (default) or `async`.
    #[arg(long, default_value = "sync")]
    pub flush: String,
    /// Start the nodes, print how to reach them, and return instead of waiting for Ctrl-C.
    #[arg(long)]
    pub detach: bool,
}

struct LocalNode {
    id: u64,
    dir: PathBuf,
    client_addr: String,
    raft_addr: String,
    http_addr: String,
    command: Vec<String>,
    child: Option<tokio::process::Child>,
}

impl LocalNode {
    fn pid_file(&self) -> PathBuf {
        self.dir.join("broker.pid")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("broker.log")
    }

    fn restart_command(&self) -> String {
        let quoted: Vec<String> = self.command.iter().map(|a| shell_quote(a)).collect();
        format!(
            "{} >> {} 2>&1 &",
            quoted.join(" "),
            shell_quote(&self.log_file().display().to_string())
        )
    }

    /// The exit status of our child process for this node if it has exited (once).
    fn reap(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    fn report_exit(&self, status: std::process::ExitStatus) {
        let cause = logged_error(&self.log_file()).map(|e| format!(": {e}"));
        println!(
            "node {} exited ({status}){}; restart it with:\n  {}",
            self.id,
            cause.unwrap_or_default(),
            self.restart_command()
        );
    }

    fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file())
            .with_context(|| format!("open {}", self.log_file().display()))?;
        let child = tokio::process::Command::new(&self.command[0])
            .args(&self.command[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start node {}", self.id))?;
        self.child = Some(child);
        Ok(())
    }
}

fn shell_quote(text: &str) -> String {
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-=:,@".contains(c))
    {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// Running, and not a zombie: a node restarted by hand is not our child, and once it exits it
/// may stay a zombie until whoever adopted it reaps it.
pub fn is_running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => kill(Pid::from_raw(pid), None).is_ok(),
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

pub async fn run(args: LocalArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.nodes >= 1 && args.nodes <= 9,
        "--nodes must be within 1..=9"
    );
    for (flag, first) in [
        ("--client-port", args.client_port),
        ("--raft-port", args.raft_port),
        ("--http-port", args.http_port),
    ] {
        anyhow::ensure!(
            first > 0 && u64::from(first) + args.nodes - 1 <= u64::from(u16::MAX),
            "{flag} {first} leaves no room for {} nodes: node N listens on {flag} + N - 1, \
             which must be within 1..=65535",
            args.nodes
        );
    }
    std::fs::create_dir_all(&args.dir).with_context(|| format!("create {}", args.dir.display()))?;
    let dir = args.dir.canonicalize()?;
    let exe = std::env::current_exe().context("find the raftmq executable")?;
    let members: Vec<String> = (1..=args.nodes)
        .map(|id| {
            format!(
                "{id}=127.0.0.{id}:{}/127.0.0.1:{}",
                args.raft_port + id as u16 - 1,
                args.client_port + id as u16 - 1
            )
        })
        .collect();
    let members = members.join(",");
    let mut nodes: Vec<LocalNode> = (1..=args.nodes)
        .map(|id| {
            let node_dir = dir.join(format!("node-{id}"));
            let command = vec![
                exe.display().to_string(),
                "broker".into(),
                "--node-id".into(),
                id.to_string(),
                "--data-dir".into(),
                node_dir.join("data").display().to_string(),
                "--members".into(),
                members.clone(),
                "--flush".into(),
                args.flush.clone(),
                "--auto-create-topics".into(),
                "true".into(),
                "--http-port".into(),
                (args.http_port + id as u16 - 1).to_string(),
                "--pid-file".into(),
                node_dir.join("broker.pid").display().to_string(),
            ];
            LocalNode {
                id,
                client_addr: format!("127.0.0.1:{}", args.client_port + id as u16 - 1),
                // Each node's Raft traffic on its own loopback address, so that a drill can
                // cut one node off from the others with a packet filter.
                raft_addr: format!("127.0.0.{id}:{}", args.raft_port + id as u16 - 1),
                http_addr: format!("127.0.0.1:{}", args.http_port + id as u16 - 1),
                dir: node_dir,
                command,
                child: None,
            }
        })
        .collect();

    for node in &nodes {
        std::fs::create_dir_all(&node.dir)?;
        if let Some(pid) = read_pid(&node.pid_file())
            && is_running(pid)
        {
            anyhow::bail!(
                "node {} seems to be running already (pid {pid} from {}); stop it first",
                node.id,
                node.pid_file().display()
            );
        }
    }
    ensure_addresses_free(&nodes)?;
    for node in &mut nodes {
        node.start()?;
    }
    write_cluster_json(&dir, &nodes)?;

    let endpoints: Vec<String> = nodes.iter().map(|n| n.client_addr.clone()).collect();
    println!(
        "raftmq local: {} nodes, data and logs under {}",
        nodes.len(),
        dir.display()
    );
    let client = Client::new(&endpoints)?;
    match wait_for_leader(&client, &nodes, Duration::from_secs(30)).await {
        Ok(Some(leader)) => println!("leader elected: node {leader}"),
        Ok(None) => println!(
            "no leader yet after 30 s; see the logs in {}",
            dir.display()
        ),
        Err(exited) => {
            stop_all(&mut nodes).await;
            return Err(exited);
        }
    }
    let endpoint_list = endpoints.join(",");
    println!(
        "\nclient endpoints: {endpoint_list}\n\
         try:\n  raftmq produce --topic demo --count 10\n  raftmq consume --topic demo --from beginning\n  raftmq admin cluster\n\
         cluster.json (pids, addresses, restart commands): {}\n",
        dir.join("cluster.json").display()
    );
    if args.detach {
        println!(
            "nodes left running; stop them with: kill $(cat {}/node-*/broker.pid)",
            dir.display()
        );
        return Ok(());
    }
    println!("press Ctrl-C to stop every node");

    let stop = super::shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                for node in &mut nodes {
                    if let Some(status) = node.reap() {
                        node.report_exit(status);
                    }
                }
            }
        }
    }
    println!("stopping every node");
    stop_all(&mut nodes).await;
    Ok(())
}

/// Every address the nodes are to listen on, tried before any node starts. A node whose port
/// is taken (most often by another `raftmq local`) would exit at once, and the leader check
/// would meanwhile have been answered by whatever holds the port.
fn ensure_addresses_free(nodes: &[LocalNode]) -> anyhow::Result<()> {
    for node in nodes {
        for (what, addr) in [
            ("client", &node.client_addr),
            ("raft", &node.raft_addr),
            ("http", &node.http_addr),
        ] {
            if let Err(error) = std::net::TcpListener::bind(addr.as_str()) {
                anyhow::bail!(
                    "node {}'s {what} address {addr} cannot be used ({error}): is another raftmq \
                     local running (`raftmq admin cluster` shows it)? Stop it, or choose other \
                     ports with --client-port, --raft-port and --http-port",
                    node.id
                );
            }
        }
    }
    Ok(())
}

/// The leader's id once one is elected; `None` after `timeout`. A node that stops on an error
/// meanwhile (its log ends with `Error: `) could not start: that is an error naming the cause.
/// A node killed from outside logs no error, and the watch after the start reports it.
async fn wait_for_leader(
    client: &Client,
    nodes: &[LocalNode],
    timeout: Duration,
) -> anyhow::Result<Option<u64>> {
    let give_up = Instant::now() + timeout;
    while Instant::now() < give_up {
        for node in nodes {
            let Some(pid) = node.child.as_ref().and_then(|child| child.id()) else {
                continue;
            };
            if !is_running(pid as i32)
                && let Some(cause) = logged_error(&node.log_file())
            {
                anyhow::bail!(
                    "node {} could not start: {cause}\n(its log: {})",
                    node.id,
                    node.log_file().display()
                );
            }
        }
        for (_, status) in client.cluster_status().await {
            if let Ok(status) = status
                && status.role == "leader"
            {
                return Ok(Some(status.node_id));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(None)
}

/// The error a broker's log ends with, if it ended with one: a broker that stops on an error
/// prints `Error: <cause>` as its last line (one killed by a signal prints nothing).
fn logged_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let last = text.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
    last.strip_prefix("Error: ").map(str::to_string)
}

fn write_cluster_json(dir: &Path, nodes: &[LocalNode]) -> anyhow::Result<()> {
    let entries: Vec<_> = nodes
        .iter()
        .map(|n| {
            json!({
                "id": n.id,
                "pid": n.child.as_ref().and_then(|c| c.id()),
                "client_addr": n.client_addr,
                "raft_addr": n.raft_addr,
                "http_addr": n.http_addr,
                "data_dir": n.dir.join("data"),
                "log": n.log_file(),
                "pid_file": n.pid_file(),
                "restart_command": n.restart_command(),
            })
        })
        .collect();
    let path = dir.join("cluster.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&json!({ "nodes": entries }))?,
    )
    .with_context(|| format!("write {}", path.display()))
}

/// SIGTERM every node (children and nodes restarted by hand), wait, then SIGKILL stragglers.
async fn stop_all(nodes: &mut [LocalNode]) {
    let mut pids = Vec::new();
    for node in nodes.iter() {
        // Both our own child and whatever the pid file names: a node restarted by hand
        // replaces the pid file while our child handle may still name the dead process.
        let child = node.child.as_ref().and_then(|c| c.id()).map(|p| p as i32);
        let from_file = read_pid(&node.pid_file());
        for pid in [child, from_file].into_iter().flatten() {
            if !pids.contains(&pid) && is_running(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                pids.push(pid);
            }
        }
    }
    let give_up = Instant::now() + Duration::from_secs(10);
    for node in nodes.iter_mut() {
        if let Some(child) = node.child.as_mut() {
            let _ = tokio::time::timeout(
                give_up.saturating_duration_since(Instant::now()),
                child.wait(),
            )
            .await;
        }
    }
    while Instant::now() < give_up && pids.iter().any(|p| is_running(*p)) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for pid in pids {
        if is_running(pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    for node in nodes.iter() {
        let _ = std::fs::remove_file(node.pid_file());
    }
}
