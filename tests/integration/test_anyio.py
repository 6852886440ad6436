"""anyio on uvpy, as its users start it:

    anyio.run(main, backend="asyncio", backend_options={"loop_factory": uvpy.new_event_loop})

Task groups, cancel scopes, to_thread, TCP, UDP and subprocesses. anyio
builds its own layer over the loop (its TCP streams are Protocol-based, UDP
uses create_datagram_endpoint, subprocesses asyncio.create_subprocess_exec),
so these cross most of the loop's surface through another library's eyes.
"""

import asyncio
import os
import subprocess
import sys
import threading

import pytest

from conftest import GUARD, need_module

anyio = need_module("anyio")
from anyio.streams.buffered import BufferedByteReceiveStream  # noqa: E402


@pytest.fixture
def arun(loop_factory, check_loop):
    """arun(fn, *args): anyio.run on the parametrised loop, bounded by GUARD."""

    def run(fn, *args):
        async def guarded():
            check_loop(asyncio.get_running_loop())
            with anyio.fail_after(GUARD):
                return await fn(*args)

        return anyio.run(guarded, backend="asyncio", backend_options={"loop_factory": loop_factory})

    return run


def test_task_groups(arun):
    async def main():
        results = {}

        async def worker(i):
            await anyio.sleep(0)
            results[i] = i * i

        async with anyio.create_task_group() as tg:
            for i in range(500):
                tg.start_soon(worker, i)
        assert results == {i: i * i for i in range(500)}

        # One child fails: the others are cancelled, the error comes out grouped.
        cancelled = []

        async def sleeper():
            try:
                await anyio.sleep(60)
            except anyio.get_cancelled_exc_class():
                cancelled.append(1)
                raise

        async def failer():
            await anyio.sleep(0)
            raise ValueError("boom")

        with pytest.raises(ExceptionGroup) as info:
            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(sleeper)
                tg.start_soon(failer)
        assert [type(e) for e in info.value.exceptions] == [ValueError]
        assert len(cancelled) == 10

        # tg.start waits for the child to report ready.
        async def server(task_status=anyio.TASK_STATUS_IGNORED):
            task_status.started("ready")
            await anyio.sleep(60)

        async with anyio.create_task_group() as tg:
            assert await tg.start(server) == "ready"
            tg.cancel_scope.cancel()
        return "ok"

    assert arun(main) == "ok"


def test_cancel_scopes(arun):
    async def main():
        with anyio.move_on_after(0.05) as scope:
            await anyio.sleep(60)
        assert scope.cancelled_caught

        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.05):
                await anyio.Event().wait()

        # A shielded scope finishes its work inside a cancelled one.
        finished = []
        with anyio.CancelScope() as outer:
            outer.cancel()
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.01)
                finished.append("shielded")
            await anyio.sleep(60)  # cancelled at once
        assert finished == ["shielded"] and outer.cancelled_caught

        # Cancelling a scope from a sibling task.
        async with anyio.create_task_group() as tg:
            scope = anyio.CancelScope()

            async def victim():
                with scope:
                    await anyio.sleep(60)

            tg.start_soon(victim)
            await anyio.sleep(0.01)
            scope.cancel()
        assert scope.cancelled_caught
        return "ok"

    assert arun(main) == "ok"


def test_to_thread(arun):
    async def main():
        loop_thread = threading.get_ident()
        idents = await asyncio.gather(*(anyio.to_thread.run_sync(threading.get_ident) for _ in range(20)))
        assert loop_thread not in idents

        # A thread calls back into the loop.
        def in_thread(x):
            return anyio.from_thread.run(double, x)

        async def double(x):
            await anyio.sleep(0)
            return 2 * x

        assert await anyio.to_thread.run_sync(in_thread, 21) == 42

        # Blocking work in threads does not hold the loop up.
        event = threading.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, event.wait)
            await anyio.sleep(0)
            event.set()
        with pytest.raises(ZeroDivisionError):
            await anyio.to_thread.run_sync(lambda: 1 / 0)
        return "ok"

    assert arun(main) == "ok"


def test_tcp(arun):
    async def main():
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)

        async def handle(stream):
            async with stream:
                data = b""
                async for chunk in stream:
                    data += chunk
                await stream.send(len(data).to_bytes(8, "big") + data[::-1])

        payloads = [os.urandom(n) for n in (1, 1000, 1 << 16, 3 << 20)] + [b"x" * i for i in range(20)]
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, handle)

            async def client(payload):
                async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                    await stream.send(payload)
                    await stream.send_eof()
                    reply = b""
                    async for chunk in stream:
                        reply += chunk
                    return reply

            replies = await asyncio.gather(*(client(p) for p in payloads))
            tg.cancel_scope.cancel()
        assert replies == [len(p).to_bytes(8, "big") + p[::-1] for p in payloads]

        with pytest.raises(OSError):
            await anyio.connect_tcp("127.0.0.1", port)  # the listener is closed
        return "ok"

    assert arun(main) == "ok"


def test_udp(arun):
    async def main():
        async with await anyio.create_udp_socket(local_host="127.0.0.1") as server:
            port = server.extra(anyio.abc.SocketAttribute.local_port)
            async with await anyio.create_connected_udp_socket("127.0.0.1", port) as client:
                sent = [f"datagram {i}".encode() * (1 + i % 50) for i in range(100)]
                replies = []
                for d in sent:  # one at a time: loopback UDP drops nothing then
                    await client.send(d)
                    data, addr = await server.receive()
                    assert addr == client.extra(anyio.abc.SocketAttribute.local_address)
                    await server.sendto(data.upper(), *addr)
                    replies.append(await client.receive())
                assert replies == [d.upper() for d in sent]
        return "ok"

    assert arun(main) == "ok"


def test_subprocesses(arun):
    async def main():
        data = os.urandom(1 << 20)
        reverse = "import sys; d = sys.stdin.buffer.read(); sys.stdout.buffer.write(d[::-1])"
        result = await anyio.run_process([sys.executable, "-c", reverse], input=data)
        assert result.returncode == 0 and result.stdout == data[::-1]

        with pytest.raises(subprocess.CalledProcessError) as info:
            await anyio.run_process([sys.executable, "-c", "import sys; sys.stderr.write('bad'); sys.exit(3)"])
        assert info.value.returncode == 3 and info.value.stderr == b"bad"

        child = "import sys\nfor line in sys.stdin: print(line.strip().upper(), flush=True)"
        async with await anyio.open_process([sys.executable, "-u", "-c", child]) as proc:
            # A line may come in more than one read: buffer up to each newline.
            stdout = BufferedByteReceiveStream(proc.stdout)
            lines = []
            for word in ("alpha", "beta", "gamma"):
                await proc.stdin.send(word.encode() + b"\n")
                lines.append(await stdout.receive_until(b"\n", 100))
            await proc.stdin.aclose()
            assert await proc.wait() == 0
        assert lines == [b"ALPHA", b"BETA", b"GAMMA"]

        # Many at once.
        outs = await asyncio.gather(*(anyio.run_process(["echo", str(i)]) for i in range(20)))
        assert [o.stdout for o in outs] == [f"{i}\n".encode() for i in range(20)]
        return "ok"

    assert arun(main) == "ok"
