"""loop.sock_sendfile and loop.sendfile on both loops: bytes, file
positions, the fallback, refusals and a peer that goes away."""

import asyncio
import io
import os
import socket

import pytest

from conftest import collect, open_fds

DATA = bytes(range(256)) * 4096  # 1 MiB


def run(loop, coro):
    return loop.run_until_complete(coro)


@pytest.fixture
def datafile(tmp_path):
    path = tmp_path / "data"
    path.write_bytes(DATA)
    with open(path, "rb") as f:
        yield f


def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


async def drain_into(loop, sock, n):
    got = bytearray()
    while len(got) < n:
        chunk = await loop.sock_recv(sock, 65536)
        if not chunk:
            break
        got += chunk
    return bytes(got)


@pytest.mark.parametrize("offset,count", [(0, None), (1000, None), (1000, 5000),
                                          (len(DATA) - 10, 1000)])
def test_sock_sendfile_sends_the_range_and_moves_the_position(loop, datafile, offset, count):
    a, b = pair()
    expected = DATA[offset:offset + count] if count else DATA[offset:]

    async def main():
        reader = asyncio.ensure_future(drain_into(loop, b, len(expected)))
        sent = await loop.sock_sendfile(a, datafile, offset, count)
        assert sent == len(expected)
        assert await reader == expected
        assert datafile.tell() == offset + len(expected)

    try:
        run(loop, main())
    finally:
        a.close()
        b.close()


def test_sock_sendfile_falls_back_for_a_file_without_fd(loop):
    a, b = pair()
    f = io.BytesIO(DATA[:100000])

    async def main():
        with pytest.raises(asyncio.SendfileNotAvailableError):
            await loop.sock_sendfile(a, f, fallback=False)
        reader = asyncio.ensure_future(drain_into(loop, b, 99990))
        assert await loop.sock_sendfile(a, f, 10) == 99990
        assert await reader == DATA[10:100000]
        assert f.tell() == 100000

    try:
        run(loop, main())
    finally:
        a.close()
        b.close()


def test_sock_sendfile_checks(loop, datafile, tmp_path):
    a, b = pair()
    dgram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dgram.setblocking(False)
    text = open(tmp_path / "data", "r")
    try:
        cases = [
            (loop.sock_sendfile(a, text), ValueError, "file should be opened in binary mode"),
            (loop.sock_sendfile(dgram, datafile), ValueError,
             "only SOCK_STREAM type sockets are supported"),
            (loop.sock_sendfile(a, datafile, count=0), ValueError,
             "count must be a positive integer (got 0)"),
            (loop.sock_sendfile(a, datafile, count="1"), TypeError,
             "count must be a positive integer (got '1')"),
            (loop.sock_sendfile(a, datafile, offset=-1), ValueError,
             "offset must be a non-negative integer (got -1)"),
            (loop.sock_sendfile(a, datafile, offset=1.0), TypeError,
             "offset must be a non-negative integer (got 1.0)"),
        ]
        for coro, exc_type, message in cases:
            with pytest.raises(exc_type) as info:
                run(loop, coro)
            assert str(info.value) == message
        assert datafile.tell() == 0
    finally:
        for s in (a, b, dgram, text):
            s.close()


def test_peer_going_away_during_sock_sendfile(loop, datafile):
    run(loop, asyncio.sleep(0))
    collect()
    before = open_fds()
    a, b = pair()

    async def main():
        task = asyncio.ensure_future(loop.sock_sendfile(a, datafile))
        await loop.sock_recv(b, 1000)  # it started
        b.close()
        with pytest.raises(OSError):  # EPIPE/ECONNRESET, as ConnectionError
            await task
        assert 0 < datafile.tell() < len(DATA)

    try:
        run(loop, main())
    finally:
        a.close()
        b.close()
    assert open_fds() == before


def test_sendfile_over_a_stream_transport(loop, datafile):
    chunks = bytearray()

    class Sink(asyncio.Protocol):
        def __init__(self):
            self.done = loop.create_future()

        def data_received(self, data):
            chunks.extend(data)

        def connection_lost(self, exc):
            self.done.set_result(None)

    class Client(asyncio.Protocol):
        def __init__(self):
            self.events = []

        def connection_lost(self, exc):
            self.events.append("lost")

    async def main():
        sink = Sink()
        server = await loop.create_server(lambda: sink, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, client = await loop.create_connection(Client, "127.0.0.1", port)
        transport.write(b"head")
        sent = await loop.sendfile(transport, datafile, 100, 200000)
        assert sent == 200000
        assert datafile.tell() == 200100
        assert transport.get_protocol() is client  # restored
        assert transport.is_reading()
        transport.write(b"tail")
        transport.close()
        await sink.done
        assert bytes(chunks) == b"head" + DATA[100:200100] + b"tail"
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_sendfile_refusals(loop, datafile):
    class Quiet(asyncio.DatagramProtocol):
        pass

    async def main():
        t, _ = await loop.create_datagram_endpoint(Quiet, local_addr=("127.0.0.1", 0))
        with pytest.raises(RuntimeError) as info:
            await loop.sendfile(t, datafile)
        assert str(info.value) == f"sendfile is not supported for transport {t!r}"
        t.close()
        with pytest.raises(RuntimeError) as info:
            await loop.sendfile(t, datafile)
        assert str(info.value) == "Transport is closing"
        await asyncio.sleep(0)

    run(loop, main())
