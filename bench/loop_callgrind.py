"""User-space instructions per loop operation, under callgrind, for A/B of the
loop core's own work (what the loop's counters, beacon or a new phase cost).

Each workload runs in a fresh process under `valgrind --tool=callgrind`,
twice, with N1 and N2 operations; (total(N2) - total(N1)) / (N2 - N1) is
one operation's cost, start-up and imports cancelling out. Counts repeat
to a few instructions whatever the machine's load, where timings on a
shared 2-core VM do not. With --base, the same workloads run on another
checkout's interpreter (its uvpy) and the table gives new/base.

    python bench/loop_callgrind.py
    python bench/loop_callgrind.py --base ../uvpy-base/.venv/bin/python --backend io_uring

Workloads (uvpy only):
  sleep0     `await asyncio.sleep(0)` in one task: one iteration that does
             not block, one task step
  call_soon  N callbacks queued at once, run in one iteration: per callback
  echo       64-byte Protocol echo, client and server on one loop over TCP
             loopback: per round trip (iterations that block in the poll)
"""
import argparse
import asyncio
import os
import subprocess
import sys
import tempfile

WORKLOADS = {"sleep0": (2000, 12000), "call_soon": (5000, 45000), "echo": (1000, 6000)}


def serve(work, n):
    import uvpy

    loop = uvpy.new_event_loop()
    if work == "sleep0":
        async def steps():
            for _ in range(n):
                await asyncio.sleep(0)

        loop.run_until_complete(steps())
    elif work == "call_soon":
        left = [n]

        def cb():
            left[0] -= 1
            if left[0] == 0:
                loop.stop()

        for _ in range(n):
            loop.call_soon(cb)
        loop.run_forever()
    else:
        class Echo(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport

            def data_received(self, data):
                self.transport.write(data)

        class Client(Echo):
            def __init__(self, done):
                self.done, self.left = done, n

            def connection_made(self, transport):
                self.transport = transport
                transport.write(b"x" * 64)

            def data_received(self, data):
                self.left -= 1
                if self.left == 0:
                    self.done.set_result(None)
                else:
                    self.transport.write(data)

        async def echo():
            server = await loop.create_server(Echo, "127.0.0.1", 0)
            done = loop.create_future()
            port = server.sockets[0].getsockname()[1]
            transport, _ = await loop.create_connection(lambda: Client(done), "127.0.0.1", port)
            await done
            transport.close()
            server.close()

        loop.run_until_complete(echo())
    loop.close()


def instructions(python, work, n, backend):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        env = dict(os.environ, PYTHONHASHSEED="0", UVPY_BACKEND=backend)
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", python,
                        os.path.abspath(__file__), "--serve", work, str(n)],
                       env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(out) as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1])
    raise RuntimeError("callgrind wrote no total")


def per_op(python, work, backend):
    lo, hi = WORKLOADS[work]
    return (instructions(python, work, hi, backend) - instructions(python, work, lo, backend)) / (hi - lo)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", nargs=2, metavar=("WORK", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads")
    parser.add_argument("--backend", default="libuv", choices=("libuv", "io_uring"))
    parser.add_argument("--base", help="another checkout's interpreter, for new/base")
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve[0], int(args.serve[1]))
    print(f"| workload ({args.backend}) | instructions/op |" + (" base | new/base |" if args.base else ""))
    print("|---|---|" + ("---|---|" if args.base else ""))
    for work in args.only.split(","):
        new = per_op(sys.executable, work, args.backend)
        row = f"| {work} | {new:,.0f} |"
        if args.base:
            base = per_op(args.base, work, args.backend)
            row += f" {base:,.0f} | {new / base:.3f} |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
