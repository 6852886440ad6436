"""TLS echo servers on each loop, driven by a TLS closed-loop client.

The workload process starts a TLS echo server (ssl= on create_server, a
certificate for "localhost" from a throwaway trustme CA) on the loop under
test and runs bench/tls_client.py as a child: C connections each send a
SIZE-byte message and wait for all of it to come back before sending the
next. The client is the same for every contender (Python on uvloop, see its
docstring), so on a small machine it is often the bottleneck: the number to
compare is the server's cpu_us_per_op (its own CPU per round trip over the
measured window), with client_util saying how busy the client was.

Server kinds (as in echo.py):

  protocol   asyncio.Protocol: data_received() -> transport.write(data)
  streams    asyncio.start_server: reader.read(256 KiB) -> writer.write(data)
             -> await writer.drain()
  handshake  the protocol server, but every round trip on a fresh
             connection (full TLS 1.3 handshake, one 1 KiB echo,
             close_notify): round trips/s are handshakes per second.

  handshake_wrk
             handshakes per second under a native client: a minimal
             HTTP responder (reads a request, writes a fixed response
             with "Connection: close", closes: close_notify) driven by
             `wrk -t1 -c10` over https, which opens a new connection,
             with a full TLS handshake, for every request. wrk's
             requests/s are handshakes per second, and the server's CPU
             per request is its CPU per handshake. n as for aiohttp_https.

  aiohttp_https
             HTTPS "Hello, World!": http.py's aiohttp application with
             ssl_context= (the same certificate), driven by `wrk -t1 -c100`
             over https (wrk links OpenSSL; each connection handshakes
             once, then keep-alive GETs). n is wrk's measured duration in
             whole seconds (3, --quick 1; a 1 s warm-up run first at 3 s
             or more). Requests/s as wrk reports it, the server's CPU per
             request, p50/p99; skipped without wrk or aiohttp.

Workloads: KIND_SIZE_cCONNS for sizes 1k and 100k and 10 or 1000
connections, plus handshake_1k_c10, handshake_wrk and aiohttp_https. n is the measured window in ms (2000,
--quick 300) after an uncounted warm-up of n/4 ms (0.1-0.5 s). Needs the
trustme package (skipped without it).

Run one directly:  python bench/tls.py --loop uvpy --workload protocol_1k_c10
"""
import os
import sys

# bench/http.py is named like the stdlib's http package, which aiohttp
# imports: keep bench/ behind the stdlib when this runs as a script (as
# http.py does).
_BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _BENCH] + [_BENCH]

import asyncio  # noqa: E402
import shutil  # noqa: E402
import ssl  # noqa: E402
import tempfile  # noqa: E402

import _loadgen  # noqa: E402
from _harness import Workload, workload_main  # noqa: E402
from _wrk import drive_wrk, start_aiohttp  # noqa: E402
from echo import READ_SIZE, EchoProtocol, _finish  # noqa: E402

SIZES = {"1k": 1024, "100k": 100 * 1024}
CONCURRENCY = (10, 1000)
CLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tls_client.py")

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
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


def _certificates(tmp):
    """(server SSLContext, path of the CA the client trusts)."""
    try:
        import trustme
    except ImportError:
        _loadgen.skip("the trustme package is not installed")
    ca = trustme.CA()
    ca_path = os.path.join(tmp, "ca.pem")
    ca.cert_pem.write_to_path(ca_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(ctx)
    return ctx, ca_path


def _make(kind: str, size: int, conns: int):
    def setup(loop, n):
        _loadgen.raise_nofile(2 * conns + 256)
        _loadgen.pin_server()
        tmp = tempfile.mkdtemp(prefix="uvpy-tls-bench-")
        server_ctx, ca_path = _certificates(tmp)
        duration = n / 1000
        warmup = min(0.5, max(0.1, duration / 4))

        async def main():
            if kind == "streams":
                server = await asyncio.start_server(_stream_handler, "127.0.0.1", 0,
                                                    ssl=server_ctx, backlog=_loadgen.BACKLOG)
            else:
                server = await loop.create_server(EchoProtocol, "127.0.0.1", 0,
                                                  ssl=server_ctx, backlog=_loadgen.BACKLOG)
            port = server.sockets[0].getsockname()[1]
            cmd = [sys.executable, CLIENT, "-p", str(port), "-c", str(conns), "-s", str(size),
                   "-d", f"{duration:.3f}", "-w", f"{warmup:.3f}", "--ca", ca_path]
            if kind == "handshake":
                cmd.append("-r")
            try:
                return await _loadgen.drive_echo(loop, port, conns, size, duration, warmup,
                                                 command=cmd)
            finally:
                server.close()
                await _finish(_stream_tasks)
                for _ in range(3):  # let connection_lost() callbacks run
                    await asyncio.sleep(0)
                for name in os.listdir(tmp):
                    os.unlink(os.path.join(tmp, name))
                os.rmdir(tmp)

        return main()

    return setup


HTTPS_CONNECTIONS = 100
HANDSHAKE_CONNECTIONS = 10
_CLOSE_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n"
                   b"Connection: close\r\n\r\nHello, World!")


class _AnswerAndClose(asyncio.Protocol):
    """Answers the first request on a connection, then closes it."""

    def connection_made(self, transport):
        self.transport = transport
        self.request = b""

    def data_received(self, data):
        self.request += data
        if b"\r\n\r\n" in self.request:
            self.transport.write(_CLOSE_RESPONSE)
            self.transport.close()


def _need_wrk():
    if shutil.which("wrk") is None:
        _loadgen.skip("wrk is not installed (apt-get install wrk)")


def handshake_wrk(loop, n):
    _need_wrk()
    _loadgen.pin_server()
    tmp = tempfile.mkdtemp(prefix="uvpy-tls-bench-")
    server_ctx, _ = _certificates(tmp)
    shutil.rmtree(tmp)

    async def main():
        server = await loop.create_server(_AnswerAndClose, "127.0.0.1", 0, ssl=server_ctx,
                                          backlog=_loadgen.BACKLOG)
        port = server.sockets[0].getsockname()[1]
        try:
            return await drive_wrk(loop, f"https://127.0.0.1:{port}/", HANDSHAKE_CONNECTIONS, n)
        finally:
            server.close()
            for _ in range(3):  # let connection_lost() callbacks run
                await asyncio.sleep(0)

    return main()


def aiohttp_https(loop, n):
    _need_wrk()
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        _loadgen.skip("aiohttp is not installed (pip install aiohttp)")
    _loadgen.pin_server()
    tmp = tempfile.mkdtemp(prefix="uvpy-tls-bench-")
    server_ctx, _ = _certificates(tmp)
    shutil.rmtree(tmp)

    async def main():
        port, close = await start_aiohttp(loop, server_ctx)
        try:
            return await drive_wrk(loop, f"https://127.0.0.1:{port}/", HTTPS_CONNECTIONS, n)
        finally:
            await close()

    return main()


def _workloads() -> list[Workload]:
    grid = [(kind, label, conns) for kind in ("protocol", "streams")
            for label in SIZES for conns in CONCURRENCY]
    grid.append(("handshake", "1k", 10))
    return [Workload(f"{kind}_{label}_c{conns}", _make(kind, SIZES[label], conns),
                     n=2000, quick_n=300, unit="round trips/s",
                     in_quick=(label, conns) == ("1k", 10))
            for kind, label, conns in grid] + [
        Workload("handshake_wrk", handshake_wrk, n=3, quick_n=1, unit="handshakes/s"),
        Workload("aiohttp_https", aiohttp_https, n=3, quick_n=1, unit="requests/s")]


WORKLOADS = _workloads()

if __name__ == "__main__":
    raise SystemExit(_loadgen.main_with_skips(workload_main, WORKLOADS))
