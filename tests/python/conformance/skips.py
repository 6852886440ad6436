"""Skip lists for the CPython conformance suite.

Keys are matched against test ids ``<cpython module>.<Class>.<method>``
(``<Class>`` is CPython's class name, or for mixin bindings the name given
to ``bind_mixins``, e.g. ``EventLoopTests``):

* a key without a dot matches the bare method name in any module/class,
  e.g. ``"test_create_connection*"``;
* a dotted key matches the full id, or ``<module>.<Class>`` for a whole
  class, e.g. ``"test_sock_lowlevel.SockTests"``.

fnmatch wildcards (``*``, ``?``, ``[...]``) are allowed.  Values are the
reason pytest shows -- be specific: what is missing and what brings it.

* UVPY_SKIPS  -- uvpy only: features not implemented yet.  Skipped.
* UVPY_XFAILS -- uvpy only: known bugs in implemented features.  Run as
  strict xfail: when the bug is fixed the test XPASSes, which fails the
  run until the entry is removed.
* STOCK_SKIPS -- stock loop only, for environmental problems of the machine
  running the suite; never for asyncio behaviour (the stock loop is the
  oracle).

test_skiplist.py fails if a key matches no bound test (stale entry).
"""

UVPY_SKIPS: dict[str, str] = {
    # --- test_events.EventLoopTests (EventLoopTestsMixin + SubprocessTestsMixin)
    "test_events.EventLoopTests.test_create_server_multiple_hosts_*":
        "white-box test of BaseEventLoop.create_server: it patches "
        "asyncio.base_events.socket so that binding to 1.2.3.4 / ::2 "
        "succeeds; uvpy's create_server (uvpy/_tcp.py) creates real sockets "
        "and gets EADDRNOTAVAIL",
    "test_events.EventLoopTests.test_timeout_rounding":
        "white-box test of the selector loop: it patches "
        "BaseEventLoop._run_once to count iterations; uvpy's run loop is "
        "native and has no _run_once (uvloop skips it too)",
}

UVPY_XFAILS: dict[str, str] = {}

STOCK_SKIPS: dict[str, str] = {}
