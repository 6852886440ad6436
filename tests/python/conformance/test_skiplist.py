"""Keep skips.py honest: every key must match a bound test, every reason
must say something."""

import importlib
import pathlib

from . import _binding, skips


def _all_bound_ids():
    pkg = __name__.rpartition(".")[0]
    for path in sorted(pathlib.Path(__file__).parent.glob("test_cpython_*.py")):
        importlib.import_module(f"{pkg}.{path.stem}")
    return _binding.BOUND_IDS


def _check(table, loop_name):
    ids = [tid for name, tid in _all_bound_ids() if name == loop_name]
    assert ids
    stale = [key for key in table
             if not any(_binding.match_skip({key: "x"}, tid) for tid in ids)]
    assert not stale, f"keys matching no bound {loop_name} test: {stale}"
    vague = [key for key, why in table.items() if len(why.strip()) < 15]
    assert not vague, f"give a specific reason for: {vague}"


def test_uvpy_skips_are_live():
    _check(skips.UVPY_SKIPS, "uvpy")


def test_uvpy_xfails_are_live():
    _check(skips.UVPY_XFAILS, "uvpy")
    both = [k for k in skips.UVPY_XFAILS if k in skips.UVPY_SKIPS]
    assert not both, f"both skipped and xfailed: {both}"


def test_stock_skips_are_live():
    _check(skips.STOCK_SKIPS, "asyncio")
