"""redis.asyncio against a real Redis (scripts/services.sh), over TCP, over
TLS (verified against the test CA, so the TLS transport carries every
reply) and over the Unix socket: pipelines (plain and MULTI/EXEC), pub/sub, blocking
pops that wait and that time out, and many clients at once.

Keys carry a random prefix, so the runs on the two loops never share data.
"""

import asyncio
import os
import uuid

import pytest

from conftest import need_env, need_module

redis = need_module("redis")
import redis.asyncio as aioredis  # noqa: E402


@pytest.fixture(params=["tcp", "tls", "unix"])
def connect(request):
    """connect(**kw) -> a redis.asyncio.Redis on the parametrised transport."""
    if request.param == "tcp":
        url = need_env("UVPY_TEST_REDIS_URL")
        return lambda **kw: aioredis.Redis.from_url(url, **kw)
    if request.param == "tls":
        url, ca = need_env("UVPY_TEST_REDIS_TLS_URL"), need_env("UVPY_TEST_CA")
        return lambda **kw: aioredis.Redis.from_url(url, ssl_ca_certs=ca, ssl_cert_reqs="required", **kw)
    path = need_env("UVPY_TEST_REDIS_SOCKET")
    return lambda **kw: aioredis.Redis(unix_socket_path=path, **kw)


@pytest.fixture
def prefix():
    return f"uvpy:{uuid.uuid4().hex}:"


def test_pipelines(runner, connect, prefix, check_loop):
    async def main():
        check_loop(asyncio.get_running_loop())
        r = connect()
        try:
            async with r.pipeline(transaction=False) as p:
                for i in range(1000):
                    p.set(f"{prefix}{i}", i * i)
                for i in range(1000):
                    p.get(f"{prefix}{i}")
                got = await p.execute()
            assert got[:1000] == [True] * 1000
            assert got[1000:] == [str(i * i).encode() for i in range(1000)]

            async with r.pipeline(transaction=True) as p:
                for _ in range(500):
                    p.incr(f"{prefix}counter")
                p.get(f"{prefix}counter")
                got = await p.execute()
            assert got[:500] == list(range(1, 501)) and got[500] == b"500"

            blob = os.urandom(8 << 20)  # one reply bigger than any socket buffer
            await r.set(f"{prefix}blob", blob)
            assert await r.get(f"{prefix}blob") == blob
            await r.delete(*[f"{prefix}{i}" for i in range(1000)], f"{prefix}counter", f"{prefix}blob")
        finally:
            await r.aclose()

    runner.run(main())


def test_many_clients_at_once(runner, connect, prefix):
    async def main():
        clients = [connect() for _ in range(50)]
        try:

            async def work(n, r):
                for i in range(20):
                    await r.rpush(f"{prefix}list", f"{n}:{i}")
                return await r.incr(f"{prefix}done")

            done = await asyncio.gather(*(work(n, r) for n, r in enumerate(clients)))
            assert sorted(done) == list(range(1, 51))
            items = await clients[0].lrange(f"{prefix}list", 0, -1)
            assert len(items) == 1000
            for n in range(50):  # each client's pushes arrive in its order
                mine = [x for x in items if x.startswith(f"{n}:".encode())]
                assert mine == [f"{n}:{i}".encode() for i in range(20)]
            await clients[0].delete(f"{prefix}list", f"{prefix}done")
        finally:
            for r in clients:
                await r.aclose()

    runner.run(main())


def test_pubsub(runner, connect, prefix):
    async def main():
        sub_client, pub_client = connect(), connect()
        pubsub = sub_client.pubsub()
        try:
            await pubsub.subscribe(f"{prefix}a")
            await pubsub.psubscribe(f"{prefix}p.*")
            confirmations = [await pubsub.get_message(timeout=10) for _ in range(2)]
            assert [m["type"] for m in confirmations] == ["subscribe", "psubscribe"]

            receivers = []
            for i in range(300):
                receivers.append(await pub_client.publish(f"{prefix}a", f"m{i}"))
                if i % 3 == 0:
                    await pub_client.publish(f"{prefix}p.{i}", os.urandom(100))
            assert receivers == [1] * 300

            got = []
            while len(got) < 400:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=10)
                assert msg is not None, f"only {len(got)} of 400 messages arrived"
                got.append(msg)
            plain = [m["data"] for m in got if m["type"] == "message"]
            assert plain == [f"m{i}".encode() for i in range(300)]
            patterned = [m["channel"] for m in got if m["type"] == "pmessage"]
            assert patterned == [f"{prefix}p.{i}".encode() for i in range(0, 300, 3)]

            await pubsub.unsubscribe()
            await pubsub.punsubscribe()
            assert await pub_client.publish(f"{prefix}a", "nobody") == 0
        finally:
            await pubsub.aclose()
            await sub_client.aclose()
            await pub_client.aclose()

    runner.run(main())


def test_blocking_pops(runner, connect, prefix):
    async def main():
        waiter_client, pusher = connect(), connect()
        try:
            # Several pops wait at once, each on its own connection; pushes wake them.
            waiters = [connect() for _ in range(5)]
            pops = [asyncio.ensure_future(w.blpop([f"{prefix}q"], timeout=30)) for w in waiters]
            while sum(1 for c in await pusher.client_list() if c.get("cmd") == "blpop") < 5:
                await asyncio.sleep(0.01)
            for i in range(5):
                await pusher.rpush(f"{prefix}q", f"job{i}")
            results = await asyncio.gather(*pops)
            assert sorted(v for _, v in results) == [f"job{i}".encode() for i in range(5)]
            assert {k for k, _ in results} == {f"{prefix}q".encode()}
            for w in waiters:
                await w.aclose()

            # A pop that times out returns None and leaves the connection usable.
            assert await waiter_client.blpop([f"{prefix}empty"], timeout=0.1) is None
            assert await waiter_client.ping() is True

            # BLMOVE between lists, in order.
            await pusher.rpush(f"{prefix}src", *range(10))
            moved = [await waiter_client.blmove(f"{prefix}src", f"{prefix}dst", 5) for _ in range(10)]
            assert moved == [str(i).encode() for i in range(10)]
            assert await pusher.lrange(f"{prefix}dst", 0, -1) == [str(i).encode() for i in range(10)]
            await pusher.delete(f"{prefix}dst")

            # Cancelling a waiting pop: the client disconnects that connection,
            # and the next command works.
            task = asyncio.ensure_future(waiter_client.blpop([f"{prefix}never"], timeout=30))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await waiter_client.ping() is True
        finally:
            await waiter_client.aclose()
            await pusher.aclose()

    runner.run(main())
