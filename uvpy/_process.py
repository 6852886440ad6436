"""Subprocesses on uvpy: the loop's subprocess_exec / subprocess_shell, so
that asyncio.create_subprocess_exec/_shell and asyncio.subprocess.Process
work unchanged.

Design, and why:

* Spawning is subprocess.Popen, that is CPython's _posixsubprocess. On
  Linux it spawns with vfork() and exec (no copy of the parent's page
  tables, so a 1 GiB parent spawns as fast as a small one) whenever the
  options allow it (no preexec_fn, user, group or extra_groups), and falls
  back to fork() otherwise. It implements every option asyncio passes
  through (cwd, env, start_new_session, process_group, pass_fds, close_fds,
  user, group, umask, ...) with the errors Python users know: a missing
  executable or a bad cwd raises from the constructor, so from the await.
* The transport is asyncio's own BaseSubprocessTransport (the stock loop's
  _UnixSubprocessTransport is the same class with the same _start()), so
  the order of events (pipe_connection_lost before process_exited, then
  connection_lost), close() killing a running child, _wait() and the pipe
  protocols are those of the running Python's asyncio. Its pipes are
  uvpy's pipe transports (_pipes), connected through connect_read_pipe /
  connect_write_pipe as asyncio connects them.
* A child's exit is watched with a pidfd (pidfd_open(2), Linux 5.3+) in
  the loop's reader, on either backend: the pidfd turns readable when the
  child exits, and only then is it reaped, with waitpid() on its own pid.
  Nothing global is touched: no SIGCHLD handler, no child watcher, no
  thread, no waitpid(-1) that could take another library's child. So it
  works from loops in any thread, with several loops in one process, and
  in a child after os.fork() (the parent's children are not the child's).
  Where pidfd_open() fails (an older kernel, a seccomp filter) a thread
  per child waits for it instead.

Invariants:

1. Every child spawned here is reaped exactly once: by its pidfd reader,
   by its waiting thread, by the reaper thread the loop's close() hands it
   to, or through its Popen object (poll()/wait()) before any of these,
   whose returncode is then reported. Nothing here leaves a zombie.
2. The exit is reported to the transport two loop iterations after the
   reader saw it (asyncio's child-watcher callback does the same), so
   output the pipes already hold is delivered first.
3. A status that somebody else took with waitpid() is reported as 255
   with asyncio's warning.
4. A pidfd is closed exactly once, after its reader is removed.
"""

from __future__ import annotations

import os
import subprocess
import threading
from asyncio import base_subprocess
from asyncio.log import logger

from . import _uvpy

__all__ = ("SubprocessTransport", "ProcessMixin")

_READ = _uvpy.READABLE


class SubprocessTransport(base_subprocess.BaseSubprocessTransport):
    """A child process as an asyncio.SubprocessTransport."""

    def _start(self, args, shell, stdin, stdout, stderr, bufsize, **kwargs):
        # Looked up on the module at each call, so that tests may patch it.
        self._proc = subprocess.Popen(
            args, shell=shell, stdin=stdin, stdout=stdout, stderr=stderr,
            universal_newlines=False, bufsize=bufsize, **kwargs)


def _reap(proc):
    """Reap proc (a Popen whose child has exited, or is about to) and return
    its returncode (invariants 1 and 3)."""
    if proc.returncode is not None:  # reaped through the Popen object
        return proc.returncode
    try:
        _, status = os.waitpid(proc.pid, 0)
    except ChildProcessError:
        if proc.returncode is not None:
            return proc.returncode
        logger.warning("child process pid %d exit status already read: "
                       " will report returncode 255", proc.pid)
        return 255
    proc.returncode = returncode = os.waitstatus_to_exitcode(status)
    return returncode


def _reap_in_thread(proc, then=None):
    def wait():
        returncode = _reap(proc)
        if then is not None:
            then(returncode)

    threading.Thread(target=wait, name=f"uvpy-waitpid-{proc.pid}", daemon=True).start()


def _format_pipe(fd):
    if fd == subprocess.PIPE:
        return "<pipe>"
    if fd == subprocess.STDOUT:
        return "<stdout>"
    return repr(fd)


def _check_text_args(bufsize, text, encoding, errors):
    if bufsize != 0:
        raise ValueError("bufsize must be 0")
    if text:
        raise ValueError("text must be False")
    if encoding is not None:
        raise ValueError("encoding must be None")
    if errors is not None:
        raise ValueError("errors must be None")


class ProcessMixin:
    """subprocess_exec / subprocess_shell (see the module docstring).

    The loop keeps ``_children``: pidfd -> transport, for each child whose
    pidfd reader is installed.
    """

    async def subprocess_shell(self, protocol_factory, cmd, *, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               universal_newlines=False, shell=True, bufsize=0,
                               encoding=None, errors=None, text=None, **kwargs):
        """Run cmd through the shell; return (transport, protocol)."""
        if not isinstance(cmd, (bytes, str)):
            raise ValueError("cmd must be a string")
        if universal_newlines:
            raise ValueError("universal_newlines must be False")
        if not shell:
            raise ValueError("shell must be True")
        _check_text_args(bufsize, text, encoding, errors)
        debug_log = f"run shell command {cmd!r}" if self.get_debug() else None
        return await self._spawn(protocol_factory, cmd, True, debug_log, stdin, stdout, stderr,
                                 bufsize, kwargs)

    async def subprocess_exec(self, protocol_factory, program, *args, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=False, shell=False, bufsize=0,
                              encoding=None, errors=None, text=None, **kwargs):
        """Run program with args; return (transport, protocol)."""
        if universal_newlines:
            raise ValueError("universal_newlines must be False")
        if shell:
            raise ValueError("shell must be False")
        _check_text_args(bufsize, text, encoding, errors)
        # The program, not its arguments: they may hold a password, or be long.
        debug_log = f"execute program {program!r}" if self.get_debug() else None
        return await self._spawn(protocol_factory, (program,) + args, False, debug_log, stdin,
                                 stdout, stderr, bufsize, kwargs)

    async def _spawn(self, protocol_factory, args, shell, debug_log, stdin, stdout, stderr,
                     bufsize, kwargs):
        protocol = protocol_factory()
        if debug_log is not None:
            self._log_subprocess(debug_log, stdin, stdout, stderr)
        transport = await self._make_subprocess_transport(
            protocol, args, shell, stdin, stdout, stderr, bufsize, **kwargs)
        if debug_log is not None:
            logger.info("%s: %r", debug_log, transport)
        return transport, protocol

    def _log_subprocess(self, msg, stdin, stdout, stderr):
        info = [msg]
        if stdin is not None:
            info.append(f"stdin={_format_pipe(stdin)}")
        if stdout is not None and stderr == subprocess.STDOUT:
            info.append(f"stdout=stderr={_format_pipe(stdout)}")
        else:
            if stdout is not None:
                info.append(f"stdout={_format_pipe(stdout)}")
            if stderr is not None:
                info.append(f"stderr={_format_pipe(stderr)}")
        logger.debug(" ".join(info))

    async def _make_subprocess_transport(self, protocol, args, shell, stdin, stdout, stderr,
                                         bufsize, extra=None, **kwargs):
        self._check_closed()
        waiter = self.create_future()
        transport = SubprocessTransport(self, protocol, args, shell, stdin, stdout, stderr,
                                        bufsize, waiter=waiter, extra=extra, **kwargs)
        self._watch_child(transport)
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transport.close()
            await transport._wait()
            raise
        return transport

    # -- exit watching --------------------------------------------------------------

    def _watch_child(self, transport):
        proc = transport._proc
        try:
            pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):  # no pidfd here: a thread waits instead
            _reap_in_thread(proc, lambda rc: self._exited_threadsafe(transport, rc))
            return
        self._children[pidfd] = transport
        self._watch(pidfd, _READ, self._child_exited, (pidfd,))

    def _child_exited(self, pidfd):
        transport = self._children.pop(pidfd)
        self._unwatch(pidfd, _READ)
        os.close(pidfd)
        returncode = _reap(transport._proc)
        self.call_soon(self.call_soon, transport._process_exited, returncode)  # invariant 2

    def _exited_threadsafe(self, transport, returncode):
        try:
            self.call_soon_threadsafe(self.call_soon, transport._process_exited, returncode)
        except RuntimeError:  # the loop closed first: the child is reaped all the same
            pass

    def _close_children(self):
        """At loop close: hand each watched child to a reaper thread."""
        children, self._children = self._children, {}
        for pidfd, transport in children.items():
            self._unwatch(pidfd, _READ)
            os.close(pidfd)
            proc = transport._proc
            if proc is not None and proc.returncode is None:
                _reap_in_thread(proc)
