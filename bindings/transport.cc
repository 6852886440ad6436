// transport.cc — TransportCore, the native base of uvpy's TCPTransport:
// asyncio's stream-transport semantics over loop::Stream. The Python type
// itself (methods, attributes, creation) is in transport_type.cc.
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
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>

#include "transport.h"

namespace uvpy::py::transport {
namespace {

constexpr size_t kReadSize = 256 * 1024;  // asyncio's max_size per recv()
constexpr Py_ssize_t kLogThreshold = 5;   // asyncio.constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES

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
PyObject* str_socket;
PyObject* str_materialize_extra;
PyObject* str_sockname;
PyObject* transport_socket_type;  // asyncio.trsock.TransportSocket

char* shared_read_buffer() {
  static thread_local std::unique_ptr<char[]> buf;
  if (!buf) buf.reset(new char[kReadSize]);
  return buf.get();
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

// loop.call_exception_handler({message, exception, transport, protocol})
// for the pending exception, as asyncio's flow-control callbacks report.
// `loop` is passed in: connection_lost() has already let go of t->loop.
int report(Transport* t, LoopCore* loop, const char* message) {
  if (fatal_exception()) return -1;
  PyObject* exc = fetch_exception();
  PyObject* ctx = Py_BuildValue("{s:s,s:O,s:O,s:O}", "message", message, "exception", exc,
                                "transport", as_obj(t), "protocol",
                                t->protocol ? t->protocol : Py_None);
  Py_DECREF(exc);
  if (ctx == nullptr) return swallow(as_obj(t));
  PyObject* r = loop ? PyObject_CallMethod(reinterpret_cast<PyObject*>(loop),
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

// Calls a cached protocol method (re-looked up when missing, so the
// AttributeError is the protocol's own).
PyObject* call_protocol(Transport* t, PyObject* method, uint8_t bit, const char* name, PyObject* arg) {
  PyObject* self = nullptr;  // set when `method` is the class's function (unbound)
  if (method == nullptr) {
    if (t->protocol == nullptr) Py_RETURN_NONE;
    method = PyObject_GetAttrString(t->protocol, name);
    if (method == nullptr) return nullptr;
  } else {
    Py_INCREF(method);  // the callback may replace the protocol
    if (t->unbound & bit) self = Py_NewRef(t->protocol);
  }
  PyObject* args[3] = {nullptr, self, arg};
  PyObject* r = self ? PyObject_Vectorcall(method, args + 1, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr)
                     : PyObject_Vectorcall(method, args + 2, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr);
  Py_XDECREF(self);
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

}  // namespace

// --- core operations (asyncio's _SelectorSocketTransport) ---------------------

int fail_errno(Transport* t, int err, const char* message) {
  PyObject* exc = os_error(err);
  if (exc == nullptr) return swallow(as_obj(t));
  int rc = fatal(t, exc, message);
  Py_DECREF(exc);
  return rc;
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
  return raise_os_error(-rc);
}

void settle_empty_waiter(Transport* t, PyObject* exc) {
  PyObject* fut = t->empty_waiter;
  if (fut == nullptr) return;
  Py_INCREF(fut);
  PyObject *etype, *evalue, *etb;  // a pending error survives
  PyErr_Fetch(&etype, &evalue, &etb);
  PyObject* done = PyObject_CallMethod(fut, "done", nullptr);
  int is_done = done ? PyObject_IsTrue(done) : -1;
  Py_XDECREF(done);
  PyObject* r = nullptr;
  if (is_done == 0) {
    r = exc ? PyObject_CallMethod(fut, "set_exception", "O", exc)
            : PyObject_CallMethod(fut, "set_result", "O", Py_None);
  } else if (is_done == 1) {
    r = Py_NewRef(Py_None);
  }
  if (r == nullptr) PyErr_WriteUnraisable(fut);
  Py_XDECREF(r);
  Py_DECREF(fut);
  PyErr_Restore(etype, evalue, etb);
}

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

// An accepted transport's lazy extras, kept before its socket closes (see
// Transport::accepted): what _materialize_extra does, without a Python
// frame or (when the listener's address is the connection's) a syscall.
// Errors are unraisable: the connection goes either way.
static void keep_accepted_extra(Transport* t) {
  PyObject* extra = ensure_extra(t);
  int has = extra && PyDict_Check(extra) ? PyDict_Contains(extra, str_sockname) : -1;
  if (has == 0) {
    PyObject* name = Py_XNewRef(t->sockname);
    if (name == nullptr) {
      sockaddr_storage ss{};
      socklen_t len = sizeof ss;
      name = ::getsockname(t->stream->fd(), reinterpret_cast<sockaddr*>(&ss), &len) == 0
                 ? peer_address(ss, len)
                 : Py_NewRef(Py_None);
    }
    has = name && PyDict_SetItem(extra, str_sockname, name) == 0 ? 1 : -1;
    Py_XDECREF(name);
  }
  if (has == 1 && t->sock && PyDict_Contains(extra, str_socket) == 0) {
    PyObject* ts = PyObject_CallOneArg(transport_socket_type, t->sock);
    has = ts && PyDict_SetItem(extra, str_socket, ts) == 0 ? 1 : -1;
    Py_XDECREF(ts);
  }
  if (has < 0 && PyErr_Occurred()) PyErr_WriteUnraisable(as_obj(t));
}

// Returns 0, or -1 with the exception from connection_lost() (or from
// closing the socket) pending.
int connection_lost(Transport* t, PyObject* exc) {
  if (t->lost) return 0;
  t->lost = true;
  if (t->conn_lost == 0) t->conn_lost = 1;  // later writes are dropped
  int rc = 0;
  // Still the transport's protocol during the call (get_protocol() works),
  // as in asyncio; let go of it afterwards.
  PyObject* protocol = Py_XNewRef(t->protocol);
  if (protocol && t->protocol_connected) {
    PyObject* r = PyObject_CallMethodOneArg(protocol, str_connection_lost, exc);
    if (r == nullptr) rc = -1;
    Py_XDECREF(r);
  }
  PyObject *etype = nullptr, *evalue = nullptr, *etb = nullptr;
  if (rc < 0) PyErr_Fetch(&etype, &evalue, &etb);
  if (t->empty_waiter) {
    // A sendfile waiting for the queue to drain, or sending natively,
    // learns that the connection went (asyncio's message whoever closed
    // it), before the socket closes: the native send stops watching the
    // fd while the fd is still this socket's.
    PyObject* lost = PyObject_CallFunction(PyExc_ConnectionError, "s", "Connection is closed by peer");
    if (lost == nullptr) {
      PyErr_WriteUnraisable(as_obj(t));
    } else {
      settle_empty_waiter(t, lost);
      Py_DECREF(lost);
    }
  }
  if (t->stream) t->stream->close();
  release_view(t);
  tls::detach(t);
  if (t->accepted && (t->sock || t->owns_fd)) {
    keep_accepted_extra(t);
    if (t->owns_fd) {
      ::close(t->stream->fd());  // no socket object was made: the fd is ours
      t->owns_fd = false;
    }
  }
  if (t->sock) {
    // The extras a subclass computes lazily (TCPTransport: socket,
    // sockname) must outlive the socket, as asyncio's eager ones do.
    if (!t->accepted &&
        (t->extra == nullptr || (PyDict_Check(t->extra) && PyDict_Contains(t->extra, str_socket) == 0))) {
      if (PyObject* m = PyObject_GetAttr(as_obj(t), str_materialize_extra)) {
        PyObject* r = PyObject_CallNoArgs(m);
        if (r == nullptr) PyErr_WriteUnraisable(m);
        Py_XDECREF(r);
        Py_DECREF(m);
      }
    }
    PyErr_Clear();  // a missing hook (AttributeError), or Contains failing
    PyObject* r = PyObject_CallMethodNoArgs(t->sock, str_close);
    if (r == nullptr) PyErr_WriteUnraisable(t->sock);
    Py_XDECREF(r);
  }
  Py_CLEAR(t->sock);
  Py_CLEAR(t->protocol);
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
  tls::detach(t);  // an SSLProtocol attaches itself again after this
  int buffered = PyObject_IsInstance(protocol, buffered_protocol_type);
  if (buffered < 0) return false;
  Py_INCREF(protocol);
  Py_XSETREF(t->protocol, protocol);
  t->buffered = buffered;
  t->protocol_connected = true;
  // Missing methods fail when first needed, as in asyncio. A method that
  // resolves to the class's own function bound to this protocol (no
  // instance attribute in the way) is kept unbound (see Transport).
  t->unbound = 0;
  auto lookup = [t, protocol](const char* name, uint8_t bit) -> PyObject* {
    PyObject* m = PyObject_GetAttrString(protocol, name);
    if (m == nullptr) {
      PyErr_Clear();
      return nullptr;
    }
    if (PyMethod_Check(m) && PyMethod_GET_SELF(m) == protocol && PyFunction_Check(PyMethod_GET_FUNCTION(m))) {
      PyObject* fn = Py_NewRef(PyMethod_GET_FUNCTION(m));
      Py_DECREF(m);
      t->unbound |= bit;
      return fn;
    }
    return m;
  };
  Py_XSETREF(t->data_received, buffered ? nullptr : lookup("data_received", kUnboundDataReceived));
  Py_XSETREF(t->get_buffer, buffered ? lookup("get_buffer", kUnboundGetBuffer) : nullptr);
  Py_XSETREF(t->buffer_updated, buffered ? lookup("buffer_updated", kUnboundBufferUpdated) : nullptr);
  return true;
}

bool is_reading(Transport* t) { return !t->closing && !t->paused; }

bool write_bytes(Transport* t, const void* data, size_t len) {
  if (t->eof) {
    PyErr_SetString(PyExc_RuntimeError, "Cannot call write() after write_eof()");
    return false;
  }
  if (t->empty_waiter) {
    PyErr_SetString(PyExc_RuntimeError, "unable to write; sendfile is in progress");
    return false;
  }
  if (len == 0) return true;
  if (t->conn_lost) return drop_write(t);
  int rc = t->stream->write(data, len);
  if (PyErr_Occurred()) return false;  // pause_writing() raised SystemExit
  return rc == 0 || fail_errno(t, -rc, "Fatal write error on socket transport") == 0;
}

bool drop_write(Transport* t) {
  if (t->conn_lost >= kLogThreshold) {
    PyObject* r = PyObject_CallMethod(logger, "warning", "s", "socket.send() raised exception.");
    if (r == nullptr) return false;
    Py_DECREF(r);
  }
  ++t->conn_lost;
  return true;
}

namespace {

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
  if (!t->buffered || t->tls) {  // a TLS link takes the records natively
    *buf = shared_read_buffer();
    *len = kReadSize;
    return 1;
  }
  return in_context(t, [&] {
    PyObject* b = call_protocol(t, t->get_buffer, kUnboundGetBuffer, "get_buffer", minus_one);
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
    if (t->tls) {
      if (tls::on_records(t, shared_read_buffer(), static_cast<size_t>(n)) == 0) return 0;
      return fail(t, "Fatal error: protocol.buffer_updated() call failed.");
    }
    PyObject* r;
    if (t->buffered) {
      PyObject* count = PyLong_FromSsize_t(n);
      if (count == nullptr) return swallow(as_obj(t));
      r = call_protocol(t, t->buffer_updated, kUnboundBufferUpdated, "buffer_updated", count);
      Py_DECREF(count);
      if (r == nullptr) return fail(t, "Fatal error: protocol.buffer_updated() call failed.");
    } else {
      PyObject* data = PyBytes_FromStringAndSize(shared_read_buffer(), n);
      if (data == nullptr) return swallow(as_obj(t));
      r = call_protocol(t, t->data_received, kUnboundDataReceived, "data_received", data);
      Py_DECREF(data);
      if (r == nullptr) return fail(t, "Fatal error: protocol.data_received() call failed.");
    }
    Py_DECREF(r);
    return 0;
  });
}

int Owner::on_write_error(int err) {
  return in_context(t_, [&] {
    PyObject* exc = os_error(err);
    if (exc == nullptr) return swallow(as_obj(t_));
    int rc = fatal(t_, exc, "Fatal write error on socket transport");
    if (rc == 0) settle_empty_waiter(t_, exc);
    Py_DECREF(exc);
    return rc;
  });
}

int Owner::on_pause_writing() {
  if (t_->protocol == nullptr) return 0;
  PyObject* r = PyObject_CallMethodNoArgs(t_->protocol, str_pause_writing);
  if (r == nullptr) return report(t_, t_->loop, "protocol.pause_writing() failed");
  Py_DECREF(r);
  return 0;
}

int Owner::on_resume_writing() {
  return in_context(t_, [&] {
    if (t_->protocol == nullptr) return 0;
    PyObject* r = PyObject_CallMethodNoArgs(t_->protocol, str_resume_writing);
    if (r == nullptr) return report(t_, t_->loop, "protocol.resume_writing() failed");
    Py_DECREF(r);
    return 0;
  });
}

int Owner::on_drain() {
  settle_empty_waiter(t_, nullptr);
  if (!t_->closing) return 0;
  return in_context(t_, [&] {
    LoopCore* loop = reinterpret_cast<LoopCore*>(Py_XNewRef(reinterpret_cast<PyObject*>(t_->loop)));
    int rc = 0;
    if (connection_lost(t_, Py_None) < 0)
      rc = report(t_, loop, "Fatal error: protocol.connection_lost() call failed.");
    Py_XDECREF(reinterpret_cast<PyObject*>(loop));
    return rc;
  });
}

// --- names -------------------------------------------------------------------------

bool init_names() {
  return intern(&str_fatal_error, "_fatal_error") && intern(&str_eof_received, "eof_received") &&
         intern(&str_connection_lost, "connection_lost") &&
         intern(&str_call_connection_lost, "_call_connection_lost") &&
         intern(&str_pause_writing, "pause_writing") &&
         intern(&str_resume_writing, "resume_writing") && intern(&str_close, "close") &&
         intern(&str_detach, "_detach") && intern(&str_socket, "socket") &&
         intern(&str_materialize_extra, "_materialize_extra") && intern(&str_sockname, "sockname") &&
         (transport_socket_type = import_attr("asyncio.trsock", "TransportSocket")) && (minus_one = PyLong_FromLong(-1)) != nullptr &&
         (buffered_protocol_type = import_attr("asyncio.protocols", "BufferedProtocol")) &&
         (logger = import_attr("asyncio.log", "logger"));
}

}  // namespace uvpy::py::transport
