"""Alternating A/B rounds of bench/echo.py workloads across uvpy's backends.

Contenders: uvpy (libuv), uvpy-uring (completion I/O, the default),
uvpy-uring with UVPY_URING_COMPLETION=0 (readiness only) and uvloop. Every
(round, workload, contender) is a fresh echo.py process; the contender order
rotates each round. Prints each run, then medians: round trips/s, server CPU
per round trip (user/sys split) and the system-time share.

    python bench/echo_ab.py protocol_1k_c10,protocol_1k_c1000 5
"""
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CONTENDERS = [("uvpy", "uvpy", {}), ("uring-comp", "uvpy-uring", {}),
              ("uring-ready", "uvpy-uring", {"UVPY_URING_COMPLETION": "0"}),
              ("uvloop", "uvloop", {})]


def main():
    workloads = sys.argv[1].split(",")
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    res = {}
    for r in range(rounds):
        k = r % len(CONTENDERS)
        for wl in workloads:
            for name, loop, env in CONTENDERS[k:] + CONTENDERS[:k]:
                out = subprocess.run(
                    [sys.executable, os.path.join(HERE, "echo.py"), "--loop", loop,
                     "--workload", wl, "--n", "2000"],
                    env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
                lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
                if not lines:
                    print("FAIL", wl, name, out.stderr[-300:], flush=True)
                    continue
                d = json.loads(lines[-1])
                res.setdefault((wl, name), []).append(d)
                print(r, wl, name, round(d["ops_per_s"]), round(d["cpu_us_per_op"], 3), flush=True)
    print("\n| workload | contender | rt/s | CPU us/rt | user us | sys us | sys share |")
    print("|---|---|---|---|---|---|---|")
    for wl in workloads:
        for name, _, _ in CONTENDERS:
            v = res.get((wl, name))
            if not v:
                continue
            med = lambda key: statistics.median(x[key] for x in v)  # noqa: E731
            share = statistics.median(x["sys_s"] / (x["sys_s"] + x["user_s"]) for x in v)
            print(f"| {wl} | {name} | {med('ops_per_s'):.0f} | {med('cpu_us_per_op'):.3f} | "
                  f"{med('user_us_per_op'):.3f} | {med('sys_us_per_op'):.3f} | {share:.3f} |")


if __name__ == "__main__":
    main()
