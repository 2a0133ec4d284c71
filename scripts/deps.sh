# Sourced by the scripts in this folder: make sure the build's system dependencies are there.
# RocksDB's bindings are generated with bindgen, which needs libclang.

ensure_build_deps() {
  # libclang.so.N itself: libclang-cpp (a different library) may be present without it.
  # No `grep -q` behind a pipe: with pipefail, grep quitting early makes the writer fail.
  if ! ldconfig -p 2>/dev/null | grep -E 'libclang(-[0-9.]+)?\.so' >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "installing libclang (needed to build RocksDB's bindings)..."
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libclang-dev >/dev/null
    else
      echo "libclang is missing: install it (Debian/Ubuntu: sudo apt-get install libclang-dev) and rerun" >&2
      exit 1
    fi
  fi
  if ! command -v cargo >/dev/null; then
    echo "cargo is missing: install Rust 1.88 or newer from https://rustup.rs and rerun" >&2
    exit 1
  fi
}

# The chaos suite puts each node in its own network namespace (ip), cuts links with iptables
# and slows them with tc; its disk failures make ext4 images (mkfs.ext4, e2fsck) and find their
# loop devices (findmnt).
ensure_chaos_deps() {
  local missing=()
  command -v ip >/dev/null || missing+=(iproute2)
  command -v tc >/dev/null || missing+=(iproute2)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
  command -v e2fsck >/dev/null || missing+=(e2fsprogs)
  command -v findmnt >/dev/null || missing+=(util-linux)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]} (the chaos suite's network faults)..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "the chaos suite needs root and ${missing[*]} (Debian/Ubuntu: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
}

# Reuse a RocksDB static library that an earlier build on this machine kept (same crate
# version, features, optimisation level and, on x86-64, the CPU features of
# .cargo/config.toml); a cold RocksDB build takes 10-25 minutes.
rocksdb_cache_dir() {
  local cpu=""
  [ "$(uname -m)" = x86_64 ] && cpu="-x86-64-v2-pclmul"
  echo "${RAFTMQ_CACHE_DIR:-/var/cache/raftmq}/librocksdb-sys-0.19.0+11.8.1-lz4-zstd-O3$cpu"
}

use_cached_rocksdb() {
  local dir
  dir=$(rocksdb_cache_dir)
  if [ -f "$dir/librocksdb.a" ]; then
    echo "using the RocksDB library cached in $dir"
    export ROCKSDB_LIB_DIR="$dir" ROCKSDB_STATIC=1
  fi
}

keep_built_rocksdb() {
  [ -z "${ROCKSDB_LIB_DIR:-}" ] || return 0
  local dir built
  dir=$(rocksdb_cache_dir)
  built=$(ls -t target/debug/build/librocksdb-sys-*/out/librocksdb.a 2>/dev/null | head -n 1 || true)
  if [ -n "$built" ] && mkdir -p "$dir" 2>/dev/null; then
    cp "$built" "$dir/librocksdb.a.tmp" && mv "$dir/librocksdb.a.tmp" "$dir/librocksdb.a"
    echo "kept the RocksDB library in $dir for later builds"
  fi
}

# Say how much room the build and the tests have, and warn when it is likely too little: a
# cold build takes about 2.1 GB under target/ (3 GB more while RocksDB compiles without the
# cache), the test clusters and the container image up to 2 GB more. A build that runs out
# of space fails with compiler errors that do not name the cause plainly.
report_free_space() {
  local dir=$1 free_kb
  free_kb=$(df -Pk "$dir" | awk 'NR == 2 {print $4}')
  echo "free space under $dir: $((free_kb / 1024)) MiB"
  if [ "$free_kb" -lt $((6 * 1024 * 1024)) ]; then
    echo "warning: less than 6 GiB free under $dir; the build and the tests may run out of space" >&2
  fi
}
