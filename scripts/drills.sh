#!/usr/bin/env bash
# Every drill against the compose cluster, one after another (about 4 minutes); used by
# scripts/test.sh. Needs Docker, the built binaries (target/debug/raftmq and chaos) and
# builds the image when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
for drill in kill rolling-restart replace-node; do
  echo "=== drill: $drill"
  "scripts/drill-$drill.sh"
done
