"""Pipes: connect_read_pipe / connect_write_pipe and their transports, on both
loops, over pipes, FIFOs, ptys and character devices.

Byte counts and order are checked exactly; a write side is filled by not
reading its pipe (64 KiB of kernel buffer), so buffering and flow control
run without timing.
"""

import asyncio
import os
import pty

import pytest

from conftest import collect, open_fds


def run(loop, coro):
    return loop.run_until_complete(coro)


class Reader(asyncio.Protocol):
    def __init__(self, loop):
        self.loop = loop
        self.data = bytearray()
        self.events = []
        self.lost = loop.create_future()
        self.want = None
        self.enough = loop.create_future()

    def connection_made(self, transport):
        self.events.append("made")
        self.transport = transport

    def data_received(self, data):
        self.data += data
        if self.want is not None and len(self.data) >= self.want and not self.enough.done():
            self.enough.set_result(None)

    def eof_received(self):
        self.events.append("eof")

    def connection_lost(self, exc):
        self.events.append(("lost", type(exc) if exc else None))
        self.lost.set_result(exc)

    async def until(self, n):
        self.want = n
        if len(self.data) < n:
            self.enough = self.loop.create_future()
            await self.enough


class Writer(asyncio.BaseProtocol):
    def __init__(self, loop):
        self.events = []
        self.lost = loop.create_future()
        self.resumed = loop.create_future()

    def connection_made(self, transport):
        self.events.append("made")
        self.transport = transport

    def pause_writing(self):
        self.events.append("pause")

    def resume_writing(self):
        self.events.append("resume")
        if not self.resumed.done():
            self.resumed.set_result(None)

    def connection_lost(self, exc):
        self.events.append(("lost", type(exc) if exc else None))
        self.lost.set_result(exc)


@pytest.fixture
def fds_unchanged(loop):
    run(loop, asyncio.sleep(0))
    before = open_fds()
    yield
    collect()
    assert open_fds() == before


def test_read_pipe_delivers_in_order_then_eof(loop, fds_unchanged):
    r, w = os.pipe()
    os.set_blocking(w, False)
    payload = os.urandom(500_000)

    async def main():
        transport, proto = await loop.connect_read_pipe(lambda: Reader(loop), open(r, "rb", 0))
        assert proto.events == ["made"]
        assert transport.get_extra_info("pipe").fileno() == r
        assert transport.is_reading()
        view = memoryview(payload)
        while view:  # the pipe holds 64 KiB: the loop reads while we wait
            try:
                view = view[os.write(w, view[:65536]):]
            except BlockingIOError:
                await asyncio.sleep(0)
        os.close(w)
        await proto.lost
        return proto

    proto = run(loop, main())
    assert bytes(proto.data) == payload
    assert proto.events == ["made", "eof", ("lost", None)]


def test_pause_and_resume_reading(loop, fds_unchanged):
    r, w = os.pipe()

    async def main():
        transport, proto = await loop.connect_read_pipe(lambda: Reader(loop), open(r, "rb", 0))
        transport.pause_reading()
        assert not transport.is_reading()
        os.write(w, b"held")
        for _ in range(10):
            await asyncio.sleep(0.005)
        held = bytes(proto.data)
        transport.resume_reading()
        await proto.until(4)
        transport.close()
        await proto.lost
        return held, bytes(proto.data), proto.events

    held, data, events = run(loop, main())
    os.close(w)
    assert held == b"" and data == b"held"
    assert events == ["made", ("lost", None)]


def test_read_pipe_refuses_a_regular_file(loop, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x")
    with open(path, "rb") as f:
        with pytest.raises(ValueError, match="^Pipe transport is for pipes/sockets only.$"):
            run(loop, loop.connect_read_pipe(asyncio.Protocol, f))
        with pytest.raises(ValueError, match="^Pipe transport is only for pipes, sockets and character devices$"):
            run(loop, loop.connect_write_pipe(asyncio.BaseProtocol, f))
        assert os.get_blocking(f.fileno())  # refused before it was touched
        assert f.read() == b"x"


def test_write_pipe_buffers_pauses_and_resumes_losing_nothing(loop, fds_unchanged):
    r, w = os.pipe()
    data = os.urandom(1 << 20)

    async def main():
        transport, proto = await loop.connect_write_pipe(lambda: Writer(loop), open(w, "wb", 0))
        transport.set_write_buffer_limits(high=128 * 1024)
        assert transport.get_write_buffer_limits() == (32 * 1024, 128 * 1024)
        transport.write(data[:100])
        transport.write(bytearray(data[100:1000]))
        transport.write(memoryview(data)[1000:])
        buffered = transport.get_write_buffer_size()
        events = list(proto.events)
        got = bytearray()
        os.set_blocking(r, False)
        while len(got) < len(data):
            try:
                got += os.read(r, 1 << 16)
            except BlockingIOError:
                await asyncio.sleep(0)
        await proto.resumed
        transport.write_eof()
        await proto.lost
        return buffered, events, bytes(got), proto.events

    buffered, events, got, final = run(loop, main())
    assert buffered > 0 and events == ["made", "pause"]
    assert got == data
    assert final == ["made", "pause", "resume", ("lost", None)]
    assert os.read(r, 10) == b""  # EOF: the write side closed its fd
    os.close(r)


def test_write_pipe_peer_closing(loop, fds_unchanged):
    async def one(buffered):
        r, w = os.pipe()
        transport, proto = await loop.connect_write_pipe(lambda: Writer(loop), open(w, "wb", 0))
        await asyncio.sleep(0)
        if buffered:
            transport.write(b"x" * (1 << 20))
            assert transport.get_write_buffer_size() > 0
        os.close(r)
        exc = await asyncio.wait_for(proto.lost, 5)
        assert transport.is_closing()
        transport.write(b"more")  # ignored after the loss, as asyncio ignores it
        return type(exc) if exc else None

    assert run(loop, one(False)) is None
    assert run(loop, one(True)) is BrokenPipeError


def test_write_pipe_abort_drops_the_buffer(loop, fds_unchanged):
    r, w = os.pipe()

    async def main():
        transport, proto = await loop.connect_write_pipe(lambda: Writer(loop), open(w, "wb", 0))
        transport.write(b"y" * (1 << 20))
        transport.abort()
        assert transport.get_write_buffer_size() == 0
        return await proto.lost

    assert run(loop, main()) is None
    os.close(r)


def test_fifo_both_ways(loop, tmp_path, fds_unchanged):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    wfd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)

    async def main():
        rt, rp = await loop.connect_read_pipe(lambda: Reader(loop), open(rfd, "rb", 0))
        wt, wp = await loop.connect_write_pipe(lambda: Writer(loop), open(wfd, "wb", 0))
        payload = os.urandom(200_000)
        wt.write(payload)
        wt.close()
        await rp.lost
        await wp.lost
        return payload, bytes(rp.data), rp.events

    payload, got, events = run(loop, main())
    assert got == payload
    assert events == ["made", "eof", ("lost", None)]


def test_pty_both_ways(loop, fds_unchanged):
    master, slave = pty.openpty()
    import tty
    tty.setraw(slave)

    async def main():
        rt, rp = await loop.connect_read_pipe(lambda: Reader(loop), open(master, "rb", 0))
        wt, wp = await loop.connect_write_pipe(lambda: Writer(loop), open(os.dup(master), "wb", 0))
        os.write(slave, b"from slave")
        await rp.until(10)
        wt.write(b"to slave")
        wt.close()
        await wp.lost
        got = b""
        while len(got) < 8:
            got += os.read(slave, 100)
        os.close(slave)  # the master's read side then ends with EIO: quietly
        exc = await asyncio.wait_for(rp.lost, 5)
        return bytes(rp.data), got, exc

    from_slave, to_slave, exc = run(loop, main())
    assert from_slave == b"from slave" and to_slave == b"to slave"
    assert isinstance(exc, OSError)


def test_character_device(loop, fds_unchanged):
    # /dev/null takes every write at once; reading a character device is
    # covered by the pty test (/dev/zero cannot be polled: EPERM on both loops)
    async def main():
        wt, wp = await loop.connect_write_pipe(lambda: Writer(loop), open("/dev/null", "wb", 0))
        for _ in range(100):
            wt.write(b"z" * 100_000)
        assert wt.get_write_buffer_size() == 0
        wt.close()
        await wp.lost
        return wp.events

    assert run(loop, main()) == ["made", ("lost", None)]


@pytest.mark.leaves_io_open("closes the loop under an open read pipe, whose transport then warns")
def test_unclosed_pipe_transport_warns_and_closes_its_fd(new_loop):
    loop = new_loop()
    r, w = os.pipe()
    run(loop, asyncio.sleep(0))
    transport, _ = run(loop, loop.connect_read_pipe(asyncio.Protocol, open(r, "rb", 0)))
    loop.close()  # the loop's reader let go of the transport
    assert "open" in repr(transport)
    before = open_fds()
    with pytest.warns(ResourceWarning, match="^unclosed transport <"):
        del transport
        collect()
    assert open_fds() == before - 1
    os.close(w)


def test_uvpy_write_refuses_str(loop_name, new_loop):
    """uvpy raises TypeError for a non-bytes write; asyncio asserts (gone under -O)."""
    loop = new_loop()
    r, w = os.pipe()

    async def main():
        transport, proto = await loop.connect_write_pipe(lambda: Writer(loop), open(w, "wb", 0))
        try:
            with pytest.raises(TypeError if loop_name == "uvpy" else AssertionError):
                transport.write("text")
        finally:
            transport.close()
            await proto.lost

    run(loop, main())
    os.close(r)


@pytest.mark.parametrize("first", ["bytes", "wide memoryview"])
def test_write_pipe_keeps_what_was_written(loop_name, new_loop, first):
    """A queued bytearray changed after write(), and a memoryview of wider
    items: the reader gets the bytes as they were at write() time, all of them."""
    import array
    if first == "wide memoryview" and loop_name == "asyncio":
        pytest.skip("asyncio's pipe transport compares os.write()'s byte count with "
                    "len() of the view, which counts items, and drops the rest of the write")
    loop = new_loop()
    r, w = os.pipe()
    words = array.array("i", range(50_000))  # 200,000 bytes
    head = memoryview(words) if first == "wide memoryview" else words.tobytes()
    mutable = bytearray(b"a" * 100_000)

    async def main():
        transport, proto = await loop.connect_write_pipe(lambda: Writer(loop), open(w, "wb", 0))
        transport.write(head)
        transport.write(mutable)
        assert transport.get_write_buffer_size() == 300_000 - 65536
        mutable[:] = b"b" * 100_000
        transport.close()
        got = bytearray()
        os.set_blocking(r, False)
        while True:
            try:
                chunk = os.read(r, 1 << 16)
            except BlockingIOError:
                await asyncio.sleep(0)
                continue
            if not chunk:
                break
            got += chunk
        await proto.lost
        return bytes(got)

    got = run(loop, main())
    os.close(r)
    assert got == words.tobytes() + b"a" * 100_000
