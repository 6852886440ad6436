"""HTTP/1.1 "Hello, World!" servers on each loop, driven by wrk.

The workload process serves on the loop under test; `wrk -t1 -c100
--latency` runs as a child (UVPY_BENCH_PIN=1 pins it and the server apart,
as for the echo client). Servers:

  aiohttp    an aiohttp.web application, one GET route returning
             "Hello, World!" (access log off)
  httptools  an asyncio.Protocol feeding httptools.HttpRequestParser; each
             complete request gets a fixed keep-alive response
  raw        an asyncio.Protocol that counts request ends (b"\\r\\n\\r\\n") in
             the byte stream and writes one fixed response per request: no
             parser, the transport path alone

n is wrk's measured duration in whole seconds (default 3, --quick 1); full
runs first warm up with an unmeasured 1 s wrk run. Headline: requests/s as
wrk reports it (higher is better). The JSON line also carries, over the
measured wrk run: cpu_us_per_op (server CPU per request, getrusage user+sys),
user_s, sys_s, server_util, p50_us/p99_us (wrk's latency distribution),
requests, errors (socket errors + non-2xx), peak_rss_kb.

A cell is skipped (exit status 3, {"skipped": reason}) when wrk, aiohttp or
httptools is missing. Install: `apt-get install wrk`, and the bench extra
(`pip install -e .[bench]`).

Run one directly:  python bench/http.py --loop uvpy --workload aiohttp
"""
import os
import sys

# This file is named like the stdlib's http package: keep bench/ behind the
# stdlib so that `import http` (aiohttp does) finds the real one when this
# runs as a script (the workload process). A runner that imports it as `http`
# only reads WORKLOADS; the workload imports happen in the child.
_BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _BENCH] + [_BENCH]

import asyncio  # noqa: E402
import shutil  # noqa: E402

import _loadgen  # noqa: E402
from _harness import Workload, workload_main  # noqa: E402
from _wrk import drive_wrk, start_aiohttp  # noqa: E402

CONNECTIONS = 100
BODY = b"Hello, World!"
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: keep-alive\r\n\r\n%s" % (len(BODY), BODY))


# ------------------------------------------------------------------ servers

def _httptools_protocol():
    try:
        import httptools
    except ImportError:
        _loadgen.skip("httptools is not installed (pip install httptools)")

    class HttpToolsProtocol(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)

        def data_received(self, data):
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self.transport.close()

        def on_message_complete(self):
            self.transport.write(RESPONSE)
            if not self.parser.should_keep_alive():
                self.transport.close()

    return HttpToolsProtocol


class RawHttpProtocol(asyncio.Protocol):
    """Requests without bodies (wrk's GETs): one response per blank line."""

    def connection_made(self, transport):
        self.transport = transport
        self.tail = b""

    def data_received(self, data):
        buf = self.tail + data if self.tail else data
        count = buf.count(b"\r\n\r\n")
        if count:
            self.tail = buf[buf.rfind(b"\r\n\r\n") + 4:]
            self.transport.write(RESPONSE * count)
        else:
            self.tail = buf


async def _start_protocol(loop, factory):
    server = await loop.create_server(factory, "127.0.0.1", 0, backlog=_loadgen.BACKLOG)

    async def close():
        server.close()

    return server.sockets[0].getsockname()[1], close


def _make(kind: str):
    def setup(loop, n):
        if shutil.which("wrk") is None:
            _loadgen.skip("wrk is not installed (apt-get install wrk)")
        if kind == "httptools":
            factory = _httptools_protocol()  # skips here when httptools is missing
        elif kind == "aiohttp":
            try:
                import aiohttp  # noqa: F401
            except ImportError:
                _loadgen.skip("aiohttp is not installed (pip install aiohttp)")
        _loadgen.pin_server()

        async def main():
            if kind == "aiohttp":
                port, close = await start_aiohttp(loop)
            elif kind == "httptools":
                port, close = await _start_protocol(loop, factory)
            else:
                port, close = await _start_protocol(loop, RawHttpProtocol)
            try:
                return await drive_wrk(loop, f"http://127.0.0.1:{port}/", CONNECTIONS, n)
            finally:
                await close()

        return main()

    return setup


WORKLOADS = [
    Workload("aiohttp", _make("aiohttp"), n=3, quick_n=1, unit="requests/s"),
    Workload("httptools", _make("httptools"), n=3, quick_n=1, unit="requests/s", in_quick=False),
    Workload("raw", _make("raw"), n=3, quick_n=1, unit="requests/s", in_quick=False),
]

if __name__ == "__main__":
    raise SystemExit(_loadgen.main_with_skips(workload_main, WORKLOADS))
