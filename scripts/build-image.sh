#!/usr/bin/env bash
# Build the raftmq container image (deploy/Dockerfile) on a machine that cannot pull images.
#
#   scripts/build-image.sh [TAG]        (default tag: raftmq:dev)
#
# The Dockerfile starts FROM debian:bookworm-slim. When that image is not present locally it
# is made here: a minimal Debian root with debootstrap (from Debian's package mirror, which is
# reachable where registries are not), imported under that name. The image then gets the
# raftmq binary the test build produced (RAFTMQ_BIN, default target/debug/raftmq; built if
# missing) and deploy/raftmq.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

tag="${1:-raftmq:dev}"
base="debian:bookworm-slim"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
binary="${RAFTMQ_BIN:-target/debug/raftmq}"

step() { echo "=== $*"; }
elapsed() { echo "    done in $(($(date +%s) - $1))s"; }

command -v docker >/dev/null || { echo "docker is missing: install Docker Engine" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "the Docker daemon is not reachable (is it running?)" >&2; exit 1; }

if docker image inspect "$base" >/dev/null 2>&1; then
  step "base image $base is present"
else
  step "making the base image $base with debootstrap (no registry needed)"
  start=$(date +%s)
  if ! command -v debootstrap >/dev/null; then
    [ "$(id -u)" = 0 ] || { echo "debootstrap is missing: sudo apt-get install debootstrap" >&2; exit 1; }
    echo "    installing debootstrap"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  fi
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase bookworm "$root" "$mirror" >/dev/null
  # What a slim image leaves out: package lists, docs, man pages, locales.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
         "$root"/usr/share/locale/* "$root"/var/cache/apt/*.bin
  tar -C "$root" -c . | docker import - "$base" >/dev/null
  rm -rf "$root"
  trap - EXIT
  elapsed "$start"
fi

if [ ! -x "$binary" ]; then
  step "building $binary"
  . scripts/deps.sh
  ensure_build_deps
  use_cached_rocksdb
  cargo build --bin raftmq
  keep_built_rocksdb
fi

step "checking that $base has every shared library raftmq needs"
needed=$(ldd "$binary" | awk '/=>/ {print $1}' | sort -u)
missing=""
for lib in $needed; do
  if ! docker run --rm "$base" sh -c "ls /lib/x86_64-linux-gnu/$lib /usr/lib/x86_64-linux-gnu/$lib" 2>/dev/null | grep . >/dev/null; then
    missing="$missing $lib"
  fi
done
[ -z "$missing" ] || { echo "the base image lacks:$missing" >&2; exit 1; }
echo "    ok: $(echo $needed | tr '\n' ' ')"

step "building $tag"
start=$(date +%s)
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$binary" "$context/raftmq"
strip "$context/raftmq" 2>/dev/null || true
cp deploy/raftmq.toml "$context/raftmq.toml"
docker build -q -f deploy/Dockerfile -t "$tag" "$context" >/dev/null
elapsed "$start"
echo "    $tag: $(docker image inspect "$tag" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}')"
