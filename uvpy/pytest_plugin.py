"""A pytest plugin that runs a project's async tests on uvpy: ``pytest --uvpy``.

The package registers it as a pytest11 entry point named
``uvpy.pytest_plugin``, so it loads in every pytest run of an environment
where uvpy is installed; ``-p uvpy.pytest_plugin`` names it explicitly
(where plugin autoloading is off) and ``-p no:uvpy.pytest_plugin`` keeps it
out. Options:

    --uvpy                    run async tests on uvpy loops
    --uvpy-backend NAME       ... on this backend ("auto", "libuv",
                              "io_uring"; implies --uvpy). Without it the
                              loops use UVPY_BACKEND, else "auto".

With the flag, every loop a test runs on is a uvpy loop:

* pytest-asyncio: where it has the ``pytest_asyncio_loop_factories`` hook
  (newer 1.x releases), the plugin implements that hook with one factory, uvpy's, called
  first, so it also replaces the loops a project's own hook asks for. Older
  pytest-asyncio (0.23 on) builds its loops from the event loop policy that
  its ``event_loop_policy`` fixture returns; the plugin makes that fixture
  return uvpy's policy, even where the project overrides it.
* anyio's plugin: the ``anyio_backend`` fixture's value ("asyncio", or
  ("asyncio", options)) gets ``loop_factory`` set to uvpy's (which also
  takes precedence over ``use_uvloop``); the rest of the options stay. Trio
  runs stay on trio: they are not asyncio.
* Anything else that calls asyncio.new_event_loop() (asyncio.run in a sync
  test, unittest's IsolatedAsyncioTestCase): uvpy's policy is asyncio's
  policy for the session.

Invariants:

1. Without the flag the plugin adds two options and nothing else (beyond
   importing uvpy): it implements no hook that pytest-asyncio or anyio
   would see and leaves asyncio's policy alone. The option names do not
   overlap the ones a project defines for itself (uvpy's own suite has
   ``--uvpy-only``).
2. Everything the flag changes is undone at pytest_unconfigure: the policy
   that was asyncio's before comes back, the hook object is unregistered,
   so an in-process run (pytester) leaves its caller as it found it.
3. A backend that can not run here is a usage error at start-up, with the
   loop's own reason, not one failure per test.
4. The plugin keeps no module-level state: all of it lives on the Config.
"""

from __future__ import annotations

import asyncio
import inspect
import warnings

import pytest

import uvpy

_BACKENDS = ("auto", "libuv", "io_uring")
_STATE = pytest.StashKey["_Session"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("uvpy", "uvpy event loop")
    group.addoption(
        "--uvpy",
        action="store_true",
        default=False,
        help="run async tests (pytest-asyncio, anyio, asyncio.run) on uvpy event loops",
    )
    group.addoption(
        "--uvpy-backend",
        choices=_BACKENDS,
        default=None,
        help="the uvpy backend for those loops (implies --uvpy; default: UVPY_BACKEND, else auto)",
    )


def pytest_configure(config: pytest.Config) -> None:
    backend = config.getoption("uvpy_backend")
    if not (config.getoption("uvpy") or backend is not None):
        return  # invariant 1
    try:
        uvpy.new_event_loop(backend).close()  # invariant 3
    except (OSError, ValueError) as exc:
        raise pytest.UsageError(f"--uvpy: {exc}") from None
    session = _Session(backend, config)
    config.stash[_STATE] = session
    session.start()


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(_STATE, None)
    if session is not None:
        session.stop()
        del config.stash[_STATE]


def pytest_report_header(config: pytest.Config) -> str | None:
    session = config.stash.get(_STATE, None)
    if session is None:
        return None
    loop = session.new_loop()
    try:
        return f"uvpy: async tests run on uvpy {uvpy.__version__} loops, backend {loop.backend}"
    finally:
        loop.close()


def _with_loop_factory(backend_value, factory):
    """anyio_backend's value with the asyncio backend's loop_factory set."""
    if backend_value == "asyncio":
        return ("asyncio", {"loop_factory": factory})
    if (isinstance(backend_value, tuple) and len(backend_value) == 2
            and backend_value[0] == "asyncio" and isinstance(backend_value[1], dict)):
        return ("asyncio", {**backend_value[1], "loop_factory": factory})
    return backend_value  # trio, or a value anyio itself rejects


def _policy_functions():
    """asyncio's get/set_event_loop_policy, or None where Python has no
    policies any more. Deprecated from 3.14: the warning is not the user's
    to see when they asked for uvpy's loops."""
    if not hasattr(asyncio, "set_event_loop_policy"):
        return None

    def get():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return asyncio.get_event_loop_policy()

    def set_(policy):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_event_loop_policy(policy)

    return get, set_


class _Session:
    """What --uvpy changes for one pytest run, and undoes (invariant 2)."""

    def __init__(self, backend: str | None, config: pytest.Config) -> None:
        self.backend = backend
        self.config = config
        self.saved_policy = None
        self.policy_funcs = _policy_functions()
        # Fixture name -> how its value is rewritten (pytest_fixture_setup).
        self.rewrites = {"anyio_backend": lambda value: _with_loop_factory(value, self.new_loop)}
        hook = getattr(config.pluginmanager.hook, "pytest_asyncio_loop_factories", None)
        self.has_factories_hook = getattr(hook, "spec", None) is not None
        if not self.has_factories_hook and self.policy_funcs is not None:
            self.rewrites["event_loop_policy"] = lambda value: uvpy.EventLoopPolicy(self.backend)

    def new_loop(self) -> uvpy.Loop:
        return uvpy.new_event_loop(self.backend)

    def start(self) -> None:
        if self.policy_funcs is not None:
            get, set_ = self.policy_funcs
            self.saved_policy = get()
            set_(uvpy.EventLoopPolicy(self.backend))
        self.config.pluginmanager.register(self, "uvpy-session")

    def stop(self) -> None:
        self.config.pluginmanager.unregister(self)
        if self.policy_funcs is not None:
            self.policy_funcs[1](self.saved_policy)

    # The hooks below are seen only while --uvpy is on (registered in start).

    @pytest.hookimpl(tryfirst=True, optionalhook=True)  # optional: pytest-asyncio < 1.x lacks it
    def pytest_asyncio_loop_factories(self, config, item):
        # pytest takes the first answer (firstresult); tryfirst makes it
        # this one, over a conftest's hook that asks for other loops.
        return {"uvpy": self.new_loop}

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef, request):
        rewrite = self.rewrites.get(fixturedef.argname)
        if rewrite is None:
            return (yield)
        # The fixture's function is swapped for one that rewrites its value
        # for the duration of this setup, the way anyio's plugin wraps async
        # fixtures; pytest caches what the wrapper returns.
        func = fixturedef.func
        bound = func
        if (request.instance is not None and inspect.ismethod(func)
                and type(func.__self__) is type(request.instance)):
            bound = func.__func__.__get__(request.instance)
        if inspect.isgeneratorfunction(func):
            def wrapper(**kwargs):
                it = bound(**kwargs)
                yield rewrite(next(it))
                yield from it  # teardown, and pytest's check for a second yield
        else:
            def wrapper(**kwargs):
                return rewrite(bound(**kwargs))
        fixturedef.func = wrapper
        try:
            return (yield)
        finally:
            fixturedef.func = func
