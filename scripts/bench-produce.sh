#!/usr/bin/env bash
# Produce benchmark on a local three-node group (release build), as recorded in
# docs/BENCHMARKS.md. For each flush mode it starts a fresh group, measures the disk's fsync
# latency, runs `raftmq bench produce` at a fixed rate (all RUNS rounds first, on the fresh
# group), then flat out and flat out with BATCH messages per SendMessage call
# (BATCH_CONCURRENCY calls in flight), RUNS times each, and prints the median of every figure.
# The disk's fsync latency is measured twice: on the idle group before each fixed-rate round,
# and beside the fixed-rate run (`--fsync-probe`), since it swings with the machine's load;
# the ack p99 at the fixed rate is set against both.
#
#   scripts/bench-produce.sh                 # defaults below
#   RUNS=5 DURATION=20s CONCURRENCY=1024 scripts/bench-produce.sh
#   BATCH=1 scripts/bench-produce.sh         # one message per call only
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
. scripts/bench-common.sh

RUNS=${RUNS:-3}
DURATION=${DURATION:-15s}
# Load before each measured run that no figure counts (new connections, first memtables).
WARMUP=${WARMUP:-2s}
CONCURRENCY=${CONCURRENCY:-1024}
SIZE=${SIZE:-1024}
RATE=${RATE:-10000}
BATCH=${BATCH:-16}
BATCH_CONCURRENCY=${BATCH_CONCURRENCY:-256}
MODES=${MODES:-"sync async"}
WORK=${WORK:-$(mktemp -d /tmp/raftmq-bench.XXXXXX)}
mkdir -p "$WORK"

bin=$(build_release)
endpoints=$BENCH_ENDPOINTS
trap stop_local_group EXIT

for mode in $MODES; do
  dir="$WORK/$mode"
  rm -rf "$dir"
  echo "=== flush=$mode: starting a local group in $dir"
  start_local_group "$bin" "$dir" "$mode" "$WORK/local-$mode.log"

  : >"$WORK/$mode-max.jsonl"
  : >"$WORK/$mode-rate.jsonl"
  : >"$WORK/$mode-fsync.jsonl"
  : >"$WORK/$mode-batch.jsonl"
  # The fixed-rate rounds come first, on the fresh group: after a flat-out run RocksDB still
  # compacts that burst for seconds, which would fall on a fixed-rate run that came next.
  for run in $(seq "$RUNS"); do
    echo "--- flush=$mode run $run/$RUNS: disk fsync latency"
    "$bin" bench fsync --dir "$dir" --duration 3s --json | tee -a "$WORK/$mode-fsync.jsonl"
    echo "--- flush=$mode run $run/$RUNS: fixed rate $RATE msgs/s"
    "$bin" bench produce --endpoints "$endpoints" --topic bench --concurrency "$CONCURRENCY" \
      --size "$SIZE" --duration "$DURATION" --warmup "$WARMUP" --rate "$RATE" \
      --fsync-probe "$dir" --json | tee -a "$WORK/$mode-rate.jsonl"
  done
  for run in $(seq "$RUNS"); do
    echo "--- flush=$mode run $run/$RUNS: flat out, $CONCURRENCY in flight, $SIZE-byte bodies, $DURATION"
    "$bin" bench produce --endpoints "$endpoints" --topic bench --concurrency "$CONCURRENCY" \
      --size "$SIZE" --duration "$DURATION" --warmup "$WARMUP" --json | tee -a "$WORK/$mode-max.jsonl"
    if [ "$BATCH" -gt 1 ]; then
      echo "--- flush=$mode run $run/$RUNS: flat out, $BATCH_CONCURRENCY calls of $BATCH messages in flight"
      "$bin" bench produce --endpoints "$endpoints" --topic bench --concurrency "$BATCH_CONCURRENCY" \
        --batch "$BATCH" --size "$SIZE" --duration "$DURATION" --warmup "$WARMUP" --json | tee -a "$WORK/$mode-batch.jsonl"
    fi
  done
  stop_local_group

  echo
  echo "=== flush=$mode: medians of $RUNS runs"
  printf '  flat out:   %s msgs/s, %s MB/s, ack p50 %s ms, p99 %s ms, p999 %s ms\n' \
    "$(jq .msgs_per_sec "$WORK/$mode-max.jsonl" | median)" \
    "$(jq .mb_per_sec "$WORK/$mode-max.jsonl" | median)" \
    "$(jq .ack_latency_ms.p50 "$WORK/$mode-max.jsonl" | median)" \
    "$(jq .ack_latency_ms.p99 "$WORK/$mode-max.jsonl" | median)" \
    "$(jq .ack_latency_ms.p999 "$WORK/$mode-max.jsonl" | median)"
  printf '  %s/s:  %s msgs/s, ack p50 %s ms, p99 %s ms, p999 %s ms\n' "$RATE" \
    "$(jq .msgs_per_sec "$WORK/$mode-rate.jsonl" | median)" \
    "$(jq .ack_latency_ms.p50 "$WORK/$mode-rate.jsonl" | median)" \
    "$(jq .ack_latency_ms.p99 "$WORK/$mode-rate.jsonl" | median)" \
    "$(jq .ack_latency_ms.p999 "$WORK/$mode-rate.jsonl" | median)"
  printf '  %s/s, from when each send was due: ack p50 %s ms, p99 %s ms, p999 %s ms\n' "$RATE" \
    "$(jq .ack_latency_from_schedule_ms.p50 "$WORK/$mode-rate.jsonl" | median)" \
    "$(jq .ack_latency_from_schedule_ms.p99 "$WORK/$mode-rate.jsonl" | median)" \
    "$(jq .ack_latency_from_schedule_ms.p999 "$WORK/$mode-rate.jsonl" | median)"
  if [ "$BATCH" -gt 1 ]; then
    printf '  %s messages per call, flat out: %s msgs/s, ack p50 %s ms, p99 %s ms\n' "$BATCH" \
      "$(jq .msgs_per_sec "$WORK/$mode-batch.jsonl" | median)" \
      "$(jq .ack_latency_ms.p50 "$WORK/$mode-batch.jsonl" | median)" \
      "$(jq .ack_latency_ms.p99 "$WORK/$mode-batch.jsonl" | median)"
  fi
  printf '  disk fsync, idle group: p50 %s ms, p99 %s ms\n' \
    "$(jq .fsync_latency_ms.p50 "$WORK/$mode-fsync.jsonl" | median)" \
    "$(jq .fsync_latency_ms.p99 "$WORK/$mode-fsync.jsonl" | median)"
  printf '  disk fsync during the %s/s runs: p50 %s ms, p99 %s ms\n' "$RATE" \
    "$(jq .fsync_latency_during_run_ms.p50 "$WORK/$mode-rate.jsonl" | median)" \
    "$(jq .fsync_latency_during_run_ms.p99 "$WORK/$mode-rate.jsonl" | median)"
  # Issue 2's latency aim, for flush = sync: the ack p99 at the fixed rate at most twice the
  # disk's fsync p99 (medians of each round's ratio).
  [ "$mode" = sync ] && printf '  %s/s ack p99 over disk fsync p99: %s x the idle disk, %s x the disk during the run (aim: at most 2)\n' \
    "$RATE" \
    "$(paste <(jq .ack_latency_ms.p99 "$WORK/$mode-rate.jsonl") <(jq .fsync_latency_ms.p99 "$WORK/$mode-fsync.jsonl") |
      awk '{printf "%.1f\n", $1 / $2}' | median)" \
    "$(jq '.ack_latency_ms.p99 / .fsync_latency_during_run_ms.p99 * 10 | round / 10' "$WORK/$mode-rate.jsonl" | median)"
  echo
done
echo "raw results: $WORK"
