#!/usr/bin/env bash
# Where each process's CPU goes under flat-out sends, as the profiles in docs/BENCHMARKS.md:
# on a fresh local three-node group (release build, flush = sync), `raftmq bench produce`
# runs flat out while `perf record` samples the leader, then one follower (each for
# PROFILE_SECONDS, one after the other so that only one perf runs at a time), and the load
# generator for its whole run. Each profile is then summed into raftmq's stages by
# scripts/perf-stages.py. Needs perf (Debian: apt-get install linux-perf).
#
#   scripts/profile.sh
#   PROFILE_SECONDS=8 BENCH_FLAGS="--batch 16 --concurrency 256" scripts/profile.sh
#   BIN=path/to/raftmq scripts/profile.sh      # profile a given build instead
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
. scripts/bench-common.sh

PROFILE_SECONDS=${PROFILE_SECONDS:-5}
FREQUENCY=${FREQUENCY:-499}
read -r -a bench_flags <<<"${BENCH_FLAGS:---concurrency 1024}"
WORK=${WORK:-$(mktemp -d /tmp/raftmq-profile.XXXXXX)}
mkdir -p "$WORK"

require_command perf linux-perf
require_command jq
[ -n "${BIN:-}" ] || BIN=$(build_release)

trap stop_local_group EXIT
endpoints=$BENCH_ENDPOINTS
echo "=== starting a local group in $WORK/cluster (flush = sync)"
start_local_group "$BIN" "$WORK/cluster" sync "$WORK/local.log"
"$BIN" bench produce --endpoints "$endpoints" --topic bench "${bench_flags[@]}" --duration 3s \
  --json >/dev/null 2>&1
leader=$("$BIN" admin cluster --json --endpoints "$endpoints" | jq -r '.nodes[] | select(.role=="leader") | .node_id')
follower=$(( leader % 3 + 1 ))

# The load lasts for both broker profiles and a second on either side.
seconds=$(( 2 * PROFILE_SECONDS + 3 ))
# Call graphs by DWARF unwinding: the release build has no frame pointers.
record=(perf record -F "$FREQUENCY" --call-graph dwarf,16384 --quiet)
echo "=== ${seconds}s of sends (${bench_flags[*]}); profiling node $leader (leader), then node $follower"
"${record[@]}" -o "$WORK/load-generator.data" -- \
  "$BIN" bench produce --endpoints "$endpoints" --topic bench "${bench_flags[@]}" \
  --duration "${seconds}s" --json >"$WORK/result.json" 2>/dev/null &
load=$!
sleep 1
"${record[@]}" -p "$(cat "$WORK/cluster/node-$leader/broker.pid")" -o "$WORK/leader.data" \
  -- sleep "$PROFILE_SECONDS"
"${record[@]}" -p "$(cat "$WORK/cluster/node-$follower/broker.pid")" -o "$WORK/follower.data" \
  -- sleep "$PROFILE_SECONDS"
wait "$load"
jq -c '{msgs_per_sec, acked, failed, ack_latency_ms}' "$WORK/result.json"
echo "(perf's sampling takes CPU from the group: these rates are lower than unprofiled runs)"

for process in leader follower load-generator; do
  echo
  echo "=== $process"
  perf script -i "$WORK/$process.data" 2>/dev/null | scripts/perf-stages.py
done
echo
echo "profiles in $WORK (perf report -i <file>.data)"
