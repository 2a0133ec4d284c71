#!/usr/bin/env bash
# Validate the Kubernetes manifests, rendered for 3 and 5 replicas, against the Kubernetes
# API schemas (kubernetes-validate from PyPI, which ships the schemas: no cluster needed),
# and check the rules the schemas cannot: replicas odd and equal to the member list, the
# disruption budget never allowing a lost quorum.
set -euo pipefail
cd "$(dirname "$0")/.."
k8s_version="${K8S_VERSION:-1.30.0}"
venv=target/k8s-venv
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  echo "=== installing kubernetes-validate into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "kubernetes-validate==1.37.0"
fi
for replicas in 3 5; do
  out="target/k8s/$replicas"
  rm -rf "$out"
  scripts/render-k8s.sh "$replicas" "$out"
  echo "=== $replicas replicas: schema validation (Kubernetes $k8s_version, strict)"
  "$venv/bin/kubernetes-validate" --strict --kubernetes-version "$k8s_version" "$out"/*.yaml
  "$venv/bin/python" - "$out" "$replicas" <<'PY'
import sys, tomllib, yaml
out, replicas = sys.argv[1], int(sys.argv[2])
load = lambda name: yaml.safe_load(open(f"{out}/{name}"))
sts, pdb, cm = load("statefulset.yaml"), load("pdb.yaml"), load("configmap.yaml")
config = tomllib.loads(cm["data"]["raftmq.toml"])
ids = sorted(m["id"] for m in config["members"])
assert sts["spec"]["replicas"] == replicas, "replica count"
assert ids == list(range(replicas)), f"members {ids} do not match {replicas} replicas"
assert replicas % 2 == 1, "an even replica count"
unavailable = pdb["spec"]["maxUnavailable"]
assert isinstance(unavailable, int) and 1 <= unavailable <= (replicas - 1) // 2, \
    f"maxUnavailable {unavailable} could lose the quorum of {replicas}"
assert sts["spec"]["podManagementPolicy"] == "Parallel"
probes = sts["spec"]["template"]["spec"]["containers"][0]
assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
print(f"    ok: {replicas} replicas, members {ids}, maxUnavailable {unavailable}, probes /healthz /readyz")
PY
done
