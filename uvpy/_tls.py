"""TLS on uvpy: ssl= transports and loop.start_tls().

Design: asyncio's own sslproto.SSLProtocol, layered over uvpy's native
stream transport (TCPTransport, or UnixTransport for a Unix socket) exactly
as BaseEventLoop layers it over the selector transport. SSLProtocol runs
the records through the ssl module's MemoryBIO/SSLObject, so the crypto is
the OpenSSL that `ssl` itself links and everything set on the user's
SSLContext is honoured; behaviour, defaults and error messages are
asyncio's by construction.

In SSLProtocol's steady state (WRAPPED) the records bypass its Python
code: the native transport feeds received records through SSL_read on the
same SSL object and hands the plaintext to the app protocol, and the app
transport's write() runs SSL_write and queues the records on the stream
(bindings/tls.cc, invariant 6). The handshake, shutdown, errors and
flow-control decisions stay SSLProtocol's.

Only public or version-stable names of asyncio are used: SSLProtocol's
constructor (the same from 3.11 through 3.14), its _app_transport,
_incoming and _on_handshake_complete, the transport methods it calls
(write, close, pause/resume_reading, get_extra_info, _force_close, which
TCPTransport provides), and StreamReaderProtocol._stream_reader with
StreamReader._buffer (invariant 8).

Invariants:

1. A TLS connection is one native transport (a TCPTransport, or a
   UnixTransport for a Unix socket; registered under its fd, the socket's
   only owner) whose protocol is an SSLProtocol; the user sees the
   SSLProtocol's app transport. Closing either closes the socket.
2. A handshake that fails or times out closes the native transport (through
   SSLProtocol._fatal_error / _force_close), so the socket is closed, and
   the waiter carries asyncio's exception.
3. Accepted TLS connections complete their handshake without a task: the
   waiter's done callback closes the app transport on failure and reports
   in debug mode, as asyncio's _accept_connection2 does.
4. start_tls() pauses reading before swapping in the SSLProtocol, so no
   record reaches it before its connection_made (asyncio's order).
5. Every SSLProtocol of a loop receives into the loop's one 256 KiB read
   buffer instead of a buffer of its own (asyncio's SSLProtocol allocates
   and zeroes 256 KiB per connection: 250 MiB resident for 1000 idle
   connections). Sharing is safe because the native transport calls
   get_buffer(), recv() and buffer_updated() back to back on the loop
   thread, and buffer_updated() copies the bytes into the SSLObject's
   MemoryBIO before returning; a nested SSLProtocol (TLS in TLS) reads
   into the buffer only after the outer one has copied out of it.
6. Where _uvpy._tls_status() is "native", every SSLProtocol over a native
   transport is attached to its record path right after it becomes the
   transport's protocol (_attach), before any record can arrive, and its
   app transport is SSLProtocolTransport, whose write() is native. The
   native transport then calls _records_received() for every state but
   WRAPPED (and for a paused or BufferedProtocol app), after putting the
   records into self._incoming as buffer_updated() does first. Elsewhere
   (another Python, another OpenSSL) the Python path runs unchanged.
7. A failed handshake leaves no reference cycle through its exception
   (3.14's asyncio guarantees it: gh-159049): nothing that catches it needs
   gc to free the transport. start_tls() drops its waiter before it
   re-raises, and _break_handshake_cycle() does for older SSLProtocols
   what 3.14's does itself.
8. start_tls(server_side=True) over a StreamReaderProtocol moves what its
   StreamReader has buffered into the SSLProtocol's incoming BIO before the
   handshake starts (3.14's asyncio, gh-142352): a peer's ClientHello that
   arrived with, or before, the last plaintext read is the handshake's, not
   the application's. uvpy does it on every Python.
"""

from __future__ import annotations

import functools
import ssl
from asyncio import sslproto, streams

from . import _uvpy
from ._tcp import TCPTransport

SSLProtocolState = sslproto.SSLProtocolState

__all__ = ("TLSMixin",)


class SSLProtocolTransport(sslproto._SSLProtocolTransport):
    """asyncio's app transport; write() is native where available (6)."""

    __slots__ = ()


# Invariant 6: False where the native record path is unavailable; then
# _uvpy._tls_status() says why.
NATIVE = _uvpy._tls_install_write(SSLProtocolTransport)


class SSLProtocol(sslproto.SSLProtocol):
    """asyncio's SSLProtocol, receiving into its loop's shared buffer (5)
    and attached to the native record path (6)."""

    def __init__(self, loop, *args, **kwargs):
        super().__init__(loop, *args, **kwargs)
        self._ssl_buffer = loop._tls_read_buffer
        self._ssl_buffer_view = loop._tls_read_view

    def get_buffer(self, n):
        return self._ssl_buffer_view

    def _get_app_transport(self):
        if self._app_transport is None:
            if self._app_transport_created:
                raise RuntimeError("Creating _SSLProtocolTransport twice")
            self._app_transport = SSLProtocolTransport(self._loop, self)
            self._app_transport_created = True
        return self._app_transport

    def _on_handshake_complete(self, handshake_exc):
        super()._on_handshake_complete(handshake_exc)
        if handshake_exc is not None:
            _break_handshake_cycle(handshake_exc)
            # The frame above is this one's f_back: this one must let go too.
            handshake_exc = None

    def _records_received(self):
        """buffer_updated() after its first step, which the native record
        path took: the records are in self._incoming already."""
        state = self._state
        if state == SSLProtocolState.DO_HANDSHAKE:
            self._do_handshake()
        elif state == SSLProtocolState.WRAPPED:
            self._do_read()
        elif state == SSLProtocolState.FLUSHING:
            self._do_flush()
        elif state == SSLProtocolState.SHUTDOWN:
            self._do_shutdown()


def _break_handshake_cycle(exc):
    """Invariant 7: up to 3.13 SSLProtocol._on_handshake_complete() re-raises
    the handshake's exception from a frame whose handshake_exc still holds it,
    so exception, traceback and frame form a cycle that keeps the transport
    (reachable from that traceback) alive until the next gc run. Clearing the
    finished frame's locals breaks it, as 3.14's own `handshake_exc = None`
    does; the traceback keeps its frames and line numbers."""
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code is _ON_HANDSHAKE_COMPLETE:
            try:
                frame.clear()
            except RuntimeError:  # still running (re-entered): nothing to break yet
                pass
        tb = tb.tb_next


_ON_HANDSHAKE_COMPLETE = sslproto.SSLProtocol._on_handshake_complete.__code__


def _move_stream_buffer(protocol, ssl_protocol):
    """Invariant 8: a StreamReader's buffered bytes go to the handshake.

    StreamReaderProtocol._stream_reader and StreamReader._buffer (a
    bytearray) are the names 3.14's start_tls uses; both have been there,
    unchanged, since 3.8."""
    if not isinstance(protocol, streams.StreamReaderProtocol):
        return
    reader = protocol._stream_reader
    buffer = reader._buffer if reader is not None else None
    if buffer:
        ssl_protocol._incoming.write(buffer)
        buffer.clear()


def _attach(transport, ssl_protocol):
    """Invariant 6: the native record path, where the transport has one."""
    if NATIVE:
        attach = getattr(transport, "_tls_attach", None)
        if attach is not None:
            attach(ssl_protocol)


class TLSMixin:
    """_make_ssl_transport, accepted TLS connections and start_tls."""

    @functools.cached_property
    def _tls_read_buffer(self):
        return bytearray(sslproto.SSLProtocol.max_size)

    @functools.cached_property
    def _tls_read_view(self):
        return memoryview(self._tls_read_buffer)

    def _make_ssl_transport(self, rawsock, protocol, sslcontext, waiter=None, *,
                            server_side=False, server_hostname=None, extra=None, server=None,
                            ssl_handshake_timeout=None, ssl_shutdown_timeout=None,
                            peername=None, tcp=False, transport_type=TCPTransport):
        ssl_protocol = SSLProtocol(
            self, protocol, sslcontext, waiter, server_side, server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout)
        transport = transport_type(self, rawsock, ssl_protocol, None, extra, server, peername, tcp)
        _attach(transport, ssl_protocol)
        return ssl_protocol._app_transport

    def _serve_tls_connection(self, protocol_factory, conn, addr, server, tcp,
                              transport_type=TCPTransport):
        """An accepted connection of a TLS server; raises as TCPTransport() does."""
        ssl_protocol = self._tls_server_protocol(server, protocol_factory())
        transport = transport_type(self, conn, ssl_protocol, None, None, server, addr, tcp)
        _attach(transport, ssl_protocol)

    def _tls_server_protocol(self, server, protocol):
        """The SSLProtocol an accepted connection of a TLS server runs, over
        the app protocol; its handshake waiter settles the connection
        (invariant 3). The native accept step (bindings/acceptor.cc) calls
        it as its `wrap` and attaches the record path itself."""
        waiter = self.create_future()
        ssl_protocol = SSLProtocol(
            self, protocol, server._ssl_context, waiter, True, None,
            ssl_handshake_timeout=server._ssl_handshake_timeout,
            ssl_shutdown_timeout=server._ssl_shutdown_timeout)
        transport = ssl_protocol._app_transport  # connection_lost() lets go of it
        waiter.add_done_callback(lambda fut: self._tls_accepted(fut, transport, protocol))
        return ssl_protocol

    def _tls_accepted(self, waiter, transport, protocol):
        if waiter.cancelled():
            transport.close()
            return
        exc = waiter.exception()
        if exc is None:
            return
        transport.close()
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            raise exc
        if self.get_debug():
            self.call_exception_handler({
                "message": "Error on transport creation for incoming connection",
                "exception": exc,
                "protocol": protocol,
                "transport": transport,
            })

    async def start_tls(self, transport, protocol, sslcontext, *, server_side=False,
                        server_hostname=None, ssl_handshake_timeout=None,
                        ssl_shutdown_timeout=None):
        """Upgrade transport to TLS; return the transport protocol should use now."""
        if not isinstance(sslcontext, ssl.SSLContext):
            raise TypeError(
                f"sslcontext is expected to be an instance of ssl.SSLContext, "
                f"got {sslcontext!r}")
        if not getattr(transport, "_start_tls_compatible", False):
            raise TypeError(f"transport {transport!r} is not supported by start_tls()")

        waiter = self.create_future()
        ssl_protocol = SSLProtocol(
            self, protocol, sslcontext, waiter, server_side, server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
            call_connection_made=False)

        # Invariant 4: records wait until the SSLProtocol is connected.
        transport.pause_reading()
        if server_side:
            _move_stream_buffer(protocol, ssl_protocol)
        transport.set_protocol(ssl_protocol)
        _attach(transport, ssl_protocol)
        conmade_cb = self.call_soon(ssl_protocol.connection_made, transport)
        resume_cb = self.call_soon(transport.resume_reading)
        try:
            await waiter
        except BaseException:
            transport.close()
            conmade_cb.cancel()
            resume_cb.cancel()
            # Invariant 7: this frame is in the exception's traceback.
            waiter = None
            raise
        return ssl_protocol._app_transport

