"""loop.sock_*: awaitable socket operations, on both loops.

Every test runs on uvpy and on the stock loop (the oracle). "Unregistered"
is checked loop-agnostically: remove_reader()/remove_writer() return False
when no watcher is left on the fd.
"""

import asyncio
import socket
import ssl
import sys

import pytest

from conftest import collect, free_port, open_fds


def run(loop, coro):
    return loop.run_until_complete(coro)


def nb_pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def listener():
    srv = socket.socket()
    srv.setblocking(False)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    return srv


def fill(sock):
    """Send until the kernel buffers are full; return how much was sent."""
    total = 0
    chunk = b"x" * 65536
    while True:
        try:
            total += sock.send(chunk)
        except BlockingIOError:
            return total


# -- receiving and sending ----------------------------------------------------


def test_recv_and_sendall_roundtrip(loop):
    a, b = nb_pair()

    async def main():
        await loop.sock_sendall(a, b"hello")
        first = await loop.sock_recv(b, 100)
        recv = loop.create_task(loop.sock_recv(b, 100))
        await asyncio.sleep(0)
        assert not recv.done()  # parked on readability
        await loop.sock_sendall(a, b"world")
        return first, await recv

    assert run(loop, main()) == (b"hello", b"world")
    assert loop.remove_reader(b) is False
    a.close()
    assert run(loop, loop.sock_recv(b, 100)) == b""
    b.close()


def test_sendall_larger_than_the_socket_buffers(loop):
    a, b = nb_pair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    payload = bytes(range(256)) * 8192  # 2 MiB

    async def reader():
        got = bytearray()
        while len(got) < len(payload):
            got += await loop.sock_recv(b, 65536)
        return bytes(got)

    async def main():
        task = loop.create_task(reader())
        await loop.sock_sendall(a, payload)
        return await task

    assert run(loop, main()) == payload
    assert loop.remove_writer(a) is False
    assert loop.remove_reader(b) is False
    a.close()
    b.close()


def test_sendall_accepts_bytes_like_objects(loop):
    a, b = nb_pair()
    run(loop, loop.sock_sendall(a, bytearray(b"head")))
    run(loop, loop.sock_sendall(a, memoryview(b"--tail")[2:]))
    run(loop, loop.sock_sendall(a, b""))
    got = b""
    while len(got) < 8:
        got += run(loop, loop.sock_recv(b, 100))
    assert got == b"headtail"
    a.close()
    b.close()


def test_recv_into(loop):
    a, b = nb_pair()
    buf = bytearray(10)

    async def main():
        task = loop.create_task(loop.sock_recv_into(b, memoryview(buf)[2:]))
        await asyncio.sleep(0)
        a.send(b"abc")
        return await task

    assert run(loop, main()) == 3
    assert buf == b"\0\0abc" + b"\0" * 5
    a.close()
    b.close()


def test_recv_wrong_argument_types_raise_like_socket(loop):
    a, b = nb_pair()
    with pytest.raises(TypeError):
        run(loop, loop.sock_recv(b, "many"))
    with pytest.raises(TypeError):
        run(loop, loop.sock_recv_into(b, b"immutable"))
    with pytest.raises(TypeError):
        run(loop, loop.sock_sendall(a, "text"))
    a.close()
    b.close()


def test_recv_on_closed_socket_raises_oserror(loop):
    a, b = nb_pair()
    b.close()
    with pytest.raises(OSError):
        run(loop, loop.sock_recv(b, 1))
    a.close()


def test_recv_reports_peer_reset(loop):
    srv = listener()

    async def main():
        client = socket.socket()
        client.setblocking(False)
        await loop.sock_connect(client, srv.getsockname())
        conn, _ = await loop.sock_accept(srv)
        recv = loop.create_task(loop.sock_recv(client, 10))
        await asyncio.sleep(0)
        # SO_LINGER 0: close() sends RST instead of FIN
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        conn.close()
        try:
            with pytest.raises(ConnectionResetError):
                await recv
        finally:
            client.close()

    run(loop, main())
    srv.close()


# -- datagrams -------------------------------------------------------------------


def udp_pair():
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (a, b):
        s.setblocking(False)
        s.bind(("127.0.0.1", 0))
    return a, b


def test_sendto_recvfrom(loop):
    a, b = udp_pair()

    async def main():
        task = loop.create_task(loop.sock_recvfrom(b, 100))
        await asyncio.sleep(0)
        assert await loop.sock_sendto(a, b"datagram", b.getsockname()) == 8
        return await task

    assert run(loop, main()) == (b"datagram", a.getsockname())
    assert loop.remove_reader(b) is False
    a.close()
    b.close()


def test_recvfrom_into_with_and_without_nbytes(loop):
    a, b = udp_pair()
    buf = bytearray(8)

    async def main():
        await loop.sock_sendto(a, b"0123456789", b.getsockname())
        first = await loop.sock_recvfrom_into(b, buf)
        task = loop.create_task(loop.sock_recvfrom_into(b, buf, 3))
        await asyncio.sleep(0)
        await loop.sock_sendto(a, b"abcdef", b.getsockname())
        return first, await task

    first, second = run(loop, main())
    assert first == (8, a.getsockname())
    assert second == (3, a.getsockname())
    assert buf == b"abc34567"
    a.close()
    b.close()


# -- connecting and accepting ------------------------------------------------------


def test_connect_and_accept(loop):
    srv = listener()

    async def main():
        accept = loop.create_task(loop.sock_accept(srv))
        await asyncio.sleep(0)
        client = socket.socket()
        client.setblocking(False)
        await loop.sock_connect(client, srv.getsockname())
        conn, addr = await accept
        assert conn.gettimeout() == 0
        assert addr == client.getsockname()
        await loop.sock_sendall(client, b"ping")
        assert await loop.sock_recv(conn, 10) == b"ping"
        conn.close()
        client.close()

    run(loop, main())
    assert loop.remove_reader(srv) is False
    srv.close()


def test_connect_resolves_host_names(loop):
    srv = listener()
    client = socket.socket()
    client.setblocking(False)
    run(loop, loop.sock_connect(client, ("localhost", srv.getsockname()[1])))
    assert client.getpeername() == srv.getsockname()
    client.close()
    srv.close()


def test_connect_refused(loop):
    client = socket.socket()
    client.setblocking(False)
    with pytest.raises(ConnectionRefusedError) as info:
        run(loop, loop.sock_connect(client, ("127.0.0.1", free_port())))
    assert info.value.errno is not None
    assert loop.remove_writer(client) is False
    client.close()


def test_debug_mode_rejects_blocking_sockets(loop):
    loop.set_debug(True)
    a, b = socket.socketpair()  # blocking
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ops = [
        loop.sock_recv(a, 1),
        loop.sock_recv_into(a, bytearray(1)),
        loop.sock_sendall(a, b"x"),
        loop.sock_connect(a, ("127.0.0.1", 1)),
        loop.sock_accept(a),
        loop.sock_recvfrom(udp, 1),
        loop.sock_recvfrom_into(udp, bytearray(1)),
        loop.sock_sendto(udp, b"x", ("127.0.0.1", 1)),
    ]
    for coro in ops:
        with pytest.raises(ValueError, match="the socket must be non-blocking"):
            run(loop, coro)
    for s in (a, b, udp):
        s.close()


def test_ssl_sockets_are_rejected(loop):
    ctx = ssl.create_default_context()
    raw = socket.socket()
    sslsock = ctx.wrap_socket(raw, server_hostname="example.com",
                              do_handshake_on_connect=False)
    sslsock.setblocking(False)
    with pytest.raises(TypeError, match="SSLSocket"):
        run(loop, loop.sock_recv(sslsock, 1))
    sslsock.close()


# -- cancellation ------------------------------------------------------------------


def test_cancelled_recv_leaves_socket_usable_and_unregistered(loop):
    a, b = nb_pair()

    async def main():
        task = loop.create_task(loop.sock_recv(b, 10))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert loop.remove_reader(b) is False
        a.send(b"after")
        return await loop.sock_recv(b, 10)

    assert run(loop, main()) == b"after"
    a.close()
    b.close()


def test_cancelled_sendall_leaves_socket_unregistered(loop):
    a, b = nb_pair()
    fill(a)

    async def main():
        task = loop.create_task(loop.sock_sendall(a, b"y" * 100000))
        await asyncio.sleep(0)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert loop.remove_writer(a) is False

    run(loop, main())
    a.close()
    b.close()


def test_cancelled_accept_and_connect(loop):
    srv = listener()

    async def main():
        task = loop.create_task(loop.sock_accept(srv))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert loop.remove_reader(srv) is False
        # still usable: a later accept gets the connection
        client = socket.socket()
        client.setblocking(False)
        connect = loop.create_task(loop.sock_connect(client, srv.getsockname()))
        conn, _ = await loop.sock_accept(srv)
        await connect
        conn.close()
        client.close()

    run(loop, main())
    srv.close()


def test_cancel_then_complete_in_the_same_iteration(loop):
    # Readiness and cancellation land together: the retry must see the
    # future done and leave the data in the socket.
    a, b = nb_pair()

    async def main():
        task = loop.create_task(loop.sock_recv(b, 10))
        await asyncio.sleep(0)
        a.send(b"data")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await loop.sock_recv(b, 10)

    assert run(loop, main()) == b"data"
    a.close()
    b.close()


# -- resources ----------------------------------------------------------------------


def test_fds_and_refcounts_flat_over_many_rounds(loop):
    srv = listener()
    payload = b"p" * 1000

    async def round_trip():
        client = socket.socket()
        client.setblocking(False)
        accept = loop.create_task(loop.sock_accept(srv))
        await loop.sock_connect(client, srv.getsockname())
        conn, _ = await accept
        await loop.sock_sendall(client, payload)
        got = b""
        while len(got) < len(payload):
            got += await loop.sock_recv(conn, 4096)
        client.close()
        assert await loop.sock_recv(conn, 10) == b""
        conn.close()

    run(loop, round_trip())  # warm up lazily created state
    collect()
    fds = open_fds()
    refs = sys.getrefcount(payload)
    for _ in range(100):
        run(loop, round_trip())
    collect()
    assert open_fds() == fds
    assert sys.getrefcount(payload) == refs
    srv.close()
