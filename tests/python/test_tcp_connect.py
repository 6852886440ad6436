"""create_connection details, on both loops: what a finished connect leaves
behind, and which sockets get TCP_NODELAY.
"""

import asyncio
import gc
import socket

import pytest


def run(loop, coro):
    return loop.run_until_complete(coro)


def one_connection(loop):
    """A protocol factory for a server's one connection, and a future its
    connection_lost completes: the test waits for the server's end of the
    connection to close, not only for its own."""
    lost = loop.create_future()

    class ServerEnd(asyncio.Protocol):
        def connection_lost(self, exc):
            lost.set_result(exc)

    return ServerEnd, lost


def refused_futures():
    return [o for o in gc.get_objects()
            if isinstance(o, asyncio.Future) and o.done() and not o.cancelled()
            and isinstance(o.exception(), ConnectionRefusedError)]


@pytest.mark.parametrize("delay", [None, 0.25])
def test_a_finished_connect_leaves_no_future_holding_a_failed_attempt(loop, delay):
    """The refused first address must not leave a Future <-> traceback cycle."""
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # nothing listens there: refused

    async def main():
        server_end, lost = one_connection(loop)
        srv = await loop.create_server(server_end, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]

        async def getaddrinfo(host, p, **kwargs):
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                     ("127.0.0.1", dead_port)),
                    (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                     ("127.0.0.1", port))]

        loop.getaddrinfo = getaddrinfo
        try:
            tr, _ = await loop.create_connection(asyncio.Protocol, "two.addresses.invalid", port,
                                                 happy_eyeballs_delay=delay)
        finally:
            del loop.getaddrinfo
        tr.close()
        await asyncio.wait_for(lost, 30)
        srv.close()
        await srv.wait_closed()

    gc.collect()
    gc.disable()  # only reference counting frees: a cycle would stay
    try:
        run(loop, main())
        assert refused_futures() == []
    finally:
        gc.enable()


@pytest.mark.parametrize("proto", [0, socket.IPPROTO_TCP])
def test_nodelay_on_a_given_socket_as_asyncio_sets_it(loop, proto):
    """asyncio sets TCP_NODELAY only where sock.proto says TCP (base_events._set_nodelay)."""

    async def main():
        server_end, lost = one_connection(loop)
        srv = await loop.create_server(server_end, "127.0.0.1", 0)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
        s.connect(srv.sockets[0].getsockname())
        tr, _ = await loop.create_connection(asyncio.Protocol, sock=s)
        try:
            return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            tr.close()
            await asyncio.wait_for(lost, 30)
            srv.close()
            await srv.wait_closed()

    assert run(loop, main()) is (proto == socket.IPPROTO_TCP)


def test_nodelay_on_a_connection_by_address(loop):
    async def main():
        server_end, lost = one_connection(loop)
        srv = await loop.create_server(server_end, "127.0.0.1", 0)
        tr, _ = await loop.create_connection(asyncio.Protocol, *srv.sockets[0].getsockname())
        try:
            sock = tr.get_extra_info("socket")
            return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            tr.close()
            await asyncio.wait_for(lost, 30)
            srv.close()
            await srv.wait_closed()

    assert run(loop, main()) is True
