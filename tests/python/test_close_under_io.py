"""A socket closed under a pending sock_* call or an fd watcher, on both loops.

asyncio's selector forgets an fd when its file closes: the pending future
stays pending (until cancelled), the loop runs on, and the close reaches
the peer at once. uvpy must do the same on every backend: no abort (libuv
registers fds lazily and aborts on a closed one), no file kept open (an
io_uring poll holds a reference to it). remove_reader/remove_writer with
the closed socket object still find its watcher, as selectors' lookup does.

"at once" closes the socket in the iteration that registered the watcher,
before the loop polled it; "registered" after the loop has polled it.
"""

import asyncio
import socket
import uuid

import pytest

from conftest import open_fds

WHEN = ["at once", "registered"]
# A hang guard only: every awaited outcome here is immediate on a correct loop.
GUARD = 10


def run(loop, coro):
    return loop.run_until_complete(coro)


async def settle(when):
    for _ in range(1 if when == "at once" else 4):
        await asyncio.sleep(0)


def stream_pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def dgram_pair():
    """Two bound AF_UNIX datagram sockets (abstract names): (sock, peer, peer's name)."""
    names = [f"\0uvpy-test-{uuid.uuid4().hex}" for _ in range(2)]
    socks = []
    for name in names:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.bind(name)
        socks.append(s)
    return socks[0], socks[1], names


def fill(sock, *address):
    chunk = b"x" * (65536 if not address else 512)
    while True:
        try:
            sock.sendto(chunk, *address) if address else sock.send(chunk)
        except BlockingIOError:
            return


class Case:
    """Sets up one pending operation on `sock`, then checks the peer's view."""

    def __init__(self, op):
        self.op = op
        self.extra = []

    def start(self, loop):
        op = self.op
        if op in ("sock_recv", "sock_recv_into", "sock_sendall"):
            self.sock, self.peer = stream_pair()
            if op == "sock_recv":
                return loop.sock_recv(self.sock, 10)
            if op == "sock_recv_into":
                return loop.sock_recv_into(self.sock, bytearray(10))
            fill(self.sock)
            return loop.sock_sendall(self.sock, b"y" * 1_000_000)
        if op in ("sock_recvfrom", "sock_sendto"):
            self.sock, self.peer, self.names = dgram_pair()
            if op == "sock_recvfrom":
                return loop.sock_recvfrom(self.sock, 100)
            fill(self.sock, self.names[1])
            return loop.sock_sendto(self.sock, b"z" * 512, self.names[1])
        if op == "sock_accept":
            self.sock = socket.socket()
            self.sock.setblocking(False)
            self.sock.bind(("127.0.0.1", 0))
            self.sock.listen(8)
            self.address = self.sock.getsockname()
            return loop.sock_accept(self.sock)
        assert op == "sock_connect"
        # A listener whose one-connection backlog is full: the kernel drops
        # further SYNs, so a connect stays in progress.
        lsn = socket.socket()
        lsn.bind(("127.0.0.1", 0))
        lsn.listen(0)
        self.extra.append(lsn)
        for _ in range(3):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(lsn.getsockname())
            self.extra.append(c)
        self.sock = socket.socket()
        self.sock.setblocking(False)
        return loop.sock_connect(self.sock, lsn.getsockname())

    async def peer_sees_close(self, loop):
        """The close reached the other side (nothing kept the file open)."""
        op = self.op
        if op in ("sock_recv", "sock_recv_into"):
            assert await asyncio.wait_for(loop.sock_recv(self.peer, 10), GUARD) == b""
        elif op == "sock_sendall":
            # Everything queued before the close is readable, then EOF.
            while await asyncio.wait_for(loop.sock_recv(self.peer, 1 << 20), GUARD):
                pass
        elif op == "sock_recvfrom":
            with pytest.raises(ConnectionRefusedError):
                self.peer.sendto(b"to nobody", self.names[0])
        elif op == "sock_sendto":
            with pytest.raises(ConnectionRefusedError):
                self.peer.sendto(b"to nobody", self.names[0])
        elif op == "sock_accept":
            c = socket.socket()
            try:
                with pytest.raises(ConnectionRefusedError):
                    c.connect(self.address)
            finally:
                c.close()

    def close(self):
        for s in [getattr(self, "peer", None), *self.extra]:
            if s is not None:
                s.close()


OPS = ["sock_recv", "sock_recv_into", "sock_sendall", "sock_recvfrom", "sock_sendto",
       "sock_accept", "sock_connect"]


@pytest.mark.parametrize("when", WHEN)
@pytest.mark.parametrize("op", OPS)
def test_closing_the_socket_under_a_pending_sock_call(loop, op, when):
    case = Case(op)
    before = []

    async def main():
        before.append(open_fds())  # with the loop's own fds open
        task = loop.create_task(case.start(loop))
        await settle(when)
        assert not task.done()
        fd = case.sock.fileno()
        case.sock.close()
        # The loop runs on: timers fire, other I/O works, nothing aborts.
        await asyncio.sleep(0.01)
        for _ in range(5):
            await asyncio.sleep(0)
        await case.peer_sees_close(loop)
        # As in asyncio, nothing completes a future whose fd went away.
        # Except a datagram send: its socket may poll writable while the
        # peer's queue is full (the send then fails with EAGAIN and waits
        # again), so a retry can run after the close and fail with EBADF.
        if op == "sock_sendto" and task.done():
            with pytest.raises(OSError):
                await task
        else:
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        # Its watcher went with the cancellation.
        assert loop.remove_reader(fd) is False
        assert loop.remove_writer(fd) is False

    try:
        run(loop, main())
    finally:
        case.close()
    assert open_fds() <= before[0]


@pytest.mark.parametrize("when", WHEN)
@pytest.mark.parametrize("which", ["reader", "writer"])
def test_closing_an_fd_under_add_reader_or_add_writer(loop, which, when):
    a, b = stream_pair()
    if which == "writer":
        fill(a)
    calls = []
    add = getattr(loop, f"add_{which}")
    remove = getattr(loop, f"remove_{which}")

    async def main():
        add(a.fileno(), calls.append, "called")
        await settle(when)
        fd = a.fileno()
        a.close()
        for _ in range(5):
            await asyncio.sleep(0)
        # The peer sees EOF (after what was queued, for the writer case).
        while await asyncio.wait_for(loop.sock_recv(b, 1 << 20), GUARD):
            pass
        assert calls == []
        assert remove(fd) is True
        assert remove(fd) is False

    try:
        run(loop, main())
    finally:
        b.close()


@pytest.mark.parametrize("when", WHEN)
@pytest.mark.parametrize("which", ["reader", "writer"])
def test_remove_with_the_closed_socket_object(loop, which, when):
    """anyio's socket streams close, then remove_reader(sock)."""
    a, b = stream_pair()
    calls = []
    add = getattr(loop, f"add_{which}")
    remove = getattr(loop, f"remove_{which}")

    async def main():
        if which == "reader":
            add(a, calls.append, "called")
        else:
            fill(a)
            add(a, calls.append, "called")
        await settle(when)
        a.close()
        assert a.fileno() == -1
        assert remove(a) is True
        # Forgotten with its watcher: now the object names nothing, as in asyncio.
        with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
            remove(a)
        # Nothing stays armed: the loop keeps running and the peer sees EOF.
        for _ in range(5):
            await asyncio.sleep(0)
        while await asyncio.wait_for(loop.sock_recv(b, 1 << 20), GUARD):
            pass
        assert calls == []

    try:
        run(loop, main())
    finally:
        b.close()


def test_remove_with_an_unknown_closed_socket_raises_like_asyncio(loop):
    s = socket.socket()
    s.close()
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        loop.remove_reader(s)
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        loop.remove_writer(s)

