"""What a server's accept step makes, on both loops: the accepted
transport's extras, the order of the first callbacks, the server's count of
attached connections, a protocol factory that raises, and no fd left over
after many accept/close cycles. uvpy takes a plain TCP server's connections
natively (bindings/acceptor.cc) and in debug mode through Python; both are
run."""

import asyncio
import socket

import pytest

from accept_helpers import FailingOnce, Recorder, run
from conftest import active_connections, collect, has_ipv6, open_fds, until


async def _client(loop, addr, family=socket.AF_INET):
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    await loop.sock_connect(sock, addr)
    return sock


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_accepted_transport_extras(loop, debug, host):
    if host == "::1" and not has_ipv6():
        pytest.skip("no IPv6")
    loop.set_debug(debug)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    async def main():
        made = loop.create_future()
        server = await loop.create_server(lambda: Recorder([], made), host, 0)
        addr = server.sockets[0].getsockname()
        client = await _client(loop, addr, family)
        tr = await asyncio.wait_for(made, 10)
        assert tr.get_extra_info("peername") == client.getsockname()
        assert tr.get_extra_info("sockname") == client.getpeername()
        sock = tr.get_extra_info("socket")
        assert sock is tr.get_extra_info("socket")
        assert sock.fileno() >= 0
        assert sock.family == family
        assert sock.type == socket.SOCK_STREAM
        assert sock.getsockname() == client.getpeername()
        assert sock.getpeername() == client.getsockname()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert tr.get_extra_info("nonexistent", "dflt") == "dflt"
        peername, sockname = tr.get_extra_info("peername"), tr.get_extra_info("sockname")
        client.close()
        for _ in range(100):
            if tr.is_closing() and tr.get_extra_info("socket").fileno() == -1:
                break
            await asyncio.sleep(0.01)
        # The extras outlive the socket, as asyncio's eager ones do.
        assert tr.get_extra_info("socket").fileno() == -1
        assert tr.get_extra_info("peername") == peername
        assert tr.get_extra_info("sockname") == sockname
        server.close()
        await server.wait_closed()

    run(loop, main())


@pytest.mark.parametrize("debug", [False, True])
def test_connection_made_first_and_wait_closed_waits_for_the_connection(loop, debug):
    loop.set_debug(debug)

    async def main():
        log = []
        made = loop.create_future()
        server = await loop.create_server(lambda: Recorder(log, made), "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        # The data is in the kernel before the server accepts.
        client = socket.create_connection(addr)
        client.sendall(b"hello")
        client.setblocking(False)
        tr = await asyncio.wait_for(made, 10)
        assert active_connections(server) == 1
        got = await asyncio.wait_for(loop.sock_recv(client, 100), 10)
        assert got == b"hello"
        assert log[:3] == ["factory", "connection_made", "data_received"]
        # Closed server, one attached connection: wait_closed() (waiting
        # from before the close, as 3.11 returns at once after it) waits
        # for the connection.
        waiter = loop.create_task(server.wait_closed())
        await asyncio.sleep(0)
        server.close()
        for _ in range(10):
            await asyncio.sleep(0)
        assert not waiter.done()
        assert active_connections(server) == 1
        tr.close()
        await asyncio.wait_for(waiter, 10)
        assert active_connections(server) == 0
        assert log[-1] == "connection_lost"
        client.close()

    run(loop, main())


@pytest.mark.parametrize("debug", [False, True])
def test_protocol_factory_raising_closes_the_connection_and_keeps_serving(loop, debug):
    run(loop, asyncio.sleep(0))  # lazily made loop fds are not leaks
    collect()
    fds = open_fds()
    factory = FailingOnce(loop, debug)

    async def main():
        server = await loop.create_server(factory, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        first = await _client(loop, addr)
        if not debug:
            # The connection without a protocol is closed. (In debug mode
            # asyncio's reported traceback keeps its socket object alive.)
            got = await asyncio.wait_for(loop.sock_recv(first, 100), 10)
            assert got == b""
        first.close()
        second = await _client(loop, addr)
        await loop.sock_sendall(second, b"x")
        assert await asyncio.wait_for(loop.sock_recv(second, 100), 10) == b"x"
        second.close()
        for _ in range(100):  # the server side sees the EOF and closes
            if active_connections(server) == 0:
                break
            await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()

    factory.run(main())
    assert open_fds() == fds


def test_no_fd_left_after_many_accept_close_cycles(loop):
    run(loop, asyncio.sleep(0))  # lazily made loop fds are not leaks

    async def main():
        lost = []

        class Closer(asyncio.Protocol):
            def connection_made(self, transport):
                transport.close()

            def connection_lost(self, exc):
                lost.append(exc)

        server = await loop.create_server(Closer, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        for _ in range(1000):
            client = await _client(loop, addr)
            assert await asyncio.wait_for(loop.sock_recv(client, 10), 10) == b""
            client.close()
        for _ in range(100):
            if len(lost) == 1000:
                break
            await asyncio.sleep(0.01)
        assert lost == [None] * 1000
        server.close()
        await server.wait_closed()

    collect()
    fds = open_fds()
    run(loop, main())
    collect()
    assert open_fds() == fds


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_extras_first_asked_after_close(loop, host):
    # Nothing asks for the socket or its address while the connection is
    # open: they are still there afterwards, as asyncio's eager ones are.
    async def main():
        made = loop.create_future()
        server = await loop.create_server(lambda: Recorder([], made), host, 0)
        port = server.sockets[0].getsockname()[1]
        client = await _client(loop, ("127.0.0.1", port))
        tr = await asyncio.wait_for(made, 10)
        expected_sockname = client.getpeername()
        expected_peername = client.getsockname()
        tr.close()
        for _ in range(100):
            if active_connections(server) == 0:
                break
            await asyncio.sleep(0.01)
        assert tr.get_extra_info("sockname") == expected_sockname
        assert tr.get_extra_info("peername") == expected_peername
        sock = tr.get_extra_info("socket")
        assert sock is tr.get_extra_info("socket")
        assert sock.fileno() == -1
        assert sock.family == socket.AF_INET
        assert sock.type == socket.SOCK_STREAM
        assert "closed" in repr(tr)
        client.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


class _Keep(asyncio.Protocol):
    def __init__(self, into):
        self.into = into

    def connection_made(self, transport):
        self.into.append(transport)


@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_closing_a_server_on_a_shared_listener_leaves_its_queue_to_the_others(
        new_loop, loop_name, tmp_path, family):
    """Pre-fork servers (uvpy.serve's bind=, gunicorn's workers) share one
    listening socket, each process serving it with create_server(sock=...).
    A process that closes its server must leave the connections it has not
    taken in the kernel's queue, where the others accept them; none may be
    taken down with it (the io_uring backend accepts ahead only on
    listeners the loop made itself)."""
    if loop_name == "asyncio":
        pytest.skip("stock asyncio drops the connection it accepted last before close(): "
                    "its _accept_connection2 task runs after it, where Server._attach() "
                    "asserts that the server is open")
    if family == "unix":
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(tmp_path / "s"))
    else:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
    listener.listen(100)
    other = listener.dup()  # the second process's copy
    addr = listener.getsockname()
    first, second = new_loop(), new_loop()
    got_first, got_second, clients, servers = [], [], [], []

    def serve(loop, sock, into):
        make = loop.create_unix_server if family == "unix" else loop.create_server
        servers.append(loop.run_until_complete(make(lambda: _Keep(into), sock=sock, backlog=1)))

    async def turns(n):
        for _ in range(n):
            await asyncio.sleep(0)

    try:
        for _ in range(10):  # queued before backlog=1 shortens the queue
            c = socket.socket(listener.family, socket.SOCK_STREAM)
            clients.append(c)
            c.connect(addr)
        serve(first, listener, got_first)
        # One connection per wakeup (backlog=1): the first server takes a
        # few, then stops serving with the rest still queued.
        first.run_until_complete(until(lambda: got_first))
        first.run_until_complete(turns(3))
        servers[0].close()
        first.run_until_complete(turns(3))
        serve(second, other, got_second)
        second.run_until_complete(until(lambda: len(got_first) + len(got_second) == 10))
        assert 1 <= len(got_first) < 10 and len(got_second) == 10 - len(got_first)
        for c in clients:  # none was reset: each still reaches a live transport
            c.sendall(b"x")
    finally:
        for loop, got in ((first, got_first), (second, got_second)):
            for tr in got:
                tr.close()
            for server in servers:
                if server.get_loop() is loop:
                    server.close()
            loop.run_until_complete(turns(3))
            loop.close()
        for c in clients:
            c.close()
        listener.close()
        other.close()
