#!/usr/bin/env bash
# Sets up a fresh Debian/Ubuntu machine for uvpy: system packages, a venv in
# .venv, and an editable build of the extension. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(build-essential pkg-config libuv1-dev liburing-dev catch2 libssl-dev git wrk)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "== installing system packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q -U pip
# Build tools first, so the editable build below can run without isolation
# (it rebuilds only what changed in build/).
.venv/bin/python -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" cmake ninja
echo "== building uvpy"
.venv/bin/python -m pip install -q --no-build-isolation -e ".[test,bench,integration]"
.venv/bin/python -c "import uvpy, sys; print('uvpy', uvpy.__version__, 'ready on Python', sys.version.split()[0])"
