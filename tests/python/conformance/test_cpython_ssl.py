"""CPython's test.test_asyncio.test_ssl (TLS over asyncio's transports:
handshakes, shutdowns, flow control, errors), bound to every loop.

``TestSSL`` makes its loops with ``asyncio.new_event_loop()``, so the
loop's policy, installed for the whole test, decides which loop it runs.
"""

from test.test_asyncio import test_ssl as cpython

from ._binding import bind_module

globals().update(bind_module(cpython, include=["TestSSL"]))
