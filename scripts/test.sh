#!/usr/bin/env bash
# Sets everything up, then runs every test: the C++ core under Catch2 (plain,
# with ASan+UBSan, and with TSan; each ctest run covers both backends, the
# io_uring one reported as skipped where io_uring cannot run), then the Python
# suite (our tests on uvpy and stock asyncio, and CPython's own asyncio tests
# bound to both loops) on libuv, and its uvpy half again on io_uring; then the
# integration suite (tests/integration) the same two ways, against PostgreSQL
# and Redis started by scripts/services.sh. Last, scripts/pyver.sh builds and
# runs the C++ core's tests and tests/python the same two ways on each newer
# CPython named in UVPY_PYVERS ("3.13 3.14" when unset; set and empty, none),
# each in a fresh Debian chroot.
#
# The newer CPythons' runs overlap the host's: each pyver.sh starts at once in
# the background (its own process group, its output to a log), makes its
# chroot while the host's stages run (debootstrap, apt, pip: mostly network),
# and waits at its gate (UVPY_CHROOT_GATE); after the host's last stage the
# gate opens and they build and test side by side. Each one's stage lines
# and pytest summary are printed when it ends, its whole log if it failed;
# any failure fails this script. If this script ends early, its EXIT trap
# stops them (pyver.sh undoes its mounts on SIGTERM).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

export PATH="$PWD/.venv/bin:$PATH"
JOBS="$(nproc)"
stage() { echo "== $* [${SECONDS}s]"; }

PYVERS=(${UVPY_PYVERS-3.13 3.14})
PYVER_PIDS=()
services=""
pyver_dir="$(mktemp -d /tmp/uvpy-pyver.XXXXXX)"
cleanup() {
  local pid
  for pid in "${PYVER_PIDS[@]}"; do
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
  for pid in "${PYVER_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  [ -z "$services" ] || bash scripts/services.sh stop "$services"
  rm -rf "$pyver_dir"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
for pyver in "${PYVERS[@]}"; do
  stage "Python $pyver: making its Debian chroot in the background (log: $pyver_dir/$pyver.log)"
  UVPY_CHROOT_GATE="$pyver_dir/gate" setsid -w bash scripts/pyver.sh "$pyver" \
    >"$pyver_dir/$pyver.log" 2>&1 </dev/null &
  PYVER_PIDS+=("$!")
done

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

# Real programs (uvicorn, aiohttp, asyncpg, psycopg, redis, anyio, numpy) against
# throwaway PostgreSQL and Redis servers that live in $services and are
# stopped however this script ends. Under CI=true a test whose service is
# missing fails instead of skipping. --timeout (pytest-timeout) is a hang guard only.
stage "Integration: start PostgreSQL and Redis"
services="$(mktemp -d /tmp/uvpy-services.XXXXXX)"
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
services=""

if ((${#PYVERS[@]})); then
  stage "Python ${PYVERS[*]}: C++ core and tests/python in Debian chroots (scripts/pyver.sh), side by side"
  touch "$pyver_dir/gate"
fi
failed=()
for i in "${!PYVERS[@]}"; do
  pyver="${PYVERS[i]}" log="$pyver_dir/${PYVERS[i]}.log" rc=0
  wait "${PYVER_PIDS[i]}" || rc=$?
  if ((rc == 0)); then
    stage "Python $pyver: passed"
    grep -E '^== |^[0-9]+ (passed|failed)|^SKIPPED:|tests passed' "$log" || true
  else
    stage "Python $pyver: FAILED (scripts/pyver.sh exit $rc); its log:"
    cat "$log"
    failed+=("$pyver")
  fi
done
PYVER_PIDS=()
((${#failed[@]} == 0)) || { echo "FAILED on Python ${failed[*]}" >&2; exit 1; }
stage "done"
