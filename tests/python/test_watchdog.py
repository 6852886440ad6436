"""uvpy.watchdog(): a loop kept from its poll longer than a threshold is
reported once, with the loop thread's stack taken while it was blocked.

uvpy-only (stock asyncio has no watchdog); runs on the backend UVPY_BACKEND
names, and scripts/test.sh runs the suite once per backend. Durations are
checked as lower bounds only: the watchdog reports the true length of a
stall, and a loaded machine only makes stalls longer.
"""

import asyncio
import gc
import logging
import os
import threading
import time
import weakref

import pytest

import uvpy


def blocking_step():
    time.sleep(0.3)  # the line the report must name


async def blocked_coroutine():
    await asyncio.sleep(0)
    blocking_step()


def test_a_blocked_loop_is_reported_once_with_the_coroutine_and_its_line():
    reports = []

    async def main():
        loop = asyncio.get_running_loop()
        with uvpy.watchdog(loop, threshold=0.05, callback=reports.append):
            await asyncio.create_task(blocked_coroutine(), name="the-blocker")
            await asyncio.sleep(0.05)  # back in the poll: the stall is over

    uvpy.run(main())
    assert len(reports) == 1, [r.format() for r in reports]
    r = reports[0]
    assert r.finished
    assert r.duration >= 0.3
    assert r.threshold == 0.05
    assert "the-blocker" in r.task and "blocked_coroutine" in r.task
    names = [(f.name, f.lineno) for f in r.stack]
    line = blocking_step.__code__.co_firstlineno + 1
    assert names[-2:] == [("blocked_coroutine", blocked_coroutine.__code__.co_firstlineno + 2),
                          ("blocking_step", line)]
    assert r.stack[-1].filename == __file__
    text = r.format()
    assert f'{__file__}", line {line}, in blocking_step' in text
    assert "was blocked for" in text


def test_without_a_callback_the_report_is_a_warning_on_the_uvpy_watchdog_logger(caplog):
    async def main():
        uvpy.watchdog(threshold=0.05)  # the running loop
        await asyncio.sleep(0)
        blocking_step()
        await asyncio.sleep(0.05)

    with caplog.at_level(logging.WARNING, logger="uvpy.watchdog"):
        uvpy.run(main())
    records = [r for r in caplog.records if r.name == "uvpy.watchdog"]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert "in blocking_step" in records[0].getMessage()


def test_a_healthy_loop_under_load_is_never_reported():
    reports = []

    async def echo(reader, writer):
        while data := await reader.read(1024):
            writer.write(data)
        writer.close()

    async def main():
        loop = asyncio.get_running_loop()
        # A threshold no loaded CI machine's scheduler reaches on its own.
        with uvpy.watchdog(loop, threshold=2.0, callback=reports.append) as dog:
            server = await asyncio.start_server(echo, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]

            async def client(reader, writer):
                for i in range(200):
                    writer.write(b"x%d" % i)
                    assert await reader.read(1024) == b"x%d" % i
                writer.close()
                await writer.wait_closed()

            await asyncio.gather(*(client(r, w) for r, w in conns))
            for _ in range(20000):
                loop.call_soon(lambda: None)
            await asyncio.sleep(0)
            server.close()
            await server.wait_closed()
        assert dog.reports == 0

    uvpy.run(main())
    assert reports == []


def test_a_stall_that_lingers_is_reported_while_it_lasts_and_its_end_logged(caplog):
    seen = []

    def callback(report):
        seen.append((report.finished, report.duration, blocked.is_set()))

    blocked = threading.Event()

    async def main():
        loop = asyncio.get_running_loop()
        with uvpy.watchdog(loop, threshold=0.05, callback=callback, linger=0.1):
            await asyncio.sleep(0)
            time.sleep(0.4)
            blocked.set()
            await asyncio.sleep(0.05)

    with caplog.at_level(logging.INFO, logger="uvpy.watchdog"):
        uvpy.run(main())
    assert len(seen) == 1
    finished, duration, after = seen[0]
    assert not finished and not after  # reported while still blocked
    assert duration >= 0.1
    ended = [r.getMessage() for r in caplog.records if r.name == "uvpy.watchdog"]
    assert len(ended) == 1 and ended[0].startswith("Event loop unblocked after ")
    assert float(ended[0].split()[-2]) >= 0.4


def test_a_stall_in_native_code_holding_the_gil_says_so():
    reports = []

    async def main():
        loop = asyncio.get_running_loop()
        with uvpy.watchdog(loop, threshold=0.02, callback=reports.append):
            await asyncio.sleep(0)
            sum(range(10**7))  # builtin sum over ints: no bytecode, no GIL handover
            await asyncio.sleep(0.05)

    uvpy.run(main())
    assert len(reports) == 1
    r = reports[0]
    # The capture waited until the call returned, and says so; the stack
    # is the one the loop thread had when it let go: at that call's line.
    assert r.gil_wait > 0
    assert r.stack is not None and r.stack[-1].name == "main"
    if r.gil_wait >= 0.05:
        assert "held the GIL in native code" in r.format()


def watchdog_threads():
    """The process's watchdog threads: C++ std::threads, which threading
    does not list, named "uvpy-watchdog" (loop/watchdog.cc)."""
    found = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                found += f.read().strip() == "uvpy-watchdog"
        except FileNotFoundError:
            pass  # a thread that ended while we looked
    return found


def test_the_watchdog_stops_with_the_loop_and_leaks_nothing():
    loop = uvpy.new_event_loop()
    before = watchdog_threads()
    dog = uvpy.watchdog(loop, threshold=0.05)
    assert watchdog_threads() == before + 1
    ref = weakref.ref(dog)
    loop.run_until_complete(asyncio.sleep(0.01))
    loop.close()  # joins the watchdog's thread
    assert watchdog_threads() == before
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        uvpy.watchdog(loop, threshold=0.05)
    dog.stop()  # idempotent after close
    del dog
    loop_ref = weakref.ref(loop)
    del loop
    gc.collect()
    assert ref() is None
    assert loop_ref() is None


def test_stop_ends_the_thread_and_a_loop_collected_unclosed_ends_it_too():
    loop = uvpy.new_event_loop()
    before = watchdog_threads()
    dog = uvpy.watchdog(loop, threshold=0.05)
    dog.stop()
    assert watchdog_threads() == before
    assert loop._watchdog is None

    uvpy.watchdog(loop, threshold=0.05)
    assert watchdog_threads() == before + 1
    with pytest.warns(ResourceWarning, match="unclosed event loop"):
        del loop
        gc.collect()
    assert watchdog_threads() == before


def test_starting_a_watchdog_replaces_the_previous_one():
    reports_a, reports_b = [], []

    async def main():
        loop = asyncio.get_running_loop()
        a = uvpy.watchdog(loop, 0.05, reports_a.append)
        b = uvpy.watchdog(loop, 0.05, reports_b.append)
        assert loop._watchdog is b
        await asyncio.sleep(0)
        blocking_step()
        await asyncio.sleep(0.05)
        a.stop()  # already replaced: does not stop b
        assert loop._watchdog is b
        b.stop()

    uvpy.run(main())
    assert reports_a == []
    assert len(reports_b) == 1


@pytest.mark.parametrize("args, exc, match", [
    ((0,), ValueError, "threshold must be > 0"),
    ((-1.0,), ValueError, "threshold must be > 0"),
    (("1",), TypeError, "threshold must be a number"),
    ((True,), TypeError, "threshold must be a number"),
    ((0.1, 5), TypeError, "callback must be callable"),
])
def test_bad_arguments(args, exc, match):
    loop = uvpy.new_event_loop()
    try:
        with pytest.raises(exc, match=match):
            uvpy.watchdog(loop, *args)
        with pytest.raises(ValueError, match="linger must be >= threshold"):
            uvpy.watchdog(loop, 0.5, linger=0.1)
        stock = asyncio.SelectorEventLoop()
        with pytest.raises(TypeError, match="loop must be a uvpy.Loop"):
            uvpy.Watchdog(stock, 0.1)
        stock.close()
    finally:
        loop.close()
