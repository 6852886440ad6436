"""Ready-queue and task-step throughput: the two hot paths of every asyncio loop.

Workloads (ops/s, higher is better):

  callbacks  N plain `loop.call_soon(cb)` callbacks (default 1,000,000). A driver
             callback queues them in batches of 1,000 and re-queues itself
             behind each batch, so every loop iteration runs ~1,000 callbacks.
             This measures the steady-state cost of the ready queue (push, pop,
             invoking a Python callable) without a 1M-entry queue no real
             program builds. A final callback queued behind the last batch
             checks that all N ran before it. Unit: callbacks/s.

  chain      100 tasks each looping `await asyncio.sleep(0)`, N sleeps in total
             (default 200,000). Each sleep is one full task step: coroutine
             send, the bare-yield path of the task, and a call_soon of its next
             step, i.e. the core cost of every await that suspends. Unit: sleeps/s.

Run one directly:  python bench/call_soon.py --loop uvloop --workload chain
"""
import asyncio

from _harness import Workload, check, workload_main

BATCH = 1_000
TASKS = 100


def callbacks(loop, n):
    count, remaining = 0, n
    fut = loop.create_future()

    def cb():
        nonlocal count
        count += 1

    def driver():
        nonlocal remaining
        k = min(BATCH, remaining)
        remaining -= k
        call_soon = loop.call_soon
        for _ in range(k):
            call_soon(cb)
        call_soon(driver if remaining else done)

    def done():
        fut.set_result(count)

    async def main():
        loop.call_soon(driver)
        ran = await fut
        check(ran == n, f"{ran} of {n} callbacks ran before the final one")
        return ran

    return main()


def chain(loop, n):
    per = max(1, n // TASKS)
    done = 0

    async def worker():
        nonlocal done
        for _ in range(per):
            await asyncio.sleep(0)
        done += per

    async def main():
        await asyncio.gather(*(worker() for _ in range(TASKS)))
        check(done == per * TASKS, f"{done} sleeps done, expected {per * TASKS}")
        return done

    return main()


WORKLOADS = [
    Workload("callbacks", callbacks, n=1_000_000, quick_n=200_000, unit="callbacks/s"),
    Workload("chain", chain, n=200_000, quick_n=40_000, unit="sleeps/s"),
]

if __name__ == "__main__":
    raise SystemExit(workload_main(WORKLOADS))
