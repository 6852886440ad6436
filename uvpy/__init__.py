"""uvpy: an asyncio event loop with a C++ core.

    import uvpy
    uvpy.run(main())                      # like asyncio.run, on uvpy
    uvpy.install()                        # asyncio.new_event_loop() makes uvpy loops (< 3.14)
    asyncio.Runner(loop_factory=uvpy.new_event_loop)

    python -m uvpy run script.py          # an unchanged asyncio program on uvpy (__main__.py)
    uvpy.serve(main, workers=4)           # main() in 4 supervised processes (_serve.py)
    pytest --uvpy                         # a project's async tests on uvpy (pytest_plugin.py)
"""

from __future__ import annotations

import asyncio as _asyncio
import sys as _sys
import warnings as _warnings

from . import kernels
from ._executor import (
    Kernel,
    KernelError,
    NativeExecutor,
    configure_executor,
    executor_metrics,
    offload,
    parallel_for,
)
from ._loop import Loop
from ._options import UringOptions
from ._procpool import ProcessPool, WorkerDied
from ._serve import ServeError, inherited_sockets, serve
from ._watchdog import StallReport, Watchdog, watchdog
from ._uvpy import Handle, TimerHandle, __version__

__all__ = (
    "Loop",
    "UringOptions",
    "Handle",
    "TimerHandle",
    "EventLoopPolicy",
    "new_event_loop",
    "backends",
    "install",
    "run",
    "offload",
    "parallel_for",
    "NativeExecutor",
    "Kernel",
    "KernelError",
    "executor_metrics",
    "kernels",
    "get_include",
    "configure_executor",
    "watchdog",
    "Watchdog",
    "StallReport",
    "ProcessPool",
    "WorkerDied",
    "serve",
    "ServeError",
    "inherited_sockets",
)


def get_include() -> str:
    """Directory holding uvpy_kernel.h, the C ABI for native kernels."""
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (os.path.join(here, "include"), os.path.join(here, os.pardir, "executor")):
        if os.path.exists(os.path.join(candidate, "uvpy_kernel.h")):
            return os.path.normpath(candidate)
    raise FileNotFoundError("uvpy_kernel.h is not installed with this uvpy")


def new_event_loop(backend: str | None = None, *, uring: UringOptions | None = None) -> Loop:
    """Return a new uvpy event loop.

    ``backend`` is ``"auto"``, ``"io_uring"`` or ``"libuv"``; ``None`` means
    the UVPY_BACKEND environment variable, else ``"auto"`` (see ``Loop``).
    ``uring`` sets the io_uring backend's switches (``UringOptions``);
    ``None`` means the UVPY_URING_* environment variables, else defaults.
    """
    return Loop(backend=backend, uring=uring)


def backends() -> dict[str, str | None]:
    """Which backends can run here: ``{"libuv": None, "io_uring": None}``
    where both can, a backend that can not mapped to the reason (what
    ``new_event_loop(name)`` raises, e.g. a kernel without io_uring or a
    seccomp filter that blocks it). Makes and closes one loop per backend.
    """
    status: dict[str, str | None] = {}
    for name in ("libuv", "io_uring"):
        try:
            new_event_loop(name).close()
        except OSError as exc:
            status[name] = str(exc)
        else:
            status[name] = None
    return status


# asyncio's default policy class. From 3.14 the name asyncio.DefaultEventLoopPolicy
# warns (the policy system is deprecated there), which would make every
# `import uvpy` warn; the class behind it is the same.
if _sys.version_info >= (3, 14):
    _DefaultEventLoopPolicy = _asyncio.unix_events._DefaultEventLoopPolicy
else:
    _DefaultEventLoopPolicy = _asyncio.DefaultEventLoopPolicy


class EventLoopPolicy(_DefaultEventLoopPolicy):
    """asyncio's default policy, creating uvpy loops.

    ``asyncio.set_event_loop_policy(uvpy.EventLoopPolicy())`` makes every
    ``asyncio.new_event_loop()`` (and so ``asyncio.run``) use uvpy, on
    ``backend`` (see ``new_event_loop``).
    """

    def __init__(self, backend: str | None = None) -> None:
        super().__init__()
        self._backend = backend

    def _loop_factory(self) -> Loop:  # type: ignore[override]
        return new_event_loop(self._backend)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


def install(backend: str | None = None) -> None:
    """Install uvpy's policy as asyncio's event loop policy.

    Deprecated from Python 3.14, where asyncio deprecates its policy system
    (removal is planned for 3.16): there it warns once per call site, at the
    caller's line, and names what to use instead, uvpy.run() or
    asyncio.Runner(loop_factory=uvpy.new_event_loop); asyncio's own warning
    from inside uvpy is not shown as well. Before 3.14 policies are asyncio's
    supported API, and install() warns nothing.
    """
    if _sys.version_info >= (3, 14):
        _warnings.warn(
            "uvpy.install() is deprecated from Python 3.14, as asyncio's event loop "
            "policies are: use uvpy.run(main()) or "
            "asyncio.Runner(loop_factory=uvpy.new_event_loop) instead",
            DeprecationWarning, stacklevel=2)
    _install(backend)


def _install(backend: str | None) -> None:
    """install() without its warning, for python -m uvpy, which runs an
    unchanged program that may only reach the loop through the policy."""
    with _warnings.catch_warnings():
        # asyncio's from 3.14; it would point at this line.
        _warnings.simplefilter("ignore", DeprecationWarning)
        _asyncio.set_event_loop_policy(EventLoopPolicy(backend))


def run(main, *, loop_factory=None, debug=None, backend=None):
    """Run the coroutine ``main`` on a new uvpy loop, like ``asyncio.run``.

    Takes what ``uvloop.run`` and ``asyncio.run`` (3.12+) take:
    ``loop_factory`` makes the loop instead (``None``: a uvpy loop on
    ``backend``, see ``new_event_loop``), ``debug`` sets its debug mode.
    ``backend`` and ``loop_factory`` exclude each other.
    """
    if loop_factory is None:
        loop_factory = new_event_loop if backend is None else (lambda: new_event_loop(backend))
    elif backend is not None:
        raise ValueError("backend and loop_factory can not be given together")
    with _asyncio.Runner(debug=debug, loop_factory=loop_factory) as runner:
        return runner.run(main)
