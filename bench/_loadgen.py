"""Server-side machinery for the network suites (echo.py, http.py).

* `binary()`: the native load generator, bench/loadgen/loadgen.c, compiled
  on first use with `cc -O2` into build/bench/loadgen (the repository's
  ignored build/ directory) and recompiled whenever the source is newer than
  the binary. `$CC` picks the compiler; `$UVPY_LOADGEN` names a prebuilt
  binary instead. Concurrent workload processes serialize the build on a
  lock file. `binary("echod")` builds the C echo server the same way, and
  `binary("echod_uring")` its io_uring twin (linked with -luring).
* `pin_server()` / `client_cpus()`: with `UVPY_BENCH_PIN=1` on a machine
  with 2+ CPUs, the server process is pinned to the first CPU and its load
  generator to the others, so the two never share a core and the server is
  not migrated mid-run. Off by default: on a machine shared with other work
  (the 2-core dev VMs) a pinned process cannot move off a busy core, and both
  sides then measured at half the throughput of unpinned runs.
* `CpuWindow`: the server process's own CPU time (getrusage RUSAGE_SELF,
  user and system) between two marks.
* `drive_echo()`: runs the load generator against a server already listening
  on this loop and returns its numbers, with the server's CPU time taken over
  exactly the generator's measured window (it prints "start"/"stop"; the
  marks are taken when the loop sees those lines).
* `skip(reason)`: the harness's skip contract (exit status 3 with
  {"skipped": reason}), for a workload that cannot run here.

Nothing here imports a loop: the workload process chose one already.
"""
from __future__ import annotations

import fcntl
import json
import os
import resource
import shutil
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
SOURCE_DIR = os.path.join(BENCH_DIR, "loadgen")
BUILD_DIR = os.path.join(REPO_ROOT, "build", "bench")
BACKLOG = 4096  # every server in these suites listens with this backlog


class Skipped(Exception):
    """This workload cannot run here (a tool is missing, the fd limit is too low)."""


def skip(reason: str):
    """Raise the harness's own Skip when it has one; otherwise Skipped (the
    suites' workload_main wrapper turns that into exit status 3 +
    {"skipped": reason})."""
    try:
        from _harness import Skip  # newer harness
    except ImportError:
        raise Skipped(reason) from None
    raise Skip(reason)


def binary(name: str = "loadgen") -> str:
    """Path of bench/loadgen/<name>.c's program, built (or rebuilt) when needed."""
    prebuilt = os.environ.get("UVPY_" + name.upper())
    if prebuilt:
        return prebuilt
    source = os.path.join(SOURCE_DIR, f"{name}.c")
    out = os.path.join(BUILD_DIR, name)
    if _fresh(out, source):
        return out
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        skip(f"no C compiler (cc) to build {os.path.relpath(source, REPO_ROOT)}")
    os.makedirs(BUILD_DIR, exist_ok=True)
    with open(os.path.join(BUILD_DIR, f"{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _fresh(out, source):  # another process built it while we waited
            return out
        tmp = f"{out}.{os.getpid()}.tmp"
        p = subprocess.run([cc, "-O2", "-pthread", "-o", tmp, source, *_LIBS.get(name, ())],
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"building {source} failed:\n{p.stderr}")
        os.replace(tmp, out)
    return out


_LIBS = {"echod_uring": ("-luring",)}  # what a program links beyond libc


def _fresh(path: str, source: str) -> bool:
    """path is newer than source and every header beside it (echod_common.h)."""
    deps = [source] + [os.path.join(SOURCE_DIR, f) for f in os.listdir(SOURCE_DIR)
                       if f.endswith(".h")]
    try:
        return os.path.getmtime(path) >= max(os.path.getmtime(d) for d in deps)
    except OSError:
        return False


# ------------------------------------------------------------------ pinning

def _allowed_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return list(range(os.cpu_count() or 1))


_ALLOWED = _allowed_cpus()  # read at import, before pin_server() narrows it


def _pinning() -> bool:
    return os.environ.get("UVPY_BENCH_PIN", "0") == "1" and len(_ALLOWED) >= 2


def server_cpu() -> int | None:
    """The server's CPU: the first allowed one (None: no pinning)."""
    return _ALLOWED[0] if _pinning() else None


def pin_server() -> int | None:
    """Pins this process to server_cpu(); returns it (None: not pinned)."""
    cpu = server_cpu()
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    return cpu


def client_cpus() -> list[int] | None:
    """CPUs for the load generator: the allowed ones but the server's."""
    return _ALLOWED[1:] if _pinning() else None


def raise_nofile(need: int) -> None:
    """Soft RLIMIT_NOFILE up to the hard limit; skip when even that is short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        skip(f"needs {need} file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


# ---------------------------------------------------------------- CPU time

class CpuWindow:
    """This process's user/system CPU seconds between start() and stop()."""

    def start(self) -> None:
        r = resource.getrusage(resource.RUSAGE_SELF)
        self._u0, self._s0, self._t0 = r.ru_utime, r.ru_stime, time.perf_counter()

    def stop(self) -> None:
        r = resource.getrusage(resource.RUSAGE_SELF)
        self.user_s = r.ru_utime - self._u0
        self.sys_s = r.ru_stime - self._s0
        self.wall_s = time.perf_counter() - self._t0

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    def extras(self, ops: int) -> dict:
        """The per-op CPU metrics every network workload reports."""
        per_op = (lambda s: s / ops * 1e6) if ops else (lambda s: None)
        return {
            "cpu_us_per_op": per_op(self.cpu_s),
            # The split: user time is the loop's (and Python's) own work;
            # system time is mostly the kernel's TCP path, the same for
            # every loop making the same calls.
            "user_us_per_op": per_op(self.user_s),
            "sys_us_per_op": per_op(self.sys_s),
            "user_s": self.user_s,
            "sys_s": self.sys_s,
            "server_util": self.cpu_s / self.wall_s if self.wall_s else None,
            "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        }


# ------------------------------------------------------------ child process

def preexec_pin(cpus):
    """A Popen preexec_fn that pins the child to cpus (None: no pinning)."""
    if cpus:
        return lambda: os.sched_setaffinity(0, cpus)
    return None


class LineReader:
    """Reads a child's stdout on the loop (add_reader: every contender has
    it) and hands each line to on_line; `done` resolves at end of file."""

    def __init__(self, loop, proc: subprocess.Popen, on_line):
        self.loop, self.proc, self.on_line = loop, proc, on_line
        self.fd = proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.buf = b""
        self.done = loop.create_future()
        loop.add_reader(self.fd, self._readable)

    def _readable(self):
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        if not data:
            self.loop.remove_reader(self.fd)
            if self.buf:
                self.on_line(self.buf.decode(errors="replace"))
            if not self.done.done():
                self.done.set_result(None)
            return
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        for line in lines:
            self.on_line(line.decode(errors="replace"))


def wait_rusage(proc: subprocess.Popen) -> float:
    """Reaps the child; returns its CPU seconds (user + system)."""
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return ru.ru_utime + ru.ru_stime


def loadgen_command(port: int | None, conns: int, size: int, duration: float,
                    warmup: float, reconnect: bool = False, unix_path: str | None = None,
                    verify: bool = False) -> list[str]:
    """The load generator's command line, pinned to client_cpus(). reconnect:
    every round trip on a fresh connection (loadgen -r); unix_path: connect
    to that Unix stream socket instead of 127.0.0.1:port (loadgen -U);
    verify: compare every echoed byte (loadgen -v: a mismatch is an error)."""
    target = ["-U", unix_path] if unix_path else ["-p", str(port)]
    cmd = [binary(), *target, "-c", str(conns), "-s", str(size),
           "-d", f"{duration:.3f}", "-w", f"{warmup:.3f}"]
    cmd += (["-r"] if reconnect else []) + (["-v"] if verify else [])
    cpus = client_cpus()
    if cpus:
        cmd += ["-a", ",".join(map(str, cpus))]
    return cmd


async def drive_echo(loop, port: int, conns: int, size: int, duration: float,
                     warmup: float, reconnect: bool = False,
                     command: list[str] | None = None) -> tuple[int, dict]:
    """Runs the load generator against 127.0.0.1:port; returns (round trips,
    extras) with the headline "value" = round trips/s over the window.
    command: another generator speaking loadgen's output protocol ("start",
    "stop", then one JSON line), e.g. bench/tls_client.py."""
    cmd = command or loadgen_command(port, conns, size, duration, warmup, reconnect)
    window = CpuWindow()
    result: dict = {}

    def on_line(line: str) -> None:
        line = line.strip()
        if line == "start":
            window.start()
        elif line == "stop":
            window.stop()
        elif line.startswith("{"):
            result.update(json.loads(line))

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    reader = LineReader(loop, proc, on_line)
    try:
        await reader.done
    finally:
        proc.stdout.close()
        client_cpu = wait_rusage(proc)
    client_wall = time.perf_counter() - t0
    if proc.returncode != 0 or "round_trips" not in result:
        raise RuntimeError(f"load generator exited {proc.returncode} without a result")
    rts = result["round_trips"]
    if rts == 0:
        raise RuntimeError("no round trip completed in the measured window")
    extras = window.extras(rts)
    extras.update({
        "value": result["round_trips_per_s"],
        "p50_us": result["p50_us"],
        "p99_us": result["p99_us"],
        "p999_us": result["p999_us"],
        "conns": conns,
        "size": size,
        "errors": result["errors"] + result["connect_errors"],
        "window_s": result["duration_s"],
        # The generator's share of one CPU over its whole run (connecting
        # and warm-up included): near 1.0 it may be the limit, not the server.
        "client_util": client_cpu / client_wall,
        "pinned": client_cpus() is not None,
    })
    return rts, extras


def main_with_skips(workload_main, workloads) -> int:
    """workload_main, with Skipped turned into the skip contract on a harness
    that does not know Skip yet (exit status 3 and {"skipped": reason})."""
    try:
        return workload_main(workloads)
    except Skipped as e:
        args = sys.argv
        name = args[args.index("--workload") + 1] if "--workload" in args else None
        loop = args[args.index("--loop") + 1] if "--loop" in args else None
        print(json.dumps({"workload": name, "loop": loop, "skipped": str(e)}))
        return 3
