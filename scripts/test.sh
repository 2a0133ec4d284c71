#!/usr/bin/env bash
# Build raftmq once and run every test suite from that build: unit and property tests,
# RocksDB storage tests, openraft's storage conformance suite, and the integration tests that
# start real three-node clusters and kill their leaders, including the official RocketMQ 5
# clients (the Rust crate, and the Python package in a virtualenv made here). Then validate the
# Kubernetes manifests and run the failover drills against a three-container compose cluster
# (the image is built here too; skip both with RAFTMQ_SKIP_DRILLS=1).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh

ensure_build_deps
ensure_chaos_deps
use_cached_rocksdb
scripts/python-env.sh

# One build, never rebuilt piecemeal here (incremental compilation is off in
# .cargo/config.toml: its caches would only take disk).
report_free_space "$PWD"

echo "=== building (tests and the raftmq binary)"
start=$(date +%s)
cargo build --workspace --all-targets
echo "build took $(( $(date +%s) - start ))s; target/ holds $(du -sh target | cut -f1)"
keep_built_rocksdb

if cargo nextest --version >/dev/null 2>&1; then
  runner=(cargo nextest run --workspace --no-fail-fast)
else
  runner=(cargo test --workspace --no-fail-fast)
fi
echo "=== running tests: ${runner[*]}"
"${runner[@]}"

if [ "${RAFTMQ_SKIP_DRILLS:-0}" != 1 ]; then
  echo "=== Kubernetes manifests"
  scripts/validate-k8s.sh
  echo "=== container image and drills"
  scripts/build-image.sh
  scripts/drills.sh
fi
