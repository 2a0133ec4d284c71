#!/usr/bin/env bash
# Failover drill for a running local cluster (started with scripts/local.sh or `raftmq local`).
# Under a steady load of acknowledged sends it: kills the leader (SIGKILL) and restarts it,
# pauses the leader (SIGSTOP) for longer than the election timeout and resumes it, cuts the
# leader off from the other nodes and heals the partition (root and iptables needed: each
# node's Raft traffic uses its own 127.0.0.N), then restarts every node one by one with
# SIGTERM, leader last. After each step every node is read
# back and checked: nothing acknowledged lost, duplicated or reordered, replicas identical.
# It prints each step, a progress line every second, and the measured failover times.
#
#   scripts/failover-drill.sh [DIR]      DIR: the cluster's --dir (default raftmq-local)
#
# Histories and reports are kept in DIR/drill/. The chaos harness (docs/CHAOS.md) covers more
# partitions (split, bridge, one-way) with each node in its own network namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-raftmq-local}"
RAFTMQ=${RAFTMQ:-target/debug/raftmq}
CHAOS=${CHAOS:-target/debug/chaos}
PAUSE_SECS=${PAUSE_SECS:-5}
PARTITION_SECS=${PARTITION_SECS:-5}
RATE=${RATE:-200}

. scripts/drill-common.sh
ensure_curl

[ -f "$dir/cluster.json" ] || die "$dir/cluster.json not found: start a cluster with scripts/local.sh --dir $dir (or pass its --dir)"
[ -x "$RAFTMQ" ] || die "$RAFTMQ not found: build it with scripts/local.sh"
if [ ! -x "$CHAOS" ]; then
  say "building the chaos workload tool"
  . scripts/deps.sh
  ensure_build_deps
  use_cached_rocksdb
  cargo build -q -p chaos-tests --bin chaos
fi
out="$dir/drill"
mkdir -p "$out"

# node_field ID FIELD: a field of node ID in cluster.json.
node_field() {
  python3 -c 'import json,sys
nodes = {str(n["id"]): n for n in json.load(open(sys.argv[1]))["nodes"]}
print(nodes[sys.argv[2]][sys.argv[3]])' "$dir/cluster.json" "$1" "$2"
}
ids=$(python3 -c 'import json,sys; print(" ".join(str(n["id"]) for n in json.load(open(sys.argv[1]))["nodes"]))' "$dir/cluster.json")
ENDPOINTS=$(for id in $ids; do node_field "$id" client_addr; done | paste -sd, -)

pid_of() { cat "$(node_field "$1" pid_file)"; }
restart() { bash -c "$(node_field "$1" restart_command)"; }
wait_ready() { wait_http_ready "$(node_field "$1" http_addr)" "node $1 (see $(node_field "$1" log))"; }
# run_load NAME SECONDS: progress lines go to the terminal, the summary to $out/NAME.json.
run_load() {
  "$CHAOS" load --endpoints "$ENDPOINTS" --topic "$1" --duration "$2" --rate "$RATE" \
    --history "$out/$1.jsonl" > "$out/$1.json" &
  LOAD_PID=$!
}
finish_step() {
  local name=$1
  wait "$LOAD_PID" || die "the load failed"
  "$CHAOS" check --endpoints "$ENDPOINTS" --topic "$name" --history "$out/$name.jsonl" > "$out/$name.check" \
    || { cat "$out/$name.check" >&2; die "the checker found problems (history $out/$name.jsonl)"; }
  python3 - "$out/$name.json" "$out/$name.check" <<'PY'
import json, sys
load = json.loads(open(sys.argv[1]).read().splitlines()[-1])
checks = [json.loads(l) for l in open(sys.argv[2]) if '"node"' in l]
print(f"    sends: {load['attempted']} attempted, {load['acked']} acknowledged, {load['failed']} failed; "
      f"p99 ack {load['latency_ms']['p99']} ms; longest time without an ack {load['longest_gap_ms']} ms")
print(f"    checked {len(checks)} nodes: {sum(c['lost'] for c in checks)} lost, "
      f"{sum(c['duplicated'] for c in checks)} duplicated, {sum(c['reordered'] for c in checks)} reordered; replicas identical")
PY
}

leader=$(leader_id)
[ -n "$leader" ] || die "no leader: is the cluster in $dir running?"
say "cluster in $dir: nodes $ids, node $leader leads; load $RATE sends/s"
summary=()
stamp=$(date +%s)

say "step 1: kill -9 the leader (node $leader), then restart it"
run_load "drill-kill-$stamp" 12
sleep 3
injected=$(now_ms)
kill -9 "$(pid_of "$leader")"
took=$(wait_new_leader "$leader" "$injected")
say "node $(leader_id) leads ${took} ms after the kill"
sleep 2
restart "$leader"
wait_ready "$leader"
say "node $leader is back and caught up"
finish_step "drill-kill-$stamp"
summary+=("leader SIGKILL: new leader after ${took} ms, longest time without an ack $(load_field "$out/drill-kill-$stamp.json" longest_gap_ms) ms")

leader=$(leader_id)
say "step 2: pause the leader (node $leader, SIGSTOP) for ${PAUSE_SECS}s: a new leader takes over, the old one must not acknowledge anything"
run_load "drill-pause-$stamp" 14
sleep 3
pid=$(pid_of "$leader")
injected=$(now_ms)
kill -STOP "$pid"
took=$(wait_new_leader "$leader" "$injected")
say "node $(leader_id) leads ${took} ms after the pause"
sleep "$PAUSE_SECS"
kill -CONT "$pid"
wait_ready "$leader"
say "node $leader resumed and follows again"
finish_step "drill-pause-$stamp"
summary+=("leader SIGSTOP: new leader seen after ${took} ms (the status poll waits up to 2 s for the paused node), longest time without an ack $(load_field "$out/drill-pause-$stamp.json" longest_gap_ms) ms")

leader=$(leader_id)
raft_ip() { node_field "$1" raft_addr | cut -d: -f1; }
leader_ip=$(raft_ip "$leader")
distinct_ips=$(for id in $ids; do raft_ip "$id"; done | sort -u | wc -l)
if [ "$(id -u)" = 0 ] && command -v iptables >/dev/null && [ "$distinct_ips" = "$(echo "$ids" | wc -w)" ]; then
  say "step 3: cut the leader (node $leader, Raft on $leader_ip) off from the other nodes for ${PARTITION_SECS}s, then heal"
  run_load "drill-partition-$stamp" $((PARTITION_SECS + 9))
  sleep 3
  rules=()
  for id in $ids; do
    [ "$id" = "$leader" ] && continue
    rules+=("-s $leader_ip -d $(raft_ip "$id")" "-s $(raft_ip "$id") -d $leader_ip")
  done
  heal() { for rule in "${rules[@]}"; do iptables -D INPUT -i lo $rule -j DROP 2>/dev/null || true; done; }
  trap heal EXIT
  injected=$(now_ms)
  for rule in "${rules[@]}"; do iptables -I INPUT -i lo $rule -j DROP; done
  took=$(wait_new_leader "$leader" "$injected")
  say "node $(leader_id) leads ${took} ms after the partition; clients still reach node $leader, which must not acknowledge anything"
  sleep "$PARTITION_SECS"
  heal
  trap - EXIT
  wait_ready "$leader"
  say "partition healed; node $leader follows again"
  finish_step "drill-partition-$stamp"
  summary+=("leader partitioned: new leader after ${took} ms, longest time without an ack $(load_field "$out/drill-partition-$stamp.json" longest_gap_ms) ms")
else
  say "step 3 skipped: cutting a node off needs root, iptables, and nodes with their own Raft addresses (127.0.0.N, as raftmq local starts them)"
fi

leader=$(leader_id)
order="$(for id in $ids; do [ "$id" = "$leader" ] || printf '%s ' "$id"; done)$leader"
say "step 4: rolling restart with SIGTERM, order $order (the leader hands over before it stops)"
run_load "drill-rolling-$stamp" $((6 * $(echo "$ids" | wc -w) + 4))
sleep 2
for id in $order; do
  started=$(now_ms)
  pid=$(pid_of "$id")
  kill -TERM "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  restart "$id"
  wait_ready "$id"
  say "node $id restarted and ready in $(($(now_ms) - started)) ms; node $(leader_id) leads"
  sleep 2
done
finish_step "drill-rolling-$stamp"
summary+=("rolling restart: $(load_field "$out/drill-rolling-$stamp.json" failed) failed sends, longest time without an ack $(load_field "$out/drill-rolling-$stamp.json" longest_gap_ms) ms")

echo
echo "drill passed: nothing acknowledged was lost"
printf '  %s\n' "${summary[@]}"
