# Sourced by the scripts/drill-*.sh: the compose cluster (deploy/compose.yaml) and the tools
# the drills use. Node N runs in container raftmq-N; from the host its client port is
# 127.0.0.1:1808(N+1) and its HTTP port 127.0.0.1:1818(N+1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RAFTMQ=${RAFTMQ:-target/debug/raftmq}
CHAOS=${CHAOS:-target/debug/chaos}
ENDPOINTS=127.0.0.1:18081,127.0.0.1:18082,127.0.0.1:18083
NETWORK=raftmq_raftmq
OUT=${DRILL_OUT:-target/drills}
mkdir -p "$OUT"

if command -v docker-compose >/dev/null; then
  COMPOSE=(docker-compose -p raftmq -f deploy/compose.yaml)
else
  COMPOSE=(docker compose -p raftmq -f deploy/compose.yaml)
fi

say() { echo "[$(date +%H:%M:%S)] $*"; }
die() { echo "drill failed: $*" >&2; exit 1; }

now_ms() { date +%s%3N; }

# HTTP status of a node's /readyz (000 when it does not answer).
ready_status() {
  curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:1818$(($1 + 1))/readyz" || true
}

wait_ready() {
  local node=$1 until=$(($(date +%s) + ${2:-60}))
  while [ "$(ready_status "$node")" != 200 ]; do
    [ "$(date +%s)" -lt "$until" ] || die "node $node not ready after ${2:-60}s: $(docker logs --tail 20 "raftmq-$node" 2>&1)"
    sleep 0.5
  done
}

# The leader's node id as the reachable nodes report it (empty when none).
leader_id() {
  "$RAFTMQ" admin --endpoints "$ENDPOINTS" cluster --json 2>/dev/null | python3 -c '
import json, sys
nodes = json.load(sys.stdin)["nodes"]
print(next((n["node_id"] for n in nodes if n.get("role") == "leader"), ""))' || true
}

# Wait until a node other than $1 leads; print how long it took in ms.
wait_new_leader() {
  local old=$1 since=$2 until=$(($(date +%s) + 30)) leader
  while true; do
    leader=$(leader_id)
    if [ -n "$leader" ] && [ "$leader" != "$old" ]; then
      echo $(($(now_ms) - since))
      return
    fi
    [ "$(date +%s)" -lt "$until" ] || die "no new leader 30s after the fault"
    sleep 0.1
  done
}

cluster_up() {
  if ! command -v curl >/dev/null; then
    [ "$(id -u)" = 0 ] || die "curl is missing: sudo apt-get install curl"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null
  fi
  [ -x "$RAFTMQ" ] && [ -x "$CHAOS" ] || die "build first: cargo build --workspace --all-targets"
  docker image inspect raftmq:dev >/dev/null 2>&1 || scripts/build-image.sh
  say "starting a fresh compose cluster"
  "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  "${COMPOSE[@]}" up -d >/dev/null 2>&1 || die "docker compose up failed"
  for node in 0 1 2; do wait_ready "$node" 60; done
  say "cluster ready, node $(leader_id) leads"
}

cluster_down() {
  "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
}

# start_load NAME SECONDS: sends in the background; the summary goes to $OUT/NAME.json.
start_load() {
  "$CHAOS" load --endpoints "$ENDPOINTS" --topic "$1" --duration "$2" --rate "${RATE:-200}" \
    --history "$OUT/$1.jsonl" > "$OUT/$1.json" 2> "$OUT/$1.progress" &
  LOAD_PID=$!
}

# check NAME: every node holds every acknowledged message once, in order, identically.
check() {
  "$CHAOS" check --endpoints "$ENDPOINTS" --topic "$1" --history "$OUT/$1.jsonl" > "$OUT/$1.check" \
    || { cat "$OUT/$1.check" >&2; die "checker found problems in $1 (history: $OUT/$1.jsonl)"; }
}

# field FILE EXPR: a value from a JSON file, e.g. field x.json 'd["latency_ms"]["p99"]'.
field() {
  python3 -c "import json,sys; d=json.loads(open(sys.argv[1]).read().splitlines()[-1]); print($2)" "$1"
}

lost_of() {
  python3 -c '
import json, sys
print(max(json.loads(l).get("lost", 0) for l in open(sys.argv[1]) if l.strip()))' "$OUT/$1.check"
}
