"""CPython's test_buffered_proto.BaseTestBufferedProtocol
(asyncio.BufferedProtocol over TCP), bound to every loop."""

import unittest

from test.test_asyncio import test_buffered_proto as cpython

from ._binding import bind_mixins

globals().update(bind_mixins(
    cpython, "BufferedProtocolTests",
    cpython.BaseTestBufferedProtocol, unittest.TestCase))
