// transport_type.cc — the Python type TransportCore: asyncio.Transport's
// methods over transport.cc's operations, the attributes uvpy/_tcp.py and
// asyncio's helpers read, and the type's creation with asyncio.Transport as
// its base (see transport.h for the layout it relies on).
//
// Rules:
//  1. Every method but the trivial getters first checks that __init__ ran
//     (a RuntimeError otherwise: the stream does not exist yet).
//  2. write()/writelines() validate like asyncio, in asyncio's order: type,
//     write_eof, a sendfile in progress, empty data, lost connection; then
//     hand the bytes to the stream, which sends now or queues.
#include <unistd.h>

#include <memory>

#include "transport.h"
// after Python.h
#include "structmember.h"

namespace uvpy::py {
namespace {

using namespace transport;

PyTypeObject* transport_type;
PyObject* socket_type;  // socket.socket, for make_socket()
// --- Python-visible methods ---------------------------------------------------------

Transport* T(PyObject* self) { return reinterpret_cast<Transport*>(self); }

constexpr const char* kSendfileInProgress = "unable to write; sendfile is in progress";
// asyncio's selector transport words a write() of a non-bytes object
// differently from 3.14.
#if PY_VERSION_HEX >= 0x030E0000
constexpr const char* kWriteNotBytes = "data argument must be a bytes, bytearray, or memoryview object, not %R";
#else
constexpr const char* kWriteNotBytes = "data argument must be a bytes-like object, not %R";
#endif
// asyncio's selector transport has a writelines() of its own from 3.12, and
// its messages name it; up to 3.11 writelines() was write()'s.
#if PY_VERSION_HEX >= 0x030C0000
constexpr const char* kWritelinesAfterEof = "Cannot call writelines() after write_eof()";
constexpr const char* kWritelinesSendfile = "unable to writelines; sendfile is in progress";
#else
constexpr const char* kWritelinesAfterEof = "Cannot call write() after write_eof()";
constexpr const char* kWritelinesSendfile = kSendfileInProgress;
#endif

PyObject* Transport_write(PyObject* self, PyObject* data) {
  Transport* t = T(self);
  if (!check_ready(t)) return nullptr;
  if (!PyBytes_Check(data) && !PyByteArray_Check(data) && !PyMemoryView_Check(data)) {
    PyObject* name = PyType_GetName(Py_TYPE(data));
    if (name) {
      PyErr_Format(PyExc_TypeError, kWriteNotBytes, name);
      Py_DECREF(name);
    }
    return nullptr;
  }
  Py_buffer view;
  if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return nullptr;
  bool ok = write_bytes(t, view.buf, static_cast<size_t>(view.len));
  PyBuffer_Release(&view);
  if (!ok) return nullptr;
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
    PyErr_SetString(PyExc_RuntimeError, kWritelinesAfterEof);
    goto done;
  }
  if (t->empty_waiter) {
    PyErr_SetString(PyExc_RuntimeError, kWritelinesSendfile);
    goto done;
  }
  if (total == 0) {
    result = Py_NewRef(Py_None);
    goto done;
  }
  if (t->conn_lost) {
    if (drop_write(t)) result = Py_NewRef(Py_None);
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

// asyncio's _make_empty_waiter(): a future, done at once when nothing is
// queued, else when the queue drains (Owner::on_drain); write() refuses
// until _reset_empty_waiter().
PyObject* Transport_make_empty_waiter(PyObject* self, PyObject*) {
  Transport* t = T(self);
  if (!check_ready(t)) return nullptr;
  if (t->empty_waiter) {
    PyErr_SetString(PyExc_RuntimeError, "Empty waiter is already set");
    return nullptr;
  }
  if (t->loop == nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
    return nullptr;
  }
  PyObject* fut = PyObject_CallMethod(reinterpret_cast<PyObject*>(t->loop), "create_future", nullptr);
  if (fut == nullptr) return nullptr;
  if (t->stream->queued() == 0) {
    PyObject* r = PyObject_CallMethod(fut, "set_result", "O", Py_None);
    if (r == nullptr) {
      Py_DECREF(fut);
      return nullptr;
    }
    Py_DECREF(r);
  }
  t->empty_waiter = Py_NewRef(fut);
  return fut;
}

PyObject* Transport_reset_empty_waiter(PyObject* self, PyObject*) {
  Py_CLEAR(T(self)->empty_waiter);
  Py_RETURN_NONE;
}

// _tls_attach(sslproto): the TLS record path for the SSLProtocol just set as
// this transport's protocol (tls.cc). True when attached, False when the
// native path is unavailable and the SSLProtocol reads through Python.
PyObject* Transport_tls_attach(PyObject* self, PyObject* sslproto) {
  Transport* t = T(self);
  if (!check_ready(t)) return nullptr;
  if (t->protocol != sslproto) {
    PyErr_SetString(PyExc_ValueError, "_tls_attach() needs the transport's own protocol");
    return nullptr;
  }
  int rc = tls::attach(t, sslproto);
  if (rc < 0) return nullptr;
  return PyBool_FromLong(rc);
}

PyObject* Transport_get_tls_attached(PyObject* self, void*) { return PyBool_FromLong(T(self)->tls != nullptr); }

PyObject* Transport_set_protocol(PyObject* self, PyObject* protocol) {
  if (!set_protocol(T(self), protocol)) return nullptr;
  Py_RETURN_NONE;
}

PyObject* Transport_get_protocol(PyObject* self, PyObject*) {
  PyObject* p = T(self)->protocol;
  return Py_NewRef(p ? p : Py_None);
}

// TransportCore.__init__(loop, sock, protocol, extra=None, server=None,
// peername=None): with extra=None the extras dict waits for ensure_extra().
int Transport_init(PyObject* self, PyObject* args, PyObject* kwargs) {
  static const char* kw[] = {"loop", "sock", "protocol", "extra", "server", "peername", nullptr};
  PyObject *loop, *sock, *protocol, *extra = Py_None, *server = Py_None, *peername = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|OOO:TransportCore", const_cast<char**>(kw),
                                   &loop, &sock, &protocol, &extra, &server, &peername))
    return -1;
  if (T(self)->stream != nullptr) {
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
  return transport::init(T(self), reinterpret_cast<LoopCore*>(loop), sock, static_cast<int>(fd),
                         protocol, extra == Py_None ? nullptr : extra,
                         server == Py_None ? nullptr : server, peername)
             ? 0
             : -1;
}

// --- attributes the Python subclass and asyncio's helpers read -------------------

PyObject* get_obj(PyObject* o) { return Py_NewRef(o ? o : Py_None); }
PyObject* Transport_get_loop(PyObject* self, void*) {
  return get_obj(reinterpret_cast<PyObject*>(T(self)->loop));
}
PyObject* Transport_get_sock(PyObject* self, void*) {
  Transport* t = T(self);
  if (t->sock == nullptr && t->owns_fd && !make_socket(t)) return nullptr;
  return get_obj(t->sock);
}
// True once the socket is closed (or never was): `_sock` without making it.
PyObject* Transport_get_sock_closed(PyObject* self, void*) {
  Transport* t = T(self);
  return PyBool_FromLong(t->sock == nullptr && !t->owns_fd);
}
// (family, type, proto) of an accepted connection whose socket object was
// never made and is closed now, for _materialize_extra's stand-in; else None.
PyObject* Transport_get_lazy_kind(PyObject* self, void*) {
  Transport* t = T(self);
  if (!t->accepted || t->lazy_family == 0 || t->sock != nullptr || t->owns_fd) Py_RETURN_NONE;
  return Py_BuildValue("(iii)", t->lazy_family, static_cast<int>(SOCK_STREAM), t->lazy_proto);
}
PyObject* Transport_get_server(PyObject* self, void*) { return get_obj(T(self)->server); }
PyObject* Transport_get_protocol_attr(PyObject* self, void*) { return get_obj(T(self)->protocol); }
PyObject* Transport_get_sock_fd(PyObject* self, void*) {
  Transport* t = T(self);
  return PyLong_FromLong(t->stream ? t->stream->fd() : -1);
}
PyObject* Transport_get_extra(PyObject* self, void*) { return Py_XNewRef(ensure_extra(T(self))); }
int Transport_set_extra(PyObject* self, PyObject* value, void*) {
  Transport* t = T(self);
  if (value == nullptr) {
    PyErr_SetString(PyExc_AttributeError, "cannot delete _extra");
    return -1;
  }
  Py_XSETREF(t->extra, Py_NewRef(value));
  Py_CLEAR(t->peername);
  return 0;
}
// get_extra_info("peername") without making the dict.
PyObject* Transport_get_extra_made(PyObject* self, void*) { return PyBool_FromLong(T(self)->extra != nullptr); }
PyObject* Transport_get_peername(PyObject* self, void*) { return get_obj(T(self)->peername); }
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
PyObject* Transport_get_empty_waiter(PyObject* self, void*) { return get_obj(T(self)->empty_waiter); }
// loop.sendfile()'s native send swaps in its own waiter once the queue is
// empty: one with done() and set_exception() that connection_lost settles
// (uvpy/_sendfile.py, invariant 6). None clears it.
int Transport_set_empty_waiter(PyObject* self, PyObject* value, void*) {
  Transport* t = T(self);
  if (value == nullptr || value == Py_None) {
    Py_CLEAR(t->empty_waiter);
  } else {
    Py_XSETREF(t->empty_waiter, Py_NewRef(value));
  }
  return 0;
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
  Py_VISIT(t->peername);
  Py_VISIT(t->sockname);
  Py_VISIT(t->data_received);
  Py_VISIT(t->get_buffer);
  Py_VISIT(t->buffer_updated);
  Py_VISIT(t->empty_waiter);
  if (t->have_view) Py_VISIT(t->view.obj);
  return tls::traverse(t->tls, visit, arg);
}

int Transport_clear(PyObject* self) {
  Transport* t = T(self);
  release_view(t);
  tls::detach(t);
  Py_CLEAR(t->extra);
  Py_CLEAR(t->protocol);
  Py_CLEAR(t->server);
  Py_CLEAR(t->context);
  Py_CLEAR(t->peername);
  Py_CLEAR(t->sockname);
  Py_CLEAR(t->data_received);
  Py_CLEAR(t->get_buffer);
  Py_CLEAR(t->buffer_updated);
  Py_CLEAR(t->empty_waiter);
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
  if (t->stream) {
    // An owned fd still open here escaped __del__ (which makes and closes
    // the socket): close it, once.
    if (t->owns_fd) ::close(t->stream->fd());
    t->owns_fd = false;
    t->stream->~Stream();
    t->owner->~Owner();
  }
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
    METH("_tls_attach", Transport_tls_attach, METH_O, nullptr),
    METH("_make_empty_waiter", Transport_make_empty_waiter, METH_NOARGS, nullptr),
    METH("_reset_empty_waiter", Transport_reset_empty_waiter, METH_NOARGS, nullptr),
    {nullptr, nullptr, 0, nullptr},
};

PyGetSetDef Transport_getset[] = {
    // Shadows BaseTransport's `_extra` slot (same storage): made on first use.
    {"_extra", Transport_get_extra, Transport_set_extra, nullptr, nullptr},
    {"_extra_made", Transport_get_extra_made, nullptr, nullptr, nullptr},
    {"_peername", Transport_get_peername, nullptr, nullptr, nullptr},
    {"_loop", Transport_get_loop, nullptr, nullptr, nullptr},
    {"_sock", Transport_get_sock, nullptr, nullptr, nullptr},
    {"_sock_closed", Transport_get_sock_closed, nullptr, nullptr, nullptr},
    {"_lazy_kind", Transport_get_lazy_kind, nullptr, nullptr, nullptr},
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
    {"_empty_waiter", Transport_get_empty_waiter, Transport_set_empty_waiter, nullptr, nullptr},
    {"_tls_attached", Transport_get_tls_attached, nullptr, nullptr, nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

}  // namespace

bool transport::make_socket(Transport* t) {
  PyObject* sock = PyObject_CallFunction(socket_type, "iiii", t->lazy_family,
                                         static_cast<int>(SOCK_STREAM | SOCK_NONBLOCK),
                                         t->lazy_proto, t->stream->fd());
  if (sock == nullptr) return false;
  t->sock = sock;
  t->owns_fd = false;
  t->lazy_family = 0;  // the socket object is the one "socket" wraps
  return true;
}

bool transport::is_transport(PyObject* obj) { return PyObject_TypeCheck(obj, transport_type); }
bool transport::is_transport_type(PyTypeObject* type) { return PyType_IsSubtype(type, transport_type); }

bool transport::init(Transport* t, LoopCore* loop, PyObject* sock, int fd, PyObject* protocol,
                     PyObject* extra, PyObject* server, PyObject* peername) {
  // extra=None: the dict is made on first use, from `peername`.
  Py_XSETREF(t->extra, Py_XNewRef(extra));
  Py_XSETREF(t->peername, extra == nullptr ? Py_NewRef(peername) : nullptr);
  PyObject* ctx = PyContext_CopyCurrent();
  if (ctx == nullptr) return false;
  Py_XSETREF(t->context, ctx);
  if (!set_protocol(t, protocol)) return false;
  t->loop = reinterpret_cast<LoopCore*>(Py_NewRef(reinterpret_cast<PyObject*>(loop)));
  t->sock = Py_XNewRef(sock);
  t->server = Py_XNewRef(server);
  t->owner = new (t->owner_storage) Owner(t);
  t->stream = new (t->stream_storage) loop::Stream(loop->reactor, fd, t->owner);
  return true;
}

PyObject* transport::ensure_extra(Transport* t) {
  if (t->extra != nullptr) return t->extra;
  PyObject* d = PyDict_New();
  if (d == nullptr) return nullptr;
  if (t->peername != nullptr && PyDict_SetItemString(d, "peername", t->peername) < 0) {
    Py_DECREF(d);
    return nullptr;
  }
  t->extra = d;
  Py_CLEAR(t->peername);
  return d;
}

PyTypeObject* native_transport_type(PyObject* module, PyType_Spec* spec, Py_ssize_t extra_offset,
                                    Py_ssize_t fields_offset) {
  PyObject* transports = PyImport_ImportModule("asyncio.transports");
  PyObject* base = transports ? PyObject_GetAttrString(transports, "Transport") : nullptr;
  PyObject* base_transport = transports ? PyObject_GetAttrString(transports, "BaseTransport") : nullptr;
  PyObject* extra = base_transport ? PyObject_GetAttrString(base_transport, "_extra") : nullptr;
  PyTypeObject* type = nullptr;
  // The layout rests on BaseTransport's one slot, `_extra`, right after the
  // object header, and on Transport adding nothing after it.
  if (base && extra &&
      !(PyType_Check(base) && reinterpret_cast<PyTypeObject*>(base)->tp_basicsize == fields_offset &&
        Py_TYPE(extra) == &PyMemberDescr_Type &&
        reinterpret_cast<PyMemberDescrObject*>(extra)->d_member->offset == extra_offset)) {
    PyErr_SetString(PyExc_ImportError, "uvpy: unexpected layout of asyncio.Transport");
  } else if (base && extra) {
    PyObject* bases = PyTuple_Pack(1, base);
    type = bases ? reinterpret_cast<PyTypeObject*>(PyType_FromModuleAndSpec(module, spec, bases))
                 : nullptr;
    Py_XDECREF(bases);
    const char* dot = strrchr(spec->name, '.');
    if (type != nullptr &&
        PyModule_AddObjectRef(module, dot ? dot + 1 : spec->name, reinterpret_cast<PyObject*>(type)) < 0)
      Py_CLEAR(type);
  }
  Py_XDECREF(transports);
  Py_XDECREF(base);
  Py_XDECREF(base_transport);
  Py_XDECREF(extra);
  return type;
}

bool ready_transport(PyObject* module) {
  if (!init_names() || (socket_type = import_attr("socket", "socket")) == nullptr) return false;
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
  transport_type = native_transport_type(module, &spec, offsetof(Transport, extra),
                                         offsetof(Transport, loop));
  return transport_type != nullptr && tls::ready(module);
}

}  // namespace uvpy::py
