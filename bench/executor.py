"""The executor: handing work to other cores and getting results back.

uvpy runs `loop.run_in_executor(None, ...)` on its native worker pool; uvloop
and stock asyncio use their default ThreadPoolExecutor. Same code, three
loops (ops/s, higher is better):

  roundtrip    N sequential `await loop.run_in_executor(None, noop)`: the
               latency of one hand-off and back. Unit: round trips/s (1/mean
               latency); the JSON line also carries p50_us and p99_us.
  gather       N no-op Python callables under one asyncio.gather. Unit: calls/s.
               (gather and native_noop time a second pass: the first warms up.)
  native_noop  N no-op native calls under gather: uvpy.offload of the
               built-in no-op kernel on uvpy (never takes the GIL); a ctypes
               call of libc's abs() through run_in_executor elsewhere.
  sha256_par   N x 1 MiB chunks hashed with sha256 (hashlib drops the GIL), all
               in flight at once, on the loop's default pool (every core).
               Unit: MiB/s. One untimed pass first: a cold pool's thread
               start-up is not what this measures.
  sha256_1w    the same, on a one-thread pool (uvpy: blocking_threads=1;
               others: a ThreadPoolExecutor(max_workers=1) as the default
               executor). sha256_par / sha256_1w is the scaling over 1 worker.
  lag          loop lag under offload: every worker kept busy hashing 4 MiB
               chunks (GIL released) while the loop serves an echo client
               (sock_accept/sock_recv/sock_sendall) and a 1 ms timer records
               how late it fires. Headline: p99 lateness in ms, LOWER is
               better; the JSON line also has p50_ms, max_ms and echoes.

Run one directly:  python bench/executor.py --loop uvpy --workload roundtrip
"""
import asyncio
import ctypes
import hashlib
import os
import subprocess
import sys
import time

from _harness import Workload, check, timer_lag, workload_main

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


async def _timed_after_warmup(n, one_pass):
    """One untimed pass (pool threads started, allocator arenas and free
    lists grown), then the timed one: the steady state, for every loop."""
    await one_pass()
    t0 = time.perf_counter()
    results = await one_pass()
    wall = time.perf_counter() - t0
    check(len(results) == n, "all calls returned")
    return n, {"value": n / wall}


def gather(loop, n):
    def one_pass():
        return asyncio.gather(*(loop.run_in_executor(None, _noop) for _ in range(n)))

    return _timed_after_warmup(n, one_pass)


def native_noop(loop, n):
    if type(loop).__module__.startswith("uvpy"):
        import uvpy

        def submit():
            return uvpy.offload(uvpy.kernels.NOOP)
    else:
        libc_abs = ctypes.CDLL(None).abs

        def submit():
            return loop.run_in_executor(None, libc_abs, 0)

    def one_pass():
        return asyncio.gather(*(submit() for _ in range(n)))

    return _timed_after_warmup(n, one_pass)


def _chunks(n):
    return [os.urandom(CHUNK) for _ in range(n)]


def _sha256_all(loop, n):
    data = _chunks(n)

    def digest(d):
        return hashlib.sha256(d).digest()

    async def one_pass():
        return await asyncio.gather(*(loop.run_in_executor(None, digest, d) for d in data))

    async def main():
        await one_pass()  # warm: threads started, chunks paged in
        t0 = time.perf_counter()
        digests = await one_pass()
        wall = time.perf_counter() - t0
        check(digests[-1] == hashlib.sha256(data[-1]).digest(), "digest matches")
        return n, {"value": n / wall}  # MiB/s of the timed pass

    return main()


def sha256_par(loop, n):
    return _sha256_all(loop, n)


def sha256_1w(loop, n):
    if type(loop).__module__.startswith("uvpy"):
        import uvpy

        uvpy.configure_executor(blocking_threads=1)  # Python callables: one thread
    else:
        from concurrent.futures import ThreadPoolExecutor

        loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
    return _sha256_all(loop, n)


def lag(loop, n):
    """n: milliseconds to measure."""
    import socket
    import threading

    chunk = os.urandom(4 << 20)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    address = listener.getsockname()
    stop = threading.Event()
    # The echo client is another process: in this one it would compete for
    # the GIL and measure the interpreter's switch interval, not the loop.
    client_code = (
        "import socket, sys, time\n"
        "s = socket.create_connection((sys.argv[1], int(sys.argv[2])))\n"
        "s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n"
        "n = 0\n"
        "while True:\n"
        "    try:\n"
        "        s.sendall(b'x' * 64)\n"
        "        got = 0\n"
        "        while got < 64:\n"
        "            d = s.recv(64 - got)\n"
        "            if not d: raise OSError\n"
        "            got += len(d)\n"
        "        n += 1\n"
        "    except OSError:\n"
        "        print(n, flush=True); break\n"
    )

    served = [0]

    async def serve():
        conn, _ = await loop.sock_accept(listener)
        conn.setblocking(False)
        with conn:
            while not stop.is_set():
                data = await loop.sock_recv(conn, 4096)
                if not data:
                    return
                await loop.sock_sendall(conn, data)
                served[0] += 1

    async def burner():
        while not stop.is_set():
            await loop.run_in_executor(None, lambda: hashlib.sha256(chunk).digest())

    async def main():
        workers = os.cpu_count() or 2
        server = asyncio.ensure_future(serve())
        burners = [asyncio.ensure_future(burner()) for _ in range(workers)]
        proc = subprocess.Popen([sys.executable, "-c", client_code, *map(str, address)],
                                stdout=subprocess.PIPE)
        await asyncio.sleep(0.1)  # everything running
        late = await timer_lag(n)
        stop.set()
        await asyncio.gather(*burners)
        await server
        listener.close()
        proc.wait(timeout=10)
        check(served[0] > 0, "the echo client was served")
        return n, {**late, "echoes": served[0]}

    return main()


WORKLOADS = [
    Workload("roundtrip", roundtrip, n=5_000, quick_n=1_000, unit="round trips/s"),
    Workload("gather", gather, n=20_000, quick_n=5_000, unit="calls/s"),
    Workload("native_noop", native_noop, n=20_000, quick_n=5_000, unit="calls/s"),
    Workload("sha256_par", sha256_par, n=64, quick_n=16, unit="MiB/s"),
    Workload("sha256_1w", sha256_1w, n=64, quick_n=16, unit="MiB/s"),
    Workload("lag", lag, n=2000, quick_n=500, unit="ms p99 timer lag (lower is better)"),
]

if __name__ == "__main__":
    raise SystemExit(workload_main(WORKLOADS))
