"""Shared benchmark machinery for uvpy.

Two halves live here:

* Child side (`Workload`, `workload_main`): a workload script builds one event
  loop for the contender named by --loop, runs the untimed setup, times only
  `loop.run_until_complete(...)` of the measured part (wall: perf_counter,
  CPU: process_time) and prints exactly one JSON line.

* Parent side (`run_benchmarks`, `format_table`, `write_results`): runs every
  (workload, contender, round) in a fresh subprocess so loops never share a
  process, rotates the contender order every round (so slow drift of a noisy
  machine is spread over all contenders), discards a warm-up round, and reports
  median / min-max of ops/s plus ratios to uvloop and stock asyncio. A single
  absolute time is never the headline, and nothing here compares a time
  against a threshold.

Contenders are looked up by name in CONTENDERS; adding a backend variant is a
one-line change there. `python bench/_harness.py NAME` checks that a contender
can build a loop (the parent uses exactly this as its probe).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import importlib.metadata
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Awaitable, Callable

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
RESULTS_DIR = os.path.join(BENCH_DIR, "results")

# name -> (module to import, expression that returns a new loop; the module's
# top-level package and `asyncio` are in scope).
CONTENDERS: dict[str, tuple[str, str]] = {
    "uvpy": ("uvpy", "uvpy.new_event_loop()"),
    "uvloop": ("uvloop", "uvloop.new_event_loop()"),
    "asyncio": ("asyncio", "asyncio.new_event_loop()"),
    # "uvpy-libuv": ("uvpy", "uvpy.new_event_loop(backend='libuv')"),
}
REFERENCES = ("uvloop", "asyncio")  # ratio columns, in this order


# --------------------------------------------------------------- child side

def new_loop(name: str) -> asyncio.AbstractEventLoop:
    """Import the contender's module and build a fresh loop with its factory."""
    module, expr = CONTENDERS[name]
    if REPO_ROOT not in sys.path:  # in-tree uvpy as a fallback; installed wins
        sys.path.append(REPO_ROOT)
    importlib.import_module(module)
    top = module.partition(".")[0]
    return eval(expr, {"asyncio": asyncio, top: sys.modules[top]})


def check(cond: bool, msg: str) -> None:
    """Sanity check inside a workload (not an assert: survives python -O)."""
    if not cond:
        raise RuntimeError(f"workload check failed: {msg}")


@dataclass(frozen=True)
class Workload:
    """`setup(loop, n)` does untimed preparation and returns the awaitable to
    time; that awaitable must return the number of operations it performed."""
    name: str
    setup: Callable[[asyncio.AbstractEventLoop, int], Awaitable[int]]
    n: int
    quick_n: int
    unit: str


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
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    # A workload may report its own headline value (e.g. a latency, where
    # lower is better: its unit says so) instead of ops/s.
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


def jobs_from_module(suite: str, module, quick: bool) -> list[Job]:
    return [Job(f"{suite}/{w.name}", os.path.abspath(module.__file__), w.name,
                w.quick_n if quick else w.n, w.unit) for w in module.WORKLOADS]


class RunError(Exception):
    pass


def _log(msg: str, end: str = "\n") -> None:
    print(msg, end=end, file=sys.stderr, flush=True)


def _subprocess_json(cmd: list[str], timeout: float) -> dict:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RunError(f"timed out after {timeout:.0f}s") from None
    lines = [l for l in p.stdout.splitlines() if l.strip()]
    if p.returncode < 0:
        raise RunError(f"killed by {signal.Signals(-p.returncode).name}")
    if p.returncode == 3 and lines:
        return json.loads(lines[-1])  # {"skipped": reason}
    if p.returncode != 0 or not lines:
        err = [l for l in p.stderr.splitlines() if l.strip()]
        raise RunError(f"exit {p.returncode}: {err[-1] if err else 'no output'}")
    return json.loads(lines[-1])


def probe(name: str, timeout: float = 60.0) -> dict:
    """Build and close one loop of `name` in a subprocess (a crashing import
    cannot take the runner down). Returns {"module_file", "version"} or
    {"skipped": reason}."""
    try:
        return _subprocess_json([sys.executable, os.path.abspath(__file__), name], timeout)
    except RunError as e:
        return {"skipped": str(e)}


def run_one(job: Job, contender: str, timeout: float) -> dict:
    r = _subprocess_json([sys.executable, job.script, "--loop", contender,
                          "--workload", job.workload, "--n", str(job.n)], timeout)
    if "skipped" in r:
        raise RunError(r["skipped"])
    return r


def _fmt_ops(x: float) -> str:
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.2f}{suffix}"
    return f"{x:.1f}"


def _summarize(job: Job, cells: dict[str, dict]) -> list[dict]:
    rows = []
    for c, cell in cells.items():
        row = {"workload": job.label, "unit": job.unit, "n": job.n, "contender": c,
               "runs": cell["runs"], "error": cell["error"]}
        ops = [r["ops_per_s"] for r in cell["runs"]]
        if ops and not cell["error"]:
            row.update(median=statistics.median(ops), min=min(ops), max=max(ops),
                       cpu_s_median=statistics.median(r["cpu_s"] for r in cell["runs"]),
                       wall_s_median=statistics.median(r["wall_s"] for r in cell["runs"]))
        rows.append(row)
    medians = {r["contender"]: r.get("median") for r in rows}
    for row in rows:
        for ref in REFERENCES:
            m, ref_m = row.get("median"), medians.get(ref)
            row[f"vs_{ref}"] = m / ref_m if m and ref_m else None
    return rows


def run_benchmarks(jobs: list[Job], contenders: list[str], rounds: int,
                   warmup: bool = True, timeout: float = 300.0) -> dict:
    available, skipped, loops = [], {}, {}
    for name in contenders:
        info = probe(name)
        if "skipped" in info:
            skipped[name] = info["skipped"]
            _log(f"{name}: skipped ({info['skipped']})")
        else:
            available.append(name)
            loops[name] = info
    schedule = ([("warm-up", 0)] if warmup else []) + [(r, r - 1) for r in range(1, rounds + 1)]
    total, step, results = len(jobs) * len(schedule) * len(available), 0, []
    for job in jobs:
        cells = {c: {"runs": [], "error": None} for c in available}
        for rnd, rot in schedule:
            k = rot % len(available) if available else 0
            for c in available[k:] + available[:k]:
                step += 1
                tag = "warm-up" if rnd == "warm-up" else f"round {rnd}"
                _log(f"[{step}/{total}] {job.label} {c} {tag} ... ", end="")
                if cells[c]["error"]:
                    _log("not run (failed earlier)")
                    continue
                try:
                    r = run_one(job, c, timeout)
                except RunError as e:
                    cells[c]["error"] = str(e)
                    _log(f"FAILED: {e}")
                    continue
                _log(f"{_fmt_ops(r['ops_per_s'])} {job.unit}")
                if rnd != "warm-up":
                    cells[c]["runs"].append({"round": rnd, **{k: v for k, v in r.items()
                                             if k not in ("workload", "loop", "n", "unit")}})
        results.extend(_summarize(job, cells))
    return {"machine": machine_info(), "loops": loops, "skipped": skipped,
            "config": {"rounds": rounds, "warmup": warmup, "contenders": contenders,
                       "jobs": [{"workload": j.label, "n": j.n, "unit": j.unit} for j in jobs]},
            "results": results}


# ------------------------------------------------------------------ output

def _git_commit() -> str | None:
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=REPO_ROOT, capture_output=True,
                                        text=True, check=True, timeout=10).stdout.strip()
        return run("rev-parse", "--short", "HEAD") + ("+dirty" if run("status", "--porcelain") else "")
    except Exception:
        return None


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "uvloop": _dist_version("uvloop"),
        "git_commit": _git_commit(),
    }


HEADERS = ["workload", "contender", "median ops/s", "min-max", "vs uvloop", "vs asyncio"]


def table_rows(report: dict) -> list[list[str]]:
    rows = []
    for r in report["results"]:
        if "median" not in r:
            rows.append([r["workload"], r["contender"], "error", r["error"] or "no runs", "", ""])
            continue
        ratios = [f"{r[f'vs_{ref}']:.2f}x" if r[f"vs_{ref}"] else "n/a" for ref in REFERENCES]
        rows.append([r["workload"], r["contender"], _fmt_ops(r["median"]),
                     f"{_fmt_ops(r['min'])}-{_fmt_ops(r['max'])}", *ratios])
    return rows


def _skipped_lines(report: dict) -> list[str]:
    return [f"skipped: {name} ({why})" for name, why in report["skipped"].items()]


def format_table(report: dict) -> str:
    rows = [HEADERS] + table_rows(report)
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS))]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + _skipped_lines(report))


def format_markdown(report: dict) -> str:
    m, cfg = report["machine"], report["config"]
    out = ["# uvpy benchmarks", "",
           f"{m['date']} · commit `{m['git_commit'] or 'n/a'}` · Python {m['python']} · "
           f"{m['platform']} · {m['cpu_count']} CPUs · load {m['loadavg']} · uvloop {m['uvloop']}",
           "", f"{cfg['rounds']} rounds" + (" + 1 warm-up round" if cfg["warmup"] else "")
           + ", one fresh process per (workload, contender, round), contender order rotated "
           "every round. Ratios are median / median of the reference (ops/s): >1 is faster.",
           "", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    out += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    out += ["", "Workloads:", ""] + [f"- `{j['workload']}`: n={j['n']:,}, {j['unit']}"
                                     for j in cfg["jobs"]]
    if report["skipped"]:
        out += [""] + [f"- {line}" for line in _skipped_lines(report)]
    return "\n".join(out) + "\n"


def write_results(report: dict, name: str = "latest") -> list[str]:
    os.makedirs(RESULTS_DIR, exist_ok=True)
    paths = []
    for ext, text in (("json", json.dumps(report, indent=2) + "\n"),
                      ("md", format_markdown(report))):
        path = os.path.join(RESULTS_DIR, f"{name}.{ext}")
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
        paths.append(path)
    try:
        from charts import make_charts
    except ImportError:
        return paths
    try:
        paths += make_charts(report, RESULTS_DIR, name)
    except ImportError as e:  # matplotlib missing: tables only
        _log(f"charts skipped: {e}")
    return paths


if __name__ == "__main__":  # probe: python bench/_harness.py CONTENDER
    name = sys.argv[1]
    try:
        new_loop(name).close()
    except Exception as e:
        print(json.dumps({"skipped": f"{type(e).__name__}: {e}"}))
        sys.exit(3)
    mod = sys.modules[CONTENDERS[name][0]]
    print(json.dumps({"module_file": getattr(mod, "__file__", None),
                      "version": getattr(mod, "__version__", None)}))
