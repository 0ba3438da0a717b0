#!/usr/bin/env bash
# Shared set-up for scripts/demo.sh and scripts/test.sh: a virtual environment in .venv with
# the package installed, and (Linux) the OpenBLAS that makes MLX's CPU matmuls ~25x faster.
# Usage: source scripts/setup_env.sh [extras]   e.g. "test"
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
EXTRAS="${1:-}"

if [ "$(uname -s)" = "Linux" ] && ! ls /usr/lib/*-linux-gnu/libopenblas.so.0 >/dev/null 2>&1 \
   && ! ls /usr/lib64/libopenblas.so.0 >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "== installing OpenBLAS (Debian/Ubuntu libopenblas0-pthread)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas0-pthread >/dev/null
  elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then
    echo "== installing OpenBLAS with sudo (libopenblas0-pthread)"
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas0-pthread >/dev/null
  else
    echo "!! no OpenBLAS found and cannot install it: MLX will use its slow reference BLAS" >&2
  fi
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
if [ -n "$EXTRAS" ]; then
  python -m pip install -q -e ".[${EXTRAS}]"
else
  python -m pip install -q -e .
fi
