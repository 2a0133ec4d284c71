#!/usr/bin/env bash
# How long a follower with an empty disk takes to refill, and what it does to the sends going
# on meanwhile, as recorded in docs/BENCHMARKS.md: on a fresh local three-node group (release
# build, flush = sync, every node with `catchup_mb_per_sec` = CATCHUP_MB_PER_SEC, 0 = no
# limit), `raftmq bench produce` stores FILL_SECONDS of 1 KiB messages (16 per call, flat
# out) and then sends RATE a second for 10 s as a baseline. Each round then kills a follower,
# deletes its data and starts it again with its own restart command, and sends RATE a second,
# in runs of 5 s, until `raftmq admin cluster` shows the follower has applied what the leader
# had committed. It prints the refill time and the sends' latency while it lasted: the median
# and the worst of the 5 s runs' p99, and the slowest send.
#
#   scripts/bench-refill.sh
#   CATCHUP_MB_PER_SEC=32 ROUNDS=3 scripts/bench-refill.sh
#   BIN=path/to/raftmq FILL_SECONDS=20 scripts/bench-refill.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
. scripts/bench-common.sh

FILL_SECONDS=${FILL_SECONDS:-10}
RATE=${RATE:-2000}
ROUNDS=${ROUNDS:-2}
CATCHUP_MB_PER_SEC=${CATCHUP_MB_PER_SEC:-0}
WORK=${WORK:-$(mktemp -d /tmp/raftmq-bench-refill.XXXXXX)}
mkdir -p "$WORK"

require_command jq
[ -n "${BIN:-}" ] || BIN=$(build_release)
# The brokers (and their restart commands, run from here) read the limit from the environment.
export RAFTMQ_CATCHUP_MB_PER_SEC=$CATCHUP_MB_PER_SEC

load_pid=
stop_all() {
  [ -z "$load_pid" ] || kill "$load_pid" 2>/dev/null || true
  stop_local_group
}
trap stop_all EXIT

status() { "$BIN" admin cluster --json --endpoints "$BENCH_ENDPOINTS" 2>/dev/null; }
# latency FILE: "p50 / p99 / max" of a bench report, in ms.
latency() { jq -r '.ack_latency_ms | "\(.p50) / \(.p99) / \(.max)"' "$1"; }
send_at_rate() { # send_at_rate SECONDS OUT
  "$BIN" bench produce --endpoints "$BENCH_ENDPOINTS" --topic bench --concurrency 64 \
    --rate "$RATE" --duration "$1s" --json >"$2" 2>>"$WORK/load.log"
}

echo "=== starting a local group in $WORK/cluster (flush = sync, catchup_mb_per_sec = $CATCHUP_MB_PER_SEC)"
start_local_group "$BIN" "$WORK/cluster" sync "$WORK/local.log"
echo "=== storing ${FILL_SECONDS}s of 1 KiB messages"
fill_local_group "$BIN" "$FILL_SECONDS" "$WORK/fill.json"
send_at_rate 10 "$WORK/baseline.json"
echo "baseline, $RATE/s: ack p50 / p99 / max $(latency "$WORK/baseline.json") ms"

printf '%-6s %-9s %10s %11s %30s\n' round follower "stored MB" "refilled s" "sends meanwhile (ms)"
for round in $(seq "$ROUNDS"); do
  node=$(a_follower "$BIN")
  [ "$node" != null ] || { echo "no follower to wipe" >&2; exit 1; }
  data_dir=$(node_field "$node" data_dir)
  pid_file=$(node_field "$node" pid_file)
  stored_mb=$(du -sm "$data_dir" | cut -f1)
  pid=$(cat "$pid_file")
  kill -KILL "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  rm -rf "${data_dir:?}"/*
  start=$(date +%s.%N)
  bash -c "$(node_field "$node" restart_command)"
  refilled=
  for run in $(seq 360); do
    send_at_rate 5 "$WORK/round-$round-run-$run.json" &
    load_pid=$!
    while kill -0 "$load_pid" 2>/dev/null; do
      # Refilled: the follower has applied what the leader had committed when asked.
      if [ -z "$refilled" ] && status | jq -e --argjson id "$node" '
          (.nodes[] | select(.role == "leader") | .committed_index) as $committed
          | .nodes[] | select(.node_id == $id) | .applied_index >= $committed' >/dev/null 2>&1; then
        refilled=$(date +%s.%N)
      fi
      sleep 0.2
    done
    wait "$load_pid"
    load_pid=
    [ -z "$refilled" ] || break
  done
  [ -n "$refilled" ] || { echo "node $node not refilled after 30 min" >&2; exit 1; }
  # The 5 s runs' p99s (median and worst) and the slowest send of them all.
  meanwhile=$(cat "$WORK"/round-"$round"-run-*.json | jq -s -r '
    ([.[].ack_latency_ms.p99] | sort) as $p99 | ($p99 | length) as $n
    | (($p99[($n - 1) / 2 | floor] + $p99[$n / 2 | floor]) / 2 * 1000 | round / 1000) as $median
    | "\($n) x 5 s: median p99 \($median), worst p99 \($p99[-1]), max \([.[].ack_latency_ms.max] | max)"')
  printf '%-6s %-9s %10s %11.1f   %s\n' "$round" "$node" "$stored_mb" \
    "$(awk -v a="$start" -v b="$refilled" 'BEGIN {print b - a}')" "$meanwhile"
done
