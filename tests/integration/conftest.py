"""Real programs on uvpy and on stock asyncio: the integration suite.

Every test runs once per loop ("uvpy", "asyncio"), as in tests/python: the
stock loop is the oracle, and a result uvpy gets differently is a uvpy bug
until shown otherwise. The uvpy loops use the backend UVPY_BACKEND names;
scripts/test.sh runs the suite on libuv (both loops), then its uvpy half
again on io_uring with --uvpy-only.

Rules the fixtures below keep:

1. A test runs its coroutine through the ``runner`` fixture, an
   asyncio.Runner on the parametrised loop: the loop is closed, its async
   generators and default executor shut down, before the test ends.
2. Servers the suite does not start itself (PostgreSQL, Redis) are found
   through UVPY_TEST_* variables (scripts/services.sh writes them). Where
   one is not set the test skips, except under CI=true, where it fails: a
   broken setup must never pass as a row of skips. A missing Python
   package is treated the same way.
3. Nothing here waits without a bound: every coroutine runs under GUARD
   seconds, a hang guard that no test uses as an expectation.
4. Nothing reaches the loop's exception handler: an error a library
   could not hand to its caller ("Exception in callback", "Task exception
   was never retrieved", a fatal transport error) fails the test, on
   either loop.
"""

import asyncio
import importlib
import os

import pytest

import uvpy

LOOP_FACTORIES = {
    "uvpy": uvpy.new_event_loop,
    "asyncio": asyncio.SelectorEventLoop,
}

GUARD = 120  # seconds; a hang guard only, never an expectation

IN_CI = os.environ.get("CI", "").lower() == "true"


def pytest_addoption(parser):
    try:
        parser.addoption(
            "--uvpy-only",
            action="store_true",
            help="deselect the stock-asyncio (oracle) runs: for a second pass on another uvpy backend",
        )
    except ValueError:  # tests/python/conftest.py added it: both directories in one run
        pass


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--uvpy-only"):
        return
    keep, drop = [], []
    for item in items:
        spec = getattr(item, "callspec", None)
        (drop if spec is not None and "asyncio" in spec.id.split("-") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_report_header(config):
    loop = uvpy.new_event_loop()
    try:
        ci = " CI=true: a missing service fails" if IN_CI else ""
        return f"uvpy backend: {loop.backend} (UVPY_BACKEND={os.environ.get('UVPY_BACKEND', '')!r}){ci}"
    finally:
        loop.close()


def unavailable(reason):
    """Skips the test, or fails it under CI=true (rule 2)."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: scripts/test.sh must provide it)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)  # also from a module importing a missing package


def need_module(name):
    """Imports a module of the `integration` extra (rule 2)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        unavailable(f"{name} is not installed (pip install -e '.[integration]'): {exc}")


def need_env(name):
    """The value of a UVPY_TEST_* variable (rule 2)."""
    value = os.environ.get(name)
    if not value:
        unavailable(f"{name} is not set: start the services with scripts/services.sh (tests/integration/README.md)")
    return value


@pytest.fixture(params=list(LOOP_FACTORIES))
def loop_name(request):
    return request.param


@pytest.fixture
def loop_factory(loop_name):
    return LOOP_FACTORIES[loop_name]


class GuardedRunner:
    """asyncio.Runner whose run() is bounded by GUARD (rule 3)."""

    def __init__(self, runner):
        self._runner = runner

    def run(self, coro, guard=GUARD):
        async def guarded():
            async with asyncio.timeout(guard):
                return await coro

        return self._runner.run(guarded())

    def get_loop(self):
        return self._runner.get_loop()


@pytest.fixture
def runner(loop_factory):
    """Runs coroutines on a fresh loop of the parametrised kind (rules 1, 4)."""
    reported = []
    with asyncio.Runner(loop_factory=loop_factory) as r:
        loop = r.get_loop()
        loop.set_exception_handler(lambda loop, context: reported.append(context))
        yield GuardedRunner(r)
        assert not loop.is_running()
    assert loop.is_closed()
    assert not reported, "\n".join(f"{c.get('message')}: {c.get('exception')!r}" for c in reported)


def expected_loop(loop_name):
    """What type(loop) and loop.backend are on the parametrised kind: a
    test that finds another loop running its program fails."""
    if loop_name == "asyncio":
        return "_UnixSelectorEventLoop", None
    loop = uvpy.new_event_loop()
    try:
        return "Loop", loop.backend
    finally:
        loop.close()


@pytest.fixture
def check_loop(loop_name):
    """check_loop(loop) asserts that loop is of the parametrised kind."""
    name, backend = expected_loop(loop_name)

    def check(loop):
        assert type(loop).__name__ == name
        assert getattr(loop, "backend", None) == backend

    return check


@pytest.fixture(scope="session")
def ca():
    """A throwaway certificate authority for the servers the suite starts."""
    return need_module("trustme").CA()


@pytest.fixture(scope="session")
def server_ctx(ca):
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    return ctx


@pytest.fixture(scope="session")
def client_ctx(ca):
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(ctx)
    return ctx


# The PostgreSQL that scripts/services.sh starts (test_asyncpg, test_psycopg).
@pytest.fixture
def dsn():
    return need_env("UVPY_TEST_PG_DSN")


@pytest.fixture
def socket_dir():
    return need_env("UVPY_TEST_PG_SOCKET_DIR")


@pytest.fixture
def pg_ca():
    return need_env("UVPY_TEST_PG_CA")
