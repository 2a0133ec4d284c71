//! Each broker in its own network namespace, joined by a bridge, so that the links between
//! particular nodes can be cut, made lossy or slow while the clients (in the host's
//! namespace, reaching every node through the bridge) keep their view.
//!
//! Faults are packet filters inside the sending node's namespace: `cut(a, b)` drops what `a`
//! sends to `b` (one way); a partition is cuts in both directions. Established connections
//! are affected as well as new ones. Everything is removed again on drop. Needs root.

use std::process::Command;

use anyhow::{Context, bail};

/// Ports every node uses on its own address (the addresses differ, so the ports can be equal).
pub const RAFT_PORT: u16 = 9000;
pub const CLIENT_PORT: u16 = 8081;
pub const HTTP_PORT: u16 = 8080;

pub struct Network {
    /// Unique per network: names of namespaces and links start with it.
    tag: String,
    bridge: String,
    /// The first three octets of the /24 the nodes live in.
    prefix: String,
    nodes: Vec<u64>,
    /// Whether this kernel has the netem queueing discipline (delay); many containers lack it.
    has_netem: bool,
}

/// Run one command; its failure is a harness error that names the command.
pub(crate) fn run(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("harness: could not run `{}`", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "harness: `{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn output(args: &[&str]) -> String {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

impl Network {
    /// Namespaces for `nodes` (ids ≥ 1) on a fresh bridge and /24.
    pub fn create(nodes: &[u64]) -> anyhow::Result<Network> {
        if !nix::unistd::Uid::effective().is_root() {
            bail!("harness: network namespaces need root (run as root, as CI does)");
        }
        remove_stale();
        let pid = std::process::id();
        let (tag, prefix) = free_subnet(pid)?;
        let bridge = format!("{tag}br");
        let mut network = Network {
            bridge: bridge.clone(),
            tag,
            prefix,
            nodes: Vec::new(),
            has_netem: false,
        };
        run(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        run(&["ip", "link", "set", &bridge, "up"])?;
        let host = format!("{}.254/24", network.prefix);
        run(&["ip", "addr", "add", &host, "dev", &bridge])?;
        // Docker sets the host's FORWARD policy to DROP, and bridged packets pass through it
        // when br_netfilter is loaded: let traffic between the nodes through.
        run(&[
            "iptables", "-I", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT",
        ])?;
        for &id in nodes {
            network.add_node(id)?;
        }
        network.has_netem = network.probe_netem();
        Ok(network)
    }

    pub fn namespace(&self, id: u64) -> String {
        format!("{}-n{id}", self.tag)
    }

    pub fn ip(&self, id: u64) -> String {
        format!("{}.{id}", self.prefix)
    }

    pub fn has_netem(&self) -> bool {
        self.has_netem
    }

    /// A namespace with a veth into the bridge and the address `<prefix>.<id>`.
    pub fn add_node(&mut self, id: u64) -> anyhow::Result<()> {
        if !(1..=250).contains(&id) {
            bail!("harness: node id {id} does not fit in a /24");
        }
        let ns = self.namespace(id);
        let host_end = format!("{}v{id}", self.tag);
        run(&["ip", "netns", "add", &ns])?;
        run(&[
            "ip", "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        run(&["ip", "link", "set", &host_end, "master", &self.bridge, "up"])?;
        let addr = format!("{}/24", self.ip(id));
        run(&["ip", "-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
        run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        self.nodes.push(id);
        Ok(())
    }

    /// The command prefix that runs a program inside node `id`'s namespace.
    pub fn exec_prefix(&self, id: u64) -> [String; 4] {
        [
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.namespace(id),
        ]
    }

    fn iptables(&self, id: u64, rule: &[&str]) -> anyhow::Result<()> {
        let ns = self.namespace(id);
        let mut args = vec!["ip", "netns", "exec", &ns, "iptables"];
        args.extend_from_slice(rule);
        run(&args)
    }

    /// Drop everything `from` sends to `to` (one way).
    pub fn cut(&self, from: u64, to: u64) -> anyhow::Result<()> {
        let to_ip = self.ip(to);
        self.iptables(from, &["-A", "OUTPUT", "-d", &to_ip, "-j", "DROP"])
    }

    /// No packet crosses between the two sides, in either direction.
    pub fn partition(&self, side_a: &[u64], side_b: &[u64]) -> anyhow::Result<()> {
        for &a in side_a {
            for &b in side_b {
                self.cut(a, b)?;
                self.cut(b, a)?;
            }
        }
        Ok(())
    }

    /// Lose `percent` of the packets node `id` sends to and receives from the other nodes.
    pub fn lossy(&self, id: u64, percent: u32) -> anyhow::Result<()> {
        let probability = format!("{:.2}", f64::from(percent) / 100.0);
        let subnet = format!("{}.0/24", self.prefix);
        for (chain, dir) in [("OUTPUT", "-d"), ("INPUT", "-s")] {
            self.iptables(
                id,
                &[
                    "-A",
                    chain,
                    dir,
                    &subnet,
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &probability,
                    "-j",
                    "DROP",
                ],
            )?;
        }
        Ok(())
    }

    /// Make node `id`'s outgoing link slow: `delay_ms` of added latency with netem where the
    /// kernel has it, otherwise a token bucket at `kbit` kbit/s (queueing delay under load).
    /// Returns what was installed.
    pub fn slow(&self, id: u64, delay_ms: u32, kbit: u32) -> anyhow::Result<String> {
        let ns = self.namespace(id);
        if self.has_netem {
            let delay = format!("{delay_ms}ms");
            let jitter = format!("{}ms", delay_ms / 4);
            run(&[
                "ip", "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "eth0", "root", "netem",
                "delay", &delay, &jitter,
            ])?;
            Ok(format!("netem delay {delay} ± {jitter}"))
        } else {
            let rate = format!("{kbit}kbit");
            run(&[
                "ip", "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf",
                "rate", &rate, "burst", "16kbit", "latency", "400ms",
            ])?;
            Ok(format!("tbf rate {rate} (no netem in this kernel)"))
        }
    }

    /// Remove every filter and queueing discipline: all links work again.
    pub fn heal(&self) -> anyhow::Result<()> {
        for &id in &self.nodes {
            self.iptables(id, &["-F", "OUTPUT"])?;
            self.iptables(id, &["-F", "INPUT"])?;
            let ns = self.namespace(id);
            // Fails harmlessly when no qdisc was added.
            let _ = run(&[
                "ip", "netns", "exec", &ns, "tc", "qdisc", "del", "dev", "eth0", "root",
            ]);
        }
        Ok(())
    }

    fn probe_netem(&self) -> bool {
        let Some(&id) = self.nodes.first() else {
            return false;
        };
        let ns = self.namespace(id);
        let added = run(&[
            "ip", "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "eth0", "root", "netem",
            "delay", "1ms",
        ])
        .is_ok();
        if added {
            let _ = run(&[
                "ip", "netns", "exec", &ns, "tc", "qdisc", "del", "dev", "eth0", "root",
            ]);
        }
        added
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for &id in &self.nodes {
            // Deleting the namespace deletes its end of the veth, and with it the pair.
            let _ = run(&["ip", "netns", "del", &self.namespace(id)]);
        }
        let _ = run(&[
            "iptables",
            "-D",
            "FORWARD",
            "-i",
            &self.bridge,
            "-o",
            &self.bridge,
            "-j",
            "ACCEPT",
        ]);
        let _ = run(&["ip", "link", "del", &self.bridge]);
    }
}

/// A tag `rq<pid hex><n>` and a /24 under 10.0.0.0/8 that no interface of the host uses.
fn free_subnet(pid: u32) -> anyhow::Result<(String, String)> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let routes = output(&["ip", "-o", "-4", "addr"]);
    for _ in 0..200 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("rq{pid:x}x{n}");
        let mix = pid
            .wrapping_mul(2_654_435_761)
            .wrapping_add(n.wrapping_mul(40_503));
        let prefix = format!("10.{}.{}", 180 + (mix >> 8) % 60, mix & 0xff);
        let links = output(&["ip", "-o", "link"]);
        if !routes.contains(&format!(" {prefix}.")) && !links.contains(&format!("{tag}br")) {
            return Ok((tag, prefix));
        }
    }
    bail!("harness: found no free 10.x.y.0/24 for the test network")
}

/// Remove namespaces and bridges left by a harness process that no longer runs (killed
/// before its drop could clean up), so that they cannot collide with this run.
fn remove_stale() {
    let alive = |tag: &str| -> bool {
        let hex = tag.trim_start_matches("rq").split('x').next().unwrap_or("");
        u32::from_str_radix(hex, 16)
            .map(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
            .unwrap_or(true)
    };
    for line in output(&["ip", "netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if let Some((tag, _)) = name.split_once("-n")
            && tag.starts_with("rq")
            && !alive(tag)
        {
            let _ = run(&["ip", "netns", "del", name]);
        }
    }
    for line in output(&["ip", "-o", "link", "show", "type", "bridge"]).lines() {
        let name = line.split(':').nth(1).unwrap_or("").trim();
        if let Some(tag) = name.strip_suffix("br")
            && tag.starts_with("rq")
            && !alive(tag)
        {
            let _ = run(&[
                "iptables", "-D", "FORWARD", "-i", name, "-o", name, "-j", "ACCEPT",
            ]);
            let _ = run(&["ip", "link", "del", name]);
        }
    }
}
