"""Unix stream sockets: create_unix_server, create_unix_connection and the
asyncio streams API over them, plain and with TLS (ssl=, start_tls), on
both loops.

Paths are str, bytes and os.PathLike, plus Linux abstract names; bad input
must raise what the stock loop raises and leak no fd and no socket file.
TLS certificates come from conftest's trustme fixtures; a handshake that
fails must close its socket as asyncio's does.
"""

import asyncio
import errno
import itertools
import os
import pathlib
import socket
import ssl
import subprocess
import sys
import time
import warnings

import pytest

from conftest import active_connections, collect, open_fds, raise_nofile, until

_abstract_ids = itertools.count()


def run(loop, coro):
    return loop.run_until_complete(coro)


def fds_after_warmup(loop):
    # A loop's first run makes its own fds (the signal wakeup pair).
    run(loop, asyncio.sleep(0))
    return open_fds()


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        self.transport.close()


class Client(asyncio.Protocol):
    def __init__(self, loop):
        self.data = bytearray()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.data += data

    def connection_lost(self, exc):
        self.lost.set_result(exc)


async def echo_round(loop, path, payload=b"ping" * 1000):
    transport, client = await loop.create_unix_connection(lambda: Client(loop), path)
    transport.write(payload)
    transport.write_eof()
    assert await asyncio.wait_for(client.lost, 10) is None
    assert bytes(client.data) == payload
    return transport


@pytest.mark.parametrize("kind", ["str", "bytes", "pathlike"])
def test_echo_over_each_path_type(loop, tmp_path, kind):
    path = {"str": str(tmp_path / "s"), "bytes": os.fsencode(tmp_path / "s"),
            "pathlike": pathlib.Path(tmp_path / "s")}[kind]

    async def main():
        server = await loop.create_unix_server(Echo, path)
        assert server.is_serving()
        (sockname,) = [s.getsockname() for s in server.sockets]
        assert sockname == str(tmp_path / "s")
        transport = await echo_round(loop, path)
        assert isinstance(transport, asyncio.Transport)
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_extra_info_matches_socket_calls(loop, tmp_path):
    path = str(tmp_path / "s")
    accepted = []

    class Server(Echo):
        def connection_made(self, transport):
            super().connection_made(transport)
            accepted.append(transport)

    async def main():
        server = await loop.create_unix_server(Server, path)
        transport, client = await loop.create_unix_connection(lambda: Client(loop), path)
        while not accepted:
            await asyncio.sleep(0)
        # The client is unnamed: the server sees "" as its peer.
        assert transport.get_extra_info("peername") == path
        assert transport.get_extra_info("sockname") == ""
        assert accepted[0].get_extra_info("peername") == ""
        assert accepted[0].get_extra_info("sockname") == path
        sock = transport.get_extra_info("socket")
        assert sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM
        transport.close()
        await client.lost
        server.close()
        await server.wait_closed()

    run(loop, main())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract names are Linux's")
def test_abstract_name_leaves_no_file(loop, tmp_path):
    name = f"\0uvpy-test-{os.getpid()}-{next(_abstract_ids)}"

    async def main():
        server = await loop.create_unix_server(Echo, name)
        await echo_round(loop, name)
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert os.listdir(tmp_path) == []


def test_stale_socket_file_is_replaced(loop, tmp_path):
    path = str(tmp_path / "s")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays behind
    assert os.path.exists(path)

    async def main():
        server = await loop.create_unix_server(Echo, path)
        await echo_round(loop, path)
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_path_that_is_not_a_socket_is_left_alone(loop, tmp_path):
    path = tmp_path / "file"
    path.write_bytes(b"keep me")
    before = fds_after_warmup(loop)
    with pytest.raises(OSError) as info:
        run(loop, loop.create_unix_server(Echo, str(path)))
    assert info.value.errno == errno.EADDRINUSE
    assert str(info.value) == f"[Errno {errno.EADDRINUSE}] Address {str(path)!r} is already in use"
    assert path.read_bytes() == b"keep me"
    assert open_fds() == before


def test_listening_twice_on_one_path_replaces_the_first(loop, tmp_path):
    # asyncio removes whatever socket file is there, even a live one.
    path = str(tmp_path / "s")

    async def main():
        first = await loop.create_unix_server(Echo, path)
        second = await loop.create_unix_server(Echo, path)
        await echo_round(loop, path)
        for server in (first, second):
            server.close()
            await server.wait_closed()

    run(loop, main())


def test_path_too_long(loop):
    path = "/tmp/" + "x" * 200
    before = fds_after_warmup(loop)
    with pytest.raises(OSError):
        run(loop, loop.create_unix_server(Echo, path))
    with pytest.raises(OSError):
        run(loop, loop.create_unix_connection(asyncio.Protocol, path))
    assert open_fds() == before


def test_connect_errors(loop, tmp_path):
    missing = str(tmp_path / "missing")
    dead = str(tmp_path / "dead")
    s = socket.socket(socket.AF_UNIX)
    s.bind(dead)
    s.close()
    before = fds_after_warmup(loop)
    with pytest.raises(FileNotFoundError):
        run(loop, loop.create_unix_connection(asyncio.Protocol, missing))
    with pytest.raises(ConnectionRefusedError):
        run(loop, loop.create_unix_connection(asyncio.Protocol, dead))
    assert open_fds() == before


def test_argument_checks(loop, tmp_path):
    path = str(tmp_path / "s")
    tcp = socket.socket()
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    unix = socket.socket(socket.AF_UNIX)
    try:
        cases = [
            (loop.create_unix_server(Echo), ValueError,
             "path was not specified, and no sock specified"),
            (loop.create_unix_server(Echo, path, sock=unix), ValueError,
             "path and sock can not be specified at the same time"),
            (loop.create_unix_server(Echo, sock=tcp), ValueError,
             f"A UNIX Domain Stream Socket was expected, got {tcp!r}"),
            (loop.create_unix_server(Echo, sock=dgram), ValueError,
             f"A UNIX Domain Stream Socket was expected, got {dgram!r}"),
            (loop.create_unix_server(Echo, path, ssl=True), TypeError,
             "ssl argument must be an SSLContext or None"),
            (loop.create_unix_server(Echo, path, ssl_handshake_timeout=1), ValueError,
             "ssl_handshake_timeout is only meaningful with ssl"),
            (loop.create_unix_server(Echo, path, ssl_shutdown_timeout=1), ValueError,
             "ssl_shutdown_timeout is only meaningful with ssl"),
            (loop.create_unix_connection(Echo), ValueError, "no path and sock were specified"),
            (loop.create_unix_connection(Echo, path, sock=unix), ValueError,
             "path and sock can not be specified at the same time"),
            (loop.create_unix_connection(Echo, sock=tcp), ValueError,
             f"A UNIX Domain Stream Socket was expected, got {tcp!r}"),
            (loop.create_unix_connection(Echo, path, server_hostname="h"), ValueError,
             "server_hostname is only meaningful with ssl"),
            (loop.create_unix_connection(Echo, path, ssl_handshake_timeout=1), ValueError,
             "ssl_handshake_timeout is only meaningful with ssl"),
            (loop.create_unix_connection(Echo, path, ssl_shutdown_timeout=1), ValueError,
             "ssl_shutdown_timeout is only meaningful with ssl"),
            (loop.create_unix_connection(Echo, path, ssl=True), ValueError,
             "you have to pass server_hostname when using ssl"),
        ]
        for coro, exc_type, message in cases:
            with pytest.raises(exc_type) as info:
                run(loop, coro)
            assert str(info.value) == message
        assert not os.path.exists(path)
    finally:
        for s in (tcp, dgram, unix):
            s.close()


def test_sock_listener_and_sock_connection(loop, tmp_path):
    path = str(tmp_path / "s")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)

    async def main():
        server = await loop.create_unix_server(Echo, sock=listener)
        c = socket.socket(socket.AF_UNIX)
        c.connect(path)
        transport, client = await loop.create_unix_connection(lambda: Client(loop), sock=c)
        transport.write(b"via sock")
        transport.write_eof()
        await asyncio.wait_for(client.lost, 10)
        assert client.data == b"via sock"
        server.close()
        await server.wait_closed()

    run(loop, main())


@pytest.mark.skipif(sys.version_info < (3, 13), reason="cleanup_socket is Python 3.13's")
def test_cleanup_socket_removes_only_its_own_file(loop, tmp_path):
    path = str(tmp_path / "s")

    async def main():
        server = await loop.create_unix_server(Echo, path)
        server.close()
        await server.wait_closed()
        assert not os.path.exists(path)
        kept = await loop.create_unix_server(Echo, path, cleanup_socket=False)
        kept.close()
        await kept.wait_closed()
        assert os.path.exists(path)
        # A newer listener took the path over: the older one leaves it.
        old = await loop.create_unix_server(Echo, path)
        new = await loop.create_unix_server(Echo, path)
        old.close()
        await old.wait_closed()
        assert os.path.exists(path)
        await echo_round(loop, path)
        new.close()
        await new.wait_closed()
        assert not os.path.exists(path)

    run(loop, main())


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="before 3.13 the file stays")
def test_socket_file_stays_after_close_before_3_13(loop, tmp_path):
    path = str(tmp_path / "s")

    async def main():
        server = await loop.create_unix_server(Echo, path)
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert os.path.exists(path)


def test_streams_api(loop, tmp_path):
    path = str(tmp_path / "s")

    async def handle(reader, writer):
        line = await reader.readline()
        writer.write(line.upper())
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_unix_server(handle, path)
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"hello unix\n")
        assert await reader.read() == b"HELLO UNIX\n"
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_fds_stay_flat_over_many_rounds(loop, tmp_path):
    path = str(tmp_path / "s")
    missing = str(tmp_path / "missing")

    async def main():
        server = await loop.create_unix_server(Echo, path)
        for _ in range(20):  # warm up lazily made objects
            await echo_round(loop, path, b"x")
        collect()
        before = open_fds()
        for _ in range(500):
            await echo_round(loop, path, b"x")
            with pytest.raises(FileNotFoundError):
                await loop.create_unix_connection(asyncio.Protocol, missing)
        collect()
        assert open_fds() == before
        server.close()
        await server.wait_closed()

    run(loop, main())


SOAK_CONNS = 10_000

# The client side of the soak, in its own process (its own fd table, so the
# test process holds only the server's 10,000 ends): connects one blocking
# socket at a time, sends its 8-byte number and reads the echo, keeps every
# socket open until stdin closes, then closes them all.
SOAK_CLIENT = """
import resource, socket, sys
path, n = sys.argv[1], int(sys.argv[2])
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
socks = []
for i in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(path)
    msg = b"%08d" % i
    s.sendall(msg)
    got = b""
    while len(got) < len(msg):
        chunk = s.recv(len(msg) - len(got))
        if not chunk:
            sys.exit(f"connection {i}: end of stream before the echo")
        got += chunk
    if got != msg:
        sys.exit(f"connection {i}: echo {got!r}, sent {msg!r}")
    socks.append(s)
sys.stdin.read()
for s in socks:
    s.close()
"""


class SoakEcho(asyncio.Protocol):
    """Echoes; counts the connections made, the bytes echoed and the losses."""

    def __init__(self, stats):
        self.stats = stats

    def connection_made(self, transport):
        self.transport = transport
        self.stats["made"] += 1

    def data_received(self, data):
        self.stats["bytes"] += len(data)
        self.transport.write(data)

    def connection_lost(self, exc):
        self.stats["lost"] += 1


async def until_client(pred, proc, what, timeout=60):
    deadline = time.monotonic() + timeout
    while not pred():
        assert proc.poll() in (None, 0), f"the client exited {proc.returncode} while {what}"
        assert time.monotonic() < deadline, f"timed out while {what}"
        await asyncio.sleep(0.005)


@pytest.mark.soak
def test_ten_thousand_connections_then_all_closed(loop, tmp_path):
    """10,000 connections held open at once against one server, each echoing
    8 bytes; after the client closes them all, every server end is lost, no
    fd is left over and the server still serves."""
    restore = raise_nofile(SOAK_CONNS + 200)
    path = str(tmp_path / "s")
    stats = {"made": 0, "bytes": 0, "lost": 0}

    async def main():
        server = await loop.create_unix_server(lambda: SoakEcho(stats), path, backlog=1024)
        await echo_round(loop, path, b"x")  # warm up lazily made objects
        collect()
        before = open_fds()
        stats.update(made=0, bytes=0, lost=0)
        proc = subprocess.Popen([sys.executable, "-c", SOAK_CLIENT, path, str(SOAK_CONNS)],
                                stdin=subprocess.PIPE)
        try:
            await until_client(lambda: stats["bytes"] == 8 * SOAK_CONNS, proc, "connecting")
            assert stats["made"] == SOAK_CONNS and stats["lost"] == 0
            assert open_fds() >= before + SOAK_CONNS
            proc.stdin.close()
            await until_client(lambda: stats["lost"] == SOAK_CONNS, proc, "closing")
        finally:
            if proc.stdin and not proc.stdin.closed:
                proc.stdin.close()
            proc.wait(30)
        assert proc.returncode == 0
        collect()
        assert open_fds() == before
        for _ in range(3):  # still serving
            await echo_round(loop, path)
        server.close()
        await server.wait_closed()

    try:
        run(loop, main())
    finally:
        restore()


# -- TLS (ssl= and start_tls) ------------------------------------------------------------

GUARD = 30  # seconds; a hang guard only, never an expectation

_on_linux = pytest.mark.skipif(not sys.platform.startswith("linux"),
                               reason="abstract names are Linux's")
ADDRESS_KINDS = ["path", pytest.param("abstract", marks=_on_linux)]


def run_guarded(loop, coro):
    return loop.run_until_complete(asyncio.wait_for(coro, GUARD))


def address_of(kind, tmp_path):
    if kind == "path":
        return str(tmp_path / "s")
    return f"\0uvpy-test-{os.getpid()}-{next(_abstract_ids)}"


def settle(loop):
    """Let close callbacks run, then collect, so fds can be counted."""
    for _ in range(6):
        run(loop, asyncio.sleep(0))
    collect()


@pytest.mark.parametrize("kind", ADDRESS_KINDS)
def test_tls_echo(loop, tmp_path, server_ctx, client_ctx, kind):
    address = address_of(kind, tmp_path)
    payload = bytes(range(256)) * 400  # 100 KiB: many records

    async def main():
        server = await loop.create_unix_server(Echo, address, ssl=server_ctx)
        transport, client = await loop.create_unix_connection(
            lambda: Client(loop), address, ssl=client_ctx, server_hostname="localhost")
        assert isinstance(transport.get_extra_info("ssl_object"), ssl.SSLObject)
        transport.write(payload)
        await until(lambda: len(client.data) >= len(payload))
        assert bytes(client.data) == payload
        transport.close()
        assert await client.lost is None
        server.close()
        await server.wait_closed()

    run_guarded(loop, main())
    if kind == "abstract":
        assert os.listdir(tmp_path) == []


def test_tls_streams_with_an_empty_server_hostname(loop, tmp_path, ca, server_ctx):
    # server_hostname="" is allowed: the chain is verified, the name is not.
    path = str(tmp_path / "s")
    cctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(cctx)
    cctx.check_hostname = False

    async def handle(reader, writer):
        writer.write((await reader.readline()).upper())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_unix_server(handle, path, ssl=server_ctx,
                                                 ssl_handshake_timeout=10,
                                                 ssl_shutdown_timeout=10)
        reader, writer = await asyncio.open_unix_connection(path, ssl=cctx, server_hostname="")
        assert writer.get_extra_info("ssl_object").server_hostname is None
        writer.write(b"hello tls over unix\n")
        assert await reader.readline() == b"HELLO TLS OVER UNIX\n"
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run_guarded(loop, main())


def _tls_extra_info(loop, address, server_ctx, client_ctx):
    """What get_extra_info says on both ends of a TLS connection at address."""

    async def main():
        accepted = loop.create_future()

        class Server(Echo):
            def connection_made(self, transport):
                super().connection_made(transport)
                accepted.set_result(transport)

        server = await loop.create_unix_server(Server, address, ssl=server_ctx)
        transport, client = await loop.create_unix_connection(
            lambda: Client(loop), address, ssl=client_ctx, server_hostname="localhost")
        info = {}
        for side, tr, ctx in (("client", transport, client_ctx),
                              ("server", await accepted, server_ctx)):
            info[side] = {name: tr.get_extra_info(name)
                          for name in ("peername", "sockname", "peercert", "cipher")}
            info[side]["sslcontext is ours"] = tr.get_extra_info("sslcontext") is ctx
            sock = tr.get_extra_info("socket")
            info[side]["socket"] = (sock.family, sock.type)
        transport.close()
        await client.lost
        server.close()
        await server.wait_closed()
        return info

    return run_guarded(loop, main())


@pytest.mark.parametrize("kind", ADDRESS_KINDS)
def test_tls_extra_info_equals_the_stock_loops(new_loop, tmp_path, server_ctx, client_ctx,
                                               kind):
    address = address_of(kind, tmp_path)
    info = _tls_extra_info(new_loop(), address, server_ctx, client_ctx)
    stock = asyncio.SelectorEventLoop()
    try:
        assert info == _tls_extra_info(stock, address, server_ctx, client_ctx)
    finally:
        stock.close()
    # The client sees the listener's name (bytes for an abstract one);
    # the server sees the unnamed client as "".
    assert info["client"]["peername"] == (address if kind == "path" else address.encode())
    assert info["server"]["peername"] == ""
    assert info["client"]["peercert"]["subjectAltName"] == (("DNS", "localhost"),
                                                            ("IP Address", "127.0.0.1"))
    assert info["server"]["peercert"] is None  # no client certificate asked for
    assert info["client"]["sslcontext is ours"] and info["server"]["sslcontext is ours"]
    assert info["client"]["socket"] == (socket.AF_UNIX, socket.SOCK_STREAM)


def test_start_tls_on_a_unix_connection(loop, tmp_path, server_ctx, client_ctx):
    path = str(tmp_path / "s")

    async def handle(reader, writer):
        assert await reader.readline() == b"STARTTLS\n"
        writer.write(b"GO\n")
        await writer.start_tls(server_ctx)
        assert writer.get_extra_info("sslcontext") is server_ctx
        assert writer.get_extra_info("peername") == ""
        writer.write((await reader.readline()).upper())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_unix_server(handle, path)
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"STARTTLS\n")
        assert await reader.readline() == b"GO\n"
        await writer.start_tls(client_ctx, server_hostname="localhost")
        assert writer.get_extra_info("peercert")["subjectAltName"][0] == ("DNS", "localhost")
        assert writer.get_extra_info("peername") == path
        writer.write(b"secret\n")
        assert await reader.readline() == b"SECRET\n"
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run_guarded(loop, main())


def test_tls_argument_checks_touch_nothing(loop, tmp_path, server_ctx, client_ctx):
    path = str(tmp_path / "s")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    before = fds_after_warmup(loop)
    try:
        with pytest.raises(ValueError) as info:
            run(loop, loop.create_unix_connection(Echo, path, ssl=client_ctx))
        assert str(info.value) == "you have to pass server_hostname when using ssl"
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # no connection was attempted
        other = str(tmp_path / "other")
        for bad in (True, False):
            with pytest.raises(TypeError) as info:
                run(loop, loop.create_unix_server(Echo, other, ssl=bad))
            assert str(info.value) == "ssl argument must be an SSLContext or None"
        assert not os.path.exists(other)
        assert open_fds() == before
    finally:
        listener.close()


def _no_resource_warnings(loop, fn):
    """Run fn, settle, and fail on any ResourceWarning or extra fd."""
    settle(loop)
    before = open_fds()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
        settle(loop)
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert open_fds() == before


@pytest.mark.parametrize("case", ["untrusted", "wrong_hostname"])
def test_refused_handshake_closes_the_socket(loop, tmp_path, server_ctx, client_ctx, case):
    path = str(tmp_path / "s")
    ctx, hostname = {"untrusted": (ssl.create_default_context(), "localhost"),
                     "wrong_hostname": (client_ctx, "other.example")}[case]

    async def main():
        server = await loop.create_unix_server(Echo, path, ssl=server_ctx)
        try:
            for _ in range(3):
                with pytest.raises(ssl.SSLCertVerificationError):
                    await loop.create_unix_connection(asyncio.Protocol, path, ssl=ctx,
                                                      server_hostname=hostname)
            # The server's side of each failed handshake is closed too.
            await until(lambda: active_connections(server) == 0)
        finally:
            server.close()
            await server.wait_closed()

    _no_resource_warnings(loop, lambda: run_guarded(loop, main()))


def test_handshake_timeout_closes_the_given_sock(loop, client_ctx):
    def attempt():
        mine, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:  # the peer takes the ClientHello and never answers
            with pytest.raises(ConnectionAbortedError,
                               match="SSL handshake is taking longer than 0.1 seconds"):
                run_guarded(loop, loop.create_unix_connection(
                    asyncio.Protocol, sock=mine, ssl=client_ctx, server_hostname="localhost",
                    ssl_handshake_timeout=0.1))
            settle(loop)
            assert mine.fileno() == -1  # the transport owned it, and closed it
        finally:
            peer.close()

    _no_resource_warnings(loop, attempt)


def test_tls_client_to_a_plain_server(loop, tmp_path):
    path = str(tmp_path / "s")

    class Refuser(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(b"not tls\r\n")
            self.transport.close()

    async def main():
        server = await loop.create_unix_server(Refuser, path)
        try:
            with pytest.raises(ssl.SSLError):
                await loop.create_unix_connection(asyncio.Protocol, path,
                                                  ssl=ssl.create_default_context(),
                                                  server_hostname="localhost")
        finally:
            server.close()
            await server.wait_closed()

    _no_resource_warnings(loop, lambda: run_guarded(loop, main()))


def test_plain_client_to_a_tls_server(loop, tmp_path, server_ctx):
    path = str(tmp_path / "s")
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    loop.set_debug(True)

    async def main():
        server = await loop.create_unix_server(Echo, path, ssl=server_ctx)
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        while await reader.read(1024):  # the server drops the connection
            pass
        writer.close()
        await writer.wait_closed()
        await until(lambda: active_connections(server) == 0)
        server.close()
        await server.wait_closed()

    _no_resource_warnings(loop, lambda: run_guarded(loop, main()))
    reported = [c for c in errors
                if c["message"] == "Error on transport creation for incoming connection"]
    assert len(reported) == 1 and isinstance(reported[0]["exception"], ssl.SSLError)
