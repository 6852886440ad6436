"""TCP transports: write buffer limits, pause_writing and resume_writing,
on both loops.

The peer is a plain blocking socket accepted from a listener, so each test
controls exactly what the other side does. Waiting is by loop iterations
and futures, never by elapsed time.
"""

import asyncio

import pytest

from tcp_helpers import Recorder, run, connect, pattern, peer_reads_to_eof


# -- write buffer limits and pause_writing/resume_writing ----------------------


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
