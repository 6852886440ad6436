"""Run the uvpy benchmark suites against its peers in one go.

    python -m uvpy.bench [--quick] [--rounds N] [--only call_soon,timers/fire]
                         [--contenders uvpy,uvloop,asyncio] [--name latest] [--list]
    python bench/run.py ...                  (the same thing)

Contenders (default: all): uvpy (libuv backend), uvpy-uring (io_uring
backend), uvloop, rloop, stock asyncio. One that cannot build its loop here is
reported as skipped with the reason; so is a (workload, contender) cell that
fails or is not supported, and the run goes on.

Every (workload, contender, round) runs in a fresh subprocess; contenders
alternate within each round (order rotated every round), after one discarded
warm-up round (full runs). Progress goes to stderr. Prints one table per suite
(median, min-max, ratios to uvloop and asyncio, and the extra metrics a
workload reports: CPU per op, p50/p99, peak RSS) and writes
bench/results/<name>.json, <name>.md and PNG charts. --quick (about a minute:
smaller sizes, 2 rounds, no warm-up) writes <name> = "quick" unless --name is
given. Nothing here judges a time against a threshold: read the ratios, and
rerun on a quiet machine before believing a small difference.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
# bench/ at the end of sys.path, not the front: a suite module named like a
# stdlib module (http.py) must not shadow it for the libraries we import.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != BENCH_DIR] + [BENCH_DIR]

import _harness  # noqa: E402
import _report  # noqa: E402

SUITES = ("call_soon", "timers", "executor", "echo", "tls", "http", "process", "processes", "sockets",
          "memory")
QUICK_ROUNDS, FULL_ROUNDS = 2, 5


def load_suite(suite: str):
    """Import bench/<suite>.py by path, under a private module name (so a
    suite named like a stdlib module neither shadows it nor is shadowed)."""
    path = os.path.join(BENCH_DIR, f"{suite}.py")
    spec = importlib.util.spec_from_file_location(f"_bench_suite_{suite}", path)
    if spec is None or not os.path.exists(path):
        raise ImportError(f"no suite file {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, "WORKLOADS"):
        raise ImportError(f"{path} defines no WORKLOADS")
    return mod


def load_jobs(quick: bool, suites=SUITES) -> tuple[list, dict[str, str]]:
    """All jobs of the suites that import; {suite: reason} for those that don't."""
    jobs, broken = [], {}
    for suite in suites:
        try:
            mod = load_suite(suite)
        except Exception as e:
            broken[suite] = f"{type(e).__name__}: {e}"
            continue
        jobs += _harness.jobs_from_module(suite, mod, quick)
    return jobs, broken


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"smaller sizes, {QUICK_ROUNDS} rounds, no warm-up (about a minute)")
    p.add_argument("--rounds", type=int,
                   help=f"measured rounds (default {FULL_ROUNDS}, quick {QUICK_ROUNDS})")
    p.add_argument("--only", help="comma-separated suites or suite/workload labels")
    p.add_argument("--contenders", default="all",
                   help=f"comma-separated, from: {', '.join(_harness.CONTENDERS)} (default: all)")
    p.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=None,
                   help="run one discarded warm-up round first (default: yes, no with --quick)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per run (default 300)")
    p.add_argument("--name", help="results file stem (default: latest, or quick with --quick)")
    p.add_argument("--out", default=_harness.RESULTS_DIR,
                   help="results directory (default: bench/results)")
    p.add_argument("--no-charts", action="store_true", help="tables only, no PNG charts")
    p.add_argument("--list", action="store_true", help="list suites, workloads and contenders, then exit")
    return p


def parse(argv=None, prog: str | None = None) -> argparse.Namespace:
    """Parse and validate; adds .contender_list, .jobs and .broken (no benchmark runs)."""
    p = build_parser(prog)
    args = p.parse_args(argv)
    if args.contenders.strip() in ("", "all"):
        contenders = list(_harness.DEFAULT_CONTENDERS)
    else:
        contenders = list(dict.fromkeys(c.strip() for c in args.contenders.split(",") if c.strip()))
    unknown = [c for c in contenders if c not in _harness.CONTENDERS]
    if unknown:
        p.error(f"unknown contender(s): {', '.join(unknown)}; known: {', '.join(_harness.CONTENDERS)}")
    if args.rounds is None:
        args.rounds = QUICK_ROUNDS if args.quick else FULL_ROUNDS
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    if args.timeout <= 0:
        p.error("--timeout must be > 0")
    if args.warmup is None:
        args.warmup = not args.quick
    if args.name is None:
        args.name = "quick" if args.quick else "latest"
    if not args.name or os.sep in args.name:
        p.error("--name must be a plain file stem")

    jobs, broken = load_jobs(args.quick)
    if args.only:
        wanted = {w.strip() for w in args.only.split(",") if w.strip()}
        known = set(SUITES) | {j.label for j in jobs}
        if wanted - known:
            p.error(f"unknown --only item(s): {', '.join(sorted(wanted - known))}; "
                    f"known: {', '.join(sorted(known))}")
        jobs = [j for j in jobs if j.label in wanted or j.suite in wanted]
        broken = {s: why for s, why in broken.items() if s in wanted}
    args.contender_list, args.jobs, args.broken = contenders, jobs, broken
    return args


def list_text(args) -> str:
    lines = ["contenders:"]
    lines += [f"  {c.name:<11} {c.about}" for c in _harness.CONTENDERS.values()]
    lines.append("workloads (n, quick n come from each suite module):")
    full = {j.label: j for j in load_jobs(False)[0]}
    for j in load_jobs(True)[0]:
        n = full[j.label].n if j.label in full else j.n
        lines.append(f"  {j.label:<24} n={n:,} quick={j.n:,}  {j.unit}")
    for suite, why in args.broken.items():
        lines.append(f"  {suite}: cannot load ({why})")
    return "\n".join(lines)


def main(argv=None, prog: str | None = None) -> int:
    args = parse(argv, prog)
    if args.list:
        print(list_text(args))
        return 0
    for suite, why in args.broken.items():
        print(f"suite {suite}: not run ({why})", file=sys.stderr)
    report = _harness.run_benchmarks(args.jobs, args.contender_list, args.rounds,
                                     warmup=args.warmup, timeout=args.timeout)
    report["config"]["quick"] = args.quick
    report["config"]["broken_suites"] = args.broken
    print(_report.format_table(report))
    for path in _report.write_results(report, args.name, args.out, charts=not args.no_charts):
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
