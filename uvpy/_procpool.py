"""ProcessPool: Python code on every core, with results read by the loop.

A concurrent.futures.Executor (submit, map, shutdown; usable from any thread
and with loop.run_in_executor) whose native face is asynchronous:
``await pool.run(fn, *args, **kwargs)`` and ``async for r in pool.map(...)``.

Design, and why (docs/process_pool.md has the full rules):

* Each worker is a fresh interpreter (subprocess.Popen, that is vfork and
  exec: spawn semantics, never a bare fork() of a process that may run
  threads), started when the pool is made. It prepares itself as
  multiprocessing's spawn does (the parent's sys.path, cwd and __main__ as
  __mp_main__), runs the initializer, and says READY.
* Each worker has one socketpair, both ways (wire format in _procworker).
  The loop the pool is bound to watches each socket with add_reader and
  each worker's pidfd for its exit: no management thread, no feeder thread,
  no call_soon_threadsafe per result. A job for an idle worker is sent at
  once (latency); the others from a callback run once per loop iteration,
  so a burst of submissions is one sendmsg() per worker.
* Buffers of at least ``shm_threshold`` bytes (numpy arrays, bytearrays,
  bytes, memoryviews, PickleBuffers) travel out of band in a memfd, both
  ways: one copy into it, a mapping out of it. Each sender reuses its
  memfds once the receiver's mapping is gone, within ``shm_cache`` bytes
  (see _procworker, invariant 6).
* The pool is bound to the loop it is first used from (the running loop of
  the first run(), map() or submit() call). Used first from a thread with no
  running loop, it runs its own loop in one daemon thread: the plain
  Executor case. From anywhere else, work reaches the bound loop through
  call_soon_threadsafe, once per submission.

Invariants:

1. A job is in exactly one place: the queue (not sent), one worker's
   ``inflight`` deque (sent, in send order), or nowhere (settled). Only the
   bound loop's thread (or a thread pumping while that loop cannot run:
   shutdown(wait=True)) moves jobs.
2. The first job of a worker's ``inflight`` is the one it is running
   (_procworker invariant 4). When a worker dies, that job, and only that
   job, fails with WorkerDied; the others had not started and go back to
   the front of the queue, in order. The worker is replaced.
3. A worker is reaped exactly once, by its pidfd watcher (or the shutdown
   pump, or the finalizer's reaper thread), after its socket was drained:
   results it sent before dying are delivered.
4. Jobs are dispatched only to READY workers, at most ``1 + ahead`` per
   worker, to the least loaded first. ``ahead`` is ``prefetch`` if given;
   else it follows the mean job time: as many as fit in PREFETCH_BUDGET
   (a job queued behind a running one waits that long at most, on
   average), at most PREFETCH_MAX. Small jobs are pipelined deeply (one
   sendmsg() carries many), long ones are sent one at a time. A worker whose initializer fails, or
   that dies before READY, breaks the pool (BrokenProcessPool), as in
   concurrent.futures: replacing it would loop.
5. Every fd the pool opens (sockets, pidfds, memfds of unsent jobs) is
   closed by shutdown, by the death of its worker, or by the cancellation
   of its job; its cached memfds when the last worker is reaped; the
   finalizer closes what an unclosed pool dropped. A job holds its cached
   memfd until it is settled, and each worker it was sent to until that
   worker's RELEASE or death (``mapped``).
6. A submit() from a thread other than the loop's either raises or hands
   its job over: the job goes on ``_incoming`` under the lock that shutdown
   and breakage set their flags under, and the loop takes it from there
   (one call_soon_threadsafe each, to the loop the pool is bound to then:
   the pool moves to another loop under that lock, and the move takes
   ``_incoming``). Whatever ends the pool's work takes ``_incoming``
   first: a shutdown runs those jobs, a broken pool or a lost loop fails
   them. A submission never waits on a loop that will not run it.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import os
import pickle
import select
import socket
import threading
import time
import weakref
from concurrent.futures.process import BrokenProcessPool

from . import _procworker as wire
from ._prochandle import (Worker, WorkerDied, close_fds, default_workers, describe_exit, reap,
                          releases)
from ._procmap import Mapping

__all__ = ("ProcessPool", "WorkerDied")

_QUEUED, _SENT, _DONE = 0, 1, 2
_RESULT, _ERROR = wire.RESULT, wire.ERROR
PREFETCH_BUDGET = 0.001  # seconds of work queued behind a running job, adaptive prefetch
PREFETCH_MAX = 16
SHM_CACHE = 128 << 20  # bytes of shared memory kept for reuse, by the pool and by each worker


class _Job:
    __slots__ = ("id", "future", "frame", "fd", "seg", "segments", "state", "aio")

    def __init__(self, job_id, future, aio):
        self.id, self.future, self.aio = job_id, future, aio
        self.frame, self.fd, self.seg, self.state = b"", -1, 0, _QUEUED
        self.segments = None

    def release(self):
        """Close the job's memfd, let go of its segment and drop its frame:
        it is settled or cancelled (invariant 5). A job keeps them until
        then, so that a job a dead worker had not started can be sent
        again."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
        seg, self.seg = self.seg, 0
        if seg:
            self.segments.unref(seg)
        self.frame = b""


class ProcessPool(concurrent.futures.Executor):
    """A pool of worker processes, driven by the event loop.

    ``max_workers``: default, the CPUs in this process's affinity mask.
    ``initializer(*initargs)`` runs once in each worker. A worker is replaced
    after ``max_tasks_per_child`` jobs (None: never). ``cancel_running``:
    what cancelling a job that is already running does: ``"wait"`` lets it
    finish and drops its result (the worker stays), ``"kill"`` kills and
    replaces the worker. ``shm_threshold``: buffers at least this large go
    through shared memory; ``shm_cache``: bytes of shared memory the pool,
    and each worker, keep for reuse (0: none). ``prefetch``: jobs sent to a
    busy worker ahead of time; None (the default) adapts it to the mean job
    time (see invariant 4).
    """

    def __init__(self, max_workers=None, *, initializer=None, initargs=(),
                 max_tasks_per_child=None, cancel_running="wait", shm_threshold=1 << 18,
                 shm_cache=SHM_CACHE, prefetch=None):
        if max_workers is None:
            max_workers = default_workers()
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if cancel_running not in ("wait", "kill"):
            raise ValueError("cancel_running must be 'wait' or 'kill'")
        if prefetch is not None and prefetch < 0:
            raise ValueError("prefetch must be >= 0")
        self._max_workers = max_workers
        self._max_tasks = max_tasks_per_child
        self._kill_on_cancel = cancel_running == "kill"
        self._prefetch = prefetch
        self._depth = 1 + (prefetch if prefetch is not None else 0)
        self._job_time = PREFETCH_BUDGET  # mean seconds per job (exponential, adaptive depth)
        self._threshold = max(int(shm_threshold), 1)
        if shm_cache < 0:
            raise ValueError("shm_cache must be >= 0")
        self._cache = int(shm_cache)
        self._segments = wire.Segments(self._cache) if self._cache else None
        self._init = (initializer, tuple(initargs))
        self._lock = threading.RLock()  # ids, flags, _incoming
        self._next_id = 0
        self._queue = collections.deque()
        self._incoming = []              # jobs submit() handed to the loop from another thread
        self._jobs = {}                  # id -> _Job, queued or sent
        self._workers = []
        self._loop = None
        self._thread = None              # the private loop's thread (plain Executor use)
        self._dispatch_pending = False
        self._shutdown = False
        self._broken = None              # the BrokenProcessPool message, once broken
        self._all_gone = threading.Event()
        self._closed_waiters = []
        self._finalizer = weakref.finalize(self, _finalize, self._workers, self._jobs,
                                           self._segments)
        for _ in range(max_workers):
            self._spawn()

    # -- public API ---------------------------------------------------------------

    async def run(self, fn, /, *args, **kwargs):
        """Run fn(*args, **kwargs) in a worker; return its result."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop and not self._attach(loop):
            return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))
        job = self._new_job(loop.create_future(), True, fn, args, kwargs)
        self._enqueue(job)
        try:
            return await job.future
        except asyncio.CancelledError:
            if job.future.cancelled():
                self._cancelled(job)
            raise

    def submit(self, fn, /, *args, **kwargs):
        """concurrent.futures.Executor.submit: a concurrent.futures.Future."""
        future = concurrent.futures.Future()
        job = self._new_job(future, False, fn, args, kwargs)
        if job.state == _DONE:
            return future
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None and self._attach(running):
            self._enqueue(job)
            return future
        loop = self._loop
        if loop is None or loop.is_closed() or not (loop.is_running() or self._jobs):
            loop = self._private_loop()  # jobs on a stopped loop wait for it to run again
        # Invariant 6: the job is either refused here or reaches the queue.
        with self._lock:
            try:
                self._check_open_locked()
            except BaseException:
                job.release()
                raise
            self._incoming.append(job)
            if self._loop is not None:
                loop = self._loop  # the pool moved meanwhile (it moves under the lock)
        try:
            loop.call_soon_threadsafe(self._handed_over)
        except RuntimeError:  # that loop was closed meanwhile
            with self._lock:
                if job in self._incoming:
                    self._incoming.remove(job)
                    job.release()
                    raise
        return future

    def map(self, fn, *iterables, timeout=None, chunksize=1, limit=None):
        """Executor.map when iterated with ``for``; with ``async for``, the
        results in order with at most ``limit`` jobs in flight (default:
        twice the workers). Nothing is submitted before iteration starts.
        ``chunksize``: items per job, as in ProcessPoolExecutor.map (a job
        that raises fails its whole chunk)."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        return Mapping(self, fn, iterables, timeout, chunksize, limit or 2 * self._max_workers)

    def shutdown(self, wait=True, *, cancel_futures=False):
        """Stop taking jobs; workers finish the submitted ones (or, with
        cancel_futures, the running ones only) and exit. wait: block until
        every worker is reaped."""
        with self._lock:
            self._shutdown = True
        loop = self._loop
        if loop is None or loop.is_closed():
            if loop is not None:
                self._lost_loop()
            self._begin_shutdown(cancel_futures)
            if wait:
                self._pump()
            return
        if not _in_loop(loop) and (self._thread is not None or loop.is_running()):
            # The loop runs in another thread: it does the work; this one waits.
            loop.call_soon_threadsafe(self._begin_shutdown, cancel_futures)
            if wait:
                self._all_gone.wait()
                self._join_private()
            return
        # The loop is this thread's (running a callback that called this, or
        # stopped): it cannot run while this waits, so the pump drives the
        # workers instead (invariant 1).
        self._begin_shutdown(cancel_futures)
        if wait:
            self._pump()

    async def aclose(self, *, cancel_futures=False):
        """shutdown() without blocking the loop: returns once every worker
        is reaped."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop and not self._attach(loop):
            await loop.run_in_executor(None, lambda: self.shutdown(True, cancel_futures=cancel_futures))
            return
        with self._lock:
            self._shutdown = True
        self._begin_shutdown(cancel_futures)
        if self._workers:
            waiter = loop.create_future()
            self._closed_waiters.append(waiter)
            await asyncio.shield(waiter)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.aclose()

    @property
    def max_workers(self):
        return self._max_workers

    def __repr__(self):
        state = "broken" if self._broken else "shut down" if self._shutdown else "running"
        return (f"<{type(self).__name__} {state} workers={len(self._workers)}/"
                f"{self._max_workers} queued={len(self._queue)} jobs={len(self._jobs)}>")

    # -- jobs ---------------------------------------------------------------------

    def _check_open_locked(self):
        if self._broken:
            raise BrokenProcessPool(self._broken)
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def _new_job(self, future, aio, fn, args, kwargs):
        with self._lock:
            self._check_open_locked()
            self._next_id = job_id = (self._next_id + 1) & 0xFFFFFFFF
        job = _Job(job_id, future, aio)
        try:
            t = self._threshold
            if args:
                args = wire.mark(args, t, 2)
            if kwargs:
                kwargs = wire.mark(kwargs, t, 2)
            job.frame, job.fd, job.seg = wire.encode(wire.JOB, job_id, (fn, args, kwargs), t,
                                                     self._segments)
            job.segments = self._segments
        except Exception as exc:  # unpicklable: this job fails, as in concurrent.futures
            job.state = _DONE
            if not aio:
                future.set_running_or_notify_cancel()
            future.set_exception(exc)
        return job

    def _enqueue(self, job):
        if job.state != _QUEUED:
            return
        if self._broken:
            self._settle(job, BrokenProcessPool(self._broken), False)
            return
        self._jobs[job.id] = job
        if not self._queue and not self._dispatch_pending:
            # An idle worker takes it now (latency); a burst is batched by
            # the dispatch callback below (one send per worker).
            for w in self._workers:
                if w.ready and not w.inflight and not w.retiring:
                    if self._assign(w, job):
                        self._flush(w)
                    return
        self._queue.append(job)
        if not self._dispatch_pending:
            self._dispatch_pending = True
            self._loop.call_soon(self._dispatch)

    def _handed_over(self):
        """submit()'s callback on the loop it handed a job to. One left on a
        loop the pool has moved from does nothing: the move took
        _incoming."""
        if _in_loop(self._loop):
            self._take_incoming()

    def _take_incoming(self):
        """Queue the jobs other threads submitted (invariant 6)."""
        with self._lock:
            jobs, self._incoming = self._incoming, []
        for job in jobs:
            self._enqueue(job)

    def _cancelled(self, job):
        if job.state == _QUEUED:  # taken off the queue at dispatch
            job.state = _DONE
            job.release()
            self._jobs.pop(job.id, None)
        elif job.state == _SENT and self._kill_on_cancel:
            for w in self._workers:
                if w.inflight and w.inflight[0] is job and not w.killed:
                    w.killed = True
                    w.proc.kill()

    def _settle(self, job, value, ok):
        job.state = _DONE
        if job.fd >= 0 or job.seg:
            job.release()
        job.frame = b""
        self._jobs.pop(job.id, None)
        fut = job.future
        if fut.done():
            return
        if job.aio:
            if fut.get_loop().is_closed():
                return
            fut.set_result(value) if ok else fut.set_exception(value)
        else:
            if not fut.running() and not fut.set_running_or_notify_cancel():
                return
            fut.set_result(value) if ok else fut.set_exception(value)

    def _dispatch(self):
        """Send queued jobs to READY workers (invariant 4), one send per worker."""
        self._dispatch_pending = False
        queue, touched = self._queue, []
        while queue:
            ready = [w for w in self._workers if w.ready and not w.retiring
                     and len(w.inflight) < self._depth]
            if not ready:
                break
            w = min(ready, key=lambda w: len(w.inflight))
            if self._assign(w, queue.popleft()) and w not in touched:
                touched.append(w)
        for w in touched:
            self._flush(w)
        if self._shutdown or self._max_tasks is not None:
            self._retire_idle()

    def _assign(self, w, job):
        """Put job on w's output (to be flushed), unless it was cancelled or
        settled meanwhile; True if it was."""
        if job.state != _QUEUED:
            return False
        if job.aio:
            if job.future.done():
                self._settle(job, None, True)
                return False
        elif not job.future.set_running_or_notify_cancel():
            job.state = _DONE
            job.release()
            self._jobs.pop(job.id, None)
            return False
        job.state = _SENT
        if not w.inflight:
            w.started = time.perf_counter()
        w.inflight.append(job)
        if w.released:  # first, so the worker may reuse them for this result
            w.out.append((releases(w.released), -1))
        if job.seg:
            self._segments.ref(job.seg)  # the worker maps it until its RELEASE
            w.mapped.append(job.seg)
        w.out.append((job.frame, job.fd))
        w.sent += 1
        if self._max_tasks is not None and w.sent >= self._max_tasks:
            w.retiring = True  # replaced ahead of time; retires once idle
            self._spawn_and_watch()
        return True

    def _retire_idle(self):
        for w in list(self._workers):
            if w.inflight or w.eof or w.sock is None:
                continue
            if w.retiring or (self._shutdown and not self._queue and not self._incoming):
                w.retiring = True
                try:
                    w.sock.shutdown(socket.SHUT_WR)  # the worker reads EOF and exits
                except OSError:
                    pass

    # -- workers ------------------------------------------------------------------

    def _spawn(self):
        w = Worker.start(self._threshold, self._cache)
        self._workers.append(w)
        try:
            w.send_init(self._init, self._threshold)
        except Exception as exc:  # an initializer that does not pickle
            self._break(f"the initializer could not be sent to the worker: {exc!r}")
        w.sock.setblocking(False)
        return w

    def _spawn_and_watch(self):
        w = self._spawn()
        if self._loop is not None and not self._loop.is_closed():
            self._watch(w)

    def _watch(self, w):
        loop = self._loop
        if w.sock is not None and not w.eof:
            loop.add_reader(w.sock.fileno(), self._readable, w)
        if w.pidfd >= 0:
            loop.add_reader(w.pidfd, self._exited, w)
        if w.out:
            self._flush(w)

    def _unwatch(self, w):
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if w.sock is not None:
            loop.remove_reader(w.sock.fileno())
            if w.writing:
                loop.remove_writer(w.sock.fileno())
        w.writing = False
        if w.pidfd >= 0:
            loop.remove_reader(w.pidfd)

    def _flush(self, w):
        """Send w.out without blocking; watch for writability if it stalls."""
        sock = w.sock
        while w.out:
            data, fd = w.out[0]
            try:
                if fd >= 0:
                    n = socket.send_fds(sock, [data], [fd])  # the job keeps its fd
                else:
                    if len(w.out) > 1 and w.out[1][1] < 0:  # coalesce plain frames
                        k = 1
                        while k < len(w.out) and w.out[k][1] < 0 and k < 512:
                            k += 1
                        data = b"".join(d for d, _ in w.out[:k])
                        del w.out[:k]
                        w.out.insert(0, (data, -1))
                    n = sock.send(data)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # the worker is gone: its exit watcher settles the jobs
                w.out.clear()
                break
            if n < len(data):
                w.out[0] = (memoryview(data)[n:], -1)
            else:
                w.out.pop(0)
        want = bool(w.out)
        if want != w.writing and self._loop is not None and not self._loop.is_closed():
            if want:
                self._loop.add_writer(sock.fileno(), self._flush, w)
            else:
                self._loop.remove_writer(sock.fileno())
            w.writing = want

    def _readable(self, w, drain=False):
        """Read what w sent: a bounded number of reads (the loop stays
        fair), or with drain, all of it up to EOF (w has exited)."""
        for _ in range(1 << 62 if drain else 16):
            try:
                n = wire.recv(w.sock, w.reader)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                n = 0
            if not n:
                w.eof = True
                if self._loop is not None and not self._loop.is_closed():
                    self._loop.remove_reader(w.sock.fileno())
                if w.pidfd < 0:  # no pidfd: the exit is near, wait for it here
                    self._exited(w)
                    return
                break
            self._frames(w)
            if n < wire.RECV_SIZE and not drain:  # drained, most likely: the
                break  # level-triggered reader calls again if not; a recv saved
        if self._queue and not self._dispatch_pending:
            self._dispatch()
        elif self._shutdown or self._max_tasks is not None:
            self._retire_idle()

    def _frames(self, w):
        while (frame := w.reader.next()) is not None:
            kind, job_id, nbufs, payload, fd = frame
            if kind != _RESULT and kind != _ERROR:
                self._control(w, kind, job_id, nbufs, payload, fd)
                continue
            job = w.inflight.popleft()
            if self._prefetch is None:
                now = time.perf_counter()
                t = self._job_time = self._job_time + (now - w.started - self._job_time) * 0.125
                w.started = now
                self._depth = 1 + (PREFETCH_MAX if t * PREFETCH_MAX <= PREFETCH_BUDGET
                                   else int(PREFETCH_BUDGET / t))
            try:
                value = pickle.loads(payload) if fd < 0 else \
                    wire.decode(nbufs, payload, fd, w.released.append)
                ok = kind == wire.RESULT
            except Exception as exc:  # e.g. the result's class is not importable here
                value, ok = exc, False
            self._settle(job, value, ok)

    def _control(self, w, kind, job_id, nbufs, payload, fd):
        """A frame from w that is not a job's outcome."""
        if kind == wire.READY:
            w.ready = True
        elif kind == wire.RELEASE:  # w no longer maps this job segment
            if job_id in w.mapped:
                w.mapped.remove(job_id)
                self._segments.unref(job_id)
        elif kind == wire.INIT_FAILED:
            text = wire.decode(nbufs, payload, fd)
            self._break("the pool's initializer failed in a worker, the pool is not usable "
                        f"anymore:\n{text}")

    def _exited(self, w):
        """w's process exited: deliver what it sent, reap it, settle its jobs
        (invariants 2 and 3), replace it."""
        if w.sock is not None and not w.eof:
            self._readable(w, drain=True)
        self._unwatch(w)
        code = reap(w)
        for seg in w.mapped:  # its mappings died with it
            self._segments.unref(seg)
        w.mapped.clear()
        if w in self._workers:
            self._workers.remove(w)
        if not w.ready and not self._broken and not w.retiring:
            self._break("a worker process died before it was ready "
                        f"(pid {w.proc.pid}, {describe_exit(code)}): the pool is not usable "
                        "anymore")
        if w.inflight:
            running = w.inflight.popleft()
            self._settle(running, WorkerDied(w.proc.pid, code), False)
            for job in reversed(w.inflight):  # not started: back to the front (invariant 2)
                if job.state == _SENT and not job.future.done():
                    job.state = _QUEUED
                    self._queue.appendleft(job)
                elif job.state != _DONE:
                    self._settle(job, None, True)
            w.inflight.clear()
        # Shut down, the pool still runs what it accepted before: the queue,
        # and jobs handed over that the loop has not taken yet (invariant 6).
        needed = not self._broken and (not self._shutdown or self._queue or self._incoming)
        live = [x for x in self._workers if not x.retiring]
        if needed and len(live) < self._max_workers:
            self._spawn_and_watch()
        if self._queue:
            self._dispatch()
        self._retire_idle()
        self._check_all_gone()

    def _break(self, message):
        if self._broken:
            return
        with self._lock:
            self._broken = message
        self._fail_all(lambda: BrokenProcessPool(message))
        for w in self._workers:
            if w.proc.poll() is None:
                w.proc.kill()

    def _fail_all(self, make_exc):
        """Every job not yet settled fails with its own make_exc(); queued
        ones give their shared memory back first."""
        for job in list(self._jobs.values()):
            if job.state == _QUEUED:
                job.release()
            self._settle(job, make_exc(), False)
        self._queue.clear()

    def _check_all_gone(self):
        if self._workers or not (self._shutdown or self._broken):
            return
        self._take_incoming()  # broken: they fail now, not with the loop's stop
        if self._segments is not None:
            self._segments.close()
        self._all_gone.set()
        waiters, self._closed_waiters = self._closed_waiters, []
        for f in waiters:
            if not f.done():
                f.set_result(None)
        if self._thread is not None and self._loop is not None:
            self._loop.stop()

    def _begin_shutdown(self, cancel_futures):
        self._take_incoming()  # submitted before the shutdown: they run (invariant 6)
        if cancel_futures:
            for job in list(self._queue):
                if job.state == _QUEUED:
                    job.state = _DONE
                    job.release()
                    self._jobs.pop(job.id, None)
                    job.future.cancel()
            self._queue.clear()
        if self._broken:
            for w in self._workers:
                w.retiring = True
        self._retire_idle()
        self._check_all_gone()

    def _pump(self):
        """Drive the workers from this thread until all are reaped: for
        shutdown(wait=True) where the bound loop cannot run (it is this
        thread's, or closed)."""
        while self._workers:
            if self._queue:
                self._dispatch()
            poller = select.poll()
            fds = {}
            for w in self._workers:
                if w.sock is not None and not w.eof:
                    ev = select.POLLIN | (select.POLLOUT if w.out else 0)
                    poller.register(w.sock.fileno(), ev)
                    fds[w.sock.fileno()] = (w, False)
                if w.pidfd >= 0:
                    poller.register(w.pidfd, select.POLLIN)
                    fds[w.pidfd] = (w, True)
            if not fds:
                for w in list(self._workers):
                    self._exited(w)
                break
            for fd, ev in poller.poll():
                w, is_pidfd = fds[fd]
                if w not in self._workers:
                    continue
                if is_pidfd:
                    self._exited(w)
                elif ev & select.POLLOUT:
                    self._flush(w)
                if not is_pidfd and ev & (select.POLLIN | select.POLLHUP):
                    self._readable(w)
        self._check_all_gone()

    # -- the loop -----------------------------------------------------------------

    def _attach(self, loop):
        """Bind to loop (called in its thread) if the pool is free to move:
        True if the pool now runs on it."""
        old = self._loop
        if old is loop:
            return True
        if old is not None and not old.is_closed():
            if old.is_running() or self._jobs or self._incoming:
                return False
            for w in self._workers:
                self._unwatch(w)
        with self._lock:  # a submit() hands its job over to the old loop or to this one
            lost = self._drop_lost() if old is not None and old.is_closed() else ()
            self._loop = loop
        for w in self._workers:
            self._watch(w)
        self._take_incoming()  # handed over to the old loop
        if self._queue:
            self._dispatch()
        self._fail_lost(lost)  # bound first: their callbacks may submit again
        return True

    def _lost_loop(self):
        """The bound loop was closed under the pool: the jobs in flight fail."""
        self._fail_lost(self._drop_lost())

    def _drop_lost(self):
        """Unbind from the closed loop; the jobs it had in flight (handed
        over, queued or sent), for _fail_lost. Failing them runs their
        futures' callbacks, which may call submit(): the pool must be bound
        again by then, and not hold its lock."""
        self._loop = None
        with self._lock:
            jobs, self._incoming = self._incoming, []
        jobs.extend(self._jobs.values())
        self._jobs.clear()
        self._queue.clear()
        for w in self._workers:
            w.writing = False
        return jobs

    def _fail_lost(self, jobs):
        err = "the event loop the process pool ran on was closed with this job in flight"
        for job in jobs:
            self._settle(job, RuntimeError(err), False)

    def _private_loop(self):
        """Start (once) the loop thread used when no loop of the caller's runs."""
        with self._lock:
            if self._thread is not None:
                return self._loop
            from . import new_event_loop

            loop = new_event_loop()
            started = threading.Event()

            def main():
                asyncio.set_event_loop(loop)
                loop.call_soon(started.set)
                try:
                    loop.run_forever()  # until every worker is reaped
                finally:
                    asyncio.set_event_loop(None)
                    loop.close()

            if self._loop is not None and not self._loop.is_closed():
                for w in self._workers:
                    self._unwatch(w)
            elif self._loop is not None:
                # Failed first thing on the new loop's thread, not here under
                # the lock: a callback that submits again finds the pool bound.
                loop.call_soon(self._fail_lost, self._drop_lost())
            self._loop = loop
            for w in self._workers:
                loop.call_soon(self._watch, w)
            loop.call_soon(self._take_incoming)  # handed over to the old loop
            self._thread = threading.Thread(target=main, name="uvpy-process-pool", daemon=True)
            self._thread.start()
        started.wait()
        return loop

    def _join_private(self):
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()


def _in_loop(loop):
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _finalize(workers, jobs, segments):
    """An unclosed pool was collected: close its sockets (the workers read
    EOF and exit) and reap them in a thread (invariant 5)."""
    for job in jobs.values():
        job.release()
    jobs.clear()
    if segments is not None:
        segments.close()
    procs = []
    for w in workers:
        close_fds(w)
        procs.append(w.proc)
    workers.clear()
    if procs:
        threading.Thread(target=lambda: [p.wait() for p in procs], daemon=True).start()
