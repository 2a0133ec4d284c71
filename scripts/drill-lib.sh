# Sourced by the scripts/drill-*.sh: the compose cluster (deploy/compose.yaml) and the tools
# the drills use. Node N runs in container raftmq-N; from the host its client port is
# 127.0.0.1:2808(N+1) and its HTTP port 127.0.0.1:2818(N+1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

. scripts/drill-common.sh
RAFTMQ=${RAFTMQ:-target/debug/raftmq}
CHAOS=${CHAOS:-target/debug/chaos}
ENDPOINTS=127.0.0.1:28081,127.0.0.1:28082,127.0.0.1:28083
NETWORK=raftmq_raftmq
OUT=${DRILL_OUT:-target/drills}
mkdir -p "$OUT"

if command -v docker-compose >/dev/null; then
  COMPOSE=(docker-compose -p raftmq -f deploy/compose.yaml)
else
  COMPOSE=(docker compose -p raftmq -f deploy/compose.yaml)
fi

wait_ready() {
  wait_http_ready "127.0.0.1:2818$(($1 + 1))" "node $1 (see: docker logs raftmq-$1)" "${2:-60}"
}

cluster_up() {
  ensure_curl
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
