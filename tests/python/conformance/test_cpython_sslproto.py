"""CPython's test_sslproto, bound to every loop.

* ``StartTLSTests`` -- the ``BaseStartTLS`` mixin (loop.start_tls,
  ssl= handshakes, timeouts and shutdowns over real sockets), bound as
  CPython binds it for its selector loop (``SelectorStartTLSTests``).
* ``SslProtoHandshakeTests`` -- asyncio.sslproto.SSLProtocol over mock
  transports, with the loop's policy installed; uvpy's TLS runs that very
  SSLProtocol, so it must hold on uvpy's loop as well.
"""

import unittest

from test.test_asyncio import test_sslproto as cpython

from ._binding import bind_mixins, bind_module

globals().update(bind_mixins(
    cpython, "StartTLSTests", cpython.BaseStartTLS, unittest.TestCase))

globals().update(bind_module(cpython, include=["SslProtoHandshakeTests"]))
