"""Flow control shared by uvpy's Python-level transports (pipes, datagram
endpoints): the write side with the rules of asyncio's
transports._FlowControlMixin, the read side with those of its
pause_reading()/resume_reading().

A transport that mixes this in keeps ``_protocol``, ``_loop`` and
``get_write_buffer_size()``, calls ``_init_flow_control()`` once, and calls
``_maybe_pause_protocol()`` after its buffer grows and
``_maybe_resume_protocol()`` after it shrinks.

Invariants:

1. pause_writing() is called once when the buffer rises above the high-water
   mark, resume_writing() once when it then falls to the low-water mark or
   below; never two of the same in a row.
2. An exception from either goes to the loop's exception handler with
   asyncio's message; it never reaches the code that wrote.
3. The marks default to 64 KiB high and a quarter of that low; a given low
   without a high makes high four times low; high >= low >= 0 or ValueError.

ReadControl: a transport calls ``_init_read_control(fd)`` once, keeps
``_loop``, ``_closing`` and a ``_read_ready`` callback, and starts reading
with ``_start_reading()`` (from call_soon, after connection_made()).

4. The loop's reader on fd is installed iff reading was started and the
   transport is neither paused nor closing; pause_reading() and
   resume_reading() are no-ops where asyncio's are.

report_fatal_error(): the reporting half of every transport's
``_fatal_error`` (TCP, pipes, datagrams), as asyncio's transports do it.
"""

from __future__ import annotations

from asyncio.log import logger

from . import _uvpy

__all__ = ("WriteFlowControl", "ReadControl", "report_fatal_error")

_READ = _uvpy.READABLE


def report_fatal_error(transport, exc, message, quiet):
    """An error the protocol learns of from connection_lost() anyway (quiet:
    an OSError, say) is logged in debug mode only; any other goes to the
    loop's exception handler. Closing is the caller's."""
    loop = transport._loop
    if loop is None:
        return
    if quiet:
        if loop.get_debug():
            logger.debug("%r: %s", transport, message, exc_info=True)
    else:
        loop.call_exception_handler({
            "message": message,
            "exception": exc,
            "transport": transport,
            "protocol": transport._protocol,
        })


class WriteFlowControl:
    """set/get_write_buffer_limits and the pause/resume edges (module docstring)."""

    def _init_flow_control(self):
        self._protocol_paused = False
        self._set_write_buffer_limits()

    def get_write_buffer_limits(self):
        return (self._low_water, self._high_water)

    def _set_write_buffer_limits(self, high=None, low=None):
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high_water = high
        self._low_water = low

    def set_write_buffer_limits(self, high=None, low=None):
        self._set_write_buffer_limits(high=high, low=low)
        self._maybe_pause_protocol()

    def _maybe_pause_protocol(self):
        if self.get_write_buffer_size() <= self._high_water or self._protocol_paused:
            return
        self._protocol_paused = True
        self._call_protocol("pause_writing")

    def _maybe_resume_protocol(self):
        if self._protocol_paused and self.get_write_buffer_size() <= self._low_water:
            self._protocol_paused = False
            self._call_protocol("resume_writing")

    def _call_protocol(self, name):
        try:
            getattr(self._protocol, name)()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler({
                "message": f"protocol.{name}() failed",
                "exception": exc,
                "transport": self,
                "protocol": self._protocol,
            })


class ReadControl:
    """is_reading / pause_reading / resume_reading over the loop's reader (rule 4)."""

    def _init_read_control(self, fd):
        self._read_fd = fd
        self._paused = False
        self._reading = False  # the reader is installed

    def _start_reading(self):
        if self._reading or not self.is_reading():
            return
        self._loop._watch(self._read_fd, _READ, self._read_ready, ())
        self._reading = True

    def _stop_reading(self):
        if self._reading:
            self._reading = False
            self._loop._unwatch(self._read_fd, _READ)

    def is_reading(self):
        return not self._closing and not self._paused

    def pause_reading(self):
        if not self.is_reading():
            return
        self._paused = True
        self._stop_reading()
        if self._loop.get_debug():
            logger.debug("%r pauses reading", self)

    def resume_reading(self):
        if self._closing or not self._paused:
            return
        self._paused = False
        self._start_reading()
        if self._loop.get_debug():
            logger.debug("%r resumes reading", self)
