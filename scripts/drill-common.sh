# Sourced by the drill scripts: messages, time, and the group's leader as seen through
# `raftmq admin cluster`. The caller sets RAFTMQ (the binary) and ENDPOINTS (client addresses).

say() { echo "[$(date +%H:%M:%S)] $*"; }
die() { echo "drill failed: $*" >&2; exit 1; }
now_ms() { date +%s%3N; }

ensure_curl() {
  command -v curl >/dev/null && return
  [ "$(id -u)" = 0 ] || die "curl is missing: sudo apt-get install curl"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null
}

# leader_id [TIMEOUT_MS]: the leader's node id as the reachable nodes report it (empty when
# none). A cut-off old leader may still believe it leads: the one in the newest term wins.
# A node that does not answer within TIMEOUT_MS (default 2000) counts as unreachable.
leader_id() {
  leader_and_since "${1:-2000}" | cut -d' ' -f1
}

# leader_and_since TIMEOUT_MS: "ID LEADING_SINCE_MS" of the leader (as leader_id), or nothing.
leader_and_since() {
  "$RAFTMQ" admin --endpoints "$ENDPOINTS" --timeout-ms "$1" cluster --json 2>/dev/null | python3 -c '
import json, sys
nodes = [n for n in json.load(sys.stdin)["nodes"] if n.get("role") == "leader"]
if nodes:
    n = max(nodes, key=lambda n: n.get("term", 0))
    print(n["node_id"], n.get("leading_since_ms") or "")' || true
}

# wait_new_leader OLD SINCE_MS: wait until a node other than OLD leads; print the ms from
# SINCE_MS to its election, by the new leader's own clock (the containers share the host's).
# Each poll waits at most 250 ms per node: a paused old leader never answers.
wait_new_leader() {
  local old=$1 since=$2 until=$(($(date +%s) + 30)) leader elected
  while true; do
    read -r leader elected <<<"$(leader_and_since 250)" || true
    if [ -n "$leader" ] && [ "$leader" != "$old" ]; then
      echo $((${elected:-$(now_ms)} - since))
      return
    fi
    [ "$(date +%s)" -lt "$until" ] || die "no new leader 30s after the fault"
    sleep 0.05
  done
}

# wait_http_ready HTTP_ADDR WHAT [SECONDS]: until /readyz answers 200.
wait_http_ready() {
  local addr=$1 what=$2 until=$(($(date +%s) + ${3:-60}))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$addr/readyz" || true)" = 200 ]; do
    [ "$(date +%s)" -lt "$until" ] || die "$what not ready after ${3:-60}s"
    sleep 0.3
  done
}

# load_field SUMMARY KEY: a value of a `chaos load` summary file, e.g. longest_gap_ms.
load_field() {
  python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])[sys.argv[2]])' "$1" "$2"
}
