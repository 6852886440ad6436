"""User-space instructions per accepted connection, under callgrind.

A server (this file with --serve, run under `valgrind --tool=callgrind`)
accepts N connections on one loop, each a 2-byte echo the client then
closes; the client is this process, outside valgrind, one connection at a
time. The server's instruction total for N2 connections minus the total
for N1, divided by N2 - N1, is what one connection costs the server in
user space: start-up, imports and certificate loading cancel out. Counts
repeat within a few hundred instructions whatever the machine's load,
where timings on the shared 2-core VM do not.

    python bench/accept_callgrind.py --kind tls --loop uvpy
    python bench/accept_callgrind.py --kind unix --loop uvloop --python ../base/.venv/bin/python

Kinds: tcp (create_server at 127.0.0.1), unix (create_unix_server), tls
(create_server with ssl=: a full TLS 1.3 handshake per connection, the
certificate for "localhost" from a trustme CA made here, outside valgrind).
Loops: uvpy, uvpy-uring, uvloop, asyncio. --python runs the server with
another checkout's interpreter (its uvpy), for before/after counts.
"""
import argparse
import asyncio
import os
import socket
import ssl
import subprocess
import sys
import tempfile


def make_loop(name):
    if name == "uvpy":
        import uvpy
        return uvpy.new_event_loop("libuv")
    if name == "uvpy-uring":
        import uvpy
        return uvpy.new_event_loop("io_uring")
    if name == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    return asyncio.SelectorEventLoop()


def serve(args):
    loop = make_loop(args.loop)
    ctx = None
    if args.kind == "tls":
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(os.path.join(args.dir, "cert.pem"))
    done = loop.create_future()
    lost = 0

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

        def connection_lost(self, exc):
            nonlocal lost
            lost += 1
            if lost == args.n and not done.done():
                done.set_result(None)

    async def main():
        if args.kind == "unix":
            path = os.path.join(args.dir, "srv")
            server = await loop.create_unix_server(Echo, path)
            print(path, flush=True)
        else:
            server = await loop.create_server(Echo, "127.0.0.1", 0, ssl=ctx)
            print(server.sockets[0].getsockname()[1], flush=True)
        await done
        server.close()
        await server.wait_closed()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def client(kind, where, n, ca):
    ctx = None
    if kind == "tls":
        ctx = ssl.create_default_context(cafile=ca)
    for _ in range(n):
        if kind == "unix":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(where)
        else:
            s = socket.create_connection(("127.0.0.1", int(where)))
            if ctx is not None:
                s = ctx.wrap_socket(s, server_hostname="localhost")
        s.sendall(b"hi")
        got = b""
        while len(got) < 2:
            chunk = s.recv(2 - len(got))
            if not chunk:
                raise RuntimeError("the server closed before echoing")
            got += chunk
        s.close()


def count(args, n, tmp):
    out = os.path.join(tmp, f"callgrind.{n}")
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", args.python,
           os.path.abspath(__file__), "--serve", "--kind", args.kind, "--loop", args.loop,
           "--n", str(n), "--dir", tmp]
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    where = proc.stdout.readline().strip()
    if not where:
        raise RuntimeError(f"server did not start: {proc.stderr.read()[-2000:]}")
    client(args.kind, where, n, os.path.join(tmp, "ca.pem"))
    _, err = proc.communicate(timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"server exit {proc.returncode}: {err[-2000:]}")
    with open(out) as f:
        for line in f:
            if line.startswith("totals:") or line.startswith("summary:"):
                return int(line.split()[1])
    raise RuntimeError("no totals in " + out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kind", choices=("tcp", "unix", "tls"), default="tcp")
    p.add_argument("--loop", default="uvpy")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--counts", default="100,500", help="N1,N2 connections")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        return serve(args)
    n1, n2 = (int(x) for x in args.counts.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        if args.kind == "tls":
            import trustme
            ca = trustme.CA()
            ca.cert_pem.write_to_path(os.path.join(tmp, "ca.pem"))
            ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(
                os.path.join(tmp, "cert.pem"))
        i1 = count(args, n1, tmp)
        i2 = count(args, n2, tmp)
    per = (i2 - i1) / (n2 - n1)
    print(f"{args.kind} {args.loop} {args.python}: {i1} at {n1}, {i2} at {n2}: "
          f"{per / 1000:.1f}k instructions per connection")


if __name__ == "__main__":
    main()
