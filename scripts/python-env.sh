#!/usr/bin/env bash
# Create the virtualenv that chaos-tests/tests/python_client.rs runs the official RocketMQ 5
# Python client from: target/python-venv with `rocketmq-python-client` pinned.
#
# Idempotent: when the venv already holds the pinned version it only says so and exits.
# Needs Python >= 3.10 (the client's dependencies do) and PyPI; as root on Debian/Ubuntu it
# installs python3-venv when `python3 -m venv` cannot create a venv.
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENT_VERSION=5.1.2
VENV=target/python-venv
PYTHON=${PYTHON:-python3}

# The venv is complete only after the last step; a half-done one is rebuilt.
marker="$VENV/.raftmq-rocketmq-python-client-$CLIENT_VERSION"
if [ -f "$marker" ] && [ -x "$VENV/bin/python" ] \
  && "$VENV/bin/python" -c 'import rocketmq' 2>/dev/null; then
  echo "python venv ready: $VENV (rocketmq-python-client $CLIENT_VERSION)"
  exit 0
fi

if ! command -v "$PYTHON" >/dev/null; then
  echo "$PYTHON is missing: install Python 3.10 or newer (Debian/Ubuntu: apt-get install python3 python3-venv)" >&2
  exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
  echo "$("$PYTHON" --version 2>&1) is too old: rocketmq-python-client's dependencies need Python 3.10 or newer" >&2
  exit 1
fi

# `python3 -m venv` needs ensurepip, which Debian ships separately in python3-venv
# (python3.X-venv).
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    minor=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    echo "installing python3-venv (python$minor-venv) so that $PYTHON can create a virtualenv..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      python3-venv "python$minor-venv" >/dev/null \
      || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        python3-venv >/dev/null
  else
    echo "$PYTHON cannot create a virtualenv: install python3-venv (Debian/Ubuntu: sudo apt-get install python3-venv) and rerun" >&2
    exit 1
  fi
fi

start=$(date +%s)
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
echo "creating $VENV with $("$PYTHON" --version 2>&1) ($(command -v "$PYTHON"))"
"$PYTHON" -m venv "$VENV"
echo "installing rocketmq-python-client==$CLIENT_VERSION from PyPI..."
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  "rocketmq-python-client==$CLIENT_VERSION"
"$VENV/bin/python" -c 'import rocketmq; from rocketmq import Producer, SimpleConsumer, PushConsumer'
touch "$marker"
echo "python venv ready: $VENV ($("$VENV/bin/python" --version 2>&1), rocketmq-python-client $CLIENT_VERSION) in $(( $(date +%s) - start ))s"
"$VENV/bin/python" -m pip list --disable-pip-version-check --format=freeze 2>/dev/null \
  | grep -iE '^(rocketmq-python-client|grpcio|protobuf|opentelemetry-(api|sdk))==' || true
