"""``python -m uvpy run SCRIPT`` / ``python -m uvpy -m MODULE`` / ``python -m
uvpy info`` (uvpy/__main__.py), each in a subprocess.

The oracle is ``python SCRIPT`` / ``python -m MODULE`` on the same file: what
the program sees (argv, __name__, __file__, sys.path[0], its __main__), its
exit status and its traceback must be the same; only its event loops differ,
uvpy's under ``python -m uvpy``, asyncio's own under plain python.

These tests take no loop fixture: the loops are the child's.
"""

import json
import os
import signal
import subprocess
import sys

import pytest

import uvpy
from conftest import NO_URING, needs_x86_64
from uvpy import _uvpy

PROBE = """
import asyncio
import json
import sys

import __main__


async def main():
    loop = asyncio.get_running_loop()
    return [type(loop).__name__, getattr(loop, "backend", None)]

loop = asyncio.new_event_loop()
new_loop = type(loop).__name__
loop.close()
print(json.dumps({
    "argv": sys.argv,
    "name": __name__,
    "file": __file__,
    "path0": sys.path[0],
    "main_is_this_module": __main__.__dict__ is globals(),
    "asyncio_run": asyncio.run(main()),
    "new_event_loop": new_loop,
}))
action = sys.argv[1] if len(sys.argv) > 1 else ""
if action == "exit":
    sys.exit(int(sys.argv[2]))
if action == "raise":
    def fail():
        raise RuntimeError("raised by the program")
    fail()
if action == "interrupt":
    raise KeyboardInterrupt
"""


def default_backend():
    loop = uvpy.new_event_loop()
    try:
        return loop.backend
    finally:
        loop.close()


def python(*args, cwd, env=None):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env=env)


def uvpy_cli(*args, cwd, env=None):
    return python("-m", "uvpy", *args, cwd=cwd, env=env)


def probe_of(proc):
    assert proc.stdout, proc.stderr
    return json.loads(proc.stdout.splitlines()[0])


def same_but_loops(under_uvpy, under_python):
    """The two probes agree on all but the loops; uvpy's loops are uvpy's."""
    a, b = dict(under_uvpy), dict(under_python)
    assert b.pop("asyncio_run") == ["_UnixSelectorEventLoop", None]
    assert b.pop("new_event_loop") == "_UnixSelectorEventLoop"
    loops = a.pop("asyncio_run"), a.pop("new_event_loop")
    assert a == b
    return loops


@pytest.fixture
def script(tmp_path):
    (tmp_path / "prog").mkdir()
    path = tmp_path / "prog" / "probe.py"
    path.write_text(PROBE)
    return path


def test_run_script_as_python_would_on_uvpy(script, tmp_path):
    # Run from another directory, with a relative path, so sys.path[0] and
    # __file__ are the script's, not the current directory.
    args = [os.path.join("prog", "probe.py"), "a", "--flag"]
    ours, theirs = uvpy_cli("run", *args, cwd=tmp_path), python(*args, cwd=tmp_path)
    assert ours.returncode == theirs.returncode == 0, ours.stderr
    probe = probe_of(ours)
    assert probe["argv"] == args
    assert probe["path0"] == str(script.parent)
    assert same_but_loops(probe, probe_of(theirs)) == (["Loop", default_backend()], "Loop")


def test_a_symlinked_script_gets_its_real_directory(script, tmp_path):
    (tmp_path / "link.py").symlink_to(script)
    ours, theirs = uvpy_cli("run", "link.py", cwd=tmp_path), python("link.py", cwd=tmp_path)
    assert probe_of(ours)["path0"] == probe_of(theirs)["path0"] == str(script.parent)


def test_run_module_as_python_m_would_on_uvpy(script):
    cwd = script.parent
    ours, theirs = uvpy_cli("-m", "probe", "x", cwd=cwd), python("-m", "probe", "x", cwd=cwd)
    assert ours.returncode == theirs.returncode == 0, ours.stderr
    probe = probe_of(ours)
    assert probe["argv"] == [str(script), "x"]
    assert same_but_loops(probe, probe_of(theirs)) == (["Loop", default_backend()], "Loop")
    # `run -m` is the same command.
    assert probe_of(uvpy_cli("run", "-m", "probe", "x", cwd=cwd)) == probe


@pytest.mark.parametrize("backend", ["libuv", "io_uring"])
def test_backend_option(script, backend):
    if uvpy.backends()[backend] is not None:
        pytest.skip(f"{backend} can not run here")
    for args in (["run", "--backend", backend, "probe.py"], [f"--backend={backend}", "-m", "probe"]):
        proc = uvpy_cli(*args, cwd=script.parent)
        assert proc.returncode == 0, proc.stderr
        assert probe_of(proc)["asyncio_run"] == ["Loop", backend]


def test_uvpy_backend_variable(script):
    if uvpy.backends()["io_uring"] is not None:
        pytest.skip("io_uring can not run here")
    env = {**os.environ, "UVPY_BACKEND": "io_uring"}
    proc = uvpy_cli("run", "probe.py", cwd=script.parent, env=env)
    assert probe_of(proc)["asyncio_run"] == ["Loop", "io_uring"]


def test_exit_status_is_the_programs(script):
    for args, status in ((["exit", "7"], 7), (["exit", "0"], 0)):
        assert uvpy_cli("run", "probe.py", *args, cwd=script.parent).returncode == status
        assert uvpy_cli("-m", "probe", *args, cwd=script.parent).returncode == status


def test_uncaught_exception_prints_pythons_traceback(script):
    ours = uvpy_cli("run", "probe.py", "raise", cwd=script.parent)
    theirs = python("probe.py", "raise", cwd=script.parent)
    assert ours.returncode == theirs.returncode == 1
    # Same traceback, line for line: no frames of uvpy's or runpy's.
    assert ours.stderr == theirs.stderr
    assert ours.stderr.startswith("Traceback (most recent call last):\n")
    assert ours.stderr.endswith("RuntimeError: raised by the program\n")


def test_uncaught_exception_in_a_module(script):
    proc = uvpy_cli("-m", "probe", "raise", cwd=script.parent)
    assert proc.returncode == 1
    assert "RuntimeError: raised by the program" in proc.stderr
    assert "__main__.py" not in proc.stderr.replace(str(script), "")


def test_keyboard_interrupt_exits_as_python_does(script):
    ours = uvpy_cli("run", "probe.py", "interrupt", cwd=script.parent)
    theirs = python("probe.py", "interrupt", cwd=script.parent)
    assert ours.returncode == theirs.returncode == -signal.SIGINT
    assert ours.stderr.endswith("KeyboardInterrupt\n")


def test_syntax_error_is_reported_as_python_does(tmp_path):
    (tmp_path / "bad.py").write_text("x = (\n")
    ours, theirs = uvpy_cli("run", "bad.py", cwd=tmp_path), python("bad.py", cwd=tmp_path)
    assert ours.returncode == theirs.returncode == 1
    assert ours.stderr == theirs.stderr


@pytest.mark.parametrize(
    "args, status, message",
    [
        ([], 2, "usage: python -m uvpy run"),
        (["run"], 2, "run needs a SCRIPT, or -m MODULE"),
        (["-m"], 2, "-m needs a MODULE"),
        (["frobnicate"], 2, "unknown command 'frobnicate'"),
        (["run", "missing.py"], 2, "can't open file '{cwd}/missing.py': [Errno 2] No such file or directory"),
        (["run", "--backend", "epoll", "x.py"], 2, "backend must be 'auto', 'io_uring' or 'libuv', not 'epoll'"),
        (["-m", "no_such_module_here"], 1, "python -m uvpy: No module named no_such_module_here"),
        (["info", "extra"], 2, "info takes no arguments"),
    ],
)
def test_command_line_errors(tmp_path, args, status, message):
    proc = uvpy_cli(*args, cwd=tmp_path)
    assert proc.returncode == status
    assert message.format(cwd=tmp_path) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help():
    proc = uvpy_cli("--help", cwd=None)
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: python -m uvpy run [--backend NAME] SCRIPT [ARGS...]")


def test_info(tmp_path):
    env = {**os.environ, "UVPY_EXECUTOR_WORKERS": "3"}
    proc = uvpy_cli("info", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"uvpy {uvpy.__version__} (")
    assert lines[1].startswith(f"Python {'.'.join(map(str, sys.version_info[:3]))} (")
    for name, why in uvpy.backends().items():
        expected = "can run here" if why is None else f"can not run here: {why}"
        assert any(line.split() [:1] == [name] and expected in line for line in lines), (name, lines)
    source = f"UVPY_BACKEND={os.environ['UVPY_BACKEND']}" if os.environ.get("UVPY_BACKEND") else "auto"
    assert f"  default   {default_backend()} ({source})" in lines
    assert any(line.startswith("executor: 3 native workers; ") for line in lines), lines
    tls = _uvpy._tls_status()
    assert ("TLS records: native path" if tls == "native" else f"TLS records: Python path ({tls})") in lines


def test_info_names_an_unusable_default(tmp_path):
    proc = uvpy_cli("info", cwd=tmp_path, env={**os.environ, "UVPY_BACKEND": "epoll"})
    assert proc.returncode == 0, proc.stderr
    assert "  default   none: UVPY_BACKEND must be 'auto', 'io_uring' or 'libuv', not 'epoll'" in proc.stdout


@needs_x86_64
def test_where_io_uring_can_not_run(script):
    # The command in a child where io_uring_setup(2) fails (conftest.NO_URING).
    code = NO_URING + "from uvpy.__main__ import main\nsys.exit(main(sys.argv[1:]))\n"
    env = {k: v for k, v in os.environ.items() if k != "UVPY_BACKEND"}
    info = python("-c", code, "info", cwd=script.parent, env=env)
    assert info.returncode == 0, info.stderr
    assert "  libuv     can run here" in info.stdout
    assert "  io_uring  can not run here: the io_uring backend is unavailable: " in info.stdout
    assert "  default   libuv (auto)" in info.stdout

    run = python("-c", code, "run", "--backend", "io_uring", "probe.py", cwd=script.parent, env=env)
    assert run.returncode == 1
    assert run.stderr.startswith("python -m uvpy: the io_uring backend is unavailable: ")
    assert run.stdout == ""  # the program never started
