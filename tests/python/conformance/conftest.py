"""pytest glue for the CPython conformance suite (see README.md)."""

import gc

import pytest


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "uvpy_loop: CPython conformance test bound to uvpy")
    config.addinivalue_line(
        "markers", "stock_loop: CPython conformance test bound to the stock "
        "asyncio loop (the oracle)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Collect, then freeze what is alive, before each CPython test.

    CPython's tests call gc.collect() often: three times in many
    tearDowns, a hundred times in each *_del_collect test. Every full
    collection walks every tracked object that is not frozen, so without
    this each one would walk all that the run has kept alive so far. After
    it, a test's collections walk what that test made. The collection
    first leaves only live objects to freeze; anything of an earlier test
    still alive then is nothing this test's collections could free.
    """
    gc.collect()
    gc.freeze()
