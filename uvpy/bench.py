"""``python -m uvpy.bench``: run uvpy's benchmark suites (uvpy on each
backend, uvloop, rloop, stock asyncio) and write a report.

The suites live in the repository's ``bench/`` directory, next to this
package in a source checkout (the editable install ``scripts/setup.sh``
makes); they are not part of an installed wheel. ``UVPY_BENCH_DIR`` points
at another ``bench/`` directory. All arguments go to ``bench/run.py``::

    python -m uvpy.bench --quick          # about a minute
    python -m uvpy.bench                  # the full run (several minutes)
    python -m uvpy.bench --help
"""

from __future__ import annotations

import importlib.util
import os
import sys

_NEEDED = ("run.py", "_harness.py")


def find_bench_dir() -> str | None:
    """The bench/ directory to use: $UVPY_BENCH_DIR when set, else the one
    beside this package's directory; None when it has no run.py/_harness.py."""
    env = os.environ.get("UVPY_BENCH_DIR")
    if env:
        candidate = os.path.abspath(env)
    else:
        package_dir = os.path.dirname(os.path.abspath(__file__))
        candidate = os.path.join(os.path.dirname(package_dir), "bench")
    if all(os.path.isfile(os.path.join(candidate, f)) for f in _NEEDED):
        return candidate
    return None


def _not_found_message() -> str:
    where = os.environ.get("UVPY_BENCH_DIR") or os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
    return (
        f"uvpy.bench: no benchmark suites at {where}\n"
        "The benchmarks are not installed with the uvpy package: they live in the\n"
        "bench/ directory of a uvpy source checkout. Run this from an editable\n"
        "install of a checkout (git clone ...; bash scripts/setup.sh; then\n"
        ".venv/bin/python -m uvpy.bench), or set UVPY_BENCH_DIR to a checkout's\n"
        "bench/ directory."
    )


def main(argv: list[str] | None = None) -> int:
    bench_dir = find_bench_dir()
    if bench_dir is None:
        print(_not_found_message(), file=sys.stderr)
        return 2
    if bench_dir not in sys.path:
        sys.path.append(bench_dir)  # at the end: bench modules must not shadow the stdlib
    spec = importlib.util.spec_from_file_location("_uvpy_bench_run", os.path.join(bench_dir, "run.py"))
    assert spec is not None and spec.loader is not None
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    return int(run.main(argv, prog="python -m uvpy.bench") or 0)


if __name__ == "__main__":
    raise SystemExit(main())
