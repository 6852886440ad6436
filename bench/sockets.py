"""Datagrams, Unix stream sockets and sendfile: the socket kinds beside TCP.

Workloads:

  udp_echo_64, udp_echo_1400
             A UDP echo over loopback, both ends on the loop under test: a
             create_datagram_endpoint server echoes every datagram back, and
             8 client endpoints each keep one datagram of 64 or 1400 bytes
             in flight (send, wait for the echo, send the next) until N
             round trips are done. Every echo is compared with what its
             client sent (client id and sequence number in the first 12
             bytes). Unit: round trips/s; the JSON line also has p50_us and
             p99_us per round trip (send to echo, on the loop's clock) and
             cpu_us_per_op, the process's user+system CPU per round trip
             (getrusage over the echo phase; both ends are in the process).
  udp_flood  One client endpoint sends N 64-byte datagrams as fast as the
             transport's flow control allows (pause_writing stops it), and
             yields to the loop after every 64 so the receiving endpoint is
             read; the receiver counts and checks what arrives. The kernel
             drops what the receive buffer cannot hold, so the headline is
             datagrams received per second (first send to last arrival);
             the JSON line also has sent_per_s and the lost fraction.
  unix_1k_c10, unix_64k_c10, tcp_1k_c10, tcp_64k_c10
             echo.py's protocol server (data_received -> transport.write)
             on create_unix_server, and on create_server over 127.0.0.1 for
             the comparison, driven by the same native load generator
             (bench/loadgen/loadgen.c, -U for the Unix socket, -v: every
             echoed byte compared) with 10 connections of 1 KiB or 64 KiB
             messages. n is the measured window in ms, after a warm-up of
             n/4 ms (at most 0.5 s). Unit: round trips/s, with the server's
             CPU per round trip and p50/p99 latency as in echo.py.
  sendfile   loop.sock_sendfile() of an N MiB file (64 at full size) to a
             TCP socket over loopback; a task on the same loop reads the
             other end with sock_recv_into and checks the byte count and a
             CRC-32 of the stream against the file's. Unit: MiB/s; the JSON
             line also has user and system CPU per MiB and sendfile_calls,
             the os.sendfile() calls made from Python (0: the loop sends
             natively or copies; a loop whose sock_sendfile raises
             NotImplementedError is reported as skipped).
  sendfile_c10, copy_c10
             A file server on the loop under test: 10 TCP clients (the
             native drain client, bench/loadgen/drain.c, in a second
             process: it reads with MSG_TRUNC and checks each connection's
             byte count) each download an N MiB file (64 at full size,
             random bytes in the page cache). sendfile_c10 serves each
             connection with loop.sendfile(transport, file) (zero-copy
             where the loop sends natively; asyncio's transport fallback
             copies otherwise); copy_c10 is the read/write loop it
             replaces: file.readinto() of 256 KiB at a time and
             transport.write(), waiting for resume_writing() whenever
             the transport paused the protocol. The window runs from the
             first send to the client's last end of file. Unit: MiB/s
             over the 10 connections; the JSON line also has the server's
             CPU per MiB (cpu_us_per_op, split into user and system).

Run one directly:  python bench/sockets.py --loop uvpy --workload udp_flood
"""
import asyncio
import json
import os
import resource
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import zlib

import _loadgen
from _harness import Workload, check, workload_main

UDP_CLIENTS = 8
FLOOD_BATCH = 64
ECHO_CONNS = 10
_HEADER = struct.Struct("<IQ")  # client id, sequence number


# ------------------------------------------------------------------ UDP

class _UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


class _UdpClient(asyncio.DatagramProtocol):
    """Keeps one datagram in flight; the next goes out from datagram_received."""

    def __init__(self, ident, size, count, latencies, done):
        self.ident, self.count, self.latencies, self.done = ident, count, latencies, done
        self.filler = bytes(size - _HEADER.size)
        self.seq, self.t0, self.bad = 0, 0.0, 0

    def connection_made(self, transport):
        self.transport = transport

    def payload(self):
        return _HEADER.pack(self.ident, self.seq) + self.filler

    def send(self):
        self.t0 = time.perf_counter()
        self.transport.sendto(self.payload())

    def datagram_received(self, data, addr):
        self.latencies.append(time.perf_counter() - self.t0)
        if data != self.payload():
            self.bad += 1
        self.seq += 1
        if self.seq < self.count:
            self.send()
        elif not self.done.done():
            self.done.set_result(None)

    def error_received(self, exc):
        if not self.done.done():
            self.done.set_exception(exc)


def _cpu_s():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _udp_echo(size):
    def setup(loop, n):
        async def main():
            server, _ = await loop.create_datagram_endpoint(_UdpEcho, local_addr=("127.0.0.1", 0))
            addr = server.get_extra_info("sockname")
            latencies, clients = [], []
            share, extra = divmod(n, UDP_CLIENTS)
            try:
                for i in range(UDP_CLIENTS):
                    done = loop.create_future()
                    _, proto = await loop.create_datagram_endpoint(
                        lambda i=i, done=done: _UdpClient(i, size, share + (i < extra), latencies, done),
                        remote_addr=addr)
                    clients.append(proto)
                cpu0 = _cpu_s()
                for c in clients:
                    c.send()
                # Loopback does not drop a datagram at this depth; a lost one
                # would stall its client, so a stall fails the run.
                await asyncio.wait_for(asyncio.gather(*(c.done for c in clients)), 60)
                cpu = _cpu_s() - cpu0
            finally:
                for c in clients:
                    c.transport.close()
                server.close()
                await asyncio.sleep(0)
            bad = sum(c.bad for c in clients)
            check(len(latencies) == n and bad == 0,
                  f"{len(latencies)} of {n} echoes arrived, {bad} differed from what was sent")
            lat = sorted(latencies)
            return n, {"p50_us": lat[len(lat) // 2] * 1e6, "p99_us": lat[int(len(lat) * 0.99)] * 1e6,
                       "cpu_us_per_op": cpu / n * 1e6, "size": size}

        return main()

    return setup


class _FloodSink(asyncio.DatagramProtocol):
    def __init__(self, expect):
        self.expect, self.got, self.bad, self.last = expect, 0, 0, 0.0

    def datagram_received(self, data, addr):
        self.got += 1
        self.last = time.perf_counter()
        if data != self.expect:
            self.bad += 1


class _FloodSource(asyncio.DatagramProtocol):
    def __init__(self, loop):
        self.loop, self.resume = loop, None

    def connection_made(self, transport):
        self.transport = transport

    def pause_writing(self):
        self.resume = self.loop.create_future()

    def resume_writing(self):
        if self.resume is not None and not self.resume.done():
            self.resume.set_result(None)
        self.resume = None


def udp_flood(loop, n):
    payload = b"uvpy-flood" + bytes(54)

    async def main():
        sink_t, sink = await loop.create_datagram_endpoint(
            lambda: _FloodSink(payload), local_addr=("127.0.0.1", 0))
        src_t, src = await loop.create_datagram_endpoint(
            lambda: _FloodSource(loop), remote_addr=sink_t.get_extra_info("sockname"))
        try:
            t0 = time.perf_counter()
            for i in range(n):
                src_t.sendto(payload)
                if src.resume is not None:
                    await src.resume
                elif i % FLOOD_BATCH == FLOOD_BATCH - 1:
                    await asyncio.sleep(0)
            sent_s = time.perf_counter() - t0
            # What is still in the receive buffer arrives within a few loop
            # turns; stop once 50 ms pass without a new datagram.
            idle_since, seen = time.perf_counter(), -1
            while sink.got < n and time.perf_counter() - idle_since < 0.05:
                if sink.got != seen:
                    seen, idle_since = sink.got, time.perf_counter()
                await asyncio.sleep(0.001)
        finally:
            src_t.close()
            sink_t.close()
            await asyncio.sleep(0)
        check(0 < sink.got <= n and sink.bad == 0,
              f"{sink.got} of {n} datagrams arrived, {sink.bad} differed from what was sent")
        return sink.got, {"value": sink.got / (sink.last - t0), "sent_per_s": n / sent_s,
                          "loss": 1 - sink.got / n}

    return main()


# --------------------------------------------------------- stream echo

class _EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


def _stream_echo(family, size):
    def setup(loop, n):
        _loadgen.binary()  # build before anything is timed
        _loadgen.pin_server()
        duration = n / 1000
        warmup = min(0.5, max(0.1, duration / 4))

        async def main():
            tmp = tempfile.mkdtemp(prefix="uvpy-bench-")
            try:
                if family == "unix":
                    path = os.path.join(tmp, "echo.sock")
                    server = await loop.create_unix_server(_EchoProtocol, path,
                                                           backlog=_loadgen.BACKLOG)
                    cmd = _loadgen.loadgen_command(None, ECHO_CONNS, size, duration, warmup,
                                                   unix_path=path, verify=True)
                else:
                    server = await loop.create_server(_EchoProtocol, "127.0.0.1", 0,
                                                      backlog=_loadgen.BACKLOG)
                    port = server.sockets[0].getsockname()[1]
                    cmd = _loadgen.loadgen_command(port, ECHO_CONNS, size, duration, warmup,
                                                   verify=True)
                try:
                    rts, extras = await _loadgen.drive_echo(loop, None, ECHO_CONNS, size,
                                                            duration, warmup, command=cmd)
                finally:
                    server.close()
                    for _ in range(3):  # let connection_lost() callbacks run
                        await asyncio.sleep(0)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            check(extras["errors"] == 0,
                  f"{extras['errors']} connections failed or echoed other bytes")
            return rts, extras

        return main()

    return setup


# ------------------------------------------------------------ sendfile

_CHUNK = 1 << 20


def sendfile(loop, n):
    size = n << 20
    block = os.urandom(_CHUNK)
    f = tempfile.TemporaryFile()
    crc = 0
    for _ in range(n):
        f.write(block)
        crc = zlib.crc32(block, crc)
    f.flush()
    f.seek(0)

    listener = socket.create_server(("127.0.0.1", 0))
    sender = socket.create_connection(listener.getsockname())
    receiver, _ = listener.accept()
    listener.close()
    sender.setblocking(False)
    receiver.setblocking(False)

    calls = 0
    real_sendfile = os.sendfile

    def counting_sendfile(*args):
        nonlocal calls
        calls += 1
        return real_sendfile(*args)

    async def receive():
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        got, crc_got = 0, 0
        while True:
            k = await loop.sock_recv_into(receiver, buf)
            if not k:
                return got, crc_got
            got += k
            crc_got = zlib.crc32(view[:k], crc_got)

    async def main():
        os.sendfile = counting_sendfile
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        try:
            reader = loop.create_task(receive())
            try:
                sent = await loop.sock_sendfile(sender, f)
            except BaseException:
                reader.cancel()
                raise
            finally:
                sender.close()  # end of stream for the reader
            got, crc_got = await reader
        finally:
            os.sendfile = real_sendfile
            receiver.close()
            f.close()
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        check(sent == size and got == size and crc_got == crc,
              f"sent {sent}, received {got} of {size} bytes, CRC-32 "
              f"{'matches' if crc_got == crc else 'differs'}")
        return n, {"user_ms_per_mib": (ru1.ru_utime - ru0.ru_utime) * 1e3 / n,
                   "sys_ms_per_mib": (ru1.ru_stime - ru0.ru_stime) * 1e3 / n,
                   "sendfile_calls": calls}

    return main()


# ------------------------------------------------- serving a file (c10)

SERVE_CONNS = 10
_COPY_BLOCK = 256 * 1024
_STALL_S = 60


class _FileServer(asyncio.Protocol):
    """One client's connection; the workload sends once all are accepted."""

    def __init__(self, loop, accepted, want, all_in):
        self.loop, self.accepted, self.want, self.all_in = loop, accepted, want, all_in
        self.resume = None

    def connection_made(self, transport):
        self.transport = transport
        self.accepted.append(self)
        if len(self.accepted) == self.want:
            self.all_in.set_result(None)

    def pause_writing(self):
        self.resume = self.loop.create_future()

    def resume_writing(self):
        fut, self.resume = self.resume, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    def connection_lost(self, exc):
        fut, self.resume = self.resume, None
        if fut is not None and not fut.done():
            fut.set_exception(exc or ConnectionError("connection lost mid-download"))


async def _serve_sendfile(loop, proto, path):
    with open(path, "rb") as f:
        return await loop.sendfile(proto.transport, f)


async def _serve_copy(loop, proto, path):
    # The loop a server without sendfile runs: read a block, write it, wait
    # while the transport has paused the protocol (its buffer is over the
    # high-water mark). The reads are blocking: the file is in the page
    # cache, as it is for the sendfile workload.
    sent = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            block = f.read(_COPY_BLOCK)
            if not block:
                return sent
            proto.transport.write(block)
            sent += len(block)
            if proto.resume is not None:
                await proto.resume


def _serve_file(kind):
    serve = _serve_sendfile if kind == "sendfile" else _serve_copy

    def setup(loop, n):
        drain = _loadgen.binary("drain")  # build before anything is timed
        _loadgen.pin_server()
        size = n * _CHUNK
        tmp = tempfile.mkdtemp(prefix="uvpy-bench-")
        path = os.path.join(tmp, "served")
        block = os.urandom(_CHUNK)
        with open(path, "wb") as f:
            for _ in range(n):
                f.write(block)

        async def main():
            accepted = []
            all_in = loop.create_future()

            window = _loadgen.CpuWindow()
            result = {}

            def on_line(line):
                if line.startswith("{") and hasattr(window, "_t0"):
                    window.stop()  # the client saw its last end of file
                    result.update(json.loads(line))

            server = await loop.create_server(
                lambda: _FileServer(loop, accepted, SERVE_CONNS, all_in), "127.0.0.1", 0,
                                              backlog=_loadgen.BACKLOG)
            port = server.sockets[0].getsockname()[1]
            proc = subprocess.Popen(
                [drain, "-p", str(port), "-c", str(SERVE_CONNS), "-n", str(size)],
                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                preexec_fn=_loadgen.preexec_pin(_loadgen.client_cpus()))
            reader = _loadgen.LineReader(loop, proc, on_line)
            try:
                await asyncio.wait_for(all_in, 30)
                window.start()
                # A stall (a transport that never resumes writing) fails the
                # cell instead of holding the run until the harness's timeout.
                sent = await asyncio.wait_for(
                    asyncio.gather(*(serve(loop, p, path) for p in accepted)), _STALL_S)
                for p in accepted:
                    p.transport.close()  # end of file for the client
                await reader.done
            except BaseException:
                proc.kill()  # not waiting for the client's end of file
                raise
            finally:
                server.close()
                proc.stdout.close()
                _loadgen.wait_rusage(proc)
                for _ in range(3):  # let connection_lost() callbacks run
                    await asyncio.sleep(0)
                shutil.rmtree(tmp, ignore_errors=True)
            check(sent == [size] * SERVE_CONNS and result.get("bytes") == size * SERVE_CONNS
                  and result.get("short") == 0 and result.get("errors") == 0,
                  f"sent {sent}, the client reported {result or 'nothing'}")
            mib = n * SERVE_CONNS
            extras = window.extras(mib)
            extras.update({"value": mib / window.wall_s, "conns": SERVE_CONNS,
                           "pinned": _loadgen.client_cpus() is not None})
            return mib, extras

        return main()

    return setup


WORKLOADS = [
    Workload("udp_echo_64", _udp_echo(64), n=30_000, quick_n=3_000, unit="round trips/s"),
    Workload("udp_echo_1400", _udp_echo(1400), n=30_000, quick_n=3_000, unit="round trips/s"),
    Workload("udp_flood", udp_flood, n=100_000, quick_n=10_000, unit="datagrams/s"),
    Workload("unix_1k_c10", _stream_echo("unix", 1024), n=1500, quick_n=300, unit="round trips/s"),
    Workload("tcp_1k_c10", _stream_echo("tcp", 1024), n=1500, quick_n=300, unit="round trips/s"),
    Workload("unix_64k_c10", _stream_echo("unix", 64 * 1024), n=1500, quick_n=300,
             unit="round trips/s", in_quick=False),
    Workload("tcp_64k_c10", _stream_echo("tcp", 64 * 1024), n=1500, quick_n=300,
             unit="round trips/s", in_quick=False),
    Workload("sendfile", sendfile, n=64, quick_n=16, unit="MiB/s"),
    Workload("sendfile_c10", _serve_file("sendfile"), n=64, quick_n=16, unit="MiB/s"),
    Workload("copy_c10", _serve_file("copy"), n=64, quick_n=16, unit="MiB/s"),
]

if __name__ == "__main__":
    raise SystemExit(_loadgen.main_with_skips(workload_main, WORKLOADS))
