"""add_reader / add_writer / remove_* on sockets and pipes."""

import os
import socket
import tempfile

import pytest


def test_reader_fires_per_readiness_and_is_removable(loop):
    r, w = socket.socketpair()
    r.setblocking(False)
    got = []

    def on_readable():
        data = r.recv(100)
        got.append(data)
        if data == b"2":
            assert loop.remove_reader(r) is True
            loop.stop()

    loop.add_reader(r, on_readable)
    w.send(b"1")
    loop.call_later(0.02, w.send, b"2")
    loop.run_forever()
    assert got == [b"1", b"2"]
    assert loop.remove_reader(r) is False
    r.close()
    w.close()


def test_writer_and_reader_on_same_fd(loop):
    a, b = socket.socketpair()
    a.setblocking(False)
    events = []

    def on_writable():
        events.append("w")
        loop.remove_writer(a.fileno())
        b.send(b"ping")

    def on_readable():
        events.append(("r", a.recv(10)))
        loop.remove_reader(a.fileno())
        loop.stop()

    loop.add_reader(a.fileno(), on_readable)
    loop.add_writer(a.fileno(), on_writable)
    loop.run_forever()
    assert events == ["w", ("r", b"ping")]
    a.close()
    b.close()


def test_pipe_reader(loop):
    rfd, wfd = os.pipe()
    os.set_blocking(rfd, False)
    got = []

    def on_readable():
        got.append(os.read(rfd, 10))
        loop.remove_reader(rfd)
        loop.stop()

    loop.add_reader(rfd, on_readable, )
    os.write(wfd, b"abc")
    loop.run_forever()
    assert got == [b"abc"]
    os.close(rfd)
    os.close(wfd)


def test_replacing_a_reader_cancels_the_old_one(loop):
    r, w = socket.socketpair()
    got = []
    loop.add_reader(r, got.append, "old")

    def new():
        got.append("new")
        r.recv(10)
        loop.remove_reader(r)
        loop.stop()

    loop.add_reader(r, new)
    w.send(b"x")
    loop.run_forever()
    assert got == ["new"]
    r.close()
    w.close()


def test_regular_file_is_refused_with_permission_error(loop):
    with tempfile.TemporaryFile() as f:
        with pytest.raises(PermissionError):
            loop.add_reader(f.fileno(), lambda: None)
        assert loop.remove_reader(f.fileno()) is False


@pytest.mark.parametrize("bad,exc", [(-1, ValueError), ("x", ValueError), (1.5, ValueError)])
def test_invalid_fd_objects(loop, bad, exc):
    with pytest.raises(exc):
        loop.add_reader(bad, lambda: None)


def test_fileobj_with_fileno(loop):
    r, w = socket.socketpair()

    class Wrapper:
        def fileno(self):
            return r.fileno()

    got = []
    loop.add_reader(Wrapper(), lambda: (got.append(r.recv(4)), loop.stop()))
    w.send(b"ok")
    loop.run_forever()
    assert got == [b"ok"]
    assert loop.remove_reader(Wrapper()) is True
    r.close()
    w.close()


def test_add_reader_on_closed_loop(loop):
    r, w = socket.socketpair()
    loop.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.add_reader(r, lambda: None)
    assert loop.remove_reader(r) is False
    r.close()
    w.close()
