"""The benchmark report: machine info, per-suite tables (text and markdown),
and writing bench/results/<name>.{json,md,*.png}.

Everything here reads the report dict that _harness.run_benchmarks returns
(also the JSON written to disk), so a report can be re-rendered later:

    python bench/_report.py bench/results/latest.json    # prints the tables

Ratios are "times better than the reference": value / reference for
throughputs, reference / value for lower-is-better units, so >1 is better
either way. Extras a workload reports (median over rounds) become columns
when they are named in EXTRA_COLUMNS; the rest stay in the JSON.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Callable

from _harness import CONTENDERS, REFERENCES, REPO_ROOT, RESULTS_DIR, _dist_version, _fmt_value, _log


def _us(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def _kib_as_mib(x: float) -> str:
    return f"{x / 1024:.1f} MiB"


# extras key -> (column header, formatter). Shown, in this order, in a suite's
# table when any of its rows has the key. Add a line to show a new metric.
EXTRA_COLUMNS: dict[str, tuple[str, Callable[[float], str]]] = OrderedDict([
    ("cpu_us_per_op", ("CPU µs/op", _us)),
    ("p50_us", ("p50 µs", _us)),
    ("p99_us", ("p99 µs", _us)),
    ("peak_rss_kb", ("peak RSS", _kib_as_mib)),
])

PEERS = ("uvloop", "rloop", "aiohttp")


# ------------------------------------------------------------ machine info

def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _cpu_model() -> str | None:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or None


def _mem_total_kb() -> int | None:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return None


def _virtualization() -> str | None:
    """'VM' when the CPU flags show a hypervisor, plus the container kind if
    systemd-detect-virt names one; None on bare metal (or when unknown)."""
    kinds = []
    if any(l.startswith("flags") and " hypervisor" in l for l in _read("/proc/cpuinfo").splitlines()):
        kinds.append("VM")
    try:
        out = subprocess.run(["systemd-detect-virt", "--container"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        if out and out != "none":
            kinds.append(f"container: {out}")
    except (OSError, subprocess.SubprocessError):
        if os.path.exists("/.dockerenv"):
            kinds.append("container: docker")
    return ", ".join(kinds) or None


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          check=True, timeout=10).stdout.strip()


def _git_commit() -> str | None:
    try:
        # results files are outputs, not code: a run after a run is not "dirty"
        dirty = _git("status", "--porcelain", "--", ".", ":(exclude)bench/results")
        return _git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")
    except Exception:
        return None


def _git_branch() -> str | None:
    try:
        return _git("rev-parse", "--abbrev-ref", "HEAD")
    except Exception:
        return None


def machine_info() -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "mem_total_kb": _mem_total_kb(),
        "virtualization": _virtualization(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "peers": {p: _dist_version(p) for p in PEERS},
        "uvloop": _dist_version("uvloop"),  # kept for readers of older reports
        "uvpy": _dist_version("uvpy"),
        "git_commit": _git_commit(),
        "git_branch": _git_branch(),
    }


def machine_notes(m: dict) -> list[str]:
    """Plain sentences about where the machine, not the loop, is the limit."""
    notes = []
    cpus = m.get("cpu_usable") or m.get("cpu_count")
    virt = m.get("virtualization") or ""
    if cpus and cpus <= 4:
        kind = "VM" if "VM" in virt else ("container" if virt else "machine")
        notes.append(f"This machine is a {cpus}-core {kind}: the loop under test, its client "
                     "processes (echo clients, load generators) and executor workers share "
                     f"{cpus} cores, so wherever a benchmark needs more than one core the "
                     "machine is the limit, not the loop. Read the ratios, not the absolute numbers.")
    load = m.get("loadavg") or [0]
    end = m.get("loadavg_end") or [0]
    if cpus and max(load[0], end[0]) > 0.5 * cpus:
        notes.append(f"The machine was busy (1-minute load {load[0]} at the start, {end[0]} at "
                     f"the end, on {cpus} cores): expect noise; compare the min-max spreads "
                     "before believing a small difference.")
    return notes


# ------------------------------------------------------------------ tables

def suites(report: dict) -> "OrderedDict[str, list[dict]]":
    by = OrderedDict()
    for r in report["results"]:
        by.setdefault(r.get("suite") or r["workload"].partition("/")[0], []).append(r)
    return by


def _lower(row: dict) -> bool:
    if row.get("lower_is_better") is not None:
        return bool(row["lower_is_better"])
    return "lower is better" in row.get("unit", "")


def extra_keys(rows: list[dict]) -> list[str]:
    present = {k for r in rows for k in (r.get("extras") or {})}
    return [k for k in EXTRA_COLUMNS if k in present]


def refs_present(rows: list[dict]) -> list[str]:
    """The references that have a median somewhere in these rows (a ratio
    column against a contender that did not run would be all n/a)."""
    have = {r["contender"] for r in rows if r.get("median") is not None}
    return [ref for ref in REFERENCES if ref in have]


def suite_headers(rows: list[dict]) -> list[str]:
    refs = [f"vs {ref}" for ref in refs_present(rows)]
    return (["workload", "contender", "median", "min-max", *refs]
            + [EXTRA_COLUMNS[k][0] for k in extra_keys(rows)])


def suite_rows(rows: list[dict]) -> list[list[str]]:
    keys, refs = extra_keys(rows), refs_present(rows)
    out = []
    for r in rows:
        name = r["workload"].partition("/")[2] or r["workload"]
        if r.get("median") is None:
            status = r.get("status") if r.get("status") in ("skipped", "failed") else "failed"
            out.append([name, r["contender"], status, r.get("error") or "no runs"]
                       + [""] * (len(refs) + len(keys)))
            continue
        ratios = [f"{r[f'vs_{ref}']:.2f}x" if r.get(f"vs_{ref}") else "n/a" for ref in refs]
        extras = r.get("extras") or {}
        cols = [EXTRA_COLUMNS[k][1](extras[k]) if k in extras else "" for k in keys]
        out.append([name, r["contender"], _fmt_value(r["median"]),
                    f"{_fmt_value(r['min'])}-{_fmt_value(r['max'])}", *ratios, *cols])
    return out


def _direction(rows: list[dict]) -> str:
    lows = {_lower(r) for r in rows}
    if lows == {True}:
        return "lower is better"
    if lows == {False}:
        return "higher is better"
    return "mixed: see each unit"


def _units(rows: list[dict]) -> list[tuple[str, int, str, bool]]:
    seen = OrderedDict()
    for r in rows:
        seen.setdefault(r["workload"], (r["workload"].partition("/")[2] or r["workload"],
                                        r["n"], r["unit"], _lower(r)))
    return list(seen.values())


def format_table(report: dict) -> str:
    """Plain-text tables, one per suite, for the terminal."""
    blocks = []
    for suite, rows in suites(report).items():
        headers = suite_headers(rows)
        body = suite_rows(rows)
        table = [headers] + body
        ok = [headers] + [b for b in body if b[2] not in ("skipped", "failed")]
        widths = [max(len(row[i]) for row in (table if i < 2 else ok)) for i in range(len(headers))]
        lines = [f"== {suite} ({_direction(rows)}; ratios >1 = better than the reference)"]
        for k, row in enumerate(table):
            if k and row[2] in ("skipped", "failed"):
                lines.append(f"{row[0].ljust(widths[0])}  {row[1].ljust(widths[1])}  {row[2]}: {row[3]}")
                continue
            lines.append("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                                   for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
            if k == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines += [f"  {name}: n={n:,}, {unit}" for name, n, unit, _ in _units(rows)]
        blocks.append("\n".join(lines))
    blocks.append("\n".join(_contender_lines(report)
                             + [f"suite {s}: not run ({why})"
                                for s, why in (report["config"].get("broken_suites") or {}).items()]))
    return "\n\n".join(b for b in blocks if b)


def _contender_lines(report: dict) -> list[str]:
    lines = []
    for name in report["config"].get("contenders", []):
        if name in report.get("skipped", {}):
            lines.append(f"skipped: {name} ({report['skipped'][name]})")
    return lines


def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
            + ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows])


def _gib(kb: int | None) -> str:
    return f"{kb / 1024 / 1024:.1f} GiB" if kb else "n/a"


def format_markdown(report: dict, charts: dict[str, list[str]] | None = None) -> str:
    """charts: suite -> chart file names (relative to the .md) to link."""
    m, cfg = report["machine"], report["config"]
    peers = m.get("peers") or {"uvloop": m.get("uvloop")}
    cpus = m.get("cpu_usable") or m.get("cpu_count")
    rounds = f"{cfg['rounds']} measured round{'s' if cfg['rounds'] != 1 else ''}"
    out = ["# uvpy benchmarks", ""]
    if cfg.get("quick"):
        out += ["**Quick run** (`--quick`: smaller sizes, fewer rounds): a smoke test and a "
                "rough picture, not a measurement to quote.", ""]
    if cfg.get("interrupted"):
        out += ["**Interrupted**: only the cells that ran are reported.", ""]
    out += [
        f"- date: {m['date']}" + (f" (took {m['duration_s']:.0f} s)" if m.get("duration_s") else ""),
        f"- commit: `{m.get('git_commit') or 'n/a'}`" + (f" on `{m['git_branch']}`" if m.get("git_branch") else ""),
        f"- machine: {m.get('cpu_model') or 'unknown CPU'}, {m.get('cpu_count')} CPUs"
        + (f" ({cpus} usable)" if cpus != m.get("cpu_count") else "")
        + f", {_gib(m.get('mem_total_kb'))} memory"
        + (f", {m['virtualization']}" if m.get("virtualization") else ""),
        f"- kernel: {m.get('kernel')} ({m.get('platform')})",
        f"- Python: {m.get('python')} ({m.get('python_impl', 'CPython')})",
        "- peers: " + ", ".join(f"{p} {v or 'not installed'}" for p, v in peers.items()),
        f"- load average (1/5/15 min): {m.get('loadavg')} at the start"
        + (f", {m['loadavg_end']} at the end" if m.get("loadavg_end") else ""),
    ]
    notes = machine_notes(m)
    if notes:
        out += [""] + "\n>\n".join(f"> {n}" for n in notes).split("\n")
    out += ["", f"{rounds}" + (" + 1 discarded warm-up round" if cfg["warmup"] else "")
            + ", one fresh process per (workload, contender, round), contender order rotated "
            "every round. `median` and `min-max` are over the measured rounds, in the "
            "workload's unit. Ratios say how many times *better* than the reference a "
            "contender is: value / reference for throughputs, reference / value for "
            "lower-is-better units, so >1 is better either way.", ""]

    out += ["## Contenders", ""]
    crow = []
    for name in cfg.get("contenders", []):
        about = CONTENDERS[name].about if name in CONTENDERS else ""
        if name in report.get("skipped", {}):
            crow.append([name, about, "skipped: " + report["skipped"][name], ""])
            continue
        info = report.get("loops", {}).get(name, {})
        version = info.get("version") or "?"
        if info.get("backend"):
            version += f" ({info['backend']} backend)"
        crow.append([name, about, version, f"`{info.get('module_file')}`" if info.get("module_file") else ""])
    out += _md_table(["contender", "what", "version / status", "module"], crow)

    for suite, rows in suites(report).items():
        out += ["", f"## {suite}", "", f"*{_direction(rows)}*", ""]
        out += _md_table(suite_headers(rows), suite_rows(rows))
        out += [""] + [f"- `{name}`: n={n:,}, {unit}" for name, n, unit, _ in _units(rows)]
        keys = extra_keys(rows)
        if keys:
            out += [f"- extra columns (medians over rounds): "
                    + ", ".join(EXTRA_COLUMNS[k][0] for k in keys)]
        for chart in (charts or {}).get(suite, []):
            out += ["", f"![{suite}]({chart})"]
    broken = cfg.get("broken_suites") or {}
    if broken:
        out += ["", "## Suites not run", ""] + [f"- `{s}`: {why}" for s, why in broken.items()]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ files

def _write(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def write_results(report: dict, name: str = "latest", out_dir: str = RESULTS_DIR,
                  charts: bool = True) -> list[str]:
    """Write <name>.json, <name>.md and (matplotlib permitting) PNG charts;
    returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    made: dict[str, list[str]] = {}
    paths = []
    if charts:
        try:
            from charts import make_charts
            for path in make_charts(report, out_dir, name):
                paths.append(path)
                base = os.path.basename(path)
                suite = base[len(name) + 1:-len(".png")].split("-")[0]
                made.setdefault(suite, []).append(base)
        except ImportError as e:  # matplotlib missing: tables only
            _log(f"charts skipped: {e}")
    for ext, text in (("json", json.dumps(report, indent=2) + "\n"),
                      ("md", format_markdown(report, made))):
        path = os.path.join(out_dir, f"{name}.{ext}")
        _write(path, text)
        paths.append(path)
    return paths


if __name__ == "__main__":  # re-render: python bench/_report.py results.json
    with open(sys.argv[1]) as f:
        print(format_table(json.load(f)))
