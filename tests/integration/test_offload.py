"""The offload side with real numerical code: numpy work through
run_in_executor(None, ...) (uvpy's blocking pool; numpy drops the GIL in
its kernels) and a ctypes C kernel through uvpy.offload and
uvpy.parallel_for, each result compared with the direct call.

On stock asyncio run_in_executor goes to its ThreadPoolExecutor and must
give the same results; uvpy.offload/parallel_for need a uvpy loop and must
refuse there with a clear RuntimeError, which is what the asyncio half
asserts for them.
"""

import asyncio
import ctypes
import os
import subprocess

import pytest

import uvpy
from conftest import need_module

np = need_module("numpy")

HERE = os.path.dirname(__file__)


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    """tests/integration/native/mix.c, compiled against uvpy_kernel.h."""
    out = tmp_path_factory.mktemp("mix") / "libmix.so"
    cc = os.environ.get("CC", "cc")
    cmd = [cc, "-O2", "-ffp-contract=off", "-shared", "-fPIC", "-I", uvpy.get_include()]
    subprocess.run([*cmd, os.path.join(HERE, "native", "mix.c"), "-o", str(out), "-lm"], check=True)
    lib = ctypes.CDLL(str(out))
    dp = ctypes.POINTER(ctypes.c_double)
    lib.mix_direct.argtypes = [ctypes.c_double, dp, dp, ctypes.c_int64]
    lib.mix_direct.restype = None
    return lib


def mix_direct(lib, a, x, y):
    """The direct ctypes call on numpy arrays: y is updated in place."""
    dp = ctypes.POINTER(ctypes.c_double)
    lib.mix_direct(a, x.ctypes.data_as(dp), y.ctypes.data_as(dp), len(y))


def test_numpy_in_the_default_executor(runner, loop_name):
    rng = np.random.default_rng(12345)
    mats = [rng.standard_normal((120, 120)) for _ in range(8)]
    big = rng.standard_normal(1 << 19)

    def work(m):
        q, r = np.linalg.qr(m)
        return (m @ m.T).sum(), np.linalg.det(r), np.sort(m, axis=None)

    async def main():
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(*(loop.run_in_executor(None, work, m) for m in mats))
        fft = await loop.run_in_executor(None, np.fft.rfft, big)
        return results, fft

    results, fft = runner.run(main())
    for m, (total, det, ordered) in zip(mats, results):
        d_total, d_det, d_ordered = work(m)
        # BLAS may split sums by thread count: equal to rounding, not bitwise.
        assert total == pytest.approx(d_total, rel=1e-12) and det == pytest.approx(d_det, rel=1e-12)
        assert np.array_equal(ordered, d_ordered)
    assert np.array_equal(fft, np.fft.rfft(big))
    if loop_name == "uvpy":  # uvpy's own pool ran them, not a ThreadPoolExecutor
        assert uvpy.executor_metrics()["blocking"]["completed"] >= 9


def test_ctypes_kernel_through_offload(runner, loop_name, lib):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(1 << 20)
    y0 = rng.standard_normal(1 << 20)
    expected = y0.copy()
    mix_direct(lib, 0.75, x, expected)
    assert np.allclose(expected, 0.75 * x + np.sin(y0))  # the C kernel is the formula numpy computes
    kernel = uvpy.Kernel(lib.mix_all, "drw", "mix_all")
    chunked = uvpy.Kernel(lib.mix_chunk, "drw", "mix_chunk")

    async def main():
        y1, y2 = y0.copy(), y0.copy()
        await uvpy.offload(kernel, 0.75, x, y1)
        await uvpy.parallel_for(chunked, len(y2), 0.75, x, y2, grain=1 << 16)
        # Many small offloads at once, each on its own slice.
        y3 = y0.copy()
        step = 1 << 14
        slices = [slice(i, i + step) for i in range(0, len(y3), step)]
        await asyncio.gather(*(uvpy.offload(kernel, 0.75, x[s], y3[s]) for s in slices))
        with pytest.raises(uvpy.KernelError) as info:
            await uvpy.offload(kernel, 0.75, x[:10], y0.copy())  # lengths differ
        assert info.value.code == 22
        with pytest.raises(TypeError):
            await uvpy.offload(kernel, 0.75, x, x.copy().tobytes())  # read-only output
        return y1, y2, y3

    if loop_name == "asyncio":

        async def refused():
            with pytest.raises(RuntimeError, match="need a running uvpy loop"):
                await main()

        runner.run(refused())
        return
    y1, y2, y3 = runner.run(main())
    assert np.array_equal(y1, expected)
    assert np.array_equal(y2, expected)
    assert np.array_equal(y3, expected)


def test_builtin_kernels_on_numpy_arrays(runner, loop_name):
    rng = np.random.default_rng(99)
    x = rng.standard_normal(1_000_000)
    y = rng.standard_normal(1_000_000)

    async def main():
        total = await uvpy.kernels.sum(x)
        dot = await uvpy.kernels.dot(x, y)
        ordered = x.copy()
        await uvpy.kernels.sort(ordered)
        return total, dot, ordered

    if loop_name == "asyncio":

        async def refused():
            with pytest.raises(RuntimeError, match="need a running uvpy loop"):
                await main()

        runner.run(refused())
        return
    total, dot, ordered = runner.run(main())
    # Summed in another order than numpy's pairwise sum: equal to rounding.
    assert total == pytest.approx(float(np.sum(x)), rel=1e-9, abs=1e-6)
    assert dot == pytest.approx(float(np.dot(x, y)), rel=1e-9, abs=1e-6)
    assert np.array_equal(ordered, np.sort(x))
