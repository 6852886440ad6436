"""TCP transports: close, abort, closing the loop under a transport, and the
peer's faults (reset, refused), on both loops.

The peer is a plain blocking socket accepted from a listener, so each test
controls exactly what the other side does. Waiting is by loop iterations
and futures, never by elapsed time.
"""

import asyncio
import logging
import socket

import pytest

from conftest import collect, open_fds
from tcp_helpers import Recorder, run, connect, recv_to_eof, iterations, reset, pattern, peer_reads_to_eof


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


@pytest.mark.leaves_io_open("closes the loop under an open transport, which then warns")
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
