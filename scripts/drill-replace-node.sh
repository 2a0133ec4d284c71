#!/usr/bin/env bash
# Replace-a-node drill against the compose cluster: a follower's container and its volume are
# deleted while the group takes writes, and the node comes back empty under its old name (as a
# StatefulSet pod whose volume was lost). It must detect the empty disk, rejoin as a fresh
# replica, and end with every acknowledged message, identical to the others.
#
#   scripts/drill-replace-node.sh
. "$(dirname "$0")/drill-lib.sh"

cluster_up
trap cluster_down EXIT
name="replace-$(date +%s)"
say "--- replace a follower's disk under load ($name)"
start_load "$name" 25
sleep 5
leader=$(leader_id)
# The first follower, picked without a pipe: under pipefail, `... | head -n 1` can kill the
# script with SIGPIPE when head exits before the loop's last echo.
victim=
for n in 0 1 2; do
  if [ "$n" != "$leader" ]; then victim=$n; break; fi
done
say "deleting node $victim's container and volume (node $leader leads)"
docker rm -f "raftmq-$victim" >/dev/null
docker volume rm "raftmq_data-$victim" >/dev/null
sleep 5
started=$(now_ms)
"${COMPOSE[@]}" up -d "raftmq-$victim" >/dev/null 2>&1 || die "could not recreate raftmq-$victim"
wait_ready "$victim" 120
say "node $victim is back and ready after $(($(now_ms) - started)) ms"
docker logs "raftmq-$victim" 2>&1 | grep "new data dir" >/dev/null || die "node $victim did not notice its empty disk"
wait "$LOAD_PID" || die "the load generator failed: $(tail -5 "$OUT/$name.progress")"
check "$name"
summary="$OUT/$name.json"
echo
echo "sends: $(field "$summary" 'd["attempted"]') attempted, $(field "$summary" 'd["acked"]') acknowledged, $(field "$summary" 'd["failed"]') failed"
grep '"node"' "$OUT/$name.check" | python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    print("  %s: %d stored, %d lost, %d duplicated" % (r["node"], r["stored"], r["lost"], r["duplicated"]))'
echo "node $victim caught up completely; replicas identical (checker: clean)"
