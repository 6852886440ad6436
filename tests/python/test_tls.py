"""TLS: ssl= on create_connection / create_server / connect_accepted_socket,
loop.start_tls and StreamWriter.start_tls, on uvpy and on stock asyncio
(TLS over Unix sockets is tested in test_unix.py).

Certificates come from trustme (conftest's ca, server_ctx and client_ctx:
a throwaway CA per module). The stock loop is the oracle: every
expectation below holds on it too. Each failure case checks the exception
class asyncio raises and that the process holds no more fds afterwards
than before.
"""

import asyncio
import gc
import socket
import ssl
import sys
import threading
import weakref
from asyncio import sslproto

import pytest

import uvpy

pytest.importorskip("trustme")

from conftest import active_connections, collect, open_fds, until  # noqa: E402

GUARD = 30  # seconds; a hang guard only, never an expectation


def run(loop, coro):
    return loop.run_until_complete(asyncio.wait_for(coro, GUARD))


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class Client(asyncio.Protocol):
    """Records what a client connection sees."""

    def __init__(self, loop):
        self.data = bytearray()
        self.events = []
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def data_received(self, data):
        self.data += data

    def eof_received(self):
        self.events.append("eof")

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost.set_result(exc)


async def echo_server(loop, server_ctx, **kw):
    server = await loop.create_server(Echo, "127.0.0.1", 0, ssl=server_ctx, **kw)
    return server, server.sockets[0].getsockname()[1]


def settle(loop):
    """Let close callbacks run, then collect, so fds can be counted."""
    run(loop, asyncio.sleep(0))
    for _ in range(5):
        run(loop, asyncio.sleep(0))
    collect()


# -- a working connection ----------------------------------------------------------------


def test_echo_and_extra_info(loop, server_ctx, client_ctx):
    async def main():
        server, port = await echo_server(loop, server_ctx)
        tr, proto = await loop.create_connection(lambda: Client(loop), "127.0.0.1", port,
                                                 ssl=client_ctx, server_hostname="localhost")
        assert proto.events == ["made"]
        assert isinstance(tr, asyncio.Transport)
        assert tr.get_extra_info("sslcontext") is client_ctx
        sslobj = tr.get_extra_info("ssl_object")
        assert isinstance(sslobj, ssl.SSLObject) and sslobj.server_hostname == "localhost"
        assert tr.get_extra_info("peercert")["subjectAltName"][0] == ("DNS", "localhost")
        assert tr.get_extra_info("cipher") == sslobj.cipher()
        assert tr.get_extra_info("compression") is None
        sock = tr.get_extra_info("socket")
        assert sock.family == socket.AF_INET
        assert tr.get_extra_info("peername") == ("127.0.0.1", port)
        assert tr.get_extra_info("sockname") == sock.getsockname()
        assert tr.get_extra_info("nope", "dflt") == "dflt"
        assert not tr.can_write_eof()
        with pytest.raises(NotImplementedError):
            tr.write_eof()  # TLS 1.3 has no half-close; asyncio refuses it
        tr.write(b"hello ")
        tr.writelines([b"tls", b"!"])
        await until(lambda: len(proto.data) == 10)
        assert bytes(proto.data) == b"hello tls!"
        tr.close()
        assert await proto.lost is None
        # The server answers close_notify with its own: eof_received first.
        assert proto.events == ["made", "eof", "lost"]
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_buffered_protocol_client(loop, server_ctx, client_ctx):
    payload = bytes(range(256)) * 400  # 100 KiB: many records

    class Buffered(asyncio.BufferedProtocol):
        def __init__(self):
            self.buf = memoryview(bytearray(1000))
            self.got = bytearray()
            self.done = loop.create_future()
            self.lost = loop.create_future()

        def connection_lost(self, exc):
            self.lost.set_result(exc)

        def get_buffer(self, sizehint):
            return self.buf

        def buffer_updated(self, nbytes):
            self.got += self.buf[:nbytes]
            if len(self.got) == len(payload):
                self.done.set_result(None)

    async def main():
        server, port = await echo_server(loop, server_ctx)
        tr, proto = await loop.create_connection(Buffered, "127.0.0.1", port, ssl=client_ctx,
                                                 server_hostname="localhost")
        tr.write(payload)
        await proto.done
        assert proto.got == payload
        tr.close()
        assert await proto.lost is None
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_streams_large_echo_with_flow_control(loop, server_ctx, client_ctx):
    payload = bytes(range(256)) * 4096  # 1 MiB through small write limits
    handled = []

    async def handle(reader, writer):
        handled.append(asyncio.current_task())
        writer.transport.set_write_buffer_limits(high=4096)
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx,
                                                       server_hostname="localhost")
        writer.transport.set_write_buffer_limits(high=4096)
        assert writer.transport.get_write_buffer_limits() == (1024, 4096)

        async def send():
            for i in range(0, len(payload), 50000):
                writer.write(payload[i:i + 50000])
                await writer.drain()

        sender = asyncio.ensure_future(send())
        got = await reader.readexactly(len(payload))
        await sender
        assert got == payload
        writer.close()
        await writer.wait_closed()
        await handled[0]
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_peer_close_notify_delivers_data_then_eof(loop, server_ctx, client_ctx):
    class Sender(asyncio.Protocol):
        def connection_made(self, transport):
            transport.write(b"last words")
            transport.close()  # data, then close_notify

    async def main():
        server = await loop.create_server(Sender, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        tr, proto = await loop.create_connection(lambda: Client(loop), "127.0.0.1", port,
                                                 ssl=client_ctx, server_hostname="localhost")
        assert await proto.lost is None
        assert bytes(proto.data) == b"last words"
        assert proto.events == ["made", "eof", "lost"]
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_alpn_and_client_certificate(loop, ca, client_ctx):
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(sctx)
    ca.configure_trust(sctx)
    sctx.verify_mode = ssl.CERT_REQUIRED
    sctx.set_alpn_protocols(["h2", "http/1.1"])
    cctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(cctx)
    ca.issue_cert("client.example").configure_cert(cctx)
    cctx.set_alpn_protocols(["http/1.1"])
    seen = {}

    class Server(asyncio.Protocol):
        def connection_made(self, transport):
            seen["alpn"] = transport.get_extra_info("ssl_object").selected_alpn_protocol()
            seen["peercert"] = transport.get_extra_info("peercert")
            transport.close()

    async def main():
        server = await loop.create_server(Server, "127.0.0.1", 0, ssl=sctx)
        port = server.sockets[0].getsockname()[1]
        tr, proto = await loop.create_connection(lambda: Client(loop), "127.0.0.1", port,
                                                 ssl=cctx, server_hostname="localhost")
        assert tr.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
        await proto.lost
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert seen["alpn"] == "http/1.1"
    assert seen["peercert"]["subjectAltName"] == (("DNS", "client.example"),)


def test_connect_accepted_socket_and_sock_argument(loop, server_ctx, client_ctx):
    # aiohttp's path: its own connected socket, handed over with ssl=.
    async def main():
        lsock = socket.create_server(("127.0.0.1", 0))
        lsock.setblocking(False)
        csock = socket.socket()
        csock.setblocking(False)
        await loop.sock_connect(csock, lsock.getsockname())
        ssock, _ = await loop.sock_accept(lsock)
        lsock.close()
        accepted = asyncio.ensure_future(loop.connect_accepted_socket(Echo, ssock, ssl=server_ctx))
        tr, proto = await loop.create_connection(lambda: Client(loop), sock=csock, ssl=client_ctx,
                                                 server_hostname="localhost")
        str_, sproto = await accepted
        assert str_.get_extra_info("sslcontext") is server_ctx
        tr.write(b"ping")
        await until(lambda: proto.data == b"ping")
        tr.close()
        await proto.lost
        await until(lambda: str_.is_closing())

    run(loop, main())


def test_start_tls_on_a_stream(loop, server_ctx, client_ctx):
    async def handle(reader, writer):
        assert await reader.readline() == b"STARTTLS\n"
        writer.write(b"GO\n")
        await writer.start_tls(server_ctx)
        assert writer.get_extra_info("ssl_object") is not None
        writer.write((await reader.readline()).upper())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert writer.get_extra_info("ssl_object") is None
        writer.write(b"STARTTLS\n")
        assert await reader.readline() == b"GO\n"
        await writer.start_tls(client_ctx, server_hostname="localhost")
        assert writer.get_extra_info("peercert") is not None
        writer.write(b"secret\n")
        assert await reader.readline() == b"SECRET\n"
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_start_tls_argument_checks(loop, client_ctx):
    async def main():
        lsock = socket.create_server(("127.0.0.1", 0))
        tr, proto = await loop.create_connection(lambda: Client(loop), *lsock.getsockname())
        with pytest.raises(TypeError, match="sslcontext is expected to be an instance of "
                                            "ssl.SSLContext, got 'nope'"):
            await loop.start_tls(tr, proto, "nope")
        with pytest.raises(ValueError, match="ssl_handshake_timeout should be a positive "
                                             "number, got 0"):
            await loop.start_tls(tr, proto, client_ctx, ssl_handshake_timeout=0)
        tr.close()
        await proto.lost
        lsock.close()

    run(loop, main())


# -- handshakes that fail ------------------------------------------------------------------


def _failing_connect(loop, server_ctx, ctx, **kw):
    async def main():
        server, port = await echo_server(loop, server_ctx)
        try:
            await loop.create_connection(lambda: Client(loop), "127.0.0.1", port, ssl=ctx, **kw)
        finally:
            server.close()
            await server.wait_closed()

    run(loop, main())


@pytest.mark.parametrize("case", ["wrong_hostname", "untrusted", "default_context"])
def test_verification_failures_raise_and_leak_nothing(loop, server_ctx, client_ctx, case):
    kw = {"wrong_hostname": dict(ssl=client_ctx, server_hostname="other.example"),
          "untrusted": dict(ssl=ssl.create_default_context(), server_hostname="localhost"),
          "default_context": dict(ssl=True, server_hostname="localhost")}[case]
    ctx = kw.pop("ssl")
    settle(loop)
    before = open_fds()
    for _ in range(3):
        with pytest.raises(ssl.SSLCertVerificationError):
            _failing_connect(loop, server_ctx, ctx, **kw)
    settle(loop)
    assert open_fds() == before


def needs_no_cycles(loop):
    if not isinstance(loop, uvpy.Loop) and sys.version_info < (3, 14):
        pytest.skip("stock asyncio leaves a failed handshake's exception in a reference "
                    "cycle with the transport until Python 3.14")


def _reject_server(server_ctx):
    """A blocking TLS server on a thread, for one client that will not
    trust it; returns its address and the thread."""
    lsock = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = lsock.accept()
        with conn:
            try:
                server_ctx.wrap_socket(conn, server_side=True)
            except OSError:
                pass
        lsock.close()

    thread = threading.Thread(target=serve)
    thread.start()
    return lsock.getsockname(), thread


# Not StreamWriter.start_tls(): asyncio's StreamReader keeps the exception,
# and the frame of StreamWriter.start_tls() in its traceback keeps the
# reader (through the writer), on every loop.
@pytest.mark.parametrize("how", ["create_connection", "start_tls"])
def test_failed_verification_leaves_no_cycle(loop, server_ctx, how, monkeypatch):
    # Whoever catches the SSLCertVerificationError does not need gc to free
    # the transport: with gc off it is gone once the exception is.
    needs_no_cycles(loop)
    untrusting = ssl.create_default_context()
    refs = []
    if how == "create_connection":
        # The transport under the SSLProtocol, which create_connection never returns.
        connection_made = sslproto.SSLProtocol.connection_made

        def remember(self, transport):
            refs.append(weakref.ref(transport))
            connection_made(self, transport)

        monkeypatch.setattr(sslproto.SSLProtocol, "connection_made", remember)

    async def main(addr):
        if how == "create_connection":
            try:
                await loop.create_connection(asyncio.Protocol, *addr, ssl=untrusting,
                                             server_hostname="localhost")
            except ssl.SSLCertVerificationError:
                pass
        else:
            tr, proto = await loop.create_connection(asyncio.Protocol, *addr)
            refs.append(weakref.ref(tr))
            try:
                await loop.start_tls(tr, proto, untrusting, server_hostname="localhost")
            except ssl.SSLCertVerificationError:
                pass
            tr = proto = None

    addr, thread = _reject_server(server_ctx)
    collect()
    gc.disable()
    try:
        run(loop, main(addr))
        for _ in range(5):  # the transport's close callbacks
            run(loop, asyncio.sleep(0))
        alive = [r() for r in refs]
    finally:
        gc.enable()
        thread.join()
    assert len(alive) == 1 and alive == [None], alive


def test_stream_start_tls_with_the_client_hello_already_buffered(loop, server_ctx, client_ctx):
    # The server's StreamReader has read the ClientHello (with the plaintext
    # before it) when the server calls start_tls(): the bytes belong to the
    # handshake.
    if not isinstance(loop, uvpy.Loop) and sys.version_info < (3, 14):
        pytest.skip("stock asyncio hands a StreamReader's buffered bytes to the "
                    "handshake from Python 3.14")

    async def handle(reader, writer):
        assert await reader.readline() == b"STARTTLS\n"
        if not reader._buffer:  # the ClientHello is on its way
            await reader._wait_for_data("test")
        await writer.start_tls(server_ctx)
        writer.write((await reader.readline()).upper())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        writer.write(b"STARTTLS\n")  # no reply awaited: the hello follows at once
        await writer.start_tls(client_ctx, server_hostname="localhost")
        writer.write(b"secret\n")
        assert await reader.readline() == b"SECRET\n"
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_plain_tcp_to_a_tls_port(loop, server_ctx):
    made = []
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    loop.set_debug(True)

    async def main():
        server = await loop.create_server(lambda: made.append(1) or Echo(), "127.0.0.1", 0,
                                          ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        # The server drops the connection (maybe after a TLS alert).
        while await reader.read(1024):
            pass
        writer.close()
        await until(lambda: active_connections(server) == 0)
        server.close()
        await server.wait_closed()

    settle(loop)
    before = open_fds()
    run(loop, main())
    settle(loop)
    assert made == [1]  # the protocol was made, but never connected
    assert open_fds() == before
    reported = [c for c in errors
                if c["message"] == "Error on transport creation for incoming connection"]
    assert len(reported) == 1 and isinstance(reported[0]["exception"], ssl.SSLError)


def test_tls_client_to_a_plain_server(loop):
    class Http(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(b"HTTP/1.0 400 Bad Request\r\n\r\n")
            self.transport.close()

    async def main():
        server = await loop.create_server(Http, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(ssl.SSLError):
                await loop.create_connection(asyncio.Protocol, "127.0.0.1", port,
                                             ssl=ssl.create_default_context(),
                                             server_hostname="localhost")
        finally:
            server.close()
            await server.wait_closed()

    run(loop, main())


def _silent_listener():
    """A listener that accepts and reads, but never answers a handshake."""
    lsock = socket.create_server(("127.0.0.1", 0))
    conns = []
    hello = threading.Event()  # set once a ClientHello came in

    def serve():
        while True:
            try:
                conn, _ = lsock.accept()
                conns.append(conn)
                if conn.recv(1024):
                    hello.set()
            except OSError:
                return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def stop():
        lsock.shutdown(socket.SHUT_RDWR)
        lsock.close()
        thread.join()
        for c in conns:
            c.close()

    stop.hello = hello
    return lsock.getsockname(), stop


def test_handshake_timeout(loop, client_ctx):
    settle(loop)
    before = open_fds()
    addr, stop = _silent_listener()
    try:
        with pytest.raises(ConnectionAbortedError,
                           match="SSL handshake is taking longer than 0.1 seconds"):
            run(loop, loop.create_connection(asyncio.Protocol, *addr, ssl=client_ctx,
                                             server_hostname="localhost",
                                             ssl_handshake_timeout=0.1))
    finally:
        stop()
    settle(loop)
    assert open_fds() == before


def test_sock_is_closed_when_the_handshake_fails(loop, client_ctx):
    # The socket handed over with sock= belongs to the transport from then on.
    addr, stop = _silent_listener()
    sock = socket.create_connection(addr)
    try:
        with pytest.raises(ConnectionAbortedError):
            run(loop, loop.create_connection(asyncio.Protocol, sock=sock, ssl=client_ctx,
                                             server_hostname="localhost",
                                             ssl_handshake_timeout=0.1))
        settle(loop)
        assert sock.fileno() == -1
    finally:
        stop()


def test_peer_closes_during_the_handshake(loop, client_ctx):
    lsock = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = lsock.accept()
        conn.recv(1024)  # the ClientHello
        conn.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with pytest.raises(ConnectionResetError):
            run(loop, loop.create_connection(asyncio.Protocol, *lsock.getsockname(),
                                             ssl=client_ctx, server_hostname="localhost"))
    finally:
        thread.join()
        lsock.close()


def test_cancelled_during_the_handshake(loop, client_ctx):
    settle(loop)
    before = open_fds()
    addr, stop = _silent_listener()

    async def main():
        task = asyncio.ensure_future(loop.create_connection(
            asyncio.Protocol, *addr, ssl=client_ctx, server_hostname="localhost"))
        for _ in range(GUARD * 1000):
            if stop.hello.is_set():
                break
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        run(loop, main())
    finally:
        stop()
    settle(loop)
    assert open_fds() == before


def test_server_closes_connections_mid_handshake(loop, server_ctx):
    # A client that connects and goes away mid-handshake costs the server
    # its socket and nothing else: the server still closes cleanly.
    async def main():
        server, port = await echo_server(loop, server_ctx)
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", port))
            s.send(b"\x16\x03\x01")  # the start of a record, then nothing
            s.close()
        await asyncio.sleep(0)
        server.close()
        await server.wait_closed()

    settle(loop)
    before = open_fds()
    run(loop, main())
    settle(loop)
    assert open_fds() == before


def test_connections_are_collected(loop, server_ctx, client_ctx):
    refs = []

    async def main():
        server, port = await echo_server(loop, server_ctx)
        for _ in range(20):
            tr, proto = await loop.create_connection(lambda: Client(loop), "127.0.0.1", port,
                                                     ssl=client_ctx, server_hostname="localhost")
            refs.append(weakref.ref(tr))
            refs.append(weakref.ref(proto))
            tr.close()
            await proto.lost
        server.close()
        await server.wait_closed()

    run(loop, main())
    settle(loop)
    gc.collect()
    assert [r for r in refs if r() is not None] == []


def test_concurrent_connections_keep_their_own_bytes(loop, server_ctx, client_ctx):
    # uvpy's TLS connections share one receive buffer per loop: bytes of
    # different connections, arriving interleaved, must never mix.
    async def one(port, i):
        payload = bytes([i]) * 150_000 + bytes(range(256)) * 100
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx,
                                                       server_hostname="localhost")
        writer.write(payload)
        got = await reader.readexactly(len(payload))
        writer.close()
        await writer.wait_closed()
        return got == payload

    async def main():
        server, port = await echo_server(loop, server_ctx)
        results = await asyncio.gather(*(one(port, i) for i in range(8)))
        server.close()
        await server.wait_closed()
        return results

    assert run(loop, main()) == [True] * 8
