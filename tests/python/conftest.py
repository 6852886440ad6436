"""Every test in tests/python runs on uvpy and on stock asyncio.

The stock loop is the oracle: when the two disagree, uvpy is wrong until
shown otherwise. Sync tests take the ``loop`` fixture; async tests
(marked ``pytest.mark.asyncio``) get one run per loop through
pytest-asyncio's ``pytest_asyncio_loop_factories`` hook.

The uvpy loops use the backend UVPY_BACKEND names ("auto" when unset);
scripts/test.sh runs the suite once with libuv and once with io_uring.
"""

import asyncio
import gc
import os
import platform
import resource
import socket
import ssl
import textwrap

import pytest

import uvpy

LOOP_FACTORIES = {
    "uvpy": uvpy.new_event_loop,
    "asyncio": asyncio.SelectorEventLoop,
}


def pytest_addoption(parser):
    parser.addoption(
        "--uvpy-only",
        action="store_true",
        help="deselect the stock-asyncio (oracle) runs: for a second pass on another uvpy backend",
    )


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--uvpy-only"):
        return
    keep, drop = [], []
    for item in items:
        spec = getattr(item, "callspec", None)
        stock = item.get_closest_marker("stock_loop") is not None or (
            spec is not None and "asyncio" in spec.id.split("-")
        )
        (drop if stock else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_collection_finish(session):
    """Move everything collection made into the GC's permanent generation.

    Collection imports the test modules (CPython's test.test_asyncio among
    them) and makes an item per test: a heap that full collections would
    walk on every gc.collect() of the run, and CPython's tests collect
    often (test_futures' *_del_collect: 100 collections each; many
    tearDowns: three). Nothing made before the first test is garbage a
    test waits for, so frozen it costs no test anything it checks.
    """
    gc.collect()
    gc.freeze()


def pytest_report_header(config):
    loop = uvpy.new_event_loop()
    try:
        return f"uvpy backend: {loop.backend} (UVPY_BACKEND={os.environ.get('UVPY_BACKEND', '')!r})"
    finally:
        loop.close()


@pytest.fixture(params=list(LOOP_FACTORIES))
def loop_name(request):
    return request.param


@pytest.fixture
def new_loop(loop_name):
    """A factory for loops of the parametrised kind; all are closed at teardown."""
    made = []

    def make():
        loop = LOOP_FACTORIES[loop_name]()
        made.append(loop)
        return loop

    yield make
    for loop in made:
        if not loop.is_closed():
            loop.close()


@pytest.fixture
def loop(new_loop):
    loop = new_loop()
    yield loop
    assert not loop.is_running()


def pytest_asyncio_loop_factories(config, item):
    """pytest-asyncio runs every async test once per loop."""
    return dict(LOOP_FACTORIES)


@pytest.fixture(scope="module")
def ca():
    """A throwaway certificate authority (trustme), one per test module."""
    trustme = pytest.importorskip("trustme")
    return trustme.CA()


@pytest.fixture(scope="module")
def server_ctx(ca):
    """A TLS server context with a certificate for localhost and 127.0.0.1."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    return ctx


@pytest.fixture(scope="module")
def client_ctx(ca):
    """A TLS client context that trusts ca (and checks host names)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(ctx)
    return ctx


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def active_connections(server):
    """Connections a server still tracks (asyncio's Server keeps a count up
    to Python 3.12 and a set of transports from 3.13)."""
    count = getattr(server, "_active_count", None)
    return count if count is not None else len(server._clients)


def collect():
    for _ in range(3):
        gc.collect()


def has_ipv6(kind=socket.SOCK_STREAM):
    """Whether a socket of this type can bind to ::1 here."""
    try:
        with socket.socket(socket.AF_INET6, kind) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def raise_nofile(need):
    """Soft RLIMIT_NOFILE up to `need` (at most the hard limit), restored by
    the returned callable; skips the test when the hard limit is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return lambda: None
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"needs {need} file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# Python code that makes io_uring_setup(2) fail with ENOSYS in the process
# that runs it, through a seccomp filter (what Docker's default profile does
# on some hosts): the start of a child's program, for tests of what uvpy says
# where io_uring can not run. The filter hardcodes x86_64's syscall number.
NO_URING = textwrap.dedent(
    """
    import ctypes, struct, sys
    libc = ctypes.CDLL(None, use_errno=True)
    def stmt(code, k, jt=0, jf=0):
        return struct.pack("HBBI", code, jt, jf, k)
    LD, JEQ, RET = 0x20, 0x15, 0x06
    prog = b"".join([
        stmt(LD, 0),                      # seccomp_data.nr
        stmt(JEQ, 425, 0, 1),             # __NR_io_uring_setup (x86_64)
        stmt(RET, 0x00050000 | 38),       # SECCOMP_RET_ERRNO | ENOSYS
        stmt(RET, 0x7FFF0000),            # SECCOMP_RET_ALLOW
    ])
    buf = ctypes.create_string_buffer(prog)
    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    fprog = Fprog(len(prog) // 8, ctypes.addressof(buf))
    assert libc.prctl(38, 1, 0, 0, 0) == 0            # PR_SET_NO_NEW_PRIVS
    assert libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0  # SECCOMP_MODE_FILTER
    """
)
needs_x86_64 = pytest.mark.skipif(platform.machine() != "x86_64", reason="the seccomp filter hardcodes x86_64")
