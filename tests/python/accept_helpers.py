"""Helpers for the accept-step tests (test_tcp_accept.py for TCP,
test_stream_accept.py for Unix and TLS): a protocol that logs its callbacks,
and a protocol factory whose first call raises, with the checks of what the
loop then reports.
"""

import asyncio
import contextlib
import warnings

import uvpy

from conftest import collect


def run(loop, coro):
    return loop.run_until_complete(coro)


class Recorder(asyncio.Protocol):
    """Logs its callbacks into a shared list; echoes, closes on EOF."""

    def __init__(self, log, made):
        self.log = log
        self.made = made
        log.append("factory")

    def connection_made(self, transport):
        self.transport = transport
        self.log.append("connection_made")
        if not self.made.done():
            self.made.set_result(transport)

    def data_received(self, data):
        self.log.append("data_received")
        self.transport.write(data)

    def eof_received(self):
        self.log.append("eof_received")  # and close (returns None)

    def connection_lost(self, exc):
        self.log.append("connection_lost")


@contextlib.contextmanager
def stock_leak_tolerated(loop):
    """The stock loop drops the accepted socket unclosed when the protocol
    factory raises (its GC closes it, with a ResourceWarning): the oracle's
    own leak, tolerated for it only; uvpy closes the socket."""
    with warnings.catch_warnings():
        if not isinstance(loop, uvpy.Loop):
            warnings.filterwarnings("ignore", "unclosed <socket.socket", ResourceWarning)
        yield


class FailingOnce:
    """A protocol factory whose first call raises ZeroDivisionError; later
    calls make Recorders. It sets the loop's debug mode and exception
    handler, and run() checks what asyncio reports for the failure: a failed
    transport creation is reported in debug mode only."""

    def __init__(self, loop, debug):
        self.loop = loop
        self.debug = debug
        self.calls = 0
        self.contexts = []
        loop.set_debug(debug)
        loop.set_exception_handler(lambda lp, ctx: self.contexts.append(ctx))

    def __call__(self):
        self.calls += 1
        if self.calls == 1:
            raise ZeroDivisionError("no protocol")
        return Recorder([], self.loop.create_future())

    def run(self, main):
        """Runs main, which must connect twice (the first connection is the
        failed one), then checks the calls and the reports."""
        with stock_leak_tolerated(self.loop):
            run(self.loop, main)
            assert self.calls == 2
            if self.debug:
                assert [c["message"] for c in self.contexts] == [
                    "Error on transport creation for incoming connection"]
                assert isinstance(self.contexts[0]["exception"], ZeroDivisionError)
            else:
                assert self.contexts == []
            self.contexts.clear()  # (in debug mode its traceback holds the socket)
            collect()
