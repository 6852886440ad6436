"""uvpy.UringOptions: a loop's `uring=`, its UVPY_URING_* defaults, its
checks, and loop.backend_info() reporting what the backend runs with.

uvpy-only (stock asyncio has no backends), so no loop fixture here.
"""

import asyncio
import subprocess
import sys

import pytest

import uvpy
from conftest import needs_uring
from uvpy import UringOptions

_URING_VARS = ("UVPY_URING_COMPLETION", "UVPY_URING_ACCEPT", "UVPY_URING_DGRAM",
               "UVPY_URING_BUF_COUNT", "UVPY_URING_BUF_SIZE")
_SWITCHES = ("completion", "completion_sends", "completion_accepts", "completion_datagrams")


@pytest.fixture
def env(monkeypatch):
    for var in _URING_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def info_of(backend, uring=None):
    loop = uvpy.new_event_loop(backend, uring=uring)
    try:
        return loop.backend_info()
    finally:
        loop.close()


# -- the options themselves ---------------------------------------------------------


def test_defaults_are_every_feature_on():
    o = UringOptions()
    assert all(getattr(o, name) is True for name in _SWITCHES)
    assert (o.buf_count, o.buf_size) == (256, 8192)
    assert UringOptions.from_env({}) == o


@pytest.mark.parametrize("environ, expected", [
    ({"UVPY_URING_COMPLETION": "0"}, {"completion": False}),
    ({"UVPY_URING_COMPLETION": "recv"}, {"completion_sends": False}),
    ({"UVPY_URING_COMPLETION": "1"}, {}),
    ({"UVPY_URING_ACCEPT": "0"}, {"completion_accepts": False}),
    ({"UVPY_URING_DGRAM": "0"}, {"completion_datagrams": False}),
    ({"UVPY_URING_DGRAM": "1", "UVPY_URING_ACCEPT": ""}, {}),
    ({"UVPY_URING_BUF_COUNT": "64", "UVPY_URING_BUF_SIZE": "4096"},
     {"buf_count": 64, "buf_size": 4096}),
])
def test_from_env(environ, expected):
    assert UringOptions.from_env(environ) == UringOptions(**expected)


@pytest.mark.parametrize("var, value, words", [
    ("UVPY_URING_COMPLETION", "off", "UVPY_URING_COMPLETION must be '0', '1' or 'recv', not 'off'"),
    ("UVPY_URING_ACCEPT", "no", "UVPY_URING_ACCEPT must be '0' or '1', not 'no'"),
    ("UVPY_URING_DGRAM", "2", "UVPY_URING_DGRAM must be '0' or '1', not '2'"),
    ("UVPY_URING_BUF_COUNT", "many", "UVPY_URING_BUF_COUNT must be an integer, not 'many'"),
    ("UVPY_URING_BUF_COUNT", "3", "UVPY_URING_BUF_COUNT=3: buf_count must be a power of two"),
    ("UVPY_URING_BUF_SIZE", "0", "UVPY_URING_BUF_SIZE=0: buf_size must be from 1 to"),
])
def test_from_env_names_the_bad_variable(var, value, words):
    with pytest.raises(ValueError) as info:
        UringOptions.from_env({var: value})
    assert str(info.value).startswith(words)


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"completion": 1}, TypeError, "completion must be a bool, not int"),
    ({"completion_accepts": None}, TypeError, "completion_accepts must be a bool, not NoneType"),
    ({"buf_count": 64.0}, TypeError, "buf_count must be an int, not float"),
    ({"buf_size": True}, TypeError, "buf_size must be an int, not bool"),
    ({"buf_count": 0}, ValueError, "buf_count must be a power of two from 1 to 32768, not 0"),
    ({"buf_count": 96}, ValueError, "buf_count must be a power of two from 1 to 32768, not 96"),
    ({"buf_count": 65536}, ValueError, "buf_count must be a power of two from 1 to 32768, not 65536"),
    ({"buf_size": -1}, ValueError, "buf_size must be from 1 to 2147483647, not -1"),
    ({"buf_size": 2**31}, ValueError, "buf_size must be from 1 to 2147483647, not 2147483648"),
])
def test_bad_values_raise_when_made(kwargs, exc, words):
    with pytest.raises(exc) as info:
        UringOptions(**kwargs)
    assert str(info.value) == words


def test_options_are_frozen():
    o = UringOptions()
    with pytest.raises(AttributeError):
        o.completion = False  # type: ignore[misc]


def test_uring_must_be_options(env):
    with pytest.raises(TypeError, match=r"^uring must be a uvpy.UringOptions or None, not dict$"):
        uvpy.new_event_loop("libuv", uring={"completion": False})


def test_bad_environment_fails_any_loop(env):
    # Invariant 2 of _options: read wherever a loop is made, libuv's too.
    env.setenv("UVPY_URING_ACCEPT", "yes")
    with pytest.raises(ValueError, match="UVPY_URING_ACCEPT"):
        uvpy.new_event_loop("libuv")
    # An explicit UringOptions does not read the environment at all.
    assert info_of("libuv", UringOptions()) == {"backend": "libuv"}


# -- what reaches the backend -------------------------------------------------------


def test_libuv_reports_its_name_only(env):
    assert info_of("libuv", UringOptions(completion=False)) == {"backend": "libuv"}


@needs_uring
@pytest.mark.parametrize("off", _SWITCHES)
def test_a_switch_reaches_the_backend(env, off):
    full = info_of("io_uring", UringOptions())
    got = info_of("io_uring", UringOptions(**{off: False}))
    assert got[off] is False
    if off == "completion":  # the master switch: nothing on completions
        assert not any(got[name] for name in _SWITCHES)
        assert (got["buf_count"], got["buf_size"]) == (0, 0)
    else:  # the others as the kernel gives them by default
        assert {k: v for k, v in got.items() if k != off} == {
            k: v for k, v in full.items() if k != off}


@needs_uring
def test_buffer_ring_size_reaches_the_backend(env):
    full = info_of("io_uring", UringOptions())
    if not full["completion"]:
        pytest.skip("this kernel runs io_uring reads on readiness")
    got = info_of("io_uring", UringOptions(buf_count=64, buf_size=4096))
    assert (got["buf_count"], got["buf_size"]) == (64, 4096)
    assert got["setup"] == full["setup"] and isinstance(got["setup"], str)


@needs_uring
def test_environment_is_the_default(env):
    env.setenv("UVPY_URING_ACCEPT", "0")
    env.setenv("UVPY_URING_COMPLETION", "recv")
    got = info_of("io_uring")
    assert got["completion_accepts"] is False
    assert got["completion_sends"] is False
    # An explicit UringOptions wins over the environment.
    assert info_of("io_uring", UringOptions()) == info_of("io_uring", UringOptions.from_env({}))


@needs_uring
@pytest.mark.parametrize("uring", [UringOptions(completion=False),
                                   UringOptions(completion_accepts=False, completion_sends=False),
                                   UringOptions(buf_count=1, buf_size=16)])
def test_a_loop_serves_with_features_off(env, uring):
    """Each readiness fallback the switches select carries a real echo."""
    loop = uvpy.new_event_loop("io_uring", uring=uring)

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        payload = b"x" * 100_000
        writer.write(payload)
        got = await asyncio.wait_for(reader.readexactly(len(payload)), 10)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return got == payload

    try:
        assert loop.run_until_complete(main())
    finally:
        loop.close()


def test_a_subclass_keeps_its_own_init_signature(env):
    class Tagged(uvpy.Loop):
        def __init__(self, tag):
            super().__init__()
            self.tag = tag

    loop = Tagged("x")
    try:
        assert loop.tag == "x" and loop.backend_info()["backend"] == loop.backend
    finally:
        loop.close()


@needs_uring
def test_info_reports_the_io_uring_settings(env):
    env.setenv("UVPY_URING_ACCEPT", "0")
    proc = subprocess.run([sys.executable, "-m", "uvpy", "info"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    info = info_of("io_uring")  # the same environment
    del info["backend"]
    assert "  io_uring  runs with " + ", ".join(f"{k}={v}" for k, v in info.items()) in proc.stdout
    assert "completion_accepts=False" in proc.stdout
