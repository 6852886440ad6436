"""Backend selection: the ``backend`` argument, UVPY_BACKEND, and "auto".

uvpy-only (stock asyncio has no backends), so no loop fixture here. The rest
of the suite runs on whichever backend UVPY_BACKEND names; scripts/test.sh
runs it once per backend.
"""

import asyncio
import os
import socket
import subprocess
import sys
import textwrap

import pytest

import uvpy
from conftest import NO_URING, URING, needs_uring, needs_x86_64


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("UVPY_BACKEND", raising=False)
    return monkeypatch


def echo_roundtrip(loop):
    """A reader, a writer and a timer on the loop, end to end."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:

        async def main():
            await loop.sock_sendall(a, b"ping")
            data = await asyncio.wait_for(loop.sock_recv(b, 16), 5)
            await asyncio.sleep(0.001)
            return data

        return loop.run_until_complete(main())
    finally:
        a.close()
        b.close()


def test_libuv_on_request(no_env):
    loop = uvpy.new_event_loop("libuv")
    try:
        assert loop.backend == "libuv"
        assert echo_roundtrip(loop) == b"ping"
    finally:
        loop.close()


@needs_uring
def test_io_uring_on_request(no_env):
    loop = uvpy.Loop(backend="io_uring")
    try:
        assert loop.backend == "io_uring"
        assert "backend=io_uring" in repr(loop)
        assert echo_roundtrip(loop) == b"ping"
    finally:
        loop.close()


def test_auto_and_the_default_are_libuv(no_env):
    # io_uring is opt-in by name until it measures faster (docs/io_uring.md).
    for loop in (uvpy.new_event_loop(), uvpy.new_event_loop("auto"), uvpy.Loop()):
        assert loop.backend == "libuv"
        loop.close()


def test_env_var_sets_the_default(no_env):
    no_env.setenv("UVPY_BACKEND", "libuv")
    loop = uvpy.new_event_loop()
    assert loop.backend == "libuv"
    loop.close()
    if URING:
        no_env.setenv("UVPY_BACKEND", "io_uring")
        loop = uvpy.new_event_loop()
        assert loop.backend == "io_uring"
        loop.close()


def test_argument_beats_env_var(no_env):
    no_env.setenv("UVPY_BACKEND", "io_uring")
    loop = uvpy.new_event_loop("libuv")
    assert loop.backend == "libuv"
    loop.close()


def test_bad_values(no_env):
    with pytest.raises(ValueError, match="'auto', 'io_uring' or 'libuv', not 'epoll'"):
        uvpy.new_event_loop("epoll")
    with pytest.raises(TypeError, match="backend must be a str or None"):
        uvpy.Loop(backend=3)
    no_env.setenv("UVPY_BACKEND", "kqueue")
    with pytest.raises(ValueError, match="UVPY_BACKEND must be"):
        uvpy.new_event_loop()


def test_policy_install_and_run_pass_the_choice(no_env):
    async def which():
        return asyncio.get_running_loop().backend

    assert uvpy.run(which(), backend="libuv") == "libuv"
    policy = uvpy.EventLoopPolicy("libuv")
    loop = policy.new_event_loop()
    assert loop.backend == "libuv"
    loop.close()
    old = asyncio.get_event_loop_policy()
    try:
        uvpy.install("libuv")
        assert asyncio.run(which()) == "libuv"
    finally:
        asyncio.set_event_loop_policy(old)


# A child process in which io_uring_setup(2) fails (conftest.NO_URING).
_NO_URING = NO_URING + textwrap.dedent(
    """
    import uvpy
    loop = uvpy.new_event_loop("libuv")
    print(loop.backend)
    loop.close()
    try:
        uvpy.new_event_loop("io_uring")
    except OSError as exc:
        print("OSError:", exc)
    """
)


@needs_x86_64
def test_io_uring_blocked_by_seccomp_explains_why(no_env):
    env = dict(os.environ)
    env.pop("UVPY_BACKEND", None)
    out = subprocess.run(
        [sys.executable, "-c", _NO_URING], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "libuv"
    assert lines[1].startswith("OSError: the io_uring backend is unavailable:")
    assert "Function not implemented" in lines[1] or "ENOSYS" in lines[1] or "probe" in lines[1]
