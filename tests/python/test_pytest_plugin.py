"""``pytest --uvpy`` (uvpy/pytest_plugin.py): a project's pytest-asyncio and
anyio tests run on uvpy loops, with one flag.

Each test writes a small suite with pytester and runs it in this process.
The inner tests append to a file which loop each of them (and each async
fixture) ran on: the loop's class and, for a uvpy loop, its backend. The
same suite without the flag is the oracle: it must run on asyncio's own
loop, and asyncio's policy must be as it was once an inner run is over.

These tests take no loop fixture: the loops are the inner suite's.
"""

import asyncio
import json
import sys

import pytest
import pytest_asyncio.plugin

import uvpy
from conftest import NO_URING, needs_x86_64

pytest_plugins = ("pytester",)

STOCK = f"{asyncio.SelectorEventLoop.__module__}.{asyncio.SelectorEventLoop.__qualname__}"
UVPY = f"{uvpy.Loop.__module__}.{uvpy.Loop.__qualname__}"

# Newer pytest-asyncio picks loops through this hook; older ones through the
# event_loop_policy fixture, which the plugin handles too (not exercised
# here: one pytest-asyncio is installed).
HAS_FACTORIES_HOOK = hasattr(pytest_asyncio.plugin, "PytestAsyncioSpecs")


CONFTEST = """
import asyncio
import json

import pytest


@pytest.fixture(scope="session")
def record():
    def record(tag):
        loop = asyncio.get_running_loop()
        kind = f"{type(loop).__module__}.{type(loop).__qualname__}"
        with open(RECORD, "a") as f:
            f.write(json.dumps([tag, kind, getattr(loop, "backend", None)]) + "\\n")
    return record
"""

PYTEST_ASYNCIO_SUITE = """
import asyncio
import unittest

import pytest
import pytest_asyncio


@pytest_asyncio.fixture
async def fixture_loop(record):
    record("fixture")
    return asyncio.get_running_loop()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def module_fixture_loop(record):
    record("module-fixture")
    return asyncio.get_running_loop()


@pytest.mark.asyncio
async def test_function_loop(fixture_loop, record):
    record("test")
    assert fixture_loop is asyncio.get_running_loop()


@pytest.mark.asyncio(loop_scope="module")
async def test_module_loop(module_fixture_loop, record):
    record("module-test")
    assert module_fixture_loop is asyncio.get_running_loop()


class TestInAClass:
    @pytest.mark.asyncio
    async def test_method(self, record):
        await asyncio.sleep(0)
        record("method")


def test_asyncio_run(record):
    async def main():
        record("asyncio.run")

    asyncio.run(main())


class TestUnittest(unittest.IsolatedAsyncioTestCase):
    @pytest.fixture(autouse=True)
    def take_record(self, record):
        self.record = record

    async def test_unittest(self):
        self.record("unittest")
"""

ANYIO_SUITE = """
import asyncio

import anyio
import pytest

pytestmark = pytest.mark.anyio


# The second: a project that picks its loop itself, and asyncio's debug mode.
OWN_LOOP = ("asyncio", {"loop_factory": asyncio.SelectorEventLoop, "debug": True})


@pytest.fixture(params=["asyncio", pytest.param(OWN_LOOP, id="own-loop")])
def anyio_backend(request):
    yield request.param


@pytest.fixture
async def fixture_loop(record):
    record("fixture")
    return asyncio.get_running_loop()


async def test_loop(fixture_loop, record, anyio_backend_options):
    record("test")
    assert fixture_loop is asyncio.get_running_loop()
    # The project's own options survive the rewrite.
    assert asyncio.get_running_loop().get_debug() is anyio_backend_options.get("debug", False)


async def test_task_group(record):
    done = []

    async def child(i):
        await anyio.sleep(0)
        done.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(child, i)
    assert sorted(done) == [0, 1, 2]
    record("task-group")
"""

ANYIO_PARAMETRIZED = """
import asyncio

import pytest


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_parametrized(record):
    record("parametrized")
"""


@pytest.fixture
def suite(pytester):
    """suite.write(conftest_extra="", **modules) writes the inner suite;
    suite(*args) runs it: (RunResult, [(tag, loop class, backend), ...])."""
    record_path = pytester.path / "loops.jsonl"

    def write(conftest_extra="", **modules):
        pytester.makeconftest(f"RECORD = {str(record_path)!r}\n" + CONFTEST + conftest_extra)
        # (the warning: see filterwarnings in pyproject.toml)
        pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n"
                         "filterwarnings = ignore::pytest.PytestAssertRewriteWarning\n")
        if modules:
            pytester.makepyfile(**modules)

    def run(*args):
        record_path.unlink(missing_ok=True)
        policy = asyncio.get_event_loop_policy()
        result = pytester.runpytest("-p", "no:cacheprovider", *args)
        assert asyncio.get_event_loop_policy() is policy  # invariant 2
        lines = record_path.read_text().splitlines() if record_path.exists() else []
        return result, [tuple(json.loads(line)) for line in lines]

    run.write = write
    return run


def default_backend():
    loop = uvpy.new_event_loop()
    try:
        return loop.backend
    finally:
        loop.close()


PYTEST_ASYNCIO_TAGS = ["fixture", "test", "module-fixture", "module-test", "method", "asyncio.run", "unittest"]


def test_pytest_asyncio_suite_runs_on_the_stock_loop_without_the_flag(suite):
    suite.write(test_suite=PYTEST_ASYNCIO_SUITE)
    result, loops = suite()
    result.assert_outcomes(passed=5)
    assert loops == [(tag, STOCK, None) for tag in PYTEST_ASYNCIO_TAGS]


def test_pytest_asyncio_suite_runs_on_uvpy_with_the_flag(suite):
    suite.write(test_suite=PYTEST_ASYNCIO_SUITE)
    result, loops = suite("--uvpy")
    result.assert_outcomes(passed=5)
    assert loops == [(tag, UVPY, default_backend()) for tag in PYTEST_ASYNCIO_TAGS]
    result.stdout.fnmatch_lines([f"uvpy: async tests run on uvpy {uvpy.__version__} loops, backend *"])


@pytest.mark.parametrize("backend", ["libuv", "io_uring"])
def test_backend_option(suite, backend):
    if uvpy.backends()[backend] is not None:
        pytest.skip(f"{backend} can not run here")
    suite.write(test_suite=PYTEST_ASYNCIO_SUITE, test_anyio=ANYIO_SUITE)
    # --uvpy-backend alone implies --uvpy.
    result, loops = suite("--uvpy-backend", backend)
    result.assert_outcomes(passed=9)
    assert {(kind, b) for _, kind, b in loops} == {(UVPY, backend)}
    assert len(loops) == len(PYTEST_ASYNCIO_TAGS) + 6


def test_anyio_suite_runs_on_the_stock_loop_without_the_flag(suite):
    suite.write(test_anyio=ANYIO_SUITE, test_parametrized=ANYIO_PARAMETRIZED)
    result, loops = suite()
    result.assert_outcomes(passed=5)
    assert sorted(loops) == sorted(
        [(tag, STOCK, None) for tag in ["fixture", "test", "task-group"] * 2] + [("parametrized", STOCK, None)]
    )


def test_anyio_suite_runs_on_uvpy_with_the_flag(suite):
    suite.write(test_anyio=ANYIO_SUITE, test_parametrized=ANYIO_PARAMETRIZED)
    result, loops = suite("--uvpy")
    result.assert_outcomes(passed=5)
    backend = default_backend()
    assert sorted(loops) == sorted(
        [(tag, UVPY, backend) for tag in ["fixture", "test", "task-group"] * 2] + [("parametrized", UVPY, backend)]
    )


@pytest.mark.skipif(not HAS_FACTORIES_HOOK, reason="this pytest-asyncio has no loop-factories hook")
def test_flag_overrides_the_projects_own_loop_factories(suite, pytester):
    # A project whose conftest runs each async test on two loops of its own,
    # as uvpy's does: without the flag it keeps them, with it uvpy's wins.
    # Its conftest sits in a directory not named test*, so pytest loads it
    # during collection, after the plugin registered its hook.
    suite.write()
    project = pytester.mkdir("project")
    (project / "conftest.py").write_text(PROJECT_FACTORIES)
    (project / "test_one.py").write_text(ONE_TEST)
    result, loops = suite()
    result.assert_outcomes(passed=2)
    assert loops == [("test", STOCK, None)] * 2
    result, loops = suite("--uvpy")
    result.assert_outcomes(passed=1)
    assert loops == [("test", UVPY, default_backend())]


PROJECT_FACTORIES = """
import asyncio


def pytest_asyncio_loop_factories(config, item):
    return {"first": asyncio.SelectorEventLoop, "second": asyncio.SelectorEventLoop}
"""

ONE_TEST = """
import pytest


@pytest.mark.asyncio
async def test_one(record):
    record("test")
"""


def test_an_unknown_backend_is_a_usage_error(suite, monkeypatch):
    suite.write(test_suite=ONE_TEST)
    monkeypatch.setenv("UVPY_BACKEND", "epoll")
    result, loops = suite("--uvpy")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--uvpy: UVPY_BACKEND must be 'auto', 'io_uring' or 'libuv', not 'epoll'*"])
    assert loops == []


def test_the_entry_point_loads_it_and_p_no_keeps_it_out(suite):
    suite.write(test_suite=ONE_TEST)
    result, _ = suite("-p", "no:uvpy.pytest_plugin", "--uvpy")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unrecognized arguments: --uvpy*"])


def test_p_loads_it_where_autoloading_is_off(suite, monkeypatch):
    suite.write(test_suite=ONE_TEST)
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    result, loops = suite("-p", "asyncio", "-p", "uvpy.pytest_plugin", "--uvpy")
    result.assert_outcomes(passed=1)
    assert loops == [("test", UVPY, default_backend())]


@needs_x86_64
def test_a_backend_that_can_not_run_here_is_a_usage_error(suite, pytester):
    # pytest in a child where io_uring_setup(2) fails (conftest.NO_URING).
    suite.write(test_suite=ONE_TEST)
    code = NO_URING + "import pytest\nsys.exit(pytest.main(sys.argv[1:]))\n"
    result = pytester.run(sys.executable, "-c", code, "-p", "no:cacheprovider", "--uvpy-backend", "io_uring")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--uvpy: the io_uring backend is unavailable: *"])
