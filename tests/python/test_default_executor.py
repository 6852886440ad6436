"""run_in_executor, the default executor and its shutdown, on both loops.

test_executor.py covers uvpy's native executor behind run_in_executor(None).
"""

import concurrent.futures
import threading

import pytest


def test_run_in_executor_default_and_custom(loop):
    main_thread = threading.get_ident()

    def work(x):
        return x * 2, threading.get_ident()

    async def main():
        r1, tid1 = await loop.run_in_executor(None, work, 21)
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            r2, tid2 = await loop.run_in_executor(ex, work, 5)
        return r1, tid1, r2, tid2

    r1, tid1, r2, tid2 = loop.run_until_complete(main())
    assert (r1, r2) == (42, 10)
    assert tid1 != main_thread and tid2 != main_thread


def test_run_in_executor_propagates_exceptions(loop):
    def fail():
        raise LookupError("from worker")

    with pytest.raises(LookupError, match="from worker"):
        loop.run_until_complete(loop.run_in_executor(None, fail))


def test_set_default_executor_type_check(loop):
    with pytest.raises(TypeError, match="executor must be ThreadPoolExecutor instance"):
        loop.set_default_executor(object())
    ex = concurrent.futures.ThreadPoolExecutor(1)
    loop.set_default_executor(ex)

    async def main():
        return await loop.run_in_executor(None, threading.current_thread)

    t = loop.run_until_complete(main())
    assert t.name.startswith(ex._thread_name_prefix)
    ex.shutdown()


def test_shutdown_default_executor(loop):
    async def main():
        await loop.run_in_executor(None, sum, [1, 2])
        await loop.shutdown_default_executor()
        with pytest.raises(RuntimeError, match="Executor shutdown has been called"):
            loop.run_in_executor(None, sum, [1])

    loop.run_until_complete(main())


def test_run_in_executor_on_closed_loop(loop):
    loop.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.run_in_executor(None, sum, [])
