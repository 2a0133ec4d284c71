//! `raftmq local`, the newcomer's command: three processes, cluster.json with working restart
//! commands, and a clean stop of every node on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chaos_tests::cluster::raftmq_binary;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use raftmq::client::{Client, message};

/// Running, and not a zombie waiting for a parent that is gone to reap it.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn pids(dir: &std::path::Path) -> Vec<i32> {
    (1..=3)
        .filter_map(|n| std::fs::read_to_string(dir.join(format!("node-{n}/broker.pid"))).ok())
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

/// Kills `raftmq local` and every node it lists when a test ends early. A node restarted by
/// hand is not `local`'s child, and a dropped `Child` is not killed: without this, a failed
/// run left a group on the test's ports, and the next run failed on them.
struct StopOnDrop<'a> {
    local: std::process::Child,
    dir: &'a std::path::Path,
}

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.local.kill();
        let _ = self.local.wait();
        for pid in pids(self.dir) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_cluster_survives_a_kill_and_stops_cleanly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Ports away from the defaults so a developer's own local cluster does not collide, and
    // below Linux's ephemeral range (32768-60999): an outgoing connection of another test can
    // hold any port in that range, and did ("Address already in use").
    let (client_port, raft_port) = (28081u16, 29091u16);
    let mut local = StopOnDrop {
        local: Command::new(raftmq_binary()?)
            .args(["local", "--dir"])
            .arg(dir.path())
            .args([
                "--client-port",
                &client_port.to_string(),
                "--raft-port",
                &raft_port.to_string(),
                "--http-port",
                "28091",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
        dir: dir.path(),
    };
    let endpoints: Vec<String> = (0..3)
        .map(|i| format!("127.0.0.1:{}", client_port + i))
        .collect();
    let client = Client::new(&endpoints)?;

    let give_up = Instant::now() + Duration::from_secs(30);
    let cluster_json = dir.path().join("cluster.json");
    while !(cluster_json.exists() && pids(dir.path()).len() == 3) {
        anyhow::ensure!(
            Instant::now() < give_up,
            "raftmq local did not write cluster.json and pid files"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut sent = 0;
    while client
        .send(vec![message("local-demo", b"first".to_vec(), None, &[])])
        .await
        .is_err()
    {
        anyhow::ensure!(
            Instant::now() < give_up,
            "the local cluster never accepted a send"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sent += 1;

    // Kill node 2 the hard way and bring it back with the command from cluster.json.
    let nodes: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cluster_json)?)?;
    let node2 = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == 2)
        .unwrap()
        .clone();
    let pid2: i32 = std::fs::read_to_string(dir.path().join("node-2/broker.pid"))?
        .trim()
        .parse()?;
    kill(Pid::from_raw(pid2), Signal::SIGKILL)?;
    for _ in 0..5 {
        client
            .send(vec![message(
                "local-demo",
                b"while node 2 is down".to_vec(),
                None,
                &[],
            )])
            .await?;
        sent += 1;
    }
    let restart = node2["restart_command"].as_str().unwrap();
    let status = Command::new("sh").arg("-c").arg(restart).status()?;
    anyhow::ensure!(status.success(), "restart command failed: {restart}");

    // Node 2 catches up and serves every message from its own state.
    let node2_client = Client::new(&[endpoints[1].clone()])?;
    loop {
        let stored = chaos_tests::history::read_topic(&node2_client, "local-demo", 8).await;
        if stored.as_ref().is_ok_and(|s| s.len() == sent) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < give_up,
            "node 2 did not catch up: {stored:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // SIGTERM to `raftmq local` stops every node, the restarted one included.
    let running = pids(dir.path());
    assert_eq!(running.len(), 3);
    kill(Pid::from_raw(local.local.id() as i32), Signal::SIGTERM)?;
    let exit = tokio::task::block_in_place(|| local.local.wait())?;
    assert!(exit.success(), "raftmq local exited with {exit}");
    let stop_deadline = Instant::now() + Duration::from_secs(15);
    while running.iter().any(|p| alive(*p)) {
        // The restarted node is not our child: it is gone once kill(pid, 0) fails.
        anyhow::ensure!(
            Instant::now() < stop_deadline,
            "nodes still running after raftmq local stopped: {running:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// A bad flag is reported in one line that names it, with exit code 1, also when
/// RUST_BACKTRACE is set (as it often is where Rust programs run), and the broker writes
/// nothing to its data dir.
#[test]
fn a_config_error_is_one_clear_line_without_a_backtrace() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    let output = Command::new(raftmq_binary()?)
        .args(["broker", "--node-id", "1", "--data-dir"])
        .arg(&data_dir)
        .args(["--members", "1=127.0.0.1:19091"])
        .env("RUST_BACKTRACE", "1")
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "Error: members: `1=127.0.0.1:19091` is not ID=RAFT_HOST:PORT/CLIENT_HOST:PORT",
        "the whole of stderr"
    );
    assert!(!data_dir.exists(), "a refused config created {data_dir:?}");
    Ok(())
}

/// A topic asked for with no queues, or more than a broker allows, is refused by the command
/// line itself, before any call: it never becomes the broker's default number.
#[test]
fn a_topic_with_an_impossible_number_of_queues_is_refused_before_any_call() -> anyhow::Result<()> {
    for queues in ["0", "1025"] {
        let output = Command::new(raftmq_binary()?)
            .args(["admin", "topic", "create", "orders", "--queues", queues])
            // Nothing listens here: a call would fail with a connection error instead.
            .args(["--endpoints", "127.0.0.1:9"])
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "--queues {queues}: {stderr}");
        assert!(
            stderr.contains(&format!("invalid value '{queues}' for '--queues <QUEUES>'"))
                && stderr.contains("1..=1024"),
            "--queues {queues}: {stderr}"
        );
    }
    Ok(())
}

/// A port already taken (here node 2's Raft address) stops `raftmq local` before any node
/// starts, with the address and the flags that move the ports.
#[test]
fn a_taken_port_is_named_before_any_node_starts() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (client_port, raft_port, http_port) = (26181u16, 27191u16, 26191u16);
    let _taken = std::net::TcpListener::bind(("127.0.0.2", raft_port + 1))?;
    let output = Command::new(raftmq_binary()?)
        .args(["local", "--dir"])
        .arg(dir.path())
        .args(["--client-port", &client_port.to_string()])
        .args(["--raft-port", &raft_port.to_string()])
        .args(["--http-port", &http_port.to_string()])
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "node 2's raft address 127.0.0.2:{} cannot be used",
            raft_port + 1
        )) && stderr.contains("--raft-port"),
        "{stderr}"
    );
    assert!(pids(dir.path()).is_empty(), "a node was started");
    Ok(())
}

/// A node that cannot start (its data path is a file) makes `raftmq local` fail with that
/// node's own error, and stop the nodes that did start.
#[test]
fn a_node_that_fails_to_start_is_reported_and_the_others_are_stopped() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("node-2"))?;
    std::fs::write(dir.path().join("node-2/data"), "not a folder")?;
    let output = Command::new(raftmq_binary()?)
        .args(["local", "--dir"])
        .arg(dir.path())
        .args([
            "--client-port",
            "26281",
            "--raft-port",
            "27291",
            "--http-port",
            "26291",
        ])
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("node 2 could not start")
            && stderr.contains("create data dir")
            && stderr.contains("node-2/broker.log"),
        "{stderr}"
    );
    // Stopped, not left behind: their pid files go with them.
    assert!(pids(dir.path()).is_empty(), "nodes left running");
    Ok(())
}
