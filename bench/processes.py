"""Process pools: Python code on every core, driven from the event loop.

uvpy runs uvpy.ProcessPool (results read by the loop from each worker's
socket); uvloop, rloop and stock asyncio run concurrent.futures'
ProcessPoolExecutor through loop.run_in_executor, the way applications use
it there (its default start method). Both have one worker per core unless a
workload says otherwise; pool start-up and a warm-up pass are not timed.

Workloads:

  cpu_par     A pure-Python countdown of 10^7 (N chunks of 250,000) on every
              worker. Unit: chunks/s.
  cpu_1w      The same on a one-worker pool: cpu_par / cpu_1w is the scaling.
  cpu_bare    The same chunks on as many plain processes, no pool and no
              loop in the way (the same for every contender), each taking
              the next chunk when it is done with one, as a pool's worker
              does (a fixed share each would wait for the slowest CPU): a
              reference for what the machine allowed cpu_par during the
              run, not a strict bound (it runs at other moments, and a VM's
              second core comes and goes). Unit: chunks/s.
  roundtrip   N sequential no-op jobs: the latency of one job. Headline: p50
              in microseconds, LOWER is better; the JSON line has p99_us.
  gather      N no-op jobs under one asyncio.gather. Unit: jobs/s.
  numpy64     A 64 MiB numpy array in and its double back, N times, one at a
              time. Unit: round trips/s (x 128 MiB moved each).
  lag         Every worker kept busy with countdown chunks while a 1 ms timer
              records how late it fires. Headline: p99 lateness in ms, LOWER
              is better; the JSON line has p50_ms and max_ms.

Run one directly:  python bench/processes.py --loop uvpy --workload roundtrip
"""
import asyncio
import os
import time

from _harness import Skip, Workload, check, timer_lag, workload_main

CHUNK = 250_000


def countdown(n):
    while n > 0:
        n -= 1
    return n


def noop():
    return None


def double(a):
    return a * 2


def _workers():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class _Pool:
    """One face for both pools: await pool.call(fn, *args)."""

    def __init__(self, loop, workers):
        self.loop = loop
        if type(loop).__module__.startswith("uvpy"):
            import uvpy

            self.pool = uvpy.ProcessPool(workers)
            self.call = self.pool.run
        else:
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(workers)
            self.call = lambda fn, *args: loop.run_in_executor(self.pool, fn, *args)
        self.workers = workers

    async def warm(self):
        await asyncio.gather(*(self.call(countdown, 1000) for _ in range(4 * self.workers)))

    async def close(self):
        if hasattr(self.pool, "aclose"):
            await self.pool.aclose()
        else:
            self.pool.shutdown()


def _cpu(loop, n, workers):
    async def main():
        pool = _Pool(loop, workers)
        await pool.warm()
        t0 = time.perf_counter()
        rs = await asyncio.gather(*(pool.call(countdown, CHUNK) for _ in range(n)))
        wall = time.perf_counter() - t0
        await pool.close()
        check(rs == [0] * n, "every chunk counted down")
        return n, {"value": n / wall}

    return main()


def cpu_par(loop, n):
    return _cpu(loop, n, _workers())


def cpu_1w(loop, n):
    return _cpu(loop, n, 1)


def _bare_child(conn, chunks):
    """Counts chunks down while there are any: one byte of the `chunks`
    pipe each (a one-byte read is atomic among readers), so the children
    share the work as they get the CPU, as a pool's workers do."""
    conn.send("ready")
    fd, done = chunks.fileno(), 0
    while os.read(fd, 1):
        countdown(CHUNK)
        done += 1
    conn.send(done)


def cpu_bare(loop, n):
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    workers = _workers()

    async def main():
        take, give = ctx.Pipe(duplex=False)  # the chunks, a byte each
        ends, procs = [], []
        for _ in range(workers):
            ours, theirs = ctx.Pipe()
            p = ctx.Process(target=_bare_child, args=(theirs, take))
            p.start()
            theirs.close()
            ends.append(ours)
            procs.append(p)
        take.close()
        for end in ends:
            check(end.recv() == "ready", "a child started")
        t0 = time.perf_counter()
        check(os.write(give.fileno(), b"c" * n) == n, "the chunks were handed out")
        give.close()  # the children read EOF once every chunk is taken
        done = [end.recv() for end in ends]
        wall = time.perf_counter() - t0
        for end in ends:
            end.close()
        for p in procs:
            p.join()
        check(sum(done) == n and all(p.exitcode == 0 for p in procs),
              "the children counted every chunk down")
        return n, {"value": n / wall}

    return main()


def roundtrip(loop, n):
    async def main():
        pool = _Pool(loop, _workers())
        await pool.warm()
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            await pool.call(noop)
            lat.append(time.perf_counter() - t0)
        await pool.close()
        lat.sort()
        return n, {"value": lat[len(lat) // 2] * 1e6, "p99_us": lat[int(len(lat) * 0.99)] * 1e6}

    return main()


def gather(loop, n):
    async def main():
        pool = _Pool(loop, _workers())
        await pool.warm()
        await asyncio.gather(*(pool.call(noop) for _ in range(n)))  # warm: steady state
        t0 = time.perf_counter()
        rs = await asyncio.gather(*(pool.call(noop) for _ in range(n)))
        wall = time.perf_counter() - t0
        await pool.close()
        check(len(rs) == n, "all jobs returned")
        return n, {"value": n / wall}

    return main()


def numpy64(loop, n):
    try:
        import numpy
    except ImportError:
        raise Skip("numpy is not installed") from None
    a = numpy.arange(8 << 20, dtype=numpy.uint64)  # 64 MiB

    async def main():
        pool = _Pool(loop, _workers())
        await pool.warm()
        await pool.call(double, a)
        t0 = time.perf_counter()
        for _ in range(n):
            back = await pool.call(double, a)
        wall = time.perf_counter() - t0
        await pool.close()
        check(back[-1] == a[-1] * 2 and back.nbytes == a.nbytes, "the array came back doubled")
        return n, {"value": n / wall}

    return main()


def lag(loop, n):
    """n: milliseconds to measure."""
    async def main():
        pool = _Pool(loop, _workers())
        await pool.warm()
        stop = False

        async def burner():
            while not stop:
                await pool.call(countdown, CHUNK // 10)

        burners = [asyncio.ensure_future(burner()) for _ in range(2 * pool.workers)]
        await asyncio.sleep(0.1)
        late = await timer_lag(n)
        stop = True
        await asyncio.gather(*burners)
        await pool.close()
        return n, late

    return main()


WORKLOADS = [
    Workload("cpu_par", cpu_par, n=40, quick_n=40, unit="chunks/s"),
    Workload("cpu_1w", cpu_1w, n=40, quick_n=20, unit="chunks/s"),
    Workload("cpu_bare", cpu_bare, n=40, quick_n=40, unit="chunks/s"),
    Workload("roundtrip", roundtrip, n=3000, quick_n=500, unit="us p50 round trip (lower is better)"),
    Workload("gather", gather, n=10_000, quick_n=5_000, unit="jobs/s"),
    Workload("numpy64", numpy64, n=10, quick_n=4, unit="round trips/s"),
    Workload("lag", lag, n=2000, quick_n=500, unit="ms p99 timer lag (lower is better)"),
]

if __name__ == "__main__":
    raise SystemExit(workload_main(WORKLOADS))
