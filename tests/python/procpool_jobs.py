"""Jobs for test_process_pool: functions a pool worker imports by name.

Standard library only (numpy where a test asks for it), so a worker that
imports this module starts fast.
"""

import ctypes
import os
import signal
import threading
import time
import zlib

_state = {}


def square(x):
    return x * x


def checksum(data):
    return zlib.crc32(data), len(data)


def noop():
    return None


def nap(seconds):
    time.sleep(seconds)


def stop_perf_counter():
    """Leaves time.perf_counter standing still in the worker, as a job that
    patched it and never put it back does."""
    time.perf_counter = lambda: 0.0


def pid():
    return os.getpid()


def add(a, b=0, *, c=0):
    return a + b + c


def raiser(message):
    raise ValueError(message)


def returns_a_lock():
    return threading.Lock()


def die(how):
    if how == "exit":
        os._exit(3)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "segv":
        ctypes.string_at(0)
    raise AssertionError(how)


def wait_for(path, started=None, marker=None):
    """Mark `started` (a path) if given, then wait until `path` exists."""
    if marker is not None:
        open(marker, "w").close()
    if started is not None:
        open(started, "w").close()
    while not os.path.exists(path):
        time.sleep(0.005)
    return os.getpid()


def set_state(key, value):
    _state[key] = value


def get_state(key):
    return _state.get(key)


def fail_init():
    raise OSError("initializer refuses")


def echo(x):
    return x


def describe(x):
    """What arrived: type, length, and whether it lies in a shared mapping."""
    import mmap

    base = x
    while hasattr(base, "base") and base.base is not None:
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return type(x).__name__, len(x) if hasattr(x, "__len__") else None, isinstance(base, mmap.mmap)


def zeros(n):
    import numpy

    return numpy.zeros(n, dtype=numpy.uint8)


def double(a):
    return a * 2


def countdown(n):
    while n > 0:
        n -= 1
    return n


_kept = []


def keep(x):
    """Keep x alive in this worker (a view of the pool's shared memory)."""
    _kept.append(x)
    return len(_kept)


def kept_heads():
    return [bytes(x[:4]) for x in _kept]


def forget():
    _kept.clear()


def filled(byte, n):
    """n bytes of one value, returned as a memoryview (out of band)."""
    return memoryview(bytearray([byte]) * n)


def open_fd_count():
    import os

    return len(os.listdir("/proc/self/fd"))


def hundred_over(x, y=0):
    return 100 // x + y
