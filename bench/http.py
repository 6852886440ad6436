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
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402

import _loadgen  # noqa: E402
from _harness import Workload, workload_main  # noqa: E402

CONNECTIONS = 100
BODY = b"Hello, World!"
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: keep-alive\r\n\r\n%s" % (len(BODY), BODY))


# ------------------------------------------------------------------ servers

async def _start_aiohttp(loop):
    try:
        from aiohttp import web
    except ImportError:
        _loadgen.skip("aiohttp is not installed (pip install aiohttp)")

    async def hello(request):
        return web.Response(text="Hello, World!")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=_loadgen.BACKLOG)
    await site.start()
    port = runner.addresses[0][1]

    async def close():
        await runner.cleanup()

    return port, close


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


# ---------------------------------------------------------------------- wrk

_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def _usecs(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"unreadable wrk time {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict:
    """requests, requests/s, p50/p99 latency (µs), errors from wrk --latency."""
    r = {}
    m = re.search(r"^\s*(\d+) requests in ([\d.]+)(\w+)", out, re.M)
    r["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"^Requests/sec:\s*([\d.]+)", out, re.M)
    r["requests_per_s"] = float(m.group(1)) if m else 0.0
    for pct, key in (("50", "p50_us"), ("99", "p99_us")):
        m = re.search(rf"^\s*{pct}(?:\.0+)?%\s+(\S+)", out, re.M)
        r[key] = _usecs(m.group(1)) if m else None
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    r["errors"] = errors
    return r


async def _run_wrk(loop, port: int, seconds: int, window: _loadgen.CpuWindow | None):
    wrk = shutil.which("wrk")
    cmd = [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency",
           f"http://127.0.0.1:{port}/"]
    lines = []
    cpus = _loadgen.client_cpus()
    if window:
        window.start()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            preexec_fn=_loadgen.preexec_pin(cpus))
    reader = _loadgen.LineReader(loop, proc, lines.append)
    try:
        await reader.done  # end of file: wrk has exited
    finally:
        if window:
            window.stop()
        proc.stdout.close()
        client_cpu = _loadgen.wait_rusage(proc)
    out = "\n".join(lines)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited {proc.returncode}: {out[-500:]}")
    return out, client_cpu


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
                port, close = await _start_aiohttp(loop)
            elif kind == "httptools":
                port, close = await _start_protocol(loop, factory)
            else:
                port, close = await _start_protocol(loop, RawHttpProtocol)
            try:
                if n >= 3:
                    await _run_wrk(loop, port, 1, None)  # warm-up
                window = _loadgen.CpuWindow()
                out, client_cpu = await _run_wrk(loop, port, n, window)
            finally:
                await close()
            r = parse_wrk(out)
            if r["requests"] == 0:
                raise RuntimeError(f"wrk completed no request:\n{out}")
            extras = window.extras(r["requests"])
            extras.update({
                "value": r["requests_per_s"],
                "p50_us": r["p50_us"],
                "p99_us": r["p99_us"],
                "requests": r["requests"],
                "errors": r["errors"],
                "client_util": client_cpu / window.wall_s,
                "pinned": _loadgen.client_cpus() is not None,
            })
            return r["requests"], extras

        return main()

    return setup


WORKLOADS = [
    Workload("aiohttp", _make("aiohttp"), n=3, quick_n=1, unit="requests/s"),
    Workload("httptools", _make("httptools"), n=3, quick_n=1, unit="requests/s", in_quick=False),
    Workload("raw", _make("raw"), n=3, quick_n=1, unit="requests/s", in_quick=False),
]

if __name__ == "__main__":
    raise SystemExit(_loadgen.main_with_skips(workload_main, WORKLOADS))
