"""Every test in tests/python runs on uvpy and on stock asyncio.

The stock loop is the oracle: when the two disagree, uvpy is wrong until
shown otherwise. Sync tests take the ``loop`` fixture; async tests
(marked ``pytest.mark.asyncio``) get one run per loop through
pytest-asyncio's ``pytest_asyncio_loop_factories`` hook.

The uvpy loops use the backend UVPY_BACKEND names ("auto" when unset);
scripts/test.sh runs the suite once with libuv and once with io_uring.

Every test here (CPython's, under conformance/, keep their own checks) ends
with a check that it left the loop and the process clean, as each of
libuv's tests ends with MAKE_VALGRIND_HAPPY. A failed check is an error
in the test's teardown:

1. A loop from LOOP_FACTORIES (the ``loop`` and ``new_loop`` fixtures,
   pytest-asyncio's runners) has, when it is closed, no fd watcher but its
   own signal wakeup socket and no transport alive that is not closing.
   Closing drops watchers without closing their fds, so whatever is left
   at this point would leak.
2. The process's fds after teardown are those it had before setup,
   compared as (number, what /proc/self/fd says it points at): a number
   reused for a new socket is a different fd. What a fixture wider than
   one test opened belongs to that fixture until its finalizer ran.
3. ResourceWarning is an error: raised where it is emitted, and through
   pytest's unraisable-exception hook where it comes from a __del__. The
   teardown collects garbage first, so what a test dropped unclosed warns
   inside that test.
4. Two marks exempt a test, for what it leaves behind by design; the
   reason is part of the mark, and ``loops=[...]`` narrows it to some
   loops (the oracle's own leaks): ``leaves_io_open(why)`` from 1 (the test
   closes a loop under open I/O on purpose), ``leaks_fds(why)`` from 2.
   ResourceWarnings a test expects it catches itself (pytest.warns).
   A test whose setup or call failed is not checked: one report is enough.

What a process opens once for all its loops (libuv's signal lock pipe)
is opened before the first test (pytest_sessionstart), so it is no test's.
"""

import asyncio
import gc
import os
import platform
import resource
import socket
import ssl
import sys
import textwrap
import time
import warnings
import weakref

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


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "leaves_io_open(reason, loops=None): the test closes a loop with fd watchers or "
        "transports still open, by design (exempt from the clean-close check's loop part)")
    config.addinivalue_line(
        "markers", "leaks_fds(reason, loops=None): the test leaves fds open by design "
        "(exempt from the clean-close check's fd part)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _checked(item):
            # First in the list, so a test's own filterwarnings marks win.
            item.add_marker(pytest.mark.filterwarnings("error::ResourceWarning"), append=False)
            item.add_marker(pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
                            append=False)
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


def pytest_sessionstart(session):
    """Run a uvpy loop of each backend once before any test, so what a
    process opens once for all its loops (libuv's signal lock pipe) is
    there before the first test's fds are taken (invariant 2). Tests ask
    for either backend whatever UVPY_BACKEND says."""
    for backend in ("libuv", "io_uring"):
        try:
            loop = uvpy.Loop(backend=backend)
        except OSError:
            continue  # io_uring can not run here
        try:
            loop.run_until_complete(asyncio.sleep(0))
        finally:
            loop.close()


def pytest_report_header(config):
    loop = uvpy.new_event_loop()
    try:
        return f"uvpy backend: {loop.backend} (UVPY_BACKEND={os.environ.get('UVPY_BACKEND', '')!r})"
    finally:
        loop.close()


# -- the clean-close check (invariants 1-4 above) ------------------------------------

_CONFORMANCE = os.path.join(os.path.dirname(__file__), "conformance") + os.sep
_leftovers = []  # what loops closed during the current test left behind (invariant 1)
_fixture_fds = {}  # id(fixturedef) -> fds a fixture wider than a test opened (invariant 2)
_fds_before = pytest.StashKey()
_failed = pytest.StashKey()  # the test's setup or call failed


def _checked(item):
    return not str(item.path).startswith(_CONFORMANCE)


def _exempt(item, mark_name):
    """Whether item carries mark_name for the loop it runs on."""
    mark = item.get_closest_marker(mark_name)
    if mark is None:
        return False
    assert mark.args and isinstance(mark.args[0], str), f"{mark_name} needs a reason"
    loops = mark.kwargs.get("loops")
    spec = getattr(item, "callspec", None)
    return loops is None or (spec is not None and set(loops) & set(spec.id.split("-")) != set())


def fd_table():
    """{(fd, target)} for the process's open fds; target is what readlink
    says: a path, "socket:[inode]", "anon_inode:[eventfd]"..."""
    table = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            table.add((int(name), os.readlink(f"/proc/self/fd/{name}")))
        except OSError:
            pass  # the fd listdir itself used, closed by now
    return table


def loop_leftovers(loop):
    """What an open loop still watches or carries: one line per kind."""
    own = 1 if loop._ssock is not None else 0  # the signal wakeup socket (both loops)
    if isinstance(loop, uvpy.Loop):
        watchers = loop._stats()["watchers"]["total"] - own
        refs = loop.__dict__.get("_transports", {}).values()  # fd -> weakref.ref
        transports = [ref() for ref in refs]
    else:
        watchers = len(loop._selector.get_map()) - own
        transports = list(loop._transports.values())
    live = [t for t in transports if t is not None and not t.is_closing()]
    found = []
    if watchers:
        found.append(f"{loop!r}: {watchers} fd watcher(s) left registered")
    if live:
        found.append(f"{loop!r}: transports left open: {live!r}")
    return found


def _checking_close(factory):
    """factory, with each loop's close() first noting what it leaves."""

    def make():
        loop = factory()
        ref = weakref.ref(loop)  # no cycle: a loop dropped unclosed still warns at once
        close = type(loop).close

        def checked_close():
            loop = ref()
            if loop is None:
                # Loop.__del__ of a loop found in cyclic garbage (its weak
                # references are cleared first): nothing left to check, and
                # the native base releases the reactor as it goes.
                return
            if not loop.is_closed() and not loop.is_running():
                _leftovers.extend(loop_leftovers(loop))
            close(loop)

        loop.close = checked_close
        return loop

    make.__name__ = getattr(factory, "__name__", "make")
    return make


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    if fixturedef.scope == "function":
        return (yield)
    before = fd_table()
    try:
        return (yield)
    finally:
        _fixture_fds[id(fixturedef)] = fd_table() - before


def pytest_fixture_post_finalizer(fixturedef, request):
    _fixture_fds.pop(id(fixturedef), None)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    _leftovers.clear()
    if _checked(item):
        item.stash[_fds_before] = fd_table()
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        item.stash[_failed] = True
    return report


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item, nextitem):
    result = yield
    if not _checked(item) or item.stash.get(_failed, False):
        return result  # a failed test may well leave things open: one report is enough
    leftovers, _leftovers[:] = list(_leftovers), []
    # This runs after pytest's own unraisable-exception check of the phase:
    # what the collection finds is recorded here, not blamed on the next test.
    unraisable, hook = [], sys.unraisablehook
    sys.unraisablehook = lambda u: unraisable.append(f"{u.err_msg or 'Exception ignored in'}: "
                                                      f"{u.object!r}: {u.exc_value!r}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            collect()
    finally:
        sys.unraisablehook = hook
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert unclosed + unraisable == [], "the test dropped objects unclosed (collected at teardown)"
    if not _exempt(item, "leaves_io_open"):
        assert leftovers == [], "a loop was closed with these left behind"
    if not _exempt(item, "leaks_fds"):
        kept = set().union(*_fixture_fds.values())
        leaked = sorted(fd_table() - item.stash.get(_fds_before, set()) - kept)
        assert leaked == [], "fds opened during the test are still open"
    return result


@pytest.fixture(params=list(LOOP_FACTORIES))
def loop_name(request):
    return request.param


@pytest.fixture
def new_loop(loop_name):
    """A factory for loops of the parametrised kind; all are closed at teardown."""
    made = []

    def make():
        loop = _checking_close(LOOP_FACTORIES[loop_name])()
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
    return {name: _checking_close(factory) for name, factory in LOOP_FACTORIES.items()}


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


async def close_server(server, timeout=30):
    """Close server, then wait until the connections it accepted are gone
    too, as wait_closed() does from Python 3.12 (3.11's returns at once).
    Their peers must have closed already; timeout is only a safety net."""
    server.close()
    deadline = time.monotonic() + timeout
    while active_connections(server):
        assert time.monotonic() < deadline, f"{active_connections(server)} connection(s) never closed"
        await asyncio.sleep(0.001)
    await server.wait_closed()


def collect():
    for _ in range(3):
        gc.collect()


async def until(pred):
    """Yield to the loop until pred() holds (bounded by iterations, not time)."""
    for _ in range(100000):
        if pred():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


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


def _uring_status():
    """Whether an io_uring loop can be made here, and the reason if not."""
    try:
        loop = uvpy.new_event_loop("io_uring")
    except (OSError, ValueError) as exc:
        return False, str(exc)
    loop.close()
    return True, ""


URING, URING_WHY = _uring_status()
needs_uring = pytest.mark.skipif(not URING, reason=f"io_uring unavailable here: {URING_WHY}")


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
