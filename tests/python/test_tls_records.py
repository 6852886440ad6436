"""TLS records once the handshake is done: the steady state that uvpy runs
natively (bindings/tls.cc) and asyncio runs in sslproto.py.

Each test runs on uvpy and on stock asyncio, which is the oracle. The peer
is a plain blocking ssl socket (or an SSLObject over MemoryBIOs, to control
exactly which bytes share a TCP segment) in a thread, so the loop under
test owns only one end. The cases are those where the native path hands
over to SSLProtocol's Python code, or must leave it in the state it would
have reached itself: records split across reads, close_notify in the same
segment as data, a corrupted record, the app pausing, writing, closing or
aborting from inside data_received(), and write flow control.
"""

import asyncio
import hashlib
import os
import socket
import ssl
import threading

import pytest

pytest.importorskip("trustme")

import uvpy  # noqa: E402
from uvpy import _uvpy  # noqa: E402
from conftest import close_server  # noqa: E402

GUARD = 30  # seconds; a hang guard only, never an expectation


def run(loop, coro):
    return loop.run_until_complete(asyncio.wait_for(coro, GUARD))


class Recorder(asyncio.Protocol):
    """Records what the server side of one connection sees."""

    def __init__(self, loop):
        self.data = bytearray()
        self.events = []
        self.lost = loop.create_future()
        self.made = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")
        self.made.set_result(transport)

    def data_received(self, data):
        self.data += data

    def eof_received(self):
        self.events.append("eof")

    def connection_lost(self, exc):
        self.events.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)


class Peer(threading.Thread):
    """A blocking TLS client in a thread: connects, runs `script(sslsock)`,
    keeps what it returns (or raises) for the test."""

    def __init__(self, port, client_ctx, script):
        super().__init__(daemon=True)
        self.port, self.ctx, self.script = port, client_ctx, script
        self.result = self.error = None

    def run(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=GUARD) as raw:
                with self.ctx.wrap_socket(raw, server_hostname="localhost") as s:
                    self.result = self.script(s)
        except BaseException as exc:  # reported by the test
            self.error = exc


def recv_exactly(s, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(min(65536, n - len(buf)))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


async def serve(loop, server_ctx, factory):
    server = await loop.create_server(factory, "127.0.0.1", 0, ssl=server_ctx)
    return server, server.sockets[0].getsockname()[1]


async def join(peer):
    await asyncio.get_running_loop().run_in_executor(None, peer.join, GUARD)
    assert not peer.is_alive()
    if peer.error is not None:
        raise peer.error
    return peer.result


def test_the_record_path_is_native_on_uvpy(server_ctx, client_ctx):
    """uvpy's TLS connections take the native path on this Python (the
    layout and symbol checks of bindings/tls.cc, rule 2, passed)."""
    loop = uvpy.new_event_loop()
    try:
        assert _uvpy._tls_status() == "native"

        async def main():
            server, port = await serve(loop, server_ctx, lambda: Recorder(loop))
            tr, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port, ssl=client_ctx,
                                                 server_hostname="localhost")
            assert tr._ssl_protocol._transport._tls_attached
            assert type(tr).write is not asyncio.sslproto._SSLProtocolTransport.write
            tr.close()
            await close_server(server)  # and the server's end of the connection

        run(loop, main())
    finally:
        loop.close()


@pytest.mark.parametrize("size", [1, 16 * 1024 + 7, 3 * 1024 * 1024])
def test_echo_keeps_every_byte_in_order(loop, server_ctx, client_ctx, size):
    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

    payload = os.urandom(size)

    def script(s):
        # Odd-sized writes: records split across the server's reads.
        for i in range(0, size, 7919):
            s.sendall(payload[i:i + 7919])
        return recv_exactly(s, size)

    async def main():
        server, port = await serve(loop, server_ctx, Echo)
        peer = Peer(port, client_ctx, script)
        peer.start()
        echoed = await join(peer)
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_close_notify_in_the_same_segment_as_data(loop, server_ctx, client_ctx):
    """Data and close_notify arrive in one read: data_received() with all
    of it, then eof_received(), then connection_lost(None)."""
    recorders = []

    def factory():
        recorders.append(Recorder(loop))
        return recorders[-1]

    def script(port):
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = client_ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
        with socket.create_connection(("127.0.0.1", port), timeout=GUARD) as raw:
            while True:
                try:
                    obj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    raw.sendall(outgoing.read())
                    incoming.write(raw.recv(65536))
            raw.sendall(outgoing.read())
            obj.write(b"A" * 5000)
            obj.write(b"B" * 3)
            try:
                obj.unwrap()
            except ssl.SSLWantReadError:
                pass
            raw.sendall(outgoing.read())  # both records and close_notify at once
            # Wait for the server's close_notify (or the connection's end).
            try:
                while raw.recv(65536):
                    pass
            except OSError:
                pass

    async def main():
        server, port = await serve(loop, server_ctx, factory)
        peer = threading.Thread(target=script, args=(port,), daemon=True)
        peer.start()
        await asyncio.wait_for(asyncio.sleep(0), GUARD)
        while not recorders:
            await asyncio.sleep(0.01)
        assert await recorders[0].lost is None
        await loop.run_in_executor(None, peer.join, GUARD)
        assert bytes(recorders[0].data) == b"A" * 5000 + b"B" * 3
        assert recorders[0].events == ["made", "eof", "lost"]
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_corrupted_record_fails_the_connection_as_asyncio_does(loop, server_ctx, client_ctx):
    """A record that does not decrypt: connection_lost() gets asyncio's
    SSLError (same class and reason). SSLError is an OSError, so asyncio's
    _fatal_error() logs it in debug mode only: the exception handler is not
    called."""
    recorders, reports = [], []
    loop.set_exception_handler(lambda lp, ctx: reports.append(ctx))

    def factory():
        recorders.append(Recorder(loop))
        return recorders[-1]

    def script(s):
        s.sendall(b"fine")
        assert recv_exactly(s, 2) == b"ok"
        # A well-formed application-data record header with garbage inside.
        raw = socket.socket(fileno=os.dup(s.fileno()))
        try:
            raw.sendall(b"\x17\x03\x03\x00\x40" + os.urandom(0x40))
        finally:
            raw.close()
        try:
            while s.recv(1024):
                pass
        except (OSError, ssl.SSLError):
            pass

    async def main():
        server, port = await serve(loop, server_ctx, factory)
        peer = Peer(port, client_ctx, script)
        peer.start()
        while not recorders:
            await asyncio.sleep(0.01)
        await recorders[0].made
        while bytes(recorders[0].data) != b"fine":
            await asyncio.sleep(0.01)
        recorders[0].transport.write(b"ok")
        exc = await recorders[0].lost
        await join(peer)
        server.close()
        await server.wait_closed()
        return exc

    exc = run(loop, main())
    assert isinstance(exc, ssl.SSLError), exc
    # OpenSSL 3.5 reports it as a record layer failure.
    assert exc.reason in ("DECRYPTION_FAILED_OR_BAD_RECORD_MAC", "BAD_RECORD_MAC",
                          "RECORD_LAYER_FAILURE"), exc.reason
    assert reports == []


def test_pause_reading_holds_records_until_resumed(loop, server_ctx, client_ctx):
    class Pauser(Recorder):
        # Pauses once: a protocol still paused when the peer closes never
        # sees the end of the connection, and from Python 3.12 on
        # wait_closed() waits for it.
        def data_received(self, data):
            super().data_received(data)
            if len(self.data) >= 1000 and not hasattr(self, "paused_at"):
                self.transport.pause_reading()
                self.paused_at = len(self.data)

    recorders = []

    def factory():
        recorders.append(Pauser(loop))
        return recorders[-1]

    payload = os.urandom(200_000)
    sent = threading.Event()

    def script(s):
        s.sendall(payload[:1000])
        s.sendall(payload[1000:])
        sent.set()
        return recv_exactly(s, 4)

    async def main():
        server, port = await serve(loop, server_ctx, factory)
        peer = Peer(port, client_ctx, script)
        peer.start()
        while not recorders or not hasattr(recorders[0], "paused_at"):
            await asyncio.sleep(0.01)
        rec = recorders[0]
        await loop.run_in_executor(None, sent.wait, GUARD)
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert len(rec.data) == rec.paused_at  # nothing while paused
        assert not rec.transport.is_reading()
        rec.transport.resume_reading()
        while len(rec.data) < len(payload):
            await asyncio.sleep(0.01)
        assert bytes(rec.data) == payload
        rec.transport.write(b"done")
        assert await join(peer) == b"done"
        rec.transport.resume_reading()  # Pauser paused again on the last records
        assert await asyncio.wait_for(rec.lost, GUARD) is None  # the peer closed
        server.close()
        await server.wait_closed()

    run(loop, main())


@pytest.mark.parametrize("how", ["close", "abort"])
def test_close_or_abort_from_data_received(loop, server_ctx, client_ctx, how):
    """The reply written before close()/abort() reaches the peer, nothing
    written after it does, and connection_lost() runs once."""

    class Closer(Recorder):
        def data_received(self, data):
            super().data_received(data)
            self.transport.write(b"reply:" + bytes(data))
            getattr(self.transport, how)()
            self.transport.write(b"dropped")  # after close/abort: ignored

    recorders = []

    def factory():
        recorders.append(Closer(loop))
        return recorders[-1]

    def script(s):
        s.sendall(b"ping")
        got = bytearray()
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        except (OSError, ssl.SSLError):
            pass
        return bytes(got)

    async def main():
        server, port = await serve(loop, server_ctx, factory)
        peer = Peer(port, client_ctx, script)
        peer.start()
        got = await join(peer)
        while not recorders or not recorders[0].lost.done():
            await asyncio.sleep(0.01)
        assert recorders[0].events.count("lost") == 1
        server.close()
        await server.wait_closed()
        return got

    # The reply went to the socket at once (its buffer was empty); nothing
    # written after close()/abort() follows it.
    assert run(loop, main()) == b"reply:ping"


def test_write_flow_control_pauses_and_resumes_the_app(loop, server_ctx, client_ctx):
    """A server writing to a peer that does not read: pause_writing() once
    the app transport's buffer passes its high-water mark, resume_writing()
    once the peer drains it, and every byte arrives."""

    class Writer(Recorder):
        def __init__(self, loop):
            super().__init__(loop)
            self.flow = []

        def pause_writing(self):
            self.flow.append(("pause", self.transport.get_write_buffer_size()))

        def resume_writing(self):
            self.flow.append(("resume", self.transport.get_write_buffer_size()))

    recorders = []

    def factory():
        recorders.append(Writer(loop))
        return recorders[-1]

    chunk = os.urandom(64 * 1024)
    written = []  # chunks written until the app was paused
    go = threading.Event()

    def script(s):
        s.sendall(b"go")
        go.wait(GUARD)
        return recv_exactly(s, len(chunk) * len(written))

    async def main():
        server, port = await serve(loop, server_ctx, factory)
        peer = Peer(port, client_ctx, script)
        peer.start()
        while not recorders or bytes(recorders[0].data) != b"go":
            await asyncio.sleep(0.01)
        w = recorders[0]
        # The kernel's socket buffers take several MiB first; 256 MiB is
        # only a bound.
        while not w.flow and len(written) < 4096:
            w.transport.write(chunk)
            written.append(chunk)
            await asyncio.sleep(0)
        assert w.flow and w.flow[0][0] == "pause"
        low, high = w.transport.get_write_buffer_limits()
        assert w.flow[0][1] >= high
        go.set()
        got = await join(peer)
        assert got == chunk * len(written)
        while len(w.flow) < 2:
            await asyncio.sleep(0.01)
        assert [f[0] for f in w.flow] == ["pause", "resume"]
        assert w.flow[1][1] <= low
        w.transport.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_buffered_protocol_app_gets_every_byte(loop, server_ctx, client_ctx):
    """A BufferedProtocol behind TLS (the Python path on uvpy, rule 3)."""

    class Buffered(asyncio.BufferedProtocol):
        def __init__(self):
            self.buf = bytearray(4096)
            self.data = bytearray()

        def connection_made(self, transport):
            self.transport = transport

        def get_buffer(self, sizehint):
            return self.buf

        def buffer_updated(self, n):
            self.data += self.buf[:n]

    protos = []

    def factory():
        protos.append(Buffered())
        return protos[-1]

    payload = os.urandom(300_000)

    def script(s):
        s.sendall(payload)
        return recv_exactly(s, 2)

    async def main():
        server, port = await serve(loop, server_ctx, factory)
        peer = Peer(port, client_ctx, script)
        peer.start()
        while not protos or len(protos[0].data) < len(payload):
            await asyncio.sleep(0.01)
        assert bytes(protos[0].data) == payload
        protos[0].transport.write(b"ok")
        assert await join(peer) == b"ok"
        protos[0].transport.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_wrong_write_arguments_raise_as_asyncio(loop, server_ctx, client_ctx):
    async def main():
        server, port = await serve(loop, server_ctx, lambda: Recorder(loop))
        tr, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port, ssl=client_ctx,
                                             server_hostname="localhost")
        with pytest.raises(TypeError, match="data: expecting a bytes-like instance, got str"):
            tr.write("text")
        assert tr.write(b"") is None
        assert tr.write(memoryview(b"")) is None
        tr.close()
        tr.write(b"after close")  # dropped, as asyncio drops it
        await close_server(server)  # and the server's end of the connection

    run(loop, main())


def test_a_data_descriptor_on_the_protocol_class_is_honoured(loop, server_ctx, client_ctx, monkeypatch):
    """SSLProtocol's fields are plain instance attributes, and uvpy reads
    them from the instance dict (bindings/tls.cc, rule 7). Once a class in
    the MRO defines a data descriptor of one of those names, Python's lookup
    goes through it, and so must uvpy's: here a property on _app_protocol,
    added while a connection is open, sees every read of it."""
    recorders = []

    def factory():
        recorders.append(Recorder(loop))
        return recorders[-1]

    reads = []
    first, rest = threading.Event(), threading.Event()

    def script(s):
        s.sendall(b"before")
        first.wait(GUARD)
        s.sendall(b"after")
        rest.wait(GUARD)
        return b""

    async def main():
        server, port = await serve(loop, server_ctx, factory)
        peer = Peer(port, client_ctx, script)
        peer.start()
        while not recorders or len(recorders[0].data) < 6:
            await asyncio.sleep(0.01)
        rec = recorders[0]
        cls = type(rec.transport._ssl_protocol)

        def get(self):
            reads.append(self)
            return self.__dict__["_app_protocol"]

        def set_(self, value):
            self.__dict__["_app_protocol"] = value

        monkeypatch.setattr(cls, "_app_protocol", property(get, set_), raising=False)
        first.set()
        while len(rec.data) < 11:
            await asyncio.sleep(0.01)
        monkeypatch.undo()
        rest.set()
        await join(peer)
        assert bytes(rec.data) == b"beforeafter"
        assert rec.transport._ssl_protocol in reads  # the property saw the delivery
        server.close()
        await server.wait_closed()

    run(loop, main())
