"""aiohttp's server and client on one loop: HTTP, HTTPS, websockets, and a
64 MiB FileResponse (served with loop.sendfile where the transport allows
it, that is over plain TCP; over TLS aiohttp falls back to writes).

Server and client share the test's loop, so every byte crosses the loop
twice. Each test checks what arrived (status, body, digest), not only that
nothing raised.
"""

import asyncio
import hashlib
import os

import pytest

from conftest import need_module

aiohttp = need_module("aiohttp")
from aiohttp import web  # noqa: E402

BIG = 64 << 20


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    """64 MiB of random bytes and their sha256."""
    path = tmp_path_factory.mktemp("aiohttp") / "big.bin"
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(BIG >> 20):
            chunk = os.urandom(1 << 20)
            digest.update(chunk)
            f.write(chunk)
    return path, digest.hexdigest()


def make_app(big_path, sendfile_calls):
    async def hello(request):
        return web.json_response({"n": int(request.query["n"])})

    async def digest(request):
        body = await request.read()
        return web.json_response({"len": len(body), "sha256": hashlib.sha256(body).hexdigest()})

    async def big(request):
        return web.FileResponse(big_path, chunk_size=1 << 20)

    async def ws(request):
        sock = web.WebSocketResponse(max_msg_size=8 << 20)
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await sock.send_str(msg.data[::-1])
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await sock.send_bytes(hashlib.sha256(msg.data).digest())
        return sock

    async def count_sendfile(app):
        loop = asyncio.get_running_loop()
        real = loop.sendfile

        async def sendfile(transport, file, offset=0, count=None, **kw):
            sendfile_calls.append((offset, count))
            return await real(transport, file, offset, count, **kw)

        loop.sendfile = sendfile
        yield
        del loop.sendfile

    app = web.Application(client_max_size=32 << 20)
    app.router.add_get("/hello", hello)
    app.router.add_post("/digest", digest)
    app.router.add_get("/big", big)
    app.router.add_get("/ws", ws)
    app.cleanup_ctx.append(count_sendfile)
    return app


async def serve(app, ssl_context=None):
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, port


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_requests_and_bodies(runner, scheme, server_ctx, client_ctx, check_loop):
    async def main():
        check_loop(asyncio.get_running_loop())
        server, port = await serve(make_app(None, []), server_ctx if scheme == "https" else None)
        base = f"{scheme}://127.0.0.1:{port}"
        ssl = client_ctx if scheme == "https" else True
        bodies = [os.urandom(n) for n in (0, 1, 1000, 65536, 1 << 20, 5 << 20)]
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=20, ssl=ssl)) as session:

                async def get(i):
                    async with session.get(f"{base}/hello", params={"n": i}) as r:
                        assert r.status == 200
                        return (await r.json())["n"]

                async def post(body):
                    async with session.post(f"{base}/digest", data=body) as r:
                        assert r.status == 200
                        return await r.json()

                assert await asyncio.gather(*(get(i) for i in range(300))) == list(range(300))
                got = await asyncio.gather(*(post(b) for b in bodies))
                assert got == [{"len": len(b), "sha256": hashlib.sha256(b).hexdigest()} for b in bodies]
                async with session.get(f"{base}/missing") as r:
                    assert r.status == 404
        finally:
            await server.cleanup()

    runner.run(main())


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_websockets(runner, scheme, server_ctx, client_ctx):
    async def main():
        server, port = await serve(make_app(None, []), server_ctx if scheme == "wss" else None)
        texts = [f"message {i} " * (i % 7) for i in range(200)]
        blobs = [os.urandom(n) for n in (1, 125, 126, 65535, 65536, 4 << 20)]
        try:
            async with aiohttp.ClientSession() as session:
                ssl = client_ctx if scheme == "wss" else True
                async with session.ws_connect(f"{scheme}://127.0.0.1:{port}/ws", ssl=ssl) as ws:
                    for t in texts:
                        await ws.send_str(t)
                    assert [await ws.receive_str() for _ in texts] == [t[::-1] for t in texts]
                    for b in blobs:
                        await ws.send_bytes(b)
                        assert await ws.receive_bytes() == hashlib.sha256(b).digest()
                    await ws.close()
                assert ws.closed and ws.close_code == aiohttp.WSCloseCode.OK
        finally:
            await server.cleanup()

    runner.run(main())


def test_file_response_64mib_uses_sendfile(runner, big_file):
    path, digest = big_file
    calls = []

    async def main():
        server, port = await serve(make_app(path, calls))
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/big") as r:
                    assert r.status == 200
                    assert r.content_length == BIG
                    h = hashlib.sha256()
                    n = 0
                    async for chunk in r.content.iter_chunked(1 << 20):
                        h.update(chunk)
                        n += len(chunk)
                    assert (n, h.hexdigest()) == (BIG, digest)
                # A range: sendfile from an offset.
                start, end = 12345, 12345 + (3 << 20)
                headers = {"Range": f"bytes={start}-{end - 1}"}
                async with session.get(f"http://127.0.0.1:{port}/big", headers=headers) as r:
                    assert r.status == 206
                    part = await r.read()
                with open(path, "rb") as f:
                    f.seek(start)
                    assert part == f.read(end - start)
        finally:
            await server.cleanup()

    runner.run(main())
    assert calls == [(0, BIG), (12345, 3 << 20)]


def test_file_response_over_tls(runner, big_file, server_ctx, client_ctx):
    path, digest = big_file
    calls = []

    async def main():
        server, port = await serve(make_app(path, calls), server_ctx)
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"https://127.0.0.1:{port}/big", ssl=client_ctx) as r:
                    assert r.status == 200
                    h = hashlib.sha256()
                    async for chunk in r.content.iter_chunked(1 << 20):
                        h.update(chunk)
                    assert h.hexdigest() == digest
        finally:
            await server.cleanup()

    runner.run(main())
    assert calls == [(0, BIG)]  # asyncio's sendfile falls back to writes over TLS, on both loops


def test_client_leaving_mid_download(runner, big_file, caplog):
    """A client that drops the connection 2 MiB into the 64 MiB sendfile:
    the server's transfer ends quietly (no error logged, nothing reaches
    the loop's exception handler) and the server goes on serving."""
    path, digest = big_file
    calls = []

    async def main():
        server, port = await serve(make_app(path, calls))
        try:
            async with aiohttp.ClientSession() as session:
                for _ in range(3):
                    r = await session.get(f"http://127.0.0.1:{port}/big")
                    assert len(await r.content.readexactly(2 << 20)) == 2 << 20
                    r.close()  # drops the connection
                async with session.get(f"http://127.0.0.1:{port}/hello", params={"n": 5}) as r:
                    assert (await r.json()) == {"n": 5}
                async with session.get(f"http://127.0.0.1:{port}/big") as r:
                    h = hashlib.sha256()
                    async for chunk in r.content.iter_chunked(1 << 20):
                        h.update(chunk)
                    assert h.hexdigest() == digest
        finally:
            await server.cleanup()

    with caplog.at_level("WARNING"):
        runner.run(main())
    assert [r.getMessage() for r in caplog.records if r.levelno >= 30] == []
    assert calls == [(0, BIG)] * 4
