"""The clean-close check every test here ends with (conftest.py,
invariants 1-4): a small suite that leaks on purpose, run with this
directory's conftest in a child pytest, must error exactly where it leaks.

The child is a separate process: what its tests leak must not be this
process's, or this test would fail its own check.
"""

import pathlib

import pytest

pytest_plugins = ("pytester",)

LEAKY_SUITE = '''
import asyncio
import socket

import pytest

kept = []


def test_clean(loop):
    async def main():
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


def test_keeps_a_socket_open(loop):
    kept.append(socket.socket())


@pytest.mark.leaks_fds("kept open on purpose")
def test_keeps_a_socket_open_by_design(loop):
    kept.append(socket.socket())


def test_drops_a_socket_unclosed(loop):
    socket.socket()


def test_closes_the_loop_under_a_server(loop):
    listener = socket.create_server(("127.0.0.1", 0))
    kept.append(loop.run_until_complete(loop.create_server(asyncio.Protocol, sock=listener)))
    loop.close()
    listener.close()  # only the watcher was left: the loop check alone fails


@pytest.mark.leaves_io_open("closes the loop under a server on purpose", loops=["asyncio"])
def test_closes_the_loop_under_a_server_exempt_on_one_loop(loop):
    test_closes_the_loop_under_a_server(loop)


@pytest.mark.asyncio
async def test_async_leaves_a_server_open():
    kept.append(await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0))
'''


def test_the_check_errors_where_a_test_leaks_and_nowhere_else(pytester):
    here = pathlib.Path(__file__).parent
    pytester.makeconftest((here / "conftest.py").read_text())
    pytester.makeini("[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_leaky=LEAKY_SUITE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA")
    outcomes = {}
    for line in result.outlines:
        word, _, rest = line.partition(" ")
        if word in ("PASSED", "FAILED", "ERROR") and rest.startswith("test_leaky.py::"):
            outcomes.setdefault(rest.split(" ")[0].split("::")[1], set()).add(word)
    # A test whose call passed and whose teardown failed shows both.
    failed = {name for name, words in outcomes.items() if words & {"FAILED", "ERROR"}}
    assert failed == {
        f"{name}[{loop}]"
        for loop in ("uvpy", "asyncio")
        for name in ("test_keeps_a_socket_open", "test_drops_a_socket_unclosed",
                     "test_closes_the_loop_under_a_server", "test_async_leaves_a_server_open")
    } | {"test_closes_the_loop_under_a_server_exempt_on_one_loop[uvpy]"}, result.stdout.str()
    assert {name for name, words in outcomes.items() if words == {"PASSED"}} == {
        "test_clean[uvpy]", "test_clean[asyncio]",
        "test_keeps_a_socket_open_by_design[uvpy]", "test_keeps_a_socket_open_by_design[asyncio]",
        "test_closes_the_loop_under_a_server_exempt_on_one_loop[asyncio]",
    }, result.stdout.str()
    result.stdout.fnmatch_lines_random([
        "*fds opened during the test are still open*",
        "*a loop was closed with these left behind*",
        "*fd watcher(s) left registered*",
        "*ResourceWarning: unclosed <socket.socket*",
    ])
