#!/usr/bin/env bash
# Sets everything up, then runs every test: the C++ core under Catch2 (plain,
# with ASan+UBSan, and with TSan; each ctest run covers both backends, the
# io_uring one reported as skipped where io_uring cannot run), then the Python
# suite (our tests on uvpy and stock asyncio, and CPython's own asyncio tests
# bound to both loops) on libuv, and its uvpy half again on io_uring; then the
# integration suite (tests/integration) the same two ways, against PostgreSQL
# and Redis started by scripts/services.sh. Last, scripts/pyver.sh builds and
# runs the C++ core's tests and tests/python the same two ways on each newer
# CPython named in UVPY_PYVERS (e.g. "3.13 3.14"), each in a fresh Debian
# chroot. Unset, it runs none: tests/python's UDP tests still hang on 3.13.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

export PATH="$PWD/.venv/bin:$PATH"
JOBS="$(nproc)"
stage() { echo "== $* [${SECONDS}s]"; }

stage "C++ core: Catch2"
cmake -S . -B build/cpp -G Ninja -DUVPY_BUILD_PYTHON=OFF -DUVPY_BUILD_TESTS=ON >/dev/null
cmake --build build/cpp -j "$JOBS"
ctest --test-dir build/cpp --output-on-failure

stage "C++ core: Catch2 under ASan+UBSan"
cmake -S . -B build/asan -G Ninja -DUVPY_BUILD_PYTHON=OFF -DUVPY_BUILD_TESTS=ON -DUVPY_SANITIZE=ON \
  -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build/asan -j "$JOBS"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1 ctest --test-dir build/asan --output-on-failure

stage "C++ core: Catch2 under ThreadSanitizer (reactor wakeups, executor queues)"
cmake -S . -B build/tsan -G Ninja -DUVPY_BUILD_PYTHON=OFF -DUVPY_BUILD_TESTS=ON -DUVPY_TSAN=ON \
  -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build/tsan -j "$JOBS"
TSAN_OPTIONS=halt_on_error=1 ctest --test-dir build/tsan --output-on-failure

stage "Python: pytest on libuv (uvpy and stock asyncio)"
# pytest exits 5 when it collected no tests; set -e turns that into a failure.
UVPY_BACKEND=libuv python -m pytest tests/python -q -p no:cacheprovider -rs "$@"

uring=1
why="$(python -c 'import uvpy; uvpy.new_event_loop("io_uring").close()' 2>&1)" || uring=0

stage "Python: pytest on io_uring (the uvpy half; the stock loop already ran)"
if ((uring)); then
  UVPY_BACKEND=io_uring python -m pytest tests/python -q -p no:cacheprovider --uvpy-only "$@"
else
  echo "SKIPPED: io_uring cannot run here: ${why##*$'\n'}"
fi

# Real programs (uvicorn, aiohttp, asyncpg, redis, anyio, numpy) against
# throwaway PostgreSQL and Redis servers that live in $services and are
# stopped however this script ends. Under CI=true a test whose service is
# missing fails instead of skipping. --timeout (pytest-timeout) is a hang guard only.
stage "Integration: start PostgreSQL and Redis"
services="$(mktemp -d /tmp/uvpy-services.XXXXXX)"
trap 'bash scripts/services.sh stop "$services"' EXIT
bash scripts/services.sh start "$services"
# shellcheck source=/dev/null
source "$services/env"

stage "Integration: pytest on libuv (uvpy and stock asyncio)"
UVPY_BACKEND=libuv python -m pytest tests/integration -q -p no:cacheprovider -rfEs --timeout=300

stage "Integration: pytest on io_uring (the uvpy half)"
if ((uring)); then
  UVPY_BACKEND=io_uring python -m pytest tests/integration -q -p no:cacheprovider -rfEs --timeout=300 --uvpy-only
else
  echo "SKIPPED: io_uring cannot run here: ${why##*$'\n'}"
fi
bash scripts/services.sh stop "$services"
trap - EXIT

for pyver in ${UVPY_PYVERS-}; do
  stage "Python $pyver: C++ core and tests/python in a Debian chroot (scripts/pyver.sh)"
  bash scripts/pyver.sh "$pyver"
done
stage "done"
