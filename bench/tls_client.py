"""A closed-loop TLS echo client speaking the native load generator's output
protocol (see bench/loadgen/loadgen.c): "start" and "stop" lines around the
measured window, then one JSON line with round_trips, round_trips_per_s,
p50/p99/p999_us, errors, connect_errors, duration_s.

The native generator has no TLS, so this one is Python, on uvloop when it
is installed (its SSLProtocol is Cython: the cheapest client at hand), else
on stock asyncio. It is the same client for every server contender; its CPU
share (client_util in the report) says when it, not the server, is the
limit. Read the server's cpu_us_per_op, not only the rate.

    python bench/tls_client.py -p PORT -c CONNS -s SIZE -d SECONDS -w SECONDS
                               --ca CA.pem [-r]

-r: every round trip on a fresh connection (connect, TLS handshake, one
message, its echo, close_notify): round trips/s are handshakes per second.
"""
import argparse
import asyncio
import json
import ssl
import sys
import time


class Stats:
    def __init__(self):
        self.counting = False
        self.rts = 0
        self.errors = 0
        self.connect_errors = 0
        self.lat = []


class EchoClient(asyncio.Protocol):
    """Sends SIZE bytes, waits for all of them back, repeats."""

    def __init__(self, stats, msg, once, done):
        self.stats, self.msg, self.once, self.done = stats, msg, once, done
        self.got = 0

    def connection_made(self, transport):
        self.transport = transport
        self._send()

    def _send(self):
        self.got = 0
        self.t0 = time.perf_counter()
        self.transport.write(self.msg)

    def data_received(self, data):
        self.got += len(data)
        if self.got < len(self.msg):
            return
        st = self.stats
        if st.counting:
            st.rts += 1
            st.lat.append(time.perf_counter() - self.t0)
        if self.once:
            self.transport.close()
        elif not self.transport.is_closing():
            self._send()

    def connection_lost(self, exc):
        if exc is not None:
            self.stats.errors += 1
        if not self.done.done():
            self.done.set_result(None)


async def main(args):
    loop = asyncio.get_running_loop()
    ctx = ssl.create_default_context(cafile=args.ca)
    st = Stats()
    msg = b"x" * args.size
    stop = False
    transports = []

    async def persistent():
        done = loop.create_future()
        try:
            tr, _ = await loop.create_connection(lambda: EchoClient(st, msg, False, done),
                                                 "127.0.0.1", args.port, ssl=ctx,
                                                 server_hostname="localhost")
        except OSError:
            st.connect_errors += 1
            return
        transports.append(tr)
        await done

    async def reconnecting():
        while not stop:
            done = loop.create_future()
            try:
                await loop.create_connection(lambda: EchoClient(st, msg, True, done),
                                             "127.0.0.1", args.port, ssl=ctx,
                                             server_hostname="localhost")
            except OSError:
                st.connect_errors += 1
                continue
            await done

    workers = [asyncio.ensure_future(reconnecting() if args.r else persistent())
               for _ in range(args.c)]
    await asyncio.sleep(args.w)
    print("start", flush=True)
    st.counting = True
    t0 = time.perf_counter()
    await asyncio.sleep(args.d)
    st.counting = False
    window = time.perf_counter() - t0
    print("stop", flush=True)
    stop = True
    for tr in transports:
        tr.close()
    await asyncio.wait(workers, timeout=10)
    for w in workers:
        w.cancel()
    lat = sorted(st.lat) or [0.0]

    def pct(q):
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1e6

    print(json.dumps({
        "conns": args.c, "size": args.size, "duration_s": window, "round_trips": st.rts,
        "round_trips_per_s": st.rts / window, "errors": st.errors,
        "connect_errors": st.connect_errors, "p50_us": pct(0.5), "p99_us": pct(0.99),
        "p999_us": pct(0.999),
    }), flush=True)


def parse(argv):
    p = argparse.ArgumentParser()
    p.add_argument("-p", "--port", type=int, required=True)
    p.add_argument("-c", type=int, default=10)
    p.add_argument("-s", "--size", type=int, default=1024)
    p.add_argument("-d", type=float, default=2.0)
    p.add_argument("-w", type=float, default=0.5)
    p.add_argument("-r", action="store_true")
    p.add_argument("--ca", required=True)
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse(sys.argv[1:])
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(main(args))
