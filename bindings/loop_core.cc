// loop_core.cc — LoopCore, the native base of uvpy.Loop.
//
// It owns the Reactor and implements the methods on asyncio's hot paths
// (call_soon, call_later, call_at, call_soon_threadsafe, time, get_debug)
// with METH_FASTCALL, plus the run loop itself. Everything with policy in
// it (run_until_complete, exception handlers, executors, signals) lives in
// uvpy/_loop.py, which subclasses this type together with
// asyncio.AbstractEventLoop.
//
// Rules:
//  1. Every scheduling entry point checks is_closed first and raises
//     RuntimeError('Event loop is closed') as asyncio does.
//  2. In debug mode the Python-level _check_thread/_check_callback run, so
//     their messages are asyncio's own.
//  3. The GIL is released only inside Reactor::run_once's poll phase.
//  4. The reactor object lives as long as the LoopCore; close() empties it.
#include "py.h"  // Python.h first

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string>

#include "backend_select.h"

namespace uvpy::py {

thread_local LoopCore* t_running_loop = nullptr;

namespace {

PyObject* str_context;  // interned "context"

int as_int(PyObject* o) {
  long v = PyLong_AsLong(o);
  if (v > INT32_MAX || v < INT32_MIN) {
    PyErr_SetString(PyExc_OverflowError, "fd out of range");
    return -1;
  }
  return static_cast<int>(v);
}

bool check_open(LoopCore* self) {
  if (self->reactor->closed()) {
    PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
    return false;
  }
  return true;
}

bool debug_checks(LoopCore* self, PyObject* callback, const char* method, bool thread) {
  PyObject* s = reinterpret_cast<PyObject*>(self);
  if (thread) {
    PyObject* r = PyObject_CallMethod(s, "_check_thread", nullptr);
    if (r == nullptr) return false;
    Py_DECREF(r);
  }
  PyObject* r = PyObject_CallMethod(s, "_check_callback", "Os", callback, method);
  if (r == nullptr) return false;
  Py_DECREF(r);
  return true;
}

// Parses (callback, *args, context=None) starting at args[first].
bool parse_callback(const char* method, PyObject* const* args, Py_ssize_t nargs,
                    PyObject* kwnames, Py_ssize_t first, PyObject** callback,
                    PyObject** cargs, PyObject** context) {
  *context = Py_None;
  if (kwnames) {
    Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t i = 0; i < nkw; ++i) {
      PyObject* key = PyTuple_GET_ITEM(kwnames, i);
      if (key == str_context || PyUnicode_Compare(key, str_context) == 0) {
        *context = args[nargs + i];
      } else {
        PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", method, key);
        return false;
      }
    }
  }
  if (nargs <= first) {
    PyErr_Format(PyExc_TypeError, "%s() missing required positional argument: 'callback'", method);
    return false;
  }
  *callback = args[first];
  Py_ssize_t n = nargs - first - 1;
  *cargs = PyTuple_New(n);
  if (*cargs == nullptr) return false;
  for (Py_ssize_t i = 0; i < n; ++i)
    PyTuple_SET_ITEM(*cargs, i, Py_NewRef(args[first + 1 + i]));
  return true;
}

PyObject* schedule_soon(LoopCore* self, PyObject* const* args, Py_ssize_t nargs,
                        PyObject* kwnames, const char* method, bool threadsafe) {
  PyObject *callback, *cargs, *context;
  if (!parse_callback(method, args, nargs, kwnames, 0, &callback, &cargs, &context)) return nullptr;
  Handle* h = nullptr;
  if (check_open(self) && (!self->debug || debug_checks(self, callback, method, !threadsafe)))
    h = new_handle(&HandleType, callback, cargs, self, context);
  Py_DECREF(cargs);
  if (h == nullptr) return nullptr;
  if (threadsafe) {
    Py_INCREF(h);  // handed over to the reactor's inbox
    self->reactor->post(as_callback(h));
  } else {
    self->reactor->call_soon(as_callback(h));
  }
  return reinterpret_cast<PyObject*>(h);
}

PyObject* schedule_at(LoopCore* self, double when, PyObject* const* args, Py_ssize_t nargs,
                      PyObject* kwnames, const char* method) {
  PyObject *callback, *cargs, *context;
  if (!parse_callback(method, args, nargs, kwnames, 1, &callback, &cargs, &context)) return nullptr;
  Handle* h = nullptr;
  if (check_open(self) && (!self->debug || debug_checks(self, callback, "call_at", true)))
    h = new_handle(&TimerHandleType, callback, cargs, self, context);
  Py_DECREF(cargs);
  if (h == nullptr) return nullptr;
  auto* t = reinterpret_cast<TimerHandle*>(h);
  t->node.when = when;
  self->reactor->add_timer(&t->node);
  // handle.cc rule 5: out of the GC's sight while the heap holds it.
  PyObject_GC_UnTrack(h);
  if (h->context && PyObject_GC_IsTracked(h->context)) {
    PyObject_GC_UnTrack(h->context);
    h->context_untracked = true;
  }
  return reinterpret_cast<PyObject*>(h);
}

// asyncio computes `self.time() + delay` in Python; a non-number delay gets
// exactly the TypeError that expression raises.
bool to_seconds(PyObject* obj, double base, double* out) {
  if (PyFloat_CheckExact(obj)) {
    *out = base + PyFloat_AS_DOUBLE(obj);
    return true;
  }
  PyObject* b = PyFloat_FromDouble(base);
  if (b == nullptr) return false;
  PyObject* sum = PyNumber_Add(b, obj);
  Py_DECREF(b);
  if (sum == nullptr) return false;
  *out = PyFloat_AsDouble(sum);
  Py_DECREF(sum);
  return !(*out == -1.0 && PyErr_Occurred());
}

// ---------------------------------------------------------------------------
// Methods

PyObject* LoopCore_call_soon(PyObject* self, PyObject* const* args, Py_ssize_t nargs,
                             PyObject* kwnames) {
  return schedule_soon(reinterpret_cast<LoopCore*>(self), args, nargs, kwnames, "call_soon", false);
}

PyObject* LoopCore_call_soon_threadsafe(PyObject* self, PyObject* const* args, Py_ssize_t nargs,
                                        PyObject* kwnames) {
  return schedule_soon(reinterpret_cast<LoopCore*>(self), args, nargs, kwnames,
                       "call_soon_threadsafe", true);
}

PyObject* LoopCore_call_later(PyObject* self, PyObject* const* args, Py_ssize_t nargs,
                              PyObject* kwnames) {
  auto* loop = reinterpret_cast<LoopCore*>(self);
  if (nargs < 1) {
    PyErr_SetString(PyExc_TypeError, "call_later() missing required positional argument: 'delay'");
    return nullptr;
  }
  if (args[0] == Py_None) {
    PyErr_SetString(PyExc_TypeError, "delay must not be None");
    return nullptr;
  }
  double when;
  if (!to_seconds(args[0], loop->reactor->time(), &when)) return nullptr;
  return schedule_at(loop, when, args, nargs, kwnames, "call_later");
}

PyObject* LoopCore_call_at(PyObject* self, PyObject* const* args, Py_ssize_t nargs,
                           PyObject* kwnames) {
  if (nargs < 1) {
    PyErr_SetString(PyExc_TypeError, "call_at() missing required positional argument: 'when'");
    return nullptr;
  }
  if (args[0] == Py_None) {
    PyErr_SetString(PyExc_TypeError, "when cannot be None");
    return nullptr;
  }
  double when;
  if (!to_seconds(args[0], 0.0, &when)) return nullptr;
  return schedule_at(reinterpret_cast<LoopCore*>(self), when, args, nargs, kwnames, "call_at");
}

PyObject* LoopCore_time(PyObject* self, PyObject*) {
  return PyFloat_FromDouble(reinterpret_cast<LoopCore*>(self)->reactor->time());
}

PyObject* LoopCore_get_debug(PyObject* self, PyObject*) {
  return PyBool_FromLong(reinterpret_cast<LoopCore*>(self)->debug);
}

PyObject* LoopCore_set_debug_flag(PyObject* self, PyObject* arg) {
  int v = PyObject_IsTrue(arg);
  if (v < 0) return nullptr;
  reinterpret_cast<LoopCore*>(self)->debug = v;
  Py_RETURN_NONE;
}

PyObject* LoopCore_is_running(PyObject* self, PyObject*) {
  return PyBool_FromLong(reinterpret_cast<LoopCore*>(self)->running);
}

PyObject* LoopCore_is_closed(PyObject* self, PyObject*) {
  return PyBool_FromLong(reinterpret_cast<LoopCore*>(self)->reactor->closed());
}

PyObject* LoopCore_stop(PyObject* self, PyObject*) {
  auto* loop = reinterpret_cast<LoopCore*>(self);
  loop->reactor->stop();
  Py_RETURN_NONE;
}

// Drops the GIL around the blocking poll, and only there. After each poll,
// Python-level signal handlers (signal.signal, Runner's SIGINT handler) run
// before any callback: the signal's wakeup fd is what ended the poll, and a
// handler that raises (KeyboardInterrupt, an alarm's exception) ends
// run_forever with that exception as it ends asyncio's select(), instead of
// running inside whichever callback happens to execute bytecode first. Only
// the main thread runs them: elsewhere PyErr_CheckSignals returns 0 at once.
struct GilRelease final : loop::BlockingScope {
  PyThreadState* state = nullptr;
  void enter() override { state = PyEval_SaveThread(); }
  void leave() override { PyEval_RestoreThread(state); }
  bool proceed() override { return PyErr_CheckSignals() >= 0; }
};

// The loop proper. uvpy/_loop.py's run_forever() wraps it with asyncio's
// bookkeeping (running-loop registration, asyncgen hooks, origin tracking).
PyObject* LoopCore_run_forever_native(PyObject* self, PyObject*) {
  auto* loop = reinterpret_cast<LoopCore*>(self);
  if (!check_open(loop)) return nullptr;
  if (loop->running) {
    PyErr_SetString(PyExc_RuntimeError, "This event loop is already running");
    return nullptr;
  }
  loop->running = true;
  loop->thread_id = PyThread_get_thread_ident();
  LoopCore* const outer = t_running_loop;
  t_running_loop = loop;
  GilRelease gil;
  PyObject* result = Py_None;
  for (;;) {
    loop->reactor->set_spin_ns(exec_spin_ns(loop));
    if (loop->reactor->run_once(&gil) < 0) {
      result = nullptr;
      break;
    }
    if (loop->reactor->stopping()) break;
  }
  t_running_loop = outer;
  loop->reactor->mark_idle();
  loop->reactor->clear_stop();
  loop->running = false;
  loop->thread_id = 0;
  return Py_XNewRef(result);
}

PyObject* LoopCore_close_native(PyObject* self, PyObject*) {
  stop_watchdog(reinterpret_cast<LoopCore*>(self));
  close_exec_port(reinterpret_cast<LoopCore*>(self));
  reinterpret_cast<LoopCore*>(self)->reactor->close();
  Py_RETURN_NONE;
}

// A callback handed back by the reactor, as what _io_set/_io_clear return.
// Only Handles are Python objects: another owner's callback (a transport's
// stream, once its transport is closing) is released, and None returned.
PyObject* handle_or_none(loop::Callback old) {
  if (!old) Py_RETURN_NONE;
  if (old.ops == &kHandleOps) return static_cast<PyObject*>(old.obj);
  old.release();
  Py_RETURN_NONE;
}

// _io_set(fd, which, handle[, kind]) -> previous handle or None.
// kind IO_ACCEPTS (or True; a listening socket's reader): the reader takes
// its connections only through _accept(), so the backend may accept ahead.
// kind IO_DATAGRAMS (a DatagramCore's reader): it takes datagrams only
// through Reactor::recv_datagram (datagram.cc), so the backend may
// receive ahead (backend.h, contract 9).
PyObject* LoopCore_io_set(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  auto* loop = reinterpret_cast<LoopCore*>(self);
  if ((nargs != 3 && nargs != 4) || !PyObject_TypeCheck(args[2], &HandleType)) {
    PyErr_SetString(PyExc_TypeError, "_io_set(fd, which, handle[, kind])");
    return nullptr;
  }
  if (!check_open(loop)) return nullptr;
  int fd = as_int(args[0]);
  int which = as_int(args[1]);
  if (PyErr_Occurred()) return nullptr;
  int kind = nargs == 4 ? as_int(args[3]) : 0;
  if (PyErr_Occurred()) return nullptr;
  const bool datagrams = kind == 2 && which == loop::kReadable;
  loop::Callback old;
  int rc = loop->reactor->set_io(fd, which, as_callback(reinterpret_cast<Handle*>(args[2])), &old,
                                 datagrams, kind == 1, datagrams);
  if (rc < 0) return raise_os_error(-rc);
  return handle_or_none(old);  // the watcher's reference becomes ours
}

// _io_clear(fd, which) -> removed handle or None
PyObject* LoopCore_io_clear(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  auto* loop = reinterpret_cast<LoopCore*>(self);
  if (nargs != 2) {
    PyErr_SetString(PyExc_TypeError, "_io_clear(fd, which)");
    return nullptr;
  }
  int fd = as_int(args[0]);
  int which = as_int(args[1]);
  if (PyErr_Occurred()) return nullptr;
  if (loop->reactor->closed()) Py_RETURN_NONE;
  loop::Callback old;
  loop->reactor->clear_io(fd, which, &old);
  return handle_or_none(old);
}

}  // namespace

// The peer address of an accepted AF_INET/AF_INET6/AF_UNIX connection as
// the socket module spells it (makesockaddr: a Unix peer is its path, ''
// when unnamed, bytes in Linux's abstract namespace); None for an empty IP
// address (the peer was gone before it could be read) or another family.
PyObject* peer_address(const sockaddr_storage& ss, socklen_t len) {
  char host[INET6_ADDRSTRLEN];
  if (len >= sizeof(sockaddr_in) && ss.ss_family == AF_INET) {
    const auto& a = reinterpret_cast<const sockaddr_in&>(ss);
    if (inet_ntop(AF_INET, &a.sin_addr, host, sizeof host) == nullptr) Py_RETURN_NONE;
    return Py_BuildValue("(si)", host, static_cast<int>(ntohs(a.sin_port)));
  }
  if (len >= sizeof(sockaddr_in6) && ss.ss_family == AF_INET6) {
    const auto& a = reinterpret_cast<const sockaddr_in6&>(ss);
    if (inet_ntop(AF_INET6, &a.sin6_addr, host, sizeof host) == nullptr) Py_RETURN_NONE;
    return Py_BuildValue("(siII)", host, static_cast<int>(ntohs(a.sin6_port)),
                         static_cast<unsigned>(ntohl(a.sin6_flowinfo)),
                         static_cast<unsigned>(a.sin6_scope_id));
  }
  if (len >= offsetof(sockaddr_un, sun_path) && ss.ss_family == AF_UNIX) {
    const auto& a = reinterpret_cast<const sockaddr_un&>(ss);
    size_t n = len - offsetof(sockaddr_un, sun_path);
    if (n > 0 && a.sun_path[0] == 0)  // Linux's abstract namespace
      return PyBytes_FromStringAndSize(a.sun_path, static_cast<Py_ssize_t>(n));
    return PyUnicode_DecodeFSDefaultAndSize(a.sun_path, static_cast<Py_ssize_t>(strnlen(a.sun_path, n)));
  }
  Py_RETURN_NONE;
}

namespace {

// _accept(fd) -> (conn_fd, address): the next connection of fd's accepting
// reader (see _io_set), or of fd itself when it has none. conn_fd is
// non-blocking and close-on-exec; address as socket.accept() gives it, or
// None (see peer_address). None when none waits (no exception on the
// common path); OSError (EMFILE, ...) as accept() raises it.
PyObject* LoopCore_accept(PyObject* self, PyObject* arg) {
  auto* loop = reinterpret_cast<LoopCore*>(self);
  if (!check_open(loop)) return nullptr;
  int fd = as_int(arg);
  if (PyErr_Occurred()) return nullptr;
  sockaddr_storage ss{};
  socklen_t len = 0;
  int conn = loop->reactor->accept(fd, &ss, &len);
  if (conn == -EAGAIN) Py_RETURN_NONE;
  if (conn < 0) return raise_os_error(-conn);
  PyObject* addr = peer_address(ss, len);
  PyObject* r = addr ? Py_BuildValue("(iN)", conn, addr) : nullptr;
  if (r == nullptr) ::close(conn);  // nobody else will
  return r;
}

// _call_handle(handle): queue an existing handle (signal delivery).
PyObject* LoopCore_call_handle(PyObject* self, PyObject* arg) {
  auto* loop = reinterpret_cast<LoopCore*>(self);
  if (!PyObject_TypeCheck(arg, &HandleType)) {
    PyErr_SetString(PyExc_TypeError, "_call_handle() expects a uvpy Handle");
    return nullptr;
  }
  if (!check_open(loop)) return nullptr;
  loop->reactor->call_soon(as_callback(reinterpret_cast<Handle*>(arg)));
  Py_RETURN_NONE;
}

PyObject* LoopCore_exec_pending(PyObject* self, PyObject*) {
  return exec_pending(reinterpret_cast<LoopCore*>(self));
}

// _stats(): the reactor's part of loop.stats() (uvpy/_loop.py adds the
// transports, the executor and the backend). Counters are loop-thread
// integers; this runs with the GIL, which the loop thread holds whenever it
// touches them, so the snapshot is consistent.
PyObject* LoopCore_stats(PyObject* self, PyObject*) {
  auto* r = reinterpret_cast<LoopCore*>(self)->reactor;
  const loop::LoopCounters& n = r->counters();
  const loop::BackendCounters c = r->backend_counters();
  const loop::Reactor::WatcherKinds k = r->watcher_kinds();
  using ull = unsigned long long;
  return Py_BuildValue(
      "{s:K,s:K,s:K,s:K,s:n,s:n,s:{s:n,s:n,s:n,s:n,s:n},s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K}",
      "iterations", (ull)n.iterations, "callbacks", (ull)n.callbacks, "poll_ns", (ull)n.poll_ns,
      "run_ns", (ull)n.run_ns, "ready", static_cast<Py_ssize_t>(r->ready_count()), "timers",
      static_cast<Py_ssize_t>(r->timer_count()), "watchers", "total",
      static_cast<Py_ssize_t>(r->watcher_count()), "streams", static_cast<Py_ssize_t>(k.streams),
      "listeners", static_cast<Py_ssize_t>(k.listeners), "datagrams",
      static_cast<Py_ssize_t>(k.datagrams), "other", static_cast<Py_ssize_t>(k.other), "accepted",
      (ull)n.accepted, "stream_bytes_in", (ull)n.stream_bytes_in, "stream_bytes_out",
      (ull)n.stream_bytes_out, "datagrams_in", (ull)n.datagrams_in, "datagrams_out",
      (ull)n.datagrams_out, "datagram_bytes_in", (ull)n.datagram_bytes_in, "datagram_bytes_out",
      (ull)n.datagram_bytes_out, "dgram_ring", (ull)c.dgram_ring, "dgram_nobufs",
      (ull)c.dgram_nobufs);
}

// _inject_recv_error(fd, errno) -> bool: a test hook. The next receive the
// backend arms for fd's reader ends at once with that error, as if the
// kernel had refused it (io_uring; other backends ignore it). False when
// fd has no watcher.
PyObject* LoopCore_inject_recv_error(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  auto* loop = reinterpret_cast<LoopCore*>(self);
  if (nargs != 2) {
    PyErr_SetString(PyExc_TypeError, "_inject_recv_error(fd, errno)");
    return nullptr;
  }
  if (!check_open(loop)) return nullptr;
  int fd = as_int(args[0]);
  int err = as_int(args[1]);
  if (PyErr_Occurred()) return nullptr;
  return PyBool_FromLong(loop->reactor->inject_recv_error(fd, -err));
}

// backend_info() -> dict: the backend's name and the settings it runs with
// now (loop/backend.h BackendSetting): switches as bools, sizes as ints,
// names as str.
PyObject* LoopCore_backend_info(PyObject* self, PyObject*) {
  auto* r = reinterpret_cast<LoopCore*>(self)->reactor;
  PyObject* d = Py_BuildValue("{s:s}", "backend", r->backend_name());
  if (d == nullptr) return nullptr;
  for (const loop::BackendSetting& s : r->backend_settings()) {
    PyObject* v = s.text ? PyUnicode_FromString(s.text)
                  : s.flag ? PyBool_FromLong(static_cast<long>(s.value))
                           : PyLong_FromUnsignedLong(s.value);
    if (v == nullptr || PyDict_SetItemString(d, s.name, v) < 0) {
      Py_XDECREF(v);
      Py_DECREF(d);
      return nullptr;
    }
    Py_DECREF(v);
  }
  return d;
}

PyObject* LoopCore_get_backend(PyObject* self, void*) {
  return PyUnicode_FromString(reinterpret_cast<LoopCore*>(self)->reactor->backend_name());
}

PyObject* LoopCore_get_thread_id(PyObject* self, void*) {
  auto* loop = reinterpret_cast<LoopCore*>(self);
  if (loop->thread_id == 0) Py_RETURN_NONE;
  return PyLong_FromUnsignedLong(loop->thread_id);
}

PyObject* LoopCore_get_current_handle(PyObject* self, void*) {
  PyObject* h = reinterpret_cast<LoopCore*>(self)->current_handle;
  return Py_NewRef(h ? h : Py_None);
}

PyObject* LoopCore_get_warn_slow(PyObject* self, void*) {
  return PyBool_FromLong(reinterpret_cast<LoopCore*>(self)->warn_slow);
}

int LoopCore_set_warn_slow(PyObject* self, PyObject* value, void*) {
  if (value == nullptr) {
    PyErr_SetString(PyExc_AttributeError, "cannot delete warn_slow_callbacks");
    return -1;
  }
  if (!PyBool_Check(value)) {
    PyErr_Format(PyExc_TypeError, "warn_slow_callbacks must be a bool, not %.100s",
                 Py_TYPE(value)->tp_name);
    return -1;
  }
  reinterpret_cast<LoopCore*>(self)->warn_slow = value == Py_True;
  return 0;
}

PyObject* LoopCore_get_slow(PyObject* self, void*) {
  return PyFloat_FromDouble(reinterpret_cast<LoopCore*>(self)->slow_callback_duration);
}

int LoopCore_set_slow(PyObject* self, PyObject* value, void*) {
  if (value == nullptr) {
    PyErr_SetString(PyExc_AttributeError, "cannot delete slow_callback_duration");
    return -1;
  }
  double d = PyFloat_AsDouble(value);
  if (d == -1.0 && PyErr_Occurred()) return -1;
  reinterpret_cast<LoopCore*>(self)->slow_callback_duration = d;
  return 0;
}

// The `uring` keyword: a uvpy.UringOptions (uvpy/_options.py), which
// checked its values when it was made and which Loop.__new__ put in for
// None (the UVPY_URING_* defaults); absent or None here, the backend's own
// defaults. Read by name, so the Python class keeps its field order free.
bool uring_options(PyObject* kwds, loop::UringOptions* o) {
  PyObject* arg = kwds ? PyDict_GetItemString(kwds, "uring") : nullptr;
  if (arg == nullptr || arg == Py_None) return true;
  static const struct { const char* name; bool loop::UringOptions::* field; } kFlags[] = {
      {"completion", &loop::UringOptions::completion},
      {"completion_sends", &loop::UringOptions::completion_sends},
      {"completion_accepts", &loop::UringOptions::completion_accepts},
      {"completion_datagrams", &loop::UringOptions::completion_datagrams},
  };
  for (const auto& f : kFlags) {
    PyObject* v = PyObject_GetAttrString(arg, f.name);
    int on = v ? PyObject_IsTrue(v) : -1;
    Py_XDECREF(v);
    if (on < 0) return false;
    o->*f.field = on != 0;
  }
  static const struct { const char* name; unsigned loop::UringOptions::* field; } kNumbers[] = {
      {"buf_count", &loop::UringOptions::buf_count},
      {"buf_size", &loop::UringOptions::buf_size},
  };
  for (const auto& f : kNumbers) {
    PyObject* v = PyObject_GetAttrString(arg, f.name);
    unsigned long n = v ? PyLong_AsUnsignedLong(v) : 0;
    Py_XDECREF(v);
    if (PyErr_Occurred()) return false;
    if (n > UINT32_MAX) {
      PyErr_Format(PyExc_ValueError, "uring.%s is out of range", f.name);
      return false;
    }
    o->*f.field = static_cast<unsigned>(n);
  }
  return true;
}

// The backend for a new loop: the `backend` keyword, else $UVPY_BACKEND,
// else "auto"; loop::make_backend() decides (loop/backend_select.h). A bad
// name raises ValueError; a backend that cannot run, OSError with the
// reason.
std::unique_ptr<loop::Backend> make_backend(PyObject* kwds) {
  std::string choice = "auto";
  const char* source = "backend";
  PyObject* arg = kwds ? PyDict_GetItemString(kwds, "backend") : nullptr;
  if (arg != nullptr && arg != Py_None) {
    const char* s = PyUnicode_Check(arg) ? PyUnicode_AsUTF8(arg) : nullptr;
    if (s == nullptr) {
      if (!PyErr_Occurred())
        PyErr_Format(PyExc_TypeError, "backend must be a str or None, not %.100s", Py_TYPE(arg)->tp_name);
      return nullptr;
    }
    choice = s;
  } else if (const char* env = std::getenv("UVPY_BACKEND"); env != nullptr && *env) {
    choice = env;
    source = "UVPY_BACKEND";
  }
  loop::BackendOptions opts;
  if (!loop::parse_backend(choice, &opts.kind)) {
    PyErr_Format(PyExc_ValueError, "%s must be 'auto', 'io_uring' or 'libuv', not '%s'", source,
                 choice.c_str());
    return nullptr;
  }
  if (!uring_options(kwds, &opts.uring)) return nullptr;
  std::string err;
  if (auto b = loop::make_backend(opts, &err)) return b;
  PyErr_SetString(PyExc_OSError, err.c_str());
  return nullptr;
}

// Positional arguments and other keywords belong to __init__ (a subclass
// may have its own); only `backend` and `uring` matter here.
PyObject* LoopCore_new(PyTypeObject* type, PyObject*, PyObject* kwds) {
  auto backend = make_backend(kwds);
  if (!backend) return nullptr;
  auto* self = reinterpret_cast<LoopCore*>(type->tp_alloc(type, 0));
  if (self == nullptr) return nullptr;
  self->reactor = new loop::Reactor(std::move(backend));
  self->slow_callback_duration = 0.1;
  return reinterpret_cast<PyObject*>(self);
}

void LoopCore_dealloc(PyObject* self) {
  auto* loop = reinterpret_cast<LoopCore*>(self);
  PyObject_GC_UnTrack(self);
  if (loop->weakreflist) PyObject_ClearWeakRefs(self);
  // Closing releases queued handles, which may run arbitrary __del__ code.
  stop_watchdog(loop);
  close_exec_port(loop);
  delete loop->reactor;
  loop->reactor = nullptr;
  Py_TYPE(self)->tp_free(self);
}

// The reactor holds its queued handles (which reference the loop back), so
// the GC must see those references, or an unclosed loop with pending
// callbacks could never be collected. A TimerHandle in the heap is untracked
// (handle.cc rule 5) and so never walked by the GC: the loop reports what it
// references instead, as if the handle's fields were its own. Found
// unreachable, the loop is finalized (Loop.__del__ warns and closes, which
// releases everything), as asyncio's loop is. Other callbacks (executor
// drains, transports' streams) hold no Python reference for the reactor.
int LoopCore_traverse(PyObject* self, visitproc visit, void* arg) {
  loop::Reactor* r = reinterpret_cast<LoopCore*>(self)->reactor;
  if (r == nullptr) return 0;
  return r->for_each_held([visit, arg](const loop::Callback& cb) -> int {
    if (cb.ops != &kHandleOps) return 0;
    auto* h = static_cast<PyObject*>(cb.obj);
    if (PyObject_GC_IsTracked(h)) return visit(h, arg);
    return Py_TYPE(h)->tp_traverse(h, visit, arg);
  });
}

#define FASTKW(name, fn, doc) {name, reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(fn)), METH_FASTCALL | METH_KEYWORDS, doc}
#define FAST(name, fn, doc) {name, reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(fn)), METH_FASTCALL, doc}

PyMethodDef LoopCore_methods[] = {
    FASTKW("call_soon", LoopCore_call_soon, "call_soon(callback, *args, context=None) -> Handle"),
    FASTKW("call_soon_threadsafe", LoopCore_call_soon_threadsafe,
           "call_soon_threadsafe(callback, *args, context=None) -> Handle"),
    FASTKW("call_later", LoopCore_call_later, "call_later(delay, callback, *args, context=None) -> TimerHandle"),
    FASTKW("call_at", LoopCore_call_at, "call_at(when, callback, *args, context=None) -> TimerHandle"),
    {"time", LoopCore_time, METH_NOARGS, "The loop's monotonic clock (time.monotonic)."},
    {"get_debug", LoopCore_get_debug, METH_NOARGS, nullptr},
    {"_set_debug_flag", LoopCore_set_debug_flag, METH_O, nullptr},
    {"is_running", LoopCore_is_running, METH_NOARGS, "Return True if the loop is running."},
    {"is_closed", LoopCore_is_closed, METH_NOARGS, "Return True if the loop was closed."},
    {"stop", LoopCore_stop, METH_NOARGS, "Stop the loop after the current iteration."},
    {"_run_forever_native", LoopCore_run_forever_native, METH_NOARGS, nullptr},
    {"_close_native", LoopCore_close_native, METH_NOARGS, nullptr},
    FAST("_io_set", LoopCore_io_set, nullptr),
    FAST("_io_clear", LoopCore_io_clear, nullptr),
    {"_accept", LoopCore_accept, METH_O, nullptr},
    {"_call_handle", LoopCore_call_handle, METH_O, nullptr},
    {"_exec_pending", LoopCore_exec_pending, METH_NOARGS, nullptr},
    {"backend_info", LoopCore_backend_info, METH_NOARGS,
     "The backend's name and the settings it runs with (after any fallback at start)."},
    {"_stats", LoopCore_stats, METH_NOARGS, "The reactor's part of loop.stats()."},
    FAST("_set_watchdog", LoopCore_set_watchdog, nullptr),
    FAST("_inject_recv_error", LoopCore_inject_recv_error, nullptr),
    {nullptr, nullptr, 0, nullptr},
};

PyGetSetDef LoopCore_getset[] = {
    {"backend", LoopCore_get_backend, nullptr, "Name of the polling backend in use.", nullptr},
    {"_thread_id", LoopCore_get_thread_id, nullptr, nullptr, nullptr},
    {"_current_handle", LoopCore_get_current_handle, nullptr, nullptr, nullptr},
    {"slow_callback_duration", LoopCore_get_slow, LoopCore_set_slow,
     "Debug mode (or warn_slow_callbacks) logs callbacks that run longer than this many seconds.",
     nullptr},
    {"warn_slow_callbacks", LoopCore_get_warn_slow, LoopCore_set_warn_slow,
     "Log callbacks slower than slow_callback_duration without debug mode.", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

}  // namespace

PyTypeObject LoopCoreType = [] {
  PyTypeObject t{PyVarObject_HEAD_INIT(nullptr, 0)};
  t.tp_name = "uvpy._uvpy.LoopCore";
  t.tp_basicsize = sizeof(LoopCore);
  t.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC;
  t.tp_doc = "Native core of uvpy.Loop: the reactor and the scheduling fast paths.";
  t.tp_new = LoopCore_new;
  t.tp_dealloc = LoopCore_dealloc;
  t.tp_traverse = LoopCore_traverse;
  t.tp_methods = LoopCore_methods;
  t.tp_getset = LoopCore_getset;
  t.tp_weaklistoffset = offsetof(LoopCore, weakreflist);
  return t;
}();

bool ready_types(PyObject* module) {
  str_context = PyUnicode_InternFromString("context");
  if (str_context == nullptr) return false;
  for (PyTypeObject* t : {&HandleType, &TimerHandleType, &LoopCoreType})
    if (PyType_Ready(t) < 0) return false;
  if (PyModule_AddObjectRef(module, "Handle", reinterpret_cast<PyObject*>(&HandleType)) < 0 ||
      PyModule_AddObjectRef(module, "TimerHandle", reinterpret_cast<PyObject*>(&TimerHandleType)) < 0 ||
      PyModule_AddObjectRef(module, "LoopCore", reinterpret_cast<PyObject*>(&LoopCoreType)) < 0)
    return false;
  return true;
}

}  // namespace uvpy::py
