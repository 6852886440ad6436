// datagram.cc — DatagramCore, the native base of uvpy's DatagramTransport
// (uvpy/_udp.py): the receive loop and the sendto() fast path. Everything
// else (construction, the send queue's writer, close/abort, flow control,
// repr, every error message) stays in Python, and the native code hands
// each case it does not take over to it.
//
// DatagramCore is a heap type created at import with asyncio.Transport as
// its base; the layout is [PyObject_HEAD][BaseTransport's `_extra` slot]
// [the fields below], checked at import as transport_type.cc checks
// TransportCore's. The fields are the Python class's own attributes
// (`_protocol`, `_buffer`, `_reading`, ...), exposed as member descriptors,
// so the Python code and the native code read and write the same state.
//
// Invariants:
//  1. _read_ready() is the loop's reader callback. It takes up to
//     kReadsPerWakeup datagrams, one at a time, and hands each to
//     protocol.datagram_received(bytes, addr) at once; before taking each
//     it re-reads `_conn_lost` and `_reading`, so close(), abort() or
//     pause_reading() from inside datagram_received() ends the batch with
//     nothing taken that was not delivered. (recvmmsg() would save the
//     recvfrom() that ends each wakeup with EAGAIN, but it made no
//     measurable difference to the sockets suite's UDP echo or flood.)
//  2. `addr` is the object socket.recvfrom() returns for the family:
//     (host, port) for AF_INET, (host, port, flowinfo, scope_id) for
//     AF_INET6, str / bytes (abstract) / None (unnamed) for AF_UNIX. For
//     other families _read_ready() is the Python _read_ready_py().
//  3. Senders' address objects are kept in kPeerSlots slots, direct-mapped
//     by a hash of the sockaddr bytes the kernel wrote: a datagram from a
//     known peer reuses the same (immutable) tuple, so an echo round trip
//     builds no tuple or str. A slot is replaced, never updated, so an
//     entry always converts its own bytes.
//  4. Errors are asyncio's: an OSError from recvfrom goes to
//     protocol.error_received() and ends the batch; another error while
//     reading (MemoryError) goes to self._fatal_error(); an exception from
//     the protocol propagates to the reader's handle, which reports it.
//  5. sendto() sends directly only where asyncio's sendto() would send
//     directly: bytes-like non-empty data, the connection not lost, the
//     send queue empty, and an address that is None or the transport's
//     own when it has one. Anything else, and an address the fast path
//     does not parse (a hostname, a non-tuple, anything unusual), goes to
//     the Python _sendto_slow(), which does what asyncio does. EAGAIN goes
//     to _sendto_blocked() (start the writer, queue the datagram); another
//     send error to protocol.error_received(), and the datagram is dropped.
//  6. Parsed destination addresses are kept by object identity (a strong
//     reference to an exact tuple of str and int, an exact str or bytes:
//     immutable), kSendSlots of them: an echo server passes back the
//     object datagram_received() got. An AF_UNIX destination is an exact
//     str (encoded as os.fsencode would) or bytes, parsed as
//     socket.sendto() parses it (a leading NUL: Linux's abstract
//     namespace); an empty or too long path, a non-ASCII str, or any
//     other type (a bytearray, which socket.sendto() also takes; a
//     PathLike, which it refuses) goes to Python, so the outcome and any
//     error are socket's own.
//  7. Where a datagram comes from. On libuv (`_ring` false) it is one
//     recvfrom() on readiness. On io_uring (`_ring` true: the reader is
//     installed as IO_DATAGRAMS, backend.h contract 9) it is
//     Reactor::recv_datagram(), which the backend feeds from a multishot
//     RECVMSG, or a recvfrom() where it fell back. The kernel consumed
//     what the ring received ahead, so it cannot be re-read after a pause:
//     _hold_read_ahead() (from _stop_reading, before the watcher goes)
//     moves those datagrams here, `held`, and _read_ready() delivers them
//     first, in order, once reading resumes (_start_reading schedules it).
//     After close() or abort() they are dropped, never delivered, as the
//     readiness path leaves them unread in a socket about to close.
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <deque>
#include <memory>
#include <vector>

#include "py.h"
// after Python.h
#include "structmember.h"

namespace uvpy::py {
namespace {

constexpr size_t kMaxSize = 256 * 1024;  // DatagramTransport.max_size
// Datagrams taken per readiness event before yielding to other callbacks
// (libuv takes 32). Under a flood the kernel drops what a slow reader
// leaves in its receive queue; bench/sockets.py's udp_flood lost none at
// 64 where it lost half at 32 on the Python reader.
constexpr int kReadsPerWakeup = 64;
constexpr unsigned kPeerSlots = 16;  // invariant 3; a power of two
constexpr unsigned kSendSlots = 8;   // invariant 6; a power of two

// An address object and the sockaddr it stands for (invariants 3 and 6).
struct AddrSlot {
  PyObject* addr;  // strong; nullptr when empty
  socklen_t len;
  sockaddr_storage sa;
};

struct Datagram {
  PyObject_HEAD
  PyObject* extra;       // BaseTransport's `_extra` slot: keep first
  PyObject* protocol;    // _protocol
  PyObject* buffer;      // _buffer: the send queue, a deque of (bytes, addr)
  PyObject* address;     // _address: the remote address given, or None
  Py_ssize_t conn_lost;  // _conn_lost
  int fd;                // _sock_fd
  int family;            // _family
  char reading;          // _reading: the reader is installed (_flow.ReadControl)
  char connected;        // _connected: the socket has a peer; send(), not sendto()
  // Made on first use: most endpoints see few peers, some see none.
  AddrSlot* peers;
  AddrSlot* sends;
  PyObject* loop;        // _loop: the LoopCore (None once closed)
  char ring;             // _ring: the reader is an IO_DATAGRAMS one (invariant 7)
  std::deque<loop::HeldDatagram>* held;  // invariant 7; made on first use
};

PyTypeObject* datagram_type;
PyObject* str_datagram_received;
PyObject* str_error_received;
PyObject* str_fatal_error;
PyObject* str_read_ready_py;
PyObject* str_sendto_slow;
PyObject* str_sendto_blocked;

Datagram* D(PyObject* self) { return reinterpret_cast<Datagram*>(self); }

char* read_buffer() {
  static thread_local std::unique_ptr<char[]> buf;
  if (!buf) buf.reset(new char[kMaxSize]);
  return buf.get();
}

// FNV-1a over the sockaddr bytes: at most sizeof(sockaddr_un).
unsigned hash_bytes(const void* p, socklen_t len) {
  auto* b = static_cast<const unsigned char*>(p);
  uint32_t h = 2166136261u;
  for (socklen_t i = 0; i < len; ++i) h = (h ^ b[i]) * 16777619u;
  return h ^ (h >> 16);
}

// The address object socket.recvfrom() would return (invariant 2).
PyObject* make_address(const sockaddr_storage& ss, socklen_t len) {
  if (len == 0) Py_RETURN_NONE;  // an unnamed AF_UNIX sender, as makesockaddr()
  char host[INET6_ADDRSTRLEN];
  switch (ss.ss_family) {
    case AF_INET: {
      const auto& a = reinterpret_cast<const sockaddr_in&>(ss);
      if (inet_ntop(AF_INET, &a.sin_addr, host, sizeof host) == nullptr) return raise_os_error(errno);
      return Py_BuildValue("(si)", host, static_cast<int>(ntohs(a.sin_port)));
    }
    case AF_INET6: {
      const auto& a = reinterpret_cast<const sockaddr_in6&>(ss);
      // With a scope (link-local), socket.recvfrom() names it the way
      // getnameinfo() does ("fe80::1%eth0"); inet_ntop() would not.
      char scoped[NI_MAXHOST];
      if (a.sin6_scope_id != 0) {
        if (getnameinfo(reinterpret_cast<const sockaddr*>(&ss), len, scoped, sizeof scoped, nullptr,
                        0, NI_NUMERICHOST) != 0)
          return PyErr_Format(PyExc_OSError, "cannot format an IPv6 address");
        return Py_BuildValue("(siII)", scoped, static_cast<int>(ntohs(a.sin6_port)),
                             static_cast<unsigned>(ntohl(a.sin6_flowinfo)),
                             static_cast<unsigned>(a.sin6_scope_id));
      }
      if (inet_ntop(AF_INET6, &a.sin6_addr, host, sizeof host) == nullptr) return raise_os_error(errno);
      return Py_BuildValue("(siII)", host, static_cast<int>(ntohs(a.sin6_port)),
                           static_cast<unsigned>(ntohl(a.sin6_flowinfo)),
                           static_cast<unsigned>(a.sin6_scope_id));
    }
    case AF_UNIX: {
      const auto& a = reinterpret_cast<const sockaddr_un&>(ss);
      size_t n = len - offsetof(sockaddr_un, sun_path);
      if (n > 0 && a.sun_path[0] == 0)  // Linux's abstract namespace
        return PyBytes_FromStringAndSize(a.sun_path, static_cast<Py_ssize_t>(n));
      return PyUnicode_DecodeFSDefaultAndSize(a.sun_path,
                                              static_cast<Py_ssize_t>(strnlen(a.sun_path, n)));
    }
  }
  PyErr_SetString(PyExc_SystemError, "datagram from an unexpected address family");
  return nullptr;
}

// A new reference to the sender's address object, from the cache when the
// bytes match (invariant 3).
PyObject* peer_address(Datagram* d, const sockaddr_storage& ss, socklen_t len) {
  if (d->peers == nullptr) d->peers = new AddrSlot[kPeerSlots]();
  AddrSlot& slot = d->peers[hash_bytes(&ss, len) & (kPeerSlots - 1)];
  if (slot.addr != nullptr && slot.len == len && std::memcmp(&slot.sa, &ss, len) == 0)
    return Py_NewRef(slot.addr);
  PyObject* addr = make_address(ss, len);
  if (addr == nullptr) return nullptr;
  Py_XSETREF(slot.addr, Py_NewRef(addr));
  slot.len = len;
  std::memcpy(&slot.sa, &ss, len);
  return addr;
}

bool is_again(int err) { return err == EAGAIN || err == EWOULDBLOCK; }

// self.<name>(*args): a Python-level method of the subclass.
PyObject* call_self(PyObject* self, PyObject* name, PyObject* a = nullptr, PyObject* b = nullptr) {
  PyObject* args[3] = {self, a, b};
  size_t n = b ? 3 : a ? 2 : 1;
  return PyObject_VectorcallMethod(name, args, n | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr);
}

// protocol.error_received(OSError(err)) (invariants 4 and 5). The protocol
// is held across the call: the callback may replace it.
PyObject* error_received(Datagram* d, int err) {
  PyObject* exc = os_error(err);  // the OSError subclass socket raises
  if (exc == nullptr) return nullptr;
  PyObject* protocol = Py_NewRef(d->protocol ? d->protocol : Py_None);
  PyObject* args[2] = {protocol, exc};
  PyObject* r = PyObject_VectorcallMethod(str_error_received, args,
                                          2 | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr);
  Py_DECREF(protocol);
  Py_DECREF(exc);
  return r;
}

// self._fatal_error(exc, "Fatal read error on datagram transport") for the
// pending exception, unless it is SystemExit/KeyboardInterrupt.
PyObject* fatal_read_error(PyObject* self) {
  if (PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
    return nullptr;
  PyObject* exc = fetch_exception();
  PyObject* msg = PyUnicode_FromString("Fatal read error on datagram transport");
  PyObject* r = msg ? call_self(self, str_fatal_error, exc, msg) : nullptr;
  Py_XDECREF(msg);
  Py_DECREF(exc);
  return r;
}

// --- receiving ------------------------------------------------------------------------

// The reactor that feeds this transport's reader (invariant 7), or nullptr
// for readiness and plain recvfrom().
loop::Reactor* ring_reactor(Datagram* d) {
  if (!d->ring || d->loop == nullptr || !PyObject_TypeCheck(d->loop, &LoopCoreType)) return nullptr;
  loop::Reactor* r = reinterpret_cast<LoopCore*>(d->loop)->reactor;
  return r != nullptr && !r->closed() ? r : nullptr;
}

// loop.stats()'s datagram counters, on the loop d belongs to.
void count_datagram(Datagram* d, bool out, size_t n) {
  if (d->loop == nullptr || !PyObject_TypeCheck(d->loop, &LoopCoreType)) return;
  loop::Reactor* r = reinterpret_cast<LoopCore*>(d->loop)->reactor;
  if (r == nullptr) return;
  loop::LoopCounters& c = r->counters();
  if (out) {
    ++c.datagrams_out;
    c.datagram_bytes_out += n;
  } else {
    ++c.datagrams_in;
    c.datagram_bytes_in += n;
  }
}

// _count(out, nbytes): the same, for the datagrams uvpy/_udp.py sends or
// receives itself (its slow paths).
PyObject* Datagram_count(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2) {
    PyErr_SetString(PyExc_TypeError, "_count(out, nbytes)");
    return nullptr;
  }
  const int out = PyObject_IsTrue(args[0]);
  const Py_ssize_t n = PyLong_AsSsize_t(args[1]);
  if (out < 0 || (n == -1 && PyErr_Occurred())) return nullptr;
  count_datagram(D(self), out != 0, static_cast<size_t>(n));
  Py_RETURN_NONE;
}

// The next datagram into buf (n >= 0 bytes, sender in ss/len), or -errno
// (-EAGAIN: nothing now). Held datagrams go first (invariant 7).
ssize_t next_datagram(Datagram* d, loop::Reactor* r, char* buf, sockaddr_storage* ss,
                      socklen_t* len) {
  if (d->held != nullptr && !d->held->empty()) {
    loop::HeldDatagram& h = d->held->front();
    ssize_t n = h.err;
    if (n == 0) {
      n = static_cast<ssize_t>(std::min(h.data.size(), kMaxSize));
      std::memcpy(buf, h.data.data(), static_cast<size_t>(n));
      std::memcpy(ss, &h.addr, h.addrlen);
      *len = h.addrlen;
    }
    d->held->pop_front();
    return n;
  }
  if (r != nullptr) return r->recv_datagram(d->fd, buf, kMaxSize, ss, len);
  for (;;) {
    *len = sizeof *ss;
    ssize_t n = ::recvfrom(d->fd, buf, kMaxSize, 0, reinterpret_cast<sockaddr*>(ss), len);
    if (n >= 0) return n;
    if (errno != EINTR) return is_again(errno) ? -EAGAIN : -errno;
  }
}

PyObject* Datagram_read_ready(PyObject* self, PyObject*) {
  Datagram* d = D(self);
  if (d->family != AF_INET && d->family != AF_INET6 && d->family != AF_UNIX)
    return call_self(self, str_read_ready_py);
  char* buf = read_buffer();
  loop::Reactor* reactor = ring_reactor(d);
  for (int i = 0; i < kReadsPerWakeup; ++i) {
    if (d->conn_lost || !d->reading) break;  // invariant 1
    sockaddr_storage ss;
    socklen_t len = 0;
    ssize_t n = next_datagram(d, reactor, buf, &ss, &len);
    if (n < 0) {
      if (n == -EAGAIN) break;
      PyObject* r = error_received(d, static_cast<int>(-n));
      if (r == nullptr) return nullptr;
      Py_DECREF(r);
      break;
    }
    count_datagram(d, false, static_cast<size_t>(n));
    PyObject* data = PyBytes_FromStringAndSize(buf, n);
    PyObject* addr = data ? peer_address(d, ss, len) : nullptr;
    if (addr == nullptr) {
      Py_XDECREF(data);
      PyObject* r = fatal_read_error(self);
      if (r == nullptr) return nullptr;
      Py_DECREF(r);
      break;
    }
    PyObject* protocol = Py_NewRef(d->protocol ? d->protocol : Py_None);
    PyObject* args[3] = {protocol, data, addr};
    PyObject* r = PyObject_VectorcallMethod(str_datagram_received, args,
                                            3 | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr);
    Py_DECREF(protocol);
    Py_DECREF(data);
    Py_DECREF(addr);
    if (r == nullptr) return nullptr;
    Py_DECREF(r);
  }
  Py_RETURN_NONE;
}

// _hold_read_ahead(): invariant 7, from _stop_reading() while the reader
// is still installed.
PyObject* Datagram_hold_read_ahead(PyObject* self, PyObject*) {
  Datagram* d = D(self);
  if (loop::Reactor* r = ring_reactor(d)) {
    std::vector<loop::HeldDatagram> taken;
    r->recv_stop_datagrams(d->fd, &taken);
    if (!taken.empty() && d->held == nullptr) d->held = new std::deque<loop::HeldDatagram>();
    for (loop::HeldDatagram& h : taken) d->held->push_back(std::move(h));
  }
  Py_RETURN_NONE;
}

// _held_datagrams() -> int: how many wait for the reader (invariant 7).
PyObject* Datagram_held_datagrams(PyObject* self, PyObject*) {
  Datagram* d = D(self);
  return PyLong_FromSize_t(d->held ? d->held->size() : 0);
}

// --- sending --------------------------------------------------------------------------

// An exact str or bytes path as socket.sendto() parses it for AF_UNIX
// (invariant 6); false (no exception) for anything else.
bool parse_unix_address(PyObject* addr, sockaddr_storage* ss, socklen_t* len) {
  const char* path;
  Py_ssize_t n;
  if (PyBytes_CheckExact(addr)) {
    path = PyBytes_AS_STRING(addr);
    n = PyBytes_GET_SIZE(addr);
  } else if (PyUnicode_CheckExact(addr) && PyUnicode_IS_ASCII(addr)) {
    // ASCII is its own filesystem encoding (UTF-8, or an ASCII locale's
    // surrogateescape); other str goes the Python way.
    path = PyUnicode_AsUTF8AndSize(addr, &n);
    if (path == nullptr) {
      PyErr_Clear();
      return false;
    }
  } else {
    return false;
  }
  auto* a = reinterpret_cast<sockaddr_un*>(ss);
  const bool abstract = n > 0 && path[0] == 0;
  // Empty (autobind) and overlong paths: socket's behaviour and messages.
  if (n == 0 || static_cast<size_t>(n) > sizeof a->sun_path - (abstract ? 0 : 1)) return false;
  std::memset(ss, 0, offsetof(sockaddr_un, sun_path) + sizeof a->sun_path);
  a->sun_family = AF_UNIX;
  std::memcpy(a->sun_path, path, static_cast<size_t>(n));
  *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + n + (abstract ? 0 : 1));
  return true;
}

// Parses an exact (str, int[, int, int]) tuple for the socket's family into
// a sockaddr as socket.sendto() would; false (no exception) for anything it
// does not take, which then goes the Python way.
bool parse_address(int family, PyObject* addr, sockaddr_storage* ss, socklen_t* len) {
  if (family == AF_UNIX) return parse_unix_address(addr, ss, len);
  if (!PyTuple_CheckExact(addr)) return false;
  Py_ssize_t n = PyTuple_GET_SIZE(addr);
  if (n < 2 || n > (family == AF_INET6 ? 4 : 2)) return false;
  PyObject* host = PyTuple_GET_ITEM(addr, 0);
  if (!PyUnicode_CheckExact(host) || !PyUnicode_IS_ASCII(host)) return false;
  const char* h = PyUnicode_AsUTF8(host);
  unsigned long v[3] = {0, 0, 0};  // port, flowinfo, scope_id
  for (Py_ssize_t i = 1; i < n; ++i) {
    PyObject* item = PyTuple_GET_ITEM(addr, i);
    if (!PyLong_CheckExact(item)) return false;
    v[i - 1] = PyLong_AsUnsignedLong(item);
    if (v[i - 1] == static_cast<unsigned long>(-1) && PyErr_Occurred()) {
      PyErr_Clear();
      return false;
    }
  }
  if (v[0] > 0xFFFF || v[1] > 0xFFFFF || v[2] > 0xFFFFFFFFul) return false;
  std::memset(ss, 0, sizeof *ss);
  if (family == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(ss);
    if (inet_pton(AF_INET, h, &a->sin_addr) != 1) return false;
    a->sin_family = AF_INET;
    a->sin_port = htons(static_cast<uint16_t>(v[0]));
    *len = sizeof *a;
    return true;
  }
  if (family == AF_INET6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(ss);
    if (inet_pton(AF_INET6, h, &a->sin6_addr) != 1) return false;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(static_cast<uint16_t>(v[0]));
    a->sin6_flowinfo = htonl(static_cast<uint32_t>(v[1]));
    a->sin6_scope_id = static_cast<uint32_t>(v[2]);
    *len = sizeof *a;
    return true;
  }
  return false;
}

// The sockaddr for `addr`, from the identity cache or parsed into it
// (invariant 6); nullptr when the fast path does not take the address.
const AddrSlot* destination(Datagram* d, PyObject* addr) {
  if (d->sends == nullptr) d->sends = new AddrSlot[kSendSlots]();
  auto key = reinterpret_cast<uintptr_t>(addr);
  AddrSlot& slot = d->sends[(key >> 4 ^ key >> 10) & (kSendSlots - 1)];
  if (slot.addr == addr) return &slot;
  sockaddr_storage ss;
  socklen_t len;
  if (!parse_address(d->family, addr, &ss, &len)) return nullptr;
  Py_XSETREF(slot.addr, Py_NewRef(addr));
  slot.len = len;
  std::memcpy(&slot.sa, &ss, len);
  return &slot;
}

// sendto(data, addr=None) -> None. The hot path of invariant 5; each other
// case goes to _sendto_slow(data, addr) with the caller's arguments.
PyObject* Datagram_sendto(PyObject* self, PyObject* const* args, Py_ssize_t nargs,
                          PyObject* kwnames) {
  Datagram* d = D(self);
  if (kwnames != nullptr || nargs < 1 || nargs > 2) {  // the Python signature decides
    PyObject* method = PyObject_GetAttr(self, str_sendto_slow);
    if (method == nullptr) return nullptr;
    PyObject* r = PyObject_Vectorcall(method, args, static_cast<size_t>(nargs), kwnames);
    Py_DECREF(method);
    return r;
  }
  PyObject* data = args[0];
  PyObject* addr = nargs == 2 ? args[1] : Py_None;
  auto slow = [&]() { return call_self(self, str_sendto_slow, data, addr); };
  if (!(PyBytes_Check(data) || PyByteArray_Check(data) || PyMemoryView_Check(data))) return slow();
  if (d->conn_lost || d->buffer == nullptr || PyObject_Size(d->buffer) != 0) {
    if (PyErr_Occurred()) return nullptr;
    return slow();
  }
  if (d->address != nullptr && d->address != Py_None) {
    int truth = PyObject_IsTrue(d->address);
    if (truth < 0) return nullptr;
    if (truth) {
      // asyncio: `addr not in (None, self._address)` raises ValueError.
      if (addr != Py_None) {
        int same = PyObject_RichCompareBool(d->address, addr, Py_EQ);
        if (same < 0) return nullptr;
        if (!same) return slow();
      }
      addr = d->address;
    }
  }
  const AddrSlot* to = nullptr;
  if (!d->connected && (to = destination(d, addr)) == nullptr) return slow();
  Py_buffer view;
  if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
    PyErr_Clear();
    return slow();
  }
  if (view.len == 0) {  // sent or ignored by Python version: asyncio decides
    PyBuffer_Release(&view);
    return slow();
  }
  ssize_t n;
  do {
    n = to ? ::sendto(d->fd, view.buf, static_cast<size_t>(view.len), 0,
                      reinterpret_cast<const sockaddr*>(&to->sa), to->len)
           : ::send(d->fd, view.buf, static_cast<size_t>(view.len), 0);
  } while (n < 0 && errno == EINTR);
  int err = errno;
  PyBuffer_Release(&view);
  if (n >= 0) {
    count_datagram(d, true, static_cast<size_t>(n));
    Py_RETURN_NONE;
  }
  if (is_again(err)) return call_self(self, str_sendto_blocked, data, addr);
  return error_received(d, err);  // the datagram is dropped, as asyncio drops it
}

// --- the type -------------------------------------------------------------------------

int Datagram_traverse(PyObject* self, visitproc visit, void* arg) {
  Datagram* d = D(self);
  Py_VISIT(Py_TYPE(self));
  Py_VISIT(d->extra);
  Py_VISIT(d->protocol);
  Py_VISIT(d->buffer);
  Py_VISIT(d->address);
  Py_VISIT(d->loop);
  // The cached addresses are tuples of str and int: they cannot reach back.
  return 0;
}

int Datagram_clear(PyObject* self) {
  Datagram* d = D(self);
  Py_CLEAR(d->extra);
  Py_CLEAR(d->protocol);
  Py_CLEAR(d->buffer);
  Py_CLEAR(d->address);
  Py_CLEAR(d->loop);
  delete d->held;
  d->held = nullptr;
  if (d->peers != nullptr) {
    for (unsigned i = 0; i < kPeerSlots; ++i) Py_CLEAR(d->peers[i].addr);
    delete[] d->peers;
    d->peers = nullptr;
  }
  if (d->sends != nullptr) {
    for (unsigned i = 0; i < kSendSlots; ++i) Py_CLEAR(d->sends[i].addr);
    delete[] d->sends;
    d->sends = nullptr;
  }
  return 0;
}

void Datagram_dealloc(PyObject* self) {
  PyTypeObject* tp = Py_TYPE(self);
  PyObject_GC_UnTrack(self);
  Datagram_clear(self);
  tp->tp_free(self);
  Py_DECREF(tp);
}

#define METH(name, fn, flags, doc) {name, reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(fn)), flags, doc}

PyMethodDef Datagram_methods[] = {
    METH("sendto", Datagram_sendto, METH_FASTCALL | METH_KEYWORDS,
         "sendto(data, addr=None): send a datagram now if possible, else queue it."),
    METH("_read_ready", Datagram_read_ready, METH_NOARGS, nullptr),
    METH("_hold_read_ahead", Datagram_hold_read_ahead, METH_NOARGS, nullptr),
    METH("_held_datagrams", Datagram_held_datagrams, METH_NOARGS, nullptr),
    METH("_count", Datagram_count, METH_FASTCALL, nullptr),
    {nullptr, nullptr, 0, nullptr},
};

PyMemberDef Datagram_members[] = {
    {"_protocol", T_OBJECT, offsetof(Datagram, protocol), 0, nullptr},
    {"_buffer", T_OBJECT, offsetof(Datagram, buffer), 0, nullptr},
    {"_address", T_OBJECT, offsetof(Datagram, address), 0, nullptr},
    {"_conn_lost", T_PYSSIZET, offsetof(Datagram, conn_lost), 0, nullptr},
    {"_sock_fd", T_INT, offsetof(Datagram, fd), 0, nullptr},
    {"_family", T_INT, offsetof(Datagram, family), 0, nullptr},
    {"_reading", T_BOOL, offsetof(Datagram, reading), 0, nullptr},
    {"_connected", T_BOOL, offsetof(Datagram, connected), 0, nullptr},
    {"_loop", T_OBJECT, offsetof(Datagram, loop), 0, nullptr},
    {"_ring", T_BOOL, offsetof(Datagram, ring), 0, nullptr},
    {nullptr, 0, 0, 0, nullptr},
};

}  // namespace

bool ready_datagram(PyObject* module) {
  if (!(intern(&str_datagram_received, "datagram_received") &&
        intern(&str_error_received, "error_received") && intern(&str_fatal_error, "_fatal_error") &&
        intern(&str_read_ready_py, "_read_ready_py") && intern(&str_sendto_slow, "_sendto_slow") &&
        intern(&str_sendto_blocked, "_sendto_blocked")))
    return false;
  static PyType_Slot slots[] = {
      {Py_tp_dealloc, reinterpret_cast<void*>(Datagram_dealloc)},
      {Py_tp_traverse, reinterpret_cast<void*>(Datagram_traverse)},
      {Py_tp_clear, reinterpret_cast<void*>(Datagram_clear)},
      {Py_tp_methods, Datagram_methods},
      {Py_tp_members, Datagram_members},
      {Py_tp_doc, const_cast<char*>("Native core of uvpy's DatagramTransport (an asyncio.Transport).")},
      {0, nullptr},
  };
  static PyType_Spec spec{"uvpy._uvpy.DatagramCore", static_cast<int>(sizeof(Datagram)), 0,
                          Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, slots};
  datagram_type = native_transport_type(module, &spec, offsetof(Datagram, extra),
                                        offsetof(Datagram, protocol));
  return datagram_type != nullptr;
}

}  // namespace uvpy::py
