"""asyncpg against a real PostgreSQL (scripts/services.sh): a pool under
load, COPY both ways, LISTEN/NOTIFY, query cancellation, TLS negotiated by
the default sslmode (asyncpg upgrades the connection with loop.start_tls),
certificate checks, and the Unix socket.

Tables are temporary (per connection) or named per test run, so runs on
the two loops never see each other's rows.
"""

import asyncio
import io
import ssl
import uuid
from urllib.parse import urlsplit

import pytest

from conftest import need_module

asyncpg = need_module("asyncpg")


async def ssl_in_use(conn):
    return await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")


def test_pool_of_10_runs_1000_concurrent_queries(runner, dsn, check_loop):
    async def main():
        check_loop(asyncio.get_running_loop())
        async with asyncpg.create_pool(dsn, min_size=10, max_size=10) as pool:
            rows = await asyncio.gather(
                *(pool.fetchrow("SELECT $1::int * 3 AS v, pg_backend_pid() AS pid", i) for i in range(1000))
            )
            assert [r["v"] for r in rows] == [i * 3 for i in range(1000)]
            pids = {r["pid"] for r in rows}
            assert 1 < len(pids) <= 10
            assert pool.get_size() == 10
            # A transaction per task, interleaved: every task sees its own writes only.
            table = f"t_{uuid.uuid4().hex}"
            await pool.execute(f"CREATE TABLE {table} (k int, v int)")
            try:

                async def txn(k):
                    async with pool.acquire() as conn, conn.transaction():
                        await conn.execute(f"INSERT INTO {table} VALUES ($1, $2)", k, k * k)
                        return await conn.fetchval(f"SELECT sum(v) FROM {table} WHERE k = $1", k)

                assert await asyncio.gather(*(txn(k) for k in range(200))) == [k * k for k in range(200)]
                assert await pool.fetchval(f"SELECT count(*) FROM {table}") == 200
            finally:
                await pool.execute(f"DROP TABLE {table}")

    runner.run(main())


def test_copy_in_and_out(runner, dsn):
    records = [(i, f"row {i}", i / 7) for i in range(20000)]

    async def main():
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("CREATE TEMP TABLE c (id int, name text, x float8)")
            assert await conn.copy_records_to_table("c", records=records) == "COPY 20000"
            raw = b"".join(f"{i}\tline {i}\t0.5\n".encode() for i in range(20000, 25000))
            assert await conn.copy_to_table("c", source=io.BytesIO(raw)) == "COPY 5000"
            assert await conn.fetchval("SELECT count(*) FROM c") == 25000

            out = io.BytesIO()
            query = "SELECT * FROM c WHERE id < 20000 ORDER BY id"
            assert await conn.copy_from_query(query, output=out) == "COPY 20000"
            lines = out.getvalue().decode().splitlines()
            assert [tuple(line.split("\t")[:2]) for line in lines] == [(str(i), f"row {i}") for i in range(20000)]

            chunks = []

            async def sink(chunk):
                chunks.append(bytes(chunk))

            await conn.copy_from_table("c", output=sink, format="csv")
            assert b"".join(chunks).count(b"\n") == 25000
            rows = await conn.fetch("SELECT id, name, x FROM c WHERE id < 20000 ORDER BY id")
            assert [tuple(r) for r in rows] == records
        finally:
            await conn.close()

    runner.run(main())


def test_listen_notify(runner, dsn):
    async def main():
        channel = f"ch_{uuid.uuid4().hex}"
        listener = await asyncpg.connect(dsn)
        sender = await asyncpg.connect(dsn)
        got = []
        done = asyncio.get_running_loop().create_future()

        def on_notify(conn, pid, chan, payload):
            got.append((chan, payload))
            if payload == "last" and not done.done():
                done.set_result(pid)

        try:
            await listener.add_listener(channel, on_notify)
            for i in range(200):
                await sender.execute("SELECT pg_notify($1, $2)", channel, str(i))
            async with sender.transaction():  # delivered together at commit
                for i in range(200, 300):
                    await sender.execute("SELECT pg_notify($1, $2)", channel, str(i))
            await sender.execute("SELECT pg_notify($1, 'last')", channel)
            pid = await done
            assert pid == sender.get_server_pid()
            assert got == [(channel, str(i)) for i in range(300)] + [(channel, "last")]
            await listener.remove_listener(channel, on_notify)
        finally:
            await listener.close()
            await sender.close()

    runner.run(main())


def test_cancelling_a_running_query(runner, dsn):
    """Cancelling the awaiting task sends PostgreSQL a cancel request (a new
    connection) and leaves the connection usable."""

    async def main():
        conn = await asyncpg.connect(dsn)
        watcher = await asyncpg.connect(dsn)
        try:
            pid = conn.get_server_pid()
            task = asyncio.ensure_future(conn.fetchval("SELECT pg_sleep(60)"))
            while await watcher.fetchval(
                "SELECT state FROM pg_stat_activity WHERE pid = $1 AND query LIKE '%pg_sleep%'", pid
            ) != "active":
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await conn.fetchval("SELECT 40 + 2") == 42
            assert await watcher.fetchval("SELECT state FROM pg_stat_activity WHERE pid = $1", pid) == "idle"

            # A timeout is a cancellation too.
            with pytest.raises(asyncio.TimeoutError):
                await conn.fetchval("SELECT pg_sleep(60)", timeout=0.2)
            assert await conn.fetchval("SELECT 'still' || ' usable'") == "still usable"
        finally:
            await conn.close()
            await watcher.close()

    runner.run(main())


def test_default_sslmode_negotiates_tls(runner, dsn):
    """No ssl= argument: asyncpg's default sslmode (prefer) asks for TLS,
    the server (ssl=on) agrees, and the stream is upgraded in place."""

    async def main():
        conn = await asyncpg.connect(dsn)
        try:
            assert await ssl_in_use(conn) is True
            ssl_object = conn._transport.get_extra_info("ssl_object")
            assert ssl_object is not None and ssl_object.version().startswith("TLS")
            big = "x" * (1 << 20)  # more than one TLS record each way
            assert await conn.fetchval("SELECT length($1::text)", big) == 1 << 20
            assert await conn.fetchval("SELECT $1::text", big) == big
        finally:
            await conn.close()

    runner.run(main())


def test_verify_full_against_the_test_ca(runner, dsn, pg_ca):
    async def main():
        trusted = ssl.create_default_context(cafile=pg_ca)
        for host in ("127.0.0.1", "localhost"):
            conn = await asyncpg.connect(dsn.replace("@127.0.0.1:", f"@{host}:"), ssl=trusted)
            try:
                assert await ssl_in_use(conn) is True
            finally:
                await conn.close()
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncpg.connect(dsn, ssl=ssl.create_default_context())  # does not trust the test CA
        conn = await asyncpg.connect(dsn, ssl=False)
        try:
            assert await ssl_in_use(conn) is False
        finally:
            await conn.close()

    runner.run(main())


def test_unix_socket(runner, dsn, socket_dir):
    url = urlsplit(dsn)

    async def main():
        conn = await asyncpg.connect(host=socket_dir, port=url.port, user=url.username, database="postgres")
        try:
            assert await conn.fetchval("SELECT inet_server_addr()") is None  # not TCP
            assert await ssl_in_use(conn) is False
            rows = await conn.fetch("SELECT g, md5(g::text) FROM generate_series(1, 50000) g")
            assert len(rows) == 50000 and rows[-1][0] == 50000
        finally:
            await conn.close()
        async with asyncpg.create_pool(
            host=socket_dir, port=url.port, user=url.username, database="postgres", min_size=4, max_size=4
        ) as pool:
            assert await asyncio.gather(*(pool.fetchval("SELECT $1::int", i) for i in range(500))) == list(range(500))

    runner.run(main())
