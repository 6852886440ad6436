"""CPython's test.test_asyncio.test_subprocess (asyncio.create_subprocess_*
and asyncio.subprocess.Process over the loop's subprocess transports),
bound to every loop.

``SubprocessTests`` is CPython's ``SubprocessMixin`` with a fresh loop of
the kind under test, as CPython's ``Subprocess*WatcherTests`` classes give
it one; the stock loop gets its child watcher from its policy, as it does
by default (no watcher class is forced on it). ``SubprocessTransportTests``
is left out: it tests asyncio's BaseSubprocessTransport on a mock loop.
"""

from test.test_asyncio import test_subprocess as cpython
from test.test_asyncio import utils as test_utils

from ._binding import bind_mixins


class _NewLoop:
    def setUp(self):
        super().setUp()
        self.loop = self.new_loop()
        self.set_event_loop(self.loop)


globals().update(bind_mixins(
    cpython, "SubprocessTests", _NewLoop, cpython.SubprocessMixin, test_utils.TestCase))
