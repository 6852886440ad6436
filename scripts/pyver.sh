#!/usr/bin/env bash
# Builds and tests uvpy on another CPython, inside a throwaway Debian chroot:
#
#   scripts/pyver.sh 3.13      # Debian trixie's python3.13
#   scripts/pyver.sh 3.14      # Debian sid's python3.14
#
# The host (Debian bookworm, Python 3.11) runs the full suite, sanitizers and
# integration tests; this script answers one question for a newer CPython:
# does uvpy build and pass its own suite there. Stages, each timed:
#
#   1. debootstrap the Debian suite that ships python3.X (minbase), from the
#      mirror the host's apt uses, and apt-get the build dependencies;
#   2. copy the working tree (tracked and untracked files, not ignored ones)
#      into it, and make a venv with python3.X and the build tools from the
#      index the host's pip uses;
#   3. build and run the C++ core's Catch2 tests (plain: the sanitizer builds
#      run on the host only);
#   4. install uvpy (editable) and its test extras into the venv;
#   5. run tests/python on libuv (uvpy and stock asyncio), then its uvpy half
#      on io_uring where io_uring works. The CPython conformance tests come
#      from that Python's own test package (libpython3.X-testsuite).
#
# Stages 1 and 2 mostly wait on the network; 3 to 5 want the CPUs. With
# UVPY_CHROOT_GATE=FILE the script waits between them until FILE exists, so
# a caller (scripts/test.sh) can have the chroots made while its own
# CPU-bound stages run, and start the builds when those are done.
#
# Rules:
#  1. Nothing is cached: every run starts from an empty directory under
#     $UVPY_CHROOT_TMP (default /tmp) and deletes it at the end, so a run
#     depends on nothing a previous one left. UVPY_CHROOT_KEEP=1 keeps it
#     (and prints where) for debugging.
#  2. Every mount made here is undone by the EXIT trap, innermost first, and
#     the directory is removed only after they are all gone (rm -rf must
#     never walk into the host's /proc, /dev or /sys).
#  3. Any failing stage fails the script; pytest's exit status 5 (nothing
#     collected) counts as a failure.
#  4. Needs root (debootstrap, chroot, mount).
#  5. SIGTERM, SIGINT or SIGHUP ends the script through the same EXIT trap
#     (rule 2), so a caller that stops it (scripts/test.sh, when its own run
#     fails first) leaves no mount behind.
#  6. pytest's per-test limit (pyproject.toml, pytest-timeout) is a hang
#     guard: a test that hangs on a newer CPython ends the run with every
#     thread's stack instead of stalling CI.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

PYVER="${1:?usage: scripts/pyver.sh 3.13|3.14 [pytest args...]}"
shift
case "$PYVER" in
  3.13) SUITE=trixie ;;
  3.14) SUITE=sid ;;
  *) echo "pyver.sh: no Debian suite known for Python $PYVER" >&2; exit 2 ;;
esac
PY="python$PYVER"
[ "$(id -u)" -eq 0 ] || { echo "pyver.sh: needs root (debootstrap, chroot)" >&2; exit 2; }
command -v debootstrap >/dev/null || {
  echo "== installing debootstrap"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}

# The Debian mirror the host's apt uses (deb822 or one-line sources), unless
# UVPY_DEBIAN_MIRROR names one.
host_mirror() {
  local uri
  uri="$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources /dev/null | awk '{print $2}' |
         grep -E '/debian/?$' | head -n1)"
  [ -n "$uri" ] || uri="$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list /dev/null |
         awk '{print $2}' | grep -E '/debian/?$' | head -n1)"
  echo "${uri:-http://deb.debian.org/debian}"
}
MIRROR="${UVPY_DEBIAN_MIRROR:-$(host_mirror)}"

# C++ toolchain and libraries as scripts/setup.sh installs them on the host,
# plus the interpreter, its headers, venv and its own test package
# (test.test_asyncio, which the conformance tests bind). Not catch2: Debian
# ships Catch2 v3 from trixie on and tests/cpp uses v2's single header, which
# is copied in from the host's catch2 package (setup.sh installs it).
PACKAGES=(
  "$PY" "$PY-dev" "$PY-venv" "libpython$PYVER-testsuite"
  g++ cmake ninja-build pkg-config libuv1-dev liburing-dev libssl-dev ca-certificates git
)
CATCH2_HEADER=/usr/include/catch2/catch.hpp
[ -f "$CATCH2_HEADER" ] || { echo "pyver.sh: $CATCH2_HEADER missing: run scripts/setup.sh" >&2; exit 2; }

T0=$SECONDS
stage() { echo "== [$PY] $* [$((SECONDS - T0))s]"; }

ROOT="$(mktemp -d "${UVPY_CHROOT_TMP:-/tmp}/uvpy-$SUITE.XXXXXX")"
chmod 755 "$ROOT"  # it is the chroot's /: apt's unprivileged user must get in
MOUNTS=()
cleanup() {
  local rc=$? i
  rm -f "$ROOT.debootstrap.log"
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    umount -l "${MOUNTS[i]}" 2>/dev/null || true
  done
  if [ "${UVPY_CHROOT_KEEP:-0}" = 1 ]; then
    echo "== [$PY] chroot kept in $ROOT (mounts undone)"
  elif ! findmnt -rn -o TARGET | grep -qF "$ROOT"; then
    rm -rf --one-file-system "$ROOT"
  else
    echo "pyver.sh: $ROOT still has mounts; not removing it" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
trap 'exit 129' HUP
bind() {  # bind SOURCE TARGET-in-root
  mkdir -p "$ROOT$2"
  mount --bind "$1" "$ROOT$2"
  MOUNTS+=("$ROOT$2")
}

stage "debootstrap $SUITE from $MIRROR"
debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" >"$ROOT.debootstrap.log" 2>&1 || {
  tail -n 30 "$ROOT.debootstrap.log" >&2; exit 1
}
rm -f "$ROOT.debootstrap.log"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
bind /proc /proc
bind /sys /sys
bind /dev /dev
bind /dev/pts /dev/pts
mkdir -p "$ROOT/dev/shm"  # /dev is the host's: /dev/shm (multiprocessing) is there

in_root() { chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
  LANG=C.UTF-8 TERM=dumb DEBIAN_FRONTEND=noninteractive "$@"; }

# A mirror that is a dated snapshot serves sid's Release file past its
# Valid-Until date; the signature is still checked.
stage "apt-get install ${PACKAGES[*]}"
in_root apt-get -o Acquire::Check-Valid-Until=false update -qq
in_root apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
mkdir -p "$ROOT/usr/include/catch2"
cp "$CATCH2_HEADER" "$ROOT/usr/include/catch2/"

stage "copy the working tree to /src"
mkdir -p "$ROOT/src"
git ls-files -z --cached --others --exclude-standard |
  tar --null -T - --ignore-failed-read -cf - | tar -C "$ROOT/src" -xf -

# pip inside the chroot uses the index the host's pip uses, and trusts
# the certificates the host's pip trusts (a proxy's CA may be among them);
# the host's local file:// indexes are not reachable there and are left out.
PIP_ENV=(PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180)
pip_setting() {  # pip_setting ENV_NAME CONFIG_KEY
  local v="${!1:-}"
  [ -n "$v" ] || v="$(python3 -m pip config list 2>/dev/null | sed -n "s/^global\.$2='\(.*\)'\$/\1/p" | head -n1)"
  echo "$v"
}
index="$(pip_setting PIP_INDEX_URL index-url)"
[[ "$index" == http* ]] && PIP_ENV+=("PIP_INDEX_URL=$index")
cert="$(pip_setting PIP_CERT cert)"
if [ -f "$cert" ]; then
  cp "$cert" "$ROOT/etc/uvpy-pip-ca.crt"
  PIP_ENV+=(PIP_CERT=/etc/uvpy-pip-ca.crt)
fi

stage "venv with $PY; pip install the build tools"
in_root "${PIP_ENV[@]}" /bin/sh -ec "$PY -m venv /venv
  /venv/bin/pip install -q 'scikit-build-core>=0.10' 'pybind11>=2.12'"

if [ -n "${UVPY_CHROOT_GATE:-}" ]; then
  stage "waiting for $UVPY_CHROOT_GATE"
  while [ ! -e "$UVPY_CHROOT_GATE" ]; do sleep 1; done
fi

stage "C++ core: Catch2 (plain)"
in_root /bin/sh -ec "cd /src
  cmake -S . -B build/cpp -G Ninja -DUVPY_BUILD_PYTHON=OFF -DUVPY_BUILD_TESTS=ON >/dev/null
  cmake --build build/cpp -j $(nproc)
  ctest --test-dir build/cpp --output-on-failure"

stage "pip install -e .[test]"
in_root "${PIP_ENV[@]}" /bin/sh -ec "cd /src
  /venv/bin/pip install -q --no-build-isolation -e '.[test]'
  /venv/bin/python -c 'import sys, uvpy, uvpy._uvpy as m; print(\"uvpy\", uvpy.__version__, \"on Python\", sys.version.split()[0], \"native TLS:\", m._tls_status())'"

# Exit status 5 (no tests collected) is non-zero: set -e fails on it.
stage "Python: pytest on libuv (uvpy and stock asyncio)"
in_root UVPY_BACKEND=libuv /bin/sh -ec 'cd /src && exec /venv/bin/python -m pytest tests/python -q -p no:cacheprovider -rs "$@"' sh "$@"

stage "Python: pytest on io_uring (the uvpy half)"
if in_root /venv/bin/python -c 'import uvpy; uvpy.new_event_loop("io_uring").close()' 2>/dev/null; then
  in_root UVPY_BACKEND=io_uring /bin/sh -ec 'cd /src && exec /venv/bin/python -m pytest tests/python -q -p no:cacheprovider --uvpy-only "$@"' sh "$@"
else
  echo "SKIPPED: io_uring cannot run here"
fi
stage "done"
