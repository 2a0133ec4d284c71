# Sourced by the benchmark scripts in this folder.

median() { # median of the numbers on stdin
  sort -n | awk '{v[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'
}

# build_release: build the release raftmq binary (the benchmarks' broker and load generator)
# and print its path.
build_release() {
  ensure_build_deps
  use_cached_rocksdb >&2
  echo "=== building raftmq (release)" >&2
  cargo build --release --bin raftmq -p raftmq >&2
  echo target/release/raftmq
}

# require_time: the CPU figures take the load generator's from /usr/bin/time.
require_time() {
  [ -x /usr/bin/time ] || { echo "/usr/bin/time is missing (Debian: apt-get install time)" >&2; exit 1; }
}

# require_command COMMAND [DEBIAN_PACKAGE]: stop with what to install when COMMAND is missing.
require_command() {
  command -v "$1" >/dev/null ||
    { echo "$1 is missing (Debian: apt-get install ${2:-$1})" >&2; exit 1; }
}

# cpu_ticks PID...: clock ticks (`getconf CLK_TCK` a second) of user + system CPU these
# processes have used so far, together.
cpu_ticks() {
  local pid total=0
  for pid in "$@"; do total=$(( total + $(awk '{print $14 + $15}' "/proc/$pid/stat") )); done
  echo "$total"
}

# The local group the benchmarks run against: `raftmq local` on its own ports, so that a
# group a user already runs on the default ports is left alone.
BENCH_ENDPOINTS=127.0.0.1:18081,127.0.0.1:18082,127.0.0.1:18083
local_group_pid=
local_group_dir=

# start_local_group BIN DIR FLUSH LOG: start a group in the background, wait for its leader
# and create the topic `bench` (8 queues).
start_local_group() {
  local bin=$1 dir=$2 flush=$3 log=$4
  "$bin" local --dir "$dir" --flush "$flush" --client-port 18081 --raft-port 19091 \
    --http-port 18091 >"$log" 2>&1 &
  local_group_pid=$!
  local_group_dir=$dir
  for _ in $(seq 100); do
    "$bin" admin cluster --json --endpoints "$BENCH_ENDPOINTS" 2>/dev/null | grep '"leader"' >/dev/null && break
    sleep 0.2
  done
  "$bin" admin topic create bench --queues 8 --endpoints "$BENCH_ENDPOINTS"
}

# fill_local_group BIN SECONDS REPORT: store SECONDS of 1 KiB messages in `bench`, flat out
# (16 per call), and print how many; the load generator's report goes to REPORT.
fill_local_group() {
  "$1" bench produce --endpoints "$BENCH_ENDPOINTS" --topic bench --concurrency 256 --batch 16 \
    --duration "$2s" --json >"$3"
  echo "stored $(jq .acked "$3") messages"
}

# a_follower BIN: the node id of one follower of the local group ("null" when none answers).
a_follower() {
  "$1" admin cluster --json --endpoints "$BENCH_ENDPOINTS" |
    jq -r '[.nodes[] | select(.role == "follower") | .node_id] | first'
}

# node_field ID NAME: field NAME of node ID's entry in the local group's cluster.json.
node_field() {
  jq -r --argjson id "$1" --arg name "$2" '.nodes[] | select(.id == $id) | .[$name]' \
    "$local_group_dir/cluster.json"
}

# stop_local_group: stop the group and delete its nodes' data (gigabytes after a long run;
# the brokers' logs stay), unless KEEP_BENCH_DATA=1.
stop_local_group() {
  if [ -n "$local_group_pid" ]; then
    kill -TERM "$local_group_pid" 2>/dev/null || true
    wait "$local_group_pid" 2>/dev/null || true
    local_group_pid=
  fi
  if [ -n "$local_group_dir" ] && [ "${KEEP_BENCH_DATA:-0}" != 1 ]; then
    rm -rf "$local_group_dir"/node-*/data
    local_group_dir=
  fi
}
