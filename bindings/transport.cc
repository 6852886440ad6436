// transport.cc — TransportCore, the native base of uvpy's TCPTransport:
// asyncio's stream-transport semantics over loop::Stream.
//
// TransportCore is a heap type created at import with asyncio.Transport as
// its base, so isinstance(t, asyncio.Transport) holds. The instance layout
// is [PyObject_HEAD][BaseTransport's `_extra` slot][the fields below]; the
// offsets are checked against asyncio's classes at import. uvpy/_tcp.py
// subclasses it with the cold parts: construction, repr, __del__ and
// _fatal_error (logging and the exception handler).
//
// Rules (those of asyncio's selector transport):
//  1. connection_lost() reaches the protocol exactly once: scheduled by
//     close() (empty queue) or _force_close(), or called directly when the
//     queue drains after close(). The `lost` flag guards it.
//  2. conn_lost counts the writes attempted after the connection was lost;
//     they are dropped, and from the 5th on each logs a warning.
//  3. Reads reach the protocol straight from the stream callback:
//     data_received / buffer_updated are vectorcalled, no wrapper between.
//     They run in a copy of the context current when the transport was
//     made (asyncio gets the same from its call_soon'd reader handle).
//  4. An exception from a protocol callback: SystemExit/KeyboardInterrupt
//     abort the loop iteration (the stream callback returns -1); any other
//     goes to self._fatal_error(exc, message), which reports it and
//     force-closes the transport.
//  5. After connection_lost the transport holds no loop, protocol, socket
//     or server: the stream is closed (its watchers removed) before the
//     socket is.
#include <cerrno>
#include <cstring>
#include <memory>

#include "py.h"
#include "stream.h"
#include "structmember.h"

namespace uvpy::py {
namespace {

constexpr size_t kReadSize = 256 * 1024;  // asyncio's max_size per recv()
constexpr Py_ssize_t kLogThreshold = 5;   // asyncio.constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES

struct Transport;

// The stream's view of its transport.
class Owner final : public loop::StreamOwner {
 public:
  explicit Owner(Transport* t) : t_(t) {}
  void retain() override;
  void release() override;
  int read_buffer(char** buf, size_t* len) override;
  int on_read(ssize_t n) override;
  int on_write_error(int err) override;
  int on_pause_writing() override;
  int on_resume_writing() override;
  int on_drain() override;

 private:
  Transport* t_;
};

struct Transport {
  PyObject_HEAD
  PyObject* extra;  // BaseTransport's `_extra` slot: keep first
  LoopCore* loop;
  PyObject* protocol;
  PyObject* sock;
  PyObject* server;
  PyObject* context;
  // The protocol's hot methods, looked up once by set_protocol().
  PyObject* data_received;
  PyObject* get_buffer;
  PyObject* buffer_updated;
  Owner* owner;
  loop::Stream* stream;
  Py_buffer view;  // BufferedProtocol: get_buffer()'s buffer during a recv
  Py_ssize_t conn_lost;
  bool have_view;
  bool buffered;
  bool closing;
  bool paused;  // pause_reading() in effect
  bool eof;     // write_eof() called
  bool protocol_connected;
  bool lost;    // connection_lost() called
};

PyTypeObject* transport_type;
PyObject* buffered_protocol_type;  // asyncio.BufferedProtocol
PyObject* logger;                  // asyncio.log.logger
PyObject* minus_one;
PyObject* str_fatal_error;
PyObject* str_eof_received;
PyObject* str_connection_lost;
PyObject* str_call_connection_lost;
PyObject* str_pause_writing;
PyObject* str_resume_writing;
PyObject* str_close;
PyObject* str_detach;

char* shared_read_buffer() {
  static thread_local std::unique_ptr<char[]> buf;
  if (!buf) buf.reset(new char[kReadSize]);
  return buf.get();
}

inline PyObject* as_obj(Transport* t) { return reinterpret_cast<PyObject*>(t); }

bool fatal_exception() {
  return PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt);
}

PyObject* fetch_exception() {
  PyObject *type, *exc, *tb;
  PyErr_Fetch(&type, &exc, &tb);
  PyErr_NormalizeException(&type, &exc, &tb);
  if (tb) PyException_SetTraceback(exc, tb);
  Py_XDECREF(type);
  Py_XDECREF(tb);
  return exc;
}

PyObject* errno_exception(int err) {
  return PyObject_CallFunction(PyExc_OSError, "is", err, strerror(err));
}

// An error on a path with nowhere to raise to: SystemExit/KeyboardInterrupt
// abort the drain (-1), anything else is unraisable.
int swallow(PyObject* where) {
  if (fatal_exception()) return -1;
  PyErr_WriteUnraisable(where);
  return 0;
}

// self._fatal_error(exc, message); see rule 4.
int fatal(Transport* t, PyObject* exc, const char* message) {
  PyObject* msg = PyUnicode_FromString(message);
  PyObject* r = msg ? PyObject_CallMethodObjArgs(as_obj(t), str_fatal_error, exc, msg, nullptr)
                    : nullptr;
  Py_XDECREF(msg);
  if (r == nullptr) return swallow(as_obj(t));
  Py_DECREF(r);
  return 0;
}

// The pending exception came from a protocol callback.
int fail(Transport* t, const char* message) {
  if (fatal_exception()) return -1;
  PyObject* exc = fetch_exception();
  int rc = fatal(t, exc, message);
  Py_DECREF(exc);
  return rc;
}

int fail_errno(Transport* t, int err, const char* message) {
  PyObject* exc = errno_exception(err);
  if (exc == nullptr) return swallow(as_obj(t));
  int rc = fatal(t, exc, message);
  Py_DECREF(exc);
  return rc;
}

// loop.call_exception_handler({message, exception, transport, protocol})
// for the pending exception, as asyncio's flow-control callbacks report.
int report(Transport* t, const char* message) {
  if (fatal_exception()) return -1;
  PyObject* exc = fetch_exception();
  PyObject* ctx = Py_BuildValue("{s:s,s:O,s:O,s:O}", "message", message, "exception", exc,
                                "transport", as_obj(t), "protocol",
                                t->protocol ? t->protocol : Py_None);
  Py_DECREF(exc);
  if (ctx == nullptr) return swallow(as_obj(t));
  PyObject* r = t->loop ? PyObject_CallMethod(reinterpret_cast<PyObject*>(t->loop),
                                              "call_exception_handler", "O", ctx)
                        : Py_NewRef(Py_None);
  Py_DECREF(ctx);
  if (r == nullptr) return swallow(as_obj(t));
  Py_DECREF(r);
  return 0;
}

// call_soon(self._call_connection_lost, exc) on the transport's loop.
bool schedule_connection_lost(Transport* t, PyObject* exc) {
  if (t->loop == nullptr || t->loop->reactor->closed()) {
    PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
    return false;
  }
  PyObject* cb = PyObject_GetAttr(as_obj(t), str_call_connection_lost);
  if (cb == nullptr) return false;
  PyObject* args = PyTuple_Pack(1, exc);
  Handle* h = args ? new_handle(&HandleType, cb, args, t->loop, nullptr) : nullptr;
  Py_DECREF(cb);
  Py_XDECREF(args);
  if (h == nullptr) return false;
  t->loop->reactor->call_soon(as_callback(h));
  Py_DECREF(h);
  return true;
}

void release_view(Transport* t) {
  if (!t->have_view) return;
  t->have_view = false;
  PyBuffer_Release(&t->view);
}

bool check_ready(Transport* t) {
  if (t->stream != nullptr) return true;
  PyErr_SetString(PyExc_RuntimeError, "transport is not initialized");
  return false;
}

// Raises for a -errno from the stream (the loop's own message when closed).
PyObject* raise_errno(int rc) {
  if (rc == -ESHUTDOWN) {
    PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
    return nullptr;
  }
  errno = -rc;
  return PyErr_SetFromErrno(PyExc_OSError);
}

// --- core operations (asyncio's _SelectorSocketTransport) ---------------------

bool force_close(Transport* t, PyObject* exc) {
  if (t->conn_lost) return true;
  t->stream->discard_writes();
  if (!t->closing) {
    t->closing = true;
    t->stream->stop_reading();
  }
  ++t->conn_lost;
  return schedule_connection_lost(t, exc);
}

bool close_transport(Transport* t) {
  if (t->closing) return true;
  t->closing = true;
  t->stream->stop_reading();
  if (t->stream->queued() > 0) return true;  // connection_lost once drained
  ++t->conn_lost;
  return schedule_connection_lost(t, Py_None);
}

// Returns 0, or -1 with the exception from connection_lost() (or from
// closing the socket) pending.
int connection_lost(Transport* t, PyObject* exc) {
  if (t->lost) return 0;
  t->lost = true;
  if (t->conn_lost == 0) t->conn_lost = 1;  // later writes are dropped
  int rc = 0;
  PyObject* protocol = t->protocol;
  t->protocol = nullptr;
  if (protocol && t->protocol_connected) {
    PyObject* r = PyObject_CallMethodOneArg(protocol, str_connection_lost, exc);
    if (r == nullptr) rc = -1;
    Py_XDECREF(r);
  }
  PyObject *etype = nullptr, *evalue = nullptr, *etb = nullptr;
  if (rc < 0) PyErr_Fetch(&etype, &evalue, &etb);
  if (t->stream) t->stream->close();
  release_view(t);
  if (t->sock) {
    PyObject* r = PyObject_CallMethodNoArgs(t->sock, str_close);
    if (r == nullptr) PyErr_WriteUnraisable(t->sock);
    Py_XDECREF(r);
  }
  Py_CLEAR(t->sock);
  Py_CLEAR(t->data_received);
  Py_CLEAR(t->get_buffer);
  Py_CLEAR(t->buffer_updated);
  Py_CLEAR(t->loop);
  if (PyObject* server = t->server) {
    t->server = nullptr;
    PyObject* r = PyObject_CallMethodNoArgs(server, str_detach);
    if (r == nullptr) PyErr_WriteUnraisable(server);
    Py_XDECREF(r);
    Py_DECREF(server);
  }
  Py_XDECREF(protocol);
  if (rc < 0) PyErr_Restore(etype, evalue, etb);
  return rc;
}

bool set_protocol(Transport* t, PyObject* protocol) {
  int buffered = PyObject_IsInstance(protocol, buffered_protocol_type);
  if (buffered < 0) return false;
  Py_INCREF(protocol);
  Py_XSETREF(t->protocol, protocol);
  t->buffered = buffered;
  t->protocol_connected = true;
  // Missing methods fail when first needed, as in asyncio.
  auto lookup = [protocol](const char* name) {
    PyObject* m = PyObject_GetAttrString(protocol, name);
    if (m == nullptr) PyErr_Clear();
    return m;
  };
  Py_XSETREF(t->data_received, buffered ? nullptr : lookup("data_received"));
  Py_XSETREF(t->get_buffer, buffered ? lookup("get_buffer") : nullptr);
  Py_XSETREF(t->buffer_updated, buffered ? lookup("buffer_updated") : nullptr);
  return true;
}

// Calls a cached protocol method (re-looked up when missing, so the
// AttributeError is the protocol's own).
PyObject* call_protocol(Transport* t, PyObject* method, const char* name, PyObject* arg) {
  if (method == nullptr) {
    if (t->protocol == nullptr) Py_RETURN_NONE;
    method = PyObject_GetAttrString(t->protocol, name);
    if (method == nullptr) return nullptr;
  } else {
    Py_INCREF(method);  // the callback may replace the protocol
  }
  PyObject* r = PyObject_Vectorcall(method, &arg, 1, nullptr);
  Py_DECREF(method);
  return r;
}

// Runs fn inside the transport's context (rule 3).
template <class F>
int in_context(Transport* t, F fn) {
  PyObject* ctx = t->context;
  if (ctx == nullptr) return fn();
  Py_INCREF(ctx);
  if (PyContext_Enter(ctx) < 0) {
    Py_DECREF(ctx);
    return swallow(as_obj(t));
  }
  int rc = fn();
  PyContext_Exit(ctx);
  Py_DECREF(ctx);
  return rc;
}

int eof_received(Transport* t) {
  if (t->protocol == nullptr) return 0;
  PyObject* r = PyObject_CallMethodNoArgs(t->protocol, str_eof_received);
  if (r == nullptr) return fail(t, "Fatal error: protocol.eof_received() call failed.");
  int keep_open = PyObject_IsTrue(r);
  Py_DECREF(r);
  if (keep_open < 0) return fail(t, "Fatal error: protocol.eof_received() call failed.");
  // The stream stopped reading at EOF; keeping the connection open only
  // means the protocol may still write.
  if (keep_open) return 0;
  if (!close_transport(t)) return swallow(as_obj(t));
  return 0;
}

}  // namespace

// --- the stream's callbacks ------------------------------------------------------

void Owner::retain() { Py_INCREF(as_obj(t_)); }
void Owner::release() { Py_DECREF(as_obj(t_)); }

int Owner::read_buffer(char** buf, size_t* len) {
  Transport* t = t_;
  if (t->conn_lost || t->protocol == nullptr) return 0;
  if (!t->buffered) {
    *buf = shared_read_buffer();
    *len = kReadSize;
    return 1;
  }
  return in_context(t, [&] {
    PyObject* b = call_protocol(t, t->get_buffer, "get_buffer", minus_one);
    if (b == nullptr) return fail(t, "Fatal error: protocol.get_buffer() call failed.");
    int rc = PyObject_GetBuffer(b, &t->view, PyBUF_WRITABLE);
    Py_DECREF(b);
    if (rc < 0) return fail(t, "Fatal read error on socket transport");
    if (t->view.len == 0) {
      PyBuffer_Release(&t->view);
      PyErr_SetString(PyExc_RuntimeError, "get_buffer() returned an empty buffer");
      return fail(t, "Fatal error: protocol.get_buffer() call failed.");
    }
    t->have_view = true;
    *buf = static_cast<char*>(t->view.buf);
    *len = static_cast<size_t>(t->view.len);
    return 1;
  });
}

int Owner::on_read(ssize_t n) {
  Transport* t = t_;
  return in_context(t, [&] {
    if (t->buffered) release_view(t);
    if (n == -EAGAIN) return 0;
    if (n < 0) return fail_errno(t, static_cast<int>(-n), "Fatal read error on socket transport");
    if (n == 0) return eof_received(t);
    PyObject* r;
    if (t->buffered) {
      PyObject* count = PyLong_FromSsize_t(n);
      if (count == nullptr) return swallow(as_obj(t));
      r = call_protocol(t, t->buffer_updated, "buffer_updated", count);
      Py_DECREF(count);
      if (r == nullptr) return fail(t, "Fatal error: protocol.buffer_updated() call failed.");
    } else {
      PyObject* data = PyBytes_FromStringAndSize(shared_read_buffer(), n);
      if (data == nullptr) return swallow(as_obj(t));
      r = call_protocol(t, t->data_received, "data_received", data);
      Py_DECREF(data);
      if (r == nullptr) return fail(t, "Fatal error: protocol.data_received() call failed.");
    }
    Py_DECREF(r);
    return 0;
  });
}

int Owner::on_write_error(int err) {
  return in_context(t_, [&] { return fail_errno(t_, err, "Fatal write error on socket transport"); });
}

int Owner::on_pause_writing() {
  if (t_->protocol == nullptr) return 0;
  PyObject* r = PyObject_CallMethodNoArgs(t_->protocol, str_pause_writing);
  if (r == nullptr) return report(t_, "protocol.pause_writing() failed");
  Py_DECREF(r);
  return 0;
}

int Owner::on_resume_writing() {
  return in_context(t_, [&] {
    if (t_->protocol == nullptr) return 0;
    PyObject* r = PyObject_CallMethodNoArgs(t_->protocol, str_resume_writing);
    if (r == nullptr) return report(t_, "protocol.resume_writing() failed");
    Py_DECREF(r);
    return 0;
  });
}

int Owner::on_drain() {
  if (!t_->closing) return 0;
  return in_context(t_, [&] {
    if (connection_lost(t_, Py_None) < 0)
      return report(t_, "Fatal error: protocol.connection_lost() call failed.");
    return 0;
  });
}

namespace {

// --- Python-visible methods ---------------------------------------------------------

Transport* T(PyObject* self) { return reinterpret_cast<Transport*>(self); }

PyObject* Transport_write(PyObject* self, PyObject* data) {
  Transport* t = T(self);
  if (!check_ready(t)) return nullptr;
  if (!PyBytes_Check(data) && !PyByteArray_Check(data) && !PyMemoryView_Check(data)) {
    PyObject* name = PyType_GetName(Py_TYPE(data));
    if (name) {
      PyErr_Format(PyExc_TypeError, "data argument must be a bytes-like object, not %R", name);
      Py_DECREF(name);
    }
    return nullptr;
  }
  if (t->eof) {
    PyErr_SetString(PyExc_RuntimeError, "Cannot call write() after write_eof()");
    return nullptr;
  }
  Py_buffer view;
  if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return nullptr;
  if (view.len == 0) {
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
  }
  if (t->conn_lost) {
    PyBuffer_Release(&view);
    if (t->conn_lost >= kLogThreshold) {
      PyObject* r = PyObject_CallMethod(logger, "warning", "s", "socket.send() raised exception.");
      if (r == nullptr) return nullptr;
      Py_DECREF(r);
    }
    ++t->conn_lost;
    Py_RETURN_NONE;
  }
  int rc = t->stream->write(view.buf, static_cast<size_t>(view.len));
  PyBuffer_Release(&view);
  if (PyErr_Occurred()) return nullptr;  // pause_writing() raised SystemExit
  if (rc < 0 && fail_errno(t, -rc, "Fatal write error on socket transport") < 0) return nullptr;
  Py_RETURN_NONE;
}

PyObject* Transport_writelines(PyObject* self, PyObject* list) {
  Transport* t = T(self);
  if (!check_ready(t)) return nullptr;
  PyObject* seq = PySequence_Fast(list, "can only join an iterable");
  if (seq == nullptr) return nullptr;
  Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  std::unique_ptr<Py_buffer[]> views(new Py_buffer[n > 0 ? n : 1]);
  std::unique_ptr<struct iovec[]> iov(new struct iovec[n > 0 ? n : 1]);
  Py_ssize_t got = 0;
  size_t total = 0;
  PyObject* result = nullptr;
  for (; got < n; ++got) {
    PyObject* item = PySequence_Fast_GET_ITEM(seq, got);
    if (PyObject_GetBuffer(item, &views[got], PyBUF_SIMPLE) < 0) {
      PyErr_Format(PyExc_TypeError, "sequence item %zd: expected a bytes-like object, %.80s found",
                   got, Py_TYPE(item)->tp_name);
      goto done;
    }
    iov[got] = {views[got].buf, static_cast<size_t>(views[got].len)};
    total += static_cast<size_t>(views[got].len);
  }
  if (t->eof) {
    PyErr_SetString(PyExc_RuntimeError, "Cannot call write() after write_eof()");
    goto done;
  }
  if (total == 0) {
    result = Py_NewRef(Py_None);
    goto done;
  }
  if (t->conn_lost) {
    if (t->conn_lost >= kLogThreshold) {
      PyObject* r = PyObject_CallMethod(logger, "warning", "s", "socket.send() raised exception.");
      if (r == nullptr) goto done;
      Py_DECREF(r);
    }
    ++t->conn_lost;
    result = Py_NewRef(Py_None);
    goto done;
  }
  {
    int rc = t->stream->writev(iov.get(), static_cast<int>(n));
    if (PyErr_Occurred()) goto done;
    if (rc < 0 && fail_errno(t, -rc, "Fatal write error on socket transport") < 0) goto done;
    result = Py_NewRef(Py_None);
  }
done:
  for (Py_ssize_t i = 0; i < got; ++i) PyBuffer_Release(&views[i]);
  Py_DECREF(seq);
  return result;
}

PyObject* Transport_write_eof(PyObject* self, PyObject*) {
  Transport* t = T(self);
  if (!check_ready(t)) return nullptr;
  if (t->closing || t->eof) Py_RETURN_NONE;
  t->eof = true;
  int rc = t->stream->shutdown_write();
  if (rc < 0) return raise_errno(rc);
  Py_RETURN_NONE;
}

PyObject* Transport_can_write_eof(PyObject*, PyObject*) { Py_RETURN_TRUE; }

PyObject* Transport_close(PyObject* self, PyObject*) {
  Transport* t = T(self);
  if (!check_ready(t)) return nullptr;
  if (!close_transport(t)) return nullptr;
  Py_RETURN_NONE;
}

PyObject* Transport_abort(PyObject* self, PyObject*) {
  Transport* t = T(self);
  if (!check_ready(t)) return nullptr;
  if (!force_close(t, Py_None)) return nullptr;
  Py_RETURN_NONE;
}

PyObject* Transport_force_close(PyObject* self, PyObject* exc) {
  Transport* t = T(self);
  if (!check_ready(t)) return nullptr;
  if (!force_close(t, exc)) return nullptr;
  Py_RETURN_NONE;
}

PyObject* Transport_call_connection_lost(PyObject* self, PyObject* exc) {
  Transport* t = T(self);
  if (!check_ready(t)) return nullptr;
  if (connection_lost(t, exc) < 0) return nullptr;
  Py_RETURN_NONE;
}

PyObject* Transport_is_closing(PyObject* self, PyObject*) { return PyBool_FromLong(T(self)->closing); }

bool is_reading(Transport* t) { return !t->closing && !t->paused; }

PyObject* Transport_is_reading(PyObject* self, PyObject*) { return PyBool_FromLong(is_reading(T(self))); }

PyObject* Transport_pause_reading(PyObject* self, PyObject*) {
  Transport* t = T(self);
  if (!check_ready(t)) return nullptr;
  if (!is_reading(t)) Py_RETURN_NONE;
  t->paused = true;
  t->stream->stop_reading();
  Py_RETURN_NONE;
}

PyObject* Transport_start_reading(PyObject* self, PyObject*) {
  Transport* t = T(self);
  if (!check_ready(t)) return nullptr;
  if (!is_reading(t)) Py_RETURN_NONE;
  int rc = t->stream->start_reading();
  if (rc < 0) return raise_errno(rc);
  Py_RETURN_NONE;
}

PyObject* Transport_resume_reading(PyObject* self, PyObject*) {
  Transport* t = T(self);
  if (!check_ready(t)) return nullptr;
  if (t->closing || !t->paused) Py_RETURN_NONE;
  t->paused = false;
  return Transport_start_reading(self, nullptr);
}

PyObject* Transport_set_write_buffer_limits(PyObject* self, PyObject* args, PyObject* kwargs) {
  static const char* kw[] = {"high", "low", nullptr};
  PyObject *high_o = Py_None, *low_o = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|OO:set_write_buffer_limits",
                                   const_cast<char**>(kw), &high_o, &low_o))
    return nullptr;
  Transport* t = T(self);
  if (!check_ready(t)) return nullptr;
  long long high = 0, low = 0;
  if (low_o != Py_None && (low = PyLong_AsLongLong(low_o)) == -1 && PyErr_Occurred()) return nullptr;
  if (high_o != Py_None) {
    if ((high = PyLong_AsLongLong(high_o)) == -1 && PyErr_Occurred()) return nullptr;
  } else {
    high = low_o == Py_None ? 64 * 1024 : 4 * low;
  }
  if (low_o == Py_None) low = high >= 0 ? high / 4 : -((-high + 3) / 4);  // Python's //
  if (!(high >= low && low >= 0)) {
    PyErr_Format(PyExc_ValueError, "high (%lld) must be >= low (%lld) must be >= 0", high, low);
    return nullptr;
  }
  t->stream->set_limits(static_cast<size_t>(high), static_cast<size_t>(low));
  if (PyErr_Occurred()) return nullptr;
  Py_RETURN_NONE;
}

PyObject* Transport_get_write_buffer_limits(PyObject* self, PyObject*) {
  Transport* t = T(self);
  if (!check_ready(t)) return nullptr;
  return Py_BuildValue("(nn)", static_cast<Py_ssize_t>(t->stream->low()),
                       static_cast<Py_ssize_t>(t->stream->high()));
}

PyObject* Transport_get_write_buffer_size(PyObject* self, PyObject*) {
  Transport* t = T(self);
  return PyLong_FromSize_t(t->stream ? t->stream->queued() : 0);
}

PyObject* Transport_set_protocol(PyObject* self, PyObject* protocol) {
  if (!set_protocol(T(self), protocol)) return nullptr;
  Py_RETURN_NONE;
}

PyObject* Transport_get_protocol(PyObject* self, PyObject*) {
  PyObject* p = T(self)->protocol;
  return Py_NewRef(p ? p : Py_None);
}

// TransportCore.__init__(loop, sock, protocol, extra=None, server=None)
int Transport_init(PyObject* self, PyObject* args, PyObject* kwargs) {
  static const char* kw[] = {"loop", "sock", "protocol", "extra", "server", nullptr};
  PyObject *loop, *sock, *protocol, *extra = Py_None, *server = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|OO:TransportCore", const_cast<char**>(kw),
                                   &loop, &sock, &protocol, &extra, &server))
    return -1;
  Transport* t = T(self);
  if (t->stream != nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "transport is already initialized");
    return -1;
  }
  if (!PyObject_TypeCheck(loop, &LoopCoreType)) {
    PyErr_SetString(PyExc_TypeError, "loop must be a uvpy loop");
    return -1;
  }
  PyObject* fileno = PyObject_CallMethod(sock, "fileno", nullptr);
  if (fileno == nullptr) return -1;
  long fd = PyLong_AsLong(fileno);
  Py_DECREF(fileno);
  if (fd == -1 && PyErr_Occurred()) return -1;
  if (fd < 0 || fd > INT32_MAX) {
    PyErr_SetString(PyExc_ValueError, "the socket is closed");
    return -1;
  }
  PyObject* extra_dict = extra == Py_None ? PyDict_New() : Py_NewRef(extra);
  if (extra_dict == nullptr) return -1;
  Py_XSETREF(t->extra, extra_dict);
  PyObject* ctx = PyContext_CopyCurrent();
  if (ctx == nullptr) return -1;
  Py_XSETREF(t->context, ctx);
  if (!set_protocol(t, protocol)) return -1;
  t->loop = reinterpret_cast<LoopCore*>(Py_NewRef(loop));
  t->sock = Py_NewRef(sock);
  t->server = server == Py_None ? nullptr : Py_NewRef(server);
  t->owner = new Owner(t);
  t->stream = new loop::Stream(t->loop->reactor, static_cast<int>(fd), t->owner);
  return 0;
}

// --- attributes the Python subclass and asyncio's helpers read -------------------

PyObject* get_obj(PyObject* o) { return Py_NewRef(o ? o : Py_None); }
PyObject* Transport_get_loop(PyObject* self, void*) {
  return get_obj(reinterpret_cast<PyObject*>(T(self)->loop));
}
PyObject* Transport_get_sock(PyObject* self, void*) { return get_obj(T(self)->sock); }
PyObject* Transport_get_server(PyObject* self, void*) { return get_obj(T(self)->server); }
PyObject* Transport_get_protocol_attr(PyObject* self, void*) { return get_obj(T(self)->protocol); }
PyObject* Transport_get_sock_fd(PyObject* self, void*) {
  Transport* t = T(self);
  return PyLong_FromLong(t->stream ? t->stream->fd() : -1);
}
PyObject* Transport_get_closing(PyObject* self, void*) { return PyBool_FromLong(T(self)->closing); }
PyObject* Transport_get_paused(PyObject* self, void*) { return PyBool_FromLong(T(self)->paused); }
PyObject* Transport_get_eof(PyObject* self, void*) { return PyBool_FromLong(T(self)->eof); }
PyObject* Transport_get_conn_lost(PyObject* self, void*) { return PyLong_FromSsize_t(T(self)->conn_lost); }
PyObject* Transport_get_protocol_paused(PyObject* self, void*) {
  Transport* t = T(self);
  return PyBool_FromLong(t->stream && t->stream->writing_paused());
}
PyObject* Transport_get_read_active(PyObject* self, void*) {
  Transport* t = T(self);
  return PyBool_FromLong(t->stream && !t->stream->closed() && t->stream->reading());
}
PyObject* Transport_get_write_active(PyObject* self, void*) {
  Transport* t = T(self);
  return PyBool_FromLong(t->stream && !t->stream->closed() && t->stream->queued() > 0);
}

// --- type plumbing ------------------------------------------------------------------

PyObject* Transport_new(PyTypeObject* type, PyObject*, PyObject*) {
  PyObject* self = type->tp_alloc(type, 0);  // zeroed
  return self;
}

int Transport_traverse(PyObject* self, visitproc visit, void* arg) {
  Transport* t = T(self);
  Py_VISIT(Py_TYPE(self));
  Py_VISIT(t->extra);
  Py_VISIT(reinterpret_cast<PyObject*>(t->loop));
  Py_VISIT(t->protocol);
  Py_VISIT(t->sock);
  Py_VISIT(t->server);
  Py_VISIT(t->context);
  Py_VISIT(t->data_received);
  Py_VISIT(t->get_buffer);
  Py_VISIT(t->buffer_updated);
  if (t->have_view) Py_VISIT(t->view.obj);
  return 0;
}

int Transport_clear(PyObject* self) {
  Transport* t = T(self);
  release_view(t);
  Py_CLEAR(t->extra);
  Py_CLEAR(t->protocol);
  Py_CLEAR(t->server);
  Py_CLEAR(t->context);
  Py_CLEAR(t->data_received);
  Py_CLEAR(t->get_buffer);
  Py_CLEAR(t->buffer_updated);
  // The loop and socket stay until dealloc: the stream still names the
  // loop's reactor and the socket's fd.
  return 0;
}

void Transport_dealloc(PyObject* self) {
  PyTypeObject* tp = Py_TYPE(self);
  PyObject_GC_UnTrack(self);
  Transport* t = T(self);
  Transport_clear(self);
  // No watcher is left: each would hold a reference to us (a closed
  // reactor dropped its own), so the stream goes without touching it.
  delete t->stream;
  delete t->owner;
  Py_CLEAR(t->sock);
  Py_CLEAR(t->loop);
  tp->tp_free(self);
  Py_DECREF(tp);
}

#define METH(name, fn, flags, doc) {name, reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(fn)), flags, doc}

PyMethodDef Transport_methods[] = {
    METH("write", Transport_write, METH_O, "Write bytes: sent now if possible, else buffered."),
    METH("writelines", Transport_writelines, METH_O, "Write a sequence of bytes-like objects."),
    METH("write_eof", Transport_write_eof, METH_NOARGS, "Close the write end once the buffer drains."),
    METH("can_write_eof", Transport_can_write_eof, METH_NOARGS, "True: TCP supports half-close."),
    METH("close", Transport_close, METH_NOARGS, "Close after the buffer drains; connection_lost(None) follows."),
    METH("abort", Transport_abort, METH_NOARGS, "Close at once, dropping buffered data."),
    METH("is_closing", Transport_is_closing, METH_NOARGS, "True once close() or abort() was called."),
    METH("is_reading", Transport_is_reading, METH_NOARGS, "True unless paused or closing."),
    METH("pause_reading", Transport_pause_reading, METH_NOARGS, "Stop calling data_received()."),
    METH("resume_reading", Transport_resume_reading, METH_NOARGS, "Undo pause_reading()."),
    METH("set_write_buffer_limits", Transport_set_write_buffer_limits, METH_VARARGS | METH_KEYWORDS,
         "Set the high/low water marks for write flow control."),
    METH("get_write_buffer_limits", Transport_get_write_buffer_limits, METH_NOARGS, "(low, high)"),
    METH("get_write_buffer_size", Transport_get_write_buffer_size, METH_NOARGS, "Bytes buffered for writing."),
    METH("set_protocol", Transport_set_protocol, METH_O, "Switch to a new protocol."),
    METH("get_protocol", Transport_get_protocol, METH_NOARGS, "The current protocol."),
    METH("_start_reading", Transport_start_reading, METH_NOARGS, nullptr),
    METH("_force_close", Transport_force_close, METH_O, nullptr),
    METH("_call_connection_lost", Transport_call_connection_lost, METH_O, nullptr),
    {nullptr, nullptr, 0, nullptr},
};

PyGetSetDef Transport_getset[] = {
    {"_loop", Transport_get_loop, nullptr, nullptr, nullptr},
    {"_sock", Transport_get_sock, nullptr, nullptr, nullptr},
    {"_sock_fd", Transport_get_sock_fd, nullptr, nullptr, nullptr},
    {"_server", Transport_get_server, nullptr, nullptr, nullptr},
    {"_protocol", Transport_get_protocol_attr, nullptr, nullptr, nullptr},
    {"_closing", Transport_get_closing, nullptr, nullptr, nullptr},
    {"_paused", Transport_get_paused, nullptr, nullptr, nullptr},
    {"_eof", Transport_get_eof, nullptr, nullptr, nullptr},
    {"_conn_lost", Transport_get_conn_lost, nullptr, nullptr, nullptr},
    {"_protocol_paused", Transport_get_protocol_paused, nullptr, nullptr, nullptr},
    {"_read_active", Transport_get_read_active, nullptr, nullptr, nullptr},
    {"_write_active", Transport_get_write_active, nullptr, nullptr, nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

bool intern(PyObject** slot, const char* s) {
  *slot = PyUnicode_InternFromString(s);
  return *slot != nullptr;
}

}  // namespace

bool ready_transport(PyObject* module) {
  if (!intern(&str_fatal_error, "_fatal_error") || !intern(&str_eof_received, "eof_received") ||
      !intern(&str_connection_lost, "connection_lost") ||
      !intern(&str_call_connection_lost, "_call_connection_lost") ||
      !intern(&str_pause_writing, "pause_writing") ||
      !intern(&str_resume_writing, "resume_writing") || !intern(&str_close, "close") ||
      !intern(&str_detach, "_detach"))
    return false;
  minus_one = PyLong_FromLong(-1);
  PyObject* transports = PyImport_ImportModule("asyncio.transports");
  PyObject* protocols = PyImport_ImportModule("asyncio.protocols");
  PyObject* log = PyImport_ImportModule("asyncio.log");
  PyObject* base = transports ? PyObject_GetAttrString(transports, "Transport") : nullptr;
  PyObject* base_transport = transports ? PyObject_GetAttrString(transports, "BaseTransport") : nullptr;
  PyObject* extra = base_transport ? PyObject_GetAttrString(base_transport, "_extra") : nullptr;
  if (protocols) buffered_protocol_type = PyObject_GetAttrString(protocols, "BufferedProtocol");
  if (log) logger = PyObject_GetAttrString(log, "logger");
  bool ok = minus_one && base && extra && buffered_protocol_type && logger;
  // The layout rests on BaseTransport's one slot, `_extra`, right after the
  // object header, and on Transport adding nothing after it.
  if (ok && !(PyType_Check(base) &&
              reinterpret_cast<PyTypeObject*>(base)->tp_basicsize ==
                  static_cast<Py_ssize_t>(offsetof(Transport, loop)) &&
              Py_TYPE(extra) == &PyMemberDescr_Type &&
              reinterpret_cast<PyMemberDescrObject*>(extra)->d_member->offset ==
                  static_cast<Py_ssize_t>(offsetof(Transport, extra)))) {
    PyErr_SetString(PyExc_ImportError, "uvpy: unexpected layout of asyncio.Transport");
    ok = false;
  }
  if (ok) {
    static PyType_Slot slots[] = {
        {Py_tp_new, reinterpret_cast<void*>(Transport_new)},
        {Py_tp_init, reinterpret_cast<void*>(Transport_init)},
        {Py_tp_dealloc, reinterpret_cast<void*>(Transport_dealloc)},
        {Py_tp_traverse, reinterpret_cast<void*>(Transport_traverse)},
        {Py_tp_clear, reinterpret_cast<void*>(Transport_clear)},
        {Py_tp_methods, Transport_methods},
        {Py_tp_getset, Transport_getset},
        {Py_tp_doc, const_cast<char*>("Native core of uvpy's TCP transport (an asyncio.Transport).")},
        {0, nullptr},
    };
    static PyType_Spec spec{"uvpy._uvpy.TransportCore", static_cast<int>(sizeof(Transport)), 0,
                            Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, slots};
    PyObject* bases = PyTuple_Pack(1, base);
    transport_type = bases ? reinterpret_cast<PyTypeObject*>(
                                 PyType_FromModuleAndSpec(module, &spec, bases))
                           : nullptr;
    Py_XDECREF(bases);
    ok = transport_type != nullptr &&
         PyModule_AddObjectRef(module, "TransportCore", reinterpret_cast<PyObject*>(transport_type)) == 0;
  }
  Py_XDECREF(transports);
  Py_XDECREF(protocols);
  Py_XDECREF(log);
  Py_XDECREF(base);
  Py_XDECREF(base_transport);
  Py_XDECREF(extra);
  return ok;
}

}  // namespace uvpy::py
