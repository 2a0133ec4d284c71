#!/usr/bin/env bash
# What a node's memory does as its stored log grows, as recorded in docs/BENCHMARKS.md: on a
# fresh local three-node group (release build, flush = sync), `raftmq bench produce` sends
# 1 KiB messages of random bodies (so they do not compress) flat out in ROUNDS rounds of
# SECONDS_PER_ROUND; after each round every node's RocksDB memory (the metrics'
# `raftmq_store_memory_bytes`: shared block cache, memtables, and index and filter blocks held
# outside the cache) and its resident memory are printed with the size of its log.
#
#   scripts/bench-memory.sh
#   ROUNDS=6 SECONDS_PER_ROUND=30 scripts/bench-memory.sh
#   BIN=path/to/raftmq scripts/bench-memory.sh      # measure a given build instead
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
. scripts/bench-common.sh

ROUNDS=${ROUNDS:-4}
SECONDS_PER_ROUND=${SECONDS_PER_ROUND:-20}
WORK=${WORK:-$(mktemp -d /tmp/raftmq-bench-memory.XXXXXX)}
mkdir -p "$WORK"

require_command jq
require_command curl
[ -n "${BIN:-}" ] || BIN=$(build_release)

trap stop_local_group EXIT
echo "=== starting a local group in $WORK/cluster (flush = sync)"
start_local_group "$BIN" "$WORK/cluster" sync "$WORK/local.log"

# metric NAME LABEL TEXT: the value of NAME{LABEL} (or of NAME alone) in a /metrics page.
metric() {
  awk -v name="$1" -v label="$2" '
    $1 == name || (label != "" && index($1, name "{") == 1 && index($1, label) > 0) {print $2; exit}' <<<"$3"
}
mib() { awk -v b="${1:-0}" 'BEGIN {printf "%.1f", b / 1048576}'; }

printf '%-6s %-5s %10s %10s %10s %12s %10s\n' round node "log MiB" "cache MiB" "memtab MiB" \
  "outside KiB" "RSS MiB"
for round in $(seq "$ROUNDS"); do
  "$BIN" bench produce --endpoints "$BENCH_ENDPOINTS" --topic bench --concurrency 1024 \
    --size 1024 --body random --duration "${SECONDS_PER_ROUND}s" --json >"$WORK/round-$round.json"
  for node in $(jq -r '.nodes[].id' "$WORK/cluster/cluster.json"); do
    http=$(jq -r ".nodes[] | select(.id == $node) | .http_addr" "$WORK/cluster/cluster.json")
    pid=$(jq -r ".nodes[] | select(.id == $node) | .pid" "$WORK/cluster/cluster.json")
    page=$(curl -fsS "http://$http/metrics")
    rss_kb=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
    printf '%-6s %-5s %10s %10s %10s %12s %10s\n' "$round" "$node" \
      "$(mib "$(metric raftmq_store_bytes 'cf="log"' "$page")")" \
      "$(mib "$(metric raftmq_store_memory_bytes 'kind="block_cache"' "$page")")" \
      "$(mib "$(metric raftmq_store_memory_bytes 'kind="memtables"' "$page")")" \
      "$(awk -v b="$(metric raftmq_store_memory_bytes 'kind="table_readers"' "$page")" 'BEGIN {printf "%.0f", b / 1024}')" \
      "$(awk -v k="$rss_kb" 'BEGIN {printf "%.0f", k / 1024}')"
  done
done
echo "results in $WORK"
