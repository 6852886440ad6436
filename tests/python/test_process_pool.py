"""uvpy.ProcessPool: jobs in worker processes, results read by the loop.

The pool is uvpy's own API, so most tests run it on each loop of the
suite (it only needs add_reader); where it behaves as a
concurrent.futures.Executor the oracle is ProcessPoolExecutor: the same
results, the same exception types and traceback text, the same refusals.

Faults: unpicklable arguments and results, a function the worker cannot
import, workers that exit, segfault or are killed mid-job, cancellation of
queued and running jobs, shutdown with jobs queued and running, the loop
closed with jobs in flight, 100k small jobs, a 1 GiB result. After each:
no fd (socket, pidfd, memfd) and no zombie left (conftest checks the fds).
"""

import asyncio
import concurrent.futures
import contextlib
import os
import pickle
import signal
import sys
import threading

import pytest

import procpool_jobs as jobs
import uvpy
from conftest import open_fds
from proc_helpers import gone, warmed_fds, zombies
from uvpy._procworker import SEGMENTS_MAX, Segments

ProcessPool = uvpy.ProcessPool


def run(loop, coro):
    return loop.run_until_complete(coro)


async def until_exists(path):
    while not os.path.exists(path):
        await asyncio.sleep(0.005)


@pytest.fixture
def ppe():
    with concurrent.futures.ProcessPoolExecutor(2) as ex:
        yield ex


# -- the async API ----------------------------------------------------------------

def test_run_returns_results_and_passes_arguments(loop):
    async def main():
        async with ProcessPool(2) as pool:
            assert await pool.run(jobs.square, 7) == 49
            assert await pool.run(jobs.add, 1, 2, c=3) == 6
            results = await asyncio.gather(*(pool.run(jobs.square, i) for i in range(500)))
            assert results == [i * i for i in range(500)]
            pids = set(await asyncio.gather(*(pool.run(jobs.pid) for _ in range(50))))
            assert os.getpid() not in pids and len(pids) <= 2
    run(loop, main())
    assert zombies() == []


def test_default_size_is_the_affinity_mask():
    pool = ProcessPool()
    try:
        assert pool.max_workers == len(os.sched_getaffinity(0))
    finally:
        pool.shutdown()


def test_async_map_keeps_at_most_limit_jobs_in_flight(loop):
    async def main():
        async with ProcessPool(2) as pool:
            seen, most = [], 0
            async for r in pool.map(jobs.square, range(200), limit=5):
                seen.append(r)
                most = max(most, len(pool._jobs))
            assert seen == [i * i for i in range(200)]
            assert 1 <= most <= 5
    run(loop, main())


def test_run_in_executor_with_the_pool(loop):
    async def main():
        async with ProcessPool(2) as pool:
            assert await loop.run_in_executor(pool, jobs.square, 12) == 144
    run(loop, main())


def test_arguments_bad_values_refused():
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        ProcessPool(0)
    with pytest.raises(ValueError, match="max_tasks_per_child must be >= 1"):
        ProcessPool(1, max_tasks_per_child=0)
    with pytest.raises(ValueError, match="cancel_running"):
        ProcessPool(1, cancel_running="maybe")
    with pytest.raises(ValueError, match="shm_cache must be >= 0"):
        ProcessPool(1, shm_cache=-1)


# -- as a concurrent.futures.Executor, against ProcessPoolExecutor ------------------

def test_executor_surface_matches_process_pool_executor(ppe):
    with ProcessPool(2) as pool:
        for ex in (pool, ppe):
            assert ex.submit(jobs.add, 1, b=2).result() == 3
            assert list(ex.map(jobs.add, [1, 2, 3], [10, 20, 30])) == [11, 22, 33]
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        pool.submit(jobs.noop)
    assert zombies() == []


def outcome(results):
    """What an iterator yields before it stops, and what it raises then."""
    got = []
    try:
        for r in results:
            got.append(r)
    except Exception as exc:
        return got, type(exc), str(exc)
    return got, None, None


async def async_outcome(results):
    got = []
    try:
        async for r in results:
            got.append(r)
    except Exception as exc:
        return got, type(exc), str(exc)
    return got, None, None


MAP_ARGS = [
    (list(range(1, 24)), list(range(30))),   # zip() stops at the shortest
    ([5, 4, 3, 2, 1, 0, 6, 7, 8, 9, 10],),    # 100 // 0 raises mid-way
    ([],),
]


@pytest.mark.parametrize("chunksize", [1, 2, 3, 7, 50])
def test_map_chunksize_matches_process_pool_executor(ppe, loop, chunksize):
    with ProcessPool(2) as pool:
        for args in MAP_ARGS:
            expected = outcome(ppe.map(jobs.hundred_over, *args, chunksize=chunksize))
            assert outcome(pool.map(jobs.hundred_over, *args, chunksize=chunksize)) == expected

    async def main():
        async with ProcessPool(2) as pool:
            for args in MAP_ARGS:
                expected = outcome(ppe.map(jobs.hundred_over, *args, chunksize=chunksize))
                got = await async_outcome(pool.map(jobs.hundred_over, *args,
                                                   chunksize=chunksize, limit=2))
                assert got == expected
    run(loop, main())


def test_map_sends_one_job_per_chunk(loop):
    async def main():
        async with ProcessPool(2) as pool:
            first = pool._next_id
            got = [r async for r in pool.map(jobs.square, range(95), chunksize=10)]
            assert got == [i * i for i in range(95)]
            assert pool._next_id - first == 10
    run(loop, main())


def test_map_chunksize_below_one_refused_as_in_ppe(ppe):
    with ProcessPool(1) as pool:
        for ex in (pool, ppe):
            with pytest.raises(ValueError, match=r"^chunksize must be >= 1\.$"):
                ex.map(jobs.square, [1], chunksize=0)


def test_worker_exception_keeps_its_traceback_text(ppe):
    with ProcessPool(2) as pool:
        got = {}
        for name, ex in (("uvpy", pool), ("ppe", ppe)):
            with pytest.raises(ValueError, match="boom") as info:
                ex.submit(jobs.raiser, "boom").result()
            got[name] = info.value
    for exc in got.values():
        assert type(exc.__cause__).__name__ == "_RemoteTraceback"
        assert 'in raiser\n    raise ValueError(message)' in str(exc.__cause__)


def test_unpicklable_arguments_and_results_fail_the_job_as_in_ppe(ppe, loop):
    lock = threading.Lock()
    with ProcessPool(2) as pool:
        for ex in (pool, ppe):
            with pytest.raises(TypeError, match="cannot pickle '_thread.lock' object"):
                ex.submit(jobs.echo, lock).result()
            with pytest.raises(TypeError, match="cannot pickle '_thread.lock' object"):
                ex.submit(jobs.returns_a_lock).result()
            assert ex.submit(jobs.square, 3).result() == 9  # and it keeps serving

    async def main():
        async with ProcessPool(1) as pool:
            with pytest.raises((pickle.PicklingError, AttributeError)):
                await pool.run(lambda: 1)
            with pytest.raises(TypeError, match="_thread.lock"):
                await pool.run(jobs.returns_a_lock)
            assert await pool.run(jobs.square, 4) == 16
    run(loop, main())


def test_function_the_worker_cannot_import(loop, tmp_path):
    async def main():
        async with ProcessPool(1) as pool:
            await pool.run(jobs.noop)  # the worker took its sys.path already
            (tmp_path / "only_in_parent.py").write_text("def f():\n    return 1\n")
            sys.path.insert(0, str(tmp_path))
            try:
                import only_in_parent
                with pytest.raises(ModuleNotFoundError, match="only_in_parent"):
                    await pool.run(only_in_parent.f)
            finally:
                sys.path.remove(str(tmp_path))
                sys.modules.pop("only_in_parent", None)
            assert await pool.run(jobs.square, 5) == 25
    run(loop, main())


def test_plain_executor_from_threads_without_a_loop():
    with ProcessPool(2) as pool:
        results = []

        def client(k):
            results.append(sum(pool.map(jobs.square, range(k, k + 20))))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == sorted(sum(i * i for i in range(k, k + 20)) for k in range(4))
    assert zombies() == []


# -- workers that die ------------------------------------------------------------------

@pytest.mark.parametrize("how,status", [("exit", "exit status 3"), ("kill", "SIGKILL"),
                                        ("segv", "SIGSEGV")])
def test_a_dying_worker_fails_only_its_job_and_is_replaced(loop, how, status):
    async def main():
        async with ProcessPool(2) as pool:
            await asyncio.gather(*(pool.run(jobs.pid) for _ in range(20)))
            before = {w.proc.pid for w in pool._workers}
            futs = [asyncio.ensure_future(pool.run(jobs.square, i)) for i in range(30)]
            dying = asyncio.ensure_future(pool.run(jobs.die, how))
            futs += [asyncio.ensure_future(pool.run(jobs.square, i)) for i in range(30, 60)]
            with pytest.raises(uvpy.WorkerDied, match=status) as info:
                await dying
            assert isinstance(info.value, concurrent.futures.process.BrokenProcessPool)
            assert info.value.pid in before
            assert await asyncio.gather(*futs) == [i * i for i in range(60)]
            after = set(await asyncio.gather(*(pool.run(jobs.pid) for _ in range(20))))
            workers = {w.proc.pid for w in pool._workers}
            assert info.value.pid not in workers and len(workers) == 2 and after <= workers
    run(loop, main())
    assert zombies() == []


def test_initializer_runs_once_per_worker(loop):
    async def main():
        async with ProcessPool(2, initializer=jobs.set_state, initargs=("k", 42)) as pool:
            assert await asyncio.gather(*(pool.run(jobs.get_state, "k") for _ in range(10))) \
                == [42] * 10
    run(loop, main())


def test_failing_initializer_breaks_the_pool_as_in_ppe(loop):
    with concurrent.futures.ProcessPoolExecutor(1, initializer=jobs.fail_init) as ppe:
        with pytest.raises(concurrent.futures.process.BrokenProcessPool):
            ppe.submit(jobs.noop).result()

    async def main():
        pool = ProcessPool(1, initializer=jobs.fail_init)
        with pytest.raises(concurrent.futures.process.BrokenProcessPool,
                           match="initializer refuses"):
            await pool.run(jobs.noop)
        with pytest.raises(concurrent.futures.process.BrokenProcessPool):
            await pool.run(jobs.noop)
        await pool.aclose()
    run(loop, main())
    assert zombies() == []


def test_max_tasks_per_child_replaces_workers(loop):
    async def main():
        async with ProcessPool(1, max_tasks_per_child=2) as pool:
            pids = [await pool.run(jobs.pid) for _ in range(6)]
            assert len(set(pids)) == 3 and all(pids.count(p) == 2 for p in pids)
    run(loop, main())
    assert zombies() == []


# -- cancellation and shutdown ---------------------------------------------------------

def test_cancel_a_queued_job_removes_it(loop, tmp_path):
    go, started, marker = tmp_path / "go", tmp_path / "started", tmp_path / "ran"

    async def main():
        async with ProcessPool(1, prefetch=0) as pool:
            blocker = asyncio.ensure_future(pool.run(jobs.wait_for, str(go), str(started)))
            await until_exists(started)
            queued = asyncio.ensure_future(pool.run(jobs.wait_for, str(go), None, str(marker)))
            big = asyncio.ensure_future(pool.run(jobs.describe, b"x" * (1 << 20)))  # a memfd
            await asyncio.sleep(0)
            fds = open_fds()
            queued.cancel()
            big.cancel()
            go.touch()
            await blocker
            for f in (queued, big):
                with pytest.raises(asyncio.CancelledError):
                    await f
            assert open_fds() == fds - 1  # the memfd of the cancelled job is closed
            assert await pool.run(jobs.square, 2) == 4
            assert not marker.exists()
    run(loop, main())


@pytest.mark.parametrize("mode", ["wait", "kill"])
def test_cancel_a_running_job(loop, tmp_path, mode):
    go, started = tmp_path / "go", tmp_path / "started"

    async def main():
        async with ProcessPool(1, cancel_running=mode) as pool:
            first = await pool.run(jobs.pid)
            job = asyncio.ensure_future(pool.run(jobs.wait_for, str(go), str(started)))
            await until_exists(started)
            job.cancel()
            with pytest.raises(asyncio.CancelledError):
                await job
            if mode == "wait":
                go.touch()
            after = await pool.run(jobs.pid)
            assert (after == first) == (mode == "wait")
    run(loop, main())
    assert zombies() == []


def test_shutdown_with_jobs_queued_and_running(tmp_path):
    go, started = tmp_path / "go", tmp_path / "started"
    pool = ProcessPool(1, prefetch=0)
    running = pool.submit(jobs.wait_for, str(go), str(started))
    queued = [pool.submit(jobs.square, i) for i in range(3)]
    while not started.exists():
        pass
    threading.Timer(0.05, go.touch).start()
    pool.shutdown(wait=True)  # Executor semantics: submitted jobs complete
    assert running.result() > 0 and [f.result() for f in queued] == [0, 1, 4]

    go.unlink()
    started.unlink()
    pool = ProcessPool(1, prefetch=0)
    running = pool.submit(jobs.wait_for, str(go), str(started))
    queued = [pool.submit(jobs.square, i) for i in range(3)]
    while not started.exists():
        pass
    go.touch()
    pool.shutdown(wait=True, cancel_futures=True)
    assert running.result() > 0 and all(f.cancelled() for f in queued)
    assert zombies() == []


def test_shutdown_on_the_loop_thread_pumps_the_workers(loop):
    async def start():
        pool = ProcessPool(2)
        return pool, [pool.submit(jobs.square, i) for i in range(50)]

    pool, futs = run(loop, start())  # the loop stops with the jobs queued or running
    pool.shutdown(wait=True)         # it cannot run: shutdown drives the workers itself
    assert [f.result() for f in futs] == [i * i for i in range(50)]
    assert zombies() == []


class _StallsPickling:
    """Pickles as the int n, once `go` is set; sets `entered` first. Holds a
    submit() between its shutdown check and the hand-over to the loop."""

    def __init__(self, n):
        self.n = n
        self.entered, self.go = threading.Event(), threading.Event()

    def __reduce__(self):
        self.entered.set()
        assert self.go.wait(10)
        return int, (self.n,)


def test_a_submit_racing_shutdown_from_another_thread_is_refused_not_lost():
    loop = uvpy.new_event_loop()
    runner = threading.Thread(target=loop.run_forever)
    runner.start()
    before = open_fds()
    pool = ProcessPool(1, shm_threshold=1024)
    assert asyncio.run_coroutine_threadsafe(pool.run(jobs.square, 2), loop).result(10) == 4
    stalls, out = _StallsPickling(5), {}

    def submitter():  # a 1 MiB buffer too: its memfd must not leak
        try:
            out["future"] = pool.submit(jobs.echo, (stalls, bytearray(1 << 20)))
        except RuntimeError as exc:
            out["error"] = exc

    thread = threading.Thread(target=submitter)
    thread.start()
    assert stalls.entered.wait(10)
    pool.shutdown(wait=True)  # every worker reaped while that submit is still inside
    stalls.go.set()
    thread.join(10)
    # submit() had not returned when shutdown began: refused, as after it.
    # Before, it returned a future that nothing would ever run.
    assert "future" not in out
    assert "after shutdown" in str(out["error"])
    loop.call_soon_threadsafe(loop.stop)
    runner.join(10)
    assert open_fds() == before
    loop.close()
    assert zombies() == []


def test_a_job_handed_over_as_the_pool_moves_to_its_own_loop_runs_there():
    # A submit() finds the pool's loop running and is about to hand its job
    # over when that loop stops and another submit() moves the pool to a
    # loop thread of its own: the job goes where the pool is, not to the
    # loop it left.
    loop = uvpy.new_event_loop()
    runner = threading.Thread(target=loop.run_forever)
    runner.start()
    pool = ProcessPool(1)
    assert asyncio.run_coroutine_threadsafe(pool.run(jobs.square, 2), loop).result(10) == 4
    entered, release, out = threading.Event(), threading.Event(), []
    submitter = threading.Thread(target=lambda: out.append(pool.submit(jobs.square, 3)))
    real = loop.is_running

    def is_running():
        running = real()
        if threading.current_thread() is submitter:
            entered.set()
            assert release.wait(10)
        return running

    loop.is_running = is_running
    submitter.start()
    assert entered.wait(10)  # it found the loop running
    loop.call_soon_threadsafe(loop.stop)
    runner.join(10)
    assert pool.submit(jobs.square, 4).result(10) == 16  # the pool moved
    release.set()
    submitter.join(10)
    assert out[0].result(10) == 9
    pool.shutdown()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    assert zombies() == []


def test_a_job_handed_over_before_a_shutdown_runs_when_the_last_worker_dies_first(new_loop):
    # The loop hears of the hand-over and of the shutdown only after it has
    # reaped the pool's only worker (both threads lose the CPU just before
    # call_soon_threadsafe): the job was accepted, so a worker is started
    # to run it, and the shutdown ends once it has.
    loop = new_loop()
    runner = threading.Thread(target=loop.run_forever)
    runner.start()
    pool = ProcessPool(1)
    pid = asyncio.run_coroutine_threadsafe(pool.run(jobs.pid), loop).result(10)
    held, entered, release = set(), threading.Semaphore(0), threading.Event()
    forward = loop.call_soon_threadsafe

    def call_soon_threadsafe(*args, **kwargs):
        if threading.current_thread() in held:
            entered.release()
            assert release.wait(10)
        return forward(*args, **kwargs)

    loop.call_soon_threadsafe = call_soon_threadsafe
    futures = []
    submitter = threading.Thread(target=lambda: futures.append(pool.submit(jobs.square, 4)))
    stopper = threading.Thread(target=pool.shutdown, kwargs={"wait": False})
    held.update((submitter, stopper))
    submitter.start()
    assert entered.acquire(timeout=10)  # its job is handed over; the loop is not told yet
    stopper.start()
    assert entered.acquire(timeout=10)  # shut down; the loop is not told yet
    os.kill(pid, signal.SIGKILL)
    assert gone(pid)  # reaped by the pool, on the loop
    release.set()
    submitter.join(10)
    stopper.join(10)
    assert futures[0].result(10) == 16
    pool.shutdown(wait=True)
    forward(loop.stop)
    runner.join(10)
    loop.close()
    assert zombies() == []


def test_a_job_submitted_from_another_thread_runs_despite_a_shutdown_on_the_loop_thread(loop):
    async def main():
        pool = ProcessPool(1)
        assert await pool.run(jobs.square, 3) == 9  # bound to this loop
        futures = []
        other = threading.Thread(target=lambda: futures.append(pool.submit(jobs.square, 4)))
        other.start()
        other.join()  # its hand-over to this loop is still pending
        pool.shutdown(wait=True)  # here, before the loop takes it: the pump must run it
        assert await asyncio.wait_for(asyncio.wrap_future(futures[0]), 10) == 16
    run(loop, main())
    assert zombies() == []


def test_aclose_with_jobs_running(loop):
    async def main():
        pool = ProcessPool(2)
        futs = [asyncio.ensure_future(pool.run(jobs.square, i)) for i in range(100)]
        await asyncio.sleep(0)
        await pool.aclose()
        assert [f.result() for f in futs] == [i * i for i in range(100)]
        with pytest.raises(RuntimeError, match="after shutdown"):
            await pool.run(jobs.noop)
    run(loop, main())
    assert zombies() == []


def _running_on(loop, pool, tmp_path):
    """A job submitted on loop and running in pool's worker until the file
    it returns (go) exists."""
    go, started = tmp_path / "go", tmp_path / "started"

    async def start():
        fut = pool.submit(jobs.wait_for, str(go), str(started))
        await until_exists(started)
        return fut

    return run(loop, start()), go


@pytest.mark.leaves_io_open("closes the loop with the pool's workers still watched")
def test_loop_closed_with_jobs_in_flight(new_loop, tmp_path):
    loop = new_loop()
    pool = ProcessPool(1)
    inflight, go = _running_on(loop, pool, tmp_path)
    loop.close()
    go.touch()
    # The pool moves to its own loop thread; the job in flight fails.
    assert pool.submit(jobs.square, 3).result() == 9
    with pytest.raises(RuntimeError, match="closed with this job in flight"):
        inflight.result()
    pool.shutdown()
    assert zombies() == []


@pytest.mark.leaves_io_open("closes the loop with the pool's workers still watched")
def test_a_job_failed_by_a_lost_loop_is_submitted_again_from_its_done_callback(new_loop, tmp_path):
    # The callback runs when the next submit() moves the pool to its own loop
    # thread and fails the jobs the closed loop had in flight. Its submit()
    # must find that one thread, not start a second loop that reads the
    # same workers' sockets.
    loop = new_loop()
    pool = ProcessPool(1)
    inflight, go = _running_on(loop, pool, tmp_path)
    retried = []
    inflight.add_done_callback(lambda f: retried.append(pool.submit(jobs.square, 5)))
    loop.close()
    go.touch()
    assert pool.submit(jobs.square, 3).result(10) == 9
    with pytest.raises(RuntimeError, match="closed with this job in flight"):
        inflight.result()
    assert retried[0].result(10) == 25
    assert [t.name for t in threading.enumerate()].count("uvpy-process-pool") == 1
    pool.shutdown()
    assert "uvpy-process-pool" not in [t.name for t in threading.enumerate()]
    assert zombies() == []


# -- the worker's wait for its next job (_procworker invariant 7) ------------------------

# A worker as the pool starts it, with SPIN set and its polling counted; it
# prints the counts when the pool side closes its socket. Given a file
# (argv[4]), its clock is set late by the seconds the file says each time a
# recv() brings bytes: the frame came that much later, by the worker's
# clock, whatever the OS made of the two processes' timing.
_COUNTING_BOOT = """
import importlib.util as u, json, sys
s = u.spec_from_file_location('_uvpy_procworker', sys.argv[1])
m = u.module_from_spec(s); s.loader.exec_module(m)
m.SPIN = float(sys.argv[3])
m.SPIN_JOB = float(sys.argv[5]) if len(sys.argv) > 5 else m.SPIN_JOB
counts = {"polls": 0, "hits": 0}
polling = m._recv_polling
def counted(*args):
    counts["polls"] += 1
    n = polling(*args)
    counts["hits"] += n is not None
    return n
m._recv_polling = counted
if len(sys.argv) > 4 and sys.argv[4]:
    late, offset, clock, recv = sys.argv[4], [0.0], m._clock, m.recv
    m._clock = lambda: clock() + offset[0]
    def recv_late(*args):
        n = recv(*args)
        if n:
            with open(late) as f:
                offset[0] += float(f.read())
        return n
    m.recv = recv_late
code = m.main(int(sys.argv[2]), 1 << 16)
print(json.dumps(counts))
sys.exit(code)
"""


@contextlib.contextmanager
def _counting_worker(spin, late=None, spin_job=None):
    """A worker started with _COUNTING_BOOT; killed and reaped, and its
    socket closed, on the way out (a failed test leaves nothing behind)."""
    import socket
    import subprocess

    from uvpy._prochandle import Worker
    from uvpy import _procworker as wire

    parent, child = socket.socketpair()
    argv = [sys.executable, "-c", _COUNTING_BOOT, wire.__file__, str(child.fileno()), str(spin)]
    try:
        extra = [str(late or "")] + ([str(spin_job)] if spin_job is not None else [])
        proc = subprocess.Popen(argv + extra,
                                pass_fds=(child.fileno(),), stdout=subprocess.PIPE, text=True)
    except BaseException:
        parent.close()
        raise
    finally:
        child.close()
    w = Worker(proc, parent, -1)
    try:
        w.send_init((None, ()), 1 << 16)
        yield w
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.communicate()
        w.sock.close()
        w.reader.close()


def _call(w, job_id, fn, *args):
    """Send one job to w and wait (blocking) for its outcome."""
    from uvpy import _procworker as wire

    wire.send_all(w.sock, [wire.encode(wire.JOB, job_id, (fn, wire.mark(args, 1 << 16, 2), {}),
                                       1 << 16)[:2]])
    while True:
        frame = w.reader.next()
        if frame is None:
            assert wire.recv(w.sock, w.reader), "the worker closed its socket"
            continue
        kind, jid, nbufs, payload, fd = frame
        if kind == wire.READY:
            continue
        assert (kind, jid) == (wire.RESULT, job_id)
        return wire.decode(nbufs, payload, fd) if nbufs else pickle.loads(payload)


def _counts(w):
    import json
    import socket

    w.sock.shutdown(socket.SHUT_WR)  # EOF: the worker retires
    out, _ = w.proc.communicate(timeout=60)
    assert w.proc.returncode == 0
    return json.loads(out)


def _set_late(path, seconds):
    """What the next frame's recv() in a _COUNTING_BOOT worker reads:
    written whole (a rename), so the worker never reads half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(repr(float(seconds)))
    os.replace(tmp, path)


def test_a_worker_polls_for_jobs_that_come_back_to_back():
    # SPIN of 5 s: every job here comes "back to back", however loaded the
    # machine, and SPIN_JOB of 5 s: every job is short. Every fifth carries
    # a 1 MiB buffer (a memfd) through the polling recvmsg().
    with _counting_worker(5.0, spin_job=5.0) as w:
        for i in range(1, 41):
            arg = bytes([i]) * (1 << 20) if i % 5 == 0 else b"x" * i
            assert _call(w, i, jobs.checksum, arg) == jobs.checksum(arg)
        counts = _counts(w)
    # The first wait in the job loop sleeps (nothing came back to back yet:
    # job 1 may even arrive with INIT); each later one, and the EOF, polled
    # and was answered by the poll.
    assert counts["polls"] >= 39
    assert counts["hits"] == counts["polls"]


def test_a_worker_polls_only_after_a_wait_shorter_than_spin(tmp_path):
    # Which jobs come apart is the test's word (the worker's clock is set an
    # hour late for them), not the OS scheduler's; and with SPIN a minute,
    # no poll runs out on its own.
    late = tmp_path / "late"
    _set_late(late, 0)
    apart = 3600.0
    pattern = [apart, 0, 0, 0, apart, 0, apart, apart, 0, 0, apart, 0]
    with _counting_worker(60.0, late, spin_job=60.0) as w:
        for i, seconds in enumerate(pattern, 1):
            _set_late(late, seconds)
            assert _call(w, i, jobs.square, i) == i * i
        counts = _counts(w)
    # The wait for job i (i > 1), and the EOF's after job 12, polls exactly
    # when job i - 1 came back to back. Job 1 came apart (or with INIT):
    # the first wait in the job loop sleeps either way.
    assert counts["polls"] == pattern.count(0)
    assert counts["hits"] == counts["polls"]


def test_a_worker_does_not_poll_after_a_long_job(tmp_path):
    # Every job comes back to back (SPIN a minute) except the first, which
    # comes apart (the worker's clock an hour late) so that the count
    # starts the same whether or not it arrived with INIT. SPIN_JOB is half
    # a second: a square is shorter however loaded the machine, a nap of
    # 0.6 s longer.
    late = tmp_path / "late"
    _set_late(late, 3600)
    with _counting_worker(60.0, late, spin_job=0.5) as w:
        assert _call(w, 1, jobs.square, 1) == 1
        _set_late(late, 0)
        assert _call(w, 2, jobs.square, 2) == 4  # its wait sleeps (job 1 came apart)
        assert _call(w, 3, jobs.nap, 0.6) is None  # its wait polls
        assert _call(w, 4, jobs.square, 4) == 16  # its wait sleeps: job 3 was long
        assert _call(w, 5, jobs.square, 5) == 25  # polls
        counts = _counts(w)  # the EOF's wait polls
    assert counts == {"polls": 3, "hits": 3}


def _state(pid):
    """The process's state letter in /proc/PID/stat (S: asleep in a wait)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_a_job_that_stops_the_clock_does_not_keep_its_worker_polling(tmp_path):
    import time

    # A job may leave time.perf_counter replaced (a mock left in place): the
    # worker's poll must still run out, by its own clock, and the worker
    # sleep. A polling worker never sleeps: it stays runnable throughout
    # (sched_yield).
    late = tmp_path / "late"
    _set_late(late, 3600)
    with _counting_worker(0.2, late, spin_job=60.0) as w:
        assert _call(w, 1, jobs.square, 1) == 1  # apart: the next wait sleeps
        _set_late(late, -3600)
        assert _call(w, 2, jobs.stop_perf_counter) is None  # back to back: the next polls
        for _ in range(3000):  # a bound against hangs, not a timing assertion
            if _state(w.proc.pid) == "S":
                break
            time.sleep(0.01)
        assert _state(w.proc.pid) == "S"
        counts = _counts(w)
    assert counts == {"polls": 1, "hits": 0}


# -- volume and large data ---------------------------------------------------------------

def test_a_hundred_thousand_small_jobs_leave_nothing(loop):
    fds = warmed_fds(loop)

    async def main():
        async with ProcessPool(2) as pool:
            total = 0
            for _ in range(10):
                total += sum(await asyncio.gather(*(pool.run(jobs.square, 3)
                                                    for _ in range(10_000))))
            assert total == 900_000
    run(loop, main())
    assert open_fds() == fds
    assert zombies() == []


def test_large_buffers_travel_through_shared_memory(loop):
    np = pytest.importorskip("numpy")

    async def main():
        async with ProcessPool(2) as pool:
            a = np.arange(8 << 20, dtype=np.uint64)  # 64 MiB
            assert await pool.run(jobs.describe, a) == ("ndarray", 8 << 20, True)
            back = await pool.run(jobs.double, a)
            assert back.dtype == a.dtype and (back == a * 2).all()
            assert jobs.describe(back)[2]  # a view of the mapping: no copy out
            big = bytes(range(256)) * 4096
            assert await pool.run(jobs.describe, big) == ("bytes", len(big), False)
            assert await pool.run(jobs.echo, big) == big
            assert await pool.run(jobs.echo, [big, 1]) == [big, 1]
            assert await pool.run(jobs.echo, {"k": (big,)}) == {"k": (big,)}
            mv = memoryview(bytearray(big))
            assert await pool.run(jobs.describe, mv) == ("memoryview", len(big), True)
            assert await pool.run(jobs.echo, bytearray(big)) == bytearray(big)
            small = b"x" * 100
            assert await pool.run(jobs.describe, small) == ("bytes", 100, False)
    run(loop, main())


def mapped_inode(buf):
    """The inode of the shared memory segment that buf (a memoryview of a
    mapping) lies in, from /proc/self/maps."""
    import ctypes

    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if lo <= addr < hi:
                return int(fields[4])
    raise AssertionError("not mapped")


def test_shared_memory_is_reused_once_no_view_is_left(loop):
    n = 1 << 20

    async def main():
        async with ProcessPool(1) as pool:
            base = await pool.run(jobs.open_fd_count)
            # Results kept alive: none is written over, however many.
            held = [await pool.run(jobs.filled, i, n) for i in range(40)]
            assert all(h == bytes([i]) * n for i, h in enumerate(held))
            assert len({mapped_inode(h) for h in held}) == 40
            del held
            # Dropped at once: the worker writes each result into the same segment.
            inodes = set()
            for i in range(20):
                r = await pool.run(jobs.filled, i, n)
                assert r == bytes([i]) * n
                inodes.add(mapped_inode(r))
                del r
            assert len(inodes) <= 2
            # The worker's cache is bounded: a few segments (an fd each, and
            # one its mapping holds), not one per job.
            assert await pool.run(jobs.open_fd_count) <= base + 2 * SEGMENTS_MAX
    run(loop, main())


def test_a_job_that_keeps_its_arguments_keeps_them_intact(loop):
    n = 1 << 20
    fds = warmed_fds(loop)

    async def main():
        async with ProcessPool(1) as pool:
            for i in range(30):  # more than the pool's cache holds segments
                await pool.run(jobs.keep, memoryview(bytearray([i]) * n))
            assert await pool.run(jobs.kept_heads) == [bytes([i]) * 4 for i in range(30)]
            await pool.run(jobs.forget)
            for i in range(30):
                assert await pool.run(jobs.echo, bytes([i]) * n) == bytes([i]) * n
    run(loop, main())
    assert open_fds() == fds


def test_segment_cache_reuses_and_stays_in_its_bounds():
    mib = 1 << 20
    segs = Segments(10 * mib)
    a, fd_a, _ = segs.take(4 * mib)
    b, _, _ = segs.take(4 * mib)
    assert a and b and a != b
    assert segs.take(4 * mib) == (0, -1, None)    # 12 MiB would pass the bound
    assert segs.take(11 * mib) == (0, -1, None)   # larger than the bound itself
    segs.ref(b)                                   # a second holder (a receiver)
    segs.unref(b)
    assert segs.take(3 * mib) == (0, -1, None)    # b is still held: nothing idle
    segs.unref(a)
    assert segs.take(3 * mib)[0] == a             # idle: reused
    segs.unref(a)
    assert segs.take(6 * mib)[0] == a             # grown in place: 6 + 4 <= 10
    assert os.fstat(fd_a).st_size == 6 * mib
    segs.unref(a)
    segs.unref(b)
    c, fd_c, _ = segs.take(9 * mib)               # the idle ones make room
    assert c not in (0, a, b) and segs.held == 9 * mib
    segs.close()
    for fd in (fd_a, fd_c):
        with pytest.raises(OSError):
            os.fstat(fd)
    assert segs.take(1 * mib) == (0, -1, None)


def shm_names():
    """/dev/shm's entries, less multiprocessing's named semaphores (sem.*),
    which other processes on the machine (CI runs two Pythons' tests side by
    side) make and remove at any time; the pool names nothing there."""
    return {name for name in os.listdir("/dev/shm") if not name.startswith("sem.")}


@pytest.mark.parametrize("cache", [0, 1 << 20])
def test_messages_larger_than_the_cache(loop, cache):
    n = 4 << 20
    fds = warmed_fds(loop)
    shm = shm_names()

    async def main():
        async with ProcessPool(2, shm_cache=cache) as pool:
            for i in range(20):
                assert await pool.run(jobs.echo, bytes([i]) * n) == bytes([i]) * n
    run(loop, main())
    assert open_fds() == fds
    assert shm_names() == shm


def test_a_one_gib_result(loop):
    np = pytest.importorskip("numpy")
    if os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") < (4 << 30):
        pytest.skip("needs 4 GiB of free memory")
    fds = warmed_fds(loop)

    async def main():
        async with ProcessPool(1) as pool:
            r = await pool.run(jobs.zeros, 1 << 30)
            assert r.nbytes == 1 << 30 and r[::1 << 20].sum() == 0
            del r
            assert await pool.run(jobs.square, 6) == 36
    run(loop, main())
    assert open_fds() == fds

