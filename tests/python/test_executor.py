"""The native executor: run_in_executor(None), offload, parallel_for,
NativeExecutor, built-in kernels, cancellation, backpressure, bad input.

Every test runs on both loops. uvpy.offload/parallel_for need a uvpy loop:
on stock asyncio they must refuse clearly, and that is what those tests
assert there; NativeExecutor and run_in_executor work on both.
"""

import asyncio
import concurrent.futures
import ctypes
import os
import subprocess
import textwrap
import sys
import threading
import time
from array import array

import pytest

import uvpy

HERE = os.path.dirname(__file__)


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    """tests/python/native/test_kernels.c, compiled against uvpy_kernel.h."""
    out = tmp_path_factory.mktemp("kernels") / "libtestkernels.so"
    src = os.path.join(HERE, "native", "test_kernels.c")
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-I", uvpy.get_include(), src, "-o", str(out)], check=True)
    return ctypes.CDLL(str(out))


def run(loop, coro):
    return loop.run_until_complete(coro)


def needs_uvpy(loop_name, loop, factory):
    """Runs factory() (an offload future or a coroutine) on the loop.

    On asyncio, uvpy.offload/parallel_for must refuse with a clear
    RuntimeError instead; returns None there.
    """

    async def go():
        return await factory()

    if loop_name == "uvpy":
        return run(loop, go())

    async def refused():
        with pytest.raises(RuntimeError, match="need a running uvpy loop"):
            await go()

    run(loop, refused())
    return None


# -- run_in_executor(None) ------------------------------------------------------


def test_run_in_executor_default_runs_off_loop_thread(loop, loop_name):
    before = uvpy.executor_metrics()["blocking"]["completed"]

    async def main():
        return await loop.run_in_executor(None, threading.get_ident)

    assert run(loop, main()) != threading.get_ident()
    if loop_name == "uvpy":  # the native blocking pool ran it, not a ThreadPoolExecutor
        assert uvpy.executor_metrics()["blocking"]["completed"] > before


def test_exception_keeps_traceback(loop):
    def inner():
        raise ValueError("deep")

    def outer():
        inner()

    async def main():
        with pytest.raises(ValueError, match="deep") as info:
            await loop.run_in_executor(None, outer)
        names = [entry.name for entry in info.traceback]
        assert "outer" in names and "inner" in names

    run(loop, main())


def test_many_callables_under_gather(loop):
    async def main():
        return await asyncio.gather(*(loop.run_in_executor(None, pow, i, 2) for i in range(2000)))

    assert run(loop, main()) == [i * i for i in range(2000)]


def test_gil_releasing_work_runs_in_parallel_and_correctly(loop):
    import hashlib

    data = [os.urandom(1 << 16) for _ in range(8)]

    async def main():
        return await asyncio.gather(*(loop.run_in_executor(None, lambda d=d: hashlib.sha256(d).hexdigest()) for d in data))

    assert run(loop, main()) == [hashlib.sha256(d).hexdigest() for d in data]


def test_cancelling_queued_python_work(loop):
    started = threading.Event()
    release = threading.Event()

    async def main():
        n = uvpy.executor_metrics()["workers"].__len__()
        if not isinstance(loop, uvpy.Loop):
            # The victim must queue on the stock loop too: a pool of n
            # threads (its default has more, and 3.14's wrap_future()
            # copies an already finished result at once).
            loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(n))
        blockers = [loop.run_in_executor(None, release.wait) for _ in range(n)]
        victim = loop.run_in_executor(None, started.set)
        victim.cancel()
        release.set()
        await asyncio.gather(*blockers)
        with pytest.raises(asyncio.CancelledError):
            await victim

    run(loop, main())


def test_shutdown_default_executor_waits_for_work(loop):
    started, release = threading.Event(), threading.Event()
    done = []

    def work():
        started.set()
        release.wait(30)
        done.append(1)

    async def main():
        loop.run_in_executor(None, work)
        while not started.is_set():
            await asyncio.sleep(0.001)
        shutdown = asyncio.ensure_future(loop.shutdown_default_executor())
        for _ in range(10):
            await asyncio.sleep(0)
        assert not shutdown.done()  # the work is still running
        release.set()
        await shutdown
        assert done == [1]

    run(loop, main())


def test_close_with_python_work_in_flight(new_loop):
    loop = new_loop()

    async def main():
        loop.run_in_executor(None, time.sleep, 0.05)
        await asyncio.sleep(0)

    run(loop, main())
    loop.close()  # must neither crash nor hang
    assert loop.is_closed()


def test_close_does_not_wait_for_a_blocked_callable(new_loop):
    loop = new_loop()
    started = threading.Event()
    release = threading.Event()
    finished = threading.Event()

    def blocked():
        started.set()
        release.wait(30)
        finished.set()

    async def main():
        loop.run_in_executor(None, blocked)
        while not started.is_set():  # close would cancel it while still queued
            await asyncio.sleep(0.001)

    run(loop, main())
    t0 = time.monotonic()
    loop.close()  # like asyncio: the executor is not waited for
    closed_in = time.monotonic() - t0
    release.set()
    assert finished.wait(10)
    assert closed_in < 10  # not a timing threshold: "did not wait for the 30 s job"
    # The pool is healthy afterwards.
    other = new_loop()
    assert run(other, other.run_in_executor(None, abs, -3)) == 3


# -- blocking work: run_in_executor(None) as the Python world uses it ---------------

# asyncio's default executor: ThreadPoolExecutor's min(32, cpus + 4) threads.
ASYNCIO_BOUND = min(32, (os.cpu_count() or 1) + 4)


@pytest.mark.parametrize("n", [1, 4, ASYNCIO_BOUND - 1])
def test_n_blocked_callables_wait_for_the_next_one(loop, n):
    # n callables block until callable n+1 sets the event: each must get a
    # thread of its own, as on asyncio, or the setter waits behind them.
    ev = threading.Event()

    async def main():
        waits = [loop.run_in_executor(None, ev.wait, 20) for _ in range(n)]
        await loop.run_in_executor(None, ev.set)
        return await asyncio.gather(*waits)

    t0 = time.monotonic()
    assert run(loop, main()) == [True] * n  # False: a wait ran out before the setter ran
    assert time.monotonic() - t0 < 20  # not a timing threshold: "the setter was not starved"


def test_blocking_threads_have_names(loop, loop_name):
    async def main():
        names = await asyncio.gather(*(loop.run_in_executor(None, lambda: threading.current_thread().name)
                                       for _ in range(4)))
        listed = {t.name for t in threading.enumerate()}
        return names, listed

    names, listed = run(loop, main())
    prefix = "uvpy" if loop_name == "uvpy" else "asyncio"
    import re

    assert all(re.fullmatch(rf"{prefix}_\d+", name) for name in names), names
    assert set(names) <= listed  # real threading.Thread objects, as py-spy and logging see them


def test_blocking_threads_bound_is_configurable(new_loop, loop_name):
    # blocking_threads bounds how many callables run at once on one loop;
    # asyncio's equivalent is a ThreadPoolExecutor(max_workers=...).
    import gc

    gc.collect()  # loops leaked by earlier tests close now: their shares of the limit go
    loop = new_loop()
    bound = 2
    if loop_name == "uvpy":
        uvpy.configure_executor(blocking_threads=bound)
    else:
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(bound))
    lock = threading.Lock()
    inside = [0, 0]  # now, most
    release = threading.Event()

    def job():
        with lock:
            inside[0] += 1
            inside[1] = max(inside[1], inside[0])
        release.wait(20)
        with lock:
            inside[0] -= 1
        return True

    async def main():
        futs = [loop.run_in_executor(None, job) for _ in range(5)]
        while inside[0] < bound:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.02)  # a third thread would have entered by now
        running = inside[0]
        release.set()
        return running, await asyncio.gather(*futs)

    try:
        running, results = run(loop, main())
    finally:
        if loop_name == "uvpy":
            uvpy.configure_executor(blocking_threads=0)
    assert running == bound
    assert inside[1] == bound
    assert results == [True] * 5


def test_blocking_threads_validation():
    with pytest.raises(TypeError):
        uvpy.configure_executor(blocking_threads="4")
    with pytest.raises(ValueError):
        uvpy.configure_executor(blocking_threads=-1)
    m = uvpy.executor_metrics()["blocking"]
    assert m["per_loop"] == ASYNCIO_BOUND


def test_blocking_threads_from_environment():
    env = dict(os.environ, UVPY_BLOCKING_THREADS="3")
    code = (
        "import uvpy, asyncio, threading\n"
        "ev = threading.Event()\n"
        "async def main():\n"
        "    loop = asyncio.get_running_loop()\n"
        "    waits = [loop.run_in_executor(None, ev.wait, 0.5) for _ in range(3)]\n"
        "    setter = loop.run_in_executor(None, ev.set)\n"
        "    return await asyncio.gather(*waits), uvpy.executor_metrics()['blocking']\n"
        "r, m = uvpy.run(main())\n"
        "print(r.count(False) >= 1, m['per_loop'], m['spawned'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    # Three threads, all blocked: the setter waited for a free one, so at
    # least one wait ran out before it could run.
    assert out.stdout.split() == ["True", "3", "3"], out.stdout


def test_a_job_whose_thread_could_not_be_started_fails_instead_of_hanging():
    # One blocking thread per loop. Loop A's first job reserves the only
    # thread; while its start is failing, a second loop opens its executor
    # port in another thread, which raises the limit and reserves a thread
    # for A's queued job, whose start fails too, after A's: the starters
    # wait for each other (A's for B's call, B's for A's slot to be given
    # back), not for a time. A's submit() had returned (a start was
    # pending): with no thread left its job comes back, and its future fails
    # as ThreadPoolExecutor's submit() would, instead of waiting forever.
    # Then starts work again.
    env = dict(os.environ, UVPY_BLOCKING_THREADS="1")
    code = textwrap.dedent("""\
        import asyncio, threading, time, uvpy
        from uvpy import _executor, _uvpy

        calls, starting, b_called = [0], threading.Event(), threading.Event()

        def threads():
            return uvpy.executor_metrics()["blocking"]["threads"]

        def starter(pool, index):
            calls[0] += 1
            if calls[0] == 1:  # A's: fails once B's start is pending
                starting.set()
                assert b_called.wait(30)  # releases the GIL
            elif calls[0] == 2:  # B's, for A's job: fails once A's has
                b_called.set()
                deadline = time.monotonic() + 30
                while threads() > 1:  # A's slot given back; B's own still counts
                    assert time.monotonic() < deadline
                    time.sleep(0.001)
            else:
                return _executor._start_blocking_thread(pool, index)
            raise RuntimeError("can't start new thread")

        _uvpy._set_blocking_starter(starter)

        def other_loop():
            starting.wait()
            print("B", uvpy.run(b()), flush=True)

        async def b():
            return await asyncio.get_running_loop().run_in_executor(None, abs, -2)

        async def a():
            t = threading.Thread(target=other_loop)
            t.start()
            try:
                r = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, abs, -1), 30)
            except RuntimeError as exc:
                r = f"RuntimeError: {exc}"
            await asyncio.to_thread(t.join)
            return r

        print("A", uvpy.run(a()), flush=True)
        print("A again", uvpy.run(b()), flush=True)
        """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "A RuntimeError: can't start new thread for this job: Resource temporarily unavailable" in lines, out
    assert "B 2" in lines and "A again 2" in lines, out


def test_a_submit_no_thread_can_be_started_for_raises_runtime_error():
    # With no thread and none that can be started, run_in_executor and
    # NativeExecutor.submit raise RuntimeError, as ThreadPoolExecutor's
    # submit() does; the start's EAGAIN is not a full queue (which would
    # park the job and retry the start for ever, or, for submit, return no
    # exception at all). Once starts work, both do.
    code = textwrap.dedent("""\
        import asyncio, uvpy
        from uvpy import _executor, _uvpy

        def failing(pool, index):
            raise RuntimeError("can't start new thread")

        async def call():
            try:
                return await asyncio.get_running_loop().run_in_executor(None, abs, -1)
            except RuntimeError as exc:
                return f"RuntimeError: {exc}"

        def submit():
            try:
                return uvpy.NativeExecutor().submit(abs, -2).result(30)
            except RuntimeError as exc:
                return f"RuntimeError: {exc}"

        _uvpy._set_blocking_starter(failing)
        print("call", uvpy.run(call()), flush=True)
        print("submit", submit(), flush=True)
        _uvpy._set_blocking_starter(_executor._start_blocking_thread)
        print("call", uvpy.run(call()), flush=True)
        print("submit", submit(), flush=True)
        """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    error = "RuntimeError: can't start new thread for this job: Resource temporarily unavailable"
    assert out.stdout.splitlines() == [f"call {error}", f"submit {error}", "call 1", "submit 2"], out


def test_idle_blocking_threads_let_the_process_exit():
    # Pool threads are non-daemon threading.Threads; at exit the pool lets
    # them go at once instead of after their keep-alive.
    code = (
        "import uvpy, asyncio\n"
        "async def main():\n"
        "    loop = asyncio.get_running_loop()\n"
        "    await asyncio.gather(*(loop.run_in_executor(None, abs, -i) for i in range(50)))\n"
        "uvpy.run(main())\n"
    )
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - t0 < 8  # not a timing threshold: the keep-alive (10 s) was not waited out


def test_executor_works_in_a_forked_child(loop, loop_name):
    # The pools' threads do not survive fork(): the child starts its own.
    async def warm():
        await loop.run_in_executor(None, abs, -1)
        if loop_name == "uvpy":
            await uvpy.offload(uvpy.kernels.NOOP)

    run(loop, warm())
    code_in_child = """
import asyncio, uvpy
async def main():
    l = asyncio.get_running_loop()
    r = await asyncio.gather(*(l.run_in_executor(None, pow, i, 2) for i in range(20)))
    await uvpy.offload(uvpy.kernels.NOOP)
    return r
"""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        ok = 1
        try:
            ns = {}
            exec(code_in_child, ns)
            ok = 0 if uvpy.run(ns["main"]()) == [i * i for i in range(20)] else 1
        finally:
            os._exit(ok)
    deadline = time.monotonic() + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung on the executor")
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.leaks_fds("multiprocessing starts ProcessPoolExecutor's helper process (the forkserver, "
                       "the default from Python 3.14) once per process, and it keeps its pipes open "
                       "for later pools")
def test_any_concurrent_futures_executor(loop):
    # An explicit executor, and a ThreadPoolExecutor as the default, work as on asyncio.
    async def main():
        with concurrent.futures.ProcessPoolExecutor(1) as pool:
            assert await loop.run_in_executor(pool, pow, 2, 10) == 1024
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mine"))
        name = await loop.run_in_executor(None, lambda: threading.current_thread().name)
        assert name.startswith("mine")
        with pytest.raises(TypeError, match="executor must be ThreadPoolExecutor instance"):
            loop.set_default_executor(concurrent.futures.ProcessPoolExecutor(1))

    run(loop, main())


# -- NativeExecutor ---------------------------------------------------------------


def test_native_executor_from_threads_and_any_loop(loop):
    with uvpy.NativeExecutor() as ex:
        assert list(ex.map(abs, [-1, -2, 3])) == [1, 2, 3]
        results = []
        threads = [threading.Thread(target=lambda: results.append(ex.submit(sum, [1, 2]).result())) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [3] * 4

        async def main():
            return await loop.run_in_executor(ex, divmod, 7, 2)

        assert run(loop, main()) == (3, 1)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(abs, 1)


def test_native_executor_exceptions_and_validation():
    ex = uvpy.NativeExecutor()
    fut = ex.submit(int, "x")
    with pytest.raises(ValueError):
        fut.result(timeout=10)
    with pytest.raises(TypeError):
        ex.submit(42)
    ex.shutdown()
    assert isinstance(ex, concurrent.futures.Executor)


# -- offload / parallel_for -----------------------------------------------------------


def test_offload_ctypes_kernel_with_scalars(loop, loop_name, lib):
    out = array("d", [0.0])
    needs_uvpy(loop_name, loop, lambda: uvpy.offload(lib.add_scalars, 2, 0.5, out))
    if loop_name == "uvpy":
        assert out[0] == 2.5


def test_offload_accepts_capsule_cffi_and_int(loop, loop_name, lib):
    address = ctypes.cast(lib.add_scalars, ctypes.c_void_p).value
    new_capsule = ctypes.pythonapi.PyCapsule_New
    new_capsule.restype = ctypes.py_object
    new_capsule.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    capsule = new_capsule(address, b"uvpy.kernel", None)
    cffi = pytest.importorskip("cffi")
    ffi = cffi.FFI()
    ffi.cdef("typedef struct uvpy_ctx uvpy_ctx_t; int add_scalars(const uvpy_ctx_t*);")
    clib = ffi.dlopen(lib._name)
    for kernel in (address, capsule, clib.add_scalars, uvpy.Kernel(lib.add_scalars, "idw")):
        out = array("d", [0.0])
        needs_uvpy(loop_name, loop, lambda: uvpy.offload(kernel, 1, 1.25, out))
        if loop_name == "uvpy":
            assert out[0] == 2.25, kernel


def test_kernel_failure_becomes_kernel_error(loop, loop_name, lib):
    async def main():
        with pytest.raises(uvpy.KernelError) as info:
            await uvpy.offload(lib.fail_with, 7)
        assert info.value.code == 7

    needs_uvpy(loop_name, loop, main)


def test_parallel_for_covers_every_index_once(loop, loop_name, lib):
    n = 100_003
    marks = array("q", bytes(8 * n))
    needs_uvpy(loop_name, loop, lambda: uvpy.parallel_for(lib.mark_range, n, marks, grain=997))
    if loop_name == "uvpy":
        assert min(marks) == 1 and max(marks) == 1


async def wait_started(flag):
    while not flag[2]:  # the kernel sets flag[2] once a worker runs it
        await asyncio.sleep(0.001)


def test_cancel_reaches_a_running_kernel(loop, loop_name, lib):
    flag = array("i", [0, 0, 0])

    async def main():
        task = asyncio.ensure_future(uvpy.offload(lib.spin_until, flag))
        await wait_started(flag)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(1000):  # the kernel notices should_stop() and returns
            if flag[1]:
                break
            await asyncio.sleep(0.005)
        flag[0] = 1
        assert flag[1] == 1

    needs_uvpy(loop_name, loop, main)


def _block_every_worker(lib):
    """One spinning kernel per worker, each with its own flag: the queue
    then holds everything submitted after them."""
    n = len(uvpy.executor_metrics()["workers"])
    flags = [array("i", [0, 0, 0]) for _ in range(n)]
    spinners = [uvpy.offload(lib.spin_until, f) for f in flags]
    return flags, spinners


async def _all_started(flags):
    for f in flags:
        await wait_started(f)


def _release(flags):
    for f in flags:
        f[0] = 1


def test_backpressure_full_queue_waits_instead_of_growing(loop, loop_name, lib):
    marks = array("q", bytes(8 * 5000))
    slots = memoryview(marks)

    async def main():
        flags, spinners = _block_every_worker(lib)
        await _all_started(flags)
        # More than the queue holds (4096): the extra ones must wait. Each
        # job marks its own slot (jobs run concurrently on several workers).
        many = [uvpy.offload(lib.mark_range, slots[i : i + 1]) for i in range(5000)]
        await asyncio.sleep(0.01)
        assert uvpy.executor_metrics()["queued"] <= 4096
        _release(flags)
        await asyncio.gather(*spinners, *many)
        assert list(marks) == [1] * 5000

    needs_uvpy(loop_name, loop, main)


def test_backpressure_python_callables_all_complete(loop, loop_name):
    # More run_in_executor calls than the native queue holds (4096): the
    # rest wait on the loop, in bounds, and every one returns its own result.
    n = 6000

    async def main():
        futs = [loop.run_in_executor(None, pow, i, 2) for i in range(n)]
        if loop_name == "uvpy":  # the injection queue, plus batches workers took into their own
            workers = len(uvpy.executor_metrics()["workers"])
            assert uvpy.executor_metrics()["queued"] <= 4096 + 256 * workers
            assert len(loop._exec_pending()) == n  # the rest wait, tracked, on the loop
        return await asyncio.gather(*futs)

    assert run(loop, main()) == [i * i for i in range(n)]


def test_cancelled_waiting_submission_never_runs(loop, loop_name, lib):
    marks = array("q", bytes(8 * 5000))
    slots = memoryview(marks)

    async def main():
        flags, spinners = _block_every_worker(lib)
        await _all_started(flags)
        many = [uvpy.offload(lib.mark_range, slots[i : i + 1]) for i in range(5000)]
        # The queue holds 4096 of them; the last 500 wait on the loop.
        for f in many[-500:]:
            assert f.cancel()
        _release(flags)
        await asyncio.gather(*spinners, *many[:-500])
        assert all(f.cancelled() for f in many[-500:])
        assert loop._exec_pending() == []

    needs_uvpy(loop_name, loop, main)
    if loop_name == "uvpy":
        assert list(marks[:4500]) == [1] * 4500
        assert list(marks[4500:]) == [0] * 500
    slots.release()
    marks.append(0)  # raises BufferError if a cancelled job kept its Py_buffer


def test_waiting_submissions_go_on_when_other_work_fills_the_queue(loop, loop_name, lib):
    # Another loop's jobs fill the queue, so none of this loop's work is in
    # the executor and no completion of its own will make room: the loop
    # must still notice the room (its retry timer) and submit.
    if loop_name != "uvpy":
        return needs_uvpy(loop_name, loop, lambda: uvpy.offload(lib.mark_range, bytearray(8)))
    theirs = array("q", bytes(8 * 4096))
    mine = array("q", bytes(8 * 100))
    full = threading.Event()
    flags = []

    def other_loop():
        async def fill():
            fl, spinners = _block_every_worker(lib)
            flags.extend(fl)
            await _all_started(fl)
            view = memoryview(theirs)
            jobs = [uvpy.offload(lib.mark_range, view[i : i + 1]) for i in range(4096)]
            full.set()
            await asyncio.gather(*spinners, *jobs)

        uvpy.run(fill())

    t = threading.Thread(target=other_loop)
    t.start()
    try:
        assert full.wait(10)

        async def main():
            view = memoryview(mine)
            futs = [uvpy.offload(lib.mark_range, view[i : i + 1]) for i in range(100)]
            await asyncio.sleep(0.01)
            assert not any(f.done() for f in futs)  # the queue is still full
            _release(flags)
            await asyncio.wait_for(asyncio.gather(*futs), 10)

        run(loop, main())
    finally:
        _release(flags)
        t.join(10)
    assert list(mine) == [1] * 100
    assert list(theirs) == [1] * 4096


def test_close_loop_with_submissions_waiting(new_loop, loop_name, lib):
    loop = new_loop()
    if loop_name != "uvpy":
        return needs_uvpy(loop_name, loop, lambda: uvpy.offload(lib.mark_range, bytearray(8)))
    marks = array("q", bytes(8 * 5000))
    slots = memoryview(marks)

    async def main():
        flags, _ = _block_every_worker(lib)
        await _all_started(flags)
        return flags, [uvpy.offload(lib.mark_range, slots[i : i + 1]) for i in range(5000)]

    flags, many = run(loop, main())
    loop.close()  # cancels the queued, drops the waiting, asks the spinners to stop
    assert all(f[1] == 1 for f in flags)
    assert not any(f.done() for f in many)  # left pending, as asyncio leaves queued work
    # A freed worker may start a queued job before close cancels it, but the
    # last 500 were never in the queue (it holds 4096) and must never run.
    assert sum(marks[4500:]) == 0
    del many
    slots.release()
    marks.append(0)  # raises BufferError if a dropped job kept its Py_buffer


def test_close_loop_with_kernel_running(new_loop, loop_name, lib):
    loop = new_loop()
    flag = array("i", [0, 0, 0])
    if loop_name != "uvpy":
        return needs_uvpy(loop_name, loop, lambda: uvpy.offload(lib.spin_until, flag))

    async def main():
        uvpy.offload(lib.spin_until, flag)
        await wait_started(flag)

    run(loop, main())
    loop.close()  # cancels: the running kernel sees should_stop and returns
    assert flag[1] == 1


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda lib: uvpy.offload("not a kernel"), TypeError, "C function pointer"),
        (lambda lib: uvpy.offload(0), ValueError, "NULL"),
        (lambda lib: uvpy.offload(lib.add_scalars, object()), TypeError, "argument 0"),
        (lambda lib: uvpy.offload(lib.add_scalars, 1, 2.0, b"ro", signature="idw"), TypeError, "writable"),
        (lambda lib: uvpy.offload(lib.add_scalars, 1, 2.0, signature="xyz"), ValueError, "signature"),
        (lambda lib: uvpy.Kernel(lib.add_scalars, "q"), ValueError, "signature"),
        (lambda lib: uvpy.parallel_for(lib.mark_range, -1), ValueError, "non-negative"),
    ],
)
def test_bad_input_raises_clear_errors(loop, loop_name, lib, call, exc, match):
    # On asyncio the missing uvpy loop may be reported first (RuntimeError).
    expected = exc if loop_name == "uvpy" else (exc, RuntimeError)

    async def main():
        with pytest.raises(expected, match=match if loop_name == "uvpy" else None):
            result = call(lib)
            if asyncio.iscoroutine(result) or asyncio.isfuture(result):
                await result

    run(loop, main())


@pytest.mark.parametrize(
    "args,signature",
    [
        ((object(),), None),
        ((1, 2.0, b"ro"), "idw"),
        ((1, 2.0), "xyz"),
        ((1, 2.0, array("d", [0.0])), "iid"),
        ((1, bytearray(8), object()), None),  # fails after pinning argument 1
    ],
)
def test_offload_and_parallel_for_refuse_bad_input_alike(loop, lib, args, signature):
    # Both kernel submissions make one set of checks: the same bad input
    # fails the same way (on asyncio: the missing uvpy loop, for both).
    async def refusal(call):
        try:
            result = call()
            if asyncio.iscoroutine(result) or asyncio.isfuture(result):
                await result
        except Exception as exc:
            return type(exc), str(exc)
        pytest.fail("bad input was accepted")

    async def main():
        by_offload = await refusal(lambda: uvpy.offload(lib.add_scalars, *args, signature=signature))
        by_chunks = await refusal(lambda: uvpy.parallel_for(lib.add_scalars, 3, *args, grain=1, signature=signature))
        assert by_offload == by_chunks

    run(loop, main())
    for arg in args:
        if isinstance(arg, bytearray):
            arg.extend(b"x")  # raises BufferError if a refused job kept it pinned


# -- built-in kernels -----------------------------------------------------------------


def test_builtin_kernels(loop, loop_name):
    x = array("d", (float(i) for i in range(200_001)))
    y = array("d", [1.0]) * len(x)

    async def main():
        assert await uvpy.kernels.sum(x) == sum(x)
        assert await uvpy.kernels.dot(x, y) == pytest.approx(sum(x))
        await uvpy.kernels.axpy(2.0, x, y)
        assert y[10] == 21.0 and y[-1] == 2.0 * x[-1] + 1.0
        z = array("d", [3.0, -1.0, 2.5])
        await uvpy.kernels.sort(z)
        assert list(z) == [-1.0, 2.5, 3.0]
        assert await uvpy.kernels.fnv1a64(b"hello") == 0xA430D84680AABD0B
        assert await uvpy.kernels.fnv1a64(b"") == 0xCBF29CE484222325
        with pytest.raises(ValueError, match="too short"):
            await uvpy.kernels.axpy(1.0, x, array("d", [0.0]))
        with pytest.raises(TypeError, match="float64"):
            await uvpy.kernels.sum(array("i", [1]))
        with pytest.raises(TypeError, match="writable"):
            await uvpy.kernels.sort(memoryview(array("d", [2.0, 1.0])).toreadonly())

    needs_uvpy(loop_name, loop, main)


def test_metrics_shape():
    m = uvpy.executor_metrics()
    assert set(m) >= {"submitted", "queued", "running", "completed", "cancelled", "steals", "wakes", "workers"}
    assert len(m["workers"]) == len(os.sched_getaffinity(0))
    assert all(set(w) == {"busy_s", "completed", "cancelled", "steals"} for w in m["workers"])


@pytest.mark.parametrize("workers", [1, 3])
def test_configure_executor_in_fresh_process(workers):
    code = (
        "import uvpy, asyncio\n"
        f"uvpy.configure_executor({workers})\n"
        "assert len(uvpy.executor_metrics()['workers']) == " + str(workers) + "\n"
        "try:\n    uvpy.configure_executor(2)\nexcept RuntimeError as e:\n    print('refused', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "refused the native executor has already started" in out.stdout


def test_configure_executor_validation():
    with pytest.raises(TypeError):
        uvpy.configure_executor("2")
    with pytest.raises((ValueError, RuntimeError)):
        uvpy.configure_executor(-1)


def test_worker_count_from_environment():
    env = dict(os.environ, UVPY_EXECUTOR_WORKERS="1")
    code = "import uvpy; print(len(uvpy.executor_metrics()['workers']))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.strip() == "1", out.stderr


def test_refcounts_flat_over_many_jobs(loop, loop_name):
    import gc

    payload = object()
    x = array("d", [1.0] * 1000)

    def echo(p):
        return p

    async def rounds():
        for _ in range(3):
            await asyncio.gather(*(loop.run_in_executor(None, echo, payload) for _ in range(500)))
            if loop_name == "uvpy":
                await asyncio.gather(*(uvpy.offload(uvpy.kernels.NOOP) for _ in range(500)))
                await uvpy.kernels.sum(x)

    # What a fresh object and array hold, before any job saw them. A
    # ThreadPoolExecutor thread (stock asyncio) resolves the future before it
    # drops its work item, so the counts are given a moment to settle, on
    # both loops alike.
    base = (sys.getrefcount(payload), sys.getrefcount(x))

    def settled():
        deadline = time.monotonic() + 5
        while True:
            gc.collect()
            now = (sys.getrefcount(payload), sys.getrefcount(x))
            if now == base or time.monotonic() > deadline:
                return now
            time.sleep(0.01)

    run(loop, rounds())
    assert settled() == base
    run(loop, rounds())
    with uvpy.NativeExecutor() as ex:
        assert list(ex.map(echo, [payload] * 200)) == [payload] * 200
    assert settled() == base


def test_configure_executor_takes_no_pinning_or_niceness():
    """Pinning workers and renicing them measured worse loop latency on a
    busy machine (docs/executor.md), so neither is offered."""
    with pytest.raises(TypeError):
        uvpy.configure_executor(0, pin=True)
    with pytest.raises(TypeError):
        uvpy.configure_executor(0, nice=3)
