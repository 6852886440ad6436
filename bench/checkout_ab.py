"""Alternating A/B rounds of one bench script across two uvpy checkouts.

Runs the same workload script (bench/executor.py by default) from this
checkout and from another one (a `git worktree` of the commit to compare
with, set up with scripts/setup.sh so it has its own .venv and build), one
fresh process per (round, workload, checkout), the order alternating every
round. Prints every run, then per workload the median of each side and
new/base (>1: this checkout is faster; for lower-is-better units, base/new).

    git worktree add ../uvpy-base <commit> && (cd ../uvpy-base && bash scripts/setup.sh)
    python bench/checkout_ab.py ../uvpy-base roundtrip,gather,native_noop 7
    python bench/checkout_ab.py ../uvpy-base protocol_1k_c10 5 --script echo.py --loop uvpy-uring
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run_once(checkout, script, loop, workload):
    py = os.path.join(checkout, ".venv", "bin", "python")
    out = subprocess.run([py, os.path.join(checkout, "bench", script), "--loop", loop, "--workload", workload],
                         capture_output=True, text=True, timeout=600, cwd=os.path.join(checkout, "bench"))
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{checkout} {workload}: exit {out.returncode}\n{out.stderr[-2000:]}")
    return json.loads(lines[-1])


def headline(result, metric=None):
    if metric:
        return result[metric]
    return result.get("value", result.get("ops_per_s"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", help="the other checkout (with its own .venv)")
    ap.add_argument("workloads", help="comma-separated workload names")
    ap.add_argument("rounds", type=int, nargs="?", default=5)
    ap.add_argument("--script", default="executor.py")
    ap.add_argument("--loop", default="uvpy")
    ap.add_argument("--metric", help="compare this JSON field (e.g. p50_us, lower is better) instead of the headline")
    args = ap.parse_args()
    sides = [("new", ROOT), ("base", os.path.abspath(args.base))]
    values, units = {}, {}
    for r in range(args.rounds):
        order = sides if r % 2 == 0 else sides[::-1]
        for wl in args.workloads.split(","):
            for name, checkout in order:
                res = run_once(checkout, args.script, args.loop, wl)
                values.setdefault((wl, name), []).append(headline(res, args.metric))
                units[wl] = "lower is better" if args.metric else res.get("unit", "")
                print(f"round {r} {wl:12s} {name:4s} {headline(res, args.metric):12.4g} {units[wl]}", flush=True)
    print("\nworkload      new median    base median   new vs base (>1 better)")
    for wl in args.workloads.split(","):
        new, base = statistics.median(values[(wl, "new")]), statistics.median(values[(wl, "base")])
        lower = "lower is better" in units[wl]
        ratio = base / new if lower else new / base
        print(f"{wl:12s} {new:12.4g} {base:12.4g}   {ratio:.3f}x")


if __name__ == "__main__":
    sys.exit(main())
