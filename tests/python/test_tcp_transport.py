"""TCP transports: identity and extra info, protocol callbacks that act on
the transport, and resources over many rounds, on both loops.

The peer is a plain blocking socket accepted from a listener, so each test
controls exactly what the other side does. Waiting is by loop iterations
and futures, never by elapsed time.

Reading, writing, flow control and closing have their own modules
(test_tcp_read, test_tcp_write, test_tcp_flow_control, test_tcp_close).
"""

import asyncio
import gc
import socket
import struct
import sys

import pytest

from conftest import collect, open_fds, until
from tcp_helpers import Recorder, run, connect, recv_exactly, iterations, pattern, peer_reads_to_eof


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
