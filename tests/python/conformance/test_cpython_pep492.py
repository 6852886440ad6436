"""CPython's test.test_asyncio.test_pep492, bound to every loop (see _binding)."""

from test.test_asyncio import test_pep492 as cpython

from ._binding import bind_module

globals().update(bind_module(cpython))
