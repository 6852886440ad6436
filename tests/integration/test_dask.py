"""A distributed engine's executor behind run_in_executor: dask.distributed's
Client.get_executor() (a concurrent.futures.Executor) over a LocalCluster of
two worker processes, so the work leaves the loop's process, as it would
leave the machine with a remote scheduler.

The loop's part is asyncio's: submit to the executor, wrap its
concurrent.futures.Future, resolve the asyncio future from the thread that
finishes it (call_soon_threadsafe), and pass on results, exceptions and
cancellation. Functions and arguments are ones the workers can unpickle by
reference (stdlib and numpy).
"""

import asyncio
import math
import operator
import os
import time

import pytest

from conftest import need_module

distributed = need_module("distributed")
np = need_module("numpy")


@pytest.fixture(scope="module")
def executor():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            yield client.get_executor()


def test_results_come_back_from_worker_processes(runner, executor, check_loop):
    async def main():
        loop = asyncio.get_running_loop()
        check_loop(loop)
        sizes = list(range(200, 240))
        got = await asyncio.gather(*(loop.run_in_executor(executor, math.factorial, n) for n in sizes))
        assert got == [math.factorial(n) for n in sizes]

        a = np.random.default_rng(7).standard_normal((64, 64))
        inv = await loop.run_in_executor(executor, np.linalg.inv, a)
        assert np.allclose(inv @ a, np.eye(64))

        pids = await asyncio.gather(*(loop.run_in_executor(executor, os.getpid) for _ in range(8)))
        assert os.getpid() not in pids  # the work left this process

    runner.run(main())


def test_exceptions_and_cancellation_pass_through(runner, executor):
    async def main():
        loop = asyncio.get_running_loop()
        with pytest.raises(ZeroDivisionError):
            await loop.run_in_executor(executor, operator.truediv, 1, 0)

        # A cancelled await cancels the asyncio future; the loop keeps
        # serving and the executor stays usable.
        slow = loop.run_in_executor(executor, time.sleep, 5)
        await asyncio.sleep(0)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        assert await loop.run_in_executor(executor, operator.add, 2, 3) == 5

    runner.run(main())
