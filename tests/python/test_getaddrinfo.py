"""loop.getaddrinfo, on both loops."""

import asyncio

import pytest


@pytest.mark.asyncio
async def test_getaddrinfo_numeric_host():
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo("127.0.0.1", 80, type=1)
    assert infos and infos[0][4] == ("127.0.0.1", 80)
