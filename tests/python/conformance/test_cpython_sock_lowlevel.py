"""CPython's test_sock_lowlevel.BaseSockTestsMixin (loop.sock_* API),
bound to every loop as CPython binds it to its selector loops."""

from test.test_asyncio import test_sock_lowlevel as cpython
from test.test_asyncio import utils as test_utils

from ._binding import bind_mixins

globals().update(bind_mixins(
    cpython, "SockTests", cpython.BaseSockTestsMixin, test_utils.TestCase))
