"""uvpy: an asyncio event loop with a C++ core.

    import uvpy
    uvpy.run(main())                      # like asyncio.run, on uvpy
    uvpy.install()                        # make asyncio.new_event_loop() return uvpy loops
    asyncio.Runner(loop_factory=uvpy.new_event_loop)
"""

from __future__ import annotations

import asyncio as _asyncio

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
from ._uvpy import Handle, TimerHandle

__all__ = (
    "Loop",
    "Handle",
    "TimerHandle",
    "EventLoopPolicy",
    "new_event_loop",
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
)

__version__ = "0.1.0"


def get_include() -> str:
    """Directory holding uvpy_kernel.h, the C ABI for native kernels."""
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (os.path.join(here, "include"), os.path.join(here, os.pardir, "executor")):
        if os.path.exists(os.path.join(candidate, "uvpy_kernel.h")):
            return os.path.normpath(candidate)
    raise FileNotFoundError("uvpy_kernel.h is not installed with this uvpy")


def new_event_loop() -> Loop:
    """Return a new uvpy event loop."""
    return Loop()


class EventLoopPolicy(_asyncio.DefaultEventLoopPolicy):
    """asyncio's default policy, creating uvpy loops.

    ``asyncio.set_event_loop_policy(uvpy.EventLoopPolicy())`` makes every
    ``asyncio.new_event_loop()`` (and so ``asyncio.run``) use uvpy.
    """

    def _loop_factory(self) -> Loop:  # type: ignore[override]
        return new_event_loop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


def install() -> None:
    """Install uvpy's policy as asyncio's event loop policy."""
    _asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main, *, debug=None):
    """Run the coroutine ``main`` on a new uvpy loop, like ``asyncio.run``."""
    with _asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)
