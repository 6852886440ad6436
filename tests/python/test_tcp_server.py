"""create_server, create_connection, connect_accepted_socket and the
asyncio streams API over them, on both loops."""

import asyncio
import errno
import gc
import socket
import sys

import pytest

import uvpy

from conftest import active_connections, close_server, collect, free_port, has_ipv6, open_fds


def run(loop, coro):
    return loop.run_until_complete(coro)


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        self.transport.close()


class Client(asyncio.Protocol):
    def __init__(self, loop):
        self.data = bytearray()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.data += data

    def connection_lost(self, exc):
        self.lost.set_result(exc)


async def echo_roundtrip(loop, addr, payload=b"ping"):
    tr, proto = await loop.create_connection(lambda: Client(loop), *addr[:2])
    tr.write(payload)
    tr.write_eof()
    await proto.lost
    return bytes(proto.data)


# -- create_server ----------------------------------------------------------------


def test_server_basics(loop):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        assert isinstance(server, asyncio.AbstractServer)
        assert server.get_loop() is loop
        assert server.is_serving()
        (sock,) = server.sockets
        assert sock.family == socket.AF_INET
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        assert "sockets=" in repr(server)
        assert await echo_roundtrip(loop, sock.getsockname()) == b"ping"
        server.close()
        assert not server.is_serving()
        assert server.sockets == ()
        await server.wait_closed()
        server.close()  # idempotent

    run(loop, main())


def test_server_as_async_context_manager(loop):
    async def main():
        async with await loop.create_server(Echo, "127.0.0.1", 0) as server:
            addr = server.sockets[0].getsockname()
            assert await echo_roundtrip(loop, addr) == b"ping"
        assert not server.is_serving()
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(lambda: Client(loop), *addr)

    run(loop, main())


def test_start_serving_false_then_start_serving(loop):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0, start_serving=False)
        assert not server.is_serving()
        await server.start_serving()
        assert server.is_serving()
        await server.start_serving()  # idempotent
        assert await echo_roundtrip(loop, server.sockets[0].getsockname()) == b"ping"
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_serve_forever(loop):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0, start_serving=False)
        task = loop.create_task(server.serve_forever())
        await asyncio.sleep(0)
        assert server.is_serving()
        with pytest.raises(RuntimeError, match="already being awaited"):
            await server.serve_forever()
        assert await echo_roundtrip(loop, server.sockets[0].getsockname()) == b"ping"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not server.is_serving()
        with pytest.raises(RuntimeError, match="is closed"):
            await server.serve_forever()

    run(loop, main())


def test_close_stops_serving_but_keeps_accepted_connections(loop):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        tr, proto = await loop.create_connection(lambda: Client(loop), *addr)
        tr.write(b"one")
        while proto.data != b"one":
            await asyncio.sleep(0)
        server.close()
        waiter = loop.create_task(server.wait_closed())
        await asyncio.sleep(0)
        # 3.11 returns at once once closed; from 3.12.1 asyncio's
        # wait_closed() also waits for the accepted connection (uvpy's keeps
        # 3.11's behaviour: uvpy/_server.py, invariant 3).
        stock_waits = sys.version_info >= (3, 12, 1) and not isinstance(loop, uvpy.Loop)
        assert waiter.done() is not stock_waits
        tr.write(b"two")  # the accepted connection still echoes
        while proto.data != b"onetwo":
            await asyncio.sleep(0)
        tr.close()
        await proto.lost
        await waiter

    run(loop, main())


def test_wait_closed_waits_for_attached_connections(loop):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        tr, proto = await loop.create_connection(lambda: Client(loop), *addr)
        tr.write(b"x")
        while not proto.data:
            await asyncio.sleep(0)
        waiter = loop.create_task(server.wait_closed())
        await asyncio.sleep(0)
        server.close()
        await asyncio.sleep(0)
        assert not waiter.done()  # the echo connection is still attached
        tr.write_eof()
        await proto.lost
        await waiter

    run(loop, main())


class Sink(asyncio.Protocol):
    """A server-side protocol that keeps its transport and its end."""

    def __init__(self, loop, made):
        self.lost = loop.create_future()
        made.append(self)

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def needs_close_clients(loop):
    # uvpy's Server has them on every Python. Checked before anything is
    # opened: a skip half-way would leave the server open.
    if not isinstance(loop, uvpy.Loop) and sys.version_info < (3, 13):
        pytest.skip("asyncio.Server.close_clients()/abort_clients() are Python 3.13's")


@pytest.mark.parametrize("method", ["close_clients", "abort_clients"])
def test_close_clients_and_abort_clients_end_only_this_servers_connections(loop, method):
    needs_close_clients(loop)
    BIG = 8 * 1024 * 1024

    async def main():
        made, other_made = [], []
        server = await loop.create_server(lambda: Sink(loop, made), "127.0.0.1", 0)
        other = await loop.create_server(lambda: Sink(loop, other_made), "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        clients = []
        for _ in range(2):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(addr)
            sock.setblocking(False)
            tr, proto = await loop.create_connection(lambda: Client(loop), sock=sock)
            tr.pause_reading()
            clients.append((tr, proto))
        otr, oproto = await loop.create_connection(lambda: Client(loop),
                                                   *other.sockets[0].getsockname())
        while len(made) < 2 or len(other_made) < 1:
            await asyncio.sleep(0)
        for p in made:
            p.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            p.transport.write(b"x" * BIG)  # most of it waits in the transport
            assert p.transport.get_write_buffer_size() > 0
        getattr(server, method)()
        assert all(p.transport.is_closing() for p in made)
        # close() sends what was written first, abort() drops it.
        for tr, proto in clients:
            tr.resume_reading()
            assert await proto.lost is None
            if method == "close_clients":
                assert len(proto.data) == BIG
            else:
                assert len(proto.data) < BIG
        for p in made:
            assert await p.lost is None
        assert active_connections(server) == 0
        # The server itself still serves; the other server's connection is untouched.
        assert server.is_serving()
        assert await echo_roundtrip(loop, addr, b"") == b""
        assert not other_made[0].transport.is_closing()
        otr.close()
        await other_made[0].lost
        getattr(server, method)()  # nothing left to end
        for s in (server, other):
            s.close()
            await s.wait_closed()

    run(loop, main())


def test_cancelling_serve_forever_closes_the_clients(loop):
    # A client that never goes does not hold up a cancelled serve_forever().
    if not isinstance(loop, uvpy.Loop) and sys.version_info < (3, 14):
        pytest.skip("stock asyncio's serve_forever() closes its clients when cancelled "
                    "from Python 3.14")

    async def main():
        made = []
        server = await loop.create_server(lambda: Sink(loop, made), "127.0.0.1", 0,
                                          start_serving=False)
        task = loop.create_task(server.serve_forever())
        await asyncio.sleep(0)
        tr, proto = await loop.create_connection(lambda: Client(loop),
                                                 *server.sockets[0].getsockname())
        while not made:
            await asyncio.sleep(0)
        waiter = loop.create_task(server.wait_closed())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await made[0].lost is None
        assert await proto.lost is None
        await waiter
        assert not server.is_serving()

    run(loop, main())


def test_close_clients_then_wait_closed(loop):
    needs_close_clients(loop)
    async def main():
        made = []
        server = await loop.create_server(lambda: Sink(loop, made), "127.0.0.1", 0)
        tr, proto = await loop.create_connection(lambda: Client(loop),
                                                 *server.sockets[0].getsockname())
        while not made:
            await asyncio.sleep(0)
        server.close()
        waiter = loop.create_task(server.wait_closed())
        server.close_clients()
        await waiter  # the one attached connection is gone
        assert await proto.lost is None
        assert active_connections(server) == 0

    run(loop, main())


def test_close_clients_of_a_unix_and_a_tls_server(loop, tmp_path, server_ctx, client_ctx):
    needs_close_clients(loop)
    async def main():
        made = []
        unix = await loop.create_unix_server(lambda: Sink(loop, made), str(tmp_path / "s"))
        tls = await loop.create_server(lambda: Sink(loop, made), "127.0.0.1", 0, ssl=server_ctx)
        utr, uproto = await loop.create_unix_connection(lambda: Client(loop), str(tmp_path / "s"))
        ttr, tproto = await loop.create_connection(
            lambda: Client(loop), *tls.sockets[0].getsockname(), ssl=client_ctx,
            server_hostname="localhost")
        while len(made) < 2 or not all(hasattr(p, "transport") for p in made):
            await asyncio.sleep(0)  # both server-side handshakes are done
        unix.abort_clients()
        tls.close_clients()
        assert await uproto.lost is None
        await tproto.lost  # None or a reset: the socket closes without close_notify
        for p in made:
            await p.lost
        for s in (unix, tls):
            assert active_connections(s) == 0
            s.close()
            await s.wait_closed()

    run(loop, main())


def test_many_connections_at_once(loop):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0, backlog=200)
        addr = server.sockets[0].getsockname()
        payloads = [b"conn-%d" % i for i in range(100)]
        got = await asyncio.gather(*[echo_roundtrip(loop, addr, p) for p in payloads])
        assert got == payloads
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_host_list_and_all_interfaces(loop):
    async def main():
        port = free_port()
        server = await loop.create_server(Echo, ["127.0.0.1", "localhost", "127.0.0.1"], port)
        families = sorted(s.family for s in server.sockets)
        # localhost may add ::1; 127.0.0.1 is bound once.
        assert families.count(socket.AF_INET) == 1
        for sock in server.sockets:
            assert await echo_roundtrip(loop, sock.getsockname()) == b"ping"
            if sock.family == socket.AF_INET6:
                assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
        server.close()

        for host in (None, ""):
            server = await loop.create_server(Echo, host, 0)
            assert {s.family for s in server.sockets} >= {socket.AF_INET}
            # port 0: each family's socket gets its own port
            for sock in server.sockets:
                local = "::1" if sock.family == socket.AF_INET6 else "127.0.0.1"
                port = sock.getsockname()[1]
                assert await echo_roundtrip(loop, (local, port)) == b"ping"
            server.close()

    run(loop, main())


@pytest.mark.skipif(not has_ipv6(), reason="no IPv6 loopback on this machine")
def test_ipv6_server(loop):
    async def main():
        server = await loop.create_server(Echo, "::1", 0, family=socket.AF_INET6)
        (sock,) = server.sockets
        assert sock.family == socket.AF_INET6
        assert await echo_roundtrip(loop, sock.getsockname()) == b"ping"
        server.close()

    run(loop, main())


class Recorder(asyncio.Protocol):
    """Records what the accepted transport says of itself, then echoes."""

    seen = []

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        Recorder.seen.append((transport.get_extra_info("peername"), sock.getpeername(),
                              sock.family, sock.type, sock.proto, sock.gettimeout()))

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        self.transport.close()


def _accepted_sockets_look_like_accept(loop, host, family):
    Recorder.seen = []

    async def main():
        server = await loop.create_server(Recorder, host, 0, family=family)
        addr = server.sockets[0].getsockname()
        clients = []
        for _ in range(3):
            c = socket.socket(family)
            c.setblocking(False)
            await loop.sock_connect(c, addr[:2])
            clients.append(c)
        for c in clients:
            await loop.sock_sendall(c, b"x")
            assert await asyncio.wait_for(loop.sock_recv(c, 1), 10) == b"x"
        server.close()
        names = [c.getsockname() for c in clients]
        for c in clients:
            c.close()
        await close_server(server)  # as wait_closed() on 3.12.1+: once the accepted connections are gone
        return names

    names = run(loop, main())
    # What socket.accept() gives on the stock loop: the peer's address in
    # the socket module's own spelling (a 4-tuple for IPv6), the listener's
    # family/type/proto, a non-blocking socket.
    assert [peer for peer, *_ in Recorder.seen] == names
    assert [real for _, real, *_ in Recorder.seen] == names
    for _, _, fam, typ, proto, timeout in Recorder.seen:
        assert (fam, typ, proto, timeout) == (family, socket.SOCK_STREAM, socket.IPPROTO_TCP, 0.0)


def test_accepted_sockets_look_like_socket_accept_ipv4(loop):
    _accepted_sockets_look_like_accept(loop, "127.0.0.1", socket.AF_INET)


@pytest.mark.skipif(not has_ipv6(), reason="no IPv6 loopback on this machine")
def test_accepted_sockets_look_like_socket_accept_ipv6(loop):
    _accepted_sockets_look_like_accept(loop, "::1", socket.AF_INET6)


def test_unix_listener_passed_as_sock_is_served(loop, tmp_path):
    # create_server(sock=) takes any stream socket; a non-IP listener is
    # accepted with socket.accept() (no native accept path for AF_UNIX).
    path = str(tmp_path / "s")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)

    async def main():
        server = await loop.create_server(Echo, sock=listener)
        c = socket.socket(socket.AF_UNIX)
        c.setblocking(False)
        await loop.sock_connect(c, path)
        await loop.sock_sendall(c, b"unix")
        assert await asyncio.wait_for(loop.sock_recv(c, 10), 10) == b"unix"
        c.close()
        await close_server(server)

    run(loop, main())


def test_burst_past_what_is_accepted_ahead_is_served_in_full(loop):
    # More connections than the io_uring backend accepts ahead (128) arrive
    # in the backlog at once: every one is served, none is dropped.
    lost = []

    class Counted(Echo):
        def connection_lost(self, exc):
            lost.append(exc)

    async def main():
        server = await loop.create_server(Counted, "127.0.0.1", 0, backlog=1024)
        addr = server.sockets[0].getsockname()
        clients = []
        for _ in range(400):  # all in the backlog before the loop runs again
            c = socket.socket()
            c.connect(addr)
            c.setblocking(False)
            clients.append(c)
        for i, c in enumerate(clients):
            await loop.sock_sendall(c, b"%d;" % i)
        for i, c in enumerate(clients):
            want = b"%d;" % i
            got = b""
            while len(got) < len(want):
                got += await asyncio.wait_for(loop.sock_recv(c, 64), 10)
            assert got == want
            c.close()
        for _ in range(1000):  # each server side closes on its client's EOF
            if len(lost) == len(clients):
                break
            await asyncio.sleep(0.01)
        assert lost == [None] * len(clients)
        server.close()
        await server.wait_closed()

    run(loop, asyncio.sleep(0))  # lazily created loop fds (signal wakeup) are not leaks
    collect()  # and earlier tests' garbage must not close fds during this one
    fds = open_fds()
    run(loop, main())
    collect()
    assert open_fds() == fds


def test_server_on_an_existing_socket(loop):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))

    async def main():
        server = await loop.create_server(Echo, sock=sock, backlog=5)
        assert server.sockets[0].fileno() == sock.fileno()
        assert sock.gettimeout() == 0
        assert await echo_roundtrip(loop, sock.getsockname()) == b"ping"
        server.close()
        assert sock.fileno() == -1  # the server owns it

    run(loop, main())


def test_reuse_port(loop):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0, reuse_port=True)
        sock = server.sockets[0]
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        twin = await loop.create_server(Echo, "127.0.0.1", sock.getsockname()[1],
                                        reuse_port=True)
        server.close()
        twin.close()

    run(loop, main())


def test_address_in_use(loop):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    with pytest.raises(OSError, match="error while attempting to bind on address") as info:
        run(loop, loop.create_server(Echo, "127.0.0.1", taken.getsockname()[1],
                                     reuse_address=False))
    assert info.value.errno == 98  # EADDRINUSE
    taken.close()


def test_create_server_bad_arguments(loop):
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket()
    cases = [
        (dict(sock=udp), ValueError, "A Stream Socket was expected"),
        (dict(host="127.0.0.1", port=0, sock=tcp), ValueError,
         "host/port and sock can not be specified at the same time"),
        (dict(), ValueError, "Neither host/port nor sock were specified"),
        (dict(host="127.0.0.1", port=0, ssl=True), TypeError,
         "ssl argument must be an SSLContext or None"),
        (dict(host="127.0.0.1", port=0, ssl_handshake_timeout=1), ValueError,
         "ssl_handshake_timeout is only meaningful with ssl"),
        (dict(host="127.0.0.1", port=0, ssl_shutdown_timeout=1), ValueError,
         "ssl_shutdown_timeout is only meaningful with ssl"),
    ]
    for kwargs, exc, message in cases:
        with pytest.raises(exc, match=message):
            run(loop, loop.create_server(Echo, **kwargs))
    udp.close()
    tcp.close()


@pytest.mark.parametrize("loop_name", ["uvpy"])
def test_keep_alive(loop):
    # uvpy extension (asyncio 3.13's keep_alive=): not in 3.11's signature.
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0, keep_alive=True)
        assert server.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        server.close()

    run(loop, main())


# -- create_connection -------------------------------------------------------------


def test_create_connection_variants(loop):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        host, port = server.sockets[0].getsockname()
        local_port = free_port()
        tr, proto = await loop.create_connection(lambda: Client(loop), host, port,
                                                 local_addr=("127.0.0.1", local_port))
        assert tr.get_extra_info("sockname") == ("127.0.0.1", local_port)
        tr.close()
        await proto.lost
        tr, proto = await loop.create_connection(lambda: Client(loop), "localhost", port,
                                                 family=socket.AF_INET,
                                                 proto=socket.IPPROTO_TCP)
        assert tr.get_extra_info("peername") == (host, port)
        tr.close()
        await proto.lost
        # Happy eyeballs: localhost may be ::1 first, where nobody listens.
        tr, proto = await loop.create_connection(lambda: Client(loop), "localhost", port,
                                                 happy_eyeballs_delay=0.05)
        assert tr.get_extra_info("peername") == (host, port)
        tr.close()
        await proto.lost
        tr, proto = await loop.create_connection(lambda: Client(loop), "localhost", port,
                                                 interleave=2)
        tr.close()
        await proto.lost
        server.close()

    run(loop, main())


def test_create_connection_with_a_connected_socket(loop):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, server.sockets[0].getsockname())
        tr, proto = await loop.create_connection(lambda: Client(loop), sock=sock)
        assert tr.get_extra_info("socket").fileno() == sock.fileno()
        with pytest.raises(RuntimeError, match="is used by transport"):
            loop.add_reader(sock.fileno(), lambda: None)
        with pytest.raises(RuntimeError, match="is used by transport"):
            await loop.sock_recv(sock, 1)
        tr.write(b"via sock")
        tr.write_eof()
        await proto.lost
        assert proto.data == b"via sock"
        assert sock.fileno() == -1  # the transport closed it
        server.close()

    run(loop, main())


def test_create_connection_bad_arguments(loop):
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket()
    cases = [
        (dict(sock=udp), ValueError, "A Stream Socket was expected"),
        (dict(host="127.0.0.1", port=1, sock=tcp), ValueError,
         "host/port and sock can not be specified at the same time"),
        (dict(), ValueError, "host and port was not specified and no sock specified"),
        (dict(host="127.0.0.1", port=1, server_hostname="x"), ValueError,
         "server_hostname is only meaningful with ssl"),
        (dict(sock=tcp, ssl=True), ValueError,
         "You must set server_hostname when using ssl without a host"),
        (dict(host="127.0.0.1", port=1, ssl_handshake_timeout=1), ValueError,
         "ssl_handshake_timeout is only meaningful with ssl"),
        (dict(host="127.0.0.1", port=1, ssl_shutdown_timeout=1), ValueError,
         "ssl_shutdown_timeout is only meaningful with ssl"),
    ]
    for kwargs, exc, message in cases:
        with pytest.raises(exc, match=message):
            run(loop, loop.create_connection(lambda: Client(loop), **kwargs))
    udp.close()
    tcp.close()


def test_create_connection_refused_and_local_addr_errors(loop):
    port = free_port()
    with pytest.raises(ConnectionRefusedError):
        run(loop, loop.create_connection(lambda: Client(loop), "127.0.0.1", port))
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    with pytest.raises(OSError, match="error while attempting to bind on address") as info:
        run(loop, loop.create_connection(lambda: Client(loop), "127.0.0.1", port,
                                         local_addr=taken.getsockname()))
    assert info.value.errno == 98
    with pytest.raises(OSError, match="no matching local address with family="):
        run(loop, loop.create_connection(lambda: Client(loop), "127.0.0.1", port,
                                         local_addr=("::1", 0)))
    taken.close()


def test_create_connection_cancelled_while_connecting(loop):
    # A SYN to a listener with a full backlog stays in progress.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    fillers = []

    async def main():
        for _ in range(8):  # fill the accept queue
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(srv.getsockname())
            fillers.append(s)
        task = loop.create_task(loop.create_connection(lambda: Client(loop),
                                                       *srv.getsockname()))
        for _ in range(5):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(loop, main())
    for s in fillers:
        s.close()
    srv.close()


# -- connect_accepted_socket ----------------------------------------------------------


def test_connect_accepted_socket(loop):
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    client = socket.create_connection(lst.getsockname())
    conn, _ = lst.accept()

    async def main():
        tr, proto = await loop.connect_accepted_socket(Echo, conn)
        assert isinstance(tr, asyncio.Transport)
        assert tr.get_extra_info("peername") == client.getsockname()
        client.setblocking(False)
        await loop.sock_sendall(client, b"accepted")
        assert await loop.sock_recv(client, 100) == b"accepted"
        client.shutdown(socket.SHUT_WR)
        while not tr.is_closing():
            await asyncio.sleep(0)

    run(loop, main())
    run(loop, asyncio.sleep(0))
    assert conn.fileno() == -1
    with socket.socket(type=socket.SOCK_DGRAM) as udp:
        with pytest.raises(ValueError, match="A Stream Socket was expected"):
            run(loop, loop.connect_accepted_socket(Echo, udp))
    with pytest.raises(ValueError, match="ssl_handshake_timeout is only meaningful"):
        run(loop, loop.connect_accepted_socket(Echo, client, ssl_handshake_timeout=1))
    client.close()
    lst.close()


# -- asyncio streams on top -------------------------------------------------------------


def test_start_server_and_open_connection(loop):
    async def handle(reader, writer):
        while line := await reader.readline():
            writer.write(line.upper())
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        for word in (b"alpha\n", b"beta\n", b"x" * 50000 + b"\n"):
            writer.write(word)
            await writer.drain()
            assert await reader.readline() == word.upper()
        writer.write_eof()
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_stream_drain_waits_for_a_slow_reader(loop):
    got = []

    async def slow(reader, writer):
        await asyncio.sleep(0)
        got.append(len(await reader.read()))
        writer.close()

    async def main():
        server = await asyncio.start_server(slow, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        writer.transport.set_write_buffer_limits(high=1024)
        for _ in range(64):
            writer.write(b"d" * 65536)
            await writer.drain()
            assert writer.transport.get_write_buffer_size() <= 1024 + 65536
        writer.write_eof()
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        server.close()

    run(loop, main())
    assert got == [64 * 65536]


# -- resources ----------------------------------------------------------------------------


def test_fds_and_refcounts_flat_over_many_server_rounds(loop):
    payload = b"q" * 3000

    async def round_trip():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        for _ in range(5):
            assert await echo_roundtrip(loop, addr, payload) == payload
        server.close()
        await server.wait_closed()

    run(loop, round_trip())
    collect()
    fds = open_fds()
    refs = (sys.getrefcount(payload), sys.getrefcount(Echo))
    servers = sum(1 for o in gc.get_objects() if isinstance(o, asyncio.AbstractServer))
    for _ in range(30):
        run(loop, round_trip())
    collect()
    assert open_fds() == fds
    assert (sys.getrefcount(payload), sys.getrefcount(Echo)) == refs
    assert sum(1 for o in gc.get_objects() if isinstance(o, asyncio.AbstractServer)) == servers


# -- EMFILE on accept ------------------------------------------------------------------


def _lower_fd_limit():
    """Lower the soft fd limit to a little above what is open now. Returns
    (exhaust, restore): exhaust() fills the rest with /dev/null, so the next
    accept fails with EMFILE; restore() undoes both.

    The limit is lowered before the server starts listening: io_uring reads
    RLIMIT_NOFILE when an accept is submitted, so the backend's multishot
    accept, armed once per listener, must see the low limit from the start
    (lowering it later only fools readiness-based accept()s)."""
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fds = sorted(int(n) for n in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(fds) + 32, hard))
    fillers = []

    def exhaust():
        try:
            while True:
                fillers.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass

    def restore():
        for fd in fillers:
            os.close(fd)
        del fillers[:]
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return exhaust, restore


def test_emfile_on_accept_keeps_serving_and_retries(loop):
    run(loop, asyncio.sleep(0))  # lazily created loop fds (signal wakeup) are not leaks
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    payload = b"still here"

    async def main():
        exhaust, restore = _lower_fd_limit()
        try:
            server = await loop.create_server(Echo, "127.0.0.1", 0)
            addr = server.sockets[0].getsockname()
            # The handshake completes in the kernel's backlog, before any accept().
            client = socket.socket()
            client.connect(addr)
            client.setblocking(False)
            exhaust()
            for _ in range(20):  # the accept attempt fails with EMFILE
                await asyncio.sleep(0.01)
                if contexts:
                    break
        finally:
            restore()
        # uvpy reports once per wakeup; asyncio 3.11 once per backlog slot.
        assert contexts
        assert {c["message"] for c in contexts} == {"socket.accept() out of system resource"}
        assert {c["exception"].errno for c in contexts} == {errno.EMFILE}
        assert server.is_serving()
        # After asyncio's ACCEPT_RETRY_DELAY the listener is watched again and
        # the queued connection is served.
        await loop.sock_sendall(client, payload)
        got = await asyncio.wait_for(loop.sock_recv(client, 100), 10)
        assert got == payload
        # New connections are served too.
        assert await echo_roundtrip(loop, addr, payload) == payload
        client.shutdown(socket.SHUT_WR)  # Echo closes its side on EOF
        assert await asyncio.wait_for(loop.sock_recv(client, 100), 10) == b""
        client.close()
        server.close()
        await server.wait_closed()

    fds = open_fds()
    run(loop, main())
    collect()
    assert open_fds() == fds


def test_server_closed_during_accept_retry_delay(loop, loop_name):
    run(loop, asyncio.sleep(0))
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    async def main():
        exhaust, restore = _lower_fd_limit()
        try:
            server = await loop.create_server(Echo, "127.0.0.1", 0)
            addr = server.sockets[0].getsockname()
            client = socket.socket()
            client.connect(addr)
            exhaust()
            for _ in range(20):
                await asyncio.sleep(0.01)
                if contexts:
                    break
        finally:
            restore()
        assert contexts
        assert {c["message"] for c in contexts} == {"socket.accept() out of system resource"}
        del contexts[:]
        server.close()
        await server.wait_closed()
        client.close()
        # The retry fires after the listener is closed.
        await asyncio.sleep(asyncio.constants.ACCEPT_RETRY_DELAY + 0.2)

    fds = open_fds()
    run(loop, main())
    collect()
    assert open_fds() == fds
    if loop_name == "asyncio":
        # asyncio 3.11 re-adds a reader for the closed listener's fd -1 and
        # reports the ValueError; uvpy drops the stale retry instead.
        assert contexts
        assert all(isinstance(c["exception"], ValueError) for c in contexts)
    else:
        assert contexts == [], contexts
