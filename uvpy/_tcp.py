"""TCP on uvpy: TCPTransport and the loop's create_connection /
create_server / connect_accepted_socket.

TCPTransport's I/O and flow control are native (_uvpy.TransportCore over
loop/stream.h, see bindings/transport.cc); this module adds the cold
parts: construction, repr, the unclosed-transport warning and error
reporting. TransportCore already derives from asyncio.Transport.

Invariants:

1. A transport is registered in loop._transports under its fd from
   construction on, so add_reader()/sock_*() refuse that fd while the
   transport is open (asyncio's rule). The registry holds weak references.
2. connection_made() runs before the first data_received(), and a
   create_connection() waiter completes only after connection_made(): all
   three are call_soon'd in that order at construction.
3. Accepted connections are made into transports synchronously in the
   accept callback (asyncio goes through a task); protocol_factory() errors
   close the accepted socket and are reported in debug mode, as asyncio
   reports them. For a TCP or Unix server, with TLS or without, that step
   is native, TCPTransport.__init__ included (_uvpy.Acceptor,
   bindings/acceptor.cc): its transports own a bare fd until `_sock` is
   first read, and Python runs only for debug mode (_accept_connection),
   accept errors (_accept_failed), protocol_factory() and, for TLS, the
   SSLProtocol's construction (_tls_server_protocol).
4. ssl= is validated exactly as asyncio does; a TLS connection is a
   TCPTransport under asyncio's SSLProtocol (loop._make_ssl_transport and
   start_tls, see _tls.py).
5. Unix stream connections (uvpy/_unix.py) use the same native transport
   through the UnixTransport subclass, with TLS or without; the accept path
   picks the class by the listener's family.
"""

from __future__ import annotations

import collections.abc
import errno
import functools
import itertools
import os
import socket
import sys
import warnings
import weakref
from asyncio import base_events, constants, futures, staggered, tasks, trsock
from asyncio.log import logger

from . import _uvpy
from ._flow import report_fatal_error
from ._server import Server

__all__ = ("TCPTransport", "TCPMixin")

_READ = _uvpy.READABLE
_IP = frozenset({socket.AF_INET, socket.AF_INET6})
_NATIVE_ACCEPT = _IP | {socket.AF_UNIX}  # see _start_serving

_LAZY_EXTRA = frozenset({"socket", "sockname"})


def _peername_of(sock):
    try:
        return sock.getpeername()
    except OSError:
        return None


class TCPTransport(_uvpy.TransportCore):
    """A TCP connection as an asyncio.Transport (native I/O path)."""

    # No per-instance __dict__ (as uvloop's transports have none): its inline
    # values were ~64 bytes of every idle connection. Weak references stay:
    # loop._transports holds the transports weakly, as asyncio does.
    __slots__ = ("__weakref__",)

    # loop.sendfile() sends with sendfile(2) once the write queue drains
    # (uvpy/_sendfile.py).
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE
    _start_tls_compatible = True
    # Whether the socket may be an IP one that wants TCP_NODELAY.
    _maybe_ip = True

    def __init__(self, loop, sock, protocol, waiter=None, extra=None, server=None, peername=None,
                 tcp=False):
        # "socket" and "sockname" are made on first use (_materialize_extra):
        # an idle connection of a big server never asks, and the two objects
        # and the syscall are a tenth of its memory. The peer's address
        # comes with accept() anyway. With extra=None not even the extras
        # dict is made until asked for more than "peername" (the native
        # `_extra` makes it on first use).
        if extra is None:
            if peername is None:
                peername = _peername_of(sock)
            super().__init__(loop, sock, protocol, None, server, peername)
        else:
            if "peername" not in extra:
                extra["peername"] = _peername_of(sock)
            super().__init__(loop, sock, protocol, extra, server)
        if server is not None:
            server._attach()
        loop._transports[sock.fileno()] = weakref.ref(self)
        if tcp:  # known to be IP TCP (accepted from an IP TCP listener)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        elif self._maybe_ip:
            base_events._set_nodelay(sock)
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(self._start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def __repr__(self):
        info = [type(self).__name__]
        if self._sock_closed:  # (reading _sock would make a lazy socket)
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={self._sock_fd}")
        loop = self._loop
        if loop is not None and not loop.is_closed():
            info.append("read=polling" if self._read_active else "read=idle")
            state = "polling" if self._write_active else "idle"
            info.append(f"write=<{state}, bufsize={self.get_write_buffer_size()}>")
        return "<{}>".format(" ".join(info))

    def get_extra_info(self, name, default=None):
        if name == "peername" and not self._extra_made:
            return self._peername
        extra = self._extra
        if name in extra:
            return extra[name]
        if name in _LAZY_EXTRA:
            self._materialize_extra()
            return extra.get(name, default)
        return default

    def _materialize_extra(self):
        # Also called by the native core just before it closes the socket,
        # so the values outlive it as asyncio's eager ones do.
        extra = self._extra
        if "socket" in extra:
            return
        sock = self._sock  # an accepted connection's is made here, on first use
        if sock is None:
            kind = self._lazy_kind
            if kind is not None:
                # Closed before anything asked for its socket object: a
                # closed socket of the same kind stands in for it, as
                # asyncio's closed one would (fileno -1).
                stand_in = socket.socket(*kind)
                stand_in.close()
                extra["socket"] = trsock.TransportSocket(stand_in)
            return
        extra["socket"] = trsock.TransportSocket(sock)
        try:
            extra["sockname"] = sock.getsockname()
        except OSError:
            extra["sockname"] = None

    def __del__(self, _warn=warnings.warn):
        if not self._sock_closed:
            sock = self._sock
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            sock.close()

    def _fatal_error(self, exc, message="Fatal error on transport"):
        # Called by the native core for I/O errors and failing protocol
        # callbacks; OSErrors are the peer's doing and only logged in debug.
        report_fatal_error(self, exc, message, isinstance(exc, OSError))
        self._force_close(exc)


def _check_ssl_timeouts(ssl, handshake_timeout, shutdown_timeout):
    if handshake_timeout is not None and not ssl:
        raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
    if shutdown_timeout is not None and not ssl:
        raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")


def bind_listener(sock, address, reuse_address, reuse_port):
    """Bind sock (a new IP socket) for listening as create_server does: the
    socket options it sets, and its message for a failed bind. Also used
    by uvpy.serve(), which binds before any loop runs."""
    if reuse_address:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, True)
    if reuse_port:
        base_events._set_reuseport(sock)
    if sock.family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
        # One socket per family: no IPv4-mapped dual stack.
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, True)
    try:
        sock.bind(address)
    except OSError as err:
        raise OSError(err.errno, "error while attempting to bind on address "
                                 f"{address!r}: {err.strerror.lower()}") from None


def _stream_socket_required(sock):
    if sock.type != socket.SOCK_STREAM:
        raise ValueError(f"A Stream Socket was expected, got {sock!r}")


class TCPMixin:
    """create_connection / create_server / connect_accepted_socket."""

    @functools.cached_property
    def _transports(self):
        # fd -> weakref.ref(transport). asyncio keeps a WeakValueDictionary;
        # its Python-level KeyedRef and removal callback cost ~1 µs per
        # connection. A plain ref costs neither: a dead one is simply
        # overwritten when its fd number comes back (at most one per fd).
        return {}

    # -- connecting -------------------------------------------------------------------

    async def create_connection(self, protocol_factory, host=None, port=None, *, ssl=None,
                                family=0, proto=0, flags=0, sock=None, local_addr=None,
                                server_hostname=None, ssl_handshake_timeout=None,
                                ssl_shutdown_timeout=None, happy_eyeballs_delay=None,
                                interleave=None):
        """Connect to host:port (or use sock); return (transport, protocol)."""
        if server_hostname is not None and not ssl:
            raise ValueError("server_hostname is only meaningful with ssl")
        if server_hostname is None and ssl:
            # host is the name to verify; server_hostname="" skips the check.
            if not host:
                raise ValueError("You must set server_hostname when using ssl without a host")
            server_hostname = host
        _check_ssl_timeouts(ssl, ssl_handshake_timeout, ssl_shutdown_timeout)
        if sock is not None:
            base_events._check_ssl_socket(sock)
        if happy_eyeballs_delay is not None and interleave is None:
            interleave = 1  # alternate address families, RFC 8305

        if host is not None or port is not None:
            if sock is not None:
                raise ValueError("host/port and sock can not be specified at the same time")
            sock = await self._connect_any(host, port, family, proto, flags, local_addr,
                                           happy_eyeballs_delay, interleave)
        elif sock is None:
            raise ValueError("host and port was not specified and no sock specified")
        else:
            _stream_socket_required(sock)

        transport, protocol = await self._create_connection_transport(
            sock, protocol_factory, ssl, server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout)
        if self.get_debug():
            logger.debug("%r connected to %s:%r: (%r, %r)",
                         transport.get_extra_info("socket"), host, port, transport, protocol)
        return transport, protocol

    async def _connect_any(self, host, port, family, proto, flags, local_addr, delay,
                           interleave):
        """A socket connected to the first address of host:port that answers."""
        infos = await self._ensure_resolved((host, port), family=family,
                                            type=socket.SOCK_STREAM, proto=proto, flags=flags)
        if not infos:
            raise OSError("getaddrinfo() returned empty list")
        local_infos = None
        if local_addr is not None:
            local_infos = await self._ensure_resolved(local_addr, family=family,
                                                      type=socket.SOCK_STREAM, proto=proto,
                                                      flags=flags)
            if not local_infos:
                raise OSError("getaddrinfo() returned empty list")
        if interleave:
            infos = base_events._interleave_addrinfos(infos, interleave)

        errors = []  # one list per attempt, so staggered attempts don't mix
        sock = None
        if delay is None:
            for info in infos:
                try:
                    sock = await self._connect_one(errors, info, local_infos)
                    break
                except OSError:
                    continue
        else:
            attempts = (functools.partial(self._connect_one, errors, info, local_infos)
                        for info in infos)
            sock, _, _ = await staggered.staggered_race(attempts, delay, loop=self)
        if sock is not None:
            return sock

        flat = [exc for attempt in errors for exc in attempt]
        try:
            if len(flat) == 1 or all(str(exc) == str(flat[0]) for exc in flat):
                raise flat[0]
            raise OSError("Multiple exceptions: {}".format(", ".join(str(e) for e in flat)))
        finally:
            flat = errors = None  # the tracebacks reference this frame

    async def _connect_one(self, errors, info, local_infos):
        """Create, bind (to a local address of the same family) and connect."""
        mine = []
        errors.append(mine)
        family, type_, proto, _, address = info
        sock = None
        try:
            sock = socket.socket(family=family, type=type_, proto=proto)
            sock.setblocking(False)
            if local_infos is not None:
                self._bind_local(sock, family, local_infos, mine)
            await self.sock_connect(sock, address)
            return sock
        except OSError as exc:
            mine.append(exc)
            if sock is not None:
                sock.close()
            raise
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        finally:
            errors = mine = None

    @staticmethod
    def _bind_local(sock, family, local_infos, mine):
        for lfamily, _, _, _, laddr in local_infos:
            if lfamily != family:
                continue
            try:
                sock.bind(laddr)
                return
            except OSError as exc:
                mine.append(OSError(exc.errno, f"error while attempting to bind on address "
                                               f"{laddr!r}: {exc.strerror.lower()}"))
        if mine:
            raise mine.pop()
        raise OSError(f"no matching local address with {family=} found")

    async def _create_connection_transport(self, sock, protocol_factory, ssl=None,
                                           server_hostname=None, server_side=False,
                                           ssl_handshake_timeout=None,
                                           ssl_shutdown_timeout=None,
                                           transport_type=TCPTransport):
        sock.setblocking(False)
        protocol = protocol_factory()
        waiter = self.create_future()
        if ssl:
            sslcontext = None if isinstance(ssl, bool) else ssl
            transport = self._make_ssl_transport(
                sock, protocol, sslcontext, waiter, server_side=server_side,
                server_hostname=server_hostname, ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout, transport_type=transport_type)
        else:
            transport = transport_type(self, sock, protocol, waiter)
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        return transport, protocol

    async def connect_accepted_socket(self, protocol_factory, sock, *, ssl=None,
                                      ssl_handshake_timeout=None, ssl_shutdown_timeout=None):
        """Wrap an already accepted connection; return (transport, protocol)."""
        _stream_socket_required(sock)
        _check_ssl_timeouts(ssl, ssl_handshake_timeout, ssl_shutdown_timeout)
        base_events._check_ssl_socket(sock)
        transport, protocol = await self._create_connection_transport(
            sock, protocol_factory, ssl, "", server_side=True,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout)
        if self.get_debug():
            logger.debug("%r handled: (%r, %r)", transport.get_extra_info("socket"),
                         transport, protocol)
        return transport, protocol

    # -- serving ------------------------------------------------------------------------

    async def create_server(self, protocol_factory, host=None, port=None, *,
                            family=socket.AF_UNSPEC, flags=socket.AI_PASSIVE, sock=None,
                            backlog=100, ssl=None, reuse_address=None, reuse_port=None,
                            keep_alive=None, ssl_handshake_timeout=None,
                            ssl_shutdown_timeout=None, start_serving=True):
        """Listen on host:port (a name, a list of names, or all interfaces)."""
        if isinstance(ssl, bool):
            raise TypeError("ssl argument must be an SSLContext or None")
        if ssl_handshake_timeout is not None and ssl is None:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        if ssl_shutdown_timeout is not None and ssl is None:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
        if sock is not None:
            base_events._check_ssl_socket(sock)
        # A listener made elsewhere may be shared with other processes (a
        # pre-fork parent's, uvpy.serve's bind=): see _start_serving.
        accept_ahead = sock is None

        if host is not None or port is not None:
            if sock is not None:
                raise ValueError("host/port and sock can not be specified at the same time")
            if reuse_address is None:
                reuse_address = os.name == "posix" and sys.platform != "cygwin"
            sockets = await self._bind_listeners(host, port, family, flags, reuse_address,
                                                 reuse_port)
        elif sock is None:
            raise ValueError("Neither host/port nor sock were specified")
        else:
            _stream_socket_required(sock)
            sockets = [sock]

        for sock in sockets:
            sock.setblocking(False)
            if keep_alive:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)
        server = Server(self, sockets, protocol_factory, backlog, ssl, ssl_handshake_timeout,
                        ssl_shutdown_timeout, accept_ahead=accept_ahead)
        if start_serving:
            server._start_serving()
            await tasks.sleep(0)  # let the accept watchers settle, as asyncio
        if self.get_debug():
            logger.info("%r is serving", server)
        return server

    async def _bind_listeners(self, host, port, family, flags, reuse_address, reuse_port):
        if host == "":
            hosts = [None]
        elif isinstance(host, str) or not isinstance(host, collections.abc.Iterable):
            hosts = [host]
        else:
            hosts = host

        async def resolve(h):
            infos = await self._ensure_resolved((h, port), family=family,
                                                type=socket.SOCK_STREAM, flags=flags)
            if not infos:
                raise OSError(f"getaddrinfo({h!r}) returned empty list")
            return infos

        resolved = await tasks.gather(*[resolve(h) for h in hosts])
        # Each address once, even when several names resolve to it.
        infos = set(itertools.chain.from_iterable(resolved))
        sockets = []
        try:
            for af, socktype, proto, _, sa in infos:
                try:
                    sock = socket.socket(af, socktype, proto)
                except OSError:
                    if self.get_debug():
                        logger.warning("create_server() failed to create socket.socket(%r, %r, %r)",
                                       af, socktype, proto, exc_info=True)
                    continue
                sockets.append(sock)
                bind_listener(sock, sa, reuse_address, reuse_port)
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        return sockets

    def _start_serving(self, protocol_factory, sock, server, backlog=100):
        if sock.fileno() < 0:
            return  # an accept retry (EMFILE) outlived server.close()
        # An IP or Unix listener's reader accepts through the loop
        # (_accept), which lets the io_uring backend accept ahead with one
        # multishot accept; any other kind keeps socket.accept() on
        # readiness. kind: what socket() needs to wrap an accepted fd
        # without asking the kernel (and without the socket module's enum
        # conversions). Only TCP among IP: an accepted socket of this kind
        # gets TCP_NODELAY as is (an SCTP stream listener, say, keeps
        # socket.accept()).
        kind = None
        if sock.family in _NATIVE_ACCEPT and sock.proto in (0, socket.IPPROTO_TCP):
            kind = (int(sock.family), int(sock.type), sock.proto)
        # IO_ACCEPTS lets the io_uring backend accept ahead of the reader;
        # the connections it holds are closed when the listener closes. On
        # a listener that other processes share that would lose
        # connections they could have taken from the kernel's queue, so a
        # listener the loop did not make (create_server(sock=...)) is
        # accepted from on readiness, one accept4() per connection taken.
        accepts = _uvpy.IO_ACCEPTS if server._accept_ahead else 0
        if kind is not None:
            # The whole step per connection is native (bindings/acceptor.cc);
            # it comes back here for debug mode and accept errors.
            wrap = None
            if server._ssl_context is not None:
                wrap = functools.partial(self._tls_server_protocol, server)
            callback = _uvpy.Acceptor(self, sock, protocol_factory, server, backlog, kind,
                                      self._stream_transport_type(sock.family), wrap)
            self._watch(sock.fileno(), _READ, callback, (), accepts)
            return
        self._watch(sock.fileno(), _READ, self._accept_connection,
                    (protocol_factory, sock, server, backlog, kind),
                    accepts if kind is not None else 0)

    def _stop_serving(self, sock):
        self._unwatch(sock.fileno(), _READ)
        sock.close()

    def _accept_connection(self, protocol_factory, sock, server, backlog, kind=None):
        # One wakeup may find several connections queued; take up to backlog.
        lfd = sock.fileno()
        for _ in range(backlog):
            try:
                if kind is not None:
                    got = self._accept(lfd)
                    if got is None:
                        return  # none left (no BlockingIOError to build and catch)
                    fd, addr = got
                    try:
                        conn = socket.socket(*kind, fileno=fd)
                    except BaseException:
                        os.close(fd)  # not wrapped yet: nobody else would close it
                        raise
                else:
                    conn, addr = sock.accept()
            except OSError as exc:
                self._accept_failed(exc, protocol_factory, sock, server, backlog)
                return
            if self.get_debug():
                logger.debug("%r got a new connection from %r: %r", server, addr, conn)
            if kind is not None:
                self._serve_connection(protocol_factory, conn, addr, server, kind[0] in _IP,
                                       self._stream_transport_type(kind[0]))
            else:
                self._serve_connection(protocol_factory, conn, addr, server, False,
                                       self._stream_transport_type(sock.family))

    def _accept_failed(self, exc, protocol_factory, sock, server, backlog):
        """accept() failed with exc (an OSError, or its errno from the native
        accept step): as asyncio's _accept_connection handles it."""
        if isinstance(exc, int):
            exc = OSError(exc, os.strerror(exc))  # the subclass for its errno
        if isinstance(exc, (BlockingIOError, InterruptedError, ConnectionAbortedError)):
            return
        if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            raise exc  # reported by the loop's exception handler
        # Out of resources: Linux keeps reporting the listener as readable,
        # so stop watching it for a while.
        self.call_exception_handler({
            "message": "socket.accept() out of system resource",
            "exception": exc,
            "socket": trsock.TransportSocket(sock),
        })
        self._unwatch(sock.fileno(), _READ)
        self.call_later(constants.ACCEPT_RETRY_DELAY, self._start_serving,
                        protocol_factory, sock, server, backlog)

    def _stream_transport_type(self, family):
        """The transport class for a stream socket of this family (see _unix)."""
        return TCPTransport

    def _serve_connection(self, protocol_factory, conn, addr, server, tcp=False,
                          transport_type=TCPTransport):
        protocol = None
        try:
            conn.setblocking(False)
            if server._ssl_context is not None:
                self._serve_tls_connection(protocol_factory, conn, addr, server, tcp,
                                           transport_type)
            else:
                protocol = protocol_factory()
                transport_type(self, conn, protocol, None, None, server, addr, tcp)
        except (SystemExit, KeyboardInterrupt):
            conn.close()
            raise
        except BaseException as exc:
            conn.close()
            if self.get_debug():
                context = {
                    "message": "Error on transport creation for incoming connection",
                    "exception": exc,
                }
                if protocol is not None:
                    context["protocol"] = protocol
                self.call_exception_handler(context)
