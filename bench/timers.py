"""Timer heap throughput: scheduling, cancelling and firing `call_later` timers.

Workloads (ops/s, higher is better):

  cancel  Schedule N `loop.call_later` timers (default 100,000) with delays of
          1..100 s, then cancel all of them in a shuffled order, then yield once
          so a loop that purges cancelled timers lazily (stock asyncio) pays for
          that inside the measurement. Shuffled cancellation exercises removal
          from the middle of the heap, the common case for timeouts that never
          fire. None may fire. Unit: schedule+cancel pairs/s.

  fire    Schedule N `loop.call_later` timers (default 100,000) with delays
          spread over 0..10 ms and run until all have fired: heap push, expiry
          scan and callback dispatch. The time includes waiting for the last
          deadline (<= 10 ms), a floor that is small against the full-size run
          but visible at --quick sizes. Unit: fires/s.

Delays and the cancel order come from a fixed seed and are generated before
timing starts. Run one directly:  python bench/timers.py --loop uvloop --workload fire
"""
import asyncio
import random

from _harness import Workload, check, workload_main

SEED = 20240601


def cancel(loop, n):
    rng = random.Random(SEED)
    delays = [rng.uniform(1.0, 100.0) for _ in range(n)]
    order = list(range(n))
    rng.shuffle(order)
    fired = 0

    def cb():
        nonlocal fired
        fired += 1

    async def main():
        call_later = loop.call_later
        handles = [call_later(d, cb) for d in delays]
        for i in order:
            handles[i].cancel()
        await asyncio.sleep(0)  # one more loop iteration (lazy purge happens here)
        check(fired == 0, f"{fired} cancelled timers fired")
        return n

    return main()


def fire(loop, n):
    rng = random.Random(SEED)
    delays = [rng.uniform(0.0, 0.010) for _ in range(n)]
    fired = 0
    fut = loop.create_future()

    def cb():
        nonlocal fired
        fired += 1
        if fired == n:
            fut.set_result(fired)

    async def main():
        call_later = loop.call_later
        for d in delays:
            call_later(d, cb)
        return await fut

    return main()


WORKLOADS = [
    Workload("cancel", cancel, n=100_000, quick_n=100_000, unit="schedule+cancel/s"),
    Workload("fire", fire, n=100_000, quick_n=100_000, unit="fires/s"),
]

if __name__ == "__main__":
    raise SystemExit(workload_main(WORKLOADS))
