"""Built-in native kernels, runnable with no third-party package.

Each is a ``uvpy.Kernel`` usable with ``uvpy.offload``/``uvpy.parallel_for``,
plus an async helper that checks its arguments (float64, C-contiguous, long
enough, writable where written) and splits the work across every worker:

    total = await uvpy.kernels.sum(array("d", ...))
    await uvpy.kernels.axpy(2.0, x, y)          # y += 2.0 * x, in place
"""

from __future__ import annotations

import asyncio
import builtins as _builtins
from array import array

from . import _uvpy
from ._executor import Kernel, parallel_for

__all__ = ("SUM_F64", "DOT_F64", "AXPY_F64", "SORT_F64", "FNV1A64", "NOOP", "sum", "dot", "axpy", "sort", "fnv1a64")

_k = _uvpy._builtin_kernels()
SUM_F64 = Kernel(_k["sum_f64"], "rw", "sum_f64")
DOT_F64 = Kernel(_k["dot_f64"], "rrw", "dot_f64")
AXPY_F64 = Kernel(_k["axpy_f64"], "drw", "axpy_f64")
SORT_F64 = Kernel(_k["sort_f64"], "w", "sort_f64")
FNV1A64 = Kernel(_k["fnv1a64"], "rw", "fnv1a64")
NOOP = Kernel(_k["noop"], "", "noop")
del _k


def _f64(buf, name, writable=False):
    view = memoryview(buf)
    if not view.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if view.format not in ("d", "<d", "=d") or view.itemsize != 8:
        raise TypeError(f"{name} must be a float64 buffer (format 'd'), got format {view.format!r}")
    if writable and view.readonly:
        raise TypeError(f"{name} must be writable")
    return view.cast("B").cast("d") if view.ndim != 1 else view


def _chunks(n):
    workers = _uvpy.executor_workers()
    size = max(1 << 15, -(-n // workers)) if n else 1
    return [(i, min(n, i + size)) for i in range(0, n, size)]


async def _reduce(kernel, views, n):
    parts = _chunks(n)
    out = array("d", bytes(8 * len(parts)))
    outv = memoryview(out)
    await asyncio.gather(
        *(
            parallel_for(kernel, e - b, *(v[b:e] for v in views), outv[i : i + 1], grain=e - b)
            for i, (b, e) in enumerate(parts)
        )
    )
    return out


async def sum(x) -> float:
    """Sum of a float64 buffer, split across all workers."""
    xv = _f64(x, "x")
    if len(xv) == 0:
        return 0.0
    return float(_builtins.sum(await _reduce(SUM_F64, [xv], len(xv))))


async def dot(x, y) -> float:
    """Dot product of two float64 buffers of equal length."""
    xv, yv = _f64(x, "x"), _f64(y, "y")
    if len(xv) != len(yv):
        raise ValueError(f"x and y differ in length ({len(xv)} != {len(yv)})")
    if len(xv) == 0:
        return 0.0
    return float(_builtins.sum(await _reduce(DOT_F64, [xv, yv], len(xv))))


async def axpy(a: float, x, y) -> None:
    """y += a * x in place (float64 buffers; y at least as long as x)."""
    xv, yv = _f64(x, "x"), _f64(y, "y", writable=True)
    if len(yv) < len(xv):
        raise ValueError(f"y is too short: {len(yv)} elements for {len(xv)}")
    await parallel_for(AXPY_F64, len(xv), float(a), xv, yv)


async def sort(x) -> None:
    """Sort a float64 buffer in place (one worker; runs off the loop thread)."""
    xv = _f64(x, "x", writable=True)
    await parallel_for(SORT_F64, len(xv), xv, grain=max(1, len(xv)))


async def fnv1a64(data) -> int:
    """64-bit FNV-1a hash of a bytes-like object (one worker)."""
    view = memoryview(data).cast("B")
    if len(view) == 0:
        return 0xCBF29CE484222325  # FNV-1a offset basis: the hash of b""
    out = array("Q", [0])
    await parallel_for(FNV1A64, len(view), view, out, grain=len(view))
    return out[0]
