"""uvpy.serve and `python -m uvpy serve`: a supervisor and its workers.

Each test starts a real supervisor process (with UVPY_BACKEND inherited,
so the suite's two passes cover both backends) running coroutine functions
from serve_apps.py, talks to its workers over real sockets, signals it, and
reads what it logged. Waits are for log lines and connection results; the
deadlines are only safety nets against a hang.

Covered: load spread over reuse_port listeners and a shared inherited
listener, a crash restarted with growing backoff (capped however long the
crash loop), a worker that fails to start, graceful stop (connections
finish, plain, TLS and aiohttp's; idle ones end at the timeout; no limit
with graceful_timeout=None), a second signal, a SIGTERM to the whole
process group, SIGHUP replacing every worker without refusing a
connection, signals during spawning and during a SIGHUP round, a killed
supervisor, a main that ignores its cancellation (killed by the supervisor,
or by itself as an orphan), a main that returns, the same from a script
that calls uvpy.serve() (main in __main__), a worker slow to read its init,
workers never up (killed at start_timeout, at the first start and in a
SIGHUP round), a worker whose loop stays blocked (no heartbeat: killed and
restarted) and one whose main returned, up or not yet (not, also when a
due check is what reads its DONE), a stopped supervisor or process group
(no worker killed for the time nobody ran), interpreter flags, no fd or
child left behind, and bad arguments.
"""

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import uvpy
from conftest import free_port
from proc_helpers import zombies

HERE = os.path.dirname(os.path.abspath(__file__))
DEADLINE = 60.0
UP = re.compile(r"worker (\d+) \(pid (\d+)\) is up")


class Supervisor:
    """`python -m uvpy serve ARGS` (or `python SCRIPT`) with its log in a file."""

    def __init__(self, tmp_path, *args, script=None, flags=(), group=False):
        self.log_path = tmp_path / f"serve-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")
        cmd = [sys.executable, *flags]
        cmd += [script] if script else ["-m", "uvpy", "serve", *args]
        # group: in a process group of its own, which killpg() can signal
        # as a service manager signals every process of a service.
        self.proc = subprocess.Popen(cmd, cwd=HERE, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, process_group=0 if group else None)

    def text(self):
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern, count=1, orphans=False):
        """Until `pattern` (a regex) matches count times in the log; with
        orphans, workers may still write it after the supervisor is gone."""
        deadline = time.monotonic() + DEADLINE
        while True:
            found = re.findall(pattern, self.text())
            if len(found) >= count:
                return found
            if self.proc.poll() is not None and not orphans:
                found = re.findall(pattern, self.text())
                if len(found) >= count:
                    return found
                raise AssertionError(f"exited {self.proc.returncode} before {pattern!r}:\n{self.text()}")
            assert time.monotonic() < deadline, f"no {pattern!r} in:\n{self.text()}"
            time.sleep(0.02)

    def up_pids(self):
        return {int(pid) for _, pid in UP.findall(self.text())}

    def signal(self, signum):
        self.proc.send_signal(signum)

    def wait(self):
        try:
            return self.proc.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the supervisor did not exit:\n{self.text()}") from None

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in self.up_pids():  # a failed test must not leave workers running
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._log.close()


@pytest.fixture
def supervise(tmp_path):
    made = []

    def start(*args, script=None, flags=(), group=False):
        made.append(Supervisor(tmp_path, *args, script=script, flags=flags, group=group))
        return made[-1]
    yield start
    for s in made:
        s.close()


def alive(pid):
    """Whether pid is a running process (not gone, not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def until_gone(pids):
    deadline = time.monotonic() + DEADLINE
    while any(alive(p) for p in pids):
        assert time.monotonic() < deadline, f"still running: {[p for p in pids if alive(p)]}"
        time.sleep(0.02)


def connect(address):
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(DEADLINE)
    try:
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def read_all(sock):
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


@contextlib.contextmanager
def held_connection(port):
    """A connection to serve_apps' echo that its worker holds open ("hold")
    until the client sends another line."""
    with connect(("127.0.0.1", port)) as sock:
        sock.sendall(b"hold\n")
        assert sock.recv(100).startswith(b"held ")
        yield sock


def ask(address, line=b"pid"):
    with connect(address) as sock:
        sock.sendall(line + b"\n")
        return read_all(sock).decode()


# -- serving ----------------------------------------------------------------------------

def test_workers_share_a_reuse_port_port_and_stop_on_sigterm(supervise):
    port = free_port()
    s = supervise("--workers", "2", "serve_apps:echo", str(port))
    s.wait_for(UP.pattern, 2)
    workers = s.up_pids()
    answered = {int(ask(("127.0.0.1", port))) for _ in range(60)}
    # The kernel hashes each new connection to one of the listeners: with 60
    # connections both get some unless the hash is broken (2**-59).
    assert answered == workers and len(workers) == 2 and os.getpid() not in workers
    s.signal(signal.SIGTERM)
    assert s.wait() == 0
    until_gone(workers)
    log = s.text()
    assert "SIGTERM: stopping the workers" in log
    assert len(re.findall(r"stopped \(status 0\)", log)) == 2
    assert "Traceback" not in log


def test_workers_share_an_inherited_unix_listener(supervise, tmp_path):
    path = str(tmp_path / "app.sock")
    s = supervise("--workers", "2", "--bind", f"unix:{path}", "serve_apps:echo")
    s.wait_for(UP.pattern, 2)
    answers = {int(ask(path)) for _ in range(20)}
    assert answers <= s.up_pids() and answers
    s.signal(signal.SIGINT)
    assert s.wait() == 0
    assert not os.path.exists(path)  # the supervisor bound it, and removed it


def test_a_child_of_a_worker_does_not_inherit_its_listeners(supervise, tmp_path):
    # A process main starts with os.system() or close_fds=False (a shell, a
    # daemon) must not keep the port bound after the workers are gone.
    s = supervise("--workers", "1", "--bind", f"unix:{tmp_path / 'app.sock'}",
                  "--bind", "127.0.0.1:0", "serve_apps:what_a_child_inherits")
    assert s.wait() == 0
    [(mine, child)] = re.findall(r"listeners \[([\d, ]+)\] child \[([\d, ]+)\]", s.text())
    mine, child = [{int(fd) for fd in group.split(",")} for group in (mine, child)]
    assert len(mine) == 2 and {0, 1, 2} <= child, s.text()
    assert not mine & child


def test_a_worker_leaves_the_file_of_an_inherited_unix_socket_it_copied(supervise, tmp_path):
    # The file is the supervisor's: a worker replaced by SIGHUP must not
    # remove it (cleanup_socket, Python 3.13's default) under the new one,
    # not even through a dup of the inherited socket.
    path = str(tmp_path / "app.sock")
    s = supervise("--workers", "1", "--bind", f"unix:{path}", "serve_apps:echo_on_a_copy")
    s.wait_for(UP.pattern)
    old = s.up_pids()
    s.signal(signal.SIGHUP)
    s.wait_for("workers replaced")
    until_gone(old)
    assert int(ask(path)) in s.up_pids() - old
    s.signal(signal.SIGTERM)
    assert s.wait() == 0
    assert not os.path.exists(path)


def test_a_script_serving_its_own_main_on_a_socket_it_bound(supervise, tmp_path):
    script = tmp_path / "server.py"
    script.write_text(textwrap.dedent(f"""\
        import asyncio, os, socket, sys
        sys.path.insert(0, {HERE!r})
        import uvpy

        async def handle(reader, writer):
            await reader.readline()
            writer.write(f"{{__name__}} {{os.getpid()}}\\n".encode())
            await writer.drain()
            writer.close()

        async def main(greeting):
            [sock] = uvpy.inherited_sockets()
            server = await asyncio.start_server(handle, sock=sock)
            print(greeting, sock.getsockname()[1], flush=True)
            await server.serve_forever()

        if __name__ == "__main__":
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            uvpy.serve(main, "listening on", workers=1, bind=[sock])
            print("serve returned", flush=True)
        """))
    s = supervise(script=str(script))
    [port] = s.wait_for(r"listening on (\d+)")
    # main came from the script, run in the worker as __mp_main__.
    assert ask(("127.0.0.1", int(port))).split()[0] == "__mp_main__"
    s.signal(signal.SIGTERM)
    assert s.wait() == 0
    assert "serve returned" in s.text()


def test_workers_run_with_the_interpreter_flags_of_the_supervisor(supervise, tmp_path):
    # As multiprocessing's spawn children do: `python -X dev -O server.py`
    # runs main in dev mode (asyncio debug) and optimized, in each worker.
    script = tmp_path / "flags.py"
    script.write_text(textwrap.dedent(f"""\
        import asyncio, sys
        sys.path.insert(0, {HERE!r})
        import uvpy

        async def main():
            print("flags", sys.flags.dev_mode, sys.flags.optimize,
                  asyncio.get_running_loop().get_debug(), flush=True)

        if __name__ == "__main__":
            uvpy.serve(main, workers=1)
        """))
    s = supervise(script=str(script), flags=("-X", "dev", "-O"))
    assert s.wait() == 0
    assert re.findall(r"flags (\w+) (\w+) (\w+)", s.text()) == [("True", "1", "True")]


# -- faults -----------------------------------------------------------------------------

def test_a_crashed_worker_is_restarted_and_the_others_keep_serving(supervise):
    port = free_port()
    s = supervise("--workers", "2", "serve_apps:echo", str(port))
    s.wait_for(UP.pattern, 2)
    before = s.up_pids()
    with connect(("127.0.0.1", port)) as sock:
        sock.sendall(b"crash\n")
        assert read_all(sock) == b""  # the worker died under it
    s.wait_for(r"exited with status 3; restarting it in 0\.1 s")
    s.wait_for(UP.pattern, 3)
    after = s.up_pids() - before
    assert len(after) == 1
    assert {int(ask(("127.0.0.1", port))) for _ in range(60)} == (before | after) - _dead(before)
    s.signal(signal.SIGTERM)
    assert s.wait() == 0


def _dead(pids):
    return {p for p in pids if not alive(p)}


def test_a_crash_loop_backs_off(supervise):
    s = supervise("--workers", "1", "serve_apps:crash_when_up", str(free_port()))
    delays = s.wait_for(r"exited with status 3; restarting it in ([\d.]+) s", 4)
    assert [float(d) for d in delays[:4]] == [0.1, 0.2, 0.4, 0.8]
    s.signal(signal.SIGTERM)
    assert s.wait() == 0


def test_a_worker_whose_loop_stays_blocked_is_killed_and_restarted(supervise):
    port = free_port()
    s = supervise("--workers", "1", "--heartbeat-timeout", "1", "serve_apps:echo", str(port))
    [(_, pid)] = s.wait_for(UP.pattern)
    time.sleep(2.5)  # a worker whose loop runs keeps beating: no kill in 2.5 timeouts
    assert ask(("127.0.0.1", port)) == f"{pid}\n"
    assert "heartbeat" not in s.text()
    with connect(("127.0.0.1", port)) as sock:
        sock.sendall(b"block\n")
        s.wait_for(rf"worker 0 \(pid {pid}\) sent no heartbeat for 1\.\d s "
                   r"\(its event loop is blocked\); killing it")
        s.wait_for(r"restarting it in")
    [_, (_, new)] = s.wait_for(UP.pattern, 2)
    assert ask(("127.0.0.1", port)) == f"{new}\n" and new != pid
    s.signal(signal.SIGTERM)
    assert s.wait() == 0


@pytest.mark.parametrize("stopped", ["the supervisor", "the process group"])
def test_a_stopped_supervisor_kills_no_worker_for_missing_heartbeats(supervise, stopped):
    # SIGSTOP for longer than heartbeat_timeout: of the supervisor alone
    # (its workers go on beating into the socket), or of the whole group
    # (Ctrl+Z, then fg: nobody ran). Neither is a blocked worker loop.
    port = free_port()
    s = supervise("--workers", "1", "--heartbeat-timeout", "1", "serve_apps:echo", str(port),
                  group=True)
    [(_, pid)] = s.wait_for(UP.pattern)
    stop = (lambda sig: s.proc.send_signal(sig)) if stopped == "the supervisor" else \
        (lambda sig: os.killpg(s.proc.pid, sig))
    for _ in range(2):
        stop(signal.SIGSTOP)
        time.sleep(2.5)
        stop(signal.SIGCONT)
        time.sleep(0.5)
    assert ask(("127.0.0.1", port)) == f"{pid}\n"
    s.signal(signal.SIGTERM)
    assert s.wait() == 0
    assert "heartbeat" not in s.text() and s.up_pids() == {int(pid)}, s.text()


def test_a_worker_whose_main_returned_is_not_killed_while_its_threads_end(supervise):
    # Its loop is closed: no more heartbeats, and none are expected.
    s = supervise("--workers", "1", "--heartbeat-timeout", "0.5",
                  "serve_apps:finish_leaving_a_thread", "2")
    assert s.wait() == 0
    log = s.text()
    assert UP.search(log) and re.search(r"worker 0 \(pid \d+\) finished", log), log
    assert "heartbeat" not in log and "restarting" not in log


def test_workers_stopped_with_their_supervisor_are_not_killed_for_the_silence(supervise):
    # Ctrl+Z in a terminal, then fg: the whole group stops, for longer than
    # heartbeat_timeout, and goes on. The supervisor's clock ran, but
    # neither it nor the workers did: no worker is to blame.
    port = free_port()
    s = supervise("--workers", "1", "--heartbeat-timeout", "1", "serve_apps:echo", str(port),
                  group=True)
    [(_, pid)] = s.wait_for(UP.pattern)
    os.killpg(s.proc.pid, signal.SIGSTOP)
    time.sleep(2.5)
    os.killpg(s.proc.pid, signal.SIGCONT)
    time.sleep(2.5)  # the checks that were due, and two more timeouts
    assert ask(("127.0.0.1", port)) == f"{pid}\n"
    assert "heartbeat" not in s.text()
    s.signal(signal.SIGTERM)
    assert s.wait() == 0


def test_a_worker_whose_main_returned_before_it_was_up_is_not_killed_at_start_timeout(
        supervise):
    # Its loop is closed (DONE): it is exiting, not starting up; main
    # returned, so it is done, as it would be after it was up.
    s = supervise("--workers", "1", "--start-timeout", "0.5",
                  "serve_apps:return_leaving_a_thread", "2")
    assert s.wait() == 0
    log = s.text()
    assert re.search(r"worker 0 \(pid \d+\) finished", log), log
    assert "start_timeout" not in log and "is up" not in log


def test_no_heartbeat_check_is_left_for_a_worker_that_said_up_and_died(loop):
    # Its b"U" is read only once its exit is: that makes it up, and must not
    # arm the heartbeat check of a worker that is gone.
    from uvpy import _serve

    class Exited:
        def get_returncode(self):
            return 3

        def close(self):
            pass

    sup = _serve._Supervisor(loop, 1, {"fds": []}, heartbeat_timeout=30.0)
    w = _serve._Worker(0)
    w.transport, w.exited = Exited(), loop.create_future()
    w.ctl, peer = socket.socketpair()
    peer.sendall(b"U")
    peer.close()
    sup._current[0] = w
    sup._live.add(w)
    sup._exited(w)
    assert w.up and w.exited.result() == 3
    assert w.beat_timer is None or w.beat_timer.cancelled()
    timer, sup._restart[0] = sup._restart[0], None  # the crash's restart
    timer.cancel()


@pytest.mark.parametrize("check", ["heartbeat", "start"])
def test_a_done_that_a_due_check_reads_ends_the_checks(loop, check):
    # A check reads what the control socket holds before it judges (timers
    # run before I/O callbacks): a DONE there means the worker's loop is
    # closed, and the check must not arm itself again. Armed again, it
    # would kill a worker that is joining its threads for longer than the
    # timeout, as silent or as never up.
    from uvpy import _serve

    sup = _serve._Supervisor(loop, 1, {"fds": []}, start_timeout=10.0, heartbeat_timeout=10.0)
    w = _serve._Worker(0)
    w.ctl, peer = socket.socketpair()
    w.ctl.setblocking(False)
    sup._current[0] = w
    sup._live.add(w)
    try:
        if check == "heartbeat":
            sup._up(w)
            due = w.beat_timer.when()
            w.beat_timer.cancel()  # it is due now: called below
            peer.sendall(_serve._serveworker.HEARTBEAT + _serve._serveworker.DONE)
            sup._check_beat(w, due)
            assert w.beat_timer is None
        else:
            peer.sendall(_serve._serveworker.DONE)  # main returned before it was up
            sup._not_up(w, loop.time(), 0.0)
            assert w.start_timer is None and not w.up
    finally:
        for timer in (w.beat_timer, w.start_timer):
            if timer is not None:
                timer.cancel()
        w.ctl.close()
        peer.close()


def test_a_worker_that_dies_right_after_it_said_up_was_up(supervise):
    # Its b"U" and its exit reach the supervisor in the same loop
    # iteration: whichever callback runs first, it was up, so this is a
    # crash (restarted), not a start-up failure (serve() failing).
    s = supervise("--workers", "1", "serve_apps:crash_at_once_when_up", str(free_port()))
    s.wait_for(r"exited with status 3; restarting it in", 3)
    s.signal(signal.SIGTERM)
    assert s.wait() == 0
    assert "before it was up" not in s.text()


def test_the_backoff_stays_at_its_cap_in_a_crash_loop_of_any_length(loop):
    # A worker that crashes every 10 s for hours: 2**k must not outgrow a
    # float (an OverflowError in the exit callback would leave its slot
    # empty for good).
    from uvpy import _serve

    sup = _serve._Supervisor(loop, 1, {"fds": []}, graceful_timeout=1.0)
    worker = _serve._Worker(0)
    for _ in range(2000):
        sup._schedule_restart(worker, 3)
        timer, sup._restart[0] = sup._restart[0], None
        timer.cancel()
    assert timer.when() - loop.time() == pytest.approx(_serve.MAX_RESTART_DELAY, abs=1.0)


@pytest.mark.parametrize("target, shows", [
    ("serve_apps:fail_at_start", "RuntimeError: boom before listening"),
    ("serve_apps:not_a_coroutine_function", "TypeError: uvpy.serve() needs a coroutine function"),
    ("no_such_module_here:main", "ModuleNotFoundError: No module named 'no_such_module_here'"),
    ("serve_apps:missing", "AttributeError: module 'serve_apps' has no attribute 'missing'"),
    ("serve_apps:cancels_itself", "asyncio.exceptions.CancelledError"),
])
def test_a_worker_that_fails_to_start_fails_serve(supervise, target, shows):
    # One worker: the tracebacks of several would interleave in the log.
    s = supervise("--workers", "1", target)
    assert s.wait() == 1
    log = s.text()
    assert shows in log, log
    assert re.search(r"python -m uvpy serve: worker 0 \(pid \d+\) exited with status 1 "
                     r"before it was up", log)
    assert "restarting" not in log
    if target == "serve_apps:fail_at_start":
        # The traceback starts at main's own frame, as `python script.py`'s would.
        assert "_serveworker" not in log and 'serve_apps.py", line' in log


def test_a_worker_that_fails_to_start_stops_the_others(supervise, tmp_path):
    path = str(tmp_path / "app.sock")
    # One worker listens, so it is up; the others fail at once.
    s = supervise("--workers", "3", "serve_apps:fail_unless_first", path)
    assert s.wait() == 1
    log = s.text()
    assert re.search(r"python -m uvpy serve: worker \d \(pid \d+\) exited with status 1 "
                     r"before it was up", log), log
    until_gone(s.up_pids())
    assert "restarting" not in log


def test_a_worker_stuck_before_reading_its_init_does_not_block_the_supervisor(
        supervise, tmp_path):
    # The init message (main's arguments) is larger than a socket buffer,
    # and the worker hangs in its interpreter's start-up (a sitecustomize):
    # a SIGTERM must still stop the supervisor.
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(textwrap.dedent("""\
        import sys, time
        if any("_serveworker" in arg for arg in sys.orig_argv):
            time.sleep(120)
        """))
    script = tmp_path / "big.py"
    script.write_text(textwrap.dedent(f"""\
        import logging, os, sys
        sys.path.insert(0, {HERE!r})
        import uvpy

        async def main(blob):
            pass

        if __name__ == "__main__":
            logging.basicConfig(level=logging.INFO, format="%(message)s")
            os.environ["PYTHONPATH"] = {str(hooks)!r}
            uvpy.serve(main, b"x" * (16 << 20), workers=1)
            print("serve returned", flush=True)
        """))
    s = supervise(script=str(script))
    [pid] = s.wait_for(r"started worker 0 \(pid (\d+)\)")
    s.signal(signal.SIGTERM)
    try:
        assert s.wait() == 0
    finally:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert "serve returned" in s.text()


def test_a_large_argument_reaches_every_worker(supervise, tmp_path):
    script = tmp_path / "big.py"
    script.write_text(textwrap.dedent(f"""\
        import os, sys
        sys.path.insert(0, {HERE!r})
        import uvpy

        async def main(blob):
            print("got", len(blob), blob == bytes(range(256)) * (1 << 16), flush=True)

        if __name__ == "__main__":
            uvpy.serve(main, bytes(range(256)) * (1 << 16), workers=3)
        """))
    s = supervise(script=str(script))
    assert s.wait() == 0
    assert re.findall(r"got (\d+) (\w+)", s.text()) == [(str(1 << 24), "True")] * 3


def test_main_that_returns_is_done_and_not_restarted(supervise):
    s = supervise("--workers", "2", "serve_apps:finish")
    assert s.wait() == 0
    log = s.text()
    assert len(re.findall(r"worker \d \(pid \d+\) finished", log)) == 2
    assert "restarting" not in log


def test_workers_stop_when_the_supervisor_is_killed(supervise):
    port = free_port()
    s = supervise("--workers", "2", "serve_apps:echo", str(port))
    s.wait_for(UP.pattern, 2)
    s.proc.kill()
    s.proc.wait()
    until_gone(s.up_pids())  # EOF on their control socket stops them


# -- stopping and replacing ---------------------------------------------------------------

# how main handles SIGTERM itself -> what it prints when it has stopped
OWN_SIGTERM = {"signal": "stopped by its own handler", "loop": "stopped by its own loop handler"}


@pytest.mark.parametrize("how", list(OWN_SIGTERM))
def test_a_main_with_its_own_sigterm_handler_stops_itself(supervise, how):
    s = supervise("--workers", "2", "serve_apps:own_sigterm", str(free_port()), how)
    s.wait_for(UP.pattern, 2)
    s.signal(signal.SIGTERM)
    assert s.wait() == 0
    log = s.text()
    assert len(re.findall(OWN_SIGTERM[how], log)) == 2
    assert len(re.findall(r"stopped \(status 0\)", log)) == 2


@pytest.mark.parametrize("how", list(OWN_SIGTERM))
def test_an_orphan_with_its_own_sigterm_handler_gets_a_sigterm(supervise, how):
    s = supervise("--workers", "1", "serve_apps:own_sigterm", str(free_port()), how)
    s.wait_for(UP.pattern)
    s.proc.kill()
    s.proc.wait()
    s.wait_for(OWN_SIGTERM[how], orphans=True)
    until_gone(s.up_pids())


def test_graceful_stop_finishes_open_connections_and_refuses_new_ones(supervise):
    port = free_port()
    s = supervise("--workers", "1", "serve_apps:echo", str(port))
    s.wait_for(UP.pattern)
    held = connect(("127.0.0.1", port))
    try:
        held.sendall(b"hold\n")
        assert held.recv(100).startswith(b"held ")
        s.signal(signal.SIGTERM)
        s.wait_for("SIGTERM: stopping the workers")
        deadline = time.monotonic() + DEADLINE
        while True:  # the listener closes first
            try:
                ask(("127.0.0.1", port))
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "still accepting"
            time.sleep(0.01)
        assert s.proc.poll() is None  # still waiting for the held connection
        held.sendall(b"go\n")
        assert read_all(held) == b"done\n"
    finally:
        held.close()
    assert s.wait() == 0
    assert "stopped (status 0)" in s.text()


def test_graceful_stop_drains_an_aiohttp_site(supervise):
    pytest.importorskip("aiohttp")
    port = free_port()
    s = supervise("--workers", "1", "serve_apps:aiohttp_app", str(port))
    s.wait_for(UP.pattern)
    with connect(("127.0.0.1", port)) as held:
        held.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                     b"Connection: close\r\n\r\nab")
        s.signal(signal.SIGTERM)
        s.wait_for("SIGTERM: stopping the workers")
        held.sendall(b"cd")  # the request in flight finishes
        response = read_all(held)
    assert response.startswith(b"HTTP/1.1 200 OK") and response.endswith(b"\r\n\r\nabcd")
    assert s.wait() == 0
    log = s.text()
    assert "cleaned up" in log and "stopped (status 0)" in log and "Traceback" not in log


def test_graceful_stop_finishes_an_open_tls_connection(supervise, ca, tmp_path):
    import ssl

    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(certfile)
    cert.private_key_pem.write_to_path(keyfile)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    port = free_port()
    s = supervise("--workers", "1", "serve_apps:tls_echo", str(port), str(certfile), str(keyfile))
    s.wait_for(UP.pattern)
    with client_context.wrap_socket(connect(("127.0.0.1", port)),
                                    server_hostname="127.0.0.1") as held:
        held.sendall(b"hold\n")
        assert held.recv(100).startswith(b"held ")
        s.signal(signal.SIGTERM)
        s.wait_for("SIGTERM: stopping the workers")
        held.sendall(b"go\n")
        assert read_all(held) == b"done\n"
    assert s.wait() == 0
    assert "stopped (status 0)" in s.text()


def test_graceful_timeout_none_waits_for_the_connection_then_returns(supervise, tmp_path):
    port = free_port()
    script = tmp_path / "none.py"
    script.write_text(textwrap.dedent(f"""\
        import logging, sys
        sys.path.insert(0, {HERE!r})
        import serve_apps, uvpy

        if __name__ == "__main__":
            logging.basicConfig(level=logging.INFO, format="%(message)s")
            uvpy.serve(serve_apps.echo, {port}, workers=1, graceful_timeout=None)
            print("serve returned", flush=True)
        """))
    s = supervise(script=str(script))
    s.wait_for(UP.pattern)
    with held_connection(port) as held:
        s.signal(signal.SIGTERM)
        s.wait_for("SIGTERM: stopping the workers")
        held.sendall(b"go\n")
        assert read_all(held) == b"done\n"
    assert s.wait() == 0
    assert "serve returned" in s.text() and "killing" not in s.text()


def test_graceful_timeout_ends_a_connection_that_never_finishes(supervise):
    port = free_port()
    s = supervise("--workers", "1", "--graceful-timeout", "0.2", "serve_apps:echo", str(port))
    s.wait_for(UP.pattern)
    with held_connection(port) as held:
        s.signal(signal.SIGTERM)
        assert read_all(held) == b""  # closed by the worker once the timeout passed
    assert s.wait() == 0


def test_a_sigterm_to_the_whole_process_group_still_drains(supervise):
    # systemd (KillMode=control-group), `timeout` and `kill -TERM -PGID`
    # signal every process: each worker gets SIGTERM from there and again
    # from the supervisor, which is one stop request, not two.
    port = free_port()
    s = supervise("--workers", "1", "--graceful-timeout", "600", "serve_apps:echo", str(port),
                  group=True)
    s.wait_for(UP.pattern)
    with held_connection(port) as held:
        os.killpg(s.proc.pid, signal.SIGTERM)
        s.wait_for("SIGTERM: stopping the workers")
        held.sendall(b"go\n")
        assert read_all(held) == b"done\n"
    assert s.wait() == 0
    assert "stopped (status 0)" in s.text()


@pytest.mark.parametrize("second", ["SIGTERM", "SIGINT"])
def test_a_second_stop_signal(supervise, second):
    # `timeout` sends SIGTERM to its child and then to the child's group,
    # and a service manager escalates with SIGKILL itself: a repeated
    # SIGTERM changes nothing. Ctrl+C twice (a SIGINT after the stop) kills
    # the workers, as in uvicorn.
    port = free_port()
    s = supervise("--workers", "1", "--graceful-timeout", "600", "serve_apps:echo", str(port))
    s.wait_for(UP.pattern)
    with held_connection(port) as held:
        s.signal(signal.SIGTERM)
        s.wait_for("SIGTERM: stopping the workers")
        s.signal(getattr(signal, second))
        if second == "SIGTERM":
            s.wait_for("SIGTERM again: already stopping")
            held.sendall(b"go\n")
            assert read_all(held) == b"done\n"
        assert s.wait() == 0
    log = s.text()
    if second == "SIGTERM":
        assert "killing" not in log
    else:
        assert "SIGINT again: killing the workers" in log
        assert "stopped (signal SIGKILL)" in log


def test_a_worker_that_ignores_its_cancellation_is_killed(supervise):
    s = supervise("--workers", "1", "--graceful-timeout", "0.2",
                  "serve_apps:ignores_cancellation_once", str(free_port()))
    s.wait_for(UP.pattern)
    s.signal(signal.SIGTERM)
    s.wait_for("ignores the cancellation")
    assert s.wait() == 0  # 0.2 s, then KILL_MARGIN (5 s)
    log = s.text()
    assert re.search(r"worker 0 \(pid \d+\) did not stop within 5\.2 s; killing it", log)
    assert "stopped (signal SIGKILL)" in log


def test_an_orphan_that_ignores_its_cancellation_ends_itself(supervise):
    # No supervisor is left to kill it: the worker does, as late as the
    # supervisor would have.
    s = supervise("--workers", "1", "--graceful-timeout", "0.2",
                  "serve_apps:ignores_cancellation_once", str(free_port()))
    s.wait_for(UP.pattern)
    s.proc.kill()
    s.proc.wait()
    s.wait_for("ignores the cancellation", orphans=True)
    until_gone(s.up_pids())
    assert "the supervisor is gone and main did not stop within 5.2 s" in s.text()


def test_sighup_replaces_every_worker_without_refusing_a_connection(supervise, tmp_path):
    path = str(tmp_path / "app.sock")
    s = supervise("--workers", "2", "--bind", f"unix:{path}", "serve_apps:echo")
    s.wait_for(UP.pattern, 2)
    old = s.up_pids()
    failures, answers, stop = [], [], threading.Event()

    def client():
        while not stop.is_set():
            try:
                answers.append(int(ask(path)))
            except (OSError, ValueError) as exc:
                failures.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        s.signal(signal.SIGHUP)
        s.wait_for("workers replaced")
        new = s.up_pids() - old
        # Until the old workers have left, answers may still come from them.
        until_gone(old)
        seen = len(answers)
        while len(answers) < seen + 20 and not failures:
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join()
    assert failures == []
    assert len(new) == 2 and set(answers[seen:]) <= new
    log = s.text()
    assert len(re.findall(r"stopped \(status 0\)", log)) == 2  # the old two, drained
    s.signal(signal.SIGTERM)
    assert s.wait() == 0


STARTED = r"started worker \d+ \(pid (\d+)\)"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_while_the_workers_are_being_spawned(supervise, signum):
    s = supervise("--workers", "3", "serve_apps:echo", str(free_port()))
    s.wait_for(r"starting 3 workers")  # the supervisor's handlers are in place
    s.signal(signum)
    if signum == signal.SIGHUP:  # a round over workers not up yet, then a stop
        s.wait_for(UP.pattern, 3)
        s.signal(signal.SIGTERM)
    assert s.wait() == 0
    until_gone({int(p) for p in re.findall(STARTED, s.text())})
    assert "Traceback" not in s.text()


def test_a_sighup_during_a_round_runs_another_round_after_it(supervise):
    s = supervise("--workers", "2", "serve_apps:echo", str(free_port()))
    s.wait_for(UP.pattern, 2)
    s.signal(signal.SIGHUP)
    s.wait_for("SIGHUP: replacing the workers")
    s.signal(signal.SIGHUP)
    s.wait_for("workers replaced", 2)
    started = {int(p) for p in re.findall(STARTED, s.text())}
    assert len(started) == 6  # 2, then 2 for each round
    s.signal(signal.SIGTERM)
    assert s.wait() == 0
    until_gone(started)
    assert s.text().count("SIGHUP: replacing the workers") == 2


@pytest.mark.parametrize("when", ["at once", "once a replacement is up"])
def test_a_stop_during_a_sighup_round_stops_every_worker(supervise, when):
    s = supervise("--workers", "2", "serve_apps:echo", str(free_port()))
    s.wait_for(UP.pattern, 2)
    s.signal(signal.SIGHUP)
    if when == "at once":
        s.wait_for("SIGHUP: replacing the workers")
    else:
        s.wait_for(UP.pattern, 3)
    s.signal(signal.SIGTERM)
    assert s.wait() == 0
    until_gone({int(p) for p in re.findall(STARTED, s.text())})


def _old_serve_until_fixed(s, port, old, flag):
    """After a SIGHUP round whose replacement failed: the old workers answer
    every connection; with the fault (flag) gone, the next round replaces
    both; then a clean stop."""
    assert {int(ask(("127.0.0.1", port))) for _ in range(40)} == old
    assert "workers replaced" not in s.text()
    flag.unlink()
    s.signal(signal.SIGHUP)
    s.wait_for("workers replaced")
    s.signal(signal.SIGTERM)
    assert s.wait() == 0
    assert len(s.up_pids() - old) == 2


def test_a_replacement_that_fails_to_start_leaves_the_old_worker_serving(supervise, tmp_path):
    port, flag = free_port(), tmp_path / "broken"
    s = supervise("--workers", "2", "serve_apps:echo_unless", str(flag), str(port))
    s.wait_for(UP.pattern, 2)
    old = s.up_pids()
    flag.write_text("new code that fails")
    s.signal(signal.SIGHUP)
    s.wait_for(r"the replacement worker 0 \(pid \d+\) exited with status 1 before it was up; "
               r"worker 0 \(pid \d+\) keeps serving")
    _old_serve_until_fixed(s, port, old, flag)


def test_a_replacement_not_up_within_start_timeout_is_killed_and_the_old_worker_serves(
        supervise, tmp_path):
    port, flag = free_port(), tmp_path / "blocks"
    s = supervise("--workers", "2", "--start-timeout", "1", "serve_apps:echo_or_block",
                  str(flag), str(port))
    s.wait_for(UP.pattern, 2)
    old = s.up_pids()
    flag.write_text("new code that blocks before it listens")
    s.signal(signal.SIGHUP)
    [stuck] = s.wait_for(r"the replacement worker 0 \(pid (\d+)\) was not up within 1.0 s "
                         r"\(start_timeout\); worker 0 \(pid \d+\) keeps serving")
    until_gone([int(stuck)])
    _old_serve_until_fixed(s, port, old, flag)


def test_a_first_worker_not_up_within_start_timeout_fails_serve(supervise, tmp_path):
    # The worker's import of the script (__main__ run as __mp_main__) never
    # ends: without a start_timeout, serve() would wait for it forever.
    script = tmp_path / "hangs.py"
    script.write_text(textwrap.dedent(f"""\
        import sys, time
        sys.path.insert(0, {HERE!r})
        import uvpy

        async def main():
            pass

        if __name__ == "__mp_main__":
            print("worker importing", flush=True)
            time.sleep(120)

        if __name__ == "__main__":
            try:
                uvpy.serve(main, workers=1, start_timeout=0.5)
            except uvpy.ServeError as exc:
                print("ServeError:", exc, flush=True)
        """))
    s = supervise(script=str(script))
    assert s.wait() == 0
    log = s.text()
    assert "worker importing" in log
    [pid] = re.findall(r"ServeError: worker 0 \(pid (\d+)\) was not up within 0.5 s "
                       r"\(start_timeout\)", log)
    assert not alive(int(pid))


def test_a_stop_of_the_whole_group_during_a_start_is_not_counted_against_it(
        supervise, tmp_path):
    # Ctrl+Z while a worker imports for 1 s, then fg 3 s later: start_timeout
    # (2 s) counts the time the supervisor ran, not the time it was stopped.
    script = tmp_path / "slow.py"
    script.write_text(textwrap.dedent(f"""\
        import logging, sys, time
        sys.path.insert(0, {HERE!r})
        import uvpy
        from serve_apps import echo

        if __name__ == "__mp_main__":
            time.sleep(1.0)

        if __name__ == "__main__":
            logging.basicConfig(level=logging.INFO, format="%(message)s")
            uvpy.serve(echo, {free_port()}, workers=1, start_timeout=2)
        """))
    s = supervise(script=str(script), group=True)
    s.wait_for(r"started worker 0")
    os.killpg(s.proc.pid, signal.SIGSTOP)
    time.sleep(3)
    os.killpg(s.proc.pid, signal.SIGCONT)
    s.wait_for(UP.pattern)
    s.signal(signal.SIGTERM)
    assert s.wait() == 0
    assert "start_timeout" not in s.text(), s.text()


# -- the API ------------------------------------------------------------------------------

async def _main():
    pass


def test_bad_arguments_are_refused_before_anything_starts():
    with pytest.raises(ValueError, match="workers must be at least 1, not 0"):
        uvpy.serve(_main, workers=0)
    with pytest.raises(TypeError, match="workers must be an int, not str"):
        uvpy.serve(_main, workers="2")
    with pytest.raises(TypeError, match="needs a function a new process can import"):
        uvpy.serve(lambda: _main(), workers=1)
    with pytest.raises(TypeError, match="main must be a coroutine function, not int"):
        uvpy.serve(3, workers=1)
    with pytest.raises(ValueError, match="graceful_timeout must be a finite number >= 0"):
        uvpy.serve(_main, workers=1, graceful_timeout=-1)
    with pytest.raises(ValueError, match="start_timeout must be a finite number > 0, not 0"):
        uvpy.serve(_main, workers=1, start_timeout=0)
    with pytest.raises(TypeError, match="start_timeout must be a number of seconds or None, not str"):
        uvpy.serve(_main, workers=1, start_timeout="5")
    with pytest.raises(ValueError, match="heartbeat_timeout must be a finite number > 0"):
        uvpy.serve(_main, workers=1, heartbeat_timeout=float("inf"))
    with pytest.raises(ValueError, match="bind address must be 'HOST:PORT'"):
        uvpy.serve(_main, workers=1, bind="nonsense")
    # getaddrinfo() takes 99999 and binds port 34463 (99999 - 65536).
    with pytest.raises(ValueError, match="port must be 0-65535, not 99999"):
        uvpy.serve(_main, workers=1, bind="127.0.0.1:99999")
    # bind("") would give an autobound abstract address, with no file.
    with pytest.raises(ValueError, match="'unix:' needs a path"):
        uvpy.serve(_main, workers=1, bind="unix:")
    with pytest.raises(TypeError, match="could not pickle the arguments"):
        uvpy.serve(_main, threading.Lock(), workers=1)
    with pytest.raises(ValueError, match="main must be 'module:attr'"):
        uvpy.serve("serve_apps", workers=1)


async def _fail():
    raise RuntimeError("boom in a worker")


def test_serve_leaves_no_fd_file_or_child_behind(tmp_path):
    path = str(tmp_path / "app.sock")
    before = sorted(os.listdir("/proc/self/fd"))
    with pytest.raises(uvpy.ServeError, match="before it was up"):
        uvpy.serve(_fail, workers=2, bind=["127.0.0.1:0", f"unix:{path}"])
    uvpy.serve(_main, workers=2, bind=["127.0.0.1:0", f"unix:{path}"])  # both finish
    with pytest.raises(ValueError, match="bind address must be"):
        uvpy.serve(_main, workers=1, bind=["127.0.0.1:0", f"unix:{path}", "nonsense"])
    assert sorted(os.listdir("/proc/self/fd")) == before
    assert not os.path.exists(path)
    # Every worker was reaped. (Not waitpid(-1): this process may have
    # other children, such as 3.14's multiprocessing forkserver.)
    assert zombies() == []


def test_serve_refuses_a_running_loop_and_a_taken_port(loop):
    async def inside():
        uvpy.serve(_main, workers=1)
    with pytest.raises(RuntimeError, match="cannot be called from a running event loop"):
        loop.run_until_complete(inside())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="error while attempting to bind on address"):
            uvpy.serve(_main, workers=1, bind=f"127.0.0.1:{port}")


def test_inherited_sockets_outside_a_worker_is_empty():
    assert uvpy.inherited_sockets() == []


def test_the_command_line_refuses_bad_input():
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "uvpy", "serve", *args], cwd=HERE,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)
    r = cli("serve_apps")
    assert r.returncode == 2 and "MODULE:ATTR needed, not 'serve_apps'" in r.stderr
    r = cli("--workers", "0", "serve_apps:echo")
    assert r.returncode == 2 and "workers must be at least 1, not 0" in r.stderr
    r = cli("--bind", "127.0.0.1:70000", "serve_apps:echo")
    assert r.returncode == 2 and "port must be 0-65535, not 70000" in r.stderr
    r = cli("--backend", "nope", "serve_apps:echo")
    assert r.returncode == 2 and "nope" in r.stderr
    r = cli("--heartbeat-timeout", "abc", "serve_apps:echo")
    assert r.returncode == 2 and "invalid seconds value: 'abc'" in r.stderr
    r = cli("--start-timeout", "0", "serve_apps:echo")
    assert r.returncode == 2 and "start_timeout must be a finite number > 0, not 0.0" in r.stderr
    # "none" is no limit, for each of the three.
    r = cli("--workers", "1", "--graceful-timeout", "none", "--start-timeout", "None",
            "--heartbeat-timeout", "none", "serve_apps:finish")
    assert r.returncode == 0 and re.search(r"worker 0 \(pid \d+\) finished", r.stderr), r.stderr
    r = cli("--help")
    assert r.returncode == 0 and "--graceful-timeout" in r.stdout


def test_the_command_line_reports_a_fault_after_set_up_as_a_fault_not_a_usage_error(monkeypatch):
    import uvpy.__main__ as cli
    from uvpy import _serve

    ran = []

    def failing_run(config, sockets, *rest):
        ran.append([s.fileno() >= 0 for s in sockets])
        for sock in sockets:
            sock.close()
        raise ValueError("a supervisor fault")

    monkeypatch.setattr(_serve, "_run", failing_run)
    # The command line sets the logger up: undone after. addHandler()
    # appends in place, so the test's list is a copy and the original goes
    # back as it was.
    log = logging.getLogger("uvpy.serve")
    handlers = list(log.handlers)
    monkeypatch.setattr(log, "handlers", list(handlers))
    for attr in ("propagate", "level"):
        monkeypatch.setattr(log, attr, getattr(log, attr))
    # A ValueError while supervising keeps its type and traceback: argparse
    # would have turned it into exit status 2 and a usage line.
    with pytest.raises(ValueError, match="a supervisor fault"):
        cli._serve(["--workers", "1", "--bind", "127.0.0.1:0", "serve_apps:echo"])
    assert ran == [[True]]  # set-up bound the listener and handed it over
    # The same argument error as before set-up is still a usage error.
    with pytest.raises(SystemExit) as exit_:
        cli._serve(["--workers", "0", "serve_apps:echo"])
    assert exit_.value.code == 2
    monkeypatch.undo()
    assert log.handlers == handlers  # none left writing to this test's stderr
