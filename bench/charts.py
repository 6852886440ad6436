"""PNG charts from a bench results JSON: one horizontal bar chart per suite,
each workload's median as a ratio to uvloop (1.0 = uvloop). Workloads whose
unit says "lower is better" are flipped (uvloop / contender) so that longer
bars always mean better.

    python bench/charts.py [bench/results/latest.json]
"""
import json
import os
import sys
from collections import defaultdict

COLORS = {"uvpy": "#2b7bba", "uvloop": "#8c8c8c", "asyncio": "#e08214"}


def make_charts(report: dict, out_dir: str, prefix: str = "latest") -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_suite = defaultdict(lambda: defaultdict(dict))
    for row in report["results"]:
        if row.get("median") is None:
            continue
        suite, _, workload = row["workload"].partition("/")
        by_suite[suite][workload][row["contender"]] = (row["median"], row["unit"])
    commit = report["machine"].get("git_commit") or "n/a"
    paths = []
    for suite, workloads in by_suite.items():
        names = list(workloads)
        contenders = [c for c in COLORS if any(c in workloads[w] for w in names)]
        fig, ax = plt.subplots(figsize=(9, 0.6 + 0.55 * len(names) * len(contenders) / 2))
        height = 0.8 / max(1, len(contenders))
        for k, c in enumerate(contenders):
            ys, xs = [], []
            for i, w in enumerate(names):
                cell, ref = workloads[w].get(c), workloads[w].get("uvloop")
                if not cell or not ref or not cell[0] or not ref[0]:
                    continue
                lower_better = "lower is better" in cell[1]
                ratio = ref[0] / cell[0] if lower_better else cell[0] / ref[0]
                ys.append(i + k * height)
                xs.append(ratio)
            ax.barh(ys, xs, height=height, color=COLORS[c], label=c)
            for y, x in zip(ys, xs):
                ax.text(x, y, f" {x:.2f}x", va="center", fontsize=8)
        ax.set_yticks([i + height * (len(contenders) - 1) / 2 for i in range(len(names))])
        ax.set_yticklabels(names)
        ax.invert_yaxis()
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xlim(0, ax.get_xlim()[1] * 1.12)  # room for the value labels
        ax.set_xlabel("relative to uvloop (higher is better)")
        ax.set_title(f"{suite}: median of {report['config']['rounds']} rounds, commit {commit}")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{prefix}-{suite}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


if __name__ == "__main__":
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "results", "latest.json")
    with open(src) as f:
        report = json.load(f)
    for p in make_charts(report, os.path.dirname(os.path.abspath(src))):
        print("wrote", p)
