"""loop.stats(): counters of the loop's own work, exact for counted work.

uvpy-only (stock asyncio has no stats()); runs on the backend UVPY_BACKEND
names. Each test takes a snapshot, does a known amount of work, and checks
the difference.
"""

import asyncio
import socket

import pytest

import uvpy


@pytest.fixture
def uloop():
    loop = uvpy.new_event_loop()
    yield loop
    loop.close()


def delta(before, after, *keys):
    return {k: after[k] - before[k] for k in keys}


def test_one_iteration_runs_the_callbacks_ready_at_its_start(uloop):
    ran = []
    before = uloop.stats()
    for i in range(5):
        uloop.call_soon(ran.append, i)
    uloop.call_soon(uloop.stop)
    uloop.run_forever()
    after = uloop.stats()
    assert ran == [0, 1, 2, 3, 4]
    assert delta(before, after, "iterations", "callbacks") == {"iterations": 1, "callbacks": 6}
    assert after["poll_ns"] >= before["poll_ns"]
    assert after["ready"] == 0


def test_time_is_split_between_polling_and_running(uloop):
    before = uloop.stats()
    uloop.run_until_complete(asyncio.sleep(0.05))
    after = uloop.stats()
    # The sleep is spent in the poll (a lower bound only: a loaded machine
    # can only add to either side).
    assert after["poll_ns"] - before["poll_ns"] >= 40_000_000
    assert after["run_ns"] > before["run_ns"]


def test_timers_and_watchers_are_counted_by_kind(uloop):
    async def main():
        loop = asyncio.get_running_loop()
        s0 = loop.stats()
        handles = [loop.call_later(60, lambda: None) for _ in range(3)]
        a, b = socket.socketpair()
        loop.add_reader(a, lambda: None)
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        s = loop.stats()
        loop.remove_reader(a)
        for h in handles:
            h.cancel()
        transport.close()
        server.close()
        await server.wait_closed()
        a.close()
        b.close()
        return s0, s

    s0, s = uloop.run_until_complete(main())
    ring = uloop.backend == "io_uring"  # its datagram reader consumes (contract 9)
    assert s["timers"] - s0["timers"] == 3
    assert delta(s0["watchers"], s["watchers"], "listeners", "datagrams", "other", "total") == {
        "listeners": 1, "datagrams": int(ring), "other": 1 + int(not ring), "total": 3}
    assert s["transports"] == {"DatagramTransport": 1}
    assert s["backend"] == uloop.backend


def test_stream_bytes_and_accepts_are_exact(uloop):
    sizes = [1, 1000, 65536, 300_000]

    async def echo(reader, writer):
        while data := await reader.read(1 << 16):
            writer.write(data)
        writer.close()

    async def main():
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        before = asyncio.get_running_loop().stats()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for n in sizes:
            writer.write(b"x" * n)
            assert await reader.readexactly(n) == b"x" * n
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0)
        return before, asyncio.get_running_loop().stats()

    before, after = uloop.run_until_complete(main())
    total = sum(sizes)
    # Client and server share the loop: each byte is written twice (client,
    # echo) and read twice (server, client).
    assert delta(before, after, "stream_bytes_in", "stream_bytes_out", "accepted") == {
        "stream_bytes_in": 2 * total, "stream_bytes_out": 2 * total, "accepted": 1}


def test_datagrams_are_counted_on_the_native_and_the_python_paths(uloop):
    class Got(asyncio.DatagramProtocol):
        def __init__(self):
            self.got = []
            self.done = uloop.create_future()

        def datagram_received(self, data, addr):
            self.got.append(data)
            if len(self.got) == 4:
                self.done.set_result(None)

    async def main():
        loop = asyncio.get_running_loop()
        rt, rp = await loop.create_datagram_endpoint(Got, local_addr=("127.0.0.1", 0))
        addr = rt.get_extra_info("sockname")
        st, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                    remote_addr=addr)
        before = loop.stats()
        st.sendto(b"a")                    # native fast path
        st.sendto(bytearray(b"bb"))        # also native
        st.sendto(memoryview(b"ccc"))
        st.sendto(b"dddd")
        await asyncio.wait_for(rp.done, 10)
        after = loop.stats()
        st.close()
        rt.close()
        await asyncio.sleep(0)
        return before, after

    before, after = uloop.run_until_complete(main())
    assert delta(before, after, "datagrams_out", "datagram_bytes_out", "datagrams_in",
                 "datagram_bytes_in") == {"datagrams_out": 4, "datagram_bytes_out": 10,
                                          "datagrams_in": 4, "datagram_bytes_in": 10}


def test_stats_does_not_start_the_executor_and_reports_it_once_started(uloop):
    s = uloop.stats()
    if s["executor"] is None:  # nothing in this process has started it yet
        uvpy.executor_metrics()  # starts it
        s = uloop.stats()
    assert set(s["executor"]) >= {"queued", "running", "workers", "blocking"}


def test_a_closed_loop_still_answers(uloop):
    uloop.run_until_complete(asyncio.sleep(0))
    uloop.close()
    s = uloop.stats()
    assert s["ready"] == 0 and s["timers"] == 0 and s["watchers"]["total"] == 0
