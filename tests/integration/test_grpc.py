"""grpc.aio (grpcio) server and client on one loop.

grpcio polls its own completion queue and hands every event to the loop
with call_soon_threadsafe from its poller thread, so this covers the
loop's cross-thread wakeups and its shutdown under a real program. Generic
handlers with raw bytes stand in for generated stubs (no protoc): unary
calls at 500 in flight, each streaming kind, an error status set by the
server, a deadline, a cancelled call, and a server stopped with a grace
period while a call is running.
"""

import asyncio

import pytest

from conftest import need_module

grpc = need_module("grpc")
SERVICE = "uvpy.test.Echo"


class Echo:
    def __init__(self):
        self.cancelled = asyncio.Event()

    async def reverse(self, request, context):
        return request[::-1]

    async def fail(self, request, context):
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"no {request.decode()}")

    async def slow(self, request, context):
        try:
            await asyncio.sleep(float(request))
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return b"slept"

    async def count(self, request, context):
        for i in range(int(request)):
            yield str(i).encode()

    async def total(self, request_iterator, context):
        return str(sum([int(r) async for r in request_iterator])).encode()

    async def upper(self, request_iterator, context):
        async for r in request_iterator:
            yield r.upper()


async def start(echo):
    server = grpc.aio.server()
    unary, stream = grpc.unary_unary_rpc_method_handler, grpc.unary_stream_rpc_method_handler
    handlers = {
        "Reverse": unary(echo.reverse),
        "Fail": unary(echo.fail),
        "Slow": unary(echo.slow),
        "Count": stream(echo.count),
        "Total": grpc.stream_unary_rpc_method_handler(echo.total),
        "Upper": grpc.stream_stream_rpc_method_handler(echo.upper),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def method(channel, kind, name):
    return getattr(channel, kind)(f"/{SERVICE}/{name}")


def test_unary_calls_500_in_flight_and_every_streaming_kind(runner, check_loop):
    async def main():
        check_loop(asyncio.get_running_loop())
        server, target = await start(Echo())
        try:
            async with grpc.aio.insecure_channel(target) as channel:
                reverse = method(channel, "unary_unary", "Reverse")
                requests = [f"request {i}".encode() * (1 + i % 7) for i in range(500)]
                assert await asyncio.gather(*(reverse(r) for r in requests)) == [r[::-1] for r in requests]
                big = bytes(range(256)) * 4096  # 1 MiB, over many HTTP/2 frames
                assert await reverse(big) == big[::-1]

                counted = [r async for r in method(channel, "unary_stream", "Count")(b"300")]
                assert counted == [str(i).encode() for i in range(300)]

                async def numbers():
                    for i in range(1000):
                        yield str(i).encode()

                assert await method(channel, "stream_unary", "Total")(numbers()) == str(499500).encode()

                call = method(channel, "stream_stream", "Upper")()
                for word in (b"alpha", b"beta", b"gamma"):
                    await call.write(word)
                    assert await call.read() == word.upper()
                await call.done_writing()
                assert await call.read() == grpc.aio.EOF
                assert await call.code() == grpc.StatusCode.OK
        finally:
            await server.stop(None)

    runner.run(main())


def test_error_status_deadline_and_cancellation(runner):
    async def main():
        echo = Echo()
        server, target = await start(echo)
        try:
            async with grpc.aio.insecure_channel(target) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await method(channel, "unary_unary", "Fail")(b"luck")
                assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert failed.value.details() == "no luck"

                slow = method(channel, "unary_unary", "Slow")
                with pytest.raises(grpc.aio.AioRpcError) as late:
                    await slow(b"30", timeout=0.2)
                assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

                echo.cancelled.clear()
                call = slow(b"30")
                await asyncio.sleep(0.2)
                assert call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call
                await asyncio.wait_for(echo.cancelled.wait(), 10)  # the server's handler saw it

                assert await slow(b"0") == b"slept"  # the channel is still usable
        finally:
            await server.stop(None)

    runner.run(main())


def test_stop_with_a_grace_period_lets_a_running_call_finish(runner):
    async def main():
        server, target = await start(Echo())
        async with grpc.aio.insecure_channel(target) as channel:
            running = asyncio.ensure_future(method(channel, "unary_unary", "Slow")(b"0.3"))
            await asyncio.sleep(0.1)
            await server.stop(grace=10)
            assert await running == b"slept"
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await method(channel, "unary_unary", "Reverse")(b"x", timeout=2)
            assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE,
                                            grpc.StatusCode.DEADLINE_EXCEEDED)

    runner.run(main())
