"""Datagram sockets on uvpy: DatagramTransport and the loop's
create_datagram_endpoint, for UDP over IPv4/IPv6 and Unix datagram sockets.

The loop's reader (Loop._watch) calls _read_ready, which takes whole
datagrams: with recvfrom() on readiness on libuv; on io_uring from the
backend, which receives ahead with a multishot RECVMSG (the reader is an
IO_DATAGRAMS one: datagram.cc, invariant 7; docs/io_uring.md). sendto()
sends at once and queues on EAGAIN, and the loop's writer drains the
queue. The
semantics are those of asyncio's selector datagram transport, which is the
oracle for every rule below.

The hot paths are native (bindings/datagram.cc, DatagramCore): _read_ready
(recvfrom and datagram_received, with the senders' address objects cached)
and sendto() when it can send at once. This class keeps the rest and the
cases the native code hands back: _sendto_slow() (every check and message
of asyncio's sendto), _sendto_blocked() (EAGAIN) and _read_ready_py()
(address families the native reader does not convert).

Invariants:

1. One datagram received is one datagram_received(): the loop never
   merges, splits or drops a datagram it read. Datagrams the io_uring
   backend received ahead of a pause_reading() are held and delivered
   first when reading resumes; after close() or abort(), never. A receive error (e.g. ECONNREFUSED from an
   ICMP error on a connected socket) goes to error_received() and reading
   carries on; a non-OSError is fatal.
2. A datagram is sent whole or queued whole, in order: sendto() only sends
   directly when the queue is empty, and the writer sends the queue front
   first. A send error other than EAGAIN goes to error_received() and the
   datagram is dropped, as asyncio drops it.
3. The reader is installed iff reading is on (connection_made() ran, not
   paused, not closing); the writer iff the queue is non-empty and the
   transport not lost.
4. close() stops reading at once and loses the connection when the queue
   has drained; abort() and fatal errors drop the queue. connection_lost()
   runs once, from call_soon, and only then is the socket closed.
5. Write-buffer size counts each queued datagram's payload plus a per-
   datagram header (8 bytes from Python 3.13 on, none before, as the stock
   loop of the running version counts); pause_writing()/resume_writing()
   fire once per crossing of the high/low-water marks.
6. Zero-length datagrams are sent from Python 3.13 on and ignored before,
   as the stock loop of the running version does.
"""

from __future__ import annotations

import collections
import os
import socket
import stat
import sys
import warnings
import weakref
from asyncio import base_events, constants, futures, transports, trsock
from asyncio.log import logger

from . import _uvpy
from ._flow import ReadControl, WriteFlowControl, report_fatal_error

__all__ = ("DatagramTransport", "DatagramMixin")

# asyncio's words for a socket that is not a datagram socket (3.13 renamed them).
_DGRAM_EXPECTED = ("A datagram socket was expected" if sys.version_info >= (3, 13)
                   else "A UDP Socket was expected")

_READ = _uvpy.READABLE
_WRITE = _uvpy.WRITABLE
_DATAGRAMS = _uvpy.IO_DATAGRAMS
# The families DatagramCore converts sender addresses of; others read in
# Python (_read_ready_py), so their reader must stay a plain one.
_NATIVE_FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)

_NEW_SENDTO = sys.version_info >= (3, 13)  # invariants 5 and 6
_HEADER_SIZE = 8 if _NEW_SENDTO else 0

# Datagrams taken per readiness event before yielding to other callbacks,
# as the native reader takes them (datagram.cc, kReadsPerWakeup).
_READS_PER_WAKEUP = 64


class DatagramTransport(_uvpy.DatagramCore, ReadControl, WriteFlowControl, transports.Transport,
                        transports.DatagramTransport):
    """A datagram socket as an asyncio.DatagramTransport.

    Also an asyncio.Transport, as the stock loop's datagram transport is
    (its stream-only write methods raise NotImplementedError there too).
    _protocol, _buffer, _address, _conn_lost, _sock_fd, _family, _reading
    and _connected are DatagramCore's fields, shared with the native code.
    """

    max_size = 256 * 1024  # the largest datagram recvfrom() takes

    def __init__(self, loop, sock, protocol, address=None, waiter=None, extra=None):
        super().__init__(extra)
        self._extra["socket"] = trsock.TransportSocket(sock)
        try:
            self._extra["sockname"] = sock.getsockname()
        except OSError:
            self._extra["sockname"] = None
        if "peername" not in self._extra:
            try:
                self._extra["peername"] = sock.getpeername()
            except OSError:
                self._extra["peername"] = None
        self._loop = loop
        self._sock = sock
        self._sock_fd = sock.fileno()
        self._family = sock.family
        self._connected = bool(self._extra["peername"])  # send(), not sendto()
        self._ring = loop.backend == "io_uring" and sock.family in _NATIVE_FAMILIES
        self._protocol = None
        self._protocol_connected = False
        self.set_protocol(protocol)
        self._address = address
        self._buffer = collections.deque()
        self._buffer_size = 0
        self._conn_lost = 0  # set when connection_lost() is scheduled
        self._closing = False
        self._init_read_control(self._sock_fd)
        self._writing = False  # the writer is installed
        self._init_flow_control()
        loop._transports[self._sock_fd] = weakref.ref(self)
        loop.call_soon(self._protocol.connection_made, self)
        # Reading starts only after connection_made() (invariant 3).
        loop.call_soon(self._start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def __repr__(self):
        info = [type(self).__name__]
        if self._sock is None:
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={self._sock_fd}")
        if self._loop is not None and not self._loop.is_closed():
            info.append("read=polling" if self._reading else "read=idle")
            state = "polling" if self._writing else "idle"
            info.append(f"write=<{state}, bufsize={self.get_write_buffer_size()}>")
        return "<{}>".format(" ".join(info))

    def __del__(self, _warn=warnings.warn):
        if self._sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._sock.close()

    # -- the loop's watchers ---------------------------------------------------

    def _start_writing(self):
        if not self._writing:
            self._loop._watch(self._sock_fd, _WRITE, self._sendto_ready, ())
            self._writing = True

    def _stop_writing(self):
        if self._writing:
            self._writing = False
            self._loop._unwatch(self._sock_fd, _WRITE)

    def _start_reading(self):
        if self._reading or not self.is_reading():
            return
        self._loop._watch(self._sock_fd, _READ, self._read_ready, (),
                          _DATAGRAMS if self._ring else 0)
        self._reading = True
        if self._held_datagrams():
            # Received ahead before a pause: they go first, without waiting
            # for the socket to become readable again.
            self._loop.call_soon(self._read_ready)

    def _stop_reading(self):
        if self._reading:
            self._reading = False
            self._hold_read_ahead()  # while the reader is still installed
            self._loop._unwatch(self._sock_fd, _READ)

    # -- asyncio.BaseTransport / ReadTransport -----------------------------------

    def set_protocol(self, protocol):
        self._protocol = protocol
        self._protocol_connected = True

    def get_protocol(self):
        return self._protocol

    def is_closing(self):
        return self._closing

    def close(self):
        if self._closing:
            return
        self._closing = True
        self._stop_reading()
        if not self._buffer:
            self._conn_lost += 1
            self._stop_writing()
            self._loop.call_soon(self._call_connection_lost, None)

    def abort(self):
        self._force_close(None)

    # -- flow control (_flow.WriteFlowControl) ---------------------------------------

    def get_write_buffer_size(self):
        return self._buffer_size

    # -- receiving -------------------------------------------------------------------

    def _read_ready_py(self):
        """_read_ready for families DatagramCore does not convert addresses of."""
        for _ in range(_READS_PER_WAKEUP):
            if self._conn_lost or not self._reading:
                return
            try:
                data, addr = self._sock.recvfrom(self.max_size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._protocol.error_received(exc)
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal read error on datagram transport")
                return
            self._count(False, len(data))
            self._protocol.datagram_received(data, addr)

    # -- sending ---------------------------------------------------------------------

    def _sendto_slow(self, data, addr=None):
        """asyncio's sendto(), for each case DatagramCore.sendto() does not take."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, "
                            f"not {type(data).__name__!r}")
        if not data and not _NEW_SENDTO:
            return

        if self._address:
            if addr not in (None, self._address):
                raise ValueError(f"Invalid address: must be None or {self._address}")
            addr = self._address

        if self._conn_lost and self._address:
            if self._conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning("socket.send() raised exception.")
            self._conn_lost += 1
            return

        if not self._buffer:
            try:
                if self._connected:
                    self._sock.send(data)
                else:
                    self._sock.sendto(data, addr)
                self._count(True, memoryview(data).nbytes)
                return
            except (BlockingIOError, InterruptedError):
                self._start_writing()
            except OSError as exc:
                self._protocol.error_received(exc)
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal write error on datagram transport")
                return

        self._queue(data, addr)

    def _sendto_blocked(self, data, addr):
        """DatagramCore.sendto() got EAGAIN: the writer takes it from here."""
        self._start_writing()
        self._queue(data, addr)

    def _queue(self, data, addr):
        self._buffer.append((bytes(data), addr))  # immutable from here on
        self._buffer_size += len(data) + _HEADER_SIZE
        self._maybe_pause_protocol()

    def _sendto_ready(self):
        buffer = self._buffer
        while buffer:
            data, addr = buffer.popleft()
            self._buffer_size -= len(data) + _HEADER_SIZE
            try:
                if self._connected:
                    self._sock.send(data)
                else:
                    self._sock.sendto(data, addr)
                self._count(True, len(data))
            except (BlockingIOError, InterruptedError):
                buffer.appendleft((data, addr))  # whole, on the next wakeup
                self._buffer_size += len(data) + _HEADER_SIZE
                break
            except OSError as exc:
                self._protocol.error_received(exc)
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal write error on datagram transport")
                return

        self._maybe_resume_protocol()  # may queue more
        if not buffer:
            self._stop_writing()
            if self._closing:
                self._call_connection_lost(None)

    # -- ending ----------------------------------------------------------------------

    def _fatal_error(self, exc, message="Fatal error on transport"):
        report_fatal_error(self, exc, message, isinstance(exc, OSError))
        self._force_close(exc)

    def _force_close(self, exc):
        if self._conn_lost:
            return
        if self._buffer:
            self._buffer.clear()
            self._buffer_size = 0
            self._stop_writing()
        if not self._closing:
            self._closing = True
            self._stop_reading()
        self._conn_lost += 1
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc):
        try:
            if self._protocol_connected:
                self._protocol.connection_lost(exc)
        finally:
            self._stop_writing()
            self._sock.close()
            self._sock = None
            self._protocol = None
            self._loop = None


class DatagramMixin:
    """create_datagram_endpoint (asyncio's checks and messages)."""

    async def create_datagram_endpoint(self, protocol_factory, local_addr=None, remote_addr=None,
                                       *, family=0, proto=0, flags=0, reuse_port=None,
                                       allow_broadcast=None, sock=None):
        """Create a datagram endpoint; return (transport, protocol)."""
        if sock is not None:
            if sock.type != socket.SOCK_DGRAM:
                raise ValueError(f"{_DGRAM_EXPECTED}, got {sock!r}")
            if (local_addr or remote_addr or family or proto or flags or reuse_port
                    or allow_broadcast):
                opts = dict(local_addr=local_addr, remote_addr=remote_addr, family=family,
                            proto=proto, flags=flags, reuse_port=reuse_port,
                            allow_broadcast=allow_broadcast)
                problems = ", ".join(f"{k}={v}" for k, v in opts.items() if v)
                raise ValueError("socket modifier keyword arguments can not be used "
                                 f"when sock is specified. ({problems})")
            sock.setblocking(False)
            r_addr = None
        else:
            pairs = await self._datagram_address_pairs(local_addr, remote_addr, family, proto,
                                                       flags)
            sock, r_addr = await self._datagram_socket(pairs, local_addr, remote_addr,
                                                       reuse_port, allow_broadcast)

        protocol = protocol_factory()
        waiter = self.create_future()
        transport = DatagramTransport(self, sock, protocol, r_addr, waiter)
        if self.get_debug():
            if local_addr:
                logger.info("Datagram endpoint local_addr=%r remote_addr=%r created: (%r, %r)",
                            local_addr, remote_addr, transport, protocol)
            else:
                logger.debug("Datagram endpoint remote_addr=%r created: (%r, %r)",
                             remote_addr, transport, protocol)
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        return transport, protocol

    async def _datagram_address_pairs(self, local_addr, remote_addr, family, proto, flags):
        """[((family, proto), (local, remote))] to try, in order."""
        if not (local_addr or remote_addr):
            if family == 0:
                raise ValueError("unexpected address family")
            return [((family, proto), (None, None))]
        if family == socket.AF_UNIX:
            for addr in (local_addr, remote_addr):
                if addr is not None and not isinstance(addr, str):
                    raise TypeError("string is expected")
            if local_addr and local_addr[0] not in (0, "\x00"):
                try:
                    if stat.S_ISSOCK(os.stat(local_addr).st_mode):
                        os.remove(local_addr)
                except FileNotFoundError:
                    pass
                except OSError as err:
                    logger.error("Unable to check or remove stale UNIX socket %r: %r",
                                 local_addr, err)
            return [((family, proto), (local_addr, remote_addr))]

        addr_infos = {}  # (family, proto) -> [local, remote], in resolution order
        for idx, addr in ((0, local_addr), (1, remote_addr)):
            if addr is None:
                continue
            if not (isinstance(addr, tuple) and len(addr) == 2):
                raise TypeError("2-tuple is expected")
            infos = await self._ensure_resolved(addr, family=family, type=socket.SOCK_DGRAM,
                                                proto=proto, flags=flags)
            if not infos:
                raise OSError("getaddrinfo() returned empty list")
            for fam, _, pro, _, address in infos:
                addr_infos.setdefault((fam, pro), [None, None])[idx] = address
        # Each (family, proto) must have an address for each side asked for.
        pairs = [(key, pair) for key, pair in addr_infos.items()
                 if not ((local_addr and pair[0] is None) or (remote_addr and pair[1] is None))]
        if not pairs:
            raise ValueError("can not get address information")
        return pairs

    async def _datagram_socket(self, pairs, local_addr, remote_addr, reuse_port,
                               allow_broadcast):
        """The first socket that binds and connects as asked, and its remote address."""
        exceptions = []
        for (family, proto), (local_address, remote_address) in pairs:
            sock = None
            r_addr = None
            try:
                sock = socket.socket(family=family, type=socket.SOCK_DGRAM, proto=proto)
                if reuse_port:
                    base_events._set_reuseport(sock)
                if allow_broadcast:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                sock.setblocking(False)
                if local_addr:
                    sock.bind(local_address)
                if remote_addr:
                    if not allow_broadcast:
                        await self.sock_connect(sock, remote_address)
                    r_addr = remote_address
            except OSError as exc:
                if sock is not None:
                    sock.close()
                exceptions.append(exc)
            except BaseException:
                if sock is not None:
                    sock.close()
                raise
            else:
                return sock, r_addr
        try:
            raise exceptions[0]
        finally:
            exceptions = None
