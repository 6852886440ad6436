"""shutdown_asyncgens and the asynchronous generator hooks, on both loops."""

import pytest


def test_shutdown_asyncgens_closes_suspended_generators(loop):
    closed = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            closed.append(True)

    async def main():
        g = agen()
        assert await g.__anext__() == 1
        return g

    g = loop.run_until_complete(main())
    assert closed == []
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert closed == [True]
    del g


def test_asyncgen_after_shutdown_warns(loop):
    async def agen():
        yield 1

    async def main():
        g = agen()
        with pytest.warns(ResourceWarning, match="was scheduled after"):
            await g.__anext__()
        await g.aclose()

    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.run_until_complete(main())
