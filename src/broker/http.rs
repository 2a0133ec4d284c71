//! The HTTP port for orchestrators and monitoring:
//!
//! - `/healthz`: the process and its Raft core are running (liveness).
//! - `/readyz`: this node can serve clients: it is not shutting down, the group has a leader
//!   that confirms its commit index with a quorum, and this node has applied all but at most
//!   [`READY_MAX_LAG`] entries of it (readiness; a replica catching up is not ready).
//! - `/loglevel`: GET the log filter, PUT a new one (`RUST_LOG` syntax).
//! - `/catchup`: GET the catch-up replication limit in MiB/s (0: none), PUT a new one.
//! - `/metrics`: Prometheus text format. Counters and histograms are recorded where things
//!   happen (`metrics::counter!` …); Raft and disk gauges are read when scraped.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use openraft::ServerState;
use serde_json::json;

use super::Broker;
use super::group_clients::OnlineClient;

/// A node stays ready while its applied index is at most this many entries behind the
/// group's commit index. One entry is one batch of messages, so this is a small bound.
pub const READY_MAX_LAG: u64 = 1000;
/// How long `/readyz` waits for the leader to confirm its commit index.
const READ_INDEX_DEADLINE: Duration = Duration::from_secs(2);

/// Latency buckets (seconds): 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Appends made durable by one WAL fsync (group commit).
const FSYNC_BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// How long a gauge that is no longer set stays in `/metrics`.
const GAUGE_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process-wide Prometheus recorder, installed on first call. `None` if another recorder
/// was installed first (then `/metrics` says so instead of serving partial data).
pub fn recorder() -> Option<PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            // Every gauge is set at scrape time, just before rendering; one left unset for a
            // while belongs to something gone (a removed member, a group's departed consumers).
            let builder = PrometheusBuilder::new()
                .idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE_TIMEOUT))
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("raftmq_wal_fsync_appends".into()),
                        FSYNC_BATCH_BUCKETS,
                    )
                });
            match builder.and_then(|b| b.install_recorder()) {
                Ok(handle) => Some(handle),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed; /metrics is off");
                    None
                }
            }
        })
        .clone()
}

/// Fold recorded histogram samples into their buckets now and then, so that memory stays
/// bounded between scrapes.
pub async fn upkeep(handle: PrometheusHandle) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        every.tick().await;
        handle.run_upkeep();
    }
}

/// Serve the HTTP port until `stop` completes.
pub async fn serve(
    broker: Arc<Broker>,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/loglevel", get(log_level).put(set_log_level))
        .route("/catchup", get(catchup_limit).put(set_catchup_limit))
        .with_state(broker);
    axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
}

pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listen for HTTP (health, metrics) on {addr}"))
}

async fn healthz(State(broker): State<Arc<Broker>>) -> impl IntoResponse {
    match &broker.node.metrics().running_state {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(fatal) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("raft core stopped: {fatal}\n"),
        ),
    }
}

async fn readyz(State(broker): State<Arc<Broker>>) -> impl IntoResponse {
    let node = &broker.node;
    let metrics = node.metrics();
    let applied = metrics.last_applied.as_ref().map_or(0, |id| id.index);
    let mut body = json!({
        "node_id": node.id,
        "leader_id": metrics.current_leader,
        "applied_index": applied,
    });
    let not_ready = |mut body: serde_json::Value, reason: String| {
        body["ready"] = json!(false);
        body["reason"] = json!(reason);
        (StatusCode::SERVICE_UNAVAILABLE, body.to_string() + "\n")
    };
    if broker.draining.load(Ordering::Relaxed) {
        return not_ready(body, "shutting down".into());
    }
    if *broker.cut_off.borrow() {
        return not_ready(
            body,
            "cut off from the majority of the group: client connections are refused until it \
             is back"
                .into(),
        );
    }
    if metrics.current_leader.is_none() {
        return not_ready(body, "no leader known".into());
    }
    let commit = match node.read_index(Instant::now() + READ_INDEX_DEADLINE).await {
        Ok(index) => index,
        Err(e) => {
            return not_ready(
                body,
                format!("the leader did not confirm its commit index: {e}"),
            );
        }
    };
    let lag = commit.saturating_sub(applied);
    body["commit_index"] = json!(commit);
    body["lag"] = json!(lag);
    if lag > READY_MAX_LAG {
        return not_ready(
            body,
            format!(
                "applied index {lag} entries behind the commit index (at most {READY_MAX_LAG})"
            ),
        );
    }
    body["ready"] = json!(true);
    (StatusCode::OK, body.to_string() + "\n")
}

async fn log_level() -> impl IntoResponse {
    match crate::logging::current_filter() {
        Some(filter) => (StatusCode::OK, filter + "\n"),
        None => (StatusCode::NOT_FOUND, "logging is not initialized\n".into()),
    }
}

/// `PUT /loglevel` with a `RUST_LOG`-style filter as the body, e.g. `debug,openraft=info`.
async fn set_log_level(body: String) -> impl IntoResponse {
    match crate::logging::set_filter(&body) {
        Ok(()) => {
            tracing::info!(filter = %body.trim(), "log filter changed");
            (
                StatusCode::OK,
                format!("log filter is now {}\n", body.trim()),
            )
        }
        Err(e) => (StatusCode::BAD_REQUEST, e + "\n"),
    }
}

async fn catchup_limit(State(broker): State<Arc<Broker>>) -> impl IntoResponse {
    let bytes = broker.node.network().catch_up().bytes_per_second();
    format!("{}\n", bytes >> 20)
}

/// `PUT /catchup` with MiB per second as the body (`0`: no limit), as `catchup_mb_per_sec`;
/// it lasts until the node restarts.
async fn set_catchup_limit(State(broker): State<Arc<Broker>>, body: String) -> impl IntoResponse {
    let mb = match body.trim().parse::<u64>() {
        Ok(mb) if mb <= crate::config::MAX_CATCHUP_MB_PER_SEC => mb,
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                format!(
                    "expected MiB per second, 0..={} (0: no limit), got {:?}\n",
                    crate::config::MAX_CATCHUP_MB_PER_SEC,
                    body.trim()
                ),
            );
        }
    };
    broker.node.network().catch_up().set(mb << 20);
    tracing::info!(
        catchup_mb_per_sec = mb,
        "catch-up replication limit changed"
    );
    (
        StatusCode::OK,
        format!("catch-up replication limit is now {mb} MiB/s (0: none)\n"),
    )
}

async fn metrics_text(State(broker): State<Arc<Broker>>) -> impl IntoResponse {
    let Some(handle) = recorder() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed\n".to_string(),
        );
    };
    record_gauges(&broker);
    (StatusCode::OK, handle.render())
}

/// Gauges read from Raft, RocksDB and the file system at scrape time.
fn record_gauges(broker: &Broker) {
    use metrics::gauge;
    let node = &broker.node;
    let m = node.metrics();
    gauge!("raftmq_node_id").set(node.id as f64);
    for (state, name) in [
        (ServerState::Leader, "leader"),
        (ServerState::Follower, "follower"),
        (ServerState::Candidate, "candidate"),
        (ServerState::Learner, "learner"),
    ] {
        gauge!("raftmq_raft_role", "role" => name).set(if m.state == state { 1.0 } else { 0.0 });
    }
    gauge!("raftmq_raft_term").set(m.current_term as f64);
    gauge!("raftmq_raft_leader_id").set(m.current_leader.map_or(-1.0, |id| id as f64));
    let index = |id: Option<&raftmq_raft::types::LogId>| id.map_or(0.0, |id| id.index as f64);
    gauge!("raftmq_raft_last_log_index").set(m.last_log_index.unwrap_or(0) as f64);
    gauge!("raftmq_raft_committed_index").set(index(m.local_committed.as_ref()));
    gauge!("raftmq_raft_applied_index").set(index(m.last_applied.as_ref()));
    gauge!("raftmq_raft_purged_index").set(index(m.purged.as_ref()));
    if let Some(progress) = &m.replication {
        let last = m.last_log_index.unwrap_or(0);
        for (follower, matched) in progress {
            if *follower == node.id {
                continue;
            }
            let matched = matched.as_ref().map_or(0, |id| id.index);
            gauge!("raftmq_raft_replication_lag_entries", "follower" => follower.to_string())
                .set(last.saturating_sub(matched) as f64);
        }
    }
    for (cf, bytes) in node.state.db().column_family_bytes() {
        gauge!("raftmq_store_bytes", "cf" => cf).set(bytes as f64);
    }
    let memory = node.state.db().memory();
    for (kind, bytes) in [
        ("memtables", memory.memtables),
        ("table_readers", memory.table_readers),
        ("block_cache", memory.block_cache),
    ] {
        gauge!("raftmq_store_memory_bytes", "kind" => kind).set(bytes as f64);
    }
    gauge!("raftmq_store_memory_limit_bytes").set(memory.budget as f64);
    gauge!("raftmq_replication_catchup_limit_bytes")
        .set(node.network().catch_up().bytes_per_second() as f64);
    // Read by the disk watch (`super::disk`) a moment ago.
    if node.disk.capacity_bytes() > 0 {
        gauge!("raftmq_data_dir_free_bytes").set(node.disk.free_bytes() as f64);
        gauge!("raftmq_data_dir_capacity_bytes").set(node.disk.capacity_bytes() as f64);
    }
    gauge!("raftmq_send_pending_bytes").set(broker.sends.pending_bytes() as f64);
    gauge!("raftmq_send_pending_limit_bytes").set(broker.config.max_pending_send_bytes as f64);
    // One look at the registry serves both: each takes its lock and copies every record.
    let online = broker.group_clients.online(None);
    record_consumer_lag(broker, &online);
    record_consumers_online(&online);
    let flag = |on: bool| if on { 1.0 } else { 0.0 };
    gauge!("raftmq_disk_low").set(flag(node.disk.is_low()));
    gauge!("raftmq_disk_full").set(flag(node.disk_full()));
}

/// Each group's consumers that called this node within the online window, by kind. A series
/// whose consumers are all gone is set to 0 once and then left to the idle timeout, so that
/// groups come and go from `/metrics` without piling up.
fn record_consumers_online(online: &[OnlineClient]) {
    static REPORTED: Mutex<BTreeSet<(String, &'static str)>> = Mutex::new(BTreeSet::new());
    let mut counts = BTreeMap::<(String, &'static str), u64>::new();
    for client in online {
        let kind = client.kind.map_or("unknown", |kind| kind.name());
        *counts.entry((client.group.clone(), kind)).or_default() += 1;
    }
    let mut reported = REPORTED.lock().expect("reported consumer series poisoned");
    for (group, kind) in reported.iter().filter(|key| !counts.contains_key(*key)) {
        metrics::gauge!("raftmq_consumers_online", "group" => group.clone(), "kind" => *kind)
            .set(0.0);
    }
    for ((group, kind), count) in &counts {
        metrics::gauge!("raftmq_consumers_online", "group" => group.clone(), "kind" => *kind)
            .set(*count as f64);
    }
    *reported = counts.into_keys().collect();
}

/// Each consumer group's lag per topic, as `admin group describe` totals it, from this node's
/// applied state. Summed over queues: a series per queue would multiply with the queues. A
/// topic the group has committed nothing in counts while consumers of the group that call
/// this node read it.
fn record_consumer_lag(broker: &Broker, online: &[OnlineClient]) {
    let state = &broker.node.state;
    let mut groups = match state.all_group_progress() {
        Ok(groups) => groups,
        Err(e) => {
            tracing::warn!(error = %e, "reading consumer offsets for /metrics failed");
            return;
        }
    };
    for client in online {
        let queues = groups.entry(client.group.clone()).or_default();
        state.add_topics_read(queues, client.topics.iter().map(String::as_str));
    }
    for (group, queues) in groups {
        let mut by_topic = BTreeMap::<&str, u64>::new();
        for queue in &queues {
            *by_topic.entry(queue.topic.as_str()).or_default() += queue.lag();
        }
        for (topic, lag) in by_topic {
            metrics::gauge!(
                "raftmq_consumer_lag_messages",
                "group" => group.clone(),
                "topic" => topic.to_string()
            )
            .set(lag as f64);
        }
    }
}
