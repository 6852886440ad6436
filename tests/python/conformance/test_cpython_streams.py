"""CPython's test.test_asyncio.test_streams (asyncio.StreamReader/Writer,
open_connection, start_server), bound to every loop (see _binding).

StreamTests makes its loop with asyncio.new_event_loop(), i.e. through the
policy that bind_module installs."""

from test.test_asyncio import test_streams as cpython

from ._binding import bind_module

globals().update(bind_module(cpython))
