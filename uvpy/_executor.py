"""The native executor's Python API: offload, parallel_for, NativeExecutor, kernels.

Two process-wide pools serve every uvpy loop, and completions reach a loop
through its completion port: one wakeup per batch, every future of the batch
resolved in one pass on the loop thread.

- ``loop.run_in_executor(None, fn, *args)`` on a uvpy loop, and
  ``NativeExecutor.submit``, run Python callables on the *blocking pool*:
  threads named ``uvpy_0``, ``uvpy_1``, ... started on demand while every
  thread is busy, up to ``blocking_threads`` per loop (asyncio's
  ``min(32, cpus + 4)`` by default), and gone after 10 s idle. A callable may
  block (files, sockets, ``Event.wait``, SDK calls) without holding up the
  others; code that releases the GIL (numpy, hashlib, zlib) runs in parallel.
- ``await uvpy.offload(kernel, *args)`` runs a C function pointer (C ABI in
  ``uvpy/include/uvpy_kernel.h``) on the *per-core pool*, one worker per CPU,
  without ever taking the GIL; kernels must not block.
- ``await uvpy.parallel_for(kernel, n, *args, grain=...)`` splits ``[0, n)``
  into chunks across the per-core workers and resumes once, when all are done.
- ``uvpy.NativeExecutor`` is a ``concurrent.futures.Executor`` over the
  blocking pool, for plain threads and other loops.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import ctypes
import os
import threading

from . import _uvpy

__all__ = (
    "offload",
    "parallel_for",
    "NativeExecutor",
    "Kernel",
    "KernelError",
    "executor_metrics",
    "configure_executor",
)

KernelError = _uvpy.KernelError
executor_metrics = _uvpy.executor_metrics
atexit.register(_uvpy._executor_shutdown)


def configure_executor(workers: int = 0, *, blocking_threads: int | None = None) -> None:
    """Size the native pools.

    blocking_threads bounds the threads that run Python callables, per loop
    that uses the executor (0: asyncio's min(32, cpus + 4)); it may be
    changed at any time. UVPY_BLOCKING_THREADS does the same at import.

    workers sizes the per-core pool of native kernels, before its first use:
    0 means one per CPU in the process's affinity mask.
    UVPY_EXECUTOR_WORKERS does the same at import. Raises RuntimeError once
    the pool has started.
    """
    checked = [("workers", workers)]
    if blocking_threads is not None:
        checked.append(("blocking_threads", blocking_threads))
    for name, value in checked:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if blocking_threads is not None:
        _uvpy._configure_blocking(blocking_threads)
    if workers != 0 or blocking_threads is None:
        _uvpy._configure_executor(workers)


def _configure_from_env():
    import os

    blocking = os.environ.get("UVPY_BLOCKING_THREADS")
    if blocking:
        try:
            _uvpy._configure_blocking(int(blocking))
        except ValueError as exc:
            raise ValueError(f"UVPY_BLOCKING_THREADS={blocking!r}: {exc}") from None
    workers = os.environ.get("UVPY_EXECUTOR_WORKERS")
    if workers:
        try:
            configure_executor(int(workers))
        except ValueError as exc:
            raise ValueError(f"UVPY_EXECUTOR_WORKERS={workers!r}: {exc}") from None


_configure_from_env()


def _start_blocking_thread(pool, index):
    """Starts one thread of the blocking pool (called by the native pool,
    with the GIL, when every thread is busy). A real threading.Thread: it is
    listed by threading.enumerate(), named in logs and by py-spy, and joined
    at interpreter exit like asyncio's default executor's threads."""
    threading.Thread(target=_uvpy._blocking_thread_main, args=(pool, index), name=f"uvpy_{index}").start()


_uvpy._set_blocking_starter(_start_blocking_thread)
os.register_at_fork(after_in_child=_uvpy._executor_after_fork)
# Before threading joins non-daemon threads at exit, tell the pool to finish
# what is queued and let idle threads go (else each waits out its keep-alive).
# threading._register_atexit is what concurrent.futures uses for the same
# purpose (3.9+); plain atexit runs too late, after the join.
if hasattr(threading, "_register_atexit"):
    threading._register_atexit(_uvpy._blocking_shutdown)
else:  # pragma: no cover - every supported CPython has it
    atexit.register(_uvpy._blocking_shutdown)

_CAPSULE_NAME = b"uvpy.kernel"
_capsule_get = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_get.restype = ctypes.c_void_p
_capsule_get.argtypes = [ctypes.py_object, ctypes.c_char_p]
_capsule_name = ctypes.pythonapi.PyCapsule_GetName
_capsule_name.restype = ctypes.c_char_p
_capsule_name.argtypes = [ctypes.py_object]


class Kernel:
    """A native kernel: a C function pointer with an optional signature.

    ``signature`` has one letter per argument: ``r`` buffer, ``w`` writable
    buffer, ``i`` int, ``d`` float. Arguments are checked against it before
    anything runs.
    """

    __slots__ = ("address", "signature", "name", "_keep")

    def __init__(self, fn, signature=None, name=None):
        self.address = _address_of(fn)
        self._keep = fn
        if signature is not None and (not isinstance(signature, str) or set(signature) - set("rwid")):
            raise ValueError(f"invalid kernel signature {signature!r}: use the letters r, w, i, d")
        self.signature = signature
        self.name = name or getattr(fn, "__name__", None) or hex(self.address)

    def __repr__(self):
        return f"<uvpy.Kernel {self.name} at {self.address:#x} signature={self.signature!r}>"


def _address_of(fn) -> int:
    """The C address of a kernel given as ctypes, cffi, numba, capsule or int."""
    if isinstance(fn, Kernel):
        return fn.address
    if isinstance(fn, bool):
        raise TypeError("a kernel must be a C function pointer, not bool")
    if isinstance(fn, int):
        address = fn
    elif isinstance(fn, ctypes._CFuncPtr):  # CFUNCTYPE objects and CDLL functions
        address = ctypes.cast(fn, ctypes.c_void_p).value or 0
    elif type(fn).__name__ == "PyCapsule":
        name = _capsule_name(fn)
        if name != _CAPSULE_NAME:
            raise TypeError(f"capsule named {name!r} is not a uvpy kernel (expected {_CAPSULE_NAME.decode()!r})")
        address = _capsule_get(fn, _CAPSULE_NAME) or 0
    elif hasattr(fn, "function") and type(fn).__name__ == "LowLevelCallable":  # scipy
        return _address_of(fn.function)
    elif isinstance(getattr(fn, "address", None), int):  # numba @cfunc
        address = fn.address
    elif type(fn).__module__ == "_cffi_backend":
        import _cffi_backend

        address = int(_cffi_backend.FFI().cast("uintptr_t", fn))
    else:
        raise TypeError(
            f"a kernel must be a C function pointer (ctypes, cffi, numba cfunc, "
            f"uvpy.kernel capsule or int address), not {type(fn).__name__}"
        )
    if address == 0:
        raise ValueError("kernel is a NULL function pointer")
    return address


class _JobFuture(asyncio.Future):
    """The future of one native job: cancelling it cancels the job.

    The job sits in the ``_job`` slot (set by the submit call), so a normal
    completion resolves the future with no extra done-callback to schedule.
    """

    __slots__ = ("_job",)

    def cancel(self, msg=None):
        if not asyncio.Future.cancel(self, msg):
            return False
        try:
            job = self._job
        except AttributeError:  # its submission failed: there is no job to cancel
            return True
        job(self)
        return True


_uvpy._set_job_future_type(_JobFuture)
_submit_kernel = _uvpy._submit_kernel
_submit_call = _uvpy._submit_call
_offload = _uvpy._offload


def _uvpy_loop():
    loop = asyncio.get_running_loop()
    if not isinstance(loop, _uvpy.LoopCore):
        raise RuntimeError("uvpy.offload and uvpy.parallel_for need a running uvpy loop")
    return loop


def _split(fn, signature):
    if isinstance(fn, Kernel):
        return fn.address, fn, signature if signature is not None else fn.signature
    return _address_of(fn), fn, signature


def offload(kernel, *args, signature=None):
    """Run a native kernel once on a worker, without the GIL.

    Returns an asyncio future to await (result None); it fails with
    KernelError if the kernel returns non-zero. Bad arguments raise at once.
    While the pool's queue is full the submission waits (the future stays
    pending) instead of growing the queue.
    """
    if signature is None and type(kernel) is Kernel:
        address, keep, signature = kernel.address, kernel, kernel.signature
    else:
        address, keep, signature = _split(kernel, signature)
    return _offload(address, keep, args, signature)


async def parallel_for(kernel, n, *args, grain=None, signature=None):
    """Run kernel over [0, n) split into chunks of `grain` across all workers.

    Each chunk is one call with ctx->begin/end set; chunks may run
    concurrently and must write disjoint memory. Resumes once, when every
    chunk is done. Cancelling the awaiting task cancels queued chunks.
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    loop = _uvpy_loop()
    address, keep, signature = _split(kernel, signature)
    if grain is None:
        grain = max(1, -(-n // (4 * _uvpy.executor_workers())))
    if not isinstance(grain, int) or grain <= 0:
        raise ValueError(f"grain must be a positive int, got {grain!r}")
    fut = loop.create_future()
    _uvpy._submit_kernel(loop, fut, address, keep, args, signature, n, grain)
    return await fut


def _submit_from_loop(loop, func, args):
    """run_in_executor(None, ...) on a uvpy loop: the native default executor."""
    fut = _JobFuture(loop=loop)
    _submit_call(loop, fut, func, args)  # a full queue parks it on the loop's port
    return fut


class NativeExecutor(concurrent.futures.Executor):
    """A concurrent.futures.Executor on uvpy's native worker pool.

    Usable from plain threads, from uvpy and from stock asyncio loops
    (``loop.run_in_executor(uvpy.NativeExecutor(), fn)``). ``submit`` blocks
    while the pool's queue is full. All instances share the process-wide
    pool; ``shutdown`` stops this instance from accepting work and, with
    ``wait=True``, waits for its own futures.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._shutdown = False
        self._pending = set()

    def submit(self, fn, /, *args, **kwargs):
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            fut = concurrent.futures.Future()
            self._pending.add(fut)
        fut.add_done_callback(self._pending.discard)
        _uvpy._submit_thread(fut, fn, args, kwargs)
        return fut

    def shutdown(self, wait=True, *, cancel_futures=False):
        with self._lock:
            self._shutdown = True
            pending = list(self._pending)
        if cancel_futures:
            for f in pending:
                f.cancel()
        if wait:
            concurrent.futures.wait(pending)

    @property
    def workers(self) -> int:
        return _uvpy.executor_workers()
