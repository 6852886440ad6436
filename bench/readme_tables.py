"""Print bench/README.md's summary tables from a results JSON (medians and ratios).

    python bench/readme_tables.py bench/results/latest.json   # loop core, executor, memory
    python bench/readme_tables.py bench/results/echo.json     # echo and HTTP, CPU per round trip

bench/README.md quotes these tables verbatim, so they are regenerated,
never edited by hand. Ratios say how many times better uvpy is than the peer
(value / peer for throughputs, peer / value for lower-is-better units).
"""
import json
import statistics
import sys

LABELS = {
    "call_soon/callbacks": "call_soon, 1M callbacks",
    "call_soon/chain": "`await asyncio.sleep(0)` chain",
    "timers/cancel": "call_later, schedule + cancel 100k",
    "timers/fire": "call_later, 100k firing",
    "executor/roundtrip": "executor: no-op round trip, p50 (lower is better)",
    "executor/gather": "executor: 20k Python no-ops under gather",
    "executor/native_noop": "executor: 20k native no-op kernels",
    "executor/sha256_par": "executor: sha256, 64 x 1 MiB, all workers",
    "executor/sha256_1w": "executor: sha256, 64 x 1 MiB, one worker",
    "executor/lag": "executor: loop lag p99 under full offload, ms (lower is better)",
    "memory/idle_conns": "memory per idle connection, bytes (lower is better)",
}


def si(x: float) -> str:
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.2f}{suffix}"
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


def load(path):
    with open(path) as f:
        data = json.load(f)
    cells = {}
    for r in data["results"]:
        if r.get("status", "ok") == "ok" and r.get("median") is not None:
            r.setdefault("lower_is_better", False)
            cells[(r["workload"], r["contender"])] = r
    return data, cells


def ratio(cells, label, peer, value_key="median", lower=None):
    a, b = cells.get((label, "uvpy")), cells.get((label, peer))
    if a is None or b is None:
        return "-"
    lower = a["lower_is_better"] if lower is None else lower
    x, y = a[value_key], b[value_key]
    if not x or not y:
        return "-"
    return f"{(y / x if lower else x / y):.2f}x"


def core_tables(data, cells):
    labels = sorted({w for w, _ in cells}, key=lambda w: (list(LABELS).index(w) if w in LABELS else 99, w))
    peers = [p for p in ("uvpy-uring", "uvloop", "rloop", "asyncio") if p in data["loops"]]
    print("| workload | uvpy | " + " | ".join(f"vs {p}" for p in peers) + " |")
    print("|---|---|" + "---|" * len(peers))
    for w in labels:
        if (w, "uvpy") not in cells:
            continue
        row = cells[(w, "uvpy")]
        value = row["median"]
        if w == "executor/roundtrip":  # the JSON carries the latency too
            p50s = [run.get("p50_us") for run in row["runs"] if run.get("p50_us")]
            shown = f"{statistics.median(p50s):.1f} µs" if p50s else si(value)
            rt = {p: [run.get("p50_us") for run in cells[(w, p)]["runs"]] for p in peers if (w, p) in cells}
            ratios = []
            for p in peers:
                if p in rt and p50s:
                    ratios.append(f"{statistics.median(rt[p]) / statistics.median(p50s):.2f}x")
                else:
                    ratios.append("-")
            print(f"| {LABELS.get(w, w)} | {shown} | " + " | ".join(ratios) + " |")
            continue
        unit = "" if row["lower_is_better"] else "/s"
        if "MiB" in row["unit"]:
            unit = " MiB/s"
        shown = f"{value:,.0f}" if w == "memory/idle_conns" else f"{si(value)}{unit}"
        print(f"| {LABELS.get(w, w)} | {shown} | " + " | ".join(ratio(cells, w, p) for p in peers) + " |")


def med(row, key):
    vals = [run[key] for run in row["runs"] if run.get(key) is not None]
    return statistics.median(vals) if vals else None


def echo_tables(data, cells):
    peers = [p for p in ("uvpy-uring", "uvloop", "asyncio") if p in data["loops"]]
    labels = sorted({w for w, _ in cells if (w, "uvpy") in cells})
    head = "| workload | uvpy rt/s | uvpy CPU µs/rt |"
    for p in peers:
        head += f" {p} rt/s ratio | {p} CPU µs/rt | CPU ratio |"
    print(head)
    print("|---|---|---|" + "---|---|---|" * len(peers))
    for w in labels:
        me = cells[(w, "uvpy")]
        cpu = med(me, "cpu_us_per_op")
        line = f"| {w.split('/', 1)[-1]} | {si(me['median'])} | {cpu:.1f} |" if cpu else f"| {w} | {si(me['median'])} | - |"
        for p in peers:
            other = cells.get((w, p))
            if other is None:
                line += " - | - | - |"
                continue
            ocpu = med(other, "cpu_us_per_op")
            line += f" {ratio(cells, w, p)} | {ocpu:.1f} | " if ocpu else f" {ratio(cells, w, p)} | - | "
            line += f"{cpu / ocpu:.2f}x |" if cpu and ocpu else "- |"
        print(line)
    print()
    print("CPU ratio: uvpy's server CPU per round trip over the peer's (lower is better for uvpy).")
    shares = [p for p in ("uvpy", "uvpy-uring", "uvloop") if p in data["loops"]]
    print()
    print("| workload | " + " | ".join(f"{p} user/sys µs per rt (sys share)" for p in shares) + " |")
    print("|---|" + "---|" * len(shares))
    for w in labels:
        line = f"| {w.split('/', 1)[-1]} |"
        for p in shares:
            row = cells.get((w, p))
            u = med(row, "user_us_per_op") if row else None
            sy = med(row, "sys_us_per_op") if row else None
            line += f" {u:.1f} / {sy:.1f} ({sy / (u + sy):.0%}) |" if u is not None and sy is not None else " - |"
        print(line)


def main(argv):
    if len(argv) != 2:
        print(__doc__)
        return 2
    data, cells = load(argv[1])
    m = data["machine"]
    print(f"<!-- {argv[1]}: {m.get('date')}, {data['config'].get('rounds')} rounds -->")
    if any("cpu_us_per_op" in run for r in data["results"] for run in r.get("runs", [])):
        echo_tables(data, cells)
    else:
        core_tables(data, cells)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
