"""add_signal_handler / remove_signal_handler, and Ctrl-C in run()."""

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest


def test_signal_handler_runs_on_the_loop(loop):
    got = []

    def handler(tag):
        got.append((tag, threading.get_ident()))
        loop.stop()

    loop.add_signal_handler(signal.SIGUSR1, handler, "usr1")
    try:
        loop.call_later(0.01, os.kill, os.getpid(), signal.SIGUSR1)
        loop.call_later(10, loop.stop)
        loop.run_forever()
    finally:
        assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert got == [("usr1", threading.get_ident())]
    assert loop.remove_signal_handler(signal.SIGUSR1) is False
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_signal_handler_validation(loop):
    with pytest.raises(TypeError, match="sig must be an int"):
        loop.add_signal_handler("x", lambda: None)
    with pytest.raises(ValueError, match="invalid signal number"):
        loop.add_signal_handler(10_000, lambda: None)
    with pytest.raises(RuntimeError, match="cannot be caught"):
        loop.add_signal_handler(signal.SIGKILL, lambda: None)

    async def coro():
        pass

    with pytest.raises(TypeError, match="coroutines cannot be used with add_signal_handler"):
        loop.add_signal_handler(signal.SIGUSR2, coro)


def test_signal_handler_outside_main_thread_is_refused(loop):
    errors = []

    def other():
        try:
            loop.add_signal_handler(signal.SIGUSR2, lambda: None)
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert len(errors) == 1


def test_close_removes_signal_handlers(loop):
    loop.add_signal_handler(signal.SIGUSR2, lambda: None)
    loop.close()
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL


CTRL_C_PROGRAM = textwrap.dedent(
    """
    import asyncio, os, signal, sys, uvpy
    async def main():
        asyncio.get_running_loop().call_later(0.1, os.kill, os.getpid(), signal.SIGINT)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            print("main task cancelled", flush=True)
            raise
    runner = uvpy.run if sys.argv[1] == "uvpy" else asyncio.run
    try:
        runner(main())
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
    """
)


def test_ctrl_c_cancels_main_task_and_raises_keyboard_interrupt(loop_name):
    out = subprocess.run(
        [sys.executable, "-c", CTRL_C_PROGRAM, loop_name],
        capture_output=True, text=True, timeout=20,
    )
    assert out.stdout.split("\n")[:2] == ["main task cancelled", "KeyboardInterrupt"], out.stderr


BLOCKED_PROGRAM = textwrap.dedent(
    """
    import asyncio, os, signal, sys, threading, uvpy
    loop = uvpy.new_event_loop() if sys.argv[1] == "uvpy" else asyncio.SelectorEventLoop()
    threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()
    try:
        loop.run_forever()  # nothing scheduled: blocked in the poll
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    loop.close()
    """
)


def test_ctrl_c_interrupts_a_loop_blocked_in_poll(loop_name):
    out = subprocess.run(
        [sys.executable, "-c", BLOCKED_PROGRAM, loop_name],
        capture_output=True, text=True, timeout=20,
    )
    assert out.stdout.strip() == "interrupted", out.stderr


RAISING_HANDLER_PROGRAM = textwrap.dedent(
    """
    import asyncio, signal, sys, uvpy

    class Alarm(Exception):
        pass

    def on_alarm(signum, frame):
        raise Alarm("from the handler")

    signal.signal(signal.SIGALRM, on_alarm)
    loop = uvpy.new_event_loop() if sys.argv[1] == "uvpy" else asyncio.new_event_loop()
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    try:
        loop.run_forever()  # nothing scheduled: the alarm ends the poll
    except Alarm as exc:
        print("raised:", exc, flush=True)
    # The loop goes on as before: timers and callbacks still run.
    print(loop.run_until_complete(asyncio.sleep(0.01, "still running")), flush=True)
    loop.close()
    """
)


def test_an_exception_from_a_python_signal_handler_leaves_run_forever(loop_name):
    # asyncio's select() call raises what the handler raised; a handler must
    # not run inside whichever loop callback happens to execute next, where
    # its exception would be logged by the exception handler and swallowed.
    out = subprocess.run(
        [sys.executable, "-c", RAISING_HANDLER_PROGRAM, loop_name],
        capture_output=True, text=True, timeout=20,
    )
    assert out.stdout.splitlines() == ["raised: from the handler", "still running"], out.stderr
    assert "Exception in callback" not in out.stderr, out.stderr
