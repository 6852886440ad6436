"""uvicorn serving a Starlette app (asgi_app.py), started the way its users
start it, through uvicorn's own command line:

    uvicorn --loop uvpy:new_event_loop --workers 2 --http h11|httptools ...

and, for the oracle, ``--loop asyncio``. The test process is the client
(httpx, aiohttp, websockets), on a loop of the same kind, so both ends of
every connection run on the loop under test. Servers:

* one per HTTP implementation, each with a different websockets
  implementation: h11 + websockets, httptools + websockets-sansio;
* one over TLS (httptools), for https:// and wss://.

Each runs two worker processes behind one listening socket, is started
once per module and loop, and must stop cleanly on SIGTERM: exit status 0
and no traceback or error in its log. /loop tells which loop the
answering worker runs, so a server quietly started on another loop (the
``uvpy.install()`` + ``uvicorn.run()`` trap in README.md) fails the test.
"""

import asyncio
import hashlib
import http.client
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import LOOP_FACTORIES, expected_loop, need_module

httpx = need_module("httpx")
aiohttp = need_module("aiohttp")
need_module("uvicorn")
need_module("starlette")
need_module("httptools")
websockets_client = need_module("websockets.asyncio.client")

HERE = os.path.dirname(os.path.abspath(__file__))
# Requests per client and server: each client sends 2000 per loop, split
# over the two HTTP implementations.
REQUESTS = 1000
START_GUARD = 60  # seconds for a server to answer; a hang guard only

# The loop is a module-scoped parameter here, so that each server starts
# once per loop; conftest's runner and check_loop follow it.
pytestmark = pytest.mark.parametrize("loop_name", list(LOOP_FACTORIES), scope="module")

LOOP_ARG = {"uvpy": "uvpy:new_event_loop", "asyncio": "asyncio"}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def get_json(base, path, ctx=None):
    """A plain blocking GET: what the fixtures use before and after the loop runs."""
    scheme, _, hostport = base.partition("://")
    host, _, port = hostport.rpartition(":")
    if scheme == "https":
        conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=10)
    else:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


class Server:
    """A `python -m uvicorn` process with its log in a file."""

    def __init__(self, tmp_path, loop_name, extra, scheme="http", client_ctx=None):
        self.port = free_port()
        self.base = f"{scheme}://127.0.0.1:{self.port}"
        self.client_ctx = client_ctx
        self.log_path = tmp_path / f"uvicorn-{loop_name}-{self.port}.log"
        cmd = [sys.executable, "-m", "uvicorn", "asgi_app:app", "--app-dir", HERE,
               "--host", "127.0.0.1", "--port", str(self.port), "--loop", LOOP_ARG[loop_name],
               "--no-access-log", *extra]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_GUARD
        while True:
            try:
                status, self.info = get_json(self.base, "/loop", client_ctx)
                if status == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"uvicorn did not start: {' '.join(cmd)}\n{self.log()}")
            time.sleep(0.1)

    def log(self):
        return self.log_path.read_text(errors="replace")

    def workers(self):
        """The pids of the worker processes: the supervisor's children that
        multiprocessing spawned (not its resource tracker)."""
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            children = [int(p) for p in f.read().split()]
        workers = set()
        for pid in children:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"spawn_main" in f.read():
                        workers.add(pid)
            except FileNotFoundError:
                pass
        return workers

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return "killed after 30 s"

    def stop_cleanly(self):
        """SIGTERM with connections still open: one idle after a keep-alive
        response, one that never sent a request. uvicorn closes both at
        shutdown (the client sees EOF; over TLS, after close_notify, which
        the server waits for the client to answer, here by closing), and
        must exit 0 with nothing bad in its log."""
        idle = []
        for send in (True, False):
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            if self.client_ctx is not None:
                sock = self.client_ctx.wrap_socket(sock, server_hostname="127.0.0.1")
            if send:
                sock.sendall(b"GET /n/7 HTTP/1.1\r\nHost: x\r\n\r\n")
                response = b""
                while not response.endswith(b"}"):  # the JSON body ends the response
                    chunk = sock.recv(4096)
                    assert chunk, response
                    response += chunk
                assert response.startswith(b"HTTP/1.1 200") and response.endswith(b'{"n":7,"square":49}')
            idle.append(sock)
        self.proc.send_signal(signal.SIGTERM)
        for sock in idle:
            try:
                assert sock.recv(4096) == b""  # closed by the server, with nothing more sent
            except ConnectionResetError:
                pass  # closed too
            finally:
                sock.close()
        rc = self.stop()
        log = self.log()
        assert rc == 0, f"uvicorn exited with {rc}:\n{log}"
        for bad in ("Traceback", "ERROR", "Exception in"):
            assert bad not in log, log


@pytest.fixture(scope="module", params=["h11+websockets", "httptools+websockets-sansio"])
def server(request, loop_name, tmp_path_factory):
    http_impl, ws_impl = request.param.split("+")
    srv = Server(tmp_path_factory.mktemp("uvicorn"), loop_name,
                 ["--workers", "2", "--http", http_impl, "--ws", ws_impl])
    yield srv
    srv.stop_cleanly()


@pytest.fixture(scope="module")
def tls_server(loop_name, tmp_path_factory, ca, client_ctx):
    tmp = tmp_path_factory.mktemp("uvicorn-tls")
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp / "cert.pem"))
    srv = Server(tmp, loop_name, ["--workers", "2", "--http", "httptools", "--ws", "websockets",
                                  "--ssl-keyfile", str(tmp / "key.pem"), "--ssl-certfile", str(tmp / "cert.pem")],
                 scheme="https", client_ctx=client_ctx)
    yield srv
    srv.stop_cleanly()


def plan(n):
    """The request mix both clients send: (method, path, body, close)."""
    out = []
    for i in range(n):
        if i % 200 == 0:
            out.append(("GET", f"/blob/{(1 << 20) + i}", None, False))
        elif i % 50 == 0:
            out.append(("POST", "/digest", os.urandom(65536 + i), False))
        else:
            out.append(("GET", f"/n/{i}", None, i % 20 == 1))  # every 20th on a fresh connection
    return out


def expect(method, path, body):
    if method == "POST":
        return {"len": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    if path.startswith("/blob/"):
        n = int(path.rsplit("/", 1)[1])
        return hashlib.sha256(bytes(range(256)) * (n // 256) + bytes(range(n % 256))).hexdigest()
    n = int(path.rsplit("/", 1)[1])
    return {"n": n, "square": n * n}


def check_loop_info(server, loop_name, info):
    name, backend = expected_loop(loop_name)
    assert (info["loop"], info["backend"]) == (name, backend), info
    assert info["pid"] in server.workers()


def test_workers_run_the_given_loop(server, loop_name):
    seen = set()
    for _ in range(20):  # fresh connections: either worker may answer
        status, info = get_json(server.base, "/loop")
        assert status == 200
        check_loop_info(server, loop_name, info)
        seen.add(info["pid"])
    assert len(server.workers()) == 2 and seen <= server.workers()


def test_requests_through_httpx(server, runner, check_loop):
    requests = plan(REQUESTS)

    async def main():
        check_loop(asyncio.get_running_loop())
        # At most 32 requests in flight: httpcore's pool rescans every queued
        # request at each hand-off, so 1000 queued at once cost it O(n^2).
        limit = asyncio.Semaphore(32)
        async with httpx.AsyncClient(base_url=server.base, limits=httpx.Limits(max_connections=32)) as client:

            async def one(method, path, body, close):
                headers = {"Connection": "close"} if close else None
                async with limit:
                    r = await client.request(method, path, content=body, headers=headers)
                assert r.status_code == 200
                return hashlib.sha256(r.content).hexdigest() if path.startswith("/blob/") else r.json()

            return await asyncio.gather(*(one(*req) for req in requests))

    got = runner.run(main())
    assert got == [expect(m, p, b) for m, p, b, _ in requests]


def test_requests_through_aiohttp(server, runner):
    requests = plan(REQUESTS)

    async def main():
        connector = aiohttp.TCPConnector(limit=32)
        async with aiohttp.ClientSession(server.base, connector=connector) as session:

            async def one(method, path, body, close):
                headers = {"Connection": "close"} if close else None
                async with session.request(method, path, data=body, headers=headers) as r:
                    assert r.status == 200
                    if path.startswith("/blob/"):
                        return hashlib.sha256(await r.read()).hexdigest()
                    return await r.json()

            return await asyncio.gather(*(one(*req) for req in requests))

    got = runner.run(main())
    assert got == [expect(m, p, b) for m, p, b, _ in requests]


async def websocket_session(uri, ssl_ctx=None):
    texts = [f"message {i} " * (i % 9) for i in range(300)]
    blobs = [os.urandom(n) for n in (1, 125, 126, 65535, 65536, 1 << 20)]
    async with websockets_client.connect(uri, ssl=ssl_ctx, max_size=None) as ws:
        for t in texts:
            await ws.send(t)
        assert [await ws.recv() for _ in texts] == [t[::-1] for t in texts]
        for b in blobs:
            await ws.send(b)
            assert await ws.recv() == hashlib.sha256(b).digest()
    assert ws.close_code == 1000


def test_websockets(server, runner):
    async def main():
        await asyncio.gather(*(websocket_session(f"ws://127.0.0.1:{server.port}/ws") for _ in range(8)))

    runner.run(main())


def test_https(tls_server, runner, loop_name, client_ctx):
    requests = plan(400)

    async def main():
        async with httpx.AsyncClient(base_url=tls_server.base, verify=client_ctx) as client:
            r = await client.get("/loop")
            check_loop_info(tls_server, loop_name, r.json())

            async def via_httpx(method, path, body, close):
                r = await client.request(method, path, content=body, headers={"Connection": "close"} if close else None)
                assert r.status_code == 200
                return hashlib.sha256(r.content).hexdigest() if path.startswith("/blob/") else r.json()

            by_httpx = await asyncio.gather(*(via_httpx(*req) for req in requests))
        async with aiohttp.ClientSession(tls_server.base) as session:

            async def via_aiohttp(method, path, body, close):
                async with session.request(method, path, data=body, ssl=client_ctx) as r:
                    assert r.status == 200
                    return hashlib.sha256(await r.read()).hexdigest() if path.startswith("/blob/") else await r.json()

            by_aiohttp = await asyncio.gather(*(via_aiohttp(*req) for req in requests))
        return by_httpx, by_aiohttp

    by_httpx, by_aiohttp = runner.run(main())
    want = [expect(m, p, b) for m, p, b, _ in requests]
    assert by_httpx == want and by_aiohttp == want


def test_wss(tls_server, runner, client_ctx):
    async def main():
        uri = f"wss://localhost:{tls_server.port}/ws"
        await asyncio.gather(*(websocket_session(uri, client_ctx) for _ in range(4)))

    runner.run(main())


def test_uvicorn_run_loop_none_keeps_the_installed_policy(loop_name, tmp_path):
    """uvicorn.run(loop="none") runs on whatever asyncio.new_event_loop()
    makes: uvpy after uvpy.install(). loop="auto" (the default) picks
    uvloop when it is installed, whatever the policy says: the caveat in
    README.md, checked here so that the README stays true."""
    script = (
        "import sys, uvicorn, uvpy\n"
        "if sys.argv[1] == 'uvpy': uvpy.install()\n"
        f"uvicorn.run('asgi_app:app', app_dir={HERE!r}, host='127.0.0.1', port=int(sys.argv[2]),"
        " loop=sys.argv[3], log_level='warning')\n"
    )
    loops = {"none": expected_loop(loop_name)}
    if importlib.util.find_spec("uvloop") is not None:
        loops["auto"] = ("Loop", None)  # uvloop.Loop, checked by module below
    for loop_arg, want in loops.items():
        port = free_port()
        log_path = tmp_path / f"run-{loop_arg}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-c", script, loop_name, str(port), loop_arg],
                                    stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + START_GUARD
            while True:
                try:
                    status, info = get_json(f"http://127.0.0.1:{port}", "/loop")
                    break
                except OSError:
                    assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                    time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
        # A single uvicorn process re-raises the SIGTERM it handled once it has
        # shut down (so dies "by" it); the log says whether shutdown was clean.
        log = log_path.read_text()
        assert status == 200 and rc == -signal.SIGTERM and "Traceback" not in log, log
        assert (info["loop"], info["backend"]) == want, (loop_arg, info)
        if loop_arg == "auto":
            assert info["module"].startswith("uvloop")
