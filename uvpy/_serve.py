"""uvpy.serve(): run a server's coroutine function in N worker processes,
each on its own uvpy loop, under a supervisor.

    async def main():
        server = await asyncio.start_server(handle, "0.0.0.0", 8000, reuse_port=True)
        async with server:
            await server.serve_forever()

    if __name__ == "__main__":
        uvpy.serve(main, workers=4)

The workers share the port through SO_REUSEPORT (the kernel spreads new
connections over them), or through listening sockets the supervisor binds
(`bind=`, one accept queue shared by all) that main gets from
uvpy.inherited_sockets(). The supervisor is this process: it runs a uvpy
loop of its own that only starts, watches and stops workers. What each
worker does is in _serveworker.py.

Invariants:

1. A worker is a fresh interpreter, never a fork of this one: it is spawned
   with loop.subprocess_exec (vfork and exec, its exit watched by pidfd, as
   every subprocess of the loop), with this interpreter's flags (-O,
   -X dev, -W ...), and prepared as multiprocessing's spawn prepares a
   child. So main must be importable: a module-level function
   (pickled by reference), or "module:attr" from `python -m uvpy serve`.
2. Slots: workers slots are numbered 0..N-1 and each holds at most one
   current worker, plus, during a replacement, the one that will take its
   place. Every worker that was started is reaped, and every control
   socket closed, before serve() returns.
3. A worker that exits without being asked to:
   - before it was up (_serveworker invariant 2), while no worker of its
     slot has ever been up: a start-up failure. serve() stops the others
     and raises ServeError naming the worker and its exit status (its own
     traceback is on stderr).
   - with status 0: it is done and is not restarted; serve() returns when
     no worker is left.
   - otherwise (a crash): it is restarted after a backoff of
     RESTART_DELAY * 2**k seconds, at most MAX_RESTART_DELAY, where k counts
     the slot's crashes in a row (up to the cap, however long the crash
     loop); k starts over after a worker that stayed up for STABLE seconds.
   A worker not up start_timeout seconds after it was spawned (an import,
   a blocking call or a hung interpreter start-up that never ends) is
   killed, and counts as one that exited before it was up. A worker that
   is up sends a heartbeat from its loop (_serveworker invariant 7); one
   silent for heartbeat_timeout seconds (its loop blocked: a deadlock, a
   blocking call that never returns) is killed, and counts as a crash.
   Only time the supervisor itself ran counts as silence (_check_beat).
   A worker whose loop is closed (DONE) is expected neither to beat nor to
   be up.
4. The first SIGINT or SIGTERM stops everything gracefully: no restarts,
   SIGTERM to every worker (each drains its connections for up to
   graceful_timeout, then cancels main), and SIGKILL to any worker still
   alive KILL_MARGIN seconds after that. A SIGINT after that (Ctrl+C
   twice) kills the workers at once; a second SIGTERM changes nothing, as
   in uvicorn: `timeout` sends SIGTERM to the process and again to its
   group, and a service manager escalates with SIGKILL of its own.
   serve() then returns None.
5. SIGHUP replaces the workers one slot at a time: a new worker is started
   beside the old one, and only once it is up is the old one asked to stop
   (gracefully, as in 4), so the port never goes unserved. A replacement
   that fails to come up (or is not up within start_timeout) leaves its
   slot's old worker running and ends the round, logged as an error. A
   SIGHUP during a round starts another round after it.
6. Listening sockets of `bind=` are made before any worker starts and
   passed to every worker at the same fd number; serve() closes them when
   it returns, and removes the file of a Unix socket it bound.
7. Everything the supervisor reports goes to the "uvpy.serve" logger:
   starts and stops at INFO, crashes and restarts at WARNING, failures at
   ERROR.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import pickle
import signal
import socket
import stat
import subprocess
import sys

from . import _serveworker
from ._prochandle import default_workers
from ._tcp import bind_listener

__all__ = ("serve", "ServeError", "inherited_sockets")

logger = logging.getLogger("uvpy.serve")

RESTART_DELAY = 0.1
MAX_RESTART_DELAY = 10.0
STABLE = 10.0
KILL_MARGIN = 5.0
BEATS = 4  # heartbeats a worker sends per heartbeat_timeout

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); "
         "from uvpy._serveworker import main; sys.exit(main(int(sys.argv[2])))")

inherited_sockets = _serveworker.inherited_sockets


class ServeError(RuntimeError):
    """A worker of uvpy.serve() failed to start."""


def serve(main, /, *args, workers=None, bind=(), backlog=2048, graceful_timeout=30.0,
          start_timeout=60.0, heartbeat_timeout=30.0, backend=None):
    """Run ``main(*args)``, a coroutine function, in ``workers`` processes
    (default: the CPUs this process may run on), each on its own uvpy loop,
    and supervise them until SIGINT or SIGTERM (see the module docstring).

    ``bind``: addresses the supervisor listens on for the workers, each
    ``"HOST:PORT"``, ``"[IPV6]:PORT"``, ``"unix:PATH"`` or a bound
    socket.socket; main finds them in ``uvpy.inherited_sockets()``. Without
    it, main binds its own, with ``reuse_port=True``. ``graceful_timeout``
    (seconds, or None for no limit) is how long a stopping worker waits for
    its connections. ``start_timeout`` (seconds, or None) is how long a
    worker may take to be up before it is killed as failed, and
    ``heartbeat_timeout`` (seconds, or None) how long a worker's loop may
    stay blocked before the worker is killed as stuck and restarted.
    ``backend`` is the workers' (see uvpy.new_event_loop).

    Returns None once stopped; raises ServeError when a worker fails to
    start. Call it from the main thread, with no event loop running, under
    ``if __name__ == "__main__":``.
    """
    _run(*_setup(main, args, workers, bind, backlog, graceful_timeout, start_timeout,
                 heartbeat_timeout, backend))


def _setup(main, args, workers, bind, backlog, graceful_timeout, start_timeout,
           heartbeat_timeout, backend):
    """serve()'s arguments checked (ValueError, TypeError: a bad argument),
    and its listening sockets bound (OSError): what _run() takes. Apart, so
    that `python -m uvpy serve` reports these as usage errors and nothing
    that happens later."""
    if _serveworker._booting:
        raise RuntimeError(
            "uvpy.serve() was called while a worker was importing the main module: "
            "call it under `if __name__ == \"__main__\":`")
    if not callable(main) and not isinstance(main, str):
        raise TypeError(f"main must be a coroutine function, not {type(main).__name__}")
    workers = _check_workers(workers)
    _check_seconds("graceful_timeout", graceful_timeout, zero=True)
    _check_seconds("start_timeout", start_timeout, zero=False)
    _check_seconds("heartbeat_timeout", heartbeat_timeout, zero=False)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("uvpy.serve() cannot be called from a running event loop")
    if isinstance(main, str):  # "module:attr", imported by each worker
        if ":" not in main:
            raise ValueError(f"main must be 'module:attr', not {main!r}")
        target, preparation = main, _preparation(with_main=False)
    else:
        try:
            target = pickle.dumps(main, protocol=5)
        except Exception as exc:
            raise TypeError(
                f"uvpy.serve() needs a function a new process can import (defined at the top "
                f"level of a module), not {main!r}: {exc}") from None
        preparation = _preparation(with_main=True)
    try:
        payload = pickle.dumps(args, protocol=5)
    except Exception as exc:
        raise TypeError(f"uvpy.serve() could not pickle the arguments for main: {exc}") from None

    from . import new_event_loop

    args = pickle.loads(payload)  # the workers' copy, made before anything is bound
    new_event_loop(backend).close()  # a bad backend name fails before anything is bound
    sockets, paths = _listen(bind, backlog)
    config = {
        "preparation": preparation,
        "main": target,
        "args": args,
        "fds": [s.fileno() for s in sockets],
        "backend": backend,
        "graceful_timeout": graceful_timeout,
        "heartbeat": None if heartbeat_timeout is None else heartbeat_timeout / BEATS,
    }
    return (config, sockets, paths, workers, graceful_timeout, start_timeout,
            heartbeat_timeout)


def _run(config, sockets, paths, workers, graceful_timeout, start_timeout, heartbeat_timeout):
    """Supervise the workers until stopped; closes what _setup() bound."""
    from . import new_event_loop

    loop = None
    try:
        loop = new_event_loop(config["backend"])  # the supervisor's own
        supervisor = _Supervisor(loop, workers, config, graceful_timeout=graceful_timeout,
                                 start_timeout=start_timeout, heartbeat_timeout=heartbeat_timeout)
        loop.run_until_complete(supervisor.run())
    finally:
        try:
            if loop is not None:
                loop.close()
        finally:
            for sock in sockets:
                sock.close()
            for path, ino in paths:
                _unlink_if_same(path, ino)


def _check_workers(workers):
    if workers is None:
        return default_workers() or 1  # the CPUs in the affinity mask, as ProcessPool's
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise TypeError(f"workers must be an int, not {type(workers).__name__}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    return workers


def _check_seconds(name, value, zero):
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, not {type(value).__name__}")
    if not (value >= 0 if zero else value > 0) or math.isinf(value):
        raise ValueError(f"{name} must be a finite number {'>=' if zero else '>'} 0, not {value!r}")


def _preparation(with_main):
    import multiprocessing.spawn

    data = multiprocessing.spawn.get_preparation_data("uvpy-serve-worker")
    data["authkey"] = bytes(data["authkey"])
    if not with_main:
        data.pop("init_main_from_name", None)
        data.pop("init_main_from_path", None)
    return data


# -- listening sockets (invariant 6) --------------------------------------------------

def _listen(bind, backlog):
    if isinstance(bind, (str, socket.socket)):
        bind = [bind]
    sockets, paths = [], []
    try:
        for spec in bind:
            if isinstance(spec, socket.socket):
                if spec.type != socket.SOCK_STREAM:
                    raise ValueError(f"bind needs stream sockets, not {spec!r}")
                spec.listen(backlog)
                sockets.append(spec)
            elif isinstance(spec, str) and spec.startswith("unix:"):
                sock, ino = _listen_unix(spec[5:], backlog)
                sockets.append(sock)
                paths.append((spec[5:], ino))
            elif isinstance(spec, str):
                sockets.extend(_listen_tcp(spec, backlog))
            else:
                raise TypeError(f"bind takes address strings and sockets, not {type(spec).__name__}")
    except BaseException:
        for sock in sockets:
            if not any(sock is s for s in bind if isinstance(s, socket.socket)):
                sock.close()
        for path, ino in paths:
            _unlink_if_same(path, ino)
        raise
    return sockets, paths


def _listen_tcp(spec, backlog):
    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"bind address must be 'HOST:PORT', '[IPV6]:PORT' or 'unix:PATH', not {spec!r}")
    if int(port) > 65535:  # getaddrinfo() would take it, modulo 2**16
        raise ValueError(f"bind address {spec!r}: port must be 0-65535, not {int(port)}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    infos = socket.getaddrinfo(host or None, int(port), type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    sockets = []
    try:
        for family, type_, proto, _, addr in dict.fromkeys(infos):
            sock = socket.socket(family, type_, proto)
            sockets.append(sock)
            bind_listener(sock, addr, reuse_address=True, reuse_port=False)
            sock.listen(backlog)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _listen_unix(path, backlog):
    if not path:  # bind("") autobinds an abstract address: nothing to connect to
        raise ValueError("'unix:' needs a path: 'unix:PATH'")
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)  # a stale socket file, as create_unix_server removes it
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
        return sock, os.stat(path).st_ino
    except BaseException:
        sock.close()
        raise


def _unlink_if_same(path, ino):
    try:
        if os.stat(path).st_ino == ino:
            os.unlink(path)
    except OSError:
        pass


# -- the supervisor ---------------------------------------------------------------------

def _describe(code):
    if code is None:
        return "an unknown status"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


class _Worker:
    __slots__ = ("slot", "transport", "pid", "ctl", "unsent", "up", "up_at", "asked",
                 "kill_timer", "start_timer", "late", "beat_at", "beat_timer", "done",
                 "replaces", "exited")

    def __init__(self, slot, replaces=None):
        self.slot = slot
        self.transport = None
        self.pid = None
        self.ctl = None
        self.unsent = None         # what is left to send of the init message (a writer sends it)
        self.up = False
        self.up_at = None
        self.asked = False
        self.kill_timer = None
        self.start_timer = None    # kills it if it is not up within start_timeout
        self.late = False          # it was killed for that
        self.beat_at = None        # loop time of its last heartbeat (or of its up)
        self.beat_timer = None     # checks that it keeps beating
        self.done = False          # it said DONE: its loop is closed, no check is due
        self.replaces = replaces   # the worker this one takes over from (invariant 5)
        self.exited = None         # a future, done with the exit status

    def __repr__(self):
        return f"worker {self.slot} (pid {self.pid})"


class _WorkerProtocol(asyncio.SubprocessProtocol):
    def __init__(self, supervisor, worker):
        self._supervisor = supervisor
        self._worker = worker

    def connection_made(self, transport):
        self._worker.transport = transport
        self._worker.pid = transport.get_pid()

    def process_exited(self):
        self._supervisor._exited(self._worker)


class _Supervisor:
    def __init__(self, loop, n, init, graceful_timeout=30.0, start_timeout=60.0,
                 heartbeat_timeout=30.0):
        self._loop = loop
        self._init = pickle.dumps(init, protocol=5)
        self._fds = init["fds"]
        # -O, -X dev, -W ... as this interpreter runs with (invariant 1)
        self._flags = subprocess._args_from_interpreter_flags()
        self._graceful_timeout = graceful_timeout
        self._start_timeout = start_timeout
        self._heartbeat_timeout = heartbeat_timeout
        self._current = [None] * n    # slot -> its current worker
        self._incoming = [None] * n   # slot -> the worker replacing it (invariant 5)
        self._ever_up = [False] * n
        self._streak = [0] * n        # crashes in a row (invariant 3)
        self._restart = [None] * n    # slot -> TimerHandle of a pending restart
        self._live = set()            # every started, unreaped worker
        self._starting = set()        # tasks spawning a worker
        self._stopping = False
        self._killed = False
        self._error = None
        self._round = None            # slots still to replace in this SIGHUP round
        self._again = False
        self._done = loop.create_future()

    async def run(self):
        loop = self._loop
        signals = {signal.SIGINT: self._stop_signal, signal.SIGTERM: self._stop_signal,
                   signal.SIGHUP: self._hup}
        for signum, handler in signals.items():
            loop.add_signal_handler(signum, handler, signum)
        try:
            logger.info("starting %d worker%s (pid %d supervising)", len(self._current),
                        "" if len(self._current) == 1 else "s", os.getpid())
            for slot in range(len(self._current)):
                self._start(slot)
            await self._done
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)
        if self._error is not None:
            raise ServeError(self._error)

    # -- starting ---------------------------------------------------------------------

    def _start(self, slot, replaces=None):
        w = _Worker(slot, replaces)
        w.exited = self._loop.create_future()
        if replaces is None:
            self._current[slot] = w
        else:
            self._incoming[slot] = w
        task = self._loop.create_task(self._spawn(w))
        self._starting.add(task)
        task.add_done_callback(self._spawned)

    def _spawned(self, task):
        self._starting.discard(task)
        self._check_done()

    async def _spawn(self, w):
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            fds = (child.fileno(), *self._fds)
            await self._loop.subprocess_exec(
                lambda: _WorkerProtocol(self, w), sys.executable, *self._flags, "-c", _BOOT,
                _PACKAGE_PARENT, str(child.fileno()),
                stdin=subprocess.DEVNULL, stdout=None, stderr=None, pass_fds=fds)
        except Exception as exc:
            parent.close()
            logger.error("could not start worker %d: %r", w.slot, exc)
            self._gone(w, None, spawn_failed=True)
            return
        finally:
            child.close()
        if w.exited.done():  # process_exited came first: nothing left to watch
            parent.close()
            return
        w.ctl = parent
        self._live.add(w)
        logger.info("started %r", w)
        if self._start_timeout is not None:
            due = self._loop.time() + self._start_timeout / BEATS
            w.start_timer = self._loop.call_at(due, self._not_up, w, due, 0.0)
        parent.setblocking(False)
        w.unsent = memoryview(_serveworker.LENGTH.pack(len(self._init)) + self._init)
        self._send_init(w)
        self._loop.add_reader(parent.fileno(), self._control, w)
        if self._stopping or (w.replaces is not None and self._incoming[w.slot] is not w):
            self._ask_stop(w)  # a stop came while it was being spawned

    def _send_init(self, w):
        """Write what the socket takes of the init message now, the rest
        when it turns writable: a worker that is slow to read it (a large
        main argument, a hung interpreter start-up) must not block this
        loop, which would then act on no signal."""
        try:
            sent = w.ctl.send(w.unsent)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = len(w.unsent)  # it died already; its exit is on the way
        w.unsent = w.unsent[sent:] or None
        if w.unsent is None:
            self._loop.remove_writer(w.ctl.fileno())
        else:
            self._loop.add_writer(w.ctl.fileno(), self._send_init, w)

    def _control(self, w):
        try:
            data = w.ctl.recv(64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._loop.remove_reader(w.ctl.fileno())
            return
        w.beat_at = self._loop.time()  # a heartbeat, or the up that comes first
        if _serveworker.UP in data and not w.up:
            self._up(w)
        if _serveworker.DONE in data:  # its loop is closed: main is done, up or not
            w.done = True
            for timer in (w.start_timer, w.beat_timer):
                if timer is not None:
                    timer.cancel()
            w.start_timer = w.beat_timer = None

    def _not_up(self, w, due, waited):  # invariant 3
        """Every start_timeout / BEATS seconds until w is up; waited counts
        the time this loop ran on time (as _check_beat's silence)."""
        w.start_timer = None
        if w.up or w.asked or w not in self._live:
            return
        self._control(w)  # an UP (or a DONE) already in the socket
        if w.up or w.done:
            return
        now = self._loop.time()
        period = self._start_timeout / BEATS
        if now - due <= period:
            waited += now - due + period
        if waited < self._start_timeout:
            w.start_timer = self._loop.call_at(now + period, self._not_up, w, now + period, waited)
            return
        logger.error("%r is not up after %.1f s (start_timeout); killing it", w,
                     self._start_timeout)
        w.late = True
        self._sigkill(w)

    def _check_beat(self, w, due):  # invariant 3
        """Every heartbeat_timeout / BEATS seconds while w is up. Silence
        counts only while this loop was running on time: a check that comes
        late by more than a period means the supervisor itself was stopped
        (SIGSTOP, Ctrl+Z of the whole group, an overloaded machine), and
        says nothing of the worker's loop, so the window starts over."""
        w.beat_timer = None
        if w.asked or w not in self._live:
            return
        self._control(w)  # beats already in the socket: timers run before I/O callbacks
        if w.done:  # and a DONE after them: nothing more is due
            return
        now = self._loop.time()
        period = self._heartbeat_timeout / BEATS
        if now - due > period:
            w.beat_at = now
        silent = now - w.beat_at
        if silent < self._heartbeat_timeout:
            w.beat_timer = self._loop.call_at(now + period, self._check_beat, w, now + period)
            return
        logger.error("%r sent no heartbeat for %.1f s (its event loop is blocked); killing it",
                     w, silent)
        self._sigkill(w)

    def _up(self, w):
        if w.start_timer is not None:
            w.start_timer.cancel()
            w.start_timer = None
        w.up = True
        w.up_at = w.beat_at = self._loop.time()
        if self._heartbeat_timeout is not None:
            due = w.up_at + self._heartbeat_timeout / BEATS
            w.beat_timer = self._loop.call_at(due, self._check_beat, w, due)
        self._ever_up[w.slot] = True
        logger.info("%r is up", w)
        if w.replaces is not None and self._incoming[w.slot] is w:
            old, w.replaces = w.replaces, None
            self._incoming[w.slot] = None
            self._current[w.slot] = w
            if old in self._live:
                self._ask_stop(old)
            self._replace_next()

    # -- stopping ---------------------------------------------------------------------

    def _ask_stop(self, w):
        if w.asked or w.transport is None:
            return
        w.asked = True
        try:
            w.transport.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            return
        if self._graceful_timeout is not None:
            w.kill_timer = self._loop.call_later(self._graceful_timeout + KILL_MARGIN,
                                                 self._kill, w, True)

    def _kill(self, w, late=False):
        if w not in self._live:
            return
        if late:
            logger.warning("%r did not stop within %.1f s; killing it", w,
                           self._graceful_timeout + KILL_MARGIN)
        w.asked = True
        self._sigkill(w)

    @staticmethod
    def _sigkill(w):
        try:
            w.transport.kill()
        except ProcessLookupError:
            pass

    def _stop_signal(self, signum):
        if self._stopping:
            if signum != signal.SIGINT:  # invariant 4: only Ctrl+C twice kills
                logger.info("%s again: already stopping (SIGINT kills the workers at once)",
                            signal.Signals(signum).name)
            elif not self._killed:
                self._killed = True
                logger.warning("%s again: killing the workers", signal.Signals(signum).name)
                for w in list(self._live):
                    self._kill(w)
            return
        logger.info("%s: stopping the workers", signal.Signals(signum).name)
        self._stop_all()

    def _stop_all(self):
        self._stopping = True
        self._round = None
        for slot, timer in enumerate(self._restart):
            if timer is not None:
                timer.cancel()
                self._restart[slot] = None
        for w in list(self._live):
            self._ask_stop(w)
        self._check_done()

    def _exited(self, w):
        code = w.transport.get_returncode()
        logger.debug("%r exited with %s", w, _describe(code))
        self._live.discard(w)
        if w.ctl is not None:
            if w.ctl.fileno() >= 0:
                self._loop.remove_reader(w.ctl.fileno())
                self._loop.remove_writer(w.ctl.fileno())
                if not w.up:  # a b"U" it sent before it died still counts (invariant 3)
                    try:
                        if _serveworker.UP in w.ctl.recv(64):
                            self._up(w)
                    except OSError:
                        pass
            w.ctl.close()
        for timer in (w.kill_timer, w.start_timer, w.beat_timer):  # after _up, which arms one
            if timer is not None:
                timer.cancel()
        w.transport.close()
        self._gone(w, code)

    def _gone(self, w, code, spawn_failed=False):
        slot = w.slot
        if not w.exited.done():
            w.exited.set_result(code)
        replacing = self._incoming[slot] is w
        if replacing:
            self._incoming[slot] = None
        elif self._current[slot] is w:
            self._current[slot] = None
        if w.asked or self._stopping:
            logger.info("%r stopped (%s)", w, _describe(code))
        elif replacing:  # invariant 5
            self._round = None
            if self._current[slot] is None:  # the old one is gone too
                logger.error("the replacement %r %s", w, self._failed_start(w, code))
                self._schedule_restart(w, code)
            else:
                logger.error("the replacement %r %s; %r keeps serving", w,
                             self._failed_start(w, code), w.replaces)
            self._replace_next()
        elif code == 0:
            logger.info("%r finished", w)
        elif not w.up and not self._ever_up[slot]:  # invariant 3
            what = "could not be started" if spawn_failed else self._failed_start(w, code)
            if self._error is None:
                self._error = f"{w!r} {what}"
                logger.error("%s: stopping", self._error)
            self._stop_all()
        elif self._current[slot] is None and self._incoming[slot] is None:
            self._schedule_restart(w, code)
        self._check_done()

    def _failed_start(self, w, code):
        if w.late:
            return f"was not up within {self._start_timeout:.1f} s (start_timeout)"
        return f"exited with {_describe(code)} before it was up"

    def _schedule_restart(self, w, code):
        slot = w.slot
        if w.up and self._loop.time() - w.up_at >= STABLE:
            self._streak[slot] = 0
        delay = min(RESTART_DELAY * 2 ** self._streak[slot], MAX_RESTART_DELAY)
        if delay < MAX_RESTART_DELAY:
            # k stops at the cap: 2**k grows past a float in 1024 crashes,
            # under three hours of a crash loop at the cap.
            self._streak[slot] += 1
        how = self._failed_start(w, code) if w.late else f"exited with {_describe(code)}"
        logger.warning("%r %s; restarting it in %.1f s", w, how, delay)
        self._restart[slot] = self._loop.call_later(delay, self._restart_slot, slot)

    def _restart_slot(self, slot):
        self._restart[slot] = None
        if not self._stopping and self._current[slot] is None:
            self._start(slot)

    def _check_done(self):
        if self._done.done() or self._live or self._starting:
            return
        if self._stopping or not any(self._restart):
            self._done.set_result(None)

    # -- SIGHUP: replacing the workers (invariant 5) -------------------------------------

    def _hup(self, signum):
        if self._stopping:
            return
        if self._round is not None:
            self._again = True
            return
        logger.info("SIGHUP: replacing the workers one by one")
        self._round = list(range(len(self._current)))
        self._replace_next()

    def _replace_next(self):
        while self._round:
            slot = self._round.pop(0)
            old = self._current[slot]
            if old is None or old not in self._live or self._incoming[slot] is not None:
                continue  # restarting, or gone: its next worker is new anyway
            self._start(slot, replaces=old)
            return
        if self._round is not None:
            logger.info("workers replaced")
        self._round = None
        if self._again and not self._stopping:
            self._again = False
            self._hup(signal.SIGHUP)
