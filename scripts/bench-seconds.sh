#!/usr/bin/env bash
# Second by second at a fixed rate: for each round and each RocksDB thread policy, a fresh
# local three-node group (release build, flush = sync), `raftmq bench fsync`, then
# `raftmq bench produce --rate RATE`. Prints per second the slowest acknowledgement beside the
# machine's CPU split (/proc/stat), and per run the p50/p99, the seconds whose slowest ack
# went over SLOW_MS and the worst second, so that ack stalls can be lined up with what the
# machine was doing, and background-work settings compared on fresh groups.
#
#   scripts/bench-seconds.sh                               # one round, default policy
#   ROUNDS=3 POLICIES="normal idle" scripts/bench-seconds.sh
#   BIN=path/to/raftmq scripts/bench-seconds.sh          # a given build instead
#
# POLICIES: `normal` leaves RocksDB's flush and compaction threads alone; `idle` moves them to
# SCHED_IDLE and `nice` to nice 19 (in every broker, right after the group starts).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
. scripts/bench-common.sh

ROUNDS=${ROUNDS:-1}
RATE=${RATE:-10000}
CONCURRENCY=${CONCURRENCY:-1024}
DURATION=${DURATION:-30}
WARMUP=${WARMUP:-2}
SLOW_MS=${SLOW_MS:-50}
POLICIES=${POLICIES:-normal}
WORK=${WORK:-$(mktemp -d /tmp/raftmq-seconds.XXXXXX)}
mkdir -p "$WORK"

bin=${BIN:-$(build_release)}
trap stop_local_group EXIT

# set_thread_policy DIR POLICY: apply POLICY to the RocksDB threads of every broker in DIR.
set_thread_policy() {
  local dir=$1 policy=$2 pid task
  [ "$policy" = normal ] && return 0
  for pid in $(jq -r '.nodes[].pid' "$dir/cluster.json"); do
    for task in /proc/"$pid"/task/*; do
      case "$(cat "$task/comm" 2>/dev/null)" in
        rocksdb:*)
          case $policy in
            idle) chrt --idle -p 0 "${task##*/}" >/dev/null ;;
            nice) renice -n 19 -p "${task##*/}" >/dev/null ;;
            *) echo "unknown policy $policy (normal, idle, nice)" >&2; exit 1 ;;
          esac ;;
      esac
    done
  done
}

# cpu_seconds N: N lines of "user% system% idle% iowait% steal%" of the whole machine, one a
# second (steal: time the hypervisor gave to other machines).
cpu_seconds() {
  local prev cur i k total
  read -ra prev < <(head -n 1 /proc/stat)
  for i in $(seq "$1"); do
    sleep 1
    read -ra cur < <(head -n 1 /proc/stat)
    local d=()
    total=0
    for k in 1 2 3 4 5 6 7 8; do d[k]=$(( cur[k] - prev[k] )); total=$(( total + d[k] )); done
    [ "$total" -gt 0 ] || total=1
    echo "$(( 100 * (d[1] + d[2]) / total )) $(( 100 * (d[3] + d[6] + d[7]) / total )) $(( 100 * d[4] / total )) $(( 100 * d[5] / total )) $(( 100 * d[8] / total ))"
    prev=("${cur[@]}")
  done
}

for round in $(seq "$ROUNDS"); do
  for policy in $POLICIES; do
    run="$WORK/$policy-$round"
    rm -rf "$run"
    start_local_group "$bin" "$run" sync "$run.local.log" >/dev/null
    set_thread_policy "$run" "$policy"
    "$bin" bench fsync --dir "$run" --duration 3s --json >"$run.fsync.json"
    cpu_seconds $(( WARMUP + DURATION + 1 )) >"$run.cpu" &
    cpu=$!
    "$bin" bench produce --endpoints "$BENCH_ENDPOINTS" --topic bench --size 1024 \
      --concurrency "$CONCURRENCY" --rate "$RATE" --warmup "${WARMUP}s" --duration "${DURATION}s" \
      --fsync-probe "$run" --json >"$run.json" 2>"$run.progress"
    wait "$cpu" || true
    stop_local_group
    rm -rf "$run"

    echo "=== round $round, RocksDB threads $policy: second, slowest ack ms, cpu user/system/idle/iowait/steal %"
    # The progress lines start after the warmup, one a measured second; so do the CPU lines
    # from line WARMUP + 1.
    seconds=$(grep -c 'slowest' "$run.progress" || true)
    paste -d' ' <(grep -o 'slowest [0-9.]*' "$run.progress" | awk '{print NR, $2}') \
      <(tail -n +$(( WARMUP + 1 )) "$run.cpu" | head -n "$seconds") |
      awk 'NF == 7 {printf "  %3d %8.1f   %s/%s/%s/%s/%s\n", $1, $2, $3, $4, $5, $6, $7}'
    slow=$(grep -o 'slowest [0-9.]*' "$run.progress" | awk -v limit="$SLOW_MS" '$2 > limit {n++} END {print n + 0}')
    worst=$(grep -o 'slowest [0-9.]*' "$run.progress" | awk '$2 > m {m = $2} END {print m + 0}')
    printf '  %s msgs/s, ack p50 %s p99 %s p999 %s ms; seconds over %s ms: %s, worst %s ms; disk fsync idle p99 %s ms, in the run p99 %s max %s ms; ack p99 / in-run fsync p99 %s\n' \
      "$(jq '.msgs_per_sec | floor' "$run.json")" "$(jq .ack_latency_ms.p50 "$run.json")" \
      "$(jq .ack_latency_ms.p99 "$run.json")" "$(jq .ack_latency_ms.p999 "$run.json")" "$SLOW_MS" "$slow" "$worst" \
      "$(jq .fsync_latency_ms.p99 "$run.fsync.json")" "$(jq .fsync_latency_during_run_ms.p99 "$run.json")" \
      "$(jq .fsync_latency_during_run_ms.max "$run.json")" \
      "$(jq '(.ack_latency_ms.p99 / .fsync_latency_during_run_ms.p99 * 10 | round) / 10' "$run.json")" | tee -a "$WORK/summary"
  done
done
echo "=== summary (also in $WORK/summary)"
cat "$WORK/summary"
