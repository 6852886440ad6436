"""``python -m uvpy``: run an asyncio program on uvpy unchanged, or say what
uvpy can do on this machine.

    python -m uvpy run [--backend NAME] SCRIPT [ARGS...]
    python -m uvpy run [--backend NAME] -m MODULE [ARGS...]
    python -m uvpy [--backend NAME] -m MODULE [ARGS...]
    python -m uvpy serve [OPTIONS] MODULE:ATTR [ARGS...]
    python -m uvpy info

The program runs as ``python SCRIPT ARGS`` or ``python -m MODULE ARGS``
would run it, except that uvpy's event loop policy is asyncio's before its
first line runs, so ``asyncio.run()``, ``asyncio.Runner()`` and
``asyncio.new_event_loop()`` make uvpy loops (on NAME, else on the backend
UVPY_BACKEND names, else "auto").

Invariants, each the way ``python`` itself behaves:

1. The program sees ``sys.argv == [SCRIPT, *ARGS]`` (for a module, argv[0]
   is its file while it runs), ``__name__ == "__main__"``, and
   ``sys.modules["__main__"]`` is its own module (pickle, multiprocessing).
2. ``sys.path[0]`` is the script's directory, symbolic links resolved, or
   the current directory for ``-m`` (neither under ``python -P``).
3. The exit status is the program's: 0 when it returns, ``sys.exit(n)``'s,
   1 after an uncaught exception, whose traceback is printed without this
   module's and runpy's frames. KeyboardInterrupt and SystemExit pass
   through untouched (Python then exits as killed by SIGINT, or with n).
4. Errors of the command line itself (no script, an unknown backend, a
   script that can not be opened) exit 2 with a message and no traceback;
   a module that can not be found or a backend that can not run here,
   1.

``serve`` runs the coroutine function MODULE:ATTR (called with the string
ARGS) in supervised worker processes: see uvpy/_serve.py. It exits 0 once
stopped by SIGINT or SIGTERM (or when every worker finished), 1 when a
worker fails to start, 2 for a bad command line.

What is not carried over: a child process that multiprocessing starts
with "spawn" or "forkserver" is a fresh Python that imports the program as
``__mp_main__``, without uvpy's policy (a "fork" child keeps it).

``python -m uvpy.bench`` (uvpy/bench.py) runs the benchmarks.
"""

from __future__ import annotations

import os
import platform
import runpy
import sys
import sysconfig

import uvpy

PROG = "python -m uvpy"

USAGE = f"""\
usage: {PROG} run [--backend NAME] SCRIPT [ARGS...]
       {PROG} run [--backend NAME] -m MODULE [ARGS...]
       {PROG} [--backend NAME] -m MODULE [ARGS...]
       {PROG} serve [--workers N] [--bind ADDR]... [--graceful-timeout S]
             [--start-timeout S] [--heartbeat-timeout S] [--backend NAME]
             [--log-level LEVEL] MODULE:ATTR [ARGS...]
       {PROG} info

run      run an asyncio program on uvpy, as `python SCRIPT` / `python -m MODULE` would
serve    run the coroutine function MODULE:ATTR in N supervised worker processes
         (`{PROG} serve --help`)
info     uvpy's version, the Python build, the backends that can run here and why
         io_uring can not where it can not (else its setup and completion features),
         the executor's size, the TLS record path
--backend NAME   auto, libuv or io_uring (default: UVPY_BACKEND, else auto)"""


class _UsageError(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if not args or args[0] in ("-h", "--help"):
            print(USAGE, file=sys.stdout if args else sys.stderr)
            return 0 if args else 2
        if args[0] == "info":
            if len(args) > 1:
                raise _UsageError(f"info takes no arguments, not {args[1]!r}")
            print(info())
            return 0
        if args[0] == "serve":
            return _serve(args[1:])
        command = args[0] == "run"
        if command:
            args = args[1:]
        backend, args = _take_backend(args)
        if not command and args[:1] != ["-m"]:
            raise _UsageError(f"unknown command {args[0]!r}" if args else "-m MODULE or run SCRIPT needed")
        if not args:
            raise _UsageError("run needs a SCRIPT, or -m MODULE")
        if args[0] == "-m":
            if len(args) < 2:
                raise _UsageError("-m needs a MODULE")
            return _run(backend, module=args[1], args=args[2:])
        return _run(backend, script=args[0], args=args[1:])
    except _UsageError as exc:
        print(f"{PROG}: {exc}\n{USAGE}", file=sys.stderr)
        return 2


def _take_backend(args: list[str]) -> tuple[str | None, list[str]]:
    if args and args[0] == "--backend":
        if len(args) < 2:
            raise _UsageError("--backend needs a NAME")
        return args[1], args[2:]
    if args and args[0].startswith("--backend="):
        return args[0].partition("=")[2], args[1:]
    return None, args


def _run(backend: str | None, *, script: str | None = None, module: str | None = None,
         args: list[str]) -> int:
    try:
        uvpy.new_event_loop(backend).close()
    except ValueError as exc:  # a name that is no backend (invariant 4)
        raise _UsageError(str(exc)) from None
    except OSError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    # Not uvpy.install(), deprecated from 3.14: an unchanged program reaches
    # the loop through the policy, and asking for uvpy is asking for this one.
    uvpy._install(backend)

    if script is not None:
        try:
            os.stat(script)
        except OSError as exc:
            print(f"{PROG}: can't open file {os.path.abspath(script)!r}: [Errno {exc.errno}] {exc.strerror}",
                  file=sys.stderr)
            return 2
        if not sys.flags.safe_path:  # invariant 2
            sys.path[0] = (os.path.dirname(os.path.realpath(script)) if os.path.isfile(script)
                           else os.path.abspath(script))
        sys.argv[:] = [script, *args]
        if os.path.isfile(script):
            target = lambda: _exec_script(script)  # noqa: E731
        else:  # a directory or zip file with a __main__.py
            target = lambda: runpy.run_path(script, run_name="__main__")  # noqa: E731
    else:
        # sys.path[0] is already the current directory: `python -m uvpy` put it there.
        sys.argv[:] = ["-m", *args]
        target = lambda: runpy.run_module(module, run_name="__main__", alter_sys=True)  # noqa: E731

    try:
        target()
    except (SystemExit, KeyboardInterrupt):
        raise
    except ImportError as exc:
        if module is not None and _raised_in(exc, _RUNPY):
            # runpy could not find it: no traceback, as `python -m`.
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 1
        _report(exc)
        return 1
    except BaseException as exc:
        _report(exc)
        return 1
    return 0


def seconds(text: str) -> float | None:
    """argparse type of the serve timeouts: a number, or "none" for no limit."""
    return None if text.strip().lower() == "none" else float(text)


def _serve(argv: list[str]) -> int:
    import argparse
    import logging

    parser = argparse.ArgumentParser(
        prog=f"{PROG} serve",
        description="Run the coroutine function MODULE:ATTR in worker processes, each on its "
                    "own uvpy loop, and supervise them: a crashed worker is restarted, "
                    "SIGINT/SIGTERM stop them gracefully, SIGHUP replaces them one by one.")
    parser.add_argument("target", metavar="MODULE:ATTR",
                        help="the coroutine function, imported in each worker (the current "
                             "directory is on sys.path)")
    parser.add_argument("args", metavar="ARGS", nargs=argparse.REMAINDER,
                        help="strings passed to it as positional arguments")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="worker processes (default: the CPUs this process may use)")
    parser.add_argument("--bind", action="append", default=[], metavar="ADDR",
                        help="HOST:PORT, [IPV6]:PORT or unix:PATH the supervisor listens on; "
                             "workers get the sockets from uvpy.inherited_sockets() (repeatable; "
                             "without it, main binds its own with reuse_port=True)")
    parser.add_argument("--backlog", type=int, default=2048, metavar="N",
                        help="listen backlog of the --bind sockets (default: 2048)")
    parser.add_argument("--graceful-timeout", type=seconds, default=30.0, metavar="S",
                        help="seconds a stopping worker waits for its connections, or none "
                             "(default: 30)")
    parser.add_argument("--start-timeout", type=seconds, default=60.0, metavar="S",
                        help="seconds a worker may take to be up before it is killed as failed, "
                             "or none (default: 60)")
    parser.add_argument("--heartbeat-timeout", type=seconds, default=30.0, metavar="S",
                        help="seconds a worker's event loop may stay blocked before the worker is "
                             "killed and restarted, or none (default: 30)")
    parser.add_argument("--backend", default=None, metavar="NAME",
                        help="auto, libuv or io_uring (default: UVPY_BACKEND, else auto)")
    parser.add_argument("--log-level", default="info", metavar="LEVEL",
                        choices=("debug", "info", "warning", "error"),
                        help="the supervisor's messages shown on stderr (default: info)")
    ns = parser.parse_args(argv)
    module, sep, attr = ns.target.partition(":")
    if not (module and sep and attr):
        parser.error(f"MODULE:ATTR needed, not {ns.target!r}")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[uvpy serve %(process)d] %(message)s"))
    log = logging.getLogger("uvpy.serve")
    log.addHandler(handler)
    log.setLevel(ns.log_level.upper())
    log.propagate = False
    from . import _serve

    # Only the checks of the arguments (the backend's name among them) are
    # usage errors: a ValueError from the supervisor later is a fault, with
    # its traceback.
    try:
        plan = _serve._setup(ns.target, tuple(ns.args), ns.workers, ns.bind, ns.backlog,
                             ns.graceful_timeout, ns.start_timeout, ns.heartbeat_timeout,
                             ns.backend)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    except OSError as exc:
        print(f"{PROG} serve: {exc}", file=sys.stderr)
        return 1
    try:
        _serve._run(*plan)
    except (uvpy.ServeError, OSError) as exc:
        print(f"{PROG} serve: {exc}", file=sys.stderr)
        return 1
    return 0


# Frames by their code's file name: runpy's is "<frozen runpy>" where it is frozen.
_HERE = main.__code__.co_filename
_RUNPY = runpy.run_path.__code__.co_filename


def _exec_script(path: str) -> None:
    """Run a script file the way `python path` does: in a fresh module that
    becomes (and stays) sys.modules["__main__"], with an absolute __file__
    and the same module attributes (runpy.run_path differs: a relative
    __file__, no __loader__, a __main__ restored when it returns)."""
    import importlib.machinery
    import io
    import types

    path = os.path.abspath(path)
    module = types.ModuleType("__main__")
    module.__dict__.update(__file__=path, __cached__=None, __package__=None, __spec__=None,
                           __loader__=importlib.machinery.SourceFileLoader("__main__", path),
                           __builtins__=sys.modules["builtins"])
    with io.open_code(path) as f:
        code = compile(f.read(), path, "exec", dont_inherit=True)
    sys.modules["__main__"] = module
    exec(code, module.__dict__)


def _raised_in(exc: BaseException, filename: str) -> bool:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_filename == filename


def _report(exc: BaseException) -> None:
    """Print an uncaught exception as Python would (invariant 3)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in (_HERE, _RUNPY):
        tb = tb.tb_next
    # The hook prints the exception's own traceback where it has one.
    sys.excepthook(type(exc), exc.with_traceback(tb), tb)


def info() -> str:
    lines = [f"uvpy {uvpy.__version__} ({os.path.dirname(os.path.abspath(uvpy.__file__))})"]
    lines.append(f"Python {platform.python_version()} ({platform.python_implementation()}, {_python_build()})")
    lines.append(f"platform: {platform.system()} {platform.release()} {platform.machine()}")

    lines.append("backends:")
    status = uvpy.backends()
    for name, why in status.items():
        if why is None:
            lines.append(f"  {name:9} can run here")
        else:
            lines.append(f"  {name:9} can not run here: {why}{_uring_sysctl() if name == 'io_uring' else ''}")
    if status.get("io_uring") is None:
        lines.append(f"  io_uring  runs with {_uring_settings()}")
    env = os.environ.get("UVPY_BACKEND", "")
    try:
        loop = uvpy.new_event_loop()
    except (OSError, ValueError) as exc:
        lines.append(f"  default   none: {exc}")
    else:
        loop.close()
        source = f"UVPY_BACKEND={env}" if env else "auto"
        lines.append(f"  default   {loop.backend} ({source})")

    from . import _uvpy

    blocking = uvpy.executor_metrics()["blocking"]["max_threads"]
    lines.append(f"executor: {_uvpy.executor_workers()} native workers; "
                 f"run_in_executor(None, ...) up to {blocking} threads")
    tls = _uvpy._tls_status()
    lines.append("TLS records: " + ("native path" if tls == "native" else f"Python path ({tls})"))
    return "\n".join(lines)


def _uring_settings() -> str:
    """An io_uring loop's settings in effect (UVPY_URING_* applied)."""
    try:
        loop = uvpy.new_event_loop("io_uring")
    except (OSError, ValueError) as exc:
        return f"none: {exc}"
    try:
        info = loop.backend_info()
    finally:
        loop.close()
    del info["backend"]
    return ", ".join(f"{k}={v}" for k, v in info.items())


def _python_build() -> str:
    if not sysconfig.get_config_var("Py_GIL_DISABLED"):
        return "with the GIL"
    enabled = getattr(sys, "_is_gil_enabled", lambda: True)()
    return "free-threaded, the GIL " + ("re-enabled at run time" if enabled else "disabled")


def _uring_sysctl() -> str:
    """Why the kernel refuses io_uring where a sysctl says so (Linux 6.6+)."""
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            value = f.read().strip()
    except OSError:
        return ""
    meaning = {"1": "for unprivileged processes outside kernel.io_uring_group",
               "2": "for every process"}.get(value)
    return f" (kernel.io_uring_disabled={value}: io_uring is off {meaning})" if meaning else ""


if __name__ == "__main__":
    sys.exit(main())
