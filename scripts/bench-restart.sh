#!/usr/bin/env bash
# How long a node with a full store takes to come back from a restart, and the memory it
# peaks at meanwhile, as recorded in docs/BENCHMARKS.md: on a fresh local three-node group
# (release build, flush = sync), `raftmq bench produce` stores FILL_SECONDS of 1 KiB messages
# (16 per call, flat out); then one follower is stopped (SIGTERM, or SIGNAL=KILL for a crash)
# and started again RESTARTS times with its own restart command, and each time the script
# prints how long until its `/readyz` answers 200 and its peak resident memory (VmHWM) by
# then. With OTHER_BIN the restarts alternate between BIN and OTHER_BIN on the same data, to
# compare two builds.
#
#   scripts/bench-restart.sh
#   FILL_SECONDS=60 RESTARTS=6 scripts/bench-restart.sh
#   SIGNAL=KILL scripts/bench-restart.sh    # after a crash: RocksDB replays its WAL
#   BIN=path/to/raftmq OTHER_BIN=path/to/older/raftmq scripts/bench-restart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
. scripts/bench-common.sh

FILL_SECONDS=${FILL_SECONDS:-40}
RESTARTS=${RESTARTS:-4}
SIGNAL=${SIGNAL:-TERM}
WORK=${WORK:-$(mktemp -d /tmp/raftmq-bench-restart.XXXXXX)}
mkdir -p "$WORK"

require_command jq
require_command curl
[ -n "${BIN:-}" ] || BIN=$(build_release)

restarted_pid=
stop_all() {
  [ -z "$restarted_pid" ] || kill -TERM "$restarted_pid" 2>/dev/null || true
  stop_local_group
}
trap stop_all EXIT

echo "=== starting a local group in $WORK/cluster (flush = sync)"
start_local_group "$BIN" "$WORK/cluster" sync "$WORK/local.log"
echo "=== storing ${FILL_SECONDS}s of 1 KiB messages"
fill_local_group "$BIN" "$FILL_SECONDS" "$WORK/fill.json"

node=$(a_follower "$BIN")
[ "$node" != null ] || { echo "no follower to restart" >&2; exit 1; }
restart_command=$(node_field "$node" restart_command)
http_addr=$(node_field "$node" http_addr)
pid_file=$(node_field "$node" pid_file)
echo "store of node $node: $(du -sh "$WORK/cluster/node-$node/data" | cut -f1)"

# stop_node PID: send SIGNAL and wait (bounded) until it is gone.
stop_node() {
  kill -"$SIGNAL" "$1"
  for _ in $(seq 300); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  echo "node $node did not stop within 30 s" >&2
  exit 1
}

pid=$(cat "$pid_file")
printf '%-8s %-40s %14s %12s\n' restart binary "ready after s" "VmHWM MiB"
for round in $(seq "$RESTARTS"); do
  bin=$BIN
  if [ -n "${OTHER_BIN:-}" ] && [ $((round % 2)) = 0 ]; then bin=$OTHER_BIN; fi
  stop_node "$pid"
  start=$(date +%s.%N)
  # The restart command, with this round's binary in place of the one that started the group.
  bash -c "$bin ${restart_command#* }"
  for _ in $(seq 50); do [ -s "$pid_file" ] && [ "$(cat "$pid_file")" != "$pid" ] && break; sleep 0.02; done
  pid=$(cat "$pid_file")
  restarted_pid=$pid
  ready=
  for _ in $(seq 6000); do
    if curl -sf -o /dev/null "http://$http_addr/readyz"; then ready=$(date +%s.%N); break; fi
    kill -0 "$pid" 2>/dev/null || { echo "node $node exited; see $WORK/cluster/node-$node/broker.log" >&2; exit 1; }
    sleep 0.02
  done
  [ -n "$ready" ] || { echo "node $node not ready after 120 s" >&2; exit 1; }
  hwm_kib=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
  printf '%-8s %-40s %14.2f %12.1f\n' "$round" "$bin" \
    "$(awk -v a="$start" -v b="$ready" 'BEGIN {print b - a}')" \
    "$(awk -v k="$hwm_kib" 'BEGIN {print k / 1024}')"
done
