"""Bind CPython's ``test.test_asyncio`` test classes to a named event loop.

Every bound test runs once per loop in :data:`LOOPS`:

* ``asyncio`` -- the stock selector loop.  It is the oracle: it runs
  everything CPython itself runs on this platform (minus ``STOCK_SKIPS``,
  which is for environmental problems only).
* ``uvpy``    -- our loop; ``UVPY_SKIPS`` lists what it may not run yet, each
  with a reason.

Two binding styles, mirroring how CPython itself binds its tests:

* :func:`bind_module` -- for modules whose TestCase classes are loop-agnostic
  and get their loop from the event loop policy (``asyncio.run``,
  ``IsolatedAsyncioTestCase``, ``asyncio.new_event_loop()``).  Each class
  ``C`` becomes ``Test_<loop>__C``; the loop's policy is installed for the
  whole of ``run()`` (setUp .. tearDown) and reset to ``None`` afterwards.
* :func:`bind_mixins` -- for the loop-parametrised mixins
  (``test_events.EventLoopTestsMixin`` & co.), which CPython binds once per
  selector with a ``create_event_loop()``/``new_loop()`` override.  We bind
  them once per loop the same way (and also install the policy).

Test ids used by the skip lists are ``<cpython module>.<Class>.<method>``,
e.g. ``test_events.EventLoopTests.test_create_connection`` or
``test_locks.LockTests.test_repr``, where ``<Class>`` is the CPython class
name (or, for mixins, the name given to :func:`bind_mixins`).
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import inspect
import os
import unittest
from dataclasses import dataclass, field
from typing import Callable

import pytest

from .skips import STOCK_SKIPS, UVPY_SKIPS, UVPY_XFAILS

# Set to 1 to make a failing `import uvpy` an error instead of skipping every
# uvpy-bound test (only matters when this directory is run on its own).
REQUIRE_UVPY_ENV = "UVPY_CONFORMANCE_REQUIRE"

# Every (loop_name, test_id) this process has bound; used by test_skiplist.
BOUND_IDS: set[tuple[str, str]] = set()


@dataclass
class LoopSpec:
    name: str
    policy_factory: Callable[[], asyncio.AbstractEventLoopPolicy]
    loop_factory: Callable[[], asyncio.AbstractEventLoop]
    skips: dict[str, str]
    xfails: dict[str, str] = field(default_factory=dict)
    # Whether test_events' EventLoopTests get CPython's UnixEventLoopTestsMixin
    # fixture (installs an asyncio.SafeChildWatcher on the loop via
    # add_signal_handler(SIGCHLD)).  CPython uses it for its selector loops;
    # uvpy (libuv) is expected to reap its own children, as uvloop does.
    child_watcher: bool = False
    # Why the loop cannot be used at all (e.g. uvpy not built); None if usable.
    unavailable: str | None = None
    marker: pytest.MarkDecorator | None = None


def _uvpy_spec() -> LoopSpec:
    unavailable = None
    try:
        import uvpy
        missing = [a for a in ("EventLoopPolicy", "new_event_loop")
                   if not hasattr(uvpy, a)]
        if missing:  # e.g. the source dir imported as a namespace package
            where = getattr(uvpy, "__file__", None) or "namespace package"
            raise ImportError(f"uvpy ({where}) lacks "
                              f"{', '.join(missing)}; is it built?")
    except Exception as exc:  # ImportError, or a broken extension module
        if os.environ.get(REQUIRE_UVPY_ENV) == "1":
            raise
        unavailable = f"uvpy is not importable ({type(exc).__name__}: {exc})"

    def policy():
        import uvpy
        return uvpy.EventLoopPolicy()

    def new_loop():
        import uvpy
        return uvpy.new_event_loop()

    return LoopSpec("uvpy", policy, new_loop, UVPY_SKIPS, UVPY_XFAILS,
                    child_watcher=False, unavailable=unavailable,
                    marker=pytest.mark.uvpy_loop)


LOOPS: dict[str, LoopSpec] = {
    # On Linux: _UnixSelectorEventLoop over an EpollSelector, i.e. what
    # CPython's EPollEventLoopTests run.
    "asyncio": LoopSpec("asyncio", asyncio.DefaultEventLoopPolicy,
                        asyncio.SelectorEventLoop, STOCK_SKIPS,
                        child_watcher=True, marker=pytest.mark.stock_loop),
    "uvpy": _uvpy_spec(),
}


# --------------------------------------------------------------------------
# skip lists

def match_skip(skips: dict[str, str], test_id: str) -> str | None:
    """Return the reason if ``test_id`` ("mod.Class.method") is listed.

    Keys without a dot match the bare method name; dotted keys match the
    full id (or "mod.Class").  Keys may use fnmatch wildcards.
    """
    module, cls, method = test_id.split(".")
    for pattern, reason in skips.items():
        if "." in pattern:
            if (fnmatch.fnmatchcase(test_id, pattern)
                    or fnmatch.fnmatchcase(f"{module}.{cls}", pattern)):
                return reason
        elif fnmatch.fnmatchcase(method, pattern):
            return reason
    return None


def _skipped(reason: str):
    @unittest.skip(reason)
    def test(self):  # pragma: no cover - never called
        pass
    return test


def _xfail(func, reason: str):
    """A copy of ``func`` marked strict-xfail (never mutate CPython's)."""
    if inspect.iscoroutinefunction(func):
        async def test(self, *args, **kwargs):
            return await func(self, *args, **kwargs)
    else:
        def test(self, *args, **kwargs):
            return func(self, *args, **kwargs)
    test = functools.wraps(func)(test)
    test.pytestmark = [pytest.mark.xfail(reason=reason, strict=True)]
    return test


# --------------------------------------------------------------------------
# class factories

def _short(module) -> str:
    return module.__name__.rpartition(".")[2]


def _finish(cls: type, spec: LoopSpec, module_short: str, class_id: str,
            caller: str) -> type:
    """Apply skips/markers and register ids for a freshly made subclass."""
    cls.__module__ = caller
    if spec.unavailable:
        cls.__unittest_skip__ = True
        cls.__unittest_skip_why__ = spec.unavailable
    cls.pytestmark = [spec.marker]
    for method in unittest.TestLoader().getTestCaseNames(cls):
        test_id = f"{module_short}.{class_id}.{method}"
        BOUND_IDS.add((spec.name, test_id))
        reason = match_skip(spec.skips, test_id)
        if reason:
            setattr(cls, method, _skipped(f"[{spec.name}] {reason}"))
            continue
        reason = match_skip(spec.xfails, test_id)
        if reason:
            setattr(cls, method,
                    _xfail(getattr(cls, method), f"[{spec.name}] {reason}"))
    return cls


class _PolicyInstaller:
    """First base of every bound class: installs the loop's policy."""

    _loop_spec: LoopSpec

    def run(self, result=None):
        spec = self._loop_spec
        if spec.unavailable:
            return super().run(result)  # class is skipped; don't touch uvpy
        asyncio.set_event_loop_policy(spec.policy_factory())
        try:
            return super().run(result)
        finally:
            asyncio.set_event_loop_policy(None)


def _make(name: str, bases: tuple, ns: dict, spec: LoopSpec) -> type:
    ns = dict(ns, _loop_spec=spec, __qualname__=name)
    return type(name, (_PolicyInstaller, *bases), ns)


def _caller_module() -> str:
    import sys
    return sys._getframe(2).f_globals["__name__"]


def bind_module(module, *, include=None, exclude=(), loops=None,
                _caller=None) -> dict[str, type]:
    """Bind every TestCase class defined in ``module`` to each loop.

    ``include`` (names) restricts the classes; ``exclude`` holds fnmatch
    patterns of class names to leave out.  Windows/proactor-only classes are
    always left out.  Returns ``{bound_name: class}`` for ``globals()``.
    """
    caller = _caller or _caller_module()
    exclude = ("*Proactor*", "*Windows*", *exclude)
    out = {}
    for cname, obj in sorted(vars(module).items()):
        if not (isinstance(obj, type) and issubclass(obj, unittest.TestCase)
                and obj.__module__ == module.__name__):
            continue
        if include is not None and cname not in include:
            continue
        if any(fnmatch.fnmatchcase(cname, p) for p in exclude):
            continue
        for spec in (loops or LOOPS.values()):
            name = f"Test_{spec.name}__{cname}"
            cls = _make(name, (obj,), {}, spec)
            out[name] = _finish(cls, spec, _short(module), cname, caller)
    if include is not None:
        missing = set(include) - {n.split("__", 1)[1] for n in out}
        assert not missing, f"{module.__name__} has no classes {missing}"
    return out


def bind_mixins(module, class_id: str, *mixins: type, loops=None,
                child_watcher_mixin: type | None = None,
                _caller=None) -> dict[str, type]:
    """Bind loop-parametrised mixins (CPython style) to each loop.

    Creates ``Test_<loop>__<class_id>(*mixins)`` with ``create_event_loop``
    and ``new_loop`` returning a fresh loop of that kind.  If
    ``child_watcher_mixin`` is given it is put first for loops whose spec
    has ``child_watcher=True`` (test_events.UnixEventLoopTestsMixin).
    """
    caller = _caller or _caller_module()
    out = {}
    for spec in (loops or LOOPS.values()):
        name = f"Test_{spec.name}__{class_id}"
        bases = mixins
        if child_watcher_mixin is not None and spec.child_watcher:
            bases = (child_watcher_mixin, *mixins)
        ns = {
            "create_event_loop": lambda self, f=spec.loop_factory: f(),
            "new_loop": lambda self, f=spec.loop_factory: f(),
        }
        cls = _make(name, bases, ns, spec)
        out[name] = _finish(cls, spec, _short(module), class_id, caller)
    return out
