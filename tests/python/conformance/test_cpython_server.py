"""CPython's test_server.BaseStartServer (loop.create_server /
start_serving / serve_forever), bound to every loop.

CPython's SelectorStartServerTests adds test_start_unix_server_1 on top of
the mixin; it is bound here too (it is only selector-specific in that the
proactor loop lacks unix sockets)."""

from test.test_asyncio import test_server as cpython

from ._binding import bind_mixins

globals().update(bind_mixins(
    cpython, "StartServerTests", cpython.SelectorStartServerTests))
