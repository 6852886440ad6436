import asyncio
import concurrent.futures
import concurrent.futures.process
import contextvars
import socket
import traceback
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Literal, TypeAlias, TypeVar, TypeVarTuple, Unpack

from . import kernels as kernels

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")
_BackendName: TypeAlias = Literal["auto", "io_uring", "libuv"]

__version__: str

class Handle:
    def __init__(
        self,
        callback: Callable[..., object],
        args: tuple[Any, ...] | None,
        loop: Loop,
        context: contextvars.Context | None = ...,
    ) -> None: ...
    def cancel(self) -> None: ...
    def cancelled(self) -> bool: ...
    def get_context(self) -> contextvars.Context: ...
    def _run(self) -> None: ...

class TimerHandle(Handle):
    def when(self) -> float: ...

class UringOptions:
    completion: bool
    completion_sends: bool
    completion_accepts: bool
    completion_datagrams: bool
    buf_count: int
    buf_size: int
    def __init__(
        self,
        completion: bool = True,
        completion_sends: bool = True,
        completion_accepts: bool = True,
        completion_datagrams: bool = True,
        buf_count: int = 256,
        buf_size: int = 8192,
    ) -> None: ...
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> UringOptions: ...

class Loop(asyncio.AbstractEventLoop):  # type: ignore[misc]
    # uvpy's handles are native types with asyncio.Handle's API, not subclasses.
    """An asyncio event loop on uvpy's native reactor."""

    slow_callback_duration: float
    warn_slow_callbacks: bool
    @property
    def backend(self) -> Literal["io_uring", "libuv"]: ...
    def __init__(self, backend: _BackendName | None = None, *, uring: UringOptions | None = None) -> None: ...
    def backend_info(self) -> dict[str, str | bool | int]: ...
    def call_soon(  # type: ignore[override]
        self, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts], context: contextvars.Context | None = None
    ) -> Handle: ...
    def call_soon_threadsafe(  # type: ignore[override]
        self, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts], context: contextvars.Context | None = None
    ) -> Handle: ...
    def call_later(  # type: ignore[override]
        self,
        delay: float,
        callback: Callable[[Unpack[_Ts]], object],
        *args: Unpack[_Ts],
        context: contextvars.Context | None = None,
    ) -> TimerHandle: ...
    def call_at(  # type: ignore[override]
        self,
        when: float,
        callback: Callable[[Unpack[_Ts]], object],
        *args: Unpack[_Ts],
        context: contextvars.Context | None = None,
    ) -> TimerHandle: ...
    def time(self) -> float: ...
    def stats(self) -> dict[str, Any]: ...
    def _stats(self) -> dict[str, Any]: ...

class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    def __init__(self, backend: _BackendName | None = None) -> None: ...

class StallReport:
    started: float
    duration: float
    finished: bool
    threshold: float
    stack: traceback.StackSummary | None
    task: str | None
    handle: str | None
    gil_wait: float
    def format(self) -> str: ...

class Watchdog:
    threshold: float
    linger: float
    callback: Callable[[StallReport], object] | None
    reports: int
    def __init__(
        self,
        loop: Loop,
        threshold: float = 0.1,
        callback: Callable[[StallReport], object] | None = None,
        *,
        linger: float | None = None,
    ) -> None: ...
    def stop(self) -> None: ...
    def __enter__(self) -> Watchdog: ...
    def __exit__(self, *exc: object) -> None: ...

def watchdog(
    loop: Loop | None = None,
    threshold: float = 0.1,
    callback: Callable[[StallReport], object] | None = None,
    *,
    linger: float | None = None,
) -> Watchdog: ...
def new_event_loop(backend: _BackendName | None = None, *, uring: UringOptions | None = None) -> Loop: ...
def backends() -> dict[Literal["libuv", "io_uring"], str | None]: ...
def install(backend: _BackendName | None = None) -> None: ...
def run(
    main: Coroutine[Any, Any, _T],
    *,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    debug: bool | None = None,
    backend: _BackendName | None = None,
) -> _T: ...

# --- the native executor (uvpy/_executor.py) ----------------------------------

class KernelError(RuntimeError):
    code: int

class Kernel:
    """A native kernel: a C function pointer with an optional signature
    (one letter per argument: r buffer, w writable buffer, i int, d float)."""

    address: int
    signature: str | None
    name: str
    def __init__(self, fn: object, signature: str | None = None, name: str | None = None) -> None: ...

def offload(kernel: Kernel | object, *args: object, signature: str | None = None) -> asyncio.Future[None]: ...
async def parallel_for(
    kernel: Kernel | object, n: int, *args: object, grain: int | None = None, signature: str | None = None
) -> None: ...

class NativeExecutor(concurrent.futures.Executor):
    def __init__(self) -> None: ...
    @property
    def workers(self) -> int: ...

def executor_metrics() -> dict[str, Any]: ...
def configure_executor(workers: int = 0, *, blocking_threads: int | None = None) -> None: ...
def get_include() -> str: ...

class WorkerDied(concurrent.futures.process.BrokenProcessPool):
    pid: int
    exitcode: int | None
    def __init__(self, pid: int, exitcode: int | None) -> None: ...

class ProcessPool(concurrent.futures.Executor):
    def __init__(
        self,
        max_workers: int | None = None,
        *,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_child: int | None = None,
        cancel_running: Literal["wait", "kill"] = "wait",
        shm_threshold: int = ...,
        shm_cache: int = ...,
        prefetch: int | None = None,
    ) -> None: ...
    @property
    def max_workers(self) -> int: ...
    async def run(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T: ...
    def map(  # type: ignore[override]
        self, fn: Callable[..., _T], *iterables: Any, timeout: float | None = None,
        chunksize: int = 1, limit: int | None = None,
    ) -> Any: ...
    async def aclose(self, *, cancel_futures: bool = False) -> None: ...
    async def __aenter__(self) -> ProcessPool: ...
    async def __aexit__(self, *exc: object) -> None: ...

class ServeError(RuntimeError): ...

def serve(
    main: Callable[..., Coroutine[Any, Any, object]] | str,
    /,
    *args: Any,
    workers: int | None = None,
    bind: str | socket.socket | list[str | socket.socket] | tuple[str | socket.socket, ...] = (),
    backlog: int = 2048,
    graceful_timeout: float | None = 30.0,
    start_timeout: float | None = 60.0,
    heartbeat_timeout: float | None = 30.0,
    backend: _BackendName | None = None,
) -> None: ...
def inherited_sockets() -> list[socket.socket]: ...
