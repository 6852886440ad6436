"""TCP transports: reading, writing, flow control, half-close, closing and
faults, on both loops.

The peer is a plain blocking socket accepted from a listener, so each test
controls exactly what the other side does. Waiting is by loop iterations
and futures, never by elapsed time.
"""

import asyncio
import contextvars
import gc
import logging
import socket
import struct
import sys

import pytest

from conftest import collect, open_fds

CHUNK = 64 * 1024


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


async def until(pred):
    """Yield to the loop until pred() holds (bounded by iterations, not time)."""
    for _ in range(100000):
        if pred():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


# -- identity and extra info ---------------------------------------------------


def test_is_an_asyncio_transport_with_extra_info(loop):
    tr, proto, peer = connect(loop)
    assert isinstance(tr, asyncio.Transport)
    assert isinstance(tr, asyncio.ReadTransport) and isinstance(tr, asyncio.WriteTransport)
    assert tr.get_protocol() is proto
    assert proto.events == ["made"]
    sock = tr.get_extra_info("socket")
    assert sock.fileno() >= 0 and sock.family == socket.AF_INET
    assert tr.get_extra_info("sockname") == peer.getpeername()
    assert tr.get_extra_info("peername") == peer.getsockname()
    assert tr.get_extra_info("nope", "dflt") == "dflt"
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    assert f"fd={sock.fileno()}" in repr(tr)
    assert tr.can_write_eof() is True
    assert tr.is_reading() and not tr.is_closing()
    tr.close()
    run(loop, proto.lost)
    peer.close()


@pytest.mark.parametrize("close", ["close", "abort", "peer_reset"])
def test_extra_info_never_asked_survives_the_close(loop, close):
    # uvpy makes "socket" and "sockname" on first use; a transport that never
    # asked before closing must still answer afterwards, as asyncio does.
    tr, proto, peer = connect(loop)
    expected_sockname = peer.getpeername()
    expected_peername = peer.getsockname()
    if close == "close":
        tr.close()
    elif close == "abort":
        tr.abort()
    else:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
    run(loop, proto.lost)
    assert tr.is_closing()
    assert tr.get_extra_info("sockname") == expected_sockname
    assert tr.get_extra_info("peername") == expected_peername
    assert tr.get_extra_info("socket").fileno() == -1
    assert tr.get_extra_info("nope") is None
    if close != "peer_reset":
        peer.close()


def test_set_protocol_switches_the_receiver(loop):
    tr, first, peer = connect(loop)
    second = Recorder(loop)
    tr.set_protocol(second)
    assert tr.get_protocol() is second
    peer.sendall(b"to the second")
    run(loop, until(lambda: second.data == b"to the second"))
    assert first.data == b""
    tr.close()
    assert run(loop, second.lost) is None
    assert not first.lost.done()
    peer.close()


class _Shadowed(Recorder):
    """The class has data_received, but each instance replaces it."""

    def __init__(self, loop):
        super().__init__(loop)
        self.shadow = bytearray()
        self.data_received = self.shadow.extend


class _Callables(Recorder):
    """data_received is a staticmethod and eof_received a callable object."""

    got = bytearray()
    data_received = staticmethod(got.extend)


def test_instance_attribute_wins_over_the_class_method(loop):
    # asyncio looks protocol.data_received up on the instance: an instance
    # attribute shadows the class's function (uvpy keeps the function unbound
    # only when nothing shadows it).
    tr, proto, peer = connect(loop, lambda: _Shadowed(loop))
    peer.sendall(b"shadowed")
    run(loop, until(lambda: proto.shadow == b"shadowed"))
    assert proto.data == b""
    tr.close()
    run(loop, proto.lost)
    peer.close()


def test_protocol_methods_that_are_not_functions(loop):
    _Callables.got.clear()
    tr, proto, peer = connect(loop, lambda: _Callables(loop))
    peer.sendall(b"static")
    run(loop, until(lambda: _Callables.got == b"static"))
    tr.set_protocol(Recorder(loop))  # and back to a plain function
    peer.sendall(b"plain")
    run(loop, until(lambda: tr.get_protocol().data == b"plain"))
    assert _Callables.got == b"static"
    tr.close()
    run(loop, tr.get_protocol().lost)
    peer.close()


def test_accepted_transport_extras(loop):
    # An accepted connection answers every extra, lazily made or not, and
    # the extras dict (asyncio's `_extra`) is there for code that reads it.
    made = []

    def factory():
        made.append(Recorder(loop))
        return made[-1]

    srv = run(loop, loop.create_server(factory, "127.0.0.1", 0))
    client = socket.create_connection(srv.sockets[0].getsockname())
    run(loop, until(lambda: made and made[0].transport is not None))
    tr = made[0].transport
    assert tr.get_extra_info("peername") == client.getsockname()
    assert tr.get_extra_info("sockname") == client.getpeername()
    assert tr.get_extra_info("socket").fileno() >= 0
    assert tr._extra["peername"] == client.getsockname()
    assert tr.get_extra_info("peername") == client.getsockname()
    tr.close()
    run(loop, made[0].lost)
    client.close()
    srv.close()
    run(loop, srv.wait_closed())


# -- reading -------------------------------------------------------------------


def test_data_received_gets_everything_in_order(loop):
    tr, proto, peer = connect(loop)
    payload = pattern(3 << 20)
    peer.sendall(payload)
    peer.shutdown(socket.SHUT_WR)
    run(loop, proto.eof)
    assert bytes(proto.data) == payload
    run(loop, proto.lost)  # eof_received() returned falsy: the transport closes
    assert proto.events == ["made", "eof", ("lost", None)]
    peer.close()


def test_data_received_runs_in_the_transports_context(loop):
    var = contextvars.ContextVar("var", default="unset")
    seen = []

    class Proto(Recorder):
        def data_received(self, data):
            seen.append(var.get())
            super().data_received(data)

    async def main():
        var.set("creator")
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        tr, proto = await loop.create_connection(lambda: Proto(loop), *srv.getsockname())
        peer, _ = srv.accept()
        srv.close()
        return tr, proto, peer

    tr, proto, peer = run(loop, main())
    peer.sendall(b"x")
    run(loop, until(lambda: proto.data))
    assert seen == ["creator"]
    tr.close()
    run(loop, proto.lost)
    peer.close()


def test_pause_and_resume_reading(loop):
    tr, proto, peer = connect(loop)
    tr.pause_reading()
    assert not tr.is_reading()
    tr.pause_reading()  # idempotent
    peer.sendall(b"held back")
    run(loop, iterations())
    assert proto.data == b""
    tr.resume_reading()
    assert tr.is_reading()
    run(loop, until(lambda: proto.data == b"held back"))
    tr.close()
    assert not tr.is_reading()
    tr.resume_reading()  # closing: no effect
    run(loop, proto.lost)
    peer.close()


def test_pause_reading_in_connection_made_holds_the_first_read(loop):
    class Proto(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.pause_reading()

    tr, proto, peer = connect(loop, lambda: Proto(loop))
    peer.sendall(b"early")
    run(loop, iterations())
    assert proto.data == b""
    tr.resume_reading()
    run(loop, until(lambda: proto.data == b"early"))
    tr.close()
    run(loop, proto.lost)
    peer.close()


def test_pausing_in_every_read_loses_and_reorders_nothing(loop):
    # On io_uring the kernel reads ahead for the transport (multishot recv):
    # each pause must hand back what was read ahead, in order, EOF last.
    class Proto(Buffered):
        def buffer_updated(self, nbytes):
            super().buffer_updated(nbytes)
            self.transport.pause_reading()
            asyncio.get_running_loop().call_soon(self.transport.resume_reading)

    tr, proto, peer = connect(loop, lambda: Proto(loop, size=7))
    payload = pattern(50_000)
    for i in range(0, len(payload), 1000):
        peer.sendall(payload[i:i + 1000])
    peer.shutdown(socket.SHUT_WR)
    run(loop, proto.eof)
    assert bytes(proto.data) == payload
    tr.close()
    run(loop, proto.lost)
    peer.close()


def test_buffered_protocol(loop):
    tr, proto, peer = connect(loop, lambda: Buffered(loop, size=1000))
    payload = pattern(200_000)
    peer.sendall(payload)
    peer.shutdown(socket.SHUT_WR)
    run(loop, proto.eof)
    assert bytes(proto.data) == payload
    assert set(proto.sizes) == {-1}
    assert run(loop, proto.lost) is None
    peer.close()


def test_buffered_protocol_empty_buffer_is_a_fatal_error(loop):
    class Empty(Buffered):
        def get_buffer(self, sizehint):
            return bytearray()

    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    tr, proto, peer = connect(loop, lambda: Empty(loop))
    peer.sendall(b"x")
    exc = run(loop, proto.lost)
    assert isinstance(exc, RuntimeError)
    assert str(exc) == "get_buffer() returned an empty buffer"
    assert [e["message"] for e in errors] == ["Fatal error: protocol.get_buffer() call failed."]
    peer.close()


def test_eof_received_true_keeps_the_write_side_open(loop):
    tr, proto, peer = connect(loop, lambda: Recorder(loop, keep_open=True))
    peer.shutdown(socket.SHUT_WR)
    run(loop, proto.eof)
    run(loop, iterations())
    assert not tr.is_closing()
    tr.write(b"still here")
    assert recv_exactly(peer, 10) == b"still here"
    tr.close()
    assert run(loop, proto.lost) is None
    assert recv_to_eof(peer) == b""
    peer.close()


def test_exception_in_data_received_is_reported_and_closes(loop):
    boom = ValueError("boom")

    class Proto(Recorder):
        def data_received(self, data):
            raise boom

    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    tr, proto, peer = connect(loop, lambda: Proto(loop))
    peer.sendall(b"x")
    assert run(loop, proto.lost) is boom
    assert len(errors) == 1
    assert errors[0]["message"] == "Fatal error: protocol.data_received() call failed."
    assert errors[0]["exception"] is boom
    assert errors[0]["transport"] is tr and errors[0]["protocol"] is proto
    assert tr.is_closing()
    peer.close()


# -- writing -------------------------------------------------------------------


def test_write_sends_at_once_when_nothing_is_buffered(loop):
    tr, proto, peer = connect(loop)
    tr.write(b"now")
    assert tr.get_write_buffer_size() == 0
    assert recv_exactly(peer, 3) == b"now"
    tr.write(bytearray(b"ba"))
    tr.write(memoryview(b"xxmv")[2:])
    tr.write(b"")
    assert recv_exactly(peer, 4) == b"bamv"
    tr.close()
    run(loop, proto.lost)
    peer.close()


def test_write_buffers_what_the_kernel_does_not_take(loop):
    tr, proto, peer = connect(loop, sndbuf=4096)
    payload = pattern(2 << 20)
    tr.write(payload)
    assert 0 < tr.get_write_buffer_size() <= len(payload)
    tr.write(b"tail")
    assert tr.get_write_buffer_size() > 4

    async def drain_peer():
        got = bytearray()
        peer.setblocking(False)
        while len(got) < len(payload) + 4:
            try:
                got += peer.recv(1 << 20)
            except BlockingIOError:
                await asyncio.sleep(0)
        return bytes(got)

    assert run(loop, drain_peer()) == payload + b"tail"
    run(loop, until(lambda: tr.get_write_buffer_size() == 0))
    tr.close()
    run(loop, proto.lost)
    peer.close()


def test_writelines(loop):
    tr, proto, peer = connect(loop)
    tr.writelines([b"a", bytearray(b"b"), memoryview(b"c"), b""])
    tr.writelines(iter([b"d", b"e"]))
    tr.writelines([])
    assert recv_exactly(peer, 5) == b"abcde"
    with pytest.raises(TypeError):
        tr.writelines([b"ok", "text"])
    tr.close()
    run(loop, proto.lost)
    peer.close()


def test_write_rejects_non_bytes_like_objects(loop):
    tr, proto, peer = connect(loop)
    # asyncio's words changed in 3.14.
    what = ("a bytes, bytearray, or memoryview object" if sys.version_info >= (3, 14)
            else "a bytes-like object")
    with pytest.raises(TypeError, match=f"data argument must be {what}, not 'str'"):
        tr.write("text")
    with pytest.raises(TypeError, match="not 'int'"):
        tr.write(42)
    tr.close()
    run(loop, proto.lost)
    peer.close()


def test_set_and_get_write_buffer_limits(loop):
    tr, proto, peer = connect(loop)
    assert tr.get_write_buffer_limits() == (16384, 65536)
    tr.set_write_buffer_limits(high=1000)
    assert tr.get_write_buffer_limits() == (250, 1000)
    tr.set_write_buffer_limits(low=100)
    assert tr.get_write_buffer_limits() == (100, 400)
    tr.set_write_buffer_limits(200, 50)
    assert tr.get_write_buffer_limits() == (50, 200)
    tr.set_write_buffer_limits()
    assert tr.get_write_buffer_limits() == (16384, 65536)
    with pytest.raises(ValueError, match=r"high \(1\) must be >= low \(2\) must be >= 0"):
        tr.set_write_buffer_limits(high=1, low=2)
    with pytest.raises(ValueError, match=r"high \(-4\) must be >= low \(-1\) must be >= 0"):
        tr.set_write_buffer_limits(high=-4)
    tr.close()
    run(loop, proto.lost)
    peer.close()


def test_slow_reader_pauses_the_protocol_at_the_limit(loop):
    # A producer that honours pause_writing(): the buffer may overshoot the
    # high-water mark by at most one write, then the protocol is paused.
    tr, proto, peer = connect(loop, sndbuf=4096)
    tr.set_write_buffer_limits(high=128 * 1024, low=32 * 1024)
    chunk = pattern(16 * 1024)
    sent = 0
    while not proto.paused:
        tr.write(chunk)
        sent += len(chunk)
        assert tr.get_write_buffer_size() <= 128 * 1024 + len(chunk)
    assert proto.paused == 1 and proto.resumed == 0
    assert tr.get_write_buffer_size() > 128 * 1024

    async def read_while_paused():
        got = 0
        peer.setblocking(False)
        while not proto.resumed:
            try:
                got += len(peer.recv(1 << 20))
            except BlockingIOError:
                await asyncio.sleep(0)
        return got

    run(loop, read_while_paused())
    assert proto.paused == 1 and proto.resumed == 1
    assert tr.get_write_buffer_size() <= 32 * 1024
    tr.close()
    run(loop, peer_reads_to_eof(peer))
    run(loop, proto.lost)
    peer.close()


def test_lowering_the_limit_pauses_immediately(loop):
    tr, proto, peer = connect(loop, sndbuf=4096)
    tr.write(pattern(1 << 20))
    assert tr.get_write_buffer_size() > 0
    tr.set_write_buffer_limits(high=0)
    assert proto.paused == 1
    tr.abort()
    run(loop, proto.lost)
    peer.close()


def test_exception_in_pause_writing_goes_to_the_handler(loop):
    class Proto(Recorder):
        def pause_writing(self):
            raise ValueError("no pause")

    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    tr, proto, peer = connect(loop, lambda: Proto(loop), sndbuf=4096)
    tr.set_write_buffer_limits(high=0)
    tr.write(pattern(4 << 20))  # does not raise
    assert [e["message"] for e in errors] == ["protocol.pause_writing() failed"]
    assert isinstance(errors[0]["exception"], ValueError)
    tr.abort()
    run(loop, proto.lost)
    peer.close()


# -- half-close ------------------------------------------------------------------


def test_write_eof_after_the_buffer_drains(loop):
    tr, proto, peer = connect(loop, sndbuf=4096)
    payload = pattern(2 << 20)
    tr.write(payload)
    assert tr.get_write_buffer_size() > 0
    tr.write_eof()
    tr.write_eof()  # idempotent
    with pytest.raises(RuntimeError, match=r"Cannot call write\(\) after write_eof\(\)"):
        tr.write(b"more")
    # asyncio's writelines() names itself from 3.12.
    writelines = "writelines" if sys.version_info >= (3, 12) else "write"
    with pytest.raises(RuntimeError, match=rf"Cannot call {writelines}\(\) after write_eof\(\)"):
        tr.writelines([b"more"])

    assert run(loop, peer_reads_to_eof(peer)) == payload
    # The read side is still open.
    peer.sendall(b"reply")
    run(loop, until(lambda: proto.data == b"reply"))
    assert not tr.is_closing()
    peer.close()
    assert run(loop, proto.lost) is None


# -- closing ------------------------------------------------------------------------


def test_close_calls_connection_lost_once(loop):
    tr, proto, peer = connect(loop)
    tr.close()
    assert tr.is_closing()
    tr.close()
    tr.abort()
    assert run(loop, proto.lost) is None
    run(loop, iterations())
    assert proto.events == ["made", ("lost", None)]
    assert tr.get_extra_info("socket").fileno() == -1
    assert recv_to_eof(peer) == b""
    peer.close()


def test_close_flushes_the_buffer_first(loop):
    tr, proto, peer = connect(loop, sndbuf=4096)
    payload = pattern(2 << 20)
    tr.write(payload)
    assert tr.get_write_buffer_size() > 0
    tr.close()
    run(loop, iterations())
    assert not proto.lost.done()  # waits for the buffer

    assert run(loop, peer_reads_to_eof(peer)) == payload
    run(loop, proto.lost)
    assert proto.events == ["made", ("lost", None)]
    peer.close()


def test_abort_drops_the_buffer(loop):
    tr, proto, peer = connect(loop, sndbuf=4096)
    tr.write(pattern(2 << 20))
    assert tr.get_write_buffer_size() > 0
    tr.abort()
    assert tr.get_write_buffer_size() == 0
    assert tr.is_closing()
    assert run(loop, proto.lost) is None
    assert proto.events == ["made", ("lost", None)]
    peer.close()


def test_writes_after_close_are_dropped_with_a_warning(loop, caplog):
    tr, proto, peer = connect(loop)
    tr.close()
    run(loop, proto.lost)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        for _ in range(8):
            tr.write(b"lost")
    warnings = [r for r in caplog.records if r.getMessage() == "socket.send() raised exception."]
    assert len(warnings) == 4  # from the 5th dropped write on, as asyncio
    peer.close()


def test_closing_the_loop_with_an_open_transport(new_loop):
    loop = new_loop()
    tr, proto, peer = connect(loop)
    loop.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        tr.close()
    tr.get_extra_info("socket")  # still answers
    peer.close()
    sock = tr._sock
    del tr, proto
    with pytest.warns(ResourceWarning, match="unclosed transport"):
        collect()
    assert sock.fileno() == -1


# -- re-entrancy: protocol callbacks that act on the transport ------------------------


def test_close_inside_data_received(loop):
    class Proto(Recorder):
        def data_received(self, data):
            super().data_received(data)
            self.transport.close()

    tr, proto, peer = connect(loop, lambda: Proto(loop))
    peer.sendall(b"first")
    assert run(loop, proto.lost) is None
    peer.sendall(b"ignored")
    run(loop, iterations())
    assert proto.data == b"first"
    assert proto.events == ["made", ("lost", None)]
    peer.close()


def test_abort_inside_pause_writing(loop):
    class Proto(Recorder):
        def pause_writing(self):
            super().pause_writing()
            self.transport.abort()

    tr, proto, peer = connect(loop, lambda: Proto(loop), sndbuf=4096)
    tr.set_write_buffer_limits(high=0)
    tr.write(pattern(1 << 20))  # pauses, which aborts
    assert proto.paused == 1
    assert tr.get_write_buffer_size() == 0
    assert run(loop, proto.lost) is None
    tr.write(b"after")  # dropped quietly
    peer.close()


def test_resume_writing_may_write_more(loop):
    class Proto(Recorder):
        def resume_writing(self):
            super().resume_writing()
            self.transport.write(b"--resumed--")
            self.transport.close()

    tr, proto, peer = connect(loop, lambda: Proto(loop), sndbuf=4096)
    payload = pattern(1 << 20)
    tr.write(payload)
    assert proto.paused == 1
    assert run(loop, peer_reads_to_eof(peer)) == payload + b"--resumed--"
    assert run(loop, proto.lost) is None
    assert proto.resumed == 1
    peer.close()


def test_set_protocol_inside_data_received(loop):
    second = Recorder(loop)

    class First(Recorder):
        def data_received(self, data):
            super().data_received(data)
            self.transport.set_protocol(second)

    tr, first, peer = connect(loop, lambda: First(loop))
    peer.sendall(b"one")
    run(loop, until(lambda: first.data == b"one"))
    peer.sendall(b"two")
    run(loop, until(lambda: second.data == b"two"))
    assert first.data == b"one"
    tr.close()
    assert run(loop, second.lost) is None
    peer.close()


def test_exception_in_eof_received(loop):
    boom = ValueError("eof boom")

    class Proto(Recorder):
        def eof_received(self):
            raise boom

    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    tr, proto, peer = connect(loop, lambda: Proto(loop))
    peer.shutdown(socket.SHUT_WR)
    assert run(loop, proto.lost) is boom
    assert [e["message"] for e in errors] == [
        "Fatal error: protocol.eof_received() call failed."]
    peer.close()


def test_exception_in_connection_lost_after_a_drain(loop):
    # close() with buffered data: connection_lost runs when the buffer
    # drains, and its exception goes to the exception handler.
    class Proto(Recorder):
        def connection_lost(self, exc):
            super().connection_lost(exc)
            raise ValueError("lost boom")

    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    tr, proto, peer = connect(loop, lambda: Proto(loop), sndbuf=4096)
    tr.write(pattern(1 << 20))
    assert tr.get_write_buffer_size() > 0
    tr.close()
    run(loop, peer_reads_to_eof(peer))
    run(loop, proto.lost)
    run(loop, iterations())
    assert len(errors) == 1
    assert str(errors[0]["exception"]) == "lost boom"
    assert tr.get_extra_info("socket").fileno() == -1
    peer.close()


@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt])
def test_system_exit_in_data_received_propagates(loop, exc_type):
    class Proto(Recorder):
        def data_received(self, data):
            raise exc_type()

    tr, proto, peer = connect(loop, lambda: Proto(loop))
    peer.sendall(b"x")
    with pytest.raises(exc_type):
        run(loop, proto.lost)
    assert not tr.is_closing()  # not a transport error: nothing was closed
    tr.close()
    assert run(loop, proto.lost) is None
    peer.close()


# -- faults -------------------------------------------------------------------------


def test_peer_reset_mid_write(loop):
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    tr, proto, peer = connect(loop, sndbuf=4096)
    tr.write(pattern(8 << 20))
    assert tr.get_write_buffer_size() > 0
    reset(peer)
    exc = run(loop, proto.lost)
    assert isinstance(exc, (ConnectionResetError, BrokenPipeError))
    assert proto.events[-1] == ("lost", exc)
    assert [e for e in proto.events if e != "eof"].count(("lost", exc)) == 1
    assert tr.get_write_buffer_size() == 0
    assert errors == []  # OSErrors are the peer's doing: not reported


def test_peer_reset_while_reading(loop):
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    tr, proto, peer = connect(loop)
    reset(peer)
    exc = run(loop, proto.lost)
    assert isinstance(exc, ConnectionResetError)
    assert errors == []


def test_connection_refused(loop):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    run(loop, asyncio.sleep(0))  # the loop's own lazily made fds
    collect()
    fds = open_fds()
    with pytest.raises(ConnectionRefusedError):
        run(loop, loop.create_connection(lambda: Recorder(loop), "127.0.0.1", port))
    collect()
    assert open_fds() == fds


# -- resources ------------------------------------------------------------------------


def transports_alive():
    return sum(1 for o in gc.get_objects() if isinstance(o, asyncio.Transport))


def test_fds_and_refcounts_flat_over_many_rounds(loop):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    payload = b"p" * 5000

    def factory():
        return Recorder(loop)

    async def one_round(how):
        tr, proto = await loop.create_connection(factory, *srv.getsockname())
        peer, _ = srv.accept()
        tr.write(payload)
        assert recv_exactly(peer, len(payload)) == payload
        peer.sendall(payload)
        await until(lambda: len(proto.data) == len(payload))
        if how == 0:
            tr.close()
        elif how == 1:
            tr.abort()
        else:
            peer.shutdown(socket.SHUT_WR)
        await proto.lost
        peer.close()

    run(loop, one_round(0))  # warm up
    collect()
    fds, alive = open_fds(), transports_alive()
    refs = (sys.getrefcount(payload), sys.getrefcount(factory))
    for i in range(150):
        run(loop, one_round(i % 3))
    collect()
    assert open_fds() == fds
    assert transports_alive() == alive
    assert (sys.getrefcount(payload), sys.getrefcount(factory)) == refs
    srv.close()


@pytest.mark.parametrize("loop_name", ["uvpy"])
def test_data_received_is_called_from_native_code(loop):
    # No Python frame between the loop's run_forever and data_received: the
    # native core vectorcalls the protocol method directly.
    callers = []

    class Proto(Recorder):
        def data_received(self, data):
            callers.append(sys._getframe(1).f_code.co_name)
            super().data_received(data)

    tr, proto, peer = connect(loop, lambda: Proto(loop))
    peer.sendall(b"x")
    run(loop, until(lambda: proto.data))
    assert callers == ["run_forever"]
    tr.close()
    run(loop, proto.lost)
    peer.close()
