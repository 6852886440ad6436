"""Helpers for the TCP transport tests (test_tcp_*.py): recording protocols
and a loop transport connected to a plain blocking peer socket.
"""

import asyncio
import socket


class Recorder(asyncio.Protocol):
    """Records every protocol event; `lost` completes on connection_lost."""

    def __init__(self, loop, keep_open=False):
        self.loop = loop
        self.transport = None
        self.events = []
        self.data = bytearray()
        self.keep_open = keep_open
        self.made = loop.create_future()
        self.lost = loop.create_future()
        self.eof = loop.create_future()
        self.paused = 0
        self.resumed = 0

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")
        self.made.set_result(None)

    def data_received(self, data):
        assert type(data) is bytes
        self.data += data

    def eof_received(self):
        self.events.append("eof")
        self.eof.set_result(None)
        return self.keep_open

    def pause_writing(self):
        self.paused += 1

    def resume_writing(self):
        self.resumed += 1

    def connection_lost(self, exc):
        self.events.append(("lost", exc))
        self.lost.set_result(exc)


class Buffered(asyncio.BufferedProtocol):
    def __init__(self, loop, size=1000):
        self.buf = bytearray(size)
        self.data = bytearray()
        self.sizes = []
        self.eof = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        self.sizes.append(sizehint)
        return self.buf

    def buffer_updated(self, nbytes):
        self.data += self.buf[:nbytes]

    def eof_received(self):
        self.eof.set_result(None)

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def run(loop, coro):
    return loop.run_until_complete(coro)


def connect(loop, factory=None, *, sndbuf=None):
    """(transport, protocol, peer): a loop transport and its blocking peer."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    factory = factory or (lambda: Recorder(loop))
    tr, proto = run(loop, loop.create_connection(factory, *srv.getsockname()))
    peer, _ = srv.accept()
    srv.close()
    if sndbuf:
        tr.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    return tr, proto, peer


def recv_exactly(peer, n):
    got = bytearray()
    while len(got) < n:
        chunk = peer.recv(n - len(got))
        assert chunk, f"EOF after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


def recv_to_eof(peer):
    got = bytearray()
    while chunk := peer.recv(1 << 20):
        got += chunk
    return bytes(got)


async def iterations(n=10):
    for _ in range(n):
        await asyncio.sleep(0)


def reset(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    sock.close()


def pattern(n):
    return (bytes(range(256)) * (n // 256 + 1))[:n]


async def peer_reads_to_eof(peer):
    """What the peer reads until EOF, while the loop keeps running."""
    peer.setblocking(False)
    got = bytearray()
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            await asyncio.sleep(0)
            continue
        if not chunk:
            peer.setblocking(True)
            return bytes(got)
        got += chunk
