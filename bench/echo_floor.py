"""The floor of the echo suite: a C epoll echo server (bench/loadgen/echod.c)
and its io_uring twin (bench/loadgen/echod_uring.c: multishot accept and
recv into provided buffers, sends straight out of them, one submit per
iteration), alternating round by round under the same load generator,
pinning and measured window as bench/echo.py.
It makes the same system calls as a loop's Protocol echo (one recv and one
send per message, epoll_wait per wakeup) and nothing else, so its CPU per
round trip is what the kernel alone costs on this machine: no loop can go
below it, and (loop CPU/rt - floor CPU/rt) is what the loop itself adds.

    python bench/echo_floor.py [--sizes 1024,102400] [--conns 10,1000]
                               [--n 2000] [--rounds 3]
                               [--servers echod,echod_uring]

Prints one line per (size, conns): median round trips/s, CPU µs per round
trip (user/sys), and the server/client utilisation. Not part of run.py's
suites: it does not depend on the loop.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import _loadgen


SERVERS = {"echod": "echod (C epoll floor)", "echod_uring": "echod_uring (C io_uring floor)",
           "echod_uring-s": "echod_uring -s (io_uring recv, send() syscall)"}


def run_once(name: str, size: int, conns: int, duration: float, warmup: float) -> dict:
    server_cmd = [_loadgen.binary(name.split("-")[0])] + (["-s"] if name.endswith("-s") else [])
    cpu = _loadgen.server_cpu()
    if cpu is not None:
        server_cmd += ["-a", str(cpu)]
    server = subprocess.Popen(server_cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        t0 = time.perf_counter()
        client = subprocess.Popen(_loadgen.loadgen_command(port, conns, size, duration, warmup),
                                  stdout=subprocess.PIPE, text=True)
        result, cpu = {}, {}
        for line in client.stdout:  # forward start/stop to the server
            line = line.strip()
            if line in ("start", "stop"):
                server.stdin.write(line + "\n")
                server.stdin.flush()
                if line == "stop":
                    cpu = json.loads(server.stdout.readline())
            elif line.startswith("{"):
                result = json.loads(line)
        client_cpu = _loadgen.wait_rusage(client)
        client_wall = time.perf_counter() - t0
    finally:
        server.stdin.close()
        server.wait(timeout=10)
    rts = result["round_trips"]
    return {"ops_per_s": result["round_trips_per_s"],
            "cpu_us_per_op": (cpu["user_s"] + cpu["sys_s"]) / rts * 1e6,
            "user_us_per_op": cpu["user_s"] / rts * 1e6,
            "sys_us_per_op": cpu["sys_s"] / rts * 1e6,
            "server_util": (cpu["user_s"] + cpu["sys_s"]) / result["duration_s"],
            "client_util": client_cpu / client_wall,
            "p50_us": result["p50_us"], "p99_us": result["p99_us"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1024,10240,102400")
    p.add_argument("--conns", default="10,1000")
    p.add_argument("--n", type=int, default=2000, help="measured milliseconds per run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--servers", default="echod,echod_uring",
                   help="comma-separated: echod (epoll), echod_uring (io_uring), "
                        "echod_uring-s (io_uring recvs, syscall sends)")
    args = p.parse_args(argv)
    servers = args.servers.split(",")
    for name in servers:
        if name not in SERVERS:
            p.error(f"unknown server {name!r}; choose from {', '.join(SERVERS)}")
    duration = args.n / 1000
    warmup = min(0.5, max(0.1, duration / 4))
    _loadgen.raise_nofile(max(int(c) for c in args.conns.split(",")) + 256)
    print(f"load {os.getloadavg()}", file=sys.stderr)
    for size in map(int, args.sizes.split(",")):
        for conns in map(int, args.conns.split(",")):
            runs = {name: [] for name in servers}
            for _ in range(args.rounds):  # alternating, so drift hits both alike
                for name in servers:
                    runs[name].append(run_once(name, size, conns, duration, warmup))
            for name in servers:
                med = {k: statistics.median(r[k] for r in runs[name]) for k in runs[name][0]}
                print(json.dumps({"server": SERVERS[name], "size": size, "conns": conns,
                                  **{k: round(v, 3) for k, v in med.items()}}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
