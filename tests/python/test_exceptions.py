"""Exception handlers, BaseException propagation and debug-mode logging."""

import asyncio
import contextvars
import logging
import os
import subprocess
import sys
import time

import pytest

import uvpy
from conftest import LOOP_FACTORIES


def run_once(loop):
    loop.call_soon(loop.stop)
    loop.run_forever()


def test_callback_exception_reaches_custom_handler(loop):
    contexts = []

    def boom():
        raise ValueError("boom")

    loop.set_exception_handler(lambda lp, ctx: contexts.append((lp, ctx)))
    h = loop.call_soon(boom)
    run_once(loop)
    assert len(contexts) == 1
    lp, ctx = contexts[0]
    assert lp is loop
    assert isinstance(ctx["exception"], ValueError)
    assert ctx["message"].startswith("Exception in callback ")
    assert "boom" in ctx["message"]
    assert ctx["handle"] is h
    assert ctx["exception"].__traceback__ is not None


def test_handler_get_set_and_type_check(loop):
    assert loop.get_exception_handler() is None
    with pytest.raises(TypeError, match="A callable object or None is expected"):
        loop.set_exception_handler(1)

    def handler(lp, ctx):
        pass

    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None


def test_default_handler_logs(loop, caplog):
    def boom():
        raise RuntimeError("logged")

    loop.call_soon(boom)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        run_once(loop)
    assert any("Exception in callback" in r.getMessage() for r in caplog.records)
    assert any(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in caplog.records)


def test_failing_custom_handler_falls_back_to_default(loop, caplog):
    def bad_handler(lp, ctx):
        raise KeyError("handler broke")

    loop.set_exception_handler(bad_handler)
    loop.call_soon(lambda: 1 / 0)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        run_once(loop)
    assert any("Unhandled error in exception handler" in r.getMessage() for r in caplog.records)


def test_call_exception_handler_direct(loop):
    got = []
    loop.set_exception_handler(lambda lp, ctx: got.append(ctx))
    loop.call_exception_handler({"message": "hello"})
    assert got == [{"message": "hello"}]


# From 3.12 asyncio calls a custom handler in the context of the task,
# future or handle that failed; up to 3.11, in the caller's.
IN_CONTEXT = sys.version_info >= (3, 12)
var = contextvars.ContextVar("var", default="caller")


def test_custom_handler_runs_in_the_failing_callbacks_context(loop):
    seen = []
    loop.set_exception_handler(lambda lp, ctx: seen.append(var.get()))

    def fail():
        var.set("callback")
        1 / 0

    loop.call_soon(fail)
    run_once(loop)
    assert seen == ["callback" if IN_CONTEXT else "caller"]


def test_custom_handler_runs_in_the_named_tasks_context(loop):
    seen = []
    loop.set_exception_handler(lambda lp, ctx: seen.append(var.get()))

    async def noop():
        pass

    ctx = contextvars.Context()
    ctx.run(var.set, "task")
    task = loop.create_task(noop(), context=ctx)
    loop.call_exception_handler({"message": "about a task", "task": task})
    loop.call_exception_handler({"message": "about nothing"})
    loop.run_until_complete(task)
    assert seen == ["task" if IN_CONTEXT else "caller", "caller"]


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exceptions_propagate_out_of_run_forever(loop, exc_type):
    out = []

    def raiser():
        raise exc_type()

    loop.call_soon(raiser)
    loop.call_soon(out.append, "after")
    with pytest.raises(exc_type):
        loop.run_forever()
    assert not loop.is_running()
    # The callback queued behind it was not lost: it runs on the next run.
    run_once(loop)
    assert out == ["after"]


def test_keyboard_interrupt_in_task_propagates(loop):
    async def main():
        await asyncio.sleep(0)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        loop.run_until_complete(main())


def test_debug_mode_logs_slow_callbacks(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.01
    loop.call_soon(time.sleep, 0.03)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        run_once(loop)
    msgs = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("Executing ") and "took" in m and "sleep" in m for m in msgs), msgs


def test_get_set_debug(loop):
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.set_debug(False)
    assert loop.get_debug() is False


@pytest.mark.parametrize("env,expected", [("1", "True"), ("", "False")])
def test_pythonasynciodebug_env(loop_name, env, expected):
    code = (
        "import asyncio, uvpy\n"
        f"loop = {'uvpy.new_event_loop()' if loop_name == 'uvpy' else 'asyncio.SelectorEventLoop()'}\n"
        "print(loop.get_debug()); loop.close()\n"
    )
    environ = dict(os.environ, PYTHONASYNCIODEBUG=env)
    out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected


def test_warn_slow_callbacks_logs_task_steps_as_debug_mode_does_without_it(loop_name, caplog):
    # uvpy's opt-in: the stock loop's debug-mode report (the oracle, taken
    # with debug on) from a uvpy loop with debug off.
    loop = LOOP_FACTORIES[loop_name]()
    try:
        if loop_name == "uvpy":
            assert loop.warn_slow_callbacks is False
            loop.warn_slow_callbacks = True
        else:
            loop.set_debug(True)
        loop.slow_callback_duration = 0.01

        async def slow_step():
            time.sleep(0.03)

        with caplog.at_level(logging.WARNING, logger="asyncio"):
            loop.run_until_complete(loop.create_task(slow_step(), name="slow-one"))
        msgs = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
        slow = [m for m in msgs if m.startswith("Executing <Task")]
        assert len(slow) == 1, msgs
        assert "name='slow-one'" in slow[0] and "slow_step()" in slow[0]
        assert float(slow[0].rsplit("took ", 1)[1].split()[0]) >= 0.03
        if loop_name == "uvpy":
            assert loop.get_debug() is False
    finally:
        loop.close()


def test_warn_slow_callbacks_is_off_by_default_and_a_bool():
    loop = uvpy.new_event_loop()
    try:
        assert loop.warn_slow_callbacks is False
        with pytest.raises(TypeError, match="warn_slow_callbacks must be a bool"):
            loop.warn_slow_callbacks = 1
        loop.slow_callback_duration = 0.0
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logging.getLogger("asyncio").addHandler(handler)
        try:
            loop.run_until_complete(asyncio.sleep(0))
        finally:
            logging.getLogger("asyncio").removeHandler(handler)
        assert not [r for r in records if r.getMessage().startswith("Executing")]
    finally:
        loop.close()
