"""References and fds stay flat across many rounds of work."""

import asyncio
import sys

from conftest import collect, open_fds


def test_callback_refcounts_flat_after_run_and_cancel(loop):
    def cb(arg):
        pass

    arg = object()
    before = (sys.getrefcount(cb), sys.getrefcount(arg))
    for _ in range(200):
        loop.call_soon(cb, arg)
        loop.call_later(0, cb, arg)
        loop.call_later(100, cb, arg).cancel()
        h = loop.call_at(loop.time() + 100, cb, arg)
        h.cancel()
    loop.call_later(0.001, loop.stop)
    loop.run_forever()
    del h
    collect()
    assert (sys.getrefcount(cb), sys.getrefcount(arg)) == before


def test_close_releases_pending_callbacks(loop):
    def cb(arg):
        pass

    arg = object()
    before = sys.getrefcount(arg)
    for _ in range(100):
        loop.call_soon(cb, arg)
        loop.call_later(100, cb, arg)
    loop.close()
    collect()
    assert sys.getrefcount(arg) == before


def test_fds_flat_over_loop_lifecycles(new_loop):
    def cycle():
        loop = new_loop()

        async def main():
            await asyncio.sleep(0)

        loop.run_until_complete(main())
        loop.close()

    cycle()
    before = open_fds()
    for _ in range(50):
        cycle()
    collect()
    assert open_fds() == before


def test_task_refcounts_flat(loop):
    async def step(x):
        await asyncio.sleep(0)
        return x

    payload = object()

    async def main():
        for _ in range(50):
            await asyncio.gather(*(step(payload) for _ in range(20)))

    loop.run_until_complete(main())
    collect()
    before = sys.getrefcount(payload)
    loop.run_until_complete(main())
    collect()
    assert sys.getrefcount(payload) == before


def test_unclosed_loop_with_queued_work_is_collected(loop_name):
    # The loop's queues hold handles that reference the loop back: a cycle
    # the GC must be able to see through, as it can through asyncio's
    # deque and heap. Dropped without close(), the loop is collected, with
    # asyncio's ResourceWarning, and whatever it held is released.
    import gc
    import socket
    import warnings
    import weakref

    from conftest import LOOP_FACTORIES

    arg = object()
    before = sys.getrefcount(arg)
    r, w = socket.socketpair()
    loop = LOOP_FACTORIES[loop_name]()
    loop.call_soon(print, arg)
    loop.call_soon_threadsafe(print, arg)
    loop.call_later(3600, print, arg)  # an untracked timer handle on uvpy
    loop.call_at(loop.time() + 3600, loop.stop)  # the handle references the loop
    loop.add_reader(r.fileno(), print, arg)
    ref = weakref.ref(loop)
    del loop
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    try:
        assert ref() is None
        assert any(issubclass(c.category, ResourceWarning) and "unclosed event loop" in str(c.message)
                   for c in caught)
        collect()
        assert sys.getrefcount(arg) == before
    finally:
        r.close()
        w.close()
