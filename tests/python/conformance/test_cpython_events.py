"""CPython's test.test_asyncio.test_events, bound to every loop.

* ``EventLoopTests`` -- ``EventLoopTestsMixin`` + ``SubprocessTestsMixin``
  with ``create_event_loop()`` returning the loop under test, as CPython's
  ``EPollEventLoopTests`` does for the selector loop (for the stock loop the
  composition is exactly CPython's, including UnixEventLoopTestsMixin's
  child watcher; see LoopSpec.child_watcher).
* The loop-independent classes (handles, timers, abstract loop, policies,
  get_event_loop, servers) run with the loop's policy installed.
  The per-selector classes (Select/Poll/EPoll/KqueueEventLoopTests) are
  replaced by EventLoopTests above.
"""

from test.test_asyncio import test_events as cpython
from test.test_asyncio import utils as test_utils

from ._binding import bind_mixins, bind_module

globals().update(bind_mixins(
    cpython, "EventLoopTests",
    cpython.EventLoopTestsMixin, cpython.SubprocessTestsMixin,
    test_utils.TestCase,
    # Python 3.14 removed child watchers and, with them, this mixin.
    child_watcher_mixin=getattr(cpython, "UnixEventLoopTestsMixin", None)))

globals().update(bind_module(cpython, include=[
    "HandleTests", "TimerTests", "AbstractEventLoopTests", "PolicyTests",
    "TestPyGetEventLoop", "TestCGetEventLoop",
    "TestServer", "TestAbstractServer",
]))
