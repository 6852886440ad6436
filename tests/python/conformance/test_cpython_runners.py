"""CPython's test.test_asyncio.test_runners, bound to every loop (see _binding)."""

from test.test_asyncio import test_runners as cpython

from ._binding import bind_module

globals().update(bind_module(cpython))
