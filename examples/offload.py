"""Every core from coroutines: GIL-free library calls on threads, pure-Python
work on processes, and a loop that stays responsive while both run.

    python examples/offload.py [--blocks 32] [--lines 200000]

1. sha256 of BLOCKS 4 MiB buffers through `run_in_executor(None, ...)`.
   hashlib releases the GIL while it hashes, so the blocking pool's
   threads hash in parallel (so do zlib and numpy's heavy operations; a
   library that keeps the GIL would not).
2. LINES access-log lines parsed into per-status byte totals by pure-Python
   code, which holds the GIL: threads would take turns, so it goes to
   `uvpy.ProcessPool`, in chunks through `async for ... in pool.map(...)`
   (results in order, a bounded number of chunks in flight).
3. Meanwhile a task sleeps 10 ms in a loop and records how late it wakes:
   the loop itself never waits for the work.

Each result is checked against the plain sequential computation, whose
time is printed beside the parallel one: the gain grows with the cores
(on 2 cores the loop, the threads and the processes share them). Needs
only the standard library.
"""
import argparse
import asyncio
import hashlib
import os
import random
import time

import uvpy

BLOCK = 4 << 20


def parse(lines):
    """Bytes sent per HTTP status in a chunk of common-log-format lines."""
    totals = {}
    for line in lines:
        request_end = line.index('" ') + 2
        status, size = line[request_end:].split()[:2]
        totals[status] = totals.get(status, 0) + (int(size) if size != "-" else 0)
    return totals


def merge(parts):
    totals = {}
    for part in parts:
        for status, n in part.items():
            totals[status] = totals.get(status, 0) + n
    return dict(sorted(totals.items()))


def make_log(n, seed=7):
    rng = random.Random(seed)
    paths = ["/", "/api/items", "/static/app.js", "/login", "/api/items/42"]
    return [f'10.0.{rng.randrange(256)}.{rng.randrange(256)} - - [06/Dec/2026:10:00:00 +0000] '
            f'"GET {rng.choice(paths)} HTTP/1.1" {rng.choice((200, 200, 200, 304, 404, 500))} '
            f'{rng.choice(("-", rng.randrange(100_000)))}'
            for _ in range(n)]


async def lag_probe(lags, stop):
    while not stop.is_set():
        t0 = time.perf_counter()
        await asyncio.sleep(0.01)
        lags.append(time.perf_counter() - t0 - 0.01)


async def main(blocks, lines):
    loop = asyncio.get_running_loop()
    data = [os.urandom(BLOCK) for _ in range(blocks)]
    log = make_log(lines)
    chunk = max(1, lines // 64)

    t0 = time.perf_counter()
    want_digests = [hashlib.sha256(b).hexdigest() for b in data]
    want_totals = merge([parse(log)])
    sequential = time.perf_counter() - t0

    async with uvpy.ProcessPool() as pool:
        await pool.run(parse, log[:10])  # workers are up: not part of the timing

        async def hashes():
            return await asyncio.gather(
                *(loop.run_in_executor(None, lambda b=b: hashlib.sha256(b).hexdigest())
                  for b in data))

        async def totals():
            chunks = [log[i:i + chunk] for i in range(0, len(log), chunk)]
            return merge([part async for part in pool.map(parse, chunks)])

        # The lag is measured over the work alone, not over the workers'
        # start-up or their exit, when the loop has nothing else to do.
        lags, stop = [], asyncio.Event()
        t0 = time.perf_counter()
        probe = asyncio.create_task(lag_probe(lags, stop))
        digests, got_totals = await asyncio.gather(hashes(), totals())
        parallel = time.perf_counter() - t0
        stop.set()
        await probe
        workers = pool.max_workers

    lags.sort()
    print(f"sha256 of {blocks} x 4 MiB and {lines} log lines parsed: {parallel:.2f} s "
          f"({workers} processes + the blocking pool), sequentially {sequential:.2f} s")
    print("bytes per status:", got_totals)
    if lags:
        print(f"loop lag while working: p50 {lags[len(lags) // 2] * 1e3:.1f} ms, "
              f"max {lags[-1] * 1e3:.1f} ms over {len(lags)} wakeups")
    ok = digests == want_digests and got_totals == want_totals
    print("results match the sequential run:", ok)
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=32, help="4 MiB buffers to hash")
    parser.add_argument("--lines", type=int, default=200_000, help="log lines to parse")
    args = parser.parse_args()
    raise SystemExit(uvpy.run(main(args.blocks, args.lines)))
