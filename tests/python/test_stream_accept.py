"""The accept step of Unix and TLS servers, on both loops: the accepted
transport's extras (a Unix peer's address as socket.accept() spells it:
its path, '' when unnamed, bytes in the abstract namespace), the order of
the first callbacks, a protocol factory that raises, a failed handshake,
and no fd left over after many accept/close cycles. uvpy takes these
connections natively (bindings/acceptor.cc, its `wrap` for TLS) and in
debug mode through Python; both are run."""

import asyncio
import os
import socket
import ssl

import pytest


from accept_helpers import FailingOnce, Recorder, run
from conftest import active_connections, collect, open_fds, until


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize("client_name", ["unnamed", "path", "abstract"])
def test_unix_accepted_transport_extras(loop, tmp_path, debug, client_name):
    loop.set_debug(debug)
    path = str(tmp_path / "srv")

    async def main():
        log = []
        made = loop.create_future()
        server = await loop.create_unix_server(lambda: Recorder(log, made), path)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if client_name == "path":
            client.bind(str(tmp_path / "cli"))
        elif client_name == "abstract":
            client.bind(b"\0uvpy-accept-%d" % os.getpid())
        client.setblocking(False)
        await loop.sock_connect(client, path)
        await loop.sock_sendall(client, b"ping")
        tr = await asyncio.wait_for(made, 10)
        assert await asyncio.wait_for(loop.sock_recv(client, 100), 10) == b"ping"
        assert log[:3] == ["factory", "connection_made", "data_received"]
        peername = tr.get_extra_info("peername")
        assert peername == client.getsockname()
        assert type(peername) is type(client.getsockname())
        assert tr.get_extra_info("sockname") == path
        sock = tr.get_extra_info("socket")
        assert sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM
        assert sock.getsockname() == path
        assert active_connections(server) == 1
        client.close()
        await until(lambda: active_connections(server) == 0)
        assert log[-1] == "connection_lost"
        # The extras outlive the socket.
        assert tr.get_extra_info("peername") == peername
        assert tr.get_extra_info("sockname") == path
        server.close()
        await server.wait_closed()

    run(loop, main())


@pytest.mark.parametrize("debug", [False, True])
def test_unix_factory_raising_closes_the_connection_and_keeps_serving(loop, tmp_path, debug):
    factory = FailingOnce(loop, debug)
    path = str(tmp_path / "srv")

    async def main():
        server = await loop.create_unix_server(factory, path)
        first, first_writer = await asyncio.open_unix_connection(path)
        if not debug:  # (in debug mode the reported traceback holds the socket)
            assert await asyncio.wait_for(first.read(), 10) == b""
        first_writer.close()
        await first_writer.wait_closed()
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"x")
        assert await asyncio.wait_for(reader.readexactly(1), 10) == b"x"
        writer.close()
        await writer.wait_closed()
        await until(lambda: active_connections(server) == 0)
        server.close()
        await server.wait_closed()

    factory.run(main())


@pytest.mark.parametrize("family", ["tcp", "unix"])
@pytest.mark.parametrize("debug", [False, True])
def test_tls_accepted_connection(loop, tmp_path, server_ctx, client_ctx, family, debug):
    loop.set_debug(debug)
    path = str(tmp_path / "srv")

    async def main():
        log = []
        made = loop.create_future()
        if family == "tcp":
            server = await loop.create_server(lambda: Recorder(log, made), "127.0.0.1", 0,
                                              ssl=server_ctx)
            addr = server.sockets[0].getsockname()
            reader, writer = await asyncio.open_connection(*addr, ssl=client_ctx,
                                                           server_hostname="localhost")
        else:
            server = await loop.create_unix_server(lambda: Recorder(log, made), path,
                                                   ssl=server_ctx)
            reader, writer = await asyncio.open_unix_connection(path, ssl=client_ctx,
                                                                server_hostname="localhost")
        writer.write(b"hello")
        assert await asyncio.wait_for(reader.readexactly(5), 10) == b"hello"
        tr = await asyncio.wait_for(made, 10)
        assert log[:3] == ["factory", "connection_made", "data_received"]
        assert tr.get_extra_info("sslcontext") is server_ctx
        assert tr.get_extra_info("ssl_object").server_side
        assert tr.get_extra_info("peercert") is None
        assert tr.get_extra_info("peername") == writer.get_extra_info("sockname")
        assert tr.get_extra_info("sockname") == writer.get_extra_info("peername")
        assert active_connections(server) == 1
        writer.close()
        await writer.wait_closed()
        await until(lambda: active_connections(server) == 0)
        assert log[-1] == "connection_lost"
        server.close()
        await server.wait_closed()

    run(loop, main())


@pytest.mark.parametrize("debug", [False, True])
def test_tls_factory_raising_keeps_serving(loop, server_ctx, client_ctx, debug):
    factory = FailingOnce(loop, debug)

    async def main():
        server = await loop.create_server(factory, "127.0.0.1", 0, ssl=server_ctx)
        addr = server.sockets[0].getsockname()
        first = socket.socket()
        first.setblocking(False)
        await loop.sock_connect(first, addr)
        if not debug:  # (in debug mode the reported traceback holds the socket)
            # No SSLProtocol: the server closes before any handshake.
            assert await asyncio.wait_for(loop.sock_recv(first, 100), 10) == b""
        first.close()
        reader, writer = await asyncio.open_connection(*addr, ssl=client_ctx,
                                                       server_hostname="localhost")
        writer.write(b"x")
        assert await asyncio.wait_for(reader.readexactly(1), 10) == b"x"
        writer.close()
        await writer.wait_closed()
        await until(lambda: active_connections(server) == 0)
        server.close()
        await server.wait_closed()

    factory.run(main())


@pytest.mark.parametrize("kind", ["unix", "tls"])
def test_no_fd_left_after_many_accept_close_cycles(loop, tmp_path, server_ctx, client_ctx, kind):
    run(loop, asyncio.sleep(0))  # lazily made loop fds are not leaks
    path = str(tmp_path / "srv")
    rounds = 300 if kind == "unix" else 50

    async def main():
        lost = []

        class Closer(asyncio.Protocol):
            def connection_made(self, transport):
                transport.close()

            def connection_lost(self, exc):
                lost.append(exc)

        if kind == "unix":
            server = await loop.create_unix_server(Closer, path)
        else:
            server = await loop.create_server(Closer, "127.0.0.1", 0, ssl=server_ctx)
            addr = server.sockets[0].getsockname()
        for _ in range(rounds):
            if kind == "unix":
                reader, writer = await asyncio.open_unix_connection(path)
                assert await asyncio.wait_for(reader.read(), 10) == b""
            else:
                reader, writer = await asyncio.open_connection(
                    *addr, ssl=client_ctx, server_hostname="localhost")
                assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, ssl.SSLError):
                pass  # the server's close_notify crossed the client's
        await until(lambda: len(lost) == rounds)
        assert lost == [None] * rounds
        server.close()
        await server.wait_closed()

    collect()
    fds = open_fds()
    run(loop, main())
    collect()
    assert open_fds() == fds
