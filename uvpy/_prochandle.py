"""One worker process of a ProcessPool, as the pool sees it.

The pool (_procpool) owns the jobs, the queue and the loop; this file owns
what belongs to one process: how it is started (a fresh interpreter running
_procworker.main on one end of a socketpair, watched through a pidfd),
what the pool keeps per worker (the Worker record), how its death is told
(WorkerDied, describe_exit), and how it is reaped. Which of these the pool
calls when, and the invariants they keep, are _procpool's.
"""

from __future__ import annotations

import collections
import os
import pickle
import signal
import socket
import subprocess
import sys
from concurrent.futures.process import BrokenProcessPool

from . import _procworker as wire

__all__ = ("Worker", "WorkerDied", "close_fds", "default_workers", "describe_exit", "reap",
           "releases")

_BOOT = ("import importlib.util as u, sys; "
         "s = u.spec_from_file_location('_uvpy_procworker', sys.argv[1]); "
         "m = u.module_from_spec(s); s.loader.exec_module(m); "
         "sys.exit(m.main(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))")
_WORKER_FILE = os.path.abspath(wire.__file__)


class WorkerDied(BrokenProcessPool):
    """The worker running this job died (a crash, os._exit, a kill).

    Only that job fails; the pool replaces the worker and keeps serving. It
    derives from BrokenProcessPool so that code written for
    ProcessPoolExecutor, where such a death breaks the whole pool, still
    catches it. ``pid`` and ``exitcode`` (negative: the signal) say which.
    """

    def __init__(self, pid, exitcode):
        self.pid, self.exitcode = pid, exitcode
        super().__init__(f"the worker process (pid {pid}) running this job died: "
                         f"{describe_exit(exitcode)}")

    def __reduce__(self):
        return type(self), (self.pid, self.exitcode)


def describe_exit(code):
    """A worker's exit status (Popen.returncode: negative for a signal) in words."""
    if code is not None and code < 0:
        try:
            return f"killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def default_workers():
    """The CPUs this process may run on: the affinity mask, as
    ProcessPoolExecutor sizes itself on 3.13+ (also uvpy.serve's default)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class Worker:
    __slots__ = ("proc", "sock", "pidfd", "reader", "inflight", "out", "sent", "ready",
                 "retiring", "eof", "writing", "killed", "started", "mapped", "released",
                 "__weakref__")

    def __init__(self, proc, sock, pidfd):
        self.proc, self.sock, self.pidfd = proc, sock, pidfd
        self.reader = wire.FrameReader()
        self.inflight = collections.deque()
        self.out = []            # [(bytes, memfd or -1)] not yet sent
        self.sent = 0            # jobs sent (max_tasks_per_child)
        self.started = 0.0       # when its current job started, about (job time)
        self.mapped = []         # the pool's segments sent to it, not yet RELEASEd
        self.released = collections.deque()  # its segments the pool no longer maps
        self.ready = self.retiring = self.eof = self.writing = self.killed = False

    @classmethod
    def start(cls, threshold, cache):
        """Spawn a worker process: a fresh interpreter (vfork and exec) that
        runs _procworker.main on its end of a socketpair."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, _WORKER_FILE, str(child.fileno()),
                 str(threshold), str(cache)],
                pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL)
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        try:
            pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            pidfd = -1
        return cls(proc, parent, pidfd)

    def send_init(self, init, threshold):
        """The INIT message, sent blocking before anything else: how to
        prepare as multiprocessing's spawn does, and the pickled
        (initializer, initargs). Raises what pickling them raises."""
        import multiprocessing.spawn

        data = multiprocessing.spawn.get_preparation_data("uvpy-pool-worker")
        data["authkey"] = bytes(data["authkey"])
        wire.send_all(self.sock, [wire.encode(
            wire.INIT, 0, (data, pickle.dumps(init, 5)), threshold)[:2]])


def releases(segs):
    """RELEASE frames for the worker's segments in segs (emptied): a deque
    that the finalizers of the pool's mappings append to, from any thread."""
    out = []
    while segs:
        out.append(wire.HEADER.pack(wire.RELEASE, segs.popleft(), 0, 0))
    return b"".join(out)


def close_fds(w):
    """Close w's pidfd and socket (the worker reads EOF and exits)."""
    if w.pidfd >= 0:
        os.close(w.pidfd)
        w.pidfd = -1
    if w.sock is not None:
        w.sock.close()
        w.sock = None


def reap(w):
    """Close w's fds and reap its process; its exit code."""
    close_fds(w)
    w.out.clear()
    w.reader.close()
    return w.proc.wait()
