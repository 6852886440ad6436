"""uvpy's asyncio.AbstractServer: the listening sockets of create_server().

A Server owns its listening sockets; the loop accepts on them (see
_tcp.TCPMixin._start_serving) and every transport made from an accepted
connection is attached to the server until its connection_lost.

Invariants (Python 3.11's asyncio.Server behaves the same way):

1. _sockets is None exactly when the server is closed. close() stops
   accepting and closes the listening sockets at once; connections already
   accepted are left alone.
2. _active_count counts attached transports. When the server is closed and
   the count is zero, the wait_closed() waiters are woken once and _waiters
   becomes None.
3. As in 3.11, wait_closed() returns at once when the server is already
   closed (or its waiters already woken); otherwise it waits for (2). From
   3.12.1 asyncio's also waits for the connections still attached, which
   it holds weakly (an abandoned transport does not hold it up); uvpy
   counts them, so it keeps 3.11's behaviour on every version.
4. serve_forever() is exclusive: a second concurrent call raises. Cancelling
   it closes the server and its clients (close_clients(), as 3.14's
   asyncio does: a hanging client cannot hold up a Ctrl+C) and waits as
   wait_closed() does.
5. The server's clients are the transports attached to it: those that name
   it as their `_server` (the native transport clears that field before it
   calls _detach, so a transport whose connection is lost is never one).
   They are found in loop._transports, where every stream transport is
   registered, and in loop._sendfile_transports while a native sendfile
   has taken one out of the registry (_sendfile.py, invariant 5), instead
   of a WeakSet filled on every accept (asyncio's), which would cost the
   accept path a weak reference per connection for the sake of two rarely
   called methods. close_clients() and abort_clients() (Python 3.13's)
   exist on every Python.
6. Every server registers in its loop's `_servers` (a WeakSet), and a
   server that starts listening calls the loop's `_on_serving` hook when
   one is set: uvpy.serve's worker (_serveworker.py) finds the servers to
   drain and learns that its worker is up this way. _stop_accepting() and
   _until_drained() are the two halves of a graceful stop: no new
   connections, then a future done once the last attached one is gone;
   serve_forever() keeps waiting meanwhile, and close() still ends it.
"""

from __future__ import annotations

from asyncio import events, exceptions, tasks, trsock

__all__ = ("Server",)


class Server(events.AbstractServer):
    """A TCP server created by uvpy.Loop.create_server()."""

    def __init__(self, loop, sockets, protocol_factory, backlog, ssl_context=None,
                 ssl_handshake_timeout=None, ssl_shutdown_timeout=None, accept_ahead=True):
        self._loop = loop
        self._accept_ahead = accept_ahead  # _tcp._start_serving
        # Accepted connections of a TLS server go through _tls.TLSMixin.
        self._ssl_context = ssl_context
        self._ssl_handshake_timeout = ssl_handshake_timeout
        self._ssl_shutdown_timeout = ssl_shutdown_timeout
        self._sockets = sockets
        self._protocol_factory = protocol_factory
        self._backlog = backlog
        self._active_count = 0
        self._waiters = []
        self._serving = False
        self._serving_forever_fut = None
        loop._servers.add(self)

    def __repr__(self):
        return f"<{type(self).__name__} sockets={self.sockets!r}>"

    # -- transports come and go (called by TCPTransport) ------------------------

    def _attach(self):
        assert self._sockets is not None
        self._active_count += 1

    def _detach(self):
        assert self._active_count > 0
        self._active_count -= 1
        if self._active_count == 0 and self._sockets is None:
            self._wakeup()

    def _wakeup(self):
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(waiter)

    def _start_serving(self):
        if self._serving:
            return
        self._serving = True
        for sock in self._sockets:
            sock.listen(self._backlog)
            self._loop._start_serving(self._protocol_factory, sock, self, self._backlog)
        hook = self._loop._on_serving
        if hook is not None:
            hook(self)

    # -- asyncio.AbstractServer ------------------------------------------------------

    def get_loop(self):
        return self._loop

    def is_serving(self):
        return self._serving

    @property
    def sockets(self):
        if self._sockets is None:
            return ()
        return tuple(trsock.TransportSocket(sock) for sock in self._sockets)

    def close(self):
        self._stop_accepting()
        fut, self._serving_forever_fut = self._serving_forever_fut, None
        if fut is not None and not fut.done():
            fut.cancel()

    def _stop_accepting(self):
        """close() without ending serve_forever() (invariant 6)."""
        sockets = self._sockets
        if sockets is None:
            return
        self._sockets = None
        for sock in sockets:
            self._loop._stop_serving(sock)
        self._serving = False
        if self._active_count == 0:
            self._wakeup()

    def _until_drained(self):
        """A future done when this closed server has no attached transport
        left (invariant 2's wakeup); done at once when none is left."""
        waiter = self._loop.create_future()
        if self._waiters is None:
            waiter.set_result(waiter)
        else:
            self._waiters.append(waiter)
        return waiter

    def close_clients(self):
        """Close every connection accepted by this server (transport.close())."""
        for transport in self._attached():
            transport.close()

    def abort_clients(self):
        """Abort every connection accepted by this server (transport.abort())."""
        for transport in self._attached():
            transport.abort()

    def _attached(self):
        """Invariant 5: a list, as close() or abort() may change the registry."""
        loop = self._loop
        refs = [*loop._transports.values(), *loop._sendfile_transports.values()]
        clients = {}
        for ref in refs:
            transport = ref()
            if transport is not None and getattr(transport, "_server", None) is self:
                clients[id(transport)] = transport
        return list(clients.values())

    async def start_serving(self):
        self._start_serving()
        # One iteration, so the accept watchers are in place on return.
        await tasks.sleep(0)

    async def serve_forever(self):
        if self._serving_forever_fut is not None:
            raise RuntimeError(f"server {self!r} is already being awaited on serve_forever()")
        if self._sockets is None:
            raise RuntimeError(f"server {self!r} is closed")
        self._start_serving()
        self._serving_forever_fut = self._loop.create_future()
        try:
            await self._serving_forever_fut
        except exceptions.CancelledError:
            try:
                self.close()
                self.close_clients()
                await self.wait_closed()
            finally:
                raise
        finally:
            self._serving_forever_fut = None

    async def wait_closed(self):
        if self._sockets is None or self._waiters is None:
            return
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter
