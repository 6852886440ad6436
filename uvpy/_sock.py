"""loop.sock_*: awaitable socket operations over the loop's fd watchers.

Each operation first tries the non-blocking call at once. Only when that
would block does it park a future on the fd's readiness (a reader or writer
installed with Loop._watch) and retry the call on each wakeup.

Invariants (asyncio's selector loop has the same ones):

1. At most one watcher per (fd, direction): a second pending sock_recv on
   the same socket replaces the first one's watcher, as in asyncio.
2. When the future completes -- result, exception or cancellation -- its
   watcher is removed, unless another operation has already replaced it
   (then that one's watcher stays). So a cancelled operation leaves the
   socket usable and unregistered.
3. A retry that finds the future already done does nothing: cancellation
   may land between the readiness event and the retry.
4. Each retry looks the socket method up afresh (sock may be a proxy whose
   methods change). Errors are the socket's own exceptions, unchanged; in debug mode a
   blocking socket is rejected with ValueError before anything happens.
5. A failed operation leaves no reference cycle: the frame that set the
   future's exception (which the exception's traceback keeps) drops the
   future, as asyncio's callbacks do.
6. Closing the socket under a pending operation (without cancelling it)
   leaves the future pending, as in asyncio: the kernel forgets a closed
   fd, so no readiness ever comes. The backend neither aborts nor keeps
   the file open (loop/backend.h); cancelling the future removes the
   watcher as usual.

sock_recvfrom / sock_recvfrom_into / sock_sendto work on datagram sockets.
"""

from __future__ import annotations

import functools
import socket
from operator import methodcaller
from asyncio import base_events

from . import _uvpy

__all__ = ("SockMixin",)

_READ = _uvpy.READABLE
_WRITE = _uvpy.WRITABLE

# What a non-blocking call raises when it would block: try again later.
_WOULD_BLOCK = (BlockingIOError, InterruptedError)


class _Again:
    """Returned by a retry step that made progress but is not finished."""

    __slots__ = ()


_AGAIN = _Again()


class SockMixin:
    """The sock_* coroutines of uvpy.Loop (see the module docstring)."""

    # -- machinery -------------------------------------------------------------

    def _sock_check(self, sock):
        base_events._check_ssl_socket(sock)  # TypeError for an SSLSocket
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")

    def _sock_park(self, sock, which, step, *args):
        """A future completed by step(*args), retried on each readiness of sock.

        step returns the result, raises (the future's exception), raises a
        would-block error or returns _AGAIN (retry on the next wakeup).
        """
        fut = self.create_future()
        fd = sock.fileno()
        self._ensure_fd_no_transport(fd)
        handle = self._watch(fd, which, self._sock_retry, (fut, step, args))
        fut.add_done_callback(functools.partial(self._sock_unpark, fd, which, handle))
        return fut

    @staticmethod
    def _sock_retry(fut, step, args):
        if fut.done():
            return
        try:
            result = step(*args)
        except _WOULD_BLOCK:
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut.set_exception(exc)
        else:
            if result is not _AGAIN:
                fut.set_result(result)
        finally:
            # The exception's traceback holds this frame: without this the
            # future and its exception would form a cycle (invariant 5).
            fut = None

    def _sock_unpark(self, fd, which, handle, fut):
        # A cancelled handle was replaced (or removed) by someone else: the
        # watcher is no longer ours to remove.
        if not handle.cancelled():
            self._unwatch(fd, which)

    def _ensure_fd_no_transport(self, fd):
        """RuntimeError if a live transport owns fd (asyncio's rule)."""
        if not isinstance(fd, int):
            try:
                fd = int(fd.fileno())
            except (AttributeError, TypeError, ValueError):
                raise ValueError(f"Invalid file object: {fd!r}") from None
        transports = self.__dict__.get("_transports")  # fd -> weakref.ref
        ref = transports.get(fd) if transports else None
        transport = ref() if ref is not None else None
        if transport is not None and not transport.is_closing():
            raise RuntimeError(f"File descriptor {fd!r} is used by transport {transport!r}")

    async def _ensure_resolved(self, address, *, family=0, type=socket.SOCK_STREAM,
                               proto=0, flags=0):
        """getaddrinfo() results for address; numeric hosts skip the resolver."""
        host, port = address[:2]
        info = base_events._ipaddr_info(host, port, family, type, proto, *address[2:])
        if info is not None:
            return [info]
        return await self.getaddrinfo(host, port, family=family, type=type, proto=proto,
                                      flags=flags)

    # -- receiving -------------------------------------------------------------

    async def sock_recv(self, sock, n):
        """Receive up to n bytes from sock (b"" at end of stream)."""
        self._sock_check(sock)
        try:
            return sock.recv(n)
        except _WOULD_BLOCK:
            pass
        return await self._sock_park(sock, _READ, methodcaller("recv", n), sock)

    async def sock_recv_into(self, sock, buf):
        """Receive into the writable buffer buf; return the number of bytes."""
        self._sock_check(sock)
        try:
            return sock.recv_into(buf)
        except _WOULD_BLOCK:
            pass
        return await self._sock_park(sock, _READ, methodcaller("recv_into", buf), sock)

    async def sock_recvfrom(self, sock, bufsize):
        """Receive one datagram of up to bufsize bytes: (data, address)."""
        self._sock_check(sock)
        try:
            return sock.recvfrom(bufsize)
        except _WOULD_BLOCK:
            pass
        return await self._sock_park(sock, _READ, methodcaller("recvfrom", bufsize), sock)

    async def sock_recvfrom_into(self, sock, buf, nbytes=0):
        """Receive one datagram into buf: (nbytes, address)."""
        self._sock_check(sock)
        if not nbytes:
            nbytes = len(buf)
        try:
            return sock.recvfrom_into(buf, nbytes)
        except _WOULD_BLOCK:
            pass
        return await self._sock_park(
            sock, _READ, methodcaller("recvfrom_into", buf, nbytes), sock)

    # -- sending ---------------------------------------------------------------

    async def sock_sendall(self, sock, data):
        """Send all of data. On error, how much was sent is unknown."""
        self._sock_check(sock)
        try:
            sent = sock.send(data)
        except _WOULD_BLOCK:
            sent = 0
        view = memoryview(data).cast("B")
        if sent == len(view):
            return None
        progress = [sent]

        def send_rest():
            progress[0] += sock.send(view[progress[0]:])
            return None if progress[0] == len(view) else _AGAIN

        return await self._sock_park(sock, _WRITE, send_rest)

    async def sock_sendto(self, sock, data, address):
        """Send one datagram to address; return the number of bytes sent."""
        self._sock_check(sock)
        try:
            return sock.sendto(data, address)
        except _WOULD_BLOCK:
            pass
        return await self._sock_park(
            sock, _WRITE, methodcaller("sendto", data, 0, address), sock)

    # -- connecting ------------------------------------------------------------

    async def sock_connect(self, sock, address):
        """Connect sock to address (host names are resolved first)."""
        self._sock_check(sock)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            infos = await self._ensure_resolved(address, family=sock.family, type=sock.type,
                                                proto=sock.proto)
            address = infos[0][4]
        try:
            sock.connect(address)
        except _WOULD_BLOCK:
            # In progress (or interrupted, which on POSIX also carries on in
            # the background): writability says it finished, SO_ERROR how.
            pass
        else:
            return None

        def connected():
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, f"Connect call failed {address}")

        return await self._sock_park(sock, _WRITE, connected)

    async def sock_accept(self, sock):
        """Accept a connection: (conn, address), conn non-blocking."""
        self._sock_check(sock)

        def accept():
            conn, address = sock.accept()
            conn.setblocking(False)
            return conn, address

        try:
            return accept()
        except _WOULD_BLOCK:
            pass
        return await self._sock_park(sock, _READ, accept)
