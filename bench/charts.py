"""PNG charts from a bench results JSON.

* <prefix>-<suite>.png: one horizontal bar chart per suite, each workload's
  median as a ratio to uvloop (1.0 = uvloop; stock asyncio when uvloop did not
  run). Workloads whose values are lower-is-better are flipped (uvloop /
  contender) so that longer bars always mean better.
* <prefix>-<suite>-cpu.png: for suites whose workloads report the CPU cost
  per operation (extras "cpu_us_per_op", e.g. server CPU per echo round
  trip), that cost in µs per contender (shorter is better).
* <prefix>-<suite>-abs.png: for suites whose every workload is lower-is-better
  (e.g. memory per connection), the absolute medians, with the unit.

    python bench/charts.py [bench/results/latest.json]
"""
import json
import os
import sys
from collections import OrderedDict

COLORS = {"uvpy": "#2b7bba", "uvpy-uring": "#74add1", "uvloop": "#8c8c8c",
          "rloop": "#4d9221", "asyncio": "#e08214"}
_SPARE = ["#984ea3", "#a65628", "#f781bf", "#999999", "#e41a1c"]


def _color(name: str, k: int) -> str:
    return COLORS.get(name) or _SPARE[k % len(_SPARE)]


def _lower(row: dict) -> bool:
    if row.get("lower_is_better") is not None:
        return bool(row["lower_is_better"])
    return "lower is better" in row.get("unit", "")


def _by_suite(report: dict) -> "OrderedDict[str, OrderedDict[str, dict]]":
    """suite -> workload -> contender -> row (rows with a median only)."""
    out = OrderedDict()
    for row in report["results"]:
        if row.get("median") is None:
            continue
        suite, _, workload = row["workload"].partition("/")
        out.setdefault(suite, OrderedDict()).setdefault(workload, {})[row["contender"]] = row
    return out


def _contenders(report: dict, workloads: dict) -> list[str]:
    order = list(report["config"].get("contenders") or []) + list(COLORS)
    seen = []
    for c in order:
        if c not in seen and any(c in cells for cells in workloads.values()):
            seen.append(c)
    return seen


def _bars(plt, names, contenders, value_of, xlabel, title, ref_line=None, fmt="{:.2f}x"):
    label = fmt.format if isinstance(fmt, str) else fmt
    fig, ax = plt.subplots(figsize=(9, 0.9 + 0.32 * max(1, len(names) * len(contenders))))
    height = 0.8 / max(1, len(contenders))
    for k, c in enumerate(contenders):
        ys, xs = [], []
        for i, w in enumerate(names):
            x = value_of(w, c)
            if x is None:
                continue
            ys.append(i + k * height)
            xs.append(x)
        ax.barh(ys, xs, height=height, color=_color(c, k), label=c)
        for y, x in zip(ys, xs):
            ax.text(x, y, " " + label(x), va="center", fontsize=8)
    ax.set_yticks([i + height * (len(contenders) - 1) / 2 for i in range(len(names))])
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    if ref_line is not None:
        ax.axvline(ref_line, color="black", linewidth=0.8)
    ax.set_xlim(0, ax.get_xlim()[1] * 1.15)  # room for the value labels
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    return fig


def make_charts(report: dict, out_dir: str, prefix: str = "latest") -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    commit = report["machine"].get("git_commit") or "n/a"
    rounds = report["config"]["rounds"]
    quick = " (quick)" if report["config"].get("quick") else ""
    paths = []

    def save(fig, name):
        path = os.path.join(out_dir, f"{prefix}-{name}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    for suite, workloads in _by_suite(report).items():
        names = list(workloads)
        contenders = _contenders(report, workloads)
        ref = next((r for r in ("uvloop", "asyncio")
                    if any(r in cells for cells in workloads.values())), None)
        if ref is not None:
            def ratio(w, c):
                cell, base = workloads[w].get(c), workloads[w].get(ref)
                if not cell or not base or not cell["median"] or not base["median"]:
                    return None
                return base["median"] / cell["median"] if _lower(cell) else cell["median"] / base["median"]

            save(_bars(plt, names, contenders, ratio, f"relative to {ref} (higher is better)",
                       f"{suite}: median of {rounds} rounds{quick}, commit {commit}", ref_line=1.0),
                 suite)

        cpu_names = [w for w in names
                     if any("cpu_us_per_op" in (r.get("extras") or {}) for r in workloads[w].values())]
        if cpu_names:
            def cpu(w, c):
                return ((workloads[w].get(c) or {}).get("extras") or {}).get("cpu_us_per_op")

            save(_bars(plt, cpu_names, contenders, cpu, "CPU µs per operation (lower is better)",
                       f"{suite}: CPU per operation, median of {rounds} rounds{quick}, commit {commit}",
                       fmt="{:.1f}"), f"{suite}-cpu")

        if all(_lower(r) for cells in workloads.values() for r in cells.values()):
            units = sorted({r["unit"] for cells in workloads.values() for r in cells.values()})

            def absolute(w, c):
                cell = workloads[w].get(c)
                return cell["median"] if cell else None

            save(_bars(plt, names, contenders, absolute, " / ".join(units),
                       f"{suite}: median of {rounds} rounds{quick}, commit {commit}", fmt=lambda x: f"{x:,.0f}" if x >= 100 else f"{x:.2f}"),
                 f"{suite}-abs")
    return paths


if __name__ == "__main__":
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "results", "latest.json")
    with open(src) as f:
        report = json.load(f)
    prefix = os.path.splitext(os.path.basename(src))[0]
    for p in make_charts(report, os.path.dirname(os.path.abspath(src)), prefix):
        print("wrote", p)
