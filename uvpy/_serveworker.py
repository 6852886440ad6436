"""One worker process of uvpy.serve(): main(*args) on its own uvpy loop.

The supervisor (uvpy/_serve.py) starts this file's main() in a fresh
interpreter with one end of a socketpair, its control socket, and any
listening sockets it bound (inherited at the same fd numbers). Over the
control socket the worker reads one init message, and writes one byte, b"U",
when it is up; it never reads anything else from it, so EOF there means the
supervisor is gone.

Invariants:

1. The worker is prepared the way multiprocessing's spawn prepares a child
   (sys.path, cwd, the parent's __main__ run as __mp_main__, without its
   `if __name__ == "__main__":` block) before the main function is
   unpickled or imported; uvpy.serve() called while that runs raises
   instead of starting workers of workers.
2. The worker is up once its loop listens on a server (the loop's
   `_on_serving` hook), or once main has run UP_AFTER seconds without
   listening on anything. It says so once.
3. A stop request is SIGTERM or EOF on the control socket (the supervisor
   died). SIGINT and SIGHUP are the supervisor's to act on (a terminal's
   Ctrl+C or hangup reaches the whole process group): the worker ignores
   them, with a Python-level handler rather than SIG_IGN, which processes
   that main starts would inherit. A main that installs its own SIGTERM
   handler (uvicorn.Server does, with signal.signal; or with
   loop.add_signal_handler) stops itself: the worker then only waits
   for main (up to graceful_timeout, then cancels it), and turns EOF on the
   control socket into a SIGTERM for it. (A loop handler takes the place of
   the worker's own, so the worker sees no SIGTERM then: only the
   supervisor's kill bounds main's stop.) Otherwise a request stops
   gracefully: every server of the loop stops accepting, the worker waits
   until their connections are all closed, main ends by itself, or
   graceful_timeout passes, then cancels main; asyncio.Runner then cancels
   what is left and closes the loop. Requests after the first change
   nothing: a SIGTERM to the whole process group (systemd's default
   KillMode=control-group, `timeout`, `kill -TERM -PGID`) reaches a worker
   besides the supervisor's own, and is the same request. The supervisor
   answers Ctrl+C twice with SIGKILL, not with a second request.
4. The exit status is the program's, as `python script.py` would give it:
   0 when main returns or was stopped as asked, 1 with the traceback on
   stderr when main raises (or a stop finds it raising), sys.exit()'s.
5. An orphan (EOF on the control socket) still alive graceful_timeout +
   KILL_MARGIN seconds later (a main that ignores its cancellation, an
   executor job or a non-daemon thread that never ends) SIGKILLs itself,
   as its supervisor would have killed it; with graceful_timeout None it
   waits as long as it takes.
6. The control socket and the inherited listeners are made non-inheritable
   as soon as they arrive: a child main starts with close_fds=False or
   os.system() (a shell, a daemon) does not keep the port bound after the
   workers are gone.
7. A heartbeat (HEARTBEAT on the control socket) goes out from a timer of
   the worker's loop every heartbeat_timeout / BEATS seconds, from start
   until the loop is closed: a loop that stays blocked sends none, and the
   supervisor kills the worker (_serve invariant 3). Once the loop is
   closed the worker says DONE: what is left (joining non-daemon threads)
   is the interpreter's exit, not a stuck loop.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import pickle
import signal
import socket
import struct
import sys
import threading
import time

LENGTH = struct.Struct("<Q")
UP = b"U"
HEARTBEAT = b"H"
DONE = b"D"
UP_AFTER = 1.0  # seconds of main without a listening server before it counts as up

_booting = False
_inherited = None  # the listening sockets from the supervisor, once made
_inherited_inodes = frozenset()  # their (st_dev, st_ino): is_inherited()


def inherited_sockets():
    """The listening sockets uvpy.serve(bind=...) made for this worker, as
    socket.socket objects, in the order bind named them (the same objects on
    every call); an empty list outside a worker or without bind."""
    return list(_inherited or ())


def is_inherited(sock):
    """Whether sock is one of inherited_sockets() or a copy of one (dup(),
    socket.fromfd(): the same socket, found by its inode): its file, for a
    Unix socket, is the supervisor's to remove (the loop leaves it)."""
    if not _inherited_inodes:
        return False
    try:
        st = os.fstat(sock.fileno())
    except OSError:
        return False
    return (st.st_dev, st.st_ino) in _inherited_inodes


def read_init(ctl):
    head = _recv_exactly(ctl, LENGTH.size)
    return pickle.loads(_recv_exactly(ctl, LENGTH.unpack(head)[0]))


def _recv_exactly(sock, n):
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise EOFError("uvpy.serve: the supervisor closed the control socket during start-up")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _resolve(target):
    """main from its pickle (a function given to uvpy.serve) or from a
    "module:attr" string (python -m uvpy serve)."""
    if isinstance(target, bytes):
        return pickle.loads(target)
    module_name, _, attr = target.partition(":")
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AttributeError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


def _ignore(signum, frame):
    pass


def main(fd):
    global _booting, _inherited, _inherited_inodes
    for signum in (signal.SIGINT, signal.SIGHUP):  # invariant 3
        signal.signal(signum, _ignore)
    import multiprocessing.spawn

    import uvpy

    ctl = socket.socket(fileno=fd)
    init = read_init(ctl)
    for f in (fd, *init["fds"]):  # invariant 6: passed to this process, not to its children
        os.set_inheritable(f, False)
    _booting = True
    try:
        if init["preparation"] is not None:
            multiprocessing.spawn.prepare(init["preparation"])
        fn = _resolve(init["main"])
    finally:
        _booting = False
    _inherited = [socket.socket(fileno=f) for f in init["fds"]]
    _inherited_inodes = frozenset((st.st_dev, st.st_ino) for st in map(os.fstat, init["fds"]))
    loop = uvpy.new_event_loop(init["backend"])
    try:
        with asyncio.Runner(loop_factory=lambda: loop) as runner:
            runner.run(_serve(fn, init["args"], ctl, init["graceful_timeout"], init["heartbeat"]))
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        _report(exc)
        return 1
    finally:
        try:
            ctl.send(DONE)  # invariant 7
        except OSError:
            pass
    # The supervisor's SIGTERM may still be on its way after the loop has
    # put SIGTERM's default back: exiting now is what it asks for anyway.
    signal.signal(signal.SIGTERM, _ignore)
    ctl.close()
    return 0


def _report(exc):
    """Print main's exception as `python script.py` would (invariant 4):
    the traceback from main's own frame on, without this module's frames
    and asyncio's above it."""
    import traceback

    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code is not _call.__code__:
        tb = tb.tb_next
    tb = exc.__traceback__ if tb is None else tb.tb_next
    traceback.print_exception(type(exc), exc, tb, file=sys.stderr)
    sys.stderr.flush()


async def _call(fn, args):
    awaitable = fn(*args)
    if not hasattr(awaitable, "__await__"):
        raise TypeError(f"uvpy.serve() needs a coroutine function; {fn!r} returned "
                        f"{type(awaitable).__name__}, not an awaitable")
    return await awaitable


async def _serve(fn, args, ctl, graceful_timeout, heartbeat=None):
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def request_stop():  # invariant 3: the first request is the only one
        if not stop.done():
            stop.set_result(None)

    def control_readable():
        try:
            data = ctl.recv(64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(ctl.fileno())
            if graceful_timeout is not None:
                _end_orphan_after(graceful_timeout)
            if main_owns_sigterm():
                signal.raise_signal(signal.SIGTERM)
            else:
                request_stop()

    def main_owns_sigterm():  # with signal.signal, or with loop.add_signal_handler
        return (signal.getsignal(signal.SIGTERM) is not ours
                or loop._signal_handlers.get(signal.SIGTERM) is not our_handle)

    def beat():  # invariant 7
        nonlocal beat_timer
        try:
            ctl.send(HEARTBEAT)
        except OSError:
            pass  # a full buffer (the supervisor is slow) or EOF, seen by control_readable
        beat_timer = loop.call_later(heartbeat, beat)

    def report_up(*_):  # invariant 2
        loop._on_serving = None
        up_timer.cancel()
        try:
            ctl.send(UP)
        except OSError:
            pass  # the supervisor is gone; control_readable sees EOF

    loop.add_signal_handler(signal.SIGTERM, request_stop)
    ours = signal.getsignal(signal.SIGTERM)
    our_handle = loop._signal_handlers[signal.SIGTERM]
    ctl.setblocking(False)
    loop.add_reader(ctl.fileno(), control_readable)
    loop._on_serving = report_up
    up_timer = loop.call_later(UP_AFTER, report_up)
    beat_timer = loop.call_later(heartbeat, beat) if heartbeat is not None else None
    task = loop.create_task(_call(fn, args))
    try:
        await asyncio.wait((task, stop), return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            if main_owns_sigterm():  # invariant 3: main stops itself
                await asyncio.wait((task,), timeout=graceful_timeout)
            else:
                await _drain(loop, task, graceful_timeout)
    finally:
        up_timer.cancel()  # beat_timer goes on until the loop is closed
        loop._on_serving = None
        loop.remove_reader(ctl.fileno())
    if not task.done():
        task.cancel()
    try:
        return await task
    except asyncio.CancelledError:
        # Stopped as asked (invariant 4) only where a stop was asked for:
        # a main cancelled by anything else ends as asyncio.run()'s would,
        # with the CancelledError.
        if not task.cancelled() or not stop.done():
            raise
        return None


def _end_orphan_after(graceful_timeout):
    """Invariant 5: SIGKILL for this process when it is still alive as long
    after the supervisor's death as the supervisor would have waited. A
    daemon thread, so it acts while the loop is blocked and while the
    interpreter joins non-daemon threads at exit, and never holds the exit
    up itself."""
    from ._serve import KILL_MARGIN

    limit = graceful_timeout + KILL_MARGIN

    def deadline():
        time.sleep(limit)
        os.write(2, f"uvpy.serve worker {os.getpid()}: the supervisor is gone and main did not "
                    f"stop within {limit:.1f} s; killing this worker\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=deadline, name="uvpy.serve orphan deadline", daemon=True).start()


async def _drain(loop, task, graceful_timeout):
    """Invariant 3's graceful part: stop accepting, then wait for the
    connections, main or the timeout, whichever is first."""
    servers = list(loop._servers)
    for server in servers:
        server._stop_accepting()
    drained = [server._until_drained() for server in servers]
    if not drained:
        return  # nothing serves connections: main is cancelled at once
    everything = asyncio.gather(*drained)
    try:
        await asyncio.wait((everything, task), timeout=graceful_timeout,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        everything.cancel()


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
