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

test_skiplist.py fails if a key matches no bound test (stale entry), so
entries for tests that only newer CPythons have are added for those
versions only (the CPython tests bound are the running Python's own).
"""

import sys

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

if sys.version_info >= (3, 12):
    UVPY_SKIPS.update({
        "test_server.TestServer2.test_wait_closed_basic":
            "asserts 3.12.1's wait_closed(), which waits for the connections "
            "still attached when called on a closed server; uvpy's keeps "
            "3.11's on every version and returns at once (uvpy/_server.py, "
            "invariant 3)",
    })
if sys.version_info >= (3, 13):
    UVPY_SKIPS.update({
        "test_ssl.TestSSL.test_remote_shutdown_receives_trailing_data_on_slow_socket":
            "white-box: mock.patch.object() replaces write() on the transport "
            "instance; uvpy's TCPTransport is a native type whose methods cannot "
            "be replaced per instance",
        "test_sslproto.SslProtoHandshakeTests.test_connection_lost_when_busy":
            "white-box test of the selector loop: it calls "
            "loop._make_socket_transport() on a mock socket; uvpy has no such "
            "method (its transports are native)",
    })
if sys.version_info >= (3, 14):
    UVPY_SKIPS.update({
        "test_events.EventLoopTests.test_call_soon_threadsafe_handle_*":
            "asserts the handle is asyncio.events._ThreadSafeHandle, whose "
            "cancel() and cancelled() wait on a lock while the callback runs; "
            "uvpy's native Handle checks and runs under the GIL, with no such "
            "lock (the assertion fails in a thread, and the loop then never "
            "stops: skipped, not xfailed)",
    })

UVPY_XFAILS: dict[str, str] = {}

STOCK_SKIPS: dict[str, str] = {}
