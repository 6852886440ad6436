"""run_forever, run_until_complete, stop, close and the entry points."""

import asyncio
import subprocess
import sys
import threading
import warnings

import pytest

import uvpy


def test_stop_before_run_runs_one_iteration(loop):
    out = []
    loop.call_soon(out.append, 1)
    loop.stop()
    loop.run_forever()
    assert out == [1]
    assert not loop.is_running()


def test_run_until_complete_returns_result_and_raises(loop):
    async def ok():
        await asyncio.sleep(0)
        return 42

    async def bad():
        await asyncio.sleep(0)
        raise ValueError("boom")

    assert loop.run_until_complete(ok()) == 42
    with pytest.raises(ValueError, match="boom"):
        loop.run_until_complete(bad())


def test_run_until_complete_stopped_early(loop):
    fut = loop.create_future()
    loop.call_soon(loop.stop)
    with pytest.raises(RuntimeError, match="Event loop stopped before Future completed."):
        loop.run_until_complete(fut)


def test_is_running_and_get_running_loop(loop):
    seen = {}

    async def main():
        seen["running"] = loop.is_running()
        seen["current"] = asyncio.get_running_loop()

    loop.run_until_complete(main())
    assert seen == {"running": True, "current": loop}
    assert not loop.is_running()


def test_nested_run_is_refused(loop):
    async def main():
        coro = asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="This event loop is already running"):
            loop.run_until_complete(coro)
        coro.close()
        with pytest.raises(RuntimeError, match="already running"):
            loop.run_forever()

    loop.run_until_complete(main())


def test_running_while_another_loop_runs_in_thread_is_refused(new_loop):
    outer, inner = new_loop(), new_loop()

    async def main():
        coro = asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="Cannot run the event loop while another loop is running"):
            inner.run_until_complete(coro)
        coro.close()

    outer.run_until_complete(main())


def test_running_one_loop_from_two_threads_is_refused(loop):
    errors = []
    started = threading.Event()
    tried = loop.create_future()

    async def main():
        started.set()
        await tried  # the loop runs until the other thread has tried

    def other():
        started.wait()
        try:
            loop.run_forever()
        except RuntimeError as exc:
            errors.append(str(exc))
        finally:
            loop.call_soon_threadsafe(tried.set_result, None)

    t = threading.Thread(target=other)
    t.start()
    loop.run_until_complete(main())
    t.join()
    assert errors == ["This event loop is already running"]


def test_close_semantics(loop):
    async def main():
        with pytest.raises(RuntimeError, match="Cannot close a running event loop"):
            loop.close()

    loop.run_until_complete(main())
    loop.close()
    loop.close()  # idempotent
    assert loop.is_closed()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.run_forever()
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.run_until_complete(coro)
    coro.close()


def test_close_drops_pending_callbacks(loop):
    out = []
    loop.call_soon(out.append, 1)
    loop.call_later(0.01, out.append, 2)
    loop.close()
    assert out == []


def test_create_task_name_and_context(loop):
    import contextvars

    var = contextvars.ContextVar("v", default=None)
    ctx = contextvars.copy_context()
    ctx.run(var.set, "ctx")

    async def read():
        return var.get()

    async def main():
        t = loop.create_task(read(), name="reader", context=ctx)
        assert t.get_name() == "reader"
        return await t

    assert loop.run_until_complete(main()) == "ctx"


def test_task_factory(loop):
    made = []

    def factory(lp, coro, **kwargs):
        t = asyncio.Task(coro, loop=lp, **kwargs)
        made.append(t)
        return t

    with pytest.raises(TypeError, match="task factory must be a callable or None"):
        loop.set_task_factory(1)
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory
    assert loop.run_until_complete(asyncio.sleep(0, "r")) == "r"
    assert len(made) == 1
    loop.set_task_factory(None)
    assert loop.get_task_factory() is None


def test_uvpy_run_and_runner_and_install():
    async def which():
        return type(asyncio.get_running_loop())

    assert uvpy.run(which()) is uvpy.Loop
    with asyncio.Runner(loop_factory=uvpy.new_event_loop) as runner:
        assert runner.run(which()) is uvpy.Loop
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.14's policy functions
        old = asyncio.get_event_loop_policy()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            uvpy.install()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            assert isinstance(asyncio.get_event_loop_policy(), uvpy.EventLoopPolicy)
            assert asyncio.run(which()) is uvpy.Loop
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_event_loop_policy(old)
    if sys.version_info < (3, 14):
        # Policies are asyncio's supported API: nothing to warn about.
        assert [str(w.message) for w in caught] == []
    else:
        # One warning, uvpy's, at the caller's line, naming the replacements
        # (asyncio's own, from inside uvpy, is not shown as well).
        assert len(caught) == 1, [str(w.message) for w in caught]
        (w,) = caught
        assert w.category is DeprecationWarning
        assert w.filename == __file__
        message = str(w.message)
        assert "uvpy.install() is deprecated" in message
        assert "uvpy.run(" in message and "loop_factory=uvpy.new_event_loop" in message


def test_import_warns_nothing():
    # From 3.14 asyncio's policy names warn; uvpy's EventLoopPolicy
    # subclasses asyncio's default policy without importing uvpy warning.
    r = subprocess.run([sys.executable, "-W", "error", "-c", "import uvpy; uvpy.EventLoopPolicy()"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_uvpy_run_debug_flag():
    async def debug():
        return asyncio.get_running_loop().get_debug()

    assert uvpy.run(debug(), debug=True) is True
    assert uvpy.run(debug(), debug=False) is False


def test_loop_is_an_abstract_event_loop(loop):
    assert isinstance(loop, asyncio.AbstractEventLoop)


@pytest.mark.asyncio
async def test_async_test_runs_on_parametrised_loop():
    # pytest-asyncio gives this test each loop in turn (see conftest).
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0.001)
    assert loop.is_running()


def test_uvpy_run_takes_what_asyncio_and_uvloop_run_take():
    made = []

    def factory():
        made.append(uvpy.new_event_loop())
        return made[-1]

    async def which():
        return asyncio.get_running_loop()

    assert uvpy.run(which(), loop_factory=factory) is made[0]
    assert type(uvpy.run(which(), loop_factory=asyncio.SelectorEventLoop)) is asyncio.SelectorEventLoop
    assert uvpy.run(which(), loop_factory=None, debug=None).backend in ("libuv", "io_uring")
    coro = which()
    with pytest.raises(ValueError, match="backend and loop_factory"):
        uvpy.run(coro, loop_factory=factory, backend="libuv")
    coro.close()


def test_every_abstract_loop_method_is_implemented():
    """uvpy-only: no method of asyncio.AbstractEventLoop is left to raise its
    bare NotImplementedError, the private hook asyncio.TimerHandle.cancel()
    calls included."""
    inherited = [name for name, attr in vars(asyncio.AbstractEventLoop).items()
                 if callable(attr) and not name.startswith("__")
                 and getattr(uvpy.Loop, name) is attr]
    assert inherited == []
    loop = uvpy.new_event_loop()
    try:
        asyncio.TimerHandle(loop.time() + 1, print, (), loop).cancel()
    finally:
        loop.close()
