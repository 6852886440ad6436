#!/usr/bin/env bash
# Sets everything up, runs the demo server on uvpy, then a quick side-by-side
# comparison (python -m uvpy.bench --quick: uvpy on each backend, uvloop, rloop,
# stock asyncio; about a minute; writes bench/results/quick.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python examples/demo_server.py --requests 2000
.venv/bin/python -m uvpy.bench --quick
