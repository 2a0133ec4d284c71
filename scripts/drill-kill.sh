#!/usr/bin/env bash
# Failover drill against the compose cluster (deploy/compose.yaml), under a steady load of
# acknowledged sends: the leader's container is killed (docker kill, then started again),
# cut off the network (docker network disconnect, then reconnected), and paused (docker pause
# for longer than the election timeout, then unpaused). For each fault it reports the new
# leader's election time, the unavailability (the longest time without any acknowledged
# send), failed sends, ack latency, and the checker's verdict: nothing acknowledged lost.
#
#   scripts/drill-kill.sh            (builds the image and starts the cluster if needed)
#
# Results: target/drills/ (histories, summaries, checker reports).
. "$(dirname "$0")/drill-lib.sh"

FAULT_SECS=${FAULT_SECS:-5}
cluster_up
trap cluster_down EXIT
results=()
for fault in kill disconnect pause; do
  name="kill-$fault-$(date +%s)"
  say "--- $fault the leader under load ($name)"
  start_load "$name" $((FAULT_SECS + 12))
  sleep 4
  leader=$(leader_id)
  [ -n "$leader" ] || die "no leader before the fault"
  container="raftmq-$leader"
  injected=$(now_ms)
  case $fault in
    kill) docker kill "$container" >/dev/null ;;
    disconnect) docker network disconnect "$NETWORK" "$container" ;;
    pause) docker pause "$container" >/dev/null ;;
  esac
  election_ms=$(wait_new_leader "$leader" "$injected")
  say "$fault of node $leader: node $(leader_id) leads after ${election_ms} ms"
  sleep "$FAULT_SECS"
  case $fault in
    kill) docker start "$container" >/dev/null ;;
    disconnect) docker network connect --alias "raftmq-$leader.raftmq" "$NETWORK" "$container" ;;
    pause) docker unpause "$container" >/dev/null ;;
  esac
  say "healed node $leader"
  wait "$LOAD_PID" || die "the load generator failed: $(tail -5 "$OUT/$name.progress")"
  wait_ready "$leader" 60
  check "$name"
  summary="$OUT/$name.json"
  results+=("$(printf '%-11s %9s %9s %7s %12s %14s %9s %6s' "$fault" \
    "$(field "$summary" 'd["attempted"]')" "$(field "$summary" 'd["acked"]')" \
    "$(field "$summary" 'd["failed"]')" "$election_ms" \
    "$(field "$summary" 'd["longest_gap_ms"]')" "$(field "$summary" 'd["latency_ms"]["p99"]')" \
    "$(lost_of "$name")")")
done

echo
printf '%-11s %9s %9s %7s %12s %14s %9s %6s\n' FAULT ATTEMPTED ACKED FAILED ELECTION_MS UNAVAILABLE_MS P99_MS LOST
printf '%s\n' "${results[@]}"
echo "every acknowledged message is on every node, once and in order (checker: clean)"
