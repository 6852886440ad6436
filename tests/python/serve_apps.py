"""Coroutine functions that test_serve.py runs under uvpy.serve, each in
worker processes that import this module by name.

The echo server answers one line per connection:
    "pid\\n"    -> "<worker pid>\\n"
    "crash\\n"  -> the worker exits with status 3 at once (os._exit)
    "hold\\n"   -> "held <pid>\\n" now, then "done\\n" after the client's next line
"""

import asyncio
import os
import signal
import socket
import time

import uvpy


async def _handle(reader, writer):
    line = (await reader.readline()).strip()
    if line == b"crash":
        os._exit(3)
    if line == b"block":  # the loop, for longer than any test
        time.sleep(120)
    if line == b"hold":
        writer.write(f"held {os.getpid()}\n".encode())
        await writer.drain()
        await reader.readline()
        writer.write(b"done\n")
    else:
        writer.write(f"{os.getpid()}\n".encode())
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def echo(port=None):
    """On 127.0.0.1:port with reuse_port, or on the inherited sockets."""
    if port is None:
        servers = []
        for s in uvpy.inherited_sockets():
            start = asyncio.start_unix_server if s.family == socket.AF_UNIX else asyncio.start_server
            servers.append(await start(_handle, sock=s))
    else:
        servers = [await asyncio.start_server(_handle, "127.0.0.1", int(port), reuse_port=True)]
    await asyncio.gather(*(s.serve_forever() for s in servers))


async def echo_on_a_copy():
    """echo on a socket.fromfd() copy of the inherited Unix socket (as a
    library handed its fd number makes one), with cleanup_socket on."""
    [inherited] = uvpy.inherited_sockets()
    copy = socket.fromfd(inherited.fileno(), inherited.family, inherited.type)
    server = await asyncio.start_unix_server(_handle, sock=copy, cleanup_socket=True)
    await server.serve_forever()


async def what_a_child_inherits():
    """Print the inherited listeners' fds and those a child started with
    close_fds=False (as os.system's shell) holds, then finish."""
    import subprocess

    mine = sorted(s.fileno() for s in uvpy.inherited_sockets())
    out = subprocess.run(["sh", "-c", "ls /proc/$$/fd"], close_fds=False, capture_output=True,
                         text=True, check=True).stdout  # the shell's fds, not ls's own
    print("listeners", mine, "child", sorted(int(fd) for fd in out.split()), flush=True)


async def aiohttp_app(port):
    """aiohttp's AppRunner and TCPSite(reuse_port=True); POST /echo answers
    with the request's body. A server that main never starts
    (start_serving=False) sits beside it."""
    from aiohttp import web

    async def echo(request):
        return web.Response(body=await request.read())

    app = web.Application()
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(port), reuse_port=True).start()
    idle = await asyncio.get_running_loop().create_server(
        asyncio.Protocol, "127.0.0.1", 0, start_serving=False)
    try:
        await asyncio.Event().wait()
    finally:
        idle.close()
        await runner.cleanup()
        print(f"{os.getpid()} cleaned up", flush=True)


async def tls_echo(port, certfile, keyfile):
    """echo's protocol over TLS, on 127.0.0.1:port with reuse_port."""
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    server = await asyncio.start_server(_handle, "127.0.0.1", int(port), reuse_port=True,
                                        ssl=context)
    await server.serve_forever()


async def crash_when_up(port):
    """Listens (so the worker is up), then dies: a crash loop."""
    await asyncio.start_server(_handle, "127.0.0.1", int(port), reuse_port=True)
    await asyncio.sleep(0.05)
    os._exit(3)


async def crash_at_once_when_up(port):
    """Listens (so the worker says it is up), then dies in the same step."""
    await asyncio.start_server(_handle, "127.0.0.1", int(port), reuse_port=True)
    os._exit(3)


async def ignores_cancellation_once(port):
    """echo on port; cancelled, it goes on as if nothing happened."""
    server = await asyncio.start_server(_handle, "127.0.0.1", int(port), reuse_port=True)
    try:
        await server.serve_forever()
    except asyncio.CancelledError:
        print(f"{os.getpid()} ignores the cancellation", flush=True)
        await asyncio.sleep(3600)


async def own_sigterm(port, how="signal"):
    """Handles SIGTERM itself, with signal.signal as uvicorn.Server does, or
    (how="loop") with loop.add_signal_handler, which replaces the worker's
    own handler; says so when it has stopped."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    if how == "loop":
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    else:
        signal.signal(signal.SIGTERM, lambda *_: loop.call_soon_threadsafe(stop.set))
    server = await asyncio.start_server(_handle, "127.0.0.1", int(port), reuse_port=True)
    await stop.wait()
    server.close()
    await server.wait_closed()
    by = "loop handler" if how == "loop" else "handler"
    print(f"{os.getpid()} stopped by its own {by}", flush=True)


async def fail_unless_first(path):
    """The first worker to make the directory `path` listens on a Unix
    socket inside it (and is up); every other one raises at once."""
    try:
        os.mkdir(path)
    except FileExistsError:
        raise RuntimeError("not the first worker") from None
    server = await asyncio.start_unix_server(_handle, os.path.join(path, "s"))
    await server.serve_forever()


async def echo_unless(path, port):
    """echo on port, or raise at once while the file `path` exists."""
    if os.path.exists(path):
        raise RuntimeError(f"{path} exists")
    await echo(port)


async def echo_or_block(path, port):
    """echo on port, or block the loop (a model loaded with a blocking call)
    far longer than any test while the file `path` exists: never up."""
    if os.path.exists(path):
        time.sleep(120)
    await echo(port)


async def fail_at_start():
    raise RuntimeError("boom before listening")


async def cancels_itself():
    """Cancelled by no stop request: asyncio.run() would raise CancelledError."""
    asyncio.current_task().cancel()
    await asyncio.sleep(1)


async def finish():
    await asyncio.sleep(0)


async def finish_leaving_a_thread(seconds):
    """Listen (so the worker is up), then return, leaving a non-daemon
    thread that the interpreter's exit waits for."""
    import threading

    server = await asyncio.start_server(_handle, "127.0.0.1", 0)
    server.close()
    await server.wait_closed()
    threading.Thread(target=time.sleep, args=(float(seconds),)).start()


async def return_leaving_a_thread(seconds):
    """Return at once, never up (no server, and sooner than UP_AFTER),
    leaving a non-daemon thread that the interpreter's exit waits for."""
    import threading

    threading.Thread(target=time.sleep, args=(float(seconds),)).start()


def not_a_coroutine_function():
    return 42
