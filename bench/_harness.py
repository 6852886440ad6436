"""Shared benchmark machinery for uvpy.

Two halves live here (the report, tables and machine info are in _report.py):

* Child side (`Workload`, `workload_main`): a workload script builds one event
  loop for the contender named by --loop, runs the untimed setup, times only
  `loop.run_until_complete(...)` of the measured part (wall: perf_counter,
  CPU: process_time) and prints exactly one JSON line. A workload that cannot
  run here (a loop without the API, an fd limit too low) raises `Skip`, or the
  loop raises NotImplementedError: the line then says {"skipped": reason}.

* Parent side (`run_benchmarks`): runs every (workload, contender, round) in a
  fresh subprocess so loops never share a process, rotates the contender order
  every round (so slow drift of a noisy machine is spread over all
  contenders), optionally discards a warm-up round, and summarizes median /
  min-max plus ratios to uvloop and stock asyncio. A failing or skipped
  (workload, contender) cell is recorded with its reason and the run goes on.
  A single absolute time is never the headline, and nothing here compares a
  time against a threshold.

A workload's measured coroutine returns `ops`, or `(ops, extras)`: extras is a
dict of further metrics that go into the JSON line (median over rounds in the
report; the ones named in _report.EXTRA_COLUMNS also become table columns).
The key "value" in extras replaces the headline ops/s (e.g. a latency or bytes
per connection); such a workload says `lower_is_better=True`.

Contenders are looked up by name in CONTENDERS; adding one is one entry there.
`python bench/_harness.py NAME` checks that a contender can build a loop (the
parent uses exactly this as its probe).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import importlib.metadata
import inspect
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
RESULTS_DIR = os.path.join(BENCH_DIR, "results")


# --------------------------------------------------------------- contenders

class Unavailable(Exception):
    """A contender cannot build its loop here (not installed, no such backend)."""


@dataclass(frozen=True)
class Contender:
    name: str
    module: str                   # imported first; its version is reported
    make: Callable[[], asyncio.AbstractEventLoop]
    dist: str | None = None       # distribution name for the version, if not module.__version__
    env: dict[str, str] = field(default_factory=dict)  # set in the workload process
    about: str = ""


def _norm_backend(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower()).removeprefix("io")


def _uvpy_loop(backend: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """uvpy on one named backend. UVPY_BACKEND is set in the process env (see
    Contender.env); `backend=` is passed too where new_event_loop takes it. The
    loop must then say it runs that backend (`loop.backend`), so a uvpy that
    ignores the request, or falls back because the kernel refused, is reported
    as unavailable instead of being measured under the wrong name."""
    def make():
        import uvpy

        try:
            params = inspect.signature(uvpy.new_event_loop).parameters
        except (TypeError, ValueError):
            params = {}
        loop = uvpy.new_event_loop(backend=backend) if "backend" in params else uvpy.new_event_loop()
        got = getattr(loop, "backend", None)
        if got is None and backend != "libuv":  # before backends existed: libuv only
            loop.close()
            raise Unavailable(f"this uvpy has no {backend} backend "
                              "(new_event_loop() takes no backend=, loop.backend is missing)")
        if got is not None and _norm_backend(str(got)) != _norm_backend(backend):
            loop.close()
            raise Unavailable(f"asked for the {backend} backend (UVPY_BACKEND={backend}), the loop "
                              f"runs {got!r}: this uvpy has no {backend} backend yet, or fell back")
        return loop
    return make


CONTENDERS: dict[str, Contender] = {c.name: c for c in (
    Contender("uvpy", "uvpy", _uvpy_loop("libuv"), env={"UVPY_BACKEND": "libuv"},
              about="uvpy on its libuv backend"),
    Contender("uvpy-uring", "uvpy", _uvpy_loop("io_uring"), env={"UVPY_BACKEND": "io_uring"},
              about="uvpy on its io_uring backend"),
    Contender("uvloop", "uvloop", lambda: sys.modules["uvloop"].new_event_loop(),
              about="uvloop (Cython on libuv)"),
    Contender("rloop", "rloop", lambda: sys.modules["rloop"].new_event_loop(),
              about="rloop (Rust)"),
    Contender("asyncio", "asyncio", lambda: asyncio.new_event_loop(),
              about="stock asyncio (selector loop)"),
)}
DEFAULT_CONTENDERS = tuple(CONTENDERS)
REFERENCES = ("uvloop", "asyncio")  # ratio columns, in this order


# --------------------------------------------------------------- child side

def new_loop(name: str) -> asyncio.AbstractEventLoop:
    """Import the contender's module and build a fresh loop with its factory."""
    c = CONTENDERS[name]
    os.environ.update(c.env)  # before the import: a module may read it there
    if REPO_ROOT not in sys.path:  # in-tree uvpy as a fallback; installed wins
        sys.path.append(REPO_ROOT)
    importlib.import_module(c.module)
    return c.make()


def loop_info(name: str, loop: asyncio.AbstractEventLoop | None = None) -> dict:
    c = CONTENDERS[name]
    mod = sys.modules.get(c.module)
    version = getattr(mod, "__version__", None)
    if version is None and c.dist:
        version = _dist_version(c.dist)
    if version is None and c.module == "asyncio":
        version = f"Python {sys.version.split()[0]}"
    info = {"module_file": getattr(mod, "__file__", None), "version": version,
            "loop_type": f"{type(loop).__module__}.{type(loop).__qualname__}" if loop else None}
    backend = getattr(loop, "backend", None) if loop is not None else None
    if backend is not None:
        info["backend"] = str(backend)
    return info


def check(cond: bool, msg: str) -> None:
    """Sanity check inside a workload (not an assert: survives python -O)."""
    if not cond:
        raise RuntimeError(f"workload check failed: {msg}")


async def timer_lag(n: int) -> dict:
    """Lateness of n consecutive 1 ms sleeps on the running loop, while the
    workload's load runs beside it: {"value": p99 ms, "p50_ms", "max_ms"}.
    Measured on the wall clock: some loops cache loop.time() per iteration."""
    late = []
    for _ in range(n):
        expected = time.monotonic() + 0.001
        await asyncio.sleep(0.001)
        late.append(max(0.0, time.monotonic() - expected))
    late.sort()
    return {"value": late[int(len(late) * 0.99)] * 1e3, "p50_ms": late[len(late) // 2] * 1e3,
            "max_ms": late[-1] * 1e3}


class Skip(Exception):
    """Raised by a workload that cannot run in this environment or on this
    loop; the cell is reported as skipped with the message as the reason."""


@dataclass(frozen=True)
class Workload:
    """`setup(loop, n)` does untimed preparation and returns the awaitable to
    time; that awaitable must return the number of operations it performed,
    or (ops, extras) (see the module docstring).

    lower_is_better: the headline value is a cost (latency, bytes); None means
    "look at the unit" (a unit containing "lower is better")."""
    name: str
    setup: Callable[[asyncio.AbstractEventLoop, int], Awaitable[int]]
    n: int
    quick_n: int
    unit: str
    lower_is_better: bool | None = None
    in_quick: bool = True  # False: only full runs (keeps --quick near a minute)

    @property
    def lower(self) -> bool:
        if self.lower_is_better is not None:
            return self.lower_is_better
        return "lower is better" in self.unit


def workload_main(workloads: list[Workload], argv: list[str] | None = None) -> int:
    by_name = {w.name: w for w in workloads}
    p = argparse.ArgumentParser(description="Run one workload once, print one JSON line.")
    p.add_argument("--loop", required=True, choices=sorted(CONTENDERS))
    p.add_argument("--workload", required=True, choices=list(by_name))
    p.add_argument("--n", type=int, help="problem size (default: the workload's full size)")
    p.add_argument("--quick", action="store_true", help="use the workload's quick size")
    args = p.parse_args(argv)
    w = by_name[args.workload]
    n = args.n or (w.quick_n if args.quick else w.n)
    out = {"workload": w.name, "loop": args.loop, "n": n}
    try:
        loop = new_loop(args.loop)
    except Exception as e:  # contender not importable/buildable
        print(json.dumps({**out, "skipped": f"{type(e).__name__}: {e}"}))
        return 3
    try:
        asyncio.set_event_loop(loop)
        measured = w.setup(loop, n)
        gc.collect()
        c0, t0 = time.process_time(), time.perf_counter()
        ops = loop.run_until_complete(measured)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        extra = {}
        if isinstance(ops, tuple):  # (ops, {"p50_us": ...}): extra metrics for the JSON
            ops, extra = ops
    except Skip as e:
        print(json.dumps({**out, "skipped": str(e)}))
        return 3
    except NotImplementedError as e:  # the loop lacks an API the workload needs
        print(json.dumps({**out, "skipped": f"not supported by this loop: "
                                            f"NotImplementedError{': ' + str(e) if str(e) else ''}"}))
        return 3
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    # A workload may report its own headline value (e.g. a latency, where
    # lower is better) instead of ops/s.
    value = extra.pop("value", ops / wall)
    print(json.dumps({**out, "ops": ops, "unit": w.unit, "ops_per_s": value,
                      "cpu_s": cpu, "wall_s": wall, **extra}))
    return 0


# -------------------------------------------------------------- parent side

@dataclass(frozen=True)
class Job:
    label: str    # e.g. "call_soon/callbacks"
    script: str   # path of the workload script
    workload: str
    n: int
    unit: str
    lower_is_better: bool = False

    @property
    def suite(self) -> str:
        return self.label.partition("/")[0]


def jobs_from_module(suite: str, module, quick: bool) -> list[Job]:
    return [Job(f"{suite}/{w.name}", os.path.abspath(module.__file__), w.name,
                w.quick_n if quick else w.n, w.unit, w.lower) for w in module.WORKLOADS
            if w.in_quick or not quick]


class RunError(Exception):
    """A cell failed; `skipped` says the workload or loop declined to run."""

    def __init__(self, msg: str, skipped: bool = False):
        super().__init__(msg)
        self.skipped = skipped


def _log(msg: str, end: str = "\n") -> None:
    print(msg, end=end, file=sys.stderr, flush=True)


# The workload and probe processes start through this: bench/ goes at the END
# of sys.path (running `python bench/x.py` would put it first, and a suite
# module named like a stdlib module, e.g. http.py, would then shadow it for
# every library the workload imports), and -P keeps the script's own directory
# off the front.
_LAUNCH = ("import runpy, sys; sys.path.append(sys.argv[1]); del sys.argv[:2]; "
           "runpy.run_path(sys.argv[0], run_name='__main__')")


def child_command(script: str, *args: str) -> list[str]:
    return [sys.executable, "-P", "-c", _LAUNCH, os.path.dirname(os.path.abspath(script)),
            os.path.abspath(script), *args]


def _child_env(contender: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(CONTENDERS[contender].env)
    return env


def _last_line(text: str) -> str:
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    return lines[-1] if lines else ""


def _subprocess_json(cmd: list[str], timeout: float, env: dict | None = None) -> dict:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise RunError(f"timed out after {timeout:.0f}s") from None
    out = _last_line(p.stdout)
    if p.returncode < 0:
        try:
            sig = signal.Signals(-p.returncode).name
        except ValueError:
            sig = f"signal {-p.returncode}"
        raise RunError(f"killed by {sig}" + (f": {_last_line(p.stderr)}" if p.stderr.strip() else ""))
    if p.returncode in (0, 3) and out.startswith("{"):
        try:
            r = json.loads(out)
        except ValueError:
            raise RunError(f"unreadable result line: {out[:200]}") from None
        if "skipped" in r:
            raise RunError(r["skipped"], skipped=True)
        if p.returncode == 0:
            return r
    raise RunError(f"exit {p.returncode}: {_last_line(p.stderr) or 'no output'}")


def probe(name: str, timeout: float = 60.0) -> dict:
    """Build and close one loop of `name` in a subprocess (a crashing import
    cannot take the runner down). Returns loop_info() or {"skipped": reason}."""
    try:
        return _subprocess_json(child_command(__file__, name), timeout, _child_env(name))
    except RunError as e:
        return {"skipped": str(e)}


def run_one(job: Job, contender: str, timeout: float) -> dict:
    return _subprocess_json(child_command(job.script, "--loop", contender, "--workload",
                                          job.workload, "--n", str(job.n)),
                            timeout, _child_env(contender))


_BASE_KEYS = {"round", "ops", "ops_per_s", "cpu_s", "wall_s"}


def ratio(value: float | None, ref: float | None, lower_is_better: bool) -> float | None:
    """How many times better than the reference: >1 is better, either way up."""
    if not value or not ref:
        return None
    return ref / value if lower_is_better else value / ref


def summarize(job: Job, cells: dict[str, dict]) -> list[dict]:
    """cells: contender -> {"runs": [...], "status": "ok"|"failed"|"skipped", "error": str|None}."""
    rows = []
    for c, cell in cells.items():
        status = cell.get("status") or ("failed" if cell.get("error") else "ok")
        row = {"workload": job.label, "suite": job.suite, "unit": job.unit, "n": job.n,
               "lower_is_better": job.lower_is_better, "contender": c, "status": status,
               "error": cell.get("error"), "runs": cell["runs"]}
        vals = [r["ops_per_s"] for r in cell["runs"]]
        if status == "ok" and not vals:
            row.update(status="failed", error=row["error"] or "no runs")
        if row["status"] == "ok":
            runs = cell["runs"]
            row.update(median=statistics.median(vals), min=min(vals), max=max(vals),
                       cpu_s_median=statistics.median(r["cpu_s"] for r in runs),
                       wall_s_median=statistics.median(r["wall_s"] for r in runs))
            keys = [k for k in runs[0] if k not in _BASE_KEYS]
            extras = {}
            for k in keys:
                xs = [r.get(k) for r in runs]
                if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs):
                    extras[k] = statistics.median(xs)
            row["extras"] = extras
        rows.append(row)
    medians = {r["contender"]: r.get("median") for r in rows}
    for row in rows:
        for ref in REFERENCES:
            row[f"vs_{ref}"] = ratio(row.get("median"), medians.get(ref), job.lower_is_better)
    return rows


def _clock(s: float) -> str:
    s = int(round(s))
    return f"{s // 60}:{s % 60:02d}" if s < 3600 else f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """Step counter with elapsed time and an ETA: the remaining runs of the
    current workload at its own mean so far, the rest at the mean of all."""

    def __init__(self, runs_per_job: list[int], clock=time.monotonic):
        self.runs_per_job, self.clock = runs_per_job, clock
        self.total, self.step = sum(runs_per_job), 0
        self.t0 = clock()
        self.done_s, self.done_n = 0.0, 0
        self.job_i, self.job_s, self.job_n = 0, 0.0, 0

    def start_job(self, i: int) -> None:
        self.job_i, self.job_s, self.job_n = i, 0.0, 0

    def finished(self, seconds: float) -> None:
        self.done_s += seconds
        self.done_n += 1
        self.job_s += seconds
        self.job_n += 1

    def eta(self) -> float | None:
        if not self.done_n:
            return None
        left_here = self.runs_per_job[self.job_i] - self.job_n
        left_later = sum(self.runs_per_job[self.job_i + 1:])
        here = self.job_s / self.job_n if self.job_n else self.done_s / self.done_n
        return left_here * here + left_later * self.done_s / self.done_n

    def prefix(self) -> str:
        self.step += 1
        eta = self.eta()
        width = len(str(self.total))
        return (f"[{self.step:>{width}}/{self.total} {_clock(self.clock() - self.t0)}"
                f" eta {_clock(eta) if eta is not None else '?'}]")


def _fmt_value(x: float) -> str:
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.2f}{suffix}"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def run_benchmarks(jobs: list[Job], contenders: list[str], rounds: int,
                   warmup: bool = True, timeout: float = 300.0,
                   probe=probe, run_one=run_one) -> dict:
    """Probe the contenders, run every cell, return the report (see
    _report.py for the reader). probe/run_one are parameters for tests."""
    from _report import machine_info

    started = machine_info()
    t_start = time.monotonic()
    available, skipped, loops = [], {}, {}
    for name in contenders:
        info = probe(name)
        if "skipped" in info:
            skipped[name] = info["skipped"]
            _log(f"{name}: skipped ({info['skipped']})")
        else:
            available.append(name)
            loops[name] = info
            _log(f"{name}: {info.get('version') or '?'}"
                 + (f" ({info['backend']} backend)" if info.get("backend") else ""))
    schedule = ([("warm-up", 0)] if warmup else []) + [(r, r - 1) for r in range(1, rounds + 1)]
    progress = Progress([len(schedule) * len(available)] * len(jobs))
    results, interrupted = [], False
    for i, job in enumerate(jobs):
        progress.start_job(i)
        cells = {c: {"runs": [], "status": "ok", "error": None} for c in available}
        try:
            for rnd, rot in schedule:
                k = rot % len(available) if available else 0
                for c in available[k:] + available[:k]:
                    tag = "warm-up" if rnd == "warm-up" else f"round {rnd}/{rounds}"
                    _log(f"{progress.prefix()} {job.label} · {c} · {tag} ... ", end="")
                    if cells[c]["status"] != "ok":
                        progress.finished(0.0)
                        _log(f"not run ({cells[c]['status']} earlier)")
                        continue
                    t0 = time.monotonic()
                    try:
                        r = run_one(job, c, timeout)
                    except RunError as e:
                        progress.finished(time.monotonic() - t0)
                        cells[c].update(status="skipped" if e.skipped else "failed", error=str(e))
                        _log(f"{'SKIPPED' if e.skipped else 'FAILED'}: {e}")
                        continue
                    took = time.monotonic() - t0
                    progress.finished(took)
                    _log(f"{_fmt_value(r['ops_per_s'])} {job.unit} ({took:.1f}s)")
                    if rnd != "warm-up":
                        cells[c]["runs"].append({"round": rnd, **{k: v for k, v in r.items()
                                                 if k not in ("workload", "loop", "n", "unit")}})
        except KeyboardInterrupt:
            _log("\ninterrupted: reporting what has run so far")
            interrupted = True
        results.extend(summarize(job, cells))
        if interrupted:
            break
    ended = machine_info()
    machine = dict(started)
    machine["loadavg_end"] = ended["loadavg"]
    machine["duration_s"] = round(time.monotonic() - t_start, 1)
    return {"machine": machine, "loops": loops, "skipped": skipped,
            "config": {"rounds": rounds, "warmup": warmup, "contenders": list(contenders),
                       "references": list(REFERENCES), "interrupted": interrupted,
                       "ratio": "better-is-higher: value/reference, or reference/value "
                                "for lower-is-better units",
                       "jobs": [{"workload": j.label, "n": j.n, "unit": j.unit,
                                 "lower_is_better": j.lower_is_better} for j in jobs]},
            "results": results}


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":  # probe: python bench/_harness.py CONTENDER
    name = sys.argv[1]
    try:
        loop = new_loop(name)
        info = loop_info(name, loop)
        loop.close()
    except Exception as e:
        print(json.dumps({"skipped": f"{type(e).__name__}: {e}"}))
        sys.exit(3)
    print(json.dumps(info))
