"""Skip lists for the CPython conformance suite.

Keys are matched against test ids ``<cpython module>.<Class>.<method>``:

* a key without a dot matches the bare method name in any module/class,
  e.g. ``"test_create_connection*"``;
* a dotted key matches the full id, or ``<module>.<Class>`` for a whole
  class, e.g. ``"test_events.SubprocessTests"`` /
  ``"test_sock_lowlevel.SockTests.*"``.

fnmatch wildcards (``*``, ``?``, ``[...]``) are allowed.  Values are the
reason shown by pytest -- be specific: what is missing and which issue
brings it.

UVPY_SKIPS applies only to the uvpy binding.  STOCK_SKIPS applies only to
the stock ("asyncio") binding and is for environmental problems of the
machine running the suite -- never for asyncio behaviour.
test_skiplist.py fails if a key matches no bound test (stale entry).
"""

UVPY_SKIPS: dict[str, str] = {}

STOCK_SKIPS: dict[str, str] = {}
