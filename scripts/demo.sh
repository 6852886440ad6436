#!/usr/bin/env bash
# Sets everything up, runs the demo server on uvpy, then a quick side-by-side
# comparison with uvloop and stock asyncio.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python examples/demo_server.py --requests 2000
.venv/bin/python bench/run.py --quick
