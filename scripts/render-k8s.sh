#!/usr/bin/env bash
# Render deploy/k8s for a group of N replicas (3 or 5; any odd number >= 3 works): the
# StatefulSet's replica count and the member list in the ConfigMap change together.
#
#   scripts/render-k8s.sh 5 > raftmq-5.yaml           # one multi-document YAML
#   scripts/render-k8s.sh 5 out/                      # or one file per manifest in out/
set -euo pipefail
cd "$(dirname "$0")/.."
replicas="${1:-}"
if ! [[ "$replicas" =~ ^[0-9]+$ ]] || [ "$replicas" -lt 3 ] || [ $((replicas % 2)) -ne 1 ]; then
  echo "usage: $0 REPLICAS [OUTDIR]  (REPLICAS: an odd number, at least 3; an even count tolerates no more failures than one fewer)" >&2
  exit 2
fi
python3 - "$replicas" "${2:-}" <<'PY'
import os, re, sys

replicas, outdir = int(sys.argv[1]), sys.argv[2]
src = "deploy/k8s"
files = ["configmap.yaml", "service-headless.yaml", "service-client.yaml", "statefulset.yaml", "pdb.yaml"]
members = "\n".join(
    f'    [[members]]\n    id = {i}\n    raft_addr = "raftmq-{i}.raftmq:9091"\n    client_addr = "raftmq-{i}.raftmq:8081"\n'
    for i in range(replicas)
).rstrip("\n").replace("\n\n", "\n\n")
rendered = {}
for name in files:
    text = open(os.path.join(src, name)).read()
    if name == "configmap.yaml":
        text, n = re.subn(r"(    # members: begin[^\n]*\n).*?(    # members: end)",
                          lambda m: m.group(1) + members + "\n" + m.group(2), text, flags=re.S)
        assert n == 1, "member markers not found in configmap.yaml"
    if name == "statefulset.yaml":
        text, n = re.subn(r"(?m)^  replicas: \d+$", f"  replicas: {replicas}", text)
        assert n == 1, "replicas not found in statefulset.yaml"
    rendered[name] = text
if outdir:
    os.makedirs(outdir, exist_ok=True)
    for name, text in rendered.items():
        open(os.path.join(outdir, name), "w").write(text)
else:
    sys.stdout.write("---\n".join(rendered.values()))
PY
