"""The benchmark command (python -m uvpy.bench / bench/run.py): argument
parsing, the report tables and files, the runner's handling of skipped and
failing cells. Synthetic reports and fake runners only: no benchmark runs.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(REPO, "bench")

if BENCH not in sys.path:
    sys.path.append(BENCH)  # at the end, as the bench command does

import _harness  # noqa: E402
import _report  # noqa: E402


def _load_run():
    spec = importlib.util.spec_from_file_location("_test_bench_run", os.path.join(BENCH, "run.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


run = _load_run()
ALL = ["uvpy", "uvpy-uring", "uvloop", "rloop", "asyncio"]


# ------------------------------------------------------------ CLI parsing

def test_defaults_full_run():
    args = run.parse([])
    assert args.contender_list == ALL
    assert (args.rounds, args.warmup, args.name, args.quick) == (5, True, "latest", False)
    labels = [j.label for j in args.jobs]
    assert "call_soon/callbacks" in labels and "memory/idle_conns" in labels
    mem = next(j for j in args.jobs if j.label == "memory/idle_conns")
    assert mem.n == 10_000 and mem.lower_is_better
    assert not args.broken


def test_quick_defaults_and_overrides():
    args = run.parse(["--quick"])
    assert (args.rounds, args.warmup, args.name) == (2, False, "quick")
    assert next(j for j in args.jobs if j.label == "memory/idle_conns").n == 1_000
    args = run.parse(["--quick", "--rounds", "4", "--warmup", "--name", "x"])
    assert (args.rounds, args.warmup, args.name) == (4, True, "x")
    assert run.parse(["--no-warmup"]).warmup is False


def test_contenders_selection():
    assert run.parse(["--contenders", "uvloop,asyncio"]).contender_list == ["uvloop", "asyncio"]
    assert run.parse(["--contenders", "all"]).contender_list == ALL
    assert run.parse(["--contenders", "uvpy,uvpy"]).contender_list == ["uvpy"]


@pytest.mark.parametrize("argv, message", [
    (["--contenders", "uvpy,nope"], "unknown contender(s): nope"),
    (["--rounds", "0"], "--rounds must be >= 1"),
    (["--only", "call_soon,bogus/x"], "unknown --only item(s): bogus/x"),
    (["--name", "a/b"], "plain file stem"),
])
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        run.parse(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_only_suites_and_labels():
    args = run.parse(["--only", "timers,executor/lag"])
    assert [j.label for j in args.jobs] == ["timers/cancel", "timers/fire", "executor/lag"]


def test_list(capsys):
    assert run.main(["--list"], prog="python -m uvpy.bench") == 0
    out = capsys.readouterr().out
    for name in ALL:
        assert name in out
    assert "memory/idle_conns" in out and "quick=1,000" in out


def test_broken_suite_is_reported_not_fatal(monkeypatch):
    monkeypatch.setattr(run, "SUITES", run.SUITES + ("no_such_suite",))
    jobs, broken = run.load_jobs(True, run.SUITES)
    assert jobs and "no_such_suite" in broken


# ------------------------------------------------------------ uvpy.bench

def test_uvpy_bench_finds_the_checkout(monkeypatch):
    import uvpy.bench

    monkeypatch.delenv("UVPY_BENCH_DIR", raising=False)
    assert uvpy.bench.find_bench_dir() == BENCH


def test_uvpy_bench_without_checkout(monkeypatch, tmp_path, capsys):
    import uvpy.bench

    monkeypatch.setenv("UVPY_BENCH_DIR", str(tmp_path))
    assert uvpy.bench.find_bench_dir() is None
    assert uvpy.bench.main(["--quick"]) == 2
    err = capsys.readouterr().err
    assert "source checkout" in err and str(tmp_path) in err


def test_uvpy_bench_module_runs(tmp_path):
    p = subprocess.run([sys.executable, "-m", "uvpy.bench", "--list"], capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "memory/idle_conns" in p.stdout


# --------------------------------------------------------- synthetic report

def _job(label, unit, lower=False, n=100):
    return _harness.Job(label, "/dev/null", label.partition("/")[2], n, unit, lower)


def _runs(values, **extras):
    return [{"round": i + 1, "ops": 100, "ops_per_s": v, "cpu_s": 0.1, "wall_s": 0.2,
             **{k: (x[i] if isinstance(x, list) else x) for k, x in extras.items()}}
            for i, v in enumerate(values)]


def _ok(values, **extras):
    return {"runs": _runs(values, **extras), "status": "ok", "error": None}


def synthetic_report():
    results = []
    results += _harness.summarize(_job("call_soon/callbacks", "callbacks/s"), {
        "uvpy": _ok([400.0, 500.0, 600.0]),
        "uvloop": _ok([250.0, 250.0, 250.0]),
        "rloop": {"runs": [], "status": "failed", "error": "exit 1: AttributeError: no call_soon"},
        "asyncio": _ok([100.0, 100.0, 100.0]),
    })
    results += _harness.summarize(_job("memory/idle_conns", "bytes/connection (lower is better)", True), {
        "uvpy": _ok([500.0, 500.0], peak_rss_kb=20480),
        "uvloop": _ok([1000.0, 1000.0], peak_rss_kb=30720),
        "rloop": {"runs": [], "status": "skipped", "error": "RLIMIT_NOFILE hard limit is 500"},
        "asyncio": _ok([2000.0, 2000.0], peak_rss_kb=40960),
    })
    results += _harness.summarize(_job("echo/small", "round trips/s"), {
        "uvpy": _ok([2e5, 2e5], cpu_us_per_op=[4.0, 6.0], p50_us=40.0, p99_us=90.0, peak_rss_kb=1024),
        "uvloop": _ok([1e5, 1e5], cpu_us_per_op=10.0, p50_us=80.0, p99_us=150.0, peak_rss_kb=2048),
        "rloop": _ok([1.5e5, 1.5e5], cpu_us_per_op=8.0, p50_us=60.0, p99_us=120.0, peak_rss_kb=2048),
        "asyncio": _ok([5e4, 5e4], cpu_us_per_op=20.0, p50_us=160.0, p99_us=300.0, peak_rss_kb=4096),
    })
    machine = {"date": "2026-01-01T00:00:00+00:00", "platform": "Linux-x", "kernel": "6.1.0",
               "python": "3.11.7", "python_impl": "CPython", "cpu_model": "Test CPU",
               "cpu_count": 2, "cpu_usable": 2, "mem_total_kb": 8 * 1024 * 1024,
               "virtualization": "VM", "loadavg": [0.1, 0.1, 0.1], "loadavg_end": [0.2, 0.1, 0.1],
               "peers": {"uvloop": "0.23.0", "rloop": "0.5.0", "aiohttp": None},
               "uvloop": "0.23.0", "git_commit": "abc1234+dirty", "git_branch": "main",
               "duration_s": 61.0}
    return {"machine": machine,
            "loops": {c: {"version": "1.0", "module_file": f"/x/{c}.py"} for c in
                      ("uvpy", "uvloop", "rloop", "asyncio")},
            "skipped": {"uvpy-uring": "Unavailable: this uvpy has no io_uring backend"},
            "config": {"rounds": 2, "warmup": False, "quick": True, "contenders": ALL,
                       "broken_suites": {}},
            "results": results}


def _row(report, workload, contender):
    return next(r for r in report["results"] if r["workload"] == workload and r["contender"] == contender)


def test_summary_medians_and_ratios():
    rep = synthetic_report()
    r = _row(rep, "call_soon/callbacks", "uvpy")
    assert (r["median"], r["min"], r["max"]) == (500.0, 400.0, 600.0)
    assert r["vs_uvloop"] == pytest.approx(2.0) and r["vs_asyncio"] == pytest.approx(5.0)
    assert _row(rep, "call_soon/callbacks", "rloop")["status"] == "failed"
    assert _row(rep, "echo/small", "uvpy")["extras"]["cpu_us_per_op"] == pytest.approx(5.0)


def test_lower_is_better_ratios_mean_better():
    rep = synthetic_report()
    uvpy = _row(rep, "memory/idle_conns", "uvpy")
    asyncio_ = _row(rep, "memory/idle_conns", "asyncio")
    assert uvpy["vs_uvloop"] == pytest.approx(2.0)       # half the bytes: 2x better
    assert asyncio_["vs_uvloop"] == pytest.approx(0.5)   # twice the bytes: 0.5x
    assert _harness.ratio(500, 1000, True) == 2.0 and _harness.ratio(500, 1000, False) == 0.5
    assert _harness.ratio(None, 1000, True) is None


def test_workload_direction_from_unit_or_flag():
    w = _harness.Workload("x", None, 1, 1, "ms p99 (lower is better)")
    assert w.lower
    assert not _harness.Workload("y", None, 1, 1, "ops/s").lower
    assert _harness.Workload("z", None, 1, 1, "bytes", lower_is_better=True).lower


def _section(md, title):
    start = md.index(f"## {title}\n")
    end = md.find("\n## ", start + 1)
    return md[start:end if end != -1 else len(md)]


def test_markdown_report():
    md = _report.format_markdown(synthetic_report(), {"echo": ["r-echo.png", "r-echo-cpu.png"]})
    # reproducibility info
    for text in ("Test CPU", "2 CPUs", "8.0 GiB", "6.1.0", "3.11.7", "uvloop 0.23.0",
                 "rloop 0.5.0", "aiohttp not installed", "abc1234+dirty", "[0.1, 0.1, 0.1] at the start",
                 "[0.2, 0.1, 0.1] at the end", "2-core VM", "Quick run"):
        assert text in md, text
    # a skipped contender, with its reason
    contenders = _section(md, "Contenders")
    assert "| uvpy-uring |" in contenders and "skipped: Unavailable: this uvpy has no io_uring backend" in contenders
    # one table per suite; extras columns only where a workload reports them
    call_soon, memory, echo = (_section(md, s) for s in ("call_soon", "memory", "echo"))
    assert "CPU µs/op" not in call_soon and "peak RSS" not in call_soon
    assert "| failed | exit 1: AttributeError: no call_soon |" in call_soon
    assert "*lower is better*" in memory and "peak RSS" in memory and "CPU µs/op" not in memory
    assert "| skipped | RLIMIT_NOFILE hard limit is 500 |" in memory
    assert "| idle_conns | uvpy | 500.0 | 500.0-500.0 | 2.00x | 4.00x | 20.0 MiB |" in memory
    header = next(l for l in echo.splitlines() if l.startswith("| workload"))
    assert header == ("| workload | contender | median | min-max | vs uvloop | vs asyncio "
                      "| CPU µs/op | p50 µs | p99 µs | peak RSS |")
    assert "| small | uvpy | 200.00k | 200.00k-200.00k | 2.00x | 4.00x | 5.0 | 40.0 | 90.0 | 1.0 MiB |" in echo
    assert "![echo](r-echo-cpu.png)" in echo


def test_text_table():
    text = _report.format_table(synthetic_report())
    assert "== memory (lower is better" in text
    assert "skipped: uvpy-uring (Unavailable: this uvpy has no io_uring backend)" in text
    assert "rloop      failed: exit 1: AttributeError: no call_soon" in text
    echo = text[text.index("== echo"):]
    assert "CPU µs/op" in echo.splitlines()[1] and "p99 µs" in echo.splitlines()[1]


def test_markdown_escapes_pipes():
    rep = synthetic_report()
    _row(rep, "call_soon/callbacks", "rloop")["error"] = "a | b"
    assert "a \\| b" in _report.format_markdown(rep)


def test_machine_notes():
    assert _report.machine_notes({"cpu_count": 16, "cpu_usable": 16, "loadavg": [0.5]}) == []
    notes = _report.machine_notes({"cpu_count": 2, "cpu_usable": 2, "virtualization": "VM",
                                   "loadavg": [3.0], "loadavg_end": [1.0]})
    assert "2-core VM" in notes[0] and "busy" in notes[1]


def test_machine_info_keys():
    m = _report.machine_info()
    for key in ("date", "kernel", "python", "cpu_model", "cpu_count", "mem_total_kb", "loadavg",
                "peers", "git_commit"):
        assert key in m
    assert set(m["peers"]) == {"uvloop", "rloop", "aiohttp"}


def test_write_results(tmp_path):
    rep = synthetic_report()
    paths = _report.write_results(rep, "t", str(tmp_path), charts=False)
    assert sorted(os.path.basename(p) for p in paths) == ["t.json", "t.md"]
    with open(tmp_path / "t.json") as f:
        again = json.load(f)
    assert _report.format_markdown(again) == (tmp_path / "t.md").read_text()


@pytest.mark.leaks_fds("matplotlib keeps each font file it has loaded open (its font cache) "
                       "for the life of the process")
def test_write_results_charts(tmp_path):
    pytest.importorskip("matplotlib")
    paths = _report.write_results(synthetic_report(), "t", str(tmp_path))
    names = sorted(os.path.basename(p) for p in paths)
    assert {"t-call_soon.png", "t-memory.png", "t-memory-abs.png", "t-echo.png",
            "t-echo-cpu.png", "t.md", "t.json"} <= set(names)
    md = (tmp_path / "t.md").read_text()
    assert "![memory](t-memory-abs.png)" in md and "![echo](t-echo-cpu.png)" in md


# ------------------------------------------------------------ the runner

def test_runner_records_failures_and_goes_on(capsys):
    jobs = [_job("s/a", "ops/s"), _job("s/b", "ms (lower is better)", True)]
    calls = []

    def fake_probe(name):
        if name == "uvpy-uring":
            return {"skipped": "Unavailable: no io_uring"}
        return {"version": "1", "module_file": f"/{name}.py"}

    def fake_run(job, contender, timeout):
        calls.append((job.label, contender))
        if contender == "rloop" and job.label == "s/a":
            raise _harness.RunError("exit 1: NotImplementedError", skipped=False)
        if contender == "asyncio" and job.label == "s/b":
            raise _harness.RunError("not supported by this loop", skipped=True)
        return {"ops": 10, "ops_per_s": 100.0 if contender != "uvpy" else 200.0,
                "cpu_s": 0.1, "wall_s": 0.1, "p99_us": 7.0}

    rep = _harness.run_benchmarks(jobs, ALL, rounds=2, warmup=True,
                                  probe=fake_probe, run_one=fake_run)
    assert rep["skipped"] == {"uvpy-uring": "Unavailable: no io_uring"}
    assert rep["machine"]["loadavg_end"] and rep["machine"]["duration_s"] >= 0
    # rloop on s/a failed in the warm-up round and was not run again; s/b still ran
    assert calls.count(("s/a", "rloop")) == 1 and calls.count(("s/b", "rloop")) == 3
    assert calls.count(("s/a", "uvpy")) == 3  # warm-up + 2 rounds
    a_rloop, b_asyncio = _row(rep, "s/a", "rloop"), _row(rep, "s/b", "asyncio")
    assert (a_rloop["status"], a_rloop["error"]) == ("failed", "exit 1: NotImplementedError")
    assert (b_asyncio["status"], b_asyncio["error"]) == ("skipped", "not supported by this loop")
    a_uvpy = _row(rep, "s/a", "uvpy")
    assert len(a_uvpy["runs"]) == 2 and a_uvpy["vs_uvloop"] == pytest.approx(2.0)
    assert _row(rep, "s/b", "uvpy")["vs_uvloop"] == pytest.approx(0.5)  # lower is better
    assert a_uvpy["extras"] == {"p99_us": 7.0}
    err = capsys.readouterr().err
    assert "s/a · uvloop · round 2/2" in err and "warm-up" in err and "eta" in err
    assert "FAILED: exit 1: NotImplementedError" in err and "SKIPPED: not supported" in err
    assert "uvpy-uring: skipped (Unavailable: no io_uring)" in err
    assert "ratios >1" in _report.format_table(rep)


def test_progress_eta():
    now = [0.0]
    p = _harness.Progress([4, 2], clock=lambda: now[0])
    p.start_job(0)
    assert p.prefix() == "[1/6 0:00 eta ?]"
    for _ in range(2):
        now[0] += 1.0
        p.finished(1.0)
    # two runs left in job 0 at 1 s, two in job 1 at the overall mean (1 s)
    assert p.eta() == pytest.approx(4.0)
    assert p.prefix() == "[2/6 0:02 eta 0:04]"
    p.finished(3.0)
    p.finished(3.0)
    p.start_job(1)
    assert p.eta() == pytest.approx(2 * 2.0)


def _script(tmp_path, code):
    path = tmp_path / "w.py"
    path.write_text(code)
    return str(path)


def test_subprocess_classification(tmp_path):
    ok = _script(tmp_path, "print('noise'); print('{\"ops\": 1, \"ops_per_s\": 2.0}')")
    assert _harness._subprocess_json(_harness.child_command(ok), 30)["ops_per_s"] == 2.0
    skip = _script(tmp_path, "import sys; print('{\"skipped\": \"no fds\"}'); sys.exit(3)")
    with pytest.raises(_harness.RunError) as e:
        _harness._subprocess_json(_harness.child_command(skip), 30)
    assert e.value.skipped and str(e.value) == "no fds"
    fail = _script(tmp_path, "import sys; sys.stderr.write('x\\nValueError: boom\\n'); sys.exit(1)")
    with pytest.raises(_harness.RunError) as e:
        _harness._subprocess_json(_harness.child_command(fail), 30)
    assert not e.value.skipped and str(e.value) == "exit 1: ValueError: boom"


def test_child_command_keeps_bench_off_the_front(tmp_path):
    # a suite module named like a stdlib module must not shadow it in the child
    (tmp_path / "json.py").write_text("raise SystemExit('shadowed')\n")
    script = _script(tmp_path, "import json, sys; print(json.dumps({'ops': 1, 'path_end': sys.path[-1]}))")
    r = _harness._subprocess_json(_harness.child_command(script), 30)
    assert r["path_end"] == str(tmp_path)


def test_workload_skip_and_not_implemented(capsys):
    def skipper(loop, n):
        raise _harness.Skip("fd limit too low")

    def unsupported(loop, n):
        async def main():
            raise NotImplementedError("add_signal_handler")
        return main()

    def fine(loop, n):
        async def main():
            return n, {"value": 3.5, "p50_us": 1.0}
        return main()

    ws = [_harness.Workload("skipper", skipper, 1, 1, "x/s"),
          _harness.Workload("unsupported", unsupported, 1, 1, "x/s"),
          _harness.Workload("fine", fine, 5, 1, "ms (lower is better)")]
    base = ["--loop", "asyncio", "--workload"]
    assert _harness.workload_main(ws, base + ["skipper"]) == 3
    assert json.loads(capsys.readouterr().out)["skipped"] == "fd limit too low"
    assert _harness.workload_main(ws, base + ["unsupported"]) == 3
    assert "NotImplementedError: add_signal_handler" in json.loads(capsys.readouterr().out)["skipped"]
    assert _harness.workload_main(ws, base + ["fine", "--quick"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["n"], out["ops"], out["ops_per_s"], out["p50_us"]) == (1, 1, 3.5, 1.0)


def test_uvpy_contender_backend_check(monkeypatch):
    import uvpy

    class FakeLoop:
        backend = "libuv"
        closed = False

        def close(self):
            self.closed = True

    made = []

    def fake_new_event_loop():
        made.append(FakeLoop())
        return made[-1]

    monkeypatch.setattr(uvpy, "new_event_loop", fake_new_event_loop)
    assert _harness.CONTENDERS["uvpy"].make() is made[-1]
    with pytest.raises(_harness.Unavailable, match="io_uring"):
        _harness.CONTENDERS["uvpy-uring"].make()
    assert made[-1].closed

    def with_backend(backend=None):
        loop = FakeLoop()
        loop.backend = {"io_uring": "io_uring", "libuv": "libuv"}[backend]
        return loop

    monkeypatch.setattr(uvpy, "new_event_loop", with_backend)
    assert _harness.CONTENDERS["uvpy-uring"].make().backend == "io_uring"


def test_ratio_columns_only_for_references_that_ran():
    rows = _harness.summarize(_job("s/a", "ops/s"), {"uvpy": _ok([2.0]), "asyncio": _ok([1.0])})
    assert _report.suite_headers(rows) == ["workload", "contender", "median", "min-max", "vs asyncio"]
    assert _report.suite_rows(rows)[0][-1] == "2.00x"
