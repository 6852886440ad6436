"""Subprocesses: spawning children and moving bytes through their pipes, with
asyncio.create_subprocess_exec and asyncio.subprocess.Process, the API
applications use.

Workloads:

  spawn      Spawn /bin/true and wait for its exit, N times, 4 children in
             flight at a time. Unit: processes/s; the JSON line also has
             p50_ms and p99_ms of spawn-to-exit per child.
  spawn_1g   The same from a parent holding 1 GiB of resident memory
             (allocated and touched before timing): a fork()-based spawner
             copies the page tables of all of it for every child, a vfork()
             or posix_spawn one does not. Unit: processes/s.
  cat        Write N MiB (64 at full size) into `cat`'s stdin while reading
             it back from its stdout, 256 KiB writes with drain(). The
             bytes read back are counted and checked. Unit: MiB/s.

Run one directly:  python bench/process.py --loop uvloop --workload spawn
"""
import asyncio
import shutil
import time

from _harness import Skip, Workload, check, workload_main

IN_FLIGHT = 4
TRUE = shutil.which("true") or "/bin/true"
CAT = shutil.which("cat") or "/bin/cat"

_ballast = None  # spawn_1g's resident gigabyte, kept for the whole run


async def _spawn_and_wait(latencies):
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(TRUE)
    code = await proc.wait()
    latencies.append(time.perf_counter() - t0)
    check(code == 0, f"/bin/true exited with {code}")


def spawn(loop, n):
    latencies = []

    async def worker(count):
        for _ in range(count):
            await _spawn_and_wait(latencies)

    async def main():
        share, extra = divmod(n, IN_FLIGHT)
        await asyncio.gather(*(worker(share + (i < extra)) for i in range(IN_FLIGHT)))
        check(len(latencies) == n, f"{len(latencies)} of {n} children finished")
        lat = sorted(latencies)
        return n, {"p50_ms": lat[len(lat) // 2] * 1e3, "p99_ms": lat[int(len(lat) * 0.99)] * 1e3}

    return main()


def spawn_1g(loop, n):
    global _ballast
    try:
        _ballast = bytearray(1 << 30)
    except MemoryError:
        raise Skip("no room for 1 GiB of ballast") from None
    for i in range(0, len(_ballast), 4096):  # resident, not just reserved
        _ballast[i] = 1
    return spawn(loop, n)


def cat(loop, n):
    chunk = bytes(range(256)) * 1024  # 256 KiB
    total = n * (1 << 20)

    async def main():
        proc = await asyncio.create_subprocess_exec(
            CAT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)

        async def feed():
            sent = 0
            while sent < total:
                proc.stdin.write(chunk)
                sent += len(chunk)
                await proc.stdin.drain()
            proc.stdin.close()

        async def drain_out():
            got = 0
            while True:
                data = await proc.stdout.read(1 << 20)
                if not data:
                    return got
                got += len(data)

        _, got = await asyncio.gather(feed(), drain_out())
        code = await proc.wait()
        check(got == total and code == 0, f"cat echoed {got} of {total} bytes, exit {code}")
        return n

    return main()


WORKLOADS = [
    Workload("spawn", spawn, n=2000, quick_n=300, unit="processes/s"),
    Workload("spawn_1g", spawn_1g, n=500, quick_n=100, unit="processes/s", in_quick=False),
    Workload("cat", cat, n=64, quick_n=16, unit="MiB/s"),
]

if __name__ == "__main__":
    raise SystemExit(workload_main(WORKLOADS))
