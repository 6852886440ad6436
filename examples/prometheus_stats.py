"""loop.stats() as Prometheus metrics, through prometheus_client.

A custom collector turns each scrape into one loop.stats() snapshot, taken
on the loop thread (the HTTP exporter runs in its own thread, so it asks
the loop with run_coroutine_threadsafe), and exposes the counters as
Prometheus counters and the sizes as gauges:

    pip install prometheus_client
    python examples/prometheus_stats.py --port 9464      # then scrape :9464/metrics
    python examples/prometheus_stats.py --check          # scrape once, print, exit
"""

import argparse
import asyncio
import urllib.request

from prometheus_client import start_http_server
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily

import uvpy

COUNTERS = {
    "iterations": "Event loop iterations",
    "callbacks": "Ready callbacks run",
    "accepted": "Connections accepted",
    "stream_bytes_in": "Bytes read by stream transports",
    "stream_bytes_out": "Bytes written by stream transports",
    "datagrams_in": "Datagrams received",
    "datagrams_out": "Datagrams sent",
}


def _running_loop():
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class LoopCollector:
    def __init__(self, loop):
        self.loop = loop

    def _snapshot(self):
        if _running_loop() is self.loop:  # register() collects once, here
            return self.loop.stats()

        async def take():
            return self.loop.stats()

        return asyncio.run_coroutine_threadsafe(take(), self.loop).result(timeout=5)

    def collect(self):
        s = self._snapshot()
        labels = ["backend"]
        for key, doc in COUNTERS.items():
            c = CounterMetricFamily(f"uvpy_loop_{key}", doc, labels=labels)
            c.add_metric([s["backend"]], s[key])
            yield c
        t = CounterMetricFamily("uvpy_loop_seconds", "Time blocked in the poll or running",
                                labels=labels + ["state"])
        t.add_metric([s["backend"], "poll"], s["poll_ns"] / 1e9)
        t.add_metric([s["backend"], "run"], s["run_ns"] / 1e9)
        yield t
        for key in ("ready", "timers"):
            g = GaugeMetricFamily(f"uvpy_loop_{key}", f"Loop {key} now", labels=labels)
            g.add_metric([s["backend"]], s[key])
            yield g
        w = GaugeMetricFamily("uvpy_loop_watchers", "fd watchers by kind", labels=labels + ["kind"])
        for kind, n in s["watchers"].items():
            if kind != "total":
                w.add_metric([s["backend"], kind], n)
        yield w
        tr = GaugeMetricFamily("uvpy_loop_transports", "Open transports by type",
                               labels=labels + ["type"])
        for kind, n in s["transports"].items():
            tr.add_metric([s["backend"], kind], n)
        yield tr


async def echo(reader, writer, done):
    while data := await reader.read(4096):
        writer.write(data)
    writer.close()
    done.set()


async def main(port, check):
    loop = asyncio.get_running_loop()
    REGISTRY.register(LoopCollector(loop))
    server, _thread = start_http_server(port, addr="127.0.0.1")
    port = server.server_port
    handled = asyncio.Event()
    app = await asyncio.start_server(lambda r, w: echo(r, w, handled), "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", app.sockets[0].getsockname()[1])
    for _ in range(100):  # some work to count
        writer.write(b"ping")
        await reader.readexactly(4)
    if check:
        url = f"http://127.0.0.1:{port}/metrics"
        body = await loop.run_in_executor(None, lambda: urllib.request.urlopen(url).read())
        print("\n".join(line for line in body.decode().splitlines() if line.startswith("uvpy_")))
    else:
        print(f"serving metrics on http://127.0.0.1:{port}/metrics (Ctrl-C to stop)")
        await asyncio.Event().wait()
    writer.close()
    await writer.wait_closed()
    await handled.wait()
    app.close()
    await app.wait_closed()
    server.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9464)
    parser.add_argument("--check", action="store_true", help="scrape once on a free port, print, exit")
    args = parser.parse_args()
    uvpy.run(main(0 if args.check else args.port, args.check))
