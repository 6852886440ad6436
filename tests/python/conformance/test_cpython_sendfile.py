"""CPython's test_sendfile.SendfileTestsBase (= SendfileMixin +
SockSendfileMixin: loop.sendfile and loop.sock_sendfile), bound to every
loop as CPython binds it to its selector loops."""

from test.test_asyncio import test_sendfile as cpython
from test.test_asyncio import utils as test_utils

from ._binding import bind_mixins

globals().update(bind_mixins(
    cpython, "SendfileTests", cpython.SendfileTestsBase, test_utils.TestCase))
