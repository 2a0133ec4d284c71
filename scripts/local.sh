#!/usr/bin/env bash
# Build raftmq and start a local three-node broker group on 127.0.0.1 (client ports 8081-8083).
# Extra arguments go to `raftmq local` (for example --dir /tmp/rmq or --flush async).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh

ensure_build_deps
use_cached_rocksdb
echo "=== building raftmq (the first build compiles RocksDB: 10-15 minutes on 2 cores)"
cargo build --bin raftmq
keep_built_rocksdb
echo "=== raftmq is at target/debug/raftmq; add it to PATH for the commands below:"
echo "    export PATH=\"$PWD/target/debug:\$PATH\""
exec target/debug/raftmq local "$@"
