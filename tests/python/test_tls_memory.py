"""TLS connections leave nothing behind, on uvpy and on stock asyncio.

Two checks:

* CPython's test_create_connection_memory_leak (Lib/test/test_asyncio/
  test_ssl.py): after a client connection made with
  create_connection(ssl=ctx) is closed, nothing the loop made keeps the
  client's SSLContext alive, even while the client protocol still holds
  its transport.
* Many handshakes (server and client both on the loop under test, one
  1-byte echo each, both ends closed and seen closed before the next)
  keep memory flat: after a warm-up, the fd count does not move, the
  number of gc-tracked objects and the Python heap (tracemalloc, started
  after the warm-up, so it counts what is allocated and kept from then
  on) grow by less than a per-handshake leak of one object or 1 KiB
  would make them, and so does the resident set (which sees OpenSSL's
  own allocations too). By default 200 warm-up and 800 measured
  handshakes per loop (a few seconds); UVPY_SOAK=1 runs 1,000 and 10,000,
  and the RSS bound then catches a native leak of 1 KiB per handshake,
  which the default count cannot tell from malloc's noise.
"""

import asyncio
import gc
import os
import socket
import ssl
import threading
import tracemalloc
import weakref

import pytest

pytest.importorskip("trustme")

from conftest import collect, open_fds  # noqa: E402

GUARD = 60  # seconds; a hang guard only, never an expectation
SOAK = os.environ.get("UVPY_SOAK") == "1"


def run(loop, coro, guard=GUARD):
    return loop.run_until_complete(asyncio.wait_for(coro, guard))


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_client_context_is_released_after_the_connection(loop, ca, server_ctx):
    payload = b"1" * 1000
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client_ctx)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    served = []

    def serve():
        # A blocking TLS server in a thread, as CPython's tcp_server: the
        # loop holds only the client side.
        sock, _ = listener.accept()
        sock.settimeout(GUARD)
        with server_ctx.wrap_socket(sock, server_side=True) as tls:
            tls.sendall(b"O")
            got = b""
            while len(got) < len(payload):
                chunk = tls.recv(len(payload) - len(got))
                if not chunk:
                    break
                got += chunk
            served.append(got)
            tls.unwrap()  # close_notify: the client sees EOF

    thread = threading.Thread(target=serve)
    thread.start()

    class ClientProto(asyncio.Protocol):
        def __init__(self, on_data, on_eof):
            self.on_data, self.on_eof = on_data, on_eof
            self.made = 0

        def connection_made(self, transport):
            self.made += 1
            self.transport = transport  # the user keeps its transport

        def data_received(self, data):
            self.on_data.set_result(data)

        def eof_received(self):
            self.on_eof.set_result(True)

    async def client():
        on_data, on_eof = loop.create_future(), loop.create_future()
        tr, proto = await loop.create_connection(lambda: ClientProto(on_data, on_eof),
                                                 "127.0.0.1", port, ssl=client_ctx,
                                                 server_hostname="localhost")
        assert await on_data == b"O"
        tr.write(payload)
        await on_eof
        tr.close()
        assert proto.made == 1
        return proto

    try:
        proto = run(loop, client())
    finally:
        thread.join(GUARD)
        listener.close()
    assert served == [payload]
    run(loop, asyncio.sleep(0))
    ref = weakref.ref(client_ctx)
    del client_ctx
    collect()
    assert ref() is None
    assert proto.transport.is_closing()


class _Echo(asyncio.Protocol):
    def __init__(self, lost):
        self.lost = lost

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def connection_lost(self, exc):
        self.lost.set_result(exc)


class _Once(asyncio.Protocol):
    def __init__(self, got, lost):
        self.got, self.lost = got, lost

    def data_received(self, data):
        if not self.got.done():
            self.got.set_result(data)

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def test_handshakes_keep_memory_flat(loop, server_ctx, client_ctx):
    warmup, measured = (1000, 10_000) if SOAK else (200, 800)
    server_lost = []

    def server_factory():
        fut = loop.create_future()
        server_lost.append(fut)
        return _Echo(fut)

    async def handshakes(port, n):
        for _ in range(n):
            got, lost = loop.create_future(), loop.create_future()
            tr, _ = await loop.create_connection(lambda: _Once(got, lost), "127.0.0.1", port,
                                                 ssl=client_ctx, server_hostname="localhost")
            tr.write(b"x")
            assert await got == b"x"
            tr.close()
            assert await lost is None
            assert await server_lost.pop() is None

    def census():
        collect()
        return open_fds(), len(gc.get_objects()), tracemalloc.get_traced_memory()[0], rss_bytes()

    async def main():
        server = await loop.create_server(server_factory, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            await handshakes(port, warmup)
            tracemalloc.start()
            try:
                fds0, objs0, heap0, rss0 = census()
                await handshakes(port, measured)
                fds1, objs1, heap1, rss1 = census()
            finally:
                tracemalloc.stop()
        finally:
            server.close()
            await server.wait_closed()
        report = (f"after {warmup} handshakes: {fds0} fds, {objs0} objects, {heap0} B heap, "
                  f"{rss0} B RSS; after {measured} more: {fds1}, {objs1}, {heap1}, {rss1}")
        assert fds1 == fds0, report
        # A leak of one object per handshake would add `measured` objects;
        # a leak of 1 KiB per handshake, `measured` KiB of heap or RSS.
        assert objs1 - objs0 < measured // 10, report
        assert heap1 - heap0 < measured * 1024 // 8, report
        assert rss1 - rss0 < max(4 << 20, measured * 1024 // 2), report

    run(loop, main(), guard=GUARD * (10 if SOAK else 2))
