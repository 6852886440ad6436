"""The executor: handing work to other cores and getting results back.

uvpy runs `loop.run_in_executor(None, ...)` on its native worker pool; uvloop
and stock asyncio use their default ThreadPoolExecutor. Same code, three
loops (ops/s, higher is better):

  roundtrip    N sequential `await loop.run_in_executor(None, noop)`: the
               latency of one hand-off and back. Unit: round trips/s (1/mean
               latency); the JSON line also carries p50_us and p99_us.
  gather       N no-op Python callables under one asyncio.gather. Unit: calls/s.
  native_noop  N no-op native calls under gather: uvpy.offload of the
               built-in no-op kernel on uvpy (never takes the GIL); a ctypes
               call of libc's abs() through run_in_executor elsewhere.
  sha256_par   16 MiB hashed as 16 x 1 MiB sha256 (hashlib drops the GIL), all
               chunks in flight at once. Unit: MiB/s.
  sha256_seq   the same chunks one at a time (one worker busy at a time).
               sha256_par / sha256_seq is the scaling over 1 worker.

Run one directly:  python bench/executor.py --loop uvpy --workload roundtrip
"""
import asyncio
import ctypes
import hashlib
import os
import time

from _harness import Workload, check, workload_main

CHUNK = 1 << 20


def _noop():
    return None


def roundtrip(loop, n):
    async def main():
        await loop.run_in_executor(None, _noop)  # start the pool untimed-ish
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            await loop.run_in_executor(None, _noop)
            lat.append(time.perf_counter() - t0)
        lat.sort()
        return n, {"p50_us": lat[len(lat) // 2] * 1e6, "p99_us": lat[int(len(lat) * 0.99)] * 1e6}

    return main()


def gather(loop, n):
    async def main():
        results = await asyncio.gather(*(loop.run_in_executor(None, _noop) for _ in range(n)))
        check(len(results) == n, "all calls returned")
        return n

    return main()


def native_noop(loop, n):
    if type(loop).__module__.startswith("uvpy"):
        import uvpy

        def submit():
            return uvpy.offload(uvpy.kernels.NOOP)
    else:
        libc_abs = ctypes.CDLL(None).abs

        def submit():
            return loop.run_in_executor(None, libc_abs, 0)

    async def main():
        await asyncio.gather(*(submit() for _ in range(n)))
        return n

    return main()


def _chunks(n):
    return [os.urandom(CHUNK) for _ in range(n)]


def sha256_par(loop, n):
    data = _chunks(n)

    async def main():
        digests = await asyncio.gather(*(loop.run_in_executor(None, lambda d=d: hashlib.sha256(d).digest()) for d in data))
        check(digests[0] == hashlib.sha256(data[0]).digest(), "digest matches")
        return n  # MiB

    return main()


def sha256_seq(loop, n):
    data = _chunks(n)

    async def main():
        for d in data:
            await loop.run_in_executor(None, lambda d=d: hashlib.sha256(d).digest())
        return n

    return main()


WORKLOADS = [
    Workload("roundtrip", roundtrip, n=5_000, quick_n=1_000, unit="round trips/s"),
    Workload("gather", gather, n=20_000, quick_n=5_000, unit="calls/s"),
    Workload("native_noop", native_noop, n=20_000, quick_n=5_000, unit="calls/s"),
    Workload("sha256_par", sha256_par, n=16, quick_n=16, unit="MiB/s"),
    Workload("sha256_seq", sha256_seq, n=16, quick_n=16, unit="MiB/s"),
]

if __name__ == "__main__":
    raise SystemExit(workload_main(WORKLOADS))
