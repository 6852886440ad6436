"""Alternating A/B rounds of bench/echo.py workloads across uvpy's backends.

Contenders: uvpy (libuv), uvpy-uring (completion I/O, the default),
uvpy-uring with UVPY_URING_COMPLETION=0 (readiness only), uvloop, and the
two C floors of bench/echo_floor.py (c-epoll: echod, c-uring: echod_uring;
protocol_* workloads only, the same load with no loop at all). Every
(round, workload, contender) is a fresh process; the contender order
rotates each round. Prints each run, then medians: round trips/s, server CPU
per round trip (user/sys split) and the system-time share.

    python bench/echo_ab.py protocol_1k_c10,protocol_1k_c1000 5 [CONTENDER,...]

uring-noaccept is io_uring with UVPY_URING_ACCEPT=0 (listeners on
readiness + accept4, the rest as uring-comp). The optional third argument
picks contenders by name (default: all).
"""
import json
import os
import statistics
import subprocess
import sys

import _loadgen
import echo_floor

HERE = os.path.dirname(os.path.abspath(__file__))
CONTENDERS = [("uvpy", "uvpy", {}), ("uring-comp", "uvpy-uring", {}),
              ("uring-ready", "uvpy-uring", {"UVPY_URING_COMPLETION": "0"}),
              ("uring-noaccept", "uvpy-uring", {"UVPY_URING_ACCEPT": "0"}),
              ("uvloop", "uvloop", {}), ("c-epoll", "echod", None),
              ("c-uring", "echod_uring", None)]
SIZES = {"1k": 1024, "10k": 10 * 1024, "100k": 100 * 1024}


def run_floor(server, wl):
    """echo_floor's C server under the echo.py workload wl (protocol_SIZE_cCONNS)."""
    kind, size, conns = wl.split("_")
    if kind != "protocol":
        return None  # the floors echo whatever arrives: only the Protocol shape
    return echo_floor.run_once(server, SIZES[size], int(conns[1:]), 2.0, 0.5)


def main():
    workloads = sys.argv[1].split(",")
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    contenders = CONTENDERS
    if len(sys.argv) > 3:
        wanted = sys.argv[3].split(",")
        contenders = [c for c in CONTENDERS if c[0] in wanted]
    _loadgen.raise_nofile(1000 + 256)  # for the floors' load generators
    res = {}
    for r in range(rounds):
        k = r % len(contenders)
        for wl in workloads:
            for name, loop, env in contenders[k:] + contenders[:k]:
                if env is None:
                    d = run_floor(loop, wl)
                    if d is not None:
                        d.update(user_s=d["user_us_per_op"], sys_s=d["sys_us_per_op"])
                        res.setdefault((wl, name), []).append(d)
                        print(r, wl, name, round(d["ops_per_s"]), round(d["cpu_us_per_op"], 3),
                              flush=True)
                    continue
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
        for name, _, _ in contenders:
            v = res.get((wl, name))
            if not v:
                continue
            med = lambda key: statistics.median(x[key] for x in v)  # noqa: E731
            share = statistics.median(x["sys_s"] / (x["sys_s"] + x["user_s"]) for x in v)
            print(f"| {wl} | {name} | {med('ops_per_s'):.0f} | {med('cpu_us_per_op'):.3f} | "
                  f"{med('user_us_per_op'):.3f} | {med('sys_us_per_op'):.3f} | {share:.3f} |")


if __name__ == "__main__":
    main()
