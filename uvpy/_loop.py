"""uvpy.Loop: asyncio's event loop API over the native reactor.

The native base (``_uvpy.LoopCore``) owns the reactor and the hot paths:
call_soon, call_later, call_at, call_soon_threadsafe, time, the handles and
the run loop itself. This module adds what asyncio defines as policy around
them, with asyncio's documented behaviour and error messages: running and
stopping, futures and tasks, exception handlers, debug mode, async
generators, the default executor, fd watchers and signal handlers.

The sock_* coroutines come from _sock.SockMixin, TCP (create_connection,
create_server, connect_accepted_socket) from _tcp.TCPMixin, TLS (their
ssl= and start_tls) from _tls.TLSMixin, Unix stream sockets from
_unix.UnixMixin, datagram endpoints from _udp.DatagramMixin and sendfile /
sock_sendfile from _sendfile.SendfileMixin, pipes (connect_read_pipe,
connect_write_pipe) from _pipes.PipeMixin and subprocesses
(subprocess_exec, subprocess_shell) from _process.ProcessMixin.

fd watchers follow asyncio's selector loop: a watcher registered with a
file object (a socket) remembers it, so remove_reader/remove_writer still
find the watcher after that object was closed (its fileno() is then -1),
as selectors' key lookup does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import os
import selectors
import signal
import socket
import sys
import threading
import traceback
import warnings
import weakref
from asyncio import base_events, coroutines, events, format_helpers, futures, tasks
from asyncio.log import logger

from . import _executor, _options, _uvpy
from ._sendfile import SendfileMixin
from ._sock import SockMixin
from ._tcp import TCPMixin
from ._tls import TLSMixin
from ._pipes import PipeMixin
from ._process import ProcessMixin
from ._udp import DatagramMixin
from ._unix import UnixMixin

__all__ = ("Loop",)

_READ = _uvpy.READABLE
_WRITE = _uvpy.WRITABLE
# From 3.12 asyncio runs a custom exception handler in the context of the
# task, future or handle that failed (call_exception_handler).
_HANDLER_IN_CONTEXT = sys.version_info >= (3, 12)
# asyncio.iscoroutinefunction warns from 3.14; asyncio itself then calls the
# silent one.
_iscoroutinefunction = getattr(coroutines, "_iscoroutinefunction", coroutines.iscoroutinefunction)


def _run_until_complete_cb(fut):
    if not fut.cancelled():
        exc = fut.exception()
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            # Let the exception propagate out of run_forever instead.
            return
    futures._get_loop(fut).stop()


def _fileobj_to_fd(fileobj):
    # selectors' own conversion, so errors match the stock loop's.
    return selectors._fileobj_to_fd(fileobj)


class Loop(SockMixin, SendfileMixin, UnixMixin, DatagramMixin, TCPMixin, TLSMixin,
           PipeMixin, ProcessMixin, _uvpy.LoopCore,
           asyncio.AbstractEventLoop):
    """An asyncio event loop on uvpy's native reactor.

    ``backend`` picks how the reactor waits for I/O: ``"libuv"`` (portable),
    ``"io_uring"`` (Linux 5.13+; OSError saying why where it cannot run) or
    ``"auto"`` (the recommended one: libuv for now, as io_uring measured no
    faster). ``None`` means the UVPY_BACKEND environment variable, else
    ``"auto"``. ``uring`` (a ``uvpy.UringOptions``) sets the io_uring
    backend's switches; ``None`` means the UVPY_URING_* environment
    variables (uvpy/_options.py). The native base reads both when the
    object is created; ``self.backend`` names the backend in use and
    ``self.backend_info()`` the settings it runs with.
    """

    def __new__(cls, *args, uring=None, **kwargs):
        # The native base makes the backend, so the options are resolved
        # before it runs; __init__ gets the arguments as given.
        return super().__new__(cls, *args, uring=_options.resolve(uring), **kwargs)

    def __init__(self, backend=None, *, uring=None):
        self._default_executor = None
        self._executor_shutdown_called = False
        self._exception_handler = None
        self._task_factory = None
        self._asyncgens = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self._coroutine_origin_tracking_enabled = False
        self._coroutine_origin_tracking_saved_depth = None
        self._signal_handlers = {}
        self._ssock = self._csock = None
        # (fd, which) -> the file object a watcher was registered with, for
        # the watchers registered with one (not with a plain int).
        self._io_fileobjs = {}
        self._children = {}  # pidfd -> SubprocessTransport (_process)
        self._servers = weakref.WeakSet()  # every Server of this loop (_server, invariant 6)
        self._on_serving = None
        self.set_debug(coroutines._is_debug_mode())
        # CPython's C Task and Future look up loop.call_soon on every step
        # and every done-callback; a bound method cached in the instance
        # dict saves allocating a new one each time. Skipped when a subclass
        # overrides call_soon, so the override still wins.
        if type(self).call_soon is _uvpy.LoopCore.call_soon:
            self.call_soon = self.call_soon

    def __repr__(self):
        return (
            f"<{type(self).__name__} running={self.is_running()} "
            f"closed={self.is_closed()} debug={self.get_debug()} backend={self.backend}>"
        )

    def __del__(self, _warn=warnings.warn):
        if not self.is_closed():
            _warn(f"unclosed event loop {self!r}", ResourceWarning, source=self)
            if not self.is_running():
                self.close()

    # -- checks (asyncio's messages) -----------------------------------------

    def _check_closed(self):
        if self.is_closed():
            raise RuntimeError("Event loop is closed")

    def _check_running(self):
        if self.is_running():
            raise RuntimeError("This event loop is already running")
        if events._get_running_loop() is not None:
            raise RuntimeError("Cannot run the event loop while another loop is running")

    def _check_thread(self):
        thread_id = self._thread_id
        if thread_id is not None and thread_id != threading.get_ident():
            raise RuntimeError(
                "Non-thread-safe operation invoked on an event loop other than the current one"
            )

    def _check_callback(self, callback, method):
        if coroutines.iscoroutine(callback) or _iscoroutinefunction(callback):
            raise TypeError(f"coroutines cannot be used with {method}()")
        if not callable(callback):
            raise TypeError(f"a callable object was expected by {method}(), got {callback!r}")

    # -- running ---------------------------------------------------------------

    def run_forever(self):
        """Run until stop() is called."""
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self.get_debug())
        old_agen_hooks = sys.get_asyncgen_hooks()
        old_wakeup_fd = self._install_signal_wakeup()
        try:
            sys.set_asyncgen_hooks(
                firstiter=self._asyncgen_firstiter_hook,
                finalizer=self._asyncgen_finalizer_hook,
            )
            events._set_running_loop(self)
            self._run_forever_native()
        finally:
            events._set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            sys.set_asyncgen_hooks(*old_agen_hooks)
            self._restore_signal_wakeup(old_wakeup_fd)

    def run_until_complete(self, future):
        """Run until the future is done; return its result or raise its exception."""
        self._check_closed()
        self._check_running()
        new_task = not futures.isfuture(future)
        future = tasks.ensure_future(future, loop=self)
        if new_task:
            # The caller never sees this task; failures surface through us.
            future._log_destroy_pending = False
        future.add_done_callback(_run_until_complete_cb)
        try:
            self.run_forever()
        except BaseException:
            if new_task and future.done() and not future.cancelled():
                future.exception()  # consumed: the caller gets it raised
            raise
        finally:
            future.remove_done_callback(_run_until_complete_cb)
        if not future.done():
            raise RuntimeError("Event loop stopped before Future completed.")
        return future.result()

    def close(self):
        """Close the loop: drop pending callbacks, shut the executor down (no wait)."""
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        if self.get_debug():
            logger.debug("Close %r", self)
        for sig in list(self._signal_handlers):
            self.remove_signal_handler(sig)
        self._close_signal_pipe()
        self._close_children()
        self._close_native()
        self._io_fileobjs.clear()
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is not None:
            self._default_executor = None
            executor.shutdown(wait=False)

    def _timer_handle_cancelled(self, handle):
        # asyncio.TimerHandle.cancel() notifies its loop; an asyncio.TimerHandle
        # made by hand with this loop is in no heap of ours: nothing to clean.
        pass

    # -- debug -------------------------------------------------------------------

    def set_debug(self, enabled):
        self._set_debug_flag(enabled)
        if self.is_running():
            self.call_soon_threadsafe(self._set_coroutine_origin_tracking, enabled)

    def _set_coroutine_origin_tracking(self, enabled):
        if bool(enabled) == bool(self._coroutine_origin_tracking_enabled):
            return
        if enabled:
            self._coroutine_origin_tracking_saved_depth = sys.get_coroutine_origin_tracking_depth()
            sys.set_coroutine_origin_tracking_depth(asyncio.constants.DEBUG_STACK_DEPTH)
        else:
            sys.set_coroutine_origin_tracking_depth(self._coroutine_origin_tracking_saved_depth)
        self._coroutine_origin_tracking_enabled = enabled

    # -- introspection -------------------------------------------------------------

    def stats(self):
        """A snapshot of the loop's own counters, cheap enough to take every
        second (docs/loop.md, "Stats and the watchdog"). Counters only grow;
        the rest are sizes at the moment of the call. Call it on the loop's
        thread (from another, through run_coroutine_threadsafe)."""
        stats = self._stats()
        stats["backend"] = self.backend
        transports = {}
        for ref in list(self._transports.values()):
            transport = ref()
            if transport is not None and not transport.is_closing():
                kind = type(transport).__name__
                transports[kind] = transports.get(kind, 0) + 1
        stats["transports"] = transports
        # The native executor, if anything started it (stats() never does).
        stats["executor"] = _uvpy._executor_snapshot()
        return stats

    # -- futures and tasks -------------------------------------------------------

    def create_future(self):
        return futures.Future(loop=self)

    # asyncio's own: its signature and what it passes a task factory change
    # between versions (name and context on 3.11, eager_start and any other
    # keyword from 3.13), and it needs no more of a loop than _check_closed()
    # and _task_factory.
    create_task = base_events.BaseEventLoop.create_task

    def set_task_factory(self, factory):
        if factory is not None and not callable(factory):
            raise TypeError("task factory must be a callable or None")
        self._task_factory = factory

    def get_task_factory(self):
        return self._task_factory

    # -- exception handling --------------------------------------------------------

    def get_exception_handler(self):
        return self._exception_handler

    def set_exception_handler(self, handler):
        if handler is not None and not callable(handler):
            raise TypeError(f"A callable object or None is expected, got {handler!r}")
        self._exception_handler = handler

    def default_exception_handler(self, context):
        """Log the context at ERROR level on the "asyncio" logger, as asyncio does."""
        message = context.get("message") or "Unhandled exception in event loop"
        exception = context.get("exception")
        exc_info = (type(exception), exception, exception.__traceback__) if exception else False
        current = self._current_handle
        if "source_traceback" not in context and current is not None and current._source_traceback:
            context["handle_traceback"] = current._source_traceback
        lines = [message]
        for key in sorted(context):
            if key in {"message", "exception"}:
                continue
            value = context[key]
            if key == "source_traceback":
                tb = "".join(traceback.format_list(value))
                value = "Object created at (most recent call last):\n" + tb.rstrip()
            elif key == "handle_traceback":
                tb = "".join(traceback.format_list(value))
                value = "Handle created at (most recent call last):\n" + tb.rstrip()
            else:
                value = repr(value)
            lines.append(f"{key}: {value}")
        logger.error("\n".join(lines), exc_info=exc_info)

    def call_exception_handler(self, context):
        if self._exception_handler is None:
            try:
                self.default_exception_handler(context)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                logger.error("Exception in default exception handler", exc_info=True)
            return
        try:
            ctx = None
            if _HANDLER_IN_CONTEXT:
                # The context of the task, future or handle that failed, as
                # asyncio looks it up.
                thing = context.get("task")
                if thing is None:
                    thing = context.get("future")
                if thing is None:
                    thing = context.get("handle")
                if thing is not None and hasattr(thing, "get_context"):
                    ctx = thing.get_context()
            if ctx is not None and hasattr(ctx, "run"):
                ctx.run(self._exception_handler, self, context)
            else:
                self._exception_handler(self, context)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            try:
                self.default_exception_handler(
                    {
                        "message": "Unhandled error in exception handler",
                        "exception": exc,
                        "context": context,
                    }
                )
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                logger.error(
                    "Exception in default exception handler while handling an unexpected "
                    "error in custom exception handler",
                    exc_info=True,
                )

    # -- async generators -------------------------------------------------------------

    def _asyncgen_firstiter_hook(self, agen):
        if self._asyncgens_shutdown_called:
            warnings.warn(
                f"asynchronous generator {agen!r} was scheduled after "
                f"loop.shutdown_asyncgens() call",
                ResourceWarning,
                source=self,
            )
        self._asyncgens.add(agen)

    def _asyncgen_finalizer_hook(self, agen):
        self._asyncgens.discard(agen)
        if not self.is_closed():
            self.call_soon_threadsafe(self.create_task, agen.aclose())

    async def shutdown_asyncgens(self):
        """Close every async generator still being iterated on this loop."""
        self._asyncgens_shutdown_called = True
        if not len(self._asyncgens):
            return
        closing = list(self._asyncgens)
        self._asyncgens.clear()
        results = await tasks.gather(*[ag.aclose() for ag in closing], return_exceptions=True)
        for result, agen in zip(results, closing):
            if isinstance(result, Exception):
                self.call_exception_handler(
                    {
                        "message": f"an error occurred during closing of "
                        f"asynchronous generator {agen!r}",
                        "exception": result,
                        "asyncgen": agen,
                    }
                )

    # -- executor -------------------------------------------------------------------

    def run_in_executor(self, executor, func, *args):
        """Run func(*args) in executor; None means uvpy's native executor.

        The native default resolves the returned asyncio future straight from
        the worker pool's completion port (no concurrent.futures layer).
        """
        self._check_closed()
        if self.get_debug():
            self._check_callback(func, "run_in_executor")
        if executor is None:
            if self._executor_shutdown_called:
                raise RuntimeError("Executor shutdown has been called")
            executor = self._default_executor
            if executor is None:
                return _executor._submit_from_loop(self, func, args)
        return futures.wrap_future(executor.submit(func, *args), loop=self)

    def set_default_executor(self, executor):
        if not isinstance(executor, concurrent.futures.ThreadPoolExecutor):
            raise TypeError("executor must be ThreadPoolExecutor instance")
        self._default_executor = executor

    async def shutdown_default_executor(self, timeout=None):
        """Wait for the default executor's work to finish and shut it down.

        With the native default, this waits for this loop's work in flight
        (the worker pool itself is shared by every loop and lives on).
        """
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is None:
            pending = self._exec_pending()
            if pending:
                await tasks.wait(pending, timeout=timeout)
            return
        future = self.create_future()

        def shutdown():
            try:
                executor.shutdown(wait=True)
                if not self.is_closed():
                    self.call_soon_threadsafe(futures._set_result_unless_cancelled, future, None)
            except Exception as ex:
                if not self.is_closed():
                    self.call_soon_threadsafe(future.set_exception, ex)

        thread = threading.Thread(target=shutdown, name="uvpy-executor-shutdown")
        thread.start()
        try:
            if timeout is None:
                await future
            else:
                await tasks.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            warnings.warn(
                "The executor did not finishing joining its threads within "
                f"{timeout} seconds.",
                RuntimeWarning,
                stacklevel=2,
            )
            executor.shutdown(wait=False)
        else:
            thread.join()

    # -- DNS (off the loop thread) ----------------------------------------------------

    # DNS can block for seconds: it gets its own small thread pool rather
    # than occupying the native workers meant for CPU-bound work.

    async def getaddrinfo(self, host, port, *, family=0, type=0, proto=0, flags=0):
        return await self.run_in_executor(
            _dns_pool(), socket.getaddrinfo, host, port, family, type, proto, flags
        )

    async def getnameinfo(self, sockaddr, flags=0):
        return await self.run_in_executor(_dns_pool(), socket.getnameinfo, sockaddr, flags)

    # -- fd watchers ------------------------------------------------------------------

    def _watch(self, fileobj, which, callback, args, kind=0):
        self._check_closed()
        fd = self._fd_of(fileobj)
        handle = _uvpy.Handle(callback, args, self, None)
        old = self._io_set(fd, which, handle, kind)
        if old is not None:
            old.cancel()
        fileobjs = self._io_fileobjs
        if type(fileobj) is not int:
            fileobjs[fd, which] = fileobj
        elif fileobjs:
            fileobjs.pop((fd, which), None)
        return handle

    def _unwatch(self, fileobj, which):
        if self.is_closed():
            return False
        fd = self._fd_of(fileobj)
        if self._io_fileobjs:
            self._io_fileobjs.pop((fd, which), None)
        old = self._io_clear(fd, which)
        if old is None:
            return False
        old.cancel()
        return True

    def _fd_of(self, fileobj):
        """fileobj's fd; for a closed file object, the fd it was watched with."""
        try:
            return _fileobj_to_fd(fileobj)
        except ValueError:
            # selectors' _fileobj_lookup: an object closed after it was
            # registered still names its registration.
            for (fd, _), obj in self._io_fileobjs.items():
                if obj is fileobj:
                    return fd
            raise

    def add_reader(self, fd, callback, *args):
        """Call callback(*args) whenever fd is readable."""
        self._ensure_fd_no_transport(fd)
        self._watch(fd, _READ, callback, args)

    def remove_reader(self, fd):
        self._ensure_fd_no_transport(fd)
        return self._unwatch(fd, _READ)

    def add_writer(self, fd, callback, *args):
        """Call callback(*args) whenever fd is writable."""
        self._ensure_fd_no_transport(fd)
        self._watch(fd, _WRITE, callback, args)

    def remove_writer(self, fd):
        self._ensure_fd_no_transport(fd)
        return self._unwatch(fd, _WRITE)

    # -- signals ----------------------------------------------------------------------
    #
    # Python's C-level signal handler writes the signal number to the wakeup
    # fd; our end of that socketpair is an ordinary reader on the loop, so a
    # signal interrupts a blocked poll. Handlers added with
    # add_signal_handler() run as loop callbacks; Python-level handlers
    # (signal.signal, e.g. asyncio.Runner's SIGINT handler) run when the
    # loop checks for signals after each poll.

    def _ensure_signal_pipe(self):
        if self._ssock is None:
            self._ssock, self._csock = socket.socketpair()
            self._ssock.setblocking(False)
            self._csock.setblocking(False)
            self.add_reader(self._ssock.fileno(), self._read_signal_pipe)
        return self._csock.fileno()

    def _close_signal_pipe(self):
        if self._ssock is None:
            return
        self.remove_reader(self._ssock.fileno())
        self._ssock.close()
        self._csock.close()
        self._ssock = self._csock = None

    def _install_signal_wakeup(self):
        if threading.current_thread() is not threading.main_thread():
            return None
        fd = self._ensure_signal_pipe()
        return signal.set_wakeup_fd(fd, warn_on_full_buffer=False)

    def _restore_signal_wakeup(self, old_fd):
        if old_fd is None:
            return
        if self._signal_handlers and not self.is_closed():
            return  # add_signal_handler() keeps our fd installed
        try:
            signal.set_wakeup_fd(old_fd)
        except (ValueError, OSError) as exc:
            logger.info("set_wakeup_fd(%s) failed: %s", old_fd, exc)

    def _read_signal_pipe(self):
        while True:
            try:
                data = self._ssock.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                return
            for signum in data:
                handle = self._signal_handlers.get(signum)
                if handle is None:
                    continue
                if handle.cancelled():
                    self.remove_signal_handler(signum)
                else:
                    self._call_handle(handle)

    def _check_signal(self, sig):
        if not isinstance(sig, int):
            raise TypeError(f"sig must be an int, not {sig!r}")
        if sig not in signal.valid_signals():
            raise ValueError(f"invalid signal number {sig}")

    def add_signal_handler(self, sig, callback, *args):
        """Run callback(*args) on the loop when signal sig arrives (main thread only)."""
        if coroutines.iscoroutine(callback) or _iscoroutinefunction(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        self._check_signal(sig)
        self._check_closed()
        try:
            # Raises ValueError outside the main thread, before anything changes.
            signal.set_wakeup_fd(self._ensure_signal_pipe(), warn_on_full_buffer=False)
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc))
        handle = _uvpy.Handle(callback, args, self, None)
        self._signal_handlers[sig] = handle
        try:
            signal.signal(sig, _sighandler_noop)
            signal.siginterrupt(sig, False)
        except OSError as exc:
            del self._signal_handlers[sig]
            if not self._signal_handlers:
                try:
                    signal.set_wakeup_fd(-1)
                except (ValueError, OSError) as nexc:
                    logger.info("set_wakeup_fd(-1) failed: %s", nexc)
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig} cannot be caught")
            raise

    def remove_signal_handler(self, sig):
        """Remove the handler for sig; return whether one was installed."""
        self._check_signal(sig)
        try:
            del self._signal_handlers[sig]
        except KeyError:
            return False
        handler = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(sig, handler)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig} cannot be caught")
            raise
        if not self._signal_handlers and not self.is_running():
            try:
                signal.set_wakeup_fd(-1)
            except (ValueError, OSError) as exc:
                logger.info("set_wakeup_fd(-1) failed: %s", exc)
        return True


_DNS_POOL = None
_DNS_POOL_LOCK = threading.Lock()


def _dns_pool():
    global _DNS_POOL
    with _DNS_POOL_LOCK:
        if _DNS_POOL is None:
            _DNS_POOL = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="uvpy-dns")
        return _DNS_POOL


def _sighandler_noop(signum, frame):
    """Python-level no-op: the wakeup fd carries the signal to the loop."""


# -- hooks the native layer formats and logs through ------------------------------


def _extract_stack():
    return format_helpers.extract_stack(sys._getframe(1))


def _handle_repr(handle):
    info = [type(handle).__name__]
    if handle.cancelled():
        info.append("cancelled")
    if isinstance(handle, _uvpy.TimerHandle):
        info.append(f"when={handle.when()}")
    if handle._callback is not None and not handle.cancelled():
        info.append(format_helpers._format_callback_source(handle._callback, handle._args))
    tb = handle._source_traceback
    if tb:
        frame = tb[-1]
        info.append(f"created at {frame[0]}:{frame[1]}")
    return "<{}>".format(" ".join(info))


def _callback_repr(callback, args):
    return format_helpers._format_callback_source(callback, args)


def _slow_callback(handle, seconds):
    logger.warning("Executing %s took %.3f seconds", base_events._format_handle(handle), seconds)


_uvpy._set_hooks(_extract_stack, _handle_repr, _callback_repr, _slow_callback)
