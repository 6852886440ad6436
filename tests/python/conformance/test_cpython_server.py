"""CPython's test_server.BaseStartServer (loop.create_server /
start_serving / serve_forever), bound to every loop.

CPython's SelectorStartServerTests adds test_start_unix_server_1 on top of
the mixin; it is bound here too (it is only selector-specific in that the
proactor loop lacks unix sockets).

The loop-agnostic classes newer CPythons add (TestServer2: wait_closed,
close_clients, abort_clients; UnixServerCleanupTests) are bound where the
running Python has them."""

from test.test_asyncio import test_server as cpython

from ._binding import bind_mixins, bind_module

globals().update(bind_mixins(
    cpython, "StartServerTests", cpython.SelectorStartServerTests))
globals().update(bind_module(cpython, exclude=("*StartServer*",)))
