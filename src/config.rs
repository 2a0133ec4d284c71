//! Broker configuration.
//!
//! Precedence, lowest first: built-in defaults, the TOML file (`--config`), `RAFTMQ_*`
//! environment variables, command-line flags. Environment variables and flags share names:
//! `--default-queues` is `RAFTMQ_DEFAULT_QUEUES`. `deploy/raftmq.toml` is a commented sample.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use raftmq_proto::raft::v1 as pb;
use raftmq_storage::FlushMode;
use serde::Deserialize;

/// Largest body accepted by default, as in RocketMQ (`maxMessageSize`).
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Longest delay of a delay message (RocketMQ 5 timer default: 3 days).
pub const DEFAULT_MAX_DELAY_SECS: u64 = 3 * 24 * 3600;
/// Free space a node's data dir keeps before it counts as full: room for what is in flight when
/// the mark is crossed, consumer progress, and RocksDB's memtable flushes (64 MiB each).
pub const DEFAULT_MIN_FREE_DISK_MB: u64 = 512;
/// Bytes of sends a node holds at once (queued or being committed) by default: far above what
/// a healthy group has in flight, far below the memory of a Kubernetes pod of the sample.
pub const DEFAULT_MAX_PENDING_SEND_MB: usize = 256;
/// Hard cap on that budget (a few GiB is already more than one node should hold).
pub const MAX_PENDING_SEND_MB_CAP: usize = 64 * 1024;
/// RocksDB's block cache and memtables together, by default.
pub const DEFAULT_STORAGE_MEMORY_MB: usize = raftmq_storage::db::DEFAULT_MEMORY_BYTES >> 20;
/// Below 64 MiB the memtables' half would flush the log every few MiB.
pub const STORAGE_MEMORY_MB_RANGE: std::ops::RangeInclusive<usize> = 64..=1024 * 1024;
/// Hard cap on the configurable body limit: gRPC frames above this are refused anyway.
pub const MAX_BODY_BYTES_CAP: usize = 128 * 1024 * 1024;
pub const DEFAULT_QUEUES: u32 = 8;
/// A catch-up limit above a TiB a second is a typo.
pub const MAX_CATCHUP_MB_PER_SEC: u64 = 1 << 20;
pub const DEFAULT_HTTP_PORT: u16 = 8080;
/// Out of touch with a majority this long, a node stops serving clients: past the longest
/// election after a leader stops answering (lease plus election timeout, 600 ms by default).
pub const DEFAULT_CUT_OFF_AFTER_MS: u64 = 1000;
/// More queues than this per topic is almost certainly a typo.
pub const MAX_QUEUES: u32 = 1024;

/// `raftmq broker` flags; every one may also come from the environment.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BrokerArgs {
    /// TOML configuration file.
    #[arg(long, env = "RAFTMQ_CONFIG")]
    pub config: Option<PathBuf>,
    /// `text` (default) or `json`: one JSON object per line, for log collectors. The level
    /// comes from `RUST_LOG` and can be changed at runtime: `PUT /loglevel` on the HTTP port.
    #[arg(long, env = "RAFTMQ_LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: crate::logging::LogFormat,
    /// This node's id within its group. Default: the ordinal at the end of the host name
    /// (`raftmq-2` → 2), as in a Kubernetes StatefulSet.
    #[arg(long, env = "RAFTMQ_NODE_ID")]
    pub node_id: Option<u64>,
    /// Broker group name, reported in routes (default `broker-a`).
    #[arg(long, env = "RAFTMQ_GROUP")]
    pub group: Option<String>,
    /// Data directory (default `./data`).
    #[arg(long, env = "RAFTMQ_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Every voter of the group: `ID=RAFT_HOST:PORT/CLIENT_HOST:PORT`, comma-separated.
    #[arg(long, env = "RAFTMQ_MEMBERS")]
    pub members: Option<String>,
    /// Listen on this host instead of the host in this node's member entry (e.g. `0.0.0.0`).
    #[arg(long, env = "RAFTMQ_BIND_HOST")]
    pub bind_host: Option<String>,
    /// `sync` (default): fsync before an entry counts as stored. `async`: may lose
    /// acknowledged messages if a majority loses power together.
    #[arg(long, env = "RAFTMQ_FLUSH")]
    pub flush: Option<FlushMode>,
    /// Create unknown topics on first use (default false).
    #[arg(long, env = "RAFTMQ_AUTO_CREATE_TOPICS")]
    pub auto_create_topics: Option<bool>,
    /// Queues of an auto-created topic, and the default of `admin topic create` (default 8).
    #[arg(long, env = "RAFTMQ_DEFAULT_QUEUES")]
    pub default_queues: Option<u32>,
    /// Largest message body accepted, in bytes (default 4 MiB).
    #[arg(long, env = "RAFTMQ_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Longest delay of a delay message, in seconds (default 3 days).
    #[arg(long, env = "RAFTMQ_MAX_DELAY_SECS")]
    pub max_delay_secs: Option<u64>,
    /// How long a push consumer's message stays invisible between the broker's renewals; a
    /// message of a consumer that died comes back this long after its last renewal (default 60).
    #[arg(long, env = "RAFTMQ_PUSH_INVISIBLE_SECS")]
    pub push_invisible_secs: Option<u64>,
    /// First check-back of an unresolved transaction, in seconds after its send (default 6).
    #[arg(long, env = "RAFTMQ_TRANSACTION_CHECK_AFTER_SECS")]
    pub transaction_check_after_secs: Option<u64>,
    /// Seconds between two check-backs of the same transaction (default 30).
    #[arg(long, env = "RAFTMQ_TRANSACTION_CHECK_INTERVAL_SECS")]
    pub transaction_check_interval_secs: Option<u64>,
    /// Check-backs before an unresolved transaction is rolled back (default 15).
    #[arg(long, env = "RAFTMQ_TRANSACTION_MAX_CHECKS")]
    pub transaction_max_checks: Option<u32>,
    /// HTTP port for /healthz, /readyz and /metrics (default 8080; 0 turns it off). It
    /// listens on the bind host, or on the host of this node's client address.
    #[arg(long, env = "RAFTMQ_HTTP_PORT")]
    pub http_port: Option<u16>,
    /// A node that should lead whenever it is up and caught up: the leader hands leadership
    /// to it (for example the node nearest the clients). Default: none.
    #[arg(long, env = "RAFTMQ_PREFERRED_LEADER")]
    pub preferred_leader: Option<u64>,
    /// Raft heartbeat interval in ms (default 50).
    #[arg(long, env = "RAFTMQ_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Lower bound of the randomized election timeout in ms (default 150).
    #[arg(long, env = "RAFTMQ_ELECTION_TIMEOUT_MIN_MS")]
    pub election_timeout_min_ms: Option<u64>,
    /// Upper bound of the randomized election timeout in ms (default 300).
    #[arg(long, env = "RAFTMQ_ELECTION_TIMEOUT_MAX_MS")]
    pub election_timeout_max_ms: Option<u64>,
    /// High-water mark of disk use, as the free MiB the data dir's filesystem must keep
    /// (default 512; 0 turns it off). Below it the node counts as full: the group refuses new
    /// messages (TOO_MANY_REQUESTS) once fewer than a majority of nodes have room, and a
    /// leader with a low disk hands leadership to a node with room.
    #[arg(long, env = "RAFTMQ_MIN_FREE_DISK_MB")]
    pub min_free_disk_mb: Option<u64>,
    /// Most MiB of messages a node holds at once from sends not yet answered (queued, or being
    /// committed). Past it, new sends are refused with TOO_MANY_REQUESTS ("broker busy") until
    /// earlier ones are done (default 256; at least max_body_bytes).
    #[arg(long, env = "RAFTMQ_MAX_PENDING_SEND_MB")]
    pub max_pending_send_mb: Option<usize>,
    /// MiB of memory RocksDB may use for its block cache and memtables together: one cache
    /// for every column family, holding the files' index and filter blocks too, with the
    /// memtables charged to it (default 512; 64..=1048576).
    #[arg(long, env = "RAFTMQ_STORAGE_MEMORY_MB")]
    pub storage_memory_mb: Option<usize>,
    /// MiB per second this node, as leader, sends to followers catching up (entries at least
    /// 1,000 below the commit index: a follower back from a long absence or with an empty
    /// disk), all of them together. Live replication is never limited. Keep it above the
    /// group's write rate or a follower that falls behind never catches up (default 0: no
    /// limit).
    #[arg(long, env = "RAFTMQ_CATCHUP_MB_PER_SEC")]
    pub catchup_mb_per_sec: Option<u64>,
    /// A node that has been out of touch with a majority of its group for this many ms (no
    /// heartbeat from a leader, too few peers answering) closes its client connections and
    /// refuses new ones until it is back, so that clients move to a node that can serve them
    /// (default 1000; 0 turns it off; else at least twice election_timeout_max_ms).
    #[arg(long, env = "RAFTMQ_CUT_OFF_AFTER_MS")]
    pub cut_off_after_ms: Option<u64>,
}

/// The TOML file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerFile {
    pub node_id: Option<u64>,
    pub group: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub bind_host: Option<String>,
    pub flush: Option<String>,
    pub auto_create_topics: Option<bool>,
    pub default_queues: Option<u32>,
    pub max_body_bytes: Option<usize>,
    pub max_delay_secs: Option<u64>,
    pub push_invisible_secs: Option<u64>,
    pub transaction_check_after_secs: Option<u64>,
    pub transaction_check_interval_secs: Option<u64>,
    pub transaction_max_checks: Option<u32>,
    pub http_port: Option<u16>,
    pub preferred_leader: Option<u64>,
    pub heartbeat_ms: Option<u64>,
    pub election_timeout_min_ms: Option<u64>,
    pub election_timeout_max_ms: Option<u64>,
    pub min_free_disk_mb: Option<u64>,
    pub max_pending_send_mb: Option<usize>,
    pub storage_memory_mb: Option<usize>,
    pub catchup_mb_per_sec: Option<u64>,
    pub cut_off_after_ms: Option<u64>,
    pub members: Vec<MemberFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberFile {
    pub id: u64,
    pub raft_addr: String,
    pub client_addr: String,
}

/// The validated configuration a broker runs with.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub node_id: u64,
    pub group: String,
    pub data_dir: PathBuf,
    pub members: BTreeMap<u64, pb::Node>,
    pub bind_host: Option<String>,
    pub flush: FlushMode,
    pub auto_create_topics: bool,
    pub default_queues: u32,
    pub max_body_bytes: usize,
    pub max_delay: Duration,
    pub push_invisible: Duration,
    pub transaction_check_after: Duration,
    pub transaction_check_interval: Duration,
    pub transaction_max_checks: u32,
    /// 0: no HTTP port.
    pub http_port: u16,
    pub preferred_leader: Option<u64>,
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Free bytes the data dir's filesystem must keep (0: no mark).
    pub min_free_disk: u64,
    /// Most bytes of messages held at once from unanswered sends.
    pub max_pending_send_bytes: usize,
    /// RocksDB's block cache and memtables together, in bytes.
    pub storage_memory_bytes: usize,
    /// Bytes a second of catch-up replication this node sends as leader (0: no limit).
    pub catchup_bytes_per_sec: u64,
    /// Out of touch with a majority this long, the node stops serving clients (zero: never).
    pub cut_off_after: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parse config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

impl BrokerArgs {
    /// Merge flags and environment over the file and the defaults, then validate.
    pub fn resolve(self) -> Result<BrokerConfig, ConfigError> {
        let file = match &self.config {
            None => BrokerFile::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.clone(),
                    message: e.to_string(),
                })?
            }
        };
        let members = match self.members {
            Some(text) => parse_members(&text)?,
            None => file
                .members
                .iter()
                .map(|m| {
                    (
                        m.id,
                        pb::Node {
                            raft_addr: m.raft_addr.clone(),
                            client_addr: m.client_addr.clone(),
                        },
                    )
                })
                .collect(),
        };
        let flush = match (self.flush, file.flush) {
            (Some(flush), _) => flush,
            (None, Some(text)) => text.parse().map_err(|e: String| invalid("flush", e))?,
            (None, None) => FlushMode::Sync,
        };
        let node_id = match self.node_id.or(file.node_id) {
            Some(id) => id,
            None => node_id_from_hostname().ok_or_else(|| {
                invalid(
                    "node_id",
                    "not set, and the host name does not end in `-<number>`",
                )
            })?,
        };
        let config = BrokerConfig {
            node_id,
            group: self
                .group
                .or(file.group)
                .unwrap_or_else(|| "broker-a".into()),
            data_dir: self
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| "data".into()),
            members,
            bind_host: self.bind_host.or(file.bind_host),
            flush,
            auto_create_topics: self
                .auto_create_topics
                .or(file.auto_create_topics)
                .unwrap_or(false),
            default_queues: self
                .default_queues
                .or(file.default_queues)
                .unwrap_or(DEFAULT_QUEUES),
            max_body_bytes: self
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(DEFAULT_MAX_BODY_BYTES),
            max_delay: Duration::from_secs(
                self.max_delay_secs
                    .or(file.max_delay_secs)
                    .unwrap_or(DEFAULT_MAX_DELAY_SECS),
            ),
            push_invisible: Duration::from_secs(
                self.push_invisible_secs
                    .or(file.push_invisible_secs)
                    .unwrap_or(60),
            ),
            transaction_check_after: Duration::from_secs(
                self.transaction_check_after_secs
                    .or(file.transaction_check_after_secs)
                    .unwrap_or(6),
            ),
            transaction_check_interval: Duration::from_secs(
                self.transaction_check_interval_secs
                    .or(file.transaction_check_interval_secs)
                    .unwrap_or(30),
            ),
            transaction_max_checks: self
                .transaction_max_checks
                .or(file.transaction_max_checks)
                .unwrap_or(15),
            http_port: self
                .http_port
                .or(file.http_port)
                .unwrap_or(DEFAULT_HTTP_PORT),
            preferred_leader: self.preferred_leader.or(file.preferred_leader),
            heartbeat_interval: Duration::from_millis(
                self.heartbeat_ms.or(file.heartbeat_ms).unwrap_or(50),
            ),
            election_timeout_min: Duration::from_millis(
                self.election_timeout_min_ms
                    .or(file.election_timeout_min_ms)
                    .unwrap_or(150),
            ),
            election_timeout_max: Duration::from_millis(
                self.election_timeout_max_ms
                    .or(file.election_timeout_max_ms)
                    .unwrap_or(300),
            ),
            min_free_disk: self
                .min_free_disk_mb
                .or(file.min_free_disk_mb)
                .unwrap_or(DEFAULT_MIN_FREE_DISK_MB)
                .checked_mul(1 << 20)
                .ok_or_else(|| invalid("min_free_disk_mb", "too large"))?,
            max_pending_send_bytes: {
                let mb = self
                    .max_pending_send_mb
                    .or(file.max_pending_send_mb)
                    .unwrap_or(DEFAULT_MAX_PENDING_SEND_MB);
                if mb == 0 || mb > MAX_PENDING_SEND_MB_CAP {
                    return Err(invalid(
                        "max_pending_send_mb",
                        format!("must be within 1..={MAX_PENDING_SEND_MB_CAP}"),
                    ));
                }
                mb << 20
            },
            storage_memory_bytes: {
                let mb = self
                    .storage_memory_mb
                    .or(file.storage_memory_mb)
                    .unwrap_or(DEFAULT_STORAGE_MEMORY_MB);
                if !STORAGE_MEMORY_MB_RANGE.contains(&mb) {
                    return Err(invalid(
                        "storage_memory_mb",
                        format!(
                            "must be within {}..={}",
                            STORAGE_MEMORY_MB_RANGE.start(),
                            STORAGE_MEMORY_MB_RANGE.end()
                        ),
                    ));
                }
                mb << 20
            },
            catchup_bytes_per_sec: {
                let mb = self
                    .catchup_mb_per_sec
                    .or(file.catchup_mb_per_sec)
                    .unwrap_or(0);
                if mb > MAX_CATCHUP_MB_PER_SEC {
                    return Err(invalid(
                        "catchup_mb_per_sec",
                        format!("must be within 0..={MAX_CATCHUP_MB_PER_SEC} (0: no limit)"),
                    ));
                }
                mb << 20
            },
            cut_off_after: Duration::from_millis(
                self.cut_off_after_ms
                    .or(file.cut_off_after_ms)
                    .unwrap_or(DEFAULT_CUT_OFF_AFTER_MS),
            ),
        };
        config.validate()
    }
}

impl BrokerConfig {
    fn validate(self) -> Result<BrokerConfig, ConfigError> {
        if self.members.is_empty() {
            return Err(invalid(
                "members",
                "no members configured (set --members or [[members]])",
            ));
        }
        if !self.members.contains_key(&self.node_id) {
            return Err(invalid(
                "node_id",
                format!(
                    "{} is not among the members {:?}",
                    self.node_id,
                    self.members.keys().collect::<Vec<_>>()
                ),
            ));
        }
        if self.members.len().is_multiple_of(2) {
            tracing::warn!(
                members = self.members.len(),
                "an even number of members tolerates no more failures than one fewer"
            );
        }
        if self.default_queues == 0 || self.default_queues > MAX_QUEUES {
            return Err(invalid(
                "default_queues",
                format!("must be within 1..={MAX_QUEUES}"),
            ));
        }
        if self.max_body_bytes == 0 || self.max_body_bytes > MAX_BODY_BYTES_CAP {
            return Err(invalid(
                "max_body_bytes",
                format!("must be within 1..={MAX_BODY_BYTES_CAP}"),
            ));
        }
        if self.max_pending_send_bytes < self.max_body_bytes {
            return Err(invalid(
                "max_pending_send_mb",
                format!(
                    "{} MiB would refuse every message near max_body_bytes ({} bytes): make it at \
                     least that large",
                    self.max_pending_send_bytes >> 20,
                    self.max_body_bytes
                ),
            ));
        }
        if self.push_invisible < Duration::from_secs(1) {
            return Err(invalid("push_invisible_secs", "must be at least 1"));
        }
        if self.transaction_check_interval.is_zero() {
            return Err(invalid("transaction_check_interval_secs", "must be > 0"));
        }
        if self.heartbeat_interval.is_zero()
            || self.heartbeat_interval * 3 > self.election_timeout_min
        {
            return Err(invalid(
                "heartbeat_ms",
                "must be > 0 and at most a third of election_timeout_min_ms",
            ));
        }
        if self.election_timeout_min >= self.election_timeout_max {
            return Err(invalid(
                "election_timeout_min_ms",
                "must be < election_timeout_max_ms",
            ));
        }
        // A follower of a leader that stopped answering may go that long without contact
        // before its own votes are answered: it must not count as cut off meanwhile.
        if !self.cut_off_after.is_zero() && self.cut_off_after < self.election_timeout_max * 2 {
            return Err(invalid(
                "cut_off_after_ms",
                "must be 0 (off) or at least twice election_timeout_max_ms",
            ));
        }
        Ok(self)
    }

    pub fn me(&self) -> &pb::Node {
        self.members
            .get(&self.node_id)
            .expect("validated: node_id is a member")
    }

    /// Where to listen for `addr` (a member address of this node), honouring `bind_host`.
    pub fn listen_addr(&self, addr: &str) -> Result<std::net::SocketAddr, ConfigError> {
        let port = addr
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse::<u16>().ok())
            .ok_or_else(|| invalid("members", format!("`{addr}` has no valid port")))?;
        let host = match &self.bind_host {
            Some(host) => host.clone(),
            None => addr
                .rsplit_once(':')
                .map(|(host, _)| host.to_string())
                .unwrap_or_default(),
        };
        use std::net::ToSocketAddrs;
        (host.as_str(), port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| invalid("members", format!("cannot resolve `{host}:{port}`")))
    }
}

/// Parse `ID=RAFT_ADDR/CLIENT_ADDR,...`.
pub fn parse_members(text: &str) -> Result<BTreeMap<u64, pb::Node>, ConfigError> {
    let mut members = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || {
            invalid(
                "members",
                format!("`{part}` is not ID=RAFT_HOST:PORT/CLIENT_HOST:PORT"),
            )
        };
        let (id, addrs) = part.split_once('=').ok_or_else(bad)?;
        let id: u64 = id.trim().parse().map_err(|_| bad())?;
        let (raft_addr, client_addr) = addrs.split_once('/').ok_or_else(bad)?;
        for addr in [raft_addr, client_addr] {
            if addr
                .rsplit_once(':')
                .and_then(|(h, p)| (!h.is_empty()).then(|| p.parse::<u16>().ok()))
                .flatten()
                .is_none()
            {
                return Err(bad());
            }
        }
        let node = pb::Node {
            raft_addr: raft_addr.trim().to_string(),
            client_addr: client_addr.trim().to_string(),
        };
        if members.insert(id, node).is_some() {
            return Err(invalid("members", format!("node id {id} listed twice")));
        }
    }
    Ok(members)
}

fn node_id_from_hostname() -> Option<u64> {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())?;
    host.trim().rsplit_once('-')?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(members: &str) -> BrokerArgs {
        BrokerArgs {
            node_id: Some(1),
            members: Some(members.into()),
            ..Default::default()
        }
    }

    #[test]
    fn members_parse_and_defaults_apply() {
        let config = args("1=127.0.0.1:9091/127.0.0.1:8081, 2=h2:9091/h2:8081,3=h3:9091/h3:8081")
            .resolve()
            .unwrap();
        assert_eq!(3, config.members.len());
        assert_eq!("h2:8081", config.members[&2].client_addr);
        assert_eq!(FlushMode::Sync, config.flush);
        assert_eq!(DEFAULT_QUEUES, config.default_queues);
        assert!(!config.auto_create_topics);
    }

    #[test]
    fn bad_members_are_refused_with_the_offending_part() {
        for bad in ["1=nohost", "x=a:1/b:2", "1=a:1/b", "1=a:1/b:2,1=c:1/d:2"] {
            let err = args(bad).resolve().unwrap_err().to_string();
            assert!(err.starts_with("members:"), "{bad}: {err}");
        }
        let err = BrokerArgs {
            node_id: Some(9),
            ..args("1=a:1/b:2")
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("not among the members"), "{err}");
    }

    #[test]
    fn timing_rules_are_checked() {
        let err = BrokerArgs {
            heartbeat_ms: Some(400),
            ..args("1=a:1/b:2")
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().starts_with("heartbeat_ms"), "{err}");
    }

    #[test]
    fn the_pending_send_budget_is_bounded_and_holds_the_largest_body() {
        let config = args("1=a:1/b:2").resolve().unwrap();
        assert_eq!(
            DEFAULT_MAX_PENDING_SEND_MB << 20,
            config.max_pending_send_bytes
        );
        for bad in [0, MAX_PENDING_SEND_MB_CAP + 1] {
            let err = BrokerArgs {
                max_pending_send_mb: Some(bad),
                ..args("1=a:1/b:2")
            }
            .resolve()
            .unwrap_err();
            assert!(
                err.to_string().starts_with("max_pending_send_mb"),
                "{bad}: {err}"
            );
        }
        let err = BrokerArgs {
            max_pending_send_mb: Some(8),
            max_body_bytes: Some(16 << 20),
            ..args("1=a:1/b:2")
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("max_body_bytes"), "{err}");
    }

    #[test]
    fn the_storage_memory_budget_has_bounds() {
        let config = args("1=a:1/b:2").resolve().unwrap();
        assert_eq!(DEFAULT_STORAGE_MEMORY_MB << 20, config.storage_memory_bytes);
        let config = BrokerArgs {
            storage_memory_mb: Some(64),
            ..args("1=a:1/b:2")
        }
        .resolve()
        .unwrap();
        assert_eq!(64 << 20, config.storage_memory_bytes);
        for bad in [0, 63, 1024 * 1024 + 1] {
            let err = BrokerArgs {
                storage_memory_mb: Some(bad),
                ..args("1=a:1/b:2")
            }
            .resolve()
            .unwrap_err();
            assert!(
                err.to_string().starts_with("storage_memory_mb"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn the_cut_off_time_is_off_or_past_two_election_timeouts() {
        let config = args("1=a:1/b:2").resolve().unwrap();
        assert_eq!(Duration::from_millis(1000), config.cut_off_after);
        let off = BrokerArgs {
            cut_off_after_ms: Some(0),
            ..args("1=a:1/b:2")
        }
        .resolve()
        .unwrap();
        assert!(off.cut_off_after.is_zero());
        let err = BrokerArgs {
            cut_off_after_ms: Some(500),
            ..args("1=a:1/b:2")
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().starts_with("cut_off_after_ms"), "{err}");
    }

    #[test]
    fn the_catchup_limit_is_off_by_default_and_bounded() {
        let config = args("1=a:1/b:2").resolve().unwrap();
        assert_eq!(0, config.catchup_bytes_per_sec);
        let config = BrokerArgs {
            catchup_mb_per_sec: Some(50),
            ..args("1=a:1/b:2")
        }
        .resolve()
        .unwrap();
        assert_eq!(50 << 20, config.catchup_bytes_per_sec);
        let err = BrokerArgs {
            catchup_mb_per_sec: Some(MAX_CATCHUP_MB_PER_SEC + 1),
            ..args("1=a:1/b:2")
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().starts_with("catchup_mb_per_sec"), "{err}");
    }

    #[test]
    fn the_sample_config_parses_and_flags_override_it() {
        let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/raftmq.toml");
        let config = BrokerArgs {
            config: Some(sample.into()),
            node_id: Some(2),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(2, config.node_id);
        assert_eq!(3, config.members.len());
        assert!(
            !config.auto_create_topics,
            "the production sample keeps auto-create off"
        );
        assert_eq!(FlushMode::Sync, config.flush);
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "node_id = 1\nflsh = \"sync\"\n").unwrap();
        let err = BrokerArgs {
            config: Some(path),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("flsh"), "{err}");
    }
}
