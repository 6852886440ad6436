"""A tiny HTTP/1.1 keep-alive "hello" server on uvpy, driven by a client thread.

The server is written against the loop's lowest layer, the fd-watcher API
(add_reader / add_writer) on non-blocking sockets, so it runs the same way
on every loop and shows the cost of the loop itself.

    python examples/demo_server.py --requests 2000 [--loop uvpy|asyncio|uvloop]
"""

import argparse
import asyncio
import socket
import threading
import time

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nHello, world!"


class HelloServer:
    def __init__(self, loop, host="127.0.0.1", port=0):
        self.loop = loop
        self.listener = socket.create_server((host, port))
        self.listener.setblocking(False)
        self.address = self.listener.getsockname()
        self.served = 0
        loop.add_reader(self.listener, self._accept)

    def _accept(self):
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.loop.add_reader(conn, self._read, conn, bytearray())

    def _read(self, conn, buf):
        try:
            data = conn.recv(65536)
        except BlockingIOError:
            return
        if not data:
            self.loop.remove_reader(conn)
            conn.close()
            return
        buf += data
        while (end := buf.find(b"\r\n\r\n")) >= 0:
            del buf[: end + 4]
            conn.sendall(RESPONSE)  # small response: fits the socket buffer
            self.served += 1

    def close(self):
        self.loop.remove_reader(self.listener)
        self.listener.close()


def client(address, n, result):
    with socket.create_connection(address) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        req = b"GET / HTTP/1.1\r\nHost: demo\r\n\r\n"
        t0 = time.perf_counter()
        for _ in range(n):
            s.sendall(req)
            got = b""
            while len(got) < len(RESPONSE):
                got += s.recv(65536)
            assert got == RESPONSE, got
        result["seconds"] = time.perf_counter() - t0


def make_loop(name):
    if name == "uvpy":
        import uvpy

        return uvpy.new_event_loop()
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.SelectorEventLoop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--loop", default="uvpy", choices=["uvpy", "uvloop", "asyncio"])
    args = ap.parse_args()

    loop = make_loop(args.loop)
    server = HelloServer(loop)
    result = {}

    def run_client():
        try:
            client(server.address, args.requests, result)
        finally:
            loop.call_soon_threadsafe(loop.stop)

    threading.Thread(target=run_client, daemon=True).start()
    loop.run_forever()
    server.close()
    loop.close()
    if "seconds" not in result:
        raise SystemExit("client failed")
    rate = args.requests / result["seconds"]
    print(
        f"{args.loop}: served {server.served} keep-alive requests on {server.address[0]}:{server.address[1]} "
        f"({rate:,.0f} req/s, one blocking client thread: a smoke test, not a benchmark)"
    )


if __name__ == "__main__":
    main()
