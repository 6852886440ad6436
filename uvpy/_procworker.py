"""The process pool's wire format, and the worker process's main loop.

This file is imported by the pool (uvpy._procpool) for the frame codec, and
loaded by path in each worker, which runs main(). It imports only the
standard library: a worker never imports uvpy, so it starts as fast as a bare
interpreter plus the user's modules.

Wire format (one AF_UNIX SOCK_STREAM socketpair per worker, both ways):

    frame  = header payload
    header = struct "<BIIQ": kind, job id, number of out-of-band buffers,
             payload length
    table  = struct "<I" segment id, then nbufs x struct "<QQ" (offset,
             length), at the start of payload (only when nbufs > 0)
    payload after the table: a pickle (protocol 5)

A frame with nbufs > 0 carries exactly one fd (SCM_RIGHTS, on the sendmsg()
that sends its header): a memfd holding all its out-of-band buffers at the
offsets of the table. The receiver maps it once and hands slices of the
mapping to pickle.loads(buffers=...).

A memfd is a segment of its sender's cache (Segments) when its segment id
is not 0: the receiver then sends a RELEASE frame (job id field: the
segment id) once its mapping is gone, and only then does the sender write
into that memfd again. Segment id 0: the receiver owns the memfd alone.

Invariants:

1. fds are consumed in frame order. Linux delivers SCM_RIGHTS with the first
   byte of the sendmsg() that carried them, and a stream recvmsg() never
   reads past a message that carries fds, so a frame's fd has arrived by the
   time its header has: the reader queues fds as they come and each frame
   with buffers takes the oldest.
2. A memfd is closed by its receiver right after mmap(), and by its sender
   once the message cannot be needed again (the kernel holds a reference in
   flight): the worker right after sendmsg(), the pool when the job is
   settled (a job that a dead worker had not started is sent again). A
   cached segment's own fd stays with its sender's Segments (what travels
   is a dup): its memory lives while the cache keeps it, or while a mapping
   of it is alive, and it is never named in a file system: a crash on
   either side leaks nothing.
3. The sender copies each buffer once, into the memfd (through its own
   mapping of a cached segment, else pwrite); the receiver maps it. A numpy array or a memoryview arrives as a view of the mapping;
   bytes and bytearray are rebuilt from it, a second copy (they own their
   memory).
4. The worker runs jobs in the order they arrive, one at a time, and has
   sent a job's result (into the socket buffer, where it outlives the
   worker) before it starts the next one: so the oldest job the pool sent
   to a worker without a result is the one it is running, and the others
   have not started.
5. The pool batches its sends (many jobs per sendmsg()), and reads many
   results per recvmsg(); the worker reads many jobs per recvmsg(), but
   sends one result per sendmsg() (invariant 4 forbids holding results
   back).
6. A cached segment is written only while nobody maps it: Segments counts
   its holders and reuses it at zero. A job's segment is held by the job
   until it is settled (it may be sent again) and by each worker it was
   sent to until that worker's RELEASE or death; a result's, by the pool
   until its RELEASE. A receiver sends RELEASE when its mapping object is
   freed (a weakref finalizer), that is when no view of it is left. The
   cache holds at most its byte bound and SEGMENTS_MAX segments, busy ones
   included; a message that does not fit gets a segment of its own (id 0),
   freed as in invariant 2. Reusing a segment saves the kernel's page
   allocation, zeroing and freeing, which cost twice the copy itself.
7. A worker that has sent a result polls its socket for the next job, for
   SPIN seconds at most, before it sleeps in recvmsg(): waking a sleeping
   process on another CPU costs more than a whole small job (about 30 us
   of a 50 us socketpair ping-pong on a 2-core VM). It polls only while
   jobs come back to back (its last wait was shorter than SPIN), so an
   idle worker costs nothing, and only after a job shorter than SPIN_JOB:
   a longer job would gain a few percent at most, and when every CPU runs
   such jobs the pool's loop needs the CPU that a poll would hold to send
   the next one. It gives its CPU up on every miss
   (sched_yield), so a process that shares that CPU, the pool's loop
   included, is not kept waiting by it. It times its waits with the
   time.perf_counter this module found when it loaded: a job that replaces
   it (a mock left in place) can neither make a poll last until the next
   frame nor crash the worker.
"""

import array
import gc
import mmap
import os
import pickle
import socket
import struct
import sys
import threading
import time
import traceback
import weakref

HEADER = struct.Struct("<BIIQ")
SPAN = struct.Struct("<QQ")
SEGMENT = struct.Struct("<I")

# Frame kinds.
INIT = 1        # pool -> worker: (preparation data, pickled (initializer, initargs))
JOB = 2         # pool -> worker: (fn, args, kwargs)
READY = 3       # worker -> pool: the initializer ran
INIT_FAILED = 4  # worker -> pool: traceback text of the failed initializer
RESULT = 5      # worker -> pool: the return value
ERROR = 6       # worker -> pool: the exception, with its traceback text
RELEASE = 7     # both ways: the receiver's mapping of segment <job id> is gone

_CONTAINERS = (tuple, list, dict)
SEGMENTS_MAX = 8  # cached segments per sender, busy ones included: 2 fds each (mmap dups one)
MARK_SCAN = 256
ALIGN = 64      # out-of-band buffer alignment in the memfd (numpy's, and a cache line)
RECV_SIZE = 1 << 18
SPIN = 200e-6   # seconds a worker polls for its next job before it sleeps (invariant 7)
SPIN_JOB = 1e-3  # ... after a job that ran shorter than this
MAX_FDS = 64
_ANC_SIZE = socket.CMSG_SPACE(MAX_FDS * 4)
# Plain ints: socket's flags are IntFlag members, and `flags & MSG_CTRUNC`
# on them runs enum's Python-level __and__ once per read.
_CMSG_CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)
_CTRUNC = int(socket.MSG_CTRUNC)
_SOL_SOCKET, _SCM_RIGHTS = int(socket.SOL_SOCKET), int(socket.SCM_RIGHTS)


class _OutOfBand:
    """Marks a bytes or memoryview for the out-of-band path: pickle puts
    bytes in band whatever their size (and never asks a reducer_override
    about them), and cannot pickle a memoryview at all. It reduces to the
    builtin itself and a PickleBuffer, so the other side unpickles plain
    bytes or a memoryview without knowing this class."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __reduce_ex__(self, protocol):
        v = self.value
        if type(v) is memoryview and not v.c_contiguous:
            return memoryview, (v.tobytes(),)
        return type(v), (pickle.PickleBuffer(v),)


def mark(value, threshold, depth=1):
    """value, or a copy in which bytes of at least threshold bytes and
    memoryviews are marked to travel out of band: at the top, and `depth`
    levels into tuples, lists and dicts of at most MARK_SCAN items (a scan
    of a larger container would cost more than pickling it)."""
    t = type(value)
    if t is bytes:
        return _OutOfBand(value) if len(value) >= threshold else value
    if t is memoryview:
        return _OutOfBand(value)
    if not depth or t not in _CONTAINERS or len(value) > MARK_SCAN:
        return value
    items = value.values() if t is dict else value
    for x in items:
        tx = type(x)
        if tx is memoryview or (tx is bytes and len(x) >= threshold) or (
                depth > 1 and tx in _CONTAINERS):
            break
    else:
        return value
    if t is dict:
        return {k: mark(x, threshold, depth - 1) for k, x in value.items()}
    return t([mark(x, threshold, depth - 1) for x in value])


def encode(kind, job_id, obj, threshold, segments=None):
    """Pickle obj into a frame: (frame bytes, memfd or -1, segment id or 0).
    Raises what pickling raises. Its large buffers go into a memfd, a
    segment of segments where one fits (invariant 6); large bytes and
    memoryviews only where mark() put them, other buffers (numpy,
    bytearray, PickleBuffer) by their size."""
    bufs = []

    def out_of_band(pb):
        raw = pb.raw()
        if raw.nbytes < threshold:
            return True  # in band
        bufs.append(raw)
        return False

    data = pickle.dumps(obj, 5, buffer_callback=out_of_band)
    if not bufs:
        return HEADER.pack(kind, job_id, 0, len(data)) + data, -1, 0
    table, fd, seg = _to_memfd(bufs, segments)
    return HEADER.pack(kind, job_id, len(bufs), len(table) + len(data)) + table + data, fd, seg


def _to_memfd(bufs, segments):
    """Copy bufs into one memfd (invariant 3): a segment of segments if one
    is free or fits, else a new one. Return (table, fd to send and close,
    segment id or 0)."""
    spans, off = [], 0
    for b in bufs:
        spans.append((off, b.nbytes))
        off = (off + b.nbytes + ALIGN - 1) // ALIGN * ALIGN
    size = max(off, 1)
    seg, fd, mm = segments.take(size) if segments is not None else (0, -1, None)
    try:
        if seg:
            # Through the sender's own mapping of the segment, whose pages
            # are in place: a plain memcpy, twice as fast as pwrite().
            for (start, n), b in zip(spans, bufs):
                mm[start:start + n] = b
            fd = os.dup(fd)  # travels and is closed as a one-off memfd would be
        else:
            fd = os.memfd_create("uvpy-pool", os.MFD_CLOEXEC)
            try:
                os.ftruncate(fd, size)
                for (start, n), b in zip(spans, bufs):
                    done = 0
                    while done < n:
                        done += os.pwrite(fd, b[done:], start + done)
            except BaseException:
                os.close(fd)
                raise
    except BaseException:
        if seg:
            segments.unref(seg)
        raise
    return SEGMENT.pack(seg) + b"".join(SPAN.pack(s, n) for s, n in spans), fd, seg


class Segments:
    """A sender's cache of memfds, reused once no receiver maps them
    (invariant 6). Thread-safe: the pool encodes in submit()'s thread."""

    __slots__ = ("limit", "free", "size", "refs", "held", "next_id", "lock", "closed")

    def __init__(self, limit):
        self.limit = limit
        self.free = []        # ids of idle segments, most recently used last
        self.size = {}        # id -> (fd, bytes, the sender's mapping of it)
        self.refs = {}        # id -> holders (busy segments only)
        self.held = 0         # bytes of every cached segment
        self.next_id = 0
        self.lock = threading.Lock()
        self.closed = False

    def take(self, need):
        """(id, fd, mapping) of a segment of at least need bytes, with one
        holder (the caller); (0, -1, None) if it cannot be cached."""
        if need > self.limit:
            return 0, -1, None
        with self.lock:
            if self.closed:
                return 0, -1, None
            # The smallest that fits, else the largest (grown); of equals the
            # most recently used: its pages are warm; the oldest idle ones are
            # the first closed when a new segment needs room.
            fits = [seg for seg in reversed(self.free) if self.size[seg][1] >= need]
            if fits:
                best = min(fits, key=lambda seg: self.size[seg][1])
            else:
                best = max(reversed(self.free), key=lambda seg: self.size[seg][1], default=None)
            if best is not None:
                fd, n, mm = self.size[best]
                if n >= need or self.held - n + need <= self.limit:
                    self.free.remove(best)
                    if n < need:  # grown in place: its pages are kept
                        os.ftruncate(fd, need)
                        mm.close()
                        mm = mmap.mmap(fd, need)
                        self.held += need - n
                        self.size[best] = (fd, need, mm)
                    self.refs[best] = 1
                    return best, fd, mm
            while self.free and (self.held + need > self.limit or len(self.size) >= SEGMENTS_MAX):
                self._drop(self.free.pop(0))  # idle and in the way: the oldest goes
            if self.held + need > self.limit or len(self.size) >= SEGMENTS_MAX:
                return 0, -1, None
            fd = os.memfd_create("uvpy-pool-segment", os.MFD_CLOEXEC)
            try:
                os.ftruncate(fd, need)
                mm = mmap.mmap(fd, need)
            except BaseException:
                os.close(fd)
                raise
            seg = self.next_id
            while seg == self.next_id or seg in self.size:  # ids wrap at 32 bits
                seg = seg % 0xFFFFFFFF + 1
            self.next_id = seg
            self.size[seg] = (fd, need, mm)
            self.refs[seg] = 1
            self.held += need
            return seg, fd, mm

    def ref(self, seg):
        with self.lock:
            if seg in self.refs:
                self.refs[seg] += 1

    def unref(self, seg):
        """One holder is done; at none the segment is idle."""
        with self.lock:
            n = self.refs.get(seg)
            if n is None:  # not cached, or the cache is closed
                return
            if n > 1:
                self.refs[seg] = n - 1
                return
            del self.refs[seg]
            self.free.append(seg)

    def _drop(self, seg):
        fd, n, mm = self.size.pop(seg)
        self.held -= n
        mm.close()
        os.close(fd)

    def close(self):
        """Close every segment, busy ones too: the sender is done sending
        (a receiver's mapping keeps the memory it still uses), and take()
        caches nothing from now on."""
        with self.lock:
            self.closed = True
            self.free, self.refs = [], {}
            for seg in list(self.size):
                self._drop(seg)


def decode(nbufs, payload, fd, release=None):
    """Unpickle a frame's payload; fd (its memfd, or -1) is closed here.
    release(segment id) is called once the mapping of a cached segment is
    gone (invariant 6): at once if nothing made from it outlives this call."""
    if fd < 0:
        return pickle.loads(payload)
    try:
        (seg,) = SEGMENT.unpack_from(payload)
        table = SEGMENT.size + nbufs * SPAN.size
        spans = [SPAN.unpack_from(payload, SEGMENT.size + i * SPAN.size) for i in range(nbufs)]
        size = max(s + n for s, n in spans)
        # Faulted in as the unpickled objects touch them: MAP_POPULATE was
        # measured slower (bench/processes.py numpy64, about 15%).
        mm = mmap.mmap(fd, size) if size else None
    finally:
        os.close(fd)  # invariant 2: the mapping keeps the memory
    if seg and release is not None:
        if mm is None:
            release(seg)
        else:
            weakref.finalize(mm, release, seg)
    view = memoryview(mm) if mm is not None else memoryview(b"")
    del mm
    buffers = [view[s:s + n] for s, n in spans]
    del view
    return pickle.loads(memoryview(payload)[table:], buffers=buffers)


class FrameReader:
    """Splits bytes (and fds) received on a stream socket into frames."""

    __slots__ = ("buf", "fds", "scratch", "view", "iov")

    def __init__(self):
        self.buf = bytearray()
        self.fds = []
        self.scratch = bytearray(RECV_SIZE)
        self.view = memoryview(self.scratch)
        self.iov = [self.scratch]

    def feed(self, data, fds):
        self.buf += data
        self.fds.extend(fds)

    def next(self):
        """(kind, job id, nbufs, payload, fd) of the next whole frame, or None."""
        buf = self.buf
        if len(buf) < HEADER.size:
            return None
        kind, job_id, nbufs, size = HEADER.unpack_from(buf)
        end = HEADER.size + size
        if len(buf) < end:
            return None
        payload = bytes(buf[HEADER.size:end])
        del buf[:end]
        fd = self.fds.pop(0) if nbufs else -1  # invariant 1
        return kind, job_id, nbufs, payload, fd

    def close(self):
        fds, self.fds = self.fds, []
        for fd in fds:
            os.close(fd)


def recv(sock, reader, flags=_CMSG_CLOEXEC):
    """One recvmsg() into reader: the bytes read, 0 at EOF. Raises
    BlockingIOError.

    Into the reader's own buffer (recvmsg_into): recvmsg() would allocate
    a fresh RECV_SIZE object per call, which malloc maps and unmaps."""
    n, anc, flags, _ = sock.recvmsg_into(reader.iov, _ANC_SIZE, flags)
    if n:
        reader.buf += reader.view[:n]
    for level, type_, data in anc:
        if level == _SOL_SOCKET and type_ == _SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
            reader.fds.extend(fds)
    if flags & _CTRUNC:  # more fds than MAX_FDS in one read: cannot happen
        raise OSError("process pool: control data truncated")
    return n


def send_all(sock, chunks):
    """Blocking send of [(bytes, fd or -1)]; closes each fd once sent."""
    i = 0
    while i < len(chunks):
        data, fd = chunks[i]
        if fd >= 0:
            try:
                n = socket.send_fds(sock, [data], [fd])
            finally:
                os.close(fd)
            if n < len(data):
                sock.sendall(memoryview(data)[n:])
            i += 1
            continue
        j = i
        while j < len(chunks) and chunks[j][1] < 0:
            j += 1
        sock.sendall(b"".join(c for c, _ in chunks[i:j]))
        i = j


# ------------------------------------------------------------------ the worker

def _exception_frame(job_id, exc, threshold, segments):
    """An ERROR frame carrying exc with its traceback text, as
    concurrent.futures does (the caller sees it as exc.__cause__)."""
    from concurrent.futures.process import _ExceptionWithTraceback

    try:
        return encode(ERROR, job_id, _ExceptionWithTraceback(exc, exc.__traceback__),
                      threshold, segments)
    except Exception as e:  # the exception itself does not pickle
        text = "".join(traceback.format_exception(exc))
        err = RuntimeError(f"the job raised {type(exc).__qualname__}, which could not be "
                           f"pickled ({type(e).__name__}: {e}); its traceback:\n{text}")
        return encode(ERROR, job_id, _ExceptionWithTraceback(err, None), threshold, segments)


def _send_result(sock, out, released):
    """Send a RESULT or ERROR frame (invariant 4), after a RELEASE frame for
    each of the pool's segments whose mapping here is gone: one sendmsg()."""
    data, fd, _ = out
    if released:
        data = b"".join([HEADER.pack(RELEASE, seg, 0, 0) for seg in released] + [data])
        released.clear()
    if fd < 0:
        sock.sendall(data)
    else:
        send_all(sock, [(data, fd)])


_NOWAIT = _CMSG_CLOEXEC | int(socket.MSG_DONTWAIT)
_clock = time.perf_counter  # invariant 7: taken before any job can replace it


def _recv_polling(sock, reader, until):
    """recv() without sleeping, retried until `until` (_clock); None if
    nothing came by then (invariant 7)."""
    clock, yield_cpu = _clock, os.sched_yield
    while True:
        try:
            return recv(sock, reader, _NOWAIT)
        except (BlockingIOError, InterruptedError):
            if clock() >= until:
                return None
            yield_cpu()


def main(fd, threshold, cache=0):
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    # Not inherited by what a job spawns or forks: the pool must see EOF
    # when this process exits.
    os.set_inheritable(fd, False)
    reader = FrameReader()
    segments = Segments(cache) if cache > 0 else None  # for results (invariant 6)
    released = []  # the pool's segments this worker no longer maps
    # The first frame is INIT: prepare like multiprocessing's spawn (sys.path,
    # cwd, the parent's __main__ as __mp_main__), then the initializer.
    while (frame := reader.next()) is None:
        if not recv(sock, reader):
            return 0
    try:
        kind, _, nbufs, payload, mfd = frame
        import multiprocessing.spawn

        # The initializer is pickled apart: it may live in a module that only
        # the parent's sys.path, set by prepare(), can find.
        data, init = decode(nbufs, payload, mfd)
        multiprocessing.spawn.prepare(data)
        initializer, initargs = pickle.loads(init)
        if initializer is not None:
            initializer(*initargs)
    except BaseException as exc:
        text = "".join(traceback.format_exception(exc))
        send_all(sock, [encode(INIT_FAILED, 0, text, threshold)[:2]])
        return 1
    del frame, payload
    # What start-up made (modules, the initializer's state) lives as long
    # as the worker: out of the collector's sight, a job's collections only
    # walk what jobs allocate.
    gc.freeze()
    send_all(sock, [encode(READY, 0, None, threshold)[:2]])
    clock = _clock
    idle_from = clock()  # when this worker last ran out of frames
    poll = False  # invariant 7: jobs have been coming back to back
    short = True  # and the last one was short
    while True:
        frame = reader.next()
        if frame is None:
            n = _recv_polling(sock, reader, idle_from + SPIN) if poll and short else None
            if n is None:
                n = recv(sock, reader)
            if not n:
                return 0  # the pool closed its end: retire
            poll = clock() - idle_from < SPIN
            continue
        kind, job_id, nbufs, payload, mfd = frame
        frame = None
        if kind == RELEASE:  # the pool no longer maps one of our results
            if segments is not None:
                segments.unref(job_id)
            continue
        started = clock()
        try:
            fn, args, kwargs = decode(nbufs, payload, mfd, released.append)
            payload = None
            result = fn(*args, **kwargs)
            fn = args = kwargs = None
            try:
                out = encode(RESULT, job_id, mark(result, threshold), threshold, segments)
            except Exception as exc:
                out = _exception_frame(job_id, exc, threshold, segments)
        except BaseException as exc:
            if isinstance(exc, SystemExit):
                raise
            out = _exception_frame(job_id, exc, threshold, segments)
        # Out of the except blocks: the exception's traceback no longer holds
        # the arguments, so a mapping they kept can be RELEASEd with this send.
        fn = args = kwargs = result = None
        _send_result(sock, out, released)
        out = None
        idle_from = clock()
        short = idle_from - started < SPIN_JOB


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
