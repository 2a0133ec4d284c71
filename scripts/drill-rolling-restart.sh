#!/usr/bin/env bash
# Rolling-restart drill against the compose cluster: under a steady load, restart every
# container one by one (docker restart: SIGTERM, up to 30 s, then start), followers first and
# the leader last, each only once the previous one is ready again. A stopping leader hands its
# leadership to a caught-up follower first, so the goal is zero failed sends. Reports failed
# sends, ack latency during the roll, and the checker's verdict.
#
#   scripts/drill-rolling-restart.sh
. "$(dirname "$0")/drill-lib.sh"

cluster_up
trap cluster_down EXIT
name="rolling-$(date +%s)"
say "--- rolling restart under load ($name)"
start_load "$name" 60
sleep 3
leader=$(leader_id)
[ -n "$leader" ] || die "no leader"
order="$(for n in 0 1 2; do [ "$n" = "$leader" ] || printf "%s " "$n"; done)$leader"
for node in $order; do
  started=$(now_ms)
  docker restart -t 30 "raftmq-$node" >/dev/null
  wait_ready "$node" 60
  say "node $node restarted and ready in $(($(now_ms) - started)) ms (leader now: node $(leader_id))"
  sleep 2
done
say "every node restarted; letting the load finish"
wait "$LOAD_PID" || die "the load generator failed: $(tail -5 "$OUT/$name.progress")"
check "$name"
summary="$OUT/$name.json"
failed=$(field "$summary" 'd["failed"]')
echo
echo "restart order: $order (leader $leader last)"
echo "sends: $(field "$summary" 'd["attempted"]') attempted, $(field "$summary" 'd["acked"]') acknowledged, $failed failed"
echo "ack latency ms: p50 $(field "$summary" 'd["latency_ms"]["p50"]'), p99 $(field "$summary" 'd["latency_ms"]["p99"]'), max $(field "$summary" 'd["latency_ms"]["max"]')"
echo "longest time without an ack: $(field "$summary" 'd["longest_gap_ms"]') ms"
echo "lost: $(lost_of "$name") (checker: clean, replicas identical)"
[ "$failed" = 0 ] || die "$failed sends failed during the roll (goal: none)"
