"""Run the uvpy benchmark suites against uvloop and stock asyncio in one go.

    python bench/run.py [--quick] [--rounds N] [--only call_soon,timers/fire]
                        [--contenders uvpy,uvloop,asyncio] [--name latest]

Every (workload, contender, round) runs in a fresh subprocess; contenders
alternate within each round (order rotated every round) after one discarded
warm-up round. Prints a table of median ops/s, min-max and ratios to uvloop and
asyncio, and writes bench/results/<name>.json and <name>.md. A contender that
cannot be imported is reported as skipped. Nothing here judges a time against
a threshold: read the ratios, and rerun on a quiet machine before believing
a small difference.
"""
import argparse
import importlib
import sys

import _harness

SUITES = ("call_soon", "timers", "executor", "echo", "http")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds")
    p.add_argument("--rounds", type=int, help="measured rounds (default 5, quick 3)")
    p.add_argument("--only", help="comma-separated suites or suite/workload labels")
    p.add_argument("--contenders", default="uvpy,uvloop,asyncio",
                   help=f"comma-separated, from: {', '.join(_harness.CONTENDERS)}")
    p.add_argument("--no-warmup", action="store_true", help="skip the warm-up round")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    p.add_argument("--name", default="latest", help="results file stem in bench/results/")
    args = p.parse_args(argv)

    contenders = [c for c in args.contenders.split(",") if c]
    unknown = [c for c in contenders if c not in _harness.CONTENDERS]
    if unknown:
        p.error(f"unknown contender(s): {', '.join(unknown)}")
    rounds = args.rounds or (3 if args.quick else 5)
    if rounds < 1:
        p.error("--rounds must be >= 1")

    jobs = [job for suite in SUITES for job in
            _harness.jobs_from_module(suite, importlib.import_module(suite), args.quick)]
    if args.only:
        wanted = set(args.only.split(","))
        known = set(SUITES) | {j.label for j in jobs}
        if wanted - known:
            p.error(f"unknown --only item(s): {', '.join(sorted(wanted - known))}; "
                    f"known: {', '.join(sorted(known))}")
        jobs = [j for j in jobs if j.label in wanted or j.label.split("/")[0] in wanted]

    report = _harness.run_benchmarks(jobs, contenders, rounds,
                                     warmup=not args.no_warmup, timeout=args.timeout)
    report["config"]["quick"] = args.quick
    print(_harness.format_table(report))
    for path in _harness.write_results(report, args.name):
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
