"""loop.sock_sendfile and loop.sendfile.

sock_sendfile() is zero-copy: os.sendfile() (sendfile(2)) straight from the
file's fd to the socket, one call per writability of the socket (the
_sock.SockMixin parking machinery), falling back to read-and-send when the
file has no fd or sendfile(2) refuses it before anything was sent.

sendfile(transport, ...) follows the transport's _sendfile_compatible mode
as asyncio does. uvpy's stream transports (TCPTransport, UnixTransport) say
TRY_NATIVE: _sendfile_native() pauses the transport's reading, waits for
its native write queue to drain (transport._make_empty_waiter(), completed
by the stream's drain), then sends with sock_sendfile()'s zero-copy path
on the transport's socket; write() and writelines() raise "unable to
write; sendfile is in progress" meanwhile. Other transports (TLS, say)
say FALLBACK: the file is copied through transport.write() with the
transport's flow control.

Invariants (asyncio's, which is the oracle):

1. Arguments are checked before anything is sent, with asyncio's messages.
2. On return, error or cancellation the file position is just past the
   last byte sent, or at offset when nothing was (an offset at or past the
   end of the file, say): lseek on the fd for the native path, file.seek
   for the fallback, which seeks to offset before it reads. An empty file
   returns 0 before anything, its position untouched. This is 3.14's
   asyncio on every Python; up to 3.13 asyncio left the position alone
   when nothing was sent, and its fallback read from the current position
   when offset was 0.
3. A connection lost after some bytes went out raises the send's error
   (ENOTCONN as ConnectionError); sendfile(2) failing before the first
   byte is SendfileNotAvailableError, which fallback=True turns into the
   read-and-send path.
4. The fallback on a transport pauses reading and swaps in a protocol
   that tracks pause_writing/resume_writing; the original protocol, its
   reading and a pending resume_writing are restored afterwards.
5. The native path on a transport sends only while the stream holds no
   watcher on the fd: its consuming reader (which may read ahead on
   io_uring) is off because reading is paused, and its writer is off
   because the queue is empty and write() refuses. The socket path's
   plain writability watcher is then the fd's only one, on either
   backend. The transport leaves loop._transports for that time (asyncio
   does the same; it waits in loop._sendfile_transports, where its
   server's close_clients() finds it) and gets its reading, its write()
   and its registry entry back on return, error or cancellation, the wait
   for the drain included (the entry only where no other transport has
   taken the fd number since).
6. A native send on a transport ends when the transport's connection goes,
   whoever ends it (transport.close() or abort(), or connection_lost after
   an error): once the queue has drained, the transport's empty waiter is a
   _SendGuard, which connection_lost settles before it closes the socket;
   the guard removes the send's writability watcher while the fd is still
   this socket's and fails the send with ConnectionError("Connection is
   closed by peer") (asyncio's message for its empty waiter). Stock
   asyncio removes the send's watcher in close() and never completes the
   awaiting sendfile; here it raises, with the file position just past
   the bytes sent (invariant 2).
"""

from __future__ import annotations

import errno
import functools
import io
import os
import socket
from asyncio import base_events, constants, exceptions, protocols

from . import _uvpy
from ._sock import _AGAIN, _WOULD_BLOCK

__all__ = ("SendfileMixin",)

_WRITE = _uvpy.WRITABLE

_FALLBACK_BLOCK = 16384  # asyncio's transport fallback block size


def _check_sendfile_params(sock, file, offset, count):
    if "b" not in getattr(file, "mode", "b"):
        raise ValueError("file should be opened in binary mode")
    if not sock.type == socket.SOCK_STREAM:
        raise ValueError("only SOCK_STREAM type sockets are supported")
    if count is not None:
        if not isinstance(count, int):
            raise TypeError(f"count must be a positive integer (got {count!r})")
        if count <= 0:
            raise ValueError(f"count must be a positive integer (got {count!r})")
    if not isinstance(offset, int):
        raise TypeError(f"offset must be a non-negative integer (got {offset!r})")
    if offset < 0:
        raise ValueError(f"offset must be a non-negative integer (got {offset!r})")


def _set_position(fileno, position):
    """The native path's file position (invariant 2); a file without one
    (sendfile(2) refused it) keeps none."""
    try:
        os.lseek(fileno, position, os.SEEK_SET)
    except OSError as exc:
        if exc.errno != errno.ESPIPE:
            raise


def _seek_to_offset(file, offset):
    """The fallback reads from offset, not from where the file stands
    (invariant 2). A stream that cannot seek is read from where it stands
    when offset is 0, as before 3.14; a nonzero offset raises there."""
    if offset or (hasattr(file, "seekable") and file.seekable()):
        file.seek(offset)


class _FallbackProtocol(protocols.Protocol):
    """Stands in for a transport's protocol while the fallback copies (invariant 4)."""

    def __init__(self, transport):
        self._transport = transport
        self._proto = transport.get_protocol()
        self._should_resume_reading = transport.is_reading()
        self._should_resume_writing = transport._protocol_paused
        transport.pause_reading()
        transport.set_protocol(self)
        self._write_ready_fut = (transport._loop.create_future()
                                 if self._should_resume_writing else None)

    async def drain(self):
        if self._transport.is_closing():
            raise ConnectionError("Connection closed by peer")
        fut = self._write_ready_fut
        if fut is not None:
            await fut

    def connection_made(self, transport):
        raise RuntimeError("Invalid state: connection should have been established already.")

    def connection_lost(self, exc):
        if self._write_ready_fut is not None:
            if exc is None:
                self._write_ready_fut.set_exception(ConnectionError("Connection is closed by peer"))
            else:
                self._write_ready_fut.set_exception(exc)
        self._proto.connection_lost(exc)

    def pause_writing(self):
        if self._write_ready_fut is None:
            self._write_ready_fut = self._transport._loop.create_future()

    def resume_writing(self):
        if self._write_ready_fut is not None:
            self._write_ready_fut.set_result(False)
            self._write_ready_fut = None

    def data_received(self, data):
        raise RuntimeError("Invalid state: reading should be paused")

    def eof_received(self):
        raise RuntimeError("Invalid state: reading should be paused")

    async def restore(self):
        self._transport.set_protocol(self._proto)
        if self._should_resume_reading:
            self._transport.resume_reading()
        if self._write_ready_fut is not None:
            # The transport stopped writing for us (closed under us, say):
            # nobody awaits this future any more.
            self._write_ready_fut.cancel()
        if self._should_resume_writing:
            self._proto.resume_writing()


class _SendGuard:
    """The transport's empty waiter while a native send runs (invariant 6).

    The transport calls done() and set_exception() on it from
    connection_lost (set_result() on a drain, which cannot happen while
    write() refuses): enough of a future for that, and synchronous, so that
    the watcher goes before the socket closes.
    """

    __slots__ = ("_loop", "_fd", "_park", "_exc")

    def __init__(self, loop, fd):
        self._loop = loop
        self._fd = fd
        self._park = None  # the send's parked future, while it waits for writability
        self._exc = None

    def done(self):
        return self._exc is not None

    def set_result(self, result):
        pass

    def set_exception(self, exc):
        if self._exc is not None:
            return
        self._exc = exc
        park, self._park = self._park, None
        if park is not None and not park.done():
            # Cancels the watcher's handle: _sock_unpark then leaves the fd alone.
            self._loop._unwatch(self._fd, _WRITE)
            park.set_exception(exc)


class SendfileMixin:
    """sock_sendfile / sendfile (see the module docstring)."""

    @functools.cached_property
    def _sendfile_transports(self):
        # fd -> weakref.ref(transport): the transports a native send took
        # out of loop._transports (invariant 5), for Server.close_clients().
        return {}

    # -- sockets ---------------------------------------------------------------------

    async def sock_sendfile(self, sock, file, offset=0, count=None, *, fallback=True):
        """Send file over sock with sendfile(2); return the number of bytes sent."""
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        base_events._check_ssl_socket(sock)
        _check_sendfile_params(sock, file, offset, count)
        try:
            return await self._sock_sendfile_native(sock, file, offset, count)
        except exceptions.SendfileNotAvailableError:
            if not fallback:
                raise
        return await self._sock_sendfile_fallback(sock, file, offset, count)

    async def _sock_sendfile_native(self, sock, file, offset, count, guard=None):
        try:
            fileno = file.fileno()
        except (AttributeError, io.UnsupportedOperation):
            raise exceptions.SendfileNotAvailableError("not a regular file") from None
        try:
            fsize = os.fstat(fileno).st_size
        except OSError:
            raise exceptions.SendfileNotAvailableError("not a regular file") from None
        blocksize = count if count else fsize
        if not blocksize:
            return 0  # an empty file
        self._ensure_fd_no_transport(sock.fileno())
        fd = sock.fileno()
        # [offset, total_sent], advanced by each sendfile(2).
        state = [offset, 0]

        def step():
            start, total = state
            size = count - total if count else blocksize
            if size <= 0:
                return total
            try:
                sent = os.sendfile(fd, fileno, start, size)
            except _WOULD_BLOCK:
                raise
            except OSError as exc:
                if total == 0:
                    # Not a file sendfile(2) can read (a pipe, say): the
                    # caller may copy instead.
                    raise exceptions.SendfileNotAvailableError("os.sendfile call failed") \
                        from None
                if exc.errno == errno.ENOTCONN and type(exc) is not ConnectionError:
                    new = ConnectionError("socket is not connected", errno.ENOTCONN)
                    new.__cause__ = exc
                    raise new from exc
                raise
            if sent == 0:
                return total  # end of file
            state[0] = start + sent
            state[1] = total + sent
            return _AGAIN

        try:
            try:
                result = step()
                if result is not _AGAIN:
                    return result
            except _WOULD_BLOCK:
                pass
            park = self._sock_park(sock, _WRITE, step)
            if guard is not None:
                guard._park = park
            return await park
        finally:
            if guard is not None:
                guard._park = None
            _set_position(fileno, state[0])

    async def _sock_sendfile_fallback(self, sock, file, offset, count):
        _seek_to_offset(file, offset)
        blocksize = (min(count, constants.SENDFILE_FALLBACK_READBUFFER_SIZE)
                     if count else constants.SENDFILE_FALLBACK_READBUFFER_SIZE)
        buf = bytearray(blocksize)
        total_sent = 0
        try:
            while True:
                if count:
                    blocksize = min(count - total_sent, blocksize)
                    if blocksize <= 0:
                        break
                view = memoryview(buf)[:blocksize]
                read = await self.run_in_executor(None, file.readinto, view)
                if not read:
                    break  # end of file
                await self.sock_sendall(sock, view[:read])
                total_sent += read
            return total_sent
        finally:
            if total_sent > 0 and hasattr(file, "seek"):
                file.seek(offset + total_sent)

    # -- transports ------------------------------------------------------------------

    async def sendfile(self, transport, file, offset=0, count=None, *, fallback=True):
        """Send file over transport; return the number of bytes sent."""
        if transport.is_closing():
            raise RuntimeError("Transport is closing")
        mode = getattr(transport, "_sendfile_compatible", constants._SendfileMode.UNSUPPORTED)
        if mode is constants._SendfileMode.UNSUPPORTED:
            raise RuntimeError(f"sendfile is not supported for transport {transport!r}")
        if mode is constants._SendfileMode.TRY_NATIVE:
            try:
                return await self._sendfile_native(transport, file, offset, count)
            except exceptions.SendfileNotAvailableError:
                if not fallback:
                    raise
        if not fallback:
            raise RuntimeError(f"fallback is disabled and native sendfile is not "
                               f"supported for transport {transport!r}")
        return await self._sendfile_fallback(transport, file, offset, count)

    async def _sendfile_native(self, transport, file, offset, count):
        # Invariant 5: the stream lets go of the fd (no reader, an empty
        # write queue) and the socket path sends; the transport takes the
        # fd back afterwards. Invariant 6: the guard ends the send when
        # the connection goes.
        fd = transport._sock_fd
        transports = self._transports
        ref = transports.pop(fd, None)
        if ref is not None:
            # Still one of its server's clients (_server.py, invariant 5).
            self._sendfile_transports[fd] = ref
        resume_reading = transport.is_reading()
        transport.pause_reading()
        try:
            await transport._make_empty_waiter()
            if transport.is_closing():  # closed while the queue drained
                raise ConnectionError("Connection is closed by peer")
            sock = transport._sock
            _check_sendfile_params(sock, file, offset, count)
            guard = _SendGuard(self, fd)
            transport._empty_waiter = guard
            return await self._sock_sendfile_native(sock, file, offset, count, guard)
        finally:
            transport._reset_empty_waiter()
            if resume_reading:
                transport.resume_reading()
            if ref is not None:
                self._sendfile_transports.pop(fd, None)
                transports.setdefault(fd, ref)

    async def _sendfile_fallback(self, transport, file, offset, count):
        _seek_to_offset(file, offset)
        blocksize = min(count, _FALLBACK_BLOCK) if count else _FALLBACK_BLOCK
        buf = bytearray(blocksize)
        total_sent = 0
        proto = _FallbackProtocol(transport)
        try:
            while True:
                if count:
                    blocksize = min(count - total_sent, blocksize)
                    if blocksize <= 0:
                        return total_sent
                view = memoryview(buf)[:blocksize]
                read = await self.run_in_executor(None, file.readinto, view)
                if not read:
                    return total_sent  # end of file
                await proto.drain()
                transport.write(view[:read])
                total_sent += read
        finally:
            if total_sent > 0 and hasattr(file, "seek"):
                file.seek(offset + total_sent)
            await proto.restore()
