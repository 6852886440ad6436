"""The programs in examples/ that a user would copy run and do what they say.

Each runs as its own process, on the backend UVPY_BACKEND names (the
integration suite runs once per backend).
"""

import os
import re
import subprocess
import sys

from conftest import need_module

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "examples")


def run_example(name, *args):
    return subprocess.run([sys.executable, os.path.join(EXAMPLES, name), *args],
                          capture_output=True, text=True, timeout=120)


def test_loop_stats_prints_a_line_per_second_and_the_watchdog_names_the_blocker():
    out = run_example("loop_stats.py", "--seconds", "2", "--block-every", "1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["1s", "2s"]
    for line in lines:
        iterations = int(re.search(r"(\d+) it/s", line).group(1))
        assert iterations > 0
        assert "transports   8" in line  # 4 clients + their 4 server ends
    reports = [b for b in out.stderr.split("WARNING uvpy.watchdog: ")[1:]]
    assert len(reports) == 2, out.stderr
    for report in reports:
        assert "in blocking_report_generator" in report
        assert "time.sleep(0.25)" in report


def test_offload_hashes_on_threads_and_parses_on_processes_with_the_same_results():
    out = run_example("offload.py", "--blocks", "6", "--lines", "30000")
    assert out.returncode == 0, out.stderr
    assert "results match the sequential run: True" in out.stdout, out.stdout
    totals = re.search(r"bytes per status: \{(.*)\}", out.stdout).group(1)
    assert {s.split(":")[0].strip(" '") for s in totals.split(",")} == {"200", "304", "404", "500"}
    # The lag is the work's: each wakeup is a 10 ms sleep begun within the
    # timed run, so no more of them than that run has room for (the
    # workers' start-up and exit, when the loop idles, are left out).
    parallel = float(re.search(r"parsed: ([\d.]+) s", out.stdout).group(1))
    wakeups = int(re.search(r"loop lag while working: p50 [\d.]+ ms, max [\d.]+ ms "
                            r"over (\d+) wakeups", out.stdout).group(1))
    assert wakeups <= (parallel + 0.005) / 0.01 + 1, out.stdout


def test_prometheus_exporter_serves_the_loop_counters():
    need_module("prometheus_client")
    out = run_example("prometheus_stats.py", "--check")
    assert out.returncode == 0, out.stderr
    metrics = {}
    for line in out.stdout.splitlines():
        name, value = line.rsplit(" ", 1)
        metrics[name] = float(value)
    backend = os.environ.get("UVPY_BACKEND") or "libuv"
    label = f'backend="{backend}"'
    # 100 pings of 4 bytes, echoed: each byte read twice and written twice.
    assert metrics[f"uvpy_loop_stream_bytes_in_total{{{label}}}"] == 800
    assert metrics[f"uvpy_loop_stream_bytes_out_total{{{label}}}"] == 800
    assert metrics[f"uvpy_loop_accepted_total{{{label}}}"] == 1
    assert metrics[f"uvpy_loop_iterations_total{{{label}}}"] > 0
    assert metrics[f'uvpy_loop_transports{{{label},type="TCPTransport"}}'] == 2


def test_serve_asgi_runs_uvicorn_in_supervised_workers_and_replaces_them_on_sighup(tmp_path):
    need_module("uvicorn")
    import json
    import signal
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path / "serve_asgi.log"

    def text():
        return log_path.read_text(errors="replace")

    def wait_for(pattern, count=1):
        deadline = time.monotonic() + 60  # a hang guard only
        while len(re.findall(pattern, text())) < count:
            assert proc.poll() is None and time.monotonic() < deadline, text()
            time.sleep(0.05)

    def get():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:
            return json.loads(r.read())

    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, os.path.join(EXAMPLES, "serve_asgi.py"),
                                 "--port", str(port), "--workers", "2"],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(r"worker \d \(pid \d+\) is up", 2)
        first = {int(p) for p in re.findall(r"worker \d \(pid (\d+)\) is up", text())}
        answers = [get() for _ in range(10)]
        assert {a["loop"] for a in answers} == {"Loop"}
        assert {a["pid"] for a in answers} <= first
        proc.send_signal(signal.SIGHUP)
        wait_for("workers replaced")
        wait_for(r"stopped \(status 0\)", 2)  # the old two, after uvicorn's own shutdown
        new = {int(p) for p in re.findall(r"worker \d \(pid (\d+)\) is up", text())} - first
        assert len(new) == 2 and {get()["pid"] for _ in range(10)} <= new
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = text()
    assert log.count("Application shutdown complete.") == 4, log
    assert "Traceback" not in log and "ERROR" not in log, log
