#!/usr/bin/env bash
# Where the CPU goes per message, as recorded in docs/BENCHMARKS.md: on a fresh local
# three-node group (release build, flush = sync), RUNS alternating runs of
#   - `raftmq bench rpc`: Heartbeat calls the broker answers without work, i.e. what one gRPC
#     call costs the load generator and the serving node (the floor under every send), and
#   - `raftmq bench produce`: 1 KiB sends, one message per call, flat out,
# each followed by the CPU time every process spent per call or message (from /proc and
# /usr/bin/time) and each node's peak resident memory so far (VmHWM), and the medians of all
# runs.
#
#   scripts/bench-cpu.sh
#   RUNS=5 SECONDS_PER_RUN=20 CONCURRENCY=1024 scripts/bench-cpu.sh
#   BIN=path/to/raftmq scripts/bench-cpu.sh      # measure a given build instead
#   BENCH_FLAGS="--connection channel" scripts/bench-cpu.sh   # extra flags for both loads
#   PRODUCE_FLAGS="--body random" scripts/bench-cpu.sh         # extra flags for the sends only
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
. scripts/bench-common.sh

RUNS=${RUNS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
CONCURRENCY=${CONCURRENCY:-1024}
SIZE=${SIZE:-1024}
read -r -a bench_flags <<<"${BENCH_FLAGS:-}"
read -r -a produce_flags <<<"${PRODUCE_FLAGS:-}"
WORK=${WORK:-$(mktemp -d /tmp/raftmq-bench-cpu.XXXXXX)}
mkdir -p "$WORK"

require_command jq
require_time
[ -n "${BIN:-}" ] || BIN=$(build_release)


trap stop_local_group EXIT

endpoints=$BENCH_ENDPOINTS
echo "=== starting a local group in $WORK/cluster (flush = sync)"
start_local_group "$BIN" "$WORK/cluster" sync "$WORK/local.log"
# One short run first, so that connections, caches and the allocator are warm.
"$BIN" bench produce --endpoints "$endpoints" --topic bench --concurrency "$CONCURRENCY" \
  "${bench_flags[@]}" "${produce_flags[@]}" --size "$SIZE" --duration 3s --json >/dev/null 2>&1

leader=$("$BIN" admin cluster --json --endpoints "$endpoints" | jq -r '.nodes[] | select(.role=="leader") | .node_id')
node_pids=()
for n in 1 2 3; do node_pids+=("$(cat "$WORK/cluster/node-$n/broker.pid")"); done
ticks=$(getconf CLK_TCK)
peak_rss_mb() { awk '/^VmHWM:/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }

# measure NAME COUNT_FIELD COMMAND...: run the command, then print one JSON line with its rate
# and the CPU microseconds per counted item of the load generator, the leader and the followers.
measure() {
  local name=$1 field=$2
  shift 2
  local before=() pid
  for pid in "${node_pids[@]}"; do before+=("$(cpu_ticks "$pid")"); done
  /usr/bin/time -f "%U %S" -o "$WORK/time" "$@" 2>/dev/null >"$WORK/result.json"
  local count client_seconds leader_us follower_us=() n us leader_rss follower_rss=()
  count=$(jq ".$field" "$WORK/result.json")
  client_seconds=$(awk '{print $1 + $2}' "$WORK/time")
  for n in 1 2 3; do
    us=$(awk -v d="$(( $(cpu_ticks "${node_pids[n-1]}") - before[n-1] ))" -v t="$ticks" -v c="$count" \
      'BEGIN {printf "%.1f", d / t * 1e6 / c}')
    if [ "$n" = "$leader" ]; then
      leader_us=$us leader_rss=$(peak_rss_mb "${node_pids[n-1]}")
    else
      follower_us+=("$us") follower_rss+=("$(peak_rss_mb "${node_pids[n-1]}")")
    fi
  done
  jq -c --arg name "$name" --argjson client "$(awk -v s="$client_seconds" -v c="$count" 'BEGIN {printf "%.1f", s * 1e6 / c}')" \
    --argjson leader "$leader_us" --argjson f1 "${follower_us[0]}" --argjson f2 "${follower_us[1]}" \
    --argjson leader_rss "$leader_rss" --argjson r1 "${follower_rss[0]}" --argjson r2 "${follower_rss[1]}" \
    '{name: $name, per_sec: (.msgs_per_sec // .calls_per_sec), p99_ms: ((.ack_latency_ms // .latency_ms).p99),
      client_us: $client, leader_us: $leader, follower_us: [$f1, $f2],
      peak_rss_mb: {leader: $leader_rss, followers: [$r1, $r2]}}' "$WORK/result.json"
}

: >"$WORK/runs.jsonl"
for run in $(seq "$RUNS"); do
  echo "--- run $run/$RUNS: heartbeat calls, $CONCURRENCY in flight, ${SECONDS_PER_RUN}s"
  measure rpc calls "$BIN" bench rpc --endpoints "$endpoints" --concurrency "$CONCURRENCY" "${bench_flags[@]}" \
    --duration "${SECONDS_PER_RUN}s" --json | tee -a "$WORK/runs.jsonl"
  echo "--- run $run/$RUNS: sends of $SIZE bytes, one message per call, $CONCURRENCY in flight, ${SECONDS_PER_RUN}s"
  measure produce acked "$BIN" bench produce --endpoints "$endpoints" --topic bench \
    --concurrency "$CONCURRENCY" "${bench_flags[@]}" "${produce_flags[@]}" --size "$SIZE" \
    --duration "${SECONDS_PER_RUN}s" --json | tee -a "$WORK/runs.jsonl"
done

echo
echo "=== medians of $RUNS runs (CPU microseconds per call or message)"
printf '%-8s %10s %9s %10s %10s %12s %16s\n' bench "per sec" "p99 ms" "client" "leader" "follower" \
  "peak RSS MB L/F"
for name in rpc produce; do
  pick() { jq -r "select(.name == \"$name\") | $1" "$WORK/runs.jsonl" | median; }
  printf '%-8s %10.0f %9s %10s %10s %12s %16s\n' "$name" "$(pick .per_sec)" "$(pick .p99_ms)" \
    "$(pick .client_us)" "$(pick .leader_us)" "$(pick '(.follower_us | add / 2)')" \
    "$(pick .peak_rss_mb.leader)/$(pick '(.peak_rss_mb.followers | max)')"
done
echo "results in $WORK"
