"""A line of loop.stats() per second, and the watchdog catching a blocked loop.

An echo server with a few busy clients runs on uvpy; once a second a task
prints what the loop did in that second (iterations, callbacks, the share
of time it was busy, open transports, bytes in and out). Every few seconds
one client's handler blocks the loop with time.sleep(), and the watchdog
logs where.

    python examples/loop_stats.py [--seconds 6] [--block-every 3]
"""

import argparse
import asyncio
import logging
import time

import uvpy


async def echo(reader, writer):
    while data := await reader.read(4096):
        writer.write(data)
        await writer.drain()
    writer.close()


async def client(port, stop):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while not stop.is_set():
        writer.write(b"x" * 512)
        await reader.readexactly(512)
    writer.close()
    await writer.wait_closed()


def blocking_report_generator():
    time.sleep(0.25)  # a synchronous call inside a coroutine: it blocks the loop


async def print_stats(seconds, block_every):
    loop = asyncio.get_running_loop()
    before = loop.stats()
    for second in range(1, seconds + 1):
        await asyncio.sleep(1)
        now = loop.stats()
        d = {k: now[k] - before[k] for k in ("iterations", "callbacks", "poll_ns", "run_ns",
                                             "stream_bytes_in", "stream_bytes_out")}
        busy = d["run_ns"] / max(1, d["run_ns"] + d["poll_ns"])
        print(f"{second:3d}s  {d['iterations']:7d} it/s  {d['callbacks']:7d} cb/s  "
              f"busy {busy:4.0%}  transports {sum(now['transports'].values()):3d}  "
              f"in {d['stream_bytes_in'] / 1e6:6.1f} MB/s  out {d['stream_bytes_out'] / 1e6:6.1f} MB/s",
              flush=True)
        before = now
        if block_every and second % block_every == 0:
            blocking_report_generator()


async def main(seconds, block_every):
    uvpy.watchdog(threshold=0.1)  # reports go to the "uvpy.watchdog" logger
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    clients = [asyncio.create_task(client(port, stop)) for _ in range(4)]
    await print_stats(seconds, block_every)
    stop.set()
    await asyncio.gather(*clients)
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--block-every", type=int, default=3, help="0: never block")
    args = parser.parse_args()
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    uvpy.run(main(args.seconds, args.block_every))
