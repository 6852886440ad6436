"""uvpy.serve under load: worker replacement (SIGHUP) while a load generator
opens a fresh connection for every round trip.

    python bench/serve.py [--seconds 6] [--hups 4] [--conns 20] [--rounds 3] [--out FILE]

For each backend (libuv, io_uring) and each way of sharing the port, two
workers serve bench/serve_echo.py under `python -m uvpy serve`; `loadgen -r`
(bench/loadgen) keeps CONNS connects in flight, 64 B each way per
connection, for SECONDS, and the script sends the supervisor HUPS SIGHUPs
spread over that window (each replaces both workers, one at a time). The
two ways: `bind` (the supervisor binds one listener, every worker accepts
from its queue) and `reuse_port` (each worker binds its own, the kernel
hashes connections over them). Reported per cell, medians over the rounds
(modes and backends alternate in each round): round trips per second,
connections that failed (reset or refused: the load generator's errors),
p99 and max latency of a round trip (connect included), and replacements
completed. A no-SIGHUP baseline row per cell shows the steady state.
"""

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import json

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _loadgen  # noqa: E402

START_GUARD = 60.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Supervisor:
    def __init__(self, mode, backend, port):
        cmd = [sys.executable, "-m", "uvpy", "serve", "--workers", "2", "--backend", backend,
               "--log-level", "info"]
        cmd += ["--bind", f"127.0.0.1:{port}", "serve_echo:main"] if mode == "bind" else \
               ["serve_echo:main", str(port)]
        self.lines = []
        self.changed = threading.Condition()
        self.proc = subprocess.Popen(cmd, cwd=HERE, stdin=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()

    def count(self, text):
        return sum(text in line for line in self.lines)

    def wait_for(self, text, n):
        deadline = time.monotonic() + START_GUARD
        with self.changed:
            while self.count(text) < n:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the supervisor did not get there:\n" + "".join(self.lines))
                self.changed.wait(0.1)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join()
        self.proc.stderr.close()


def one(mode, backend, seconds, hups, conns):
    port = free_port()
    sup = Supervisor(mode, backend, port)
    try:
        sup.wait_for("is up", 2)
        cmd = _loadgen.loadgen_command(port, conns, 64, seconds, 0.5, reconnect=True)
        gen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        result = {}
        for line in gen.stdout:
            line = line.strip()
            if line == "start" and hups:
                step = seconds / (hups + 1)
                for i in range(hups):
                    time.sleep(step)
                    sup.proc.send_signal(signal.SIGHUP)
            elif line.startswith("{"):
                result = json.loads(line)
        gen.wait()
        gen.stdout.close()
        if hups:
            sup.wait_for("workers replaced", 1)
        replaced = sup.count("workers replaced")
    finally:
        sup.stop()
    if "round_trips" not in result:
        raise RuntimeError(f"loadgen exited {gen.returncode} without a result")
    return {
        "rts_per_s": result["round_trips_per_s"],
        "failed": result["errors"] + result["connect_errors"],
        "p99_ms": result["p99_us"] / 1000,
        "max_ms": result["max_us"] / 1000,
        "rounds_done": replaced,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--hups", type=int, default=4)
    parser.add_argument("--conns", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default="libuv,io_uring")
    parser.add_argument("--out")
    args = parser.parse_args()
    cells = [(mode, backend, hups) for backend in args.backends.split(",")
             for mode in ("bind", "reuse_port") for hups in (0, args.hups)]
    results = {cell: [] for cell in cells}
    load = os.getloadavg()
    for r in range(args.rounds):
        order = cells[r % len(cells):] + cells[:r % len(cells)]
        for cell in order:
            mode, backend, hups = cell
            print(f"round {r + 1}/{args.rounds}: {mode} {backend} hups={hups}", file=sys.stderr)
            results[cell].append(one(mode, backend, args.seconds, hups, args.conns))
    out = [f"uvpy.serve, 2 workers, `loadgen -r -c {args.conns} -s 64` for {args.seconds:g} s; "
           f"{args.rounds} rounds, medians; load average {load[0]:.2f} at the start, "
           f"{os.getloadavg()[0]:.2f} at the end; {os.cpu_count()} CPUs.", "",
           "| sharing | backend | SIGHUPs | round trips/s | failed connections | p99 ms | max ms | rounds done |",
           "|---|---|---|---|---|---|---|---|"]
    for (mode, backend, hups), runs in results.items():
        med = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
        fails = "/".join(str(run["failed"]) for run in runs)
        out.append(f"| {mode} | {backend} | {hups} | {med['rts_per_s']:,.0f} | {fails} | "
                   f"{med['p99_ms']:.2f} | {med['max_ms']:.1f} | {med['rounds_done']:.0f} |")
    text = "\n".join(out)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
