"""Pipes on uvpy: ReadPipeTransport, WritePipeTransport and the loop's
connect_read_pipe / connect_write_pipe, for pipes, FIFOs, sockets,
character devices and pseudo-terminals.

Both transports are readiness-based: the loop's reader and writer
(Loop._watch, a native watcher on either backend) call _read_ready and
_write_ready, which read() and write() the fd directly. Their rules are
those of asyncio's Unix pipe transports, the oracle for every one below.

Invariants:

1. Only FIFOs, sockets and character devices are taken (ValueError
   otherwise, before anything is changed); the fd is made non-blocking and
   belongs to the transport from then on: it is closed exactly once, right
   after connection_lost(), or by __del__ with a ResourceWarning when the
   transport was never closed.
2. connection_made() runs first, from call_soon; reading starts only after
   it, and the waiter of connect_*_pipe() is woken after it.
3. The read side: one read() of up to max_size per readiness event is one
   data_received(), of a bytes object the size of what was read. (The read
   goes into a buffer the loop keeps for its pipes and is copied out:
   reading into a fresh max_size bytes object, as os.read() does, costs a
   mapping and its page faults per read, since glibc serves an allocation
   that large with mmap(); bench/process.py's cat measured 1.5x the CPU.) An empty read is the peer's end: eof_received(), then
   connection_lost(None). EIO (a pty whose other side closed) ends the
   transport quietly with connection_lost(EIO); other read errors go to
   the exception handler first.
4. The write side: write() sends at once when nothing is queued and
   queues what the kernel did not take (a bytes object by reference, a
   bytearray or memoryview as a copy, since the caller may change it); the
   writer drains the queue in order, several chunks per writev(). Nothing queued is dropped except by abort() or an error. The
   reader trick: on a pipe or socket the write side also watches for
   readability, which there means the reading end went away; the transport
   then closes, with BrokenPipeError if data was still queued.
5. write_eof() and close() on the write side are the same: no more
   writes, and connection_lost(None) once the queue has drained (closing
   the fd is what a pipe's reader sees as EOF).
6. connection_lost() runs once, after every watcher of the transport is
   gone: from call_soon, or straight from the writer that drained the
   queue after close() (as asyncio does). Closed after its loop closed,
   a transport closes its fd at once; its protocol is not called.

Deliberate difference: write() of something that is not bytes-like raises
TypeError (asyncio asserts, which -O turns off).
"""

from __future__ import annotations

import collections
import errno
import itertools
import os
import stat
import warnings
from asyncio import constants, futures, transports
from asyncio.log import logger

from . import _uvpy
from ._flow import ReadControl, WriteFlowControl, report_fatal_error

__all__ = ("ReadPipeTransport", "WritePipeTransport", "PipeMixin")

_READ = _uvpy.READABLE
_WRITE = _uvpy.WRITABLE
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 16


def _pipe_fd(pipe, message):
    """pipe's fd, checked to be a FIFO, socket or character device (invariant 1)."""
    fd = pipe.fileno()
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
        raise ValueError(message)
    return fd, mode


def _read_buffer(loop):
    """The loop's buffer for pipe reads (invariant 3): one per loop, as loops
    in other threads read at the same time; reused at once, since
    data_received() gets a copy of exactly what was read."""
    try:
        return loop._pipe_read_buffer
    except AttributeError:
        buf = bytearray(ReadPipeTransport.max_size)
        loop._pipe_read_buffer = buf, memoryview(buf)
        return loop._pipe_read_buffer


class _PipeTransport:
    """What both pipe transports share: the pipe, its fd, the protocol, closing."""

    _pipe = None  # until _init_pipe(): a refused pipe leaves nothing to close

    def _init_pipe(self, loop, pipe, protocol, fd):
        self._extra["pipe"] = pipe
        self._loop = loop
        self._pipe = pipe
        self._fileno = fd
        self._protocol = protocol
        self._closing = False
        os.set_blocking(fd, False)

    def __repr__(self):
        info = [type(self).__name__]
        if self._pipe is None:
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={self._fileno}")
        if self._pipe is None or self._loop is None or self._loop.is_closed():
            info.append("open" if self._pipe is not None else "closed")
        else:
            info.extend(self._repr_state())
        return "<{}>".format(" ".join(info))

    def __del__(self, _warn=warnings.warn):
        if self._pipe is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._pipe.close()

    def set_protocol(self, protocol):
        self._protocol = protocol

    def get_protocol(self):
        return self._protocol

    def is_closing(self):
        return self._closing

    def _fatal_error(self, exc, message="Fatal error on pipe transport"):
        report_fatal_error(self, exc, message, self._quiet(exc))
        self._close(exc)

    def _schedule_connection_lost(self, exc):
        if self._loop.is_closed():
            # Nothing can run on a closed loop: the protocol is not told,
            # but the fd is not left open either.
            self._pipe.close()
            self._pipe = None
            return
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc):
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._pipe.close()
            self._pipe = None
            self._protocol = None
            self._loop = None


class ReadPipeTransport(_PipeTransport, ReadControl, transports.ReadTransport):
    """The reading end of a pipe as an asyncio.ReadTransport."""

    max_size = 256 * 1024  # the most one read() takes

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        super().__init__(extra)
        fd, _ = _pipe_fd(pipe, "Pipe transport is for pipes/sockets only.")
        self._init_pipe(loop, pipe, protocol, fd)
        self._init_read_control(fd)
        self._buf, self._view = _read_buffer(loop)
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(self._start_reading)  # invariant 2
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def _repr_state(self):
        return ["polling" if self._reading else "idle"]

    def _read_ready(self):
        try:
            n = os.readv(self._fileno, (self._buf,))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal_error(exc, "Fatal read error on pipe transport")
            return
        if n:
            self._protocol.data_received(bytes(self._view[:n]))
            return
        if self._loop.get_debug():
            logger.info("%r was closed by peer", self)
        self._closing = True
        self._stop_reading()
        self._loop.call_soon(self._protocol.eof_received)
        self._schedule_connection_lost(None)

    def close(self):
        if not self._closing:
            self._close(None)

    @staticmethod
    def _quiet(exc):
        return isinstance(exc, OSError) and exc.errno == errno.EIO  # invariant 3

    def _close(self, exc):
        self._closing = True
        self._stop_reading()
        self._schedule_connection_lost(exc)


class WritePipeTransport(_PipeTransport, WriteFlowControl, transports.WriteTransport):
    """The writing end of a pipe as an asyncio.WriteTransport."""

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        super().__init__(extra)
        fd, mode = _pipe_fd(pipe, "Pipe transport is only for pipes, sockets and character devices")
        self._init_pipe(loop, pipe, protocol, fd)
        self._init_flow_control()
        self._queue = collections.deque()  # what the kernel has not taken yet, in order
        self._queued = 0  # bytes in _queue
        self._conn_lost = 0
        self._writing = False  # the writer is installed
        self._watching_peer = False  # the reader trick (invariant 4)
        self._lost = False  # connection_lost() is scheduled or done (invariant 6)
        loop.call_soon(protocol.connection_made, self)
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            loop.call_soon(self._watch_peer)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def _repr_state(self):
        return ["polling" if self._writing else "idle", f"bufsize={self._queued}"]

    def _watch_peer(self):
        if self._pipe is not None and not self._closing:
            self._loop._watch(self._fileno, _READ, self._peer_gone, ())
            self._watching_peer = True

    def _unwatch(self):
        if self._watching_peer:
            self._watching_peer = False
            self._loop._unwatch(self._fileno, _READ)
        if self._writing:
            self._writing = False
            self._loop._unwatch(self._fileno, _WRITE)

    def _peer_gone(self):
        if self._loop.get_debug():
            logger.info("%r was closed by peer", self)
        self._close(BrokenPipeError() if self._queue else None)

    def get_write_buffer_size(self):
        return self._queued

    def write(self, data):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, "
                            f"not {type(data).__name__!r}")
        if isinstance(data, memoryview):
            data = data.cast("B") if data.format != "B" or data.ndim != 1 else data
        if not data:
            return
        if self._conn_lost or self._closing:
            if self._conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning("pipe closed by peer or os.write(pipe, data) raised exception.")
            self._conn_lost += 1
            return
        n = 0
        if not self._queue:
            try:
                n = os.write(self._fileno, data)
            except (BlockingIOError, InterruptedError):
                pass
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._conn_lost += 1
                self._fatal_error(exc, "Fatal write error on pipe transport")
                return
            if n == len(data):
                return
            self._loop._watch(self._fileno, _WRITE, self._write_ready, ())
            self._writing = True
        # Queued by reference when immutable (bytes), copied otherwise: the
        # caller may change a bytearray once write() returns (invariant 4).
        rest = memoryview(data)[n:] if n else data
        self._queue.append(rest if type(data) is bytes else bytes(rest))
        self._queued += len(data) - n
        self._maybe_pause_protocol()

    def _write_ready(self):
        queue = self._queue
        try:
            if len(queue) == 1:
                n = os.write(self._fileno, queue[0])
            else:
                n = os.writev(self._fileno, list(itertools.islice(queue, _IOV_MAX)))
        except (BlockingIOError, InterruptedError):
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            queue.clear()
            self._queued = 0
            self._conn_lost += 1
            self._fatal_error(exc, "Fatal write error on pipe transport")
            return
        self._queued -= n
        while n:
            head = queue[0]
            if n < len(head):
                queue[0] = memoryview(head)[n:]
                break
            n -= len(head)
            queue.popleft()
        if queue:
            return
        self._writing = False
        self._loop._unwatch(self._fileno, _WRITE)
        self._maybe_resume_protocol()  # may write again
        if self._closing and not self._queue:
            self._unwatch()
            self._lose(None, at_once=True)

    def can_write_eof(self):
        return True

    def write_eof(self):
        if self._closing:
            return
        self._closing = True
        if not self._queue:
            self._unwatch()
            self._lose(None)

    def close(self):
        if self._pipe is not None and not self._closing:
            self.write_eof()  # invariant 5

    def abort(self):
        self._close(None)

    @staticmethod
    def _quiet(exc):
        return isinstance(exc, OSError)  # the peer went away: connection_lost() says so

    def _close(self, exc=None):
        if self._lost:
            return
        self._closing = True
        self._queue.clear()
        self._queued = 0
        self._unwatch()
        self._lose(exc)

    def _lose(self, exc, at_once=False):
        self._lost = True
        if at_once:
            self._call_connection_lost(exc)
        else:
            self._schedule_connection_lost(exc)


class PipeMixin:
    """connect_read_pipe / connect_write_pipe (see the module docstring)."""

    async def connect_read_pipe(self, protocol_factory, pipe):
        """Register the read end of pipe in the loop; return (transport, protocol)."""
        protocol = protocol_factory()
        waiter = self.create_future()
        transport = ReadPipeTransport(self, pipe, protocol, waiter)
        return await self._pipe_connected(transport, protocol, waiter, pipe)

    async def connect_write_pipe(self, protocol_factory, pipe):
        """Register the write end of pipe in the loop; return (transport, protocol)."""
        protocol = protocol_factory()
        waiter = self.create_future()
        transport = WritePipeTransport(self, pipe, protocol, waiter)
        return await self._pipe_connected(transport, protocol, waiter, pipe)

    async def _pipe_connected(self, transport, protocol, waiter, pipe):
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        if self.get_debug():
            logger.debug("Pipe %r connected: (%r, %r)", pipe.fileno(), transport, protocol)
        return transport, protocol
