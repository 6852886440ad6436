"""Subprocesses: subprocess_exec / subprocess_shell, asyncio.subprocess.Process
and the subprocess transport, on both loops.

The faults a real program meets: spawn errors, children killed by signals,
children that close their pipes early or never read their stdin, the loop
closed under running children, a thousand children in a row, loops in other
threads, several loops at once, a forked child, an application's own SIGCHLD
handler. After each: no fd leaked, no zombie left.
"""

import asyncio
import gc
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import pytest

from conftest import LOOP_FACTORIES, collect, open_fds
from proc_helpers import gone, warmed_fds, zombies

PY = sys.executable
PIPE = asyncio.subprocess.PIPE


def run(loop, coro):
    return loop.run_until_complete(coro)


async def spawn_py(code, **kwargs):
    kwargs.setdefault("stdin", PIPE)
    kwargs.setdefault("stdout", PIPE)
    kwargs.setdefault("stderr", PIPE)
    return await asyncio.create_subprocess_exec(PY, "-c", code, **kwargs)


# --- the basics ---------------------------------------------------------------------


def test_communicate_large_input_and_output(loop):
    code = ("import sys; d = sys.stdin.buffer.read(); sys.stdout.buffer.write(d[::-1]); "
            "sys.stderr.buffer.write(str(len(d)).encode())")
    data = os.urandom(4 << 20)

    async def main():
        proc = await spawn_py(code)
        out, err = await proc.communicate(data)
        return proc.returncode, out, err

    returncode, out, err = run(loop, main())
    assert returncode == 0
    assert out == data[::-1]
    assert err == str(len(data)).encode()


def test_transport_surface(loop):
    async def main():
        transport, protocol = await loop.subprocess_exec(
            asyncio.SubprocessProtocol, PY, "-c", "import sys; sys.stdin.read()")
        try:
            assert isinstance(transport, asyncio.SubprocessTransport)
            pid = transport.get_pid()
            assert isinstance(pid, int) and pid > 0
            assert transport.get_returncode() is None
            stdin = transport.get_pipe_transport(0)
            assert isinstance(stdin, asyncio.WriteTransport)
            assert isinstance(transport.get_pipe_transport(1), asyncio.ReadTransport)
            assert isinstance(transport.get_pipe_transport(2), asyncio.ReadTransport)
            assert transport.get_pipe_transport(3) is None
            assert isinstance(transport.get_extra_info("subprocess"), subprocess.Popen)
            assert f"pid={pid}" in repr(transport) and "running" in repr(transport)
            stdin.close()  # the child reads EOF and exits
            return await transport._wait()
        finally:
            transport.close()

    assert run(loop, main()) == 0


def test_shell_and_exit_codes(loop):
    async def main():
        codes = []
        for cmd in ("exit 0", "exit 3", "kill -TERM $$"):
            proc = await asyncio.create_subprocess_shell(cmd)
            codes.append(await proc.wait())
        return codes

    assert run(loop, main()) == [0, 3, -signal.SIGTERM]


@pytest.mark.parametrize("how", ["kill", "terminate", "send_signal", "outside"])
def test_child_killed_by_signal_has_negative_returncode(loop, how):
    expected = {"kill": -signal.SIGKILL, "terminate": -signal.SIGTERM,
                "send_signal": -signal.SIGUSR1, "outside": -signal.SIGKILL}[how]

    async def main():
        proc = await spawn_py("import sys; sys.stdout.write('up\\n'); sys.stdout.flush(); "
                              "sys.stdin.read()")
        assert await proc.stdout.readline() == b"up\n"
        if how == "send_signal":
            proc.send_signal(signal.SIGUSR1)
        elif how == "outside":
            os.kill(proc.pid, signal.SIGKILL)
        else:
            getattr(proc, how)()
        return await proc.wait()

    assert run(loop, main()) == expected


# --- bad input ----------------------------------------------------------------------------


def test_spawn_errors_raise_from_the_await_and_leak_nothing(loop, tmp_path):
    not_executable = tmp_path / "script"
    not_executable.write_text("#!/bin/sh\nexit 0\n")
    not_executable.chmod(0o644)
    before = warmed_fds(loop)

    async def main():
        failures = []
        cases = [
            (("/nonexistent/program",), {}),
            ((PY, "-c", "pass"), {"cwd": str(tmp_path / "missing")}),
            ((str(not_executable),), {}),
            ((PY, "-c", 1), {}),
        ]
        for args, kwargs in cases:
            with pytest.raises(Exception) as info:
                await asyncio.create_subprocess_exec(*args, stdin=PIPE, stdout=PIPE, **kwargs)
            failures.append(type(info.value))
        return failures

    assert run(loop, main()) == [FileNotFoundError, FileNotFoundError, PermissionError, TypeError]
    collect()
    assert open_fds() == before
    assert zombies() == []


@pytest.mark.parametrize("kwargs, message", [
    ({"universal_newlines": True}, "universal_newlines must be False"),
    ({"shell": True}, "shell must be False"),
    ({"bufsize": 1}, "bufsize must be 0"),
    ({"text": True}, "text must be False"),
    ({"encoding": "utf-8"}, "encoding must be None"),
    ({"errors": "strict"}, "errors must be None"),
])
def test_exec_refuses_text_mode_as_asyncio(loop, kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        run(loop, loop.subprocess_exec(asyncio.SubprocessProtocol, "true", **kwargs))


@pytest.mark.parametrize("cmd, kwargs, message", [
    (["true"], {}, "cmd must be a string"),
    ("true", {"shell": False}, "shell must be True"),
    ("true", {"universal_newlines": True}, "universal_newlines must be False"),
    ("true", {"bufsize": 1}, "bufsize must be 0"),
])
def test_shell_refuses_as_asyncio(loop, cmd, kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        run(loop, loop.subprocess_shell(asyncio.SubprocessProtocol, cmd, **kwargs))


# --- faults --------------------------------------------------------------------------------


class Recorder(asyncio.SubprocessProtocol):
    def __init__(self, loop):
        self.events = []
        self.data = {1: b"", 2: b""}
        self.done = loop.create_future()

    def pipe_data_received(self, fd, data):
        self.data[fd] += data

    def pipe_connection_lost(self, fd, exc):
        self.events.append(("pipe_connection_lost", fd))

    def process_exited(self):
        self.events.append(("process_exited",))

    def connection_lost(self, exc):
        self.events.append(("connection_lost", exc))
        self.done.set_result(None)


def test_child_closing_its_pipes_early(loop):
    code = ("import os, sys; sys.stdout.write('out'); sys.stdout.flush(); os.close(1); "
            "os.close(2); sys.stdin.read()")

    async def main():
        transport, proto = await loop.subprocess_exec(lambda: Recorder(loop), PY, "-c", code)
        while sorted(proto.events) != [("pipe_connection_lost", 1), ("pipe_connection_lost", 2)]:
            await asyncio.sleep(0.01)
        assert transport.get_returncode() is None  # still running, reading stdin
        transport.get_pipe_transport(0).close()
        await proto.done
        transport.close()
        return transport.get_returncode(), proto

    returncode, proto = run(loop, main())
    assert returncode == 0
    assert proto.data[1] == b"out"
    # asyncio's order: every pipe lost, the exit, then the transport lost.
    assert proto.events[-2:] == [("process_exited",), ("connection_lost", None)]
    assert ("pipe_connection_lost", 0) in proto.events[:-2]


def test_child_that_does_not_read_stdin_pauses_the_writer_and_loses_nothing(loop):
    code = ("import signal, sys; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1}); "
            "sys.stdout.write('ready\\n'); sys.stdout.flush(); signal.sigwait({signal.SIGUSR1}); "
            "d = sys.stdin.buffer.read(); sys.stdout.write(str(len(d)) + ' ' + str(sum(d)))")
    data = os.urandom(2 << 20)

    async def main():
        proc = await spawn_py(code)
        assert await proc.stdout.readline() == b"ready\n"
        proc.stdin.write(data)
        drain = asyncio.ensure_future(proc.stdin.drain())
        for _ in range(10):  # the pipe fills: 2 MiB never fit while the child waits
            await asyncio.sleep(0)
        blocked = not drain.done()
        buffered = proc.stdin.transport.get_write_buffer_size()
        proc.send_signal(signal.SIGUSR1)
        await drain
        proc.stdin.close()
        out = await proc.stdout.read()
        return blocked, buffered, out, await proc.wait()

    blocked, buffered, out, returncode = run(loop, main())
    assert blocked and buffered > 0
    assert out == f"{len(data)} {sum(data)}".encode()
    assert returncode == 0


def test_child_exiting_while_stdin_is_buffered(loop):
    async def main():
        proc = await spawn_py("import sys; sys.stdin.buffer.read(10)")
        proc.stdin.write(b"x" * (4 << 20))
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            await proc.stdin.drain()
        return await proc.wait()

    # asyncio's _feed_stdin ignores these errors; drain() itself reports them
    assert run(loop, main()) == 0


@pytest.mark.leaves_io_open("closes the loop while the child and its pipes still run")
def test_loop_closed_under_a_running_child(new_loop, loop_name):
    if loop_name == "asyncio" and sys.version_info >= (3, 12):
        pytest.skip("the stock loop of Python 3.12+ watches children with a pidfd reader "
                    "of its own and leaves a zombie when it closes first")
    loop = new_loop()

    async def main():
        return await spawn_py("import sys; sys.stdin.read()")

    proc = run(loop, main())
    pid = proc.pid
    loop.close()
    os.kill(pid, signal.SIGKILL)
    assert gone(pid), "the child was left a zombie"
    unraisable, hook = [], sys.unraisablehook
    sys.unraisablehook = lambda u: unraisable.append(repr(u.exc_value))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del proc
            collect()
    finally:
        sys.unraisablehook = hook
    messages = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert any(m.startswith("unclosed transport <") for m in messages), messages
    # The stock transport's __del__ goes on to call_soon() on the closed
    # loop (RuntimeError, ignored): the oracle's own defect; uvpy's is quiet.
    if loop_name == "uvpy":
        assert unraisable == []
    else:
        assert set(unraisable) <= {"RuntimeError('Event loop is closed')"}, unraisable


def test_a_thousand_children_leave_no_fd_and_no_zombie(loop):
    before = warmed_fds(loop)

    async def main():
        codes = []
        for _ in range(250):
            procs = [await asyncio.create_subprocess_exec("true") for _ in range(4)]
            codes += [await p.wait() for p in procs]
        return codes

    assert run(loop, main()) == [0] * 1000
    collect()
    assert open_fds() == before
    assert zombies() == []


def test_cancelled_spawn_kills_and_reaps(loop):
    async def main():
        task = asyncio.ensure_future(asyncio.create_subprocess_exec("sleep", "30"))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    before = warmed_fds(loop)
    run(loop, main())
    deadline = time.monotonic() + 10
    while True:  # the killed child's pipes close as it is reaped
        collect()
        if open_fds() == before or time.monotonic() > deadline:
            break
        run(loop, asyncio.sleep(0.01))
    assert open_fds() == before
    while zombies() and time.monotonic() < deadline:
        run(loop, asyncio.sleep(0.02))
    assert zombies() == []


# --- where the loop runs ----------------------------------------------------------------------


def _run_in_thread(factory, coro_fn):
    result = {}

    def target():
        loop = factory()
        try:
            result["value"] = loop.run_until_complete(coro_fn())
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            result["error"] = exc
        finally:
            loop.close()

    t = threading.Thread(target=target)
    t.start()
    t.join(60)
    assert not t.is_alive()
    if "error" in result:
        raise result["error"]
    return result["value"]


async def _echo_n(n):
    outs = []
    for i in range(n):
        proc = await asyncio.create_subprocess_exec("echo", str(i), stdout=PIPE)
        out, _ = await proc.communicate()
        outs.append((out, proc.returncode))
    return outs


def test_loop_in_a_thread(loop_name):
    assert _run_in_thread(LOOP_FACTORIES[loop_name], lambda: _echo_n(5)) == [
        (f"{i}\n".encode(), 0) for i in range(5)]


def test_several_loops_at_once(loop_name):
    results = [None] * 3

    def one(k):
        results[k] = _run_in_thread(LOOP_FACTORIES[loop_name], lambda: _echo_n(10))

    threads = [threading.Thread(target=one, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [[(f"{i}\n".encode(), 0) for i in range(10)]] * 3


def test_in_a_forked_child(loop_name):
    pid = os.fork()
    if pid == 0:  # the child: a fresh loop runs a subprocess of its own
        code = 1
        try:
            loop = LOOP_FACTORIES[loop_name]()
            try:
                out = loop.run_until_complete(_echo_n(2))
            finally:
                loop.close()
            code = 0 if out == [(b"0\n", 0), (b"1\n", 0)] else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_application_sigchld_handler_is_left_alone(loop):
    seen = []

    def handler(signum, frame):
        seen.append(signum)

    old = signal.signal(signal.SIGCHLD, handler)
    try:
        assert run(loop, _echo_n(3)) == [(f"{i}\n".encode(), 0) for i in range(3)]
        assert signal.getsignal(signal.SIGCHLD) is handler
    finally:
        signal.signal(signal.SIGCHLD, old)
    assert seen and set(seen) == {signal.SIGCHLD}


def test_uvpy_watches_exits_without_threads(loop_name):
    """uvpy-only: exits are seen through a pidfd in the loop, no helper thread."""
    if loop_name != "uvpy":
        pytest.skip("the stock loop of Python 3.11 waits in a thread per child")
    loop = LOOP_FACTORIES[loop_name]()
    try:
        async def main():
            proc = await spawn_py("import sys; sys.stdin.read()")
            names = {t.name for t in threading.enumerate()}
            proc.stdin.close()
            await proc.wait()
            return names

        names = run(loop, main())
        assert not any("waitpid" in n or "waitpid" in n.lower() for n in names), names
        assert loop._children == {}
    finally:
        loop.close()
    gc.collect()


# --- options passed through to the child ---------------------------------------------------


def test_popen_options_reach_the_child(loop, tmp_path):
    r, w = os.pipe()
    code = ("import os, sys; print(os.getcwd(), os.environ.get('UVPY_T'), "
            "os.getsid(0) == os.getpid(), oct(os.umask(0)), os.write(%d, b'via fd') > 0)" % w)

    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", code, stdout=PIPE, cwd=str(tmp_path),
            env={**os.environ, "UVPY_T": "set"}, start_new_session=True,
            umask=0o027, pass_fds=(w,))
        out, _ = await proc.communicate()
        return out.decode().split(), proc.returncode

    fields, returncode = run(loop, main())
    os.close(w)
    assert os.read(r, 100) == b"via fd"
    os.close(r)
    assert returncode == 0
    assert fields == [str(tmp_path), "set", "True", "0o27", "True"]


def test_stdio_as_devnull_stdout_a_file_and_an_fd(loop, tmp_path):
    path = tmp_path / "out"
    code = "import sys; print('out', flush=True); print('err', file=sys.stderr); print(sys.stdin.read() == '')"

    async def main():
        with open(path, "wb") as f:
            proc = await asyncio.create_subprocess_exec(
                PY, "-c", code, stdin=asyncio.subprocess.DEVNULL, stdout=f,
                stderr=asyncio.subprocess.STDOUT)
            assert proc.stdin is None and proc.stdout is None and proc.stderr is None
            await proc.wait()
        fd = os.open(path, os.O_RDONLY)
        try:
            proc = await asyncio.create_subprocess_exec(
                PY, "-c", "import sys; sys.stdout.write(sys.stdin.read().upper())",
                stdin=fd, stdout=PIPE)
            out, _ = await proc.communicate()
        finally:
            os.close(fd)
        return out

    assert run(loop, main()) == b"OUT\nERR\nTRUE\n"


def test_uvpy_without_pidfd_waits_in_a_thread(loop_name, monkeypatch):
    """uvpy-only: where pidfd_open fails (old kernel, seccomp), a thread per
    child waits for it; exits, output and reaping are the same."""
    if loop_name != "uvpy":
        pytest.skip("uvpy's fallback path")

    def no_pidfd(pid, flags=0):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    loop = LOOP_FACTORIES[loop_name]()
    try:
        outs = run(loop, _echo_n(3))
        assert outs == [(f"{i}\n".encode(), 0) for i in range(3)]
        assert loop._children == {}
        proc = run(loop, spawn_py("import sys; sys.stdin.read()"))
        names = {t.name for t in threading.enumerate()}
        assert f"uvpy-waitpid-{proc.pid}" in names
        proc.kill()
        assert run(loop, proc.wait()) == -signal.SIGKILL
    finally:
        loop.close()
    assert zombies() == []
