"""psycopg 3 (async) against a real PostgreSQL (scripts/services.sh).

psycopg drives libpq's own socket: every wait is a loop.add_reader or
add_writer on libpq's fd, and libpq does its own TLS, so this covers the
readiness API under a real protocol rather than uvpy's transports. Driven
as its users drive it: psycopg_pool's AsyncConnectionPool under concurrent
queries and transactions, pipeline mode, COPY both ways, LISTEN/NOTIFY
through notifies(), a cancelled query (psycopg sends the cancel request
and waits on it through the loop too), verify-full TLS and the Unix socket.

Tables are temporary (per connection) or named per test run.
"""

import asyncio
import uuid
from urllib.parse import urlsplit

import pytest

from conftest import need_module

psycopg = need_module("psycopg")
psycopg_pool = need_module("psycopg_pool")
trustme = need_module("trustme")


async def fetchone(conn, query, params=None):
    cur = await conn.execute(query, params)
    return await cur.fetchone()


def test_a_pool_of_10_under_500_concurrent_queries_and_transactions(runner, dsn, check_loop):
    async def main():
        check_loop(asyncio.get_running_loop())
        async with psycopg_pool.AsyncConnectionPool(dsn, min_size=10, max_size=10, open=False) as pool:
            await pool.wait()

            async def query(i):
                async with pool.connection() as conn:
                    return await fetchone(conn, "SELECT %s::int * 3, pg_backend_pid()", (i,))

            rows = await asyncio.gather(*(query(i) for i in range(500)))
            assert [r[0] for r in rows] == [i * 3 for i in range(500)]
            assert 1 < len({r[1] for r in rows}) <= 10

            table = f"t_{uuid.uuid4().hex}"
            async with pool.connection() as conn:
                await conn.execute(f"CREATE TABLE {table} (k int, v int)")
            try:
                async def txn(k):
                    async with pool.connection() as conn, conn.transaction():
                        await conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", (k, k * k))
                        return (await fetchone(conn, f"SELECT sum(v) FROM {table} WHERE k = %s", (k,)))[0]

                assert await asyncio.gather(*(txn(k) for k in range(200))) == [k * k for k in range(200)]
                async with pool.connection() as conn:
                    assert (await fetchone(conn, f"SELECT count(*) FROM {table}"))[0] == 200
            finally:
                async with pool.connection() as conn:
                    await conn.execute(f"DROP TABLE {table}")

    runner.run(main())


def test_pipeline_mode(runner, dsn):
    async def main():
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            async with conn.pipeline():
                curs = [await conn.execute("SELECT %s::int, repeat('x', %s)", (i, i % 50))
                        for i in range(1000)]
            rows = [await cur.fetchone() for cur in curs]
            assert rows == [(i, "x" * (i % 50)) for i in range(1000)]

    runner.run(main())


def test_copy_in_and_out(runner, dsn):
    async def main():
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            await conn.execute("CREATE TEMP TABLE c (id int, name text)")
            async with conn.cursor() as cur:
                async with cur.copy("COPY c FROM STDIN") as copy:
                    for i in range(20000):
                        await copy.write_row((i, f"row {i}"))
                assert (await fetchone(conn, "SELECT count(*), sum(id) FROM c")) == (20000, 199990000)
                out = bytearray()
                async with cur.copy("COPY (SELECT * FROM c ORDER BY id) TO STDOUT") as copy:
                    async for chunk in copy:
                        out += chunk
            lines = out.decode().splitlines()
            assert lines == [f"{i}\trow {i}" for i in range(20000)]

    runner.run(main())


def test_listen_notify(runner, dsn):
    async def main():
        channel = f"ch_{uuid.uuid4().hex}"
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as listener, \
                await psycopg.AsyncConnection.connect(dsn, autocommit=True) as sender:
            await listener.execute(f"LISTEN {channel}")

            async def send():
                for i in range(100):
                    await sender.execute("SELECT pg_notify(%s, %s)", (channel, str(i)))
                async with sender.transaction():  # delivered together at commit
                    for i in range(100, 150):
                        await sender.execute("SELECT pg_notify(%s, %s)", (channel, str(i)))

            sending = asyncio.ensure_future(send())
            got = [(n.channel, n.payload, n.pid)
                   async for n in listener.notifies(timeout=30, stop_after=150)]
            await sending
            assert got == [(channel, str(i), sender.info.backend_pid) for i in range(150)]

    runner.run(main())


def test_cancelling_a_running_query(runner, dsn):
    """Cancelling the awaiting task makes psycopg send a cancel request and
    leaves the connection usable; so does a timeout."""

    async def main():
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn, \
                await psycopg.AsyncConnection.connect(dsn, autocommit=True) as watcher:
            pid = conn.info.backend_pid
            task = asyncio.ensure_future(conn.execute("SELECT pg_sleep(60)"))
            query = "SELECT state FROM pg_stat_activity WHERE pid = %s AND query LIKE '%%pg_sleep%%'"
            while (await fetchone(watcher, query, (pid,)) or (None,))[0] != "active":
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await fetchone(conn, "SELECT 40 + 2") == (42,)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await conn.execute("SELECT pg_sleep(60)")
            assert await fetchone(conn, "SELECT 'still' || ' usable'") == ("still usable",)

    runner.run(main())


def test_verify_full_tls_and_the_unix_socket(runner, dsn, pg_ca, socket_dir, tmp_path):
    url = urlsplit(dsn)

    async def main():
        ssl_in_use = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        tls = dsn.replace("@127.0.0.1:", "@localhost:") + f"?sslmode=verify-full&sslrootcert={pg_ca}"
        async with await psycopg.AsyncConnection.connect(tls) as conn:
            assert await fetchone(conn, ssl_in_use) == (True,)
            big = "x" * (1 << 20)  # more than one TLS record each way
            assert await fetchone(conn, "SELECT %s::text", (big,)) == (big,)
        other_ca = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(other_ca))
        with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
            await psycopg.AsyncConnection.connect(tls.replace(pg_ca, str(other_ca)))
        async with await psycopg.AsyncConnection.connect(
                host=socket_dir, port=url.port, user=url.username, dbname="postgres") as conn:
            assert await fetchone(conn, "SELECT inet_server_addr()") == (None,)  # not TCP
            cur = await conn.execute("SELECT g, md5(g::text) FROM generate_series(1, 50000) g")
            rows = await cur.fetchall()
            assert len(rows) == 50000 and rows[-1][0] == 50000

    runner.run(main())
