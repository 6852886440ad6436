"""TCP transports: data_received and buffered protocols, pause_reading and
resume_reading, eof_received, on both loops.

The peer is a plain blocking socket accepted from a listener, so each test
controls exactly what the other side does. Waiting is by loop iterations
and futures, never by elapsed time.
"""

import asyncio
import contextvars
import socket

from conftest import until
from tcp_helpers import Recorder, Buffered, run, connect, recv_exactly, recv_to_eof, iterations, pattern


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
