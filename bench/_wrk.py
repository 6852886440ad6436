"""wrk, the HTTP load generator of the http and tls suites, and the
aiohttp "Hello, World!" application both serve to it.

* `run_wrk()`: `wrk -t1 -cN -dS --latency URL` as a child process, pinned
  to the load generator's CPUs (UVPY_BENCH_PIN=1, see _loadgen), its
  output read on the loop under test; an https:// URL makes wrk speak TLS
  (it does not check the server's certificate).
* `parse_wrk()`: requests, requests/s, p50/p99 latency and errors from its
  --latency report.
* `drive_wrk()`: the measured run (after a 1 s warm-up run when it lasts 3 s
  or more) with the server's CPU over exactly that run: (requests,
  extras) for a workload to return.
* `start_aiohttp()`: the aiohttp server, plain or with an SSLContext.
"""
from __future__ import annotations

import re
import shutil
import subprocess

import _loadgen


async def start_aiohttp(loop, ssl_context=None):
    """An aiohttp.web app with one GET / returning "Hello, World!" (access
    log off), on 127.0.0.1 and a free port, over TLS with ssl_context;
    returns (port, an async close function). Skips without aiohttp."""
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
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=_loadgen.BACKLOG,
                       ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]

    async def close():
        await runner.cleanup()

    return port, close


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


async def run_wrk(loop, url: str, connections: int, seconds: int,
                  window: _loadgen.CpuWindow | None):
    """Runs wrk (one thread, pinned to client_cpus()) against url; returns
    (its output, its CPU seconds). window, when given, spans exactly
    wrk's run."""
    wrk = shutil.which("wrk")
    cmd = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url]
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


async def drive_wrk(loop, url: str, connections: int, seconds: int) -> tuple[int, dict]:
    """(requests, extras): "value" is wrk's requests/s; the extras add the
    server's CPU per request (_loadgen.CpuWindow), wrk's p50/p99, errors
    and wrk's own CPU share (client_util)."""
    if seconds >= 3:
        await run_wrk(loop, url, connections, 1, None)  # warm-up
    window = _loadgen.CpuWindow()
    out, client_cpu = await run_wrk(loop, url, connections, seconds, window)
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
