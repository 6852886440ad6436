"""Datagram receiving through io_uring's multishot RECVMSG (datagram.cc,
invariant 7; docs/io_uring.md), and the native sendto() to AF_UNIX
addresses, checked on both loops: stock asyncio is the oracle for what
the protocol sees.

Datagrams are queued in the receiving socket before the loop runs, so on
io_uring one multishot takes them all ahead of the protocol: a pause,
close or abort then finds datagrams already out of the kernel. Where the
loop is uvpy on io_uring the tests also check, through the loop's
counters, that the ring really delivered them (or, for the fallback, that
it did not).
"""

import asyncio
import errno
import os
import pathlib
import socket

import pytest

from conftest import collect, open_fds
from test_udp import Recorder, closed, fds_after_warmup, has_ipv6, run

MAX_SIZE = 256 * 1024  # DatagramTransport.max_size, on both loops


def on_ring(loop):
    return getattr(loop, "backend", None) == "io_uring"


def ring_count(loop):
    return loop._stats()["dgram_ring"] if on_ring(loop) else 0


def _endpoint(loop, family, tmp_path, protocol):
    """A receiving endpoint and a function making blocking senders to it."""
    if family == socket.AF_UNIX:
        path = str(tmp_path / "rx")

        async def make():
            return await loop.create_datagram_endpoint(protocol, local_addr=path,
                                                       family=socket.AF_UNIX)
    else:
        host = "::1" if family == socket.AF_INET6 else "127.0.0.1"

        async def make():
            return await loop.create_datagram_endpoint(protocol, local_addr=(host, 0))
    t, p = run(loop, make())
    addr = t.get_extra_info("sockname")

    def sender(bind=True):
        s = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_UNIX:
            if bind:
                s.bind(str(tmp_path / ("tx%d" % s.fileno())))
        else:
            s.bind((addr[0], 0))
        return s

    return t, p, addr, sender


FAMILIES = [pytest.param(socket.AF_INET, id="ipv4"), pytest.param(socket.AF_INET6, id="ipv6"),
            pytest.param(socket.AF_UNIX, id="unix")]


@pytest.mark.parametrize("family", FAMILIES)
def test_queued_datagrams_from_alternating_peers(loop, family, tmp_path):
    """Three peers, round-robin, 36 datagrams in batches of 9 queued before
    the loop looks (a Unix datagram socket queues at most 10 by default):
    each arrives once, whole, in order, with its own sender's address."""
    if family == socket.AF_INET6 and not has_ipv6():
        pytest.skip("no IPv6 loopback on this machine")
    t, p, addr, sender = _endpoint(loop, family, tmp_path, lambda: Recorder(loop, 36))
    peers = [sender() for _ in range(3)]
    before = ring_count(loop)

    async def arrived(n):
        while len(p.datagrams) < n:
            await asyncio.sleep(0)

    try:
        want = []
        for i in range(36):
            s = peers[i % 3]
            data = b"%d:" % i + bytes(i * 37 % 1500)
            s.sendto(data, addr)
            want.append((data, s.getsockname()))
            if i % 9 == 8:
                run(loop, asyncio.wait_for(arrived(i + 1), 10))
        run(loop, asyncio.wait_for(p.got, 10))
        assert p.datagrams == want
        if on_ring(loop):
            assert ring_count(loop) - before == 36
        run(loop, closed(t))
    finally:
        for s in peers:
            s.close()


def test_a_flood_queued_at_once_arrives_whole_and_in_order(loop):
    """200 datagrams queued before the loop looks (more than io_uring's
    multishot posts per task-work run, and more than the datagram ring's
    64 buffers): all arrive, in order, through the ring where there is one."""
    t, p, addr, sender = _endpoint(loop, socket.AF_INET, None, lambda: Recorder(loop, 200))
    t.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s = sender()
    before = ring_count(loop)
    try:
        for i in range(200):
            s.sendto(b"%d" % i + bytes(i % 50), addr)
        run(loop, asyncio.wait_for(p.got, 10))
        assert [d for d, _ in p.datagrams] == [b"%d" % i + bytes(i % 50) for i in range(200)]
        if on_ring(loop):
            assert ring_count(loop) - before == 200
        run(loop, closed(t))
    finally:
        s.close()


class PauseAt(Recorder):
    """Pauses reading at the datagrams whose index is in `at`; asserts that
    nothing is delivered while paused."""

    def __init__(self, loop, expect, at):
        super().__init__(loop, expect)
        self.at = at
        self.paused_now = False

    def datagram_received(self, data, addr):
        assert not self.paused_now, "datagram_received() while paused"
        super().datagram_received(data, addr)
        if len(self.datagrams) - 1 in self.at:
            self.transport.pause_reading()
            self.paused_now = True


def test_pause_inside_datagram_received_holds_datagrams_received_ahead(loop):
    """Paused at the 3rd and 10th of 40 queued datagrams (io_uring has
    them all out of the kernel by then): nothing arrives while paused, and
    after resume every datagram arrives once, in order, before datagrams
    sent during the pause."""
    t, p, addr, sender = _endpoint(loop, socket.AF_INET, None,
                                   lambda: PauseAt(loop, 45, {2, 9}))
    s = sender()

    async def main():
        for i in range(40):
            s.sendto(b"%d" % i, addr)
        for stop in (3, 10):
            while not p.paused_now:
                await asyncio.sleep(0)
            for _ in range(10):
                await asyncio.sleep(0)
            assert len(p.datagrams) == stop
            assert not t.is_reading()
            if on_ring(loop) and stop == 3:
                assert t._held_datagrams() > 0  # the ring had taken them
            if stop == 10:
                for i in range(40, 45):
                    s.sendto(b"%d" % i, addr)  # into the socket, behind the held ones
            p.paused_now = False
            t.resume_reading()
        await asyncio.wait_for(p.got, 10)
        assert [d for d, _ in p.datagrams] == [b"%d" % i for i in range(45)]
        assert {a for _, a in p.datagrams} == {s.getsockname()}
        await closed(t)

    try:
        run(loop, main())
    finally:
        s.close()


class ActsAt(Recorder):
    def __init__(self, loop, how, at=0):
        super().__init__(loop, 1)
        self.how = how
        self.at = at

    def datagram_received(self, data, addr):
        super().datagram_received(data, addr)
        if len(self.datagrams) - 1 == self.at:
            for how in self.how:
                getattr(self.transport, how)()


@pytest.mark.parametrize("how", [("close",), ("abort",), ("pause_reading", "close"),
                                 ("pause_reading", "abort")])
def test_close_or_abort_with_datagrams_received_ahead_delivers_none_of_them(loop, how):
    """close()/abort() inside datagram_received (after a pause or not) with
    19 more datagrams queued: connection_lost comes, and not one more
    datagram_received, even after resume_reading() or more loop turns."""
    fds = fds_after_warmup(loop)
    t, p, addr, sender = _endpoint(loop, socket.AF_INET, None, lambda: ActsAt(loop, how))
    s = sender()

    async def main():
        for i in range(20):
            s.sendto(b"%d" % i, addr)
        assert await asyncio.wait_for(p.lost, 10) is None
        t.resume_reading()  # a no-op on a closing transport
        s.sendto(b"late", addr)
        for _ in range(10):
            await asyncio.sleep(0)
        assert [d for d, _ in p.datagrams] == [b"0"]

    try:
        run(loop, main())
    finally:
        s.close()
    del t, p
    collect()
    assert open_fds() == fds


def test_datagrams_larger_than_the_stream_ring_buffers(loop):
    """UDP datagrams past the stream reads' 8 KiB provided buffers, up to
    the largest IPv4 UDP datagram, arrive whole."""
    sizes = [8191, 8192, 8193, 20000, 65507]
    t, p, addr, sender = _endpoint(loop, socket.AF_INET, None,
                                   lambda: Recorder(loop, len(sizes)))
    s = sender()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    t.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    before = ring_count(loop)
    try:
        for n in sizes:
            s.sendto(bytes([n % 251]) * n, addr)
        run(loop, asyncio.wait_for(p.got, 10))
        assert [d for d, _ in p.datagrams] == [bytes([n % 251]) * n for n in sizes]
        if on_ring(loop):
            assert ring_count(loop) - before == len(sizes)
        run(loop, closed(t))
    finally:
        s.close()


def test_unix_datagram_past_max_size_is_cut_at_max_size(loop, tmp_path):
    """A Unix datagram larger than max_size (256 KiB) reaches the protocol
    cut to max_size, as the stock loop's recvfrom(max_size) cuts it; the
    one before it (past 64 KiB) and the one after come whole."""
    t, p, addr, sender = _endpoint(loop, socket.AF_UNIX, tmp_path, lambda: Recorder(loop, 3))
    s = sender()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2 << 20)
    s.setblocking(True)
    big = os.urandom(MAX_SIZE + 40000)
    mid = os.urandom(100000)
    try:
        s.sendto(mid, addr)
        s.sendto(big, addr)
        s.sendto(b"after", addr)
        run(loop, asyncio.wait_for(p.got, 10))
        assert [d for d, _ in p.datagrams] == [mid, big[:MAX_SIZE], b"after"]
        run(loop, closed(t))
    finally:
        s.close()


@pytest.mark.parametrize("err", [errno.EINVAL, errno.EOPNOTSUPP, errno.ENOBUFS])
def test_a_refused_or_starved_receive_loses_nothing(loop, err):
    """On io_uring the re-armed receive is made to fail as a kernel would:
    EINVAL/EOPNOTSUPP (no multishot recvmsg for this fd: readiness and
    recvfrom from then on), ENOBUFS (the ring ran dry: counted, re-armed).
    Every datagram still arrives once and in order; on the other loops the
    hook does not exist and the same datagrams arrive the same way."""
    t, p, addr, sender = _endpoint(loop, socket.AF_INET, None, lambda: Recorder(loop, 41))
    s = sender()

    async def main():
        s.sendto(b"first", addr)
        while not p.datagrams:
            await asyncio.sleep(0)
        if on_ring(loop):
            assert loop._stats()["dgram_ring"] == 1
            nobufs = loop._stats()["dgram_nobufs"]
            assert loop._inject_recv_error(t.get_extra_info("socket").fileno(), err)
        for _ in range(3):
            await asyncio.sleep(0)
        for i in range(40):
            s.sendto(b"%d" % i, addr)
            if i % 10 == 9:
                await asyncio.sleep(0)
        await asyncio.wait_for(p.got, 10)
        assert [d for d, _ in p.datagrams] == [b"first"] + [b"%d" % i for i in range(40)]
        if on_ring(loop):
            stats = loop._stats()
            if err == errno.ENOBUFS:
                assert stats["dgram_nobufs"] == nobufs + 1
                assert stats["dgram_ring"] > 1  # re-armed: the ring took some again
            else:
                assert stats["dgram_ring"] == 1  # recvfrom took every one after
        await closed(t)

    try:
        run(loop, main())
    finally:
        s.close()


# -- sendto() to AF_UNIX addresses -------------------------------------------------------


def _unix_pair(loop, tmp_path):
    async def make():
        rx, rp = await loop.create_datagram_endpoint(
            lambda: Recorder(loop, 3), local_addr=str(tmp_path / "rx"), family=socket.AF_UNIX)
        tx, tp = await loop.create_datagram_endpoint(
            lambda: Recorder(loop), local_addr=str(tmp_path / "tx"), family=socket.AF_UNIX)
        return rx, rp, tx, tp

    return run(loop, make())


def _spy_slow_path(transport):
    """Counts the sends the native sendto() hands to Python (uvpy only)."""
    calls = []
    original = getattr(transport, "_sendto_slow", None)
    if original is None:
        return calls

    def spy(data, addr=None):
        calls.append(addr)
        return original(data, addr)

    transport._sendto_slow = spy
    return calls


def test_sendto_unix_paths_str_bytes_and_abstract(loop, tmp_path):
    """str and bytes paths and abstract names (bytes, or str with a leading
    NUL) all reach their socket; on uvpy none of them needs the Python
    path."""
    rx, rp, tx, _ = _unix_pair(loop, tmp_path)
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = b"\0uvpy-ring-%d" % os.getpid()
    abstract.bind(name)
    path = str(tmp_path / "rx")
    slow = _spy_slow_path(tx)

    async def main():
        tx.sendto(b"str", path)
        tx.sendto(b"bytes", os.fsencode(path))
        tx.sendto(b"str again", path)  # the same object: from the identity cache
        tx.sendto(b"abstract bytes", name)
        tx.sendto(b"abstract str", name.decode())
        await asyncio.wait_for(rp.got, 10)
        assert [d for d, _ in rp.datagrams] == [b"str", b"bytes", b"str again"]
        assert {a for _, a in rp.datagrams} == {str(tmp_path / "tx")}
        assert abstract.recvfrom(100) == (b"abstract bytes", str(tmp_path / "tx"))
        assert abstract.recvfrom(100) == (b"abstract str", str(tmp_path / "tx"))
        assert slow == []
        await closed(rx, tx)

    try:
        run(loop, main())
    finally:
        abstract.close()


def test_sendto_unix_unusual_destinations_behave_as_asyncio(loop, tmp_path):
    """A missing path and an overlong one are error_received() (the
    datagram dropped, the transport open); a bytearray path is sent, as
    socket.sendto() takes any bytes-like; a pathlib.Path, which
    socket.sendto() refuses with TypeError, is a fatal error that closes
    the transport, reported to the exception handler."""
    contexts = []
    loop.set_exception_handler(lambda _, ctx: contexts.append(ctx))
    rx, rp, tx, tp = _unix_pair(loop, tmp_path)
    path = str(tmp_path / "rx")

    async def main():
        tx.sendto(b"nowhere", str(tmp_path / "missing"))
        await asyncio.sleep(0)
        assert isinstance(tp.errors[-1], FileNotFoundError)
        tx.sendto(b"long", "/" + "x" * 200)
        await asyncio.sleep(0)
        assert isinstance(tp.errors[-1], OSError)
        assert len(tp.errors) == 2
        tx.sendto(b"bytearray", bytearray(os.fsencode(path)))
        rp.expect = 1
        await asyncio.wait_for(rp.got, 10)
        assert rp.datagrams == [(b"bytearray", str(tmp_path / "tx"))]
        assert not tx.is_closing()
        tx.sendto(b"path", pathlib.Path(path))
        assert type(await asyncio.wait_for(tp.lost, 10)) is TypeError
        assert [type(c["exception"]) for c in contexts] == [TypeError]
        assert contexts[0]["message"] == "Fatal write error on datagram transport"
        await closed(rx)

    run(loop, main())
