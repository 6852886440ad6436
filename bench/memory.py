"""Memory per idle connection (issue #6): what a server on this loop pays, in
resident memory, for each accepted connection that sits idle.

Workload (bytes per connection, LOWER is better):

  idle_conns  The workload process runs `loop.create_server` with a trivial
              Protocol that keeps its transport and does nothing. A client
              subprocess (plain blocking stdlib sockets: its memory is not
              ours) first opens a few warm-up connections, so the first-use
              costs (transport types, buffers, allocator arenas) land before
              the baseline; then the server's RSS is read (VmRSS), the client
              opens N more (default 10,000; --quick 1,000) and holds them,
              and once the server has accepted all N the RSS is read again.
              Headline: (RSS after - RSS before) / N in bytes. The JSON line
              also has rss_before_kb, rss_after_kb, peak_rss_kb (ru_maxrss)
              and open_s (seconds to open and accept the N).

Kernel socket memory is not in RSS: this is the loop's own cost (transport,
protocol, handles, buffers) per connection. RLIMIT_NOFILE is raised as far as
the hard limit allows (the client inherits it); if that is below what N
needs, the cell is skipped with the reason.

Run one directly:  python bench/memory.py --loop uvpy --workload idle_conns --n 1000
"""
import asyncio
import gc
import resource
import subprocess
import sys
import time

from _harness import Skip, Workload, check, workload_main

WARM = 64          # connections opened before the baseline
SPARE_FDS = 64     # for everything else the processes have open
BATCH = 500        # the client reports after each batch (progress, not timing)

CLIENT = r"""
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
held = []
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "open":
        for _ in range(int(arg)):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.connect((host, port))
            held.append(s)
    elif cmd == "close":
        break
for s in held:
    s.close()
"""


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise Skip("no VmRSS in /proc/self/status (Linux only)")


def _raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need or soft == resource.RLIM_INFINITY:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        raise Skip(f"RLIMIT_NOFILE hard limit is {hard}, {need} needed for "
                   f"{need - WARM - SPARE_FDS} connections (raise it: ulimit -Hn)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def idle_conns(loop, n):
    _raise_nofile(n + WARM + SPARE_FDS)
    transports = []
    accepted = 0

    class Idle(asyncio.Protocol):
        def connection_made(self, transport):
            nonlocal accepted
            accepted += 1
            transports.append(transport)

    async def until_accepted(target, proc, timeout):
        deadline = time.monotonic() + timeout
        while accepted < target:
            if proc.poll() is not None:
                raise RuntimeError(f"the client exited ({proc.returncode}) after "
                                   f"{accepted} of {target} connections")
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {accepted} of {target} connections accepted "
                                   f"after {timeout:.0f}s")
            await asyncio.sleep(0.005)

    def tell(proc, line):
        proc.stdin.write(line + "\n")
        proc.stdin.flush()

    async def main():
        server = await loop.create_server(Idle, "127.0.0.1", 0, backlog=4096)
        host, port = server.sockets[0].getsockname()[:2]
        proc = subprocess.Popen([sys.executable, "-c", CLIENT, host, str(port)],
                                stdin=subprocess.PIPE, text=True)
        try:
            tell(proc, f"open {WARM}")
            await until_accepted(WARM, proc, 30)
            await asyncio.sleep(0.02)
            gc.collect()
            before = _rss_kb()
            t0 = time.perf_counter()
            left = n
            while left:  # in batches, so a stuck client is noticed early
                k = min(BATCH, left)
                tell(proc, f"open {k}")
                await until_accepted(WARM + n - left + k, proc, 30 + k / 100)
                left -= k
            open_s = time.perf_counter() - t0
            await asyncio.sleep(0.02)  # let any per-connection follow-up run
            gc.collect()
            after = _rss_kb()
            check(accepted == WARM + n, f"{accepted} accepted, expected {WARM + n}")
            tell(proc, "close")
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for t in transports:
                t.close()
            server.close()
            await asyncio.sleep(0)
        return n, {"value": (after - before) * 1024 / n, "rss_before_kb": before,
                   "rss_after_kb": after,
                   "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                   "open_s": open_s, "connections": n}

    return main()


WORKLOADS = [
    Workload("idle_conns", idle_conns, n=10_000, quick_n=1_000,
             unit="bytes/connection (lower is better)", lower_is_better=True),
]

if __name__ == "__main__":
    raise SystemExit(workload_main(WORKLOADS))
