"""TCP transports: write, writelines and write_eof, on both loops.

The peer is a plain blocking socket accepted from a listener, so each test
controls exactly what the other side does. Waiting is by loop iterations
and futures, never by elapsed time.
"""

import asyncio
import sys

import pytest

from conftest import until
from tcp_helpers import run, connect, recv_exactly, pattern, peer_reads_to_eof


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
