"""TCP echo servers on each loop, driven by a native closed-loop client.

The workload process starts an echo server on the loop under test and runs
bench/loadgen/loadgen.c (built on first use, see _loadgen.py) as a child:
C connections each send a SIZE-byte message and wait for all of it to come
back before sending the next. Server kinds:

  protocol  asyncio.Protocol: data_received() -> transport.write(data)
  buffered  asyncio.BufferedProtocol: recv into one shared 256 KiB buffer,
            buffer_updated(n) -> transport.write(buf[:n]) (a copy: the buffer
            is reused by the next read)
  streams   asyncio.start_server: reader.read(256 KiB) -> writer.write(data)
            -> await writer.drain()
  sock      loop.sock_accept + one task per connection: sock_recv(256 KiB)
            -> sock_sendall
  connect   the protocol server, but every round trip on a fresh connection
            (loadgen -r: connect, one message, the echo, a reset close), C
            of them in progress at once: the accept path under load. Its
            round trips/s are connections served per second.

Workloads are KIND_SIZE_cCONNS for sizes 1k, 10k, 100k (KiB) and 10 or 1000
connections; UVPY_BENCH_ECHO_10K=1 adds KIND_1k_c10000 (10,000 connections,
RLIMIT_NOFILE raised to the hard limit, skipped if that is too low).

n is the measured window in milliseconds (default 2000, --quick 300), after
a warm-up of n/4 ms (0.1-0.5 s) that is not counted. Headline: round trips/s
in the window (higher is better). The JSON line also carries, over exactly
that window: cpu_us_per_op (the server process's user+system CPU per round
trip, from getrusage; user_us_per_op/sys_us_per_op split it), user_s,
sys_s, server_util (server CPU / window: ~1.0 = the server is the
bottleneck), p50_us/p99_us/p999_us (round-trip latency seen by the client),
peak_rss_kb, errors, and client_util (the load generator's CPU share over
its run; near 1.0 it may be the limit).

On loopback the kernel's TCP path is most of the server's CPU per round
trip (85-90% on the 2-core dev VM): bench/echo_floor.py measures a plain C
epoll echo server under the same load, the floor no loop can go below.

UVPY_BENCH_PIN=1 pins the server to the first CPU and the client to the
others (off by default, see _loadgen.py). Every server listens on 127.0.0.1
with backlog 4096.

Run one directly:  python bench/echo.py --loop uvpy --workload protocol_1k_c10
"""
import asyncio
import os
import socket

import _loadgen
from _harness import Workload, workload_main

READ_SIZE = 256 * 1024
SIZES = {"1k": 1024, "10k": 10 * 1024, "100k": 100 * 1024}
CONCURRENCY = (10, 1000)


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


_SHARED = bytearray(READ_SIZE)


class EchoBufferedProtocol(asyncio.BufferedProtocol):
    # One buffer for every connection: buffer_updated() copies out of it
    # before the loop can read into it again.
    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return _SHARED

    def buffer_updated(self, nbytes):
        self.transport.write(_SHARED[:nbytes])


async def _finish(tasks, timeout=5.0):
    """Lets handler tasks end on their own (the client has closed every
    connection), then cancels what is left, so no task outlives the loop."""
    if tasks:
        await asyncio.wait(list(tasks), timeout=timeout)
    for t in list(tasks):
        t.cancel()
    if tasks:
        await asyncio.wait(list(tasks))


_stream_tasks = set()


async def _stream_handler(reader, writer):
    task = asyncio.current_task()
    _stream_tasks.add(task)
    task.add_done_callback(_stream_tasks.discard)
    try:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _start_protocol(loop, factory):
    server = await loop.create_server(factory, "127.0.0.1", 0, backlog=_loadgen.BACKLOG)

    async def close():
        server.close()

    return server.sockets[0].getsockname()[1], close


async def _start_streams(loop):
    server = await asyncio.start_server(_stream_handler, "127.0.0.1", 0,
                                        backlog=_loadgen.BACKLOG)

    async def close():
        server.close()
        await _finish(_stream_tasks)

    return server.sockets[0].getsockname()[1], close


async def _start_sock(loop):
    listener = socket.create_server(("127.0.0.1", 0), backlog=_loadgen.BACKLOG)
    listener.setblocking(False)
    handlers = set()

    async def handle(conn):
        try:
            while True:
                data = await loop.sock_recv(conn, READ_SIZE)
                if not data:
                    break
                await loop.sock_sendall(conn, data)
        except ConnectionError:
            pass
        finally:
            conn.close()

    async def accept():
        while True:
            conn, _ = await loop.sock_accept(listener)
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t = loop.create_task(handle(conn))
            handlers.add(t)
            t.add_done_callback(handlers.discard)

    acceptor = loop.create_task(accept())

    async def close():
        acceptor.cancel()
        await asyncio.wait([acceptor])
        listener.close()
        await _finish(handlers)

    return listener.getsockname()[1], close


def _make(kind: str, size: int, conns: int):
    def setup(loop, n):
        _loadgen.raise_nofile(conns + 256)
        _loadgen.binary()  # build before anything is timed
        _loadgen.pin_server()
        duration = n / 1000
        warmup = min(0.5, max(0.1, duration / 4))

        async def main():
            if kind in ("protocol", "connect"):
                port, close = await _start_protocol(loop, EchoProtocol)
            elif kind == "buffered":
                port, close = await _start_protocol(loop, EchoBufferedProtocol)
            elif kind == "streams":
                port, close = await _start_streams(loop)
            else:
                port, close = await _start_sock(loop)
            try:
                return await _loadgen.drive_echo(loop, port, conns, size, duration, warmup,
                                                 reconnect=kind == "connect")
            finally:
                await close()
                for _ in range(3):  # let connection_lost() callbacks run
                    await asyncio.sleep(0)

        return main()

    return setup


def _workloads() -> list[Workload]:
    grid = [(kind, label, conns) for kind in ("protocol", "buffered", "streams", "sock")
            for label in SIZES for conns in CONCURRENCY]
    grid += [("connect", "1k", conns) for conns in (10, 100)]
    if os.environ.get("UVPY_BENCH_ECHO_10K") == "1":
        grid += [(kind, "1k", 10_000) for kind in ("protocol", "buffered", "streams", "sock")]
    return [Workload(f"{kind}_{label}_c{conns}", _make(kind, SIZES[label], conns),
                     n=2000, quick_n=300, unit="round trips/s",
                     in_quick=(label, conns) == ("1k", 1000) and kind in ("protocol", "streams"))
            for kind, label, conns in grid]


WORKLOADS = _workloads()

if __name__ == "__main__":
    raise SystemExit(_loadgen.main_with_skips(workload_main, WORKLOADS))
