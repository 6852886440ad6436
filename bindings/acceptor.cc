// acceptor.cc — Acceptor, the native accept step of a stream server.
//
// uvpy/_tcp.py installs one as the reader of an AF_INET/AF_INET6 TCP or an
// AF_UNIX stream listener, with TLS or without (the reader is an accepting
// one, backend.h contract 8). The reactor calls it once per readiness; per
// connection it does, with no Python frame of its own, what asyncio's
// _accept_connection and _SelectorSocketTransport.__init__ do:
//
//   accept4 (or the connection the backend accepted ahead: the fd is
//   non-blocking already, no FIONBIO), the peer's address from it
//   → TCP_NODELAY, for TCP          (asyncio's _set_nodelay)
//   → protocol_factory()
//   → for TLS, wrap(protocol): the SSLProtocol over the app protocol, its
//     handshake waiter and the waiter's callback (uvpy/_tls.py)
//   → the transport: tp_alloc + transport::init, the same fields
//     TCPTransport.__init__ sets, without running it; it owns the bare fd
//     (Transport::accepted): the socket.socket is made when first asked
//     for (CPython's constructor calls getsockname(2) to check the fd)
//   → server._attach(), loop._transports[fd] = weakref(transport)
//   → for TLS, the SSLProtocol attached to the native record path
//     (tls::attach, _tls.py invariant 6), before any record can arrive
//   → call_soon(protocol.connection_made, transport), then reading on.
//
// "sockname" is the listener's own address when that says it (bound to
// one IP address, not transparent, or any Unix listener: known_sockname),
// so neither accept nor close asks the kernel; else getsockname(2) at
// close or when asked.
//
// Rules:
//  1. Python keeps the policy: in debug mode the whole batch goes to
//     loop._accept_connection (asyncio's debug logging); an accept error
//     goes to loop._accept_failed (EMFILE and friends stop accepting for a
//     while, anything else reaches the exception handler), as there.
//  2. A connection that fails before it has a transport is closed exactly
//     once, here (::close). Once transport::init succeeded the transport
//     owns the fd: connection_lost closes it (or the socket object made
//     from it), dealloc closes one that escaped both.
//  3. Callback order is asyncio's: connection_made is the first callback the
//     connection schedules. Reading starts now rather than from a second
//     call_soon (asyncio's _add_reader): a read is reported only by a later
//     poll, and its callback queues behind connection_made either way; a
//     connection_made that pauses or closes stops the reader it found.
//  4. At most `backlog` connections per wakeup, as asyncio, and none after
//     a callback closed the server (the listener's fd number may be
//     another file's by then).
//  5. protocol_factory() or wrap() raising drops the connection silently,
//     as asyncio does outside debug mode (in debug mode rule 1 applies: it
//     reports); SystemExit and KeyboardInterrupt propagate to the loop.
//  6. A TLS connection's handshake outcome is the waiter's business, as in
//     the Python path (_tls.py invariant 3): wrap() made the waiter and its
//     callback, so nothing here waits for it.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include <cerrno>

#include "transport.h"

namespace uvpy::py {
namespace {

PyObject* str_accept_connection;  // "_accept_connection"
PyObject* str_accept_failed;      // "_accept_failed"
PyObject* str_attach;             // "_attach"
PyObject* str_connection_made;    // "connection_made"
PyObject* str_transports;         // "_transports"
PyObject* str_sockets;            // "_sockets"

struct Acceptor {
  PyObject_HEAD
  LoopCore* loop;
  PyObject* listener;   // the listening socket.socket
  PyObject* factory;    // protocol_factory
  PyObject* server;     // the Server
  PyObject* kind;       // (family, type, proto), for loop._accept_connection
  PyObject* type;       // the transport class (TCPTransport)
  PyObject* transports;  // loop._transports: fd -> weakref.ref(transport)
  PyObject* sockname;    // every connection's local address, or null (known_sockname)
  PyObject* wrap;        // TLS: wrap(protocol) -> the SSLProtocol; else null
  bool tcp;              // IP: TCP_NODELAY per connection
  int family;
  int proto;
  int lfd;
  int backlog;
};

Acceptor* A(PyObject* self) { return reinterpret_cast<Acceptor*>(self); }

// The local address of every connection the listener accepts, when the
// listener's own address says it: bound to one address (not a wildcard),
// and not transparent (IP_TRANSPARENT accepts connections to any address).
// A Unix connection's local address is always its listener's. Else null:
// each connection's getsockname(2) says it, at close.
PyObject* known_sockname(int lfd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(lfd, reinterpret_cast<sockaddr*>(&ss), &len) < 0) return nullptr;
  int transparent = 0;
  socklen_t olen = sizeof transparent;
  if (ss.ss_family == AF_INET) {
    if (reinterpret_cast<sockaddr_in&>(ss).sin_addr.s_addr == htonl(INADDR_ANY)) return nullptr;
    if (::getsockopt(lfd, SOL_IP, IP_TRANSPARENT, &transparent, &olen) < 0 || transparent) return nullptr;
  } else if (ss.ss_family == AF_INET6) {
    const auto& a6 = reinterpret_cast<sockaddr_in6&>(ss);
    if (IN6_IS_ADDR_UNSPECIFIED(&a6.sin6_addr) || IN6_IS_ADDR_V4MAPPED(&a6.sin6_addr)) return nullptr;
    if (::getsockopt(lfd, SOL_IPV6, IPV6_TRANSPARENT, &transparent, &olen) < 0 || transparent)
      return nullptr;
  } else if (ss.ss_family != AF_UNIX) {
    return nullptr;
  }
  PyObject* name = peer_address(ss, len);
  if (name == Py_None) Py_CLEAR(name);
  PyErr_Clear();
  return name;
}

// One accepted connection (rule 2 for its fd); -1 only when the loop must
// see the pending exception (SystemExit, KeyboardInterrupt).
int serve(Acceptor* a, int fd, PyObject* peername) {
  int one = 1;
  if (a->tcp && ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0) {
    ::close(fd);  // the connection is already gone (asyncio would fail the same way)
    return 0;
  }
  PyObject* protocol = PyObject_CallNoArgs(a->factory);
  if (protocol != nullptr && a->wrap != nullptr)
    Py_SETREF(protocol, PyObject_CallOneArg(a->wrap, protocol));
  PyObject* t = nullptr;
  bool ok = protocol != nullptr;
  if (ok) {
    auto* tp = reinterpret_cast<PyTypeObject*>(a->type);
    t = tp->tp_alloc(tp, 0);
    ok = t != nullptr && transport::init(reinterpret_cast<transport::Transport*>(t), a->loop,
                                         nullptr, fd, protocol, nullptr, a->server, peername);
  }
  if (!ok) {
    ::close(fd);  // no socket object and no transport owns it
    Py_XDECREF(t);
    Py_XDECREF(protocol);
    return fatal_exception() ? -1 : (PyErr_Clear(), 0);
  }
  auto* tr = reinterpret_cast<transport::Transport*>(t);
  tr->accepted = true;
  tr->owns_fd = true;
  tr->lazy_family = a->family;
  tr->lazy_proto = a->proto;
  tr->sockname = Py_XNewRef(a->sockname);
  int rc = 0;
  PyObject* r = PyObject_CallMethodNoArgs(a->server, str_attach);
  if (r == nullptr) Py_CLEAR(tr->server);  // never attached: no _detach() either
  PyObject* ref = r ? PyWeakref_NewRef(t, nullptr) : nullptr;
  PyObject* key = ref ? PyLong_FromLong(fd) : nullptr;
  bool registered = key && PyDict_SetItem(a->transports, key, ref) == 0;
  Py_XDECREF(r);
  Py_XDECREF(ref);
  Py_XDECREF(key);
  // tls::attach: 0 where the native record path is unavailable (the
  // Python path runs), -1 with an exception.
  if (registered && a->wrap != nullptr && tls::attach(tr, protocol) < 0) registered = false;
  if (registered) {
    PyObject* made = PyObject_GetAttr(protocol, str_connection_made);
    PyObject* args = made ? PyTuple_Pack(1, t) : nullptr;
    Handle* h = args ? new_handle(&HandleType, made, args, a->loop, nullptr) : nullptr;
    Py_XDECREF(made);
    Py_XDECREF(args);
    if (h != nullptr) {
      a->loop->reactor->call_soon(as_callback(h));
      Py_DECREF(h);
      tr->stream->set_known_socket();  // accept() made it
      int err = tr->stream->start_reading();
      if (err < 0) rc = transport::fail_errno(tr, -err, "Fatal read error on socket transport");
    } else {
      registered = false;
    }
  }
  if (!registered) {
    // The transport exists but never reached the loop: it closes as any
    // transport does (connection_lost only once connection_made ran).
    if (fatal_exception()) rc = -1;
    else PyErr_Clear();  // dropped, as asyncio drops it outside debug mode
    if (rc == 0) {
      tr->protocol_connected = false;
      if (!transport::force_close(tr, Py_None)) PyErr_WriteUnraisable(t);
    }
  }
  Py_DECREF(protocol);
  Py_DECREF(t);
  return rc;
}

bool serving(Acceptor* a) {
  PyObject* sockets = PyObject_GetAttr(a->server, str_sockets);
  if (sockets == nullptr) {
    PyErr_Clear();
    return false;
  }
  bool open = sockets != Py_None;
  Py_DECREF(sockets);
  return open;
}

PyObject* Acceptor_call(PyObject* self, PyObject* args, PyObject* kwargs) {
  Acceptor* a = A(self);
  if (PyTuple_GET_SIZE(args) != 0 || (kwargs && PyDict_GET_SIZE(kwargs) != 0)) {
    PyErr_SetString(PyExc_TypeError, "Acceptor() takes no arguments");
    return nullptr;
  }
  PyObject* loop = reinterpret_cast<PyObject*>(a->loop);
  if (a->loop->reactor->closed()) Py_RETURN_NONE;
  if (a->loop->debug) {  // rule 1
    PyObject* backlog = PyLong_FromLong(a->backlog);
    PyObject* r = backlog ? PyObject_CallMethodObjArgs(loop, str_accept_connection, a->factory,
                                                       a->listener, a->server, backlog, a->kind,
                                                       nullptr)
                          : nullptr;
    Py_XDECREF(backlog);
    return r;
  }
  for (int i = 0; i < a->backlog; ++i) {
    sockaddr_storage ss{};
    socklen_t len = 0;
    int fd = a->loop->reactor->accept(a->lfd, &ss, &len);
    if (fd == -EAGAIN) break;
    if (fd < 0) {
      PyObject* backlog = PyLong_FromLong(a->backlog);
      PyObject* err = backlog ? PyLong_FromLong(-fd) : nullptr;
      PyObject* r = err ? PyObject_CallMethodObjArgs(loop, str_accept_failed, err, a->factory,
                                                     a->listener, a->server, backlog, nullptr)
                        : nullptr;
      Py_XDECREF(backlog);
      Py_XDECREF(err);
      return r;
    }
    PyObject* peername = peer_address(ss, len);
    if (peername == nullptr) {
      ::close(fd);
      return nullptr;
    }
    int rc = serve(a, fd, peername);
    Py_DECREF(peername);
    if (rc < 0) return nullptr;
    // A protocol closed the loop, or the server (whose listener fd is
    // closed now, and its number free for another file).
    if (a->loop->reactor->closed() || !serving(a)) break;
  }
  Py_RETURN_NONE;
}

// Acceptor(loop, listener, protocol_factory, server, backlog, kind,
//          transport_type[, wrap]): wrap is None or, for a TLS server,
// wrap(protocol) -> the SSLProtocol the transport serves.
PyObject* Acceptor_new(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
  PyObject *loop, *listener, *factory, *server, *kind, *ttype, *wrap = Py_None;
  int backlog;
  if (kwargs && PyDict_GET_SIZE(kwargs) != 0) {
    PyErr_SetString(PyExc_TypeError, "Acceptor() takes no keyword arguments");
    return nullptr;
  }
  if (!PyArg_ParseTuple(args, "O!OOOiO!O!|O:Acceptor", &LoopCoreType, &loop, &listener, &factory,
                        &server, &backlog, &PyTuple_Type, &kind, &PyType_Type, &ttype, &wrap))
    return nullptr;
  if (wrap != Py_None && !PyCallable_Check(wrap)) {
    PyErr_SetString(PyExc_TypeError, "wrap must be callable or None");
    return nullptr;
  }
  int family, socktype, proto;
  if (!PyArg_ParseTuple(kind, "iii:kind", &family, &socktype, &proto)) return nullptr;
  if (socktype != SOCK_STREAM || (family != AF_INET && family != AF_INET6 && family != AF_UNIX)) {
    PyErr_SetString(PyExc_ValueError,
                    "Acceptor() serves AF_INET, AF_INET6 and AF_UNIX SOCK_STREAM listeners");
    return nullptr;
  }
  if (!transport::is_transport_type(reinterpret_cast<PyTypeObject*>(ttype))) {
    PyErr_SetString(PyExc_TypeError, "transport_type must be a TransportCore subclass");
    return nullptr;
  }
  PyObject* fileno = PyObject_CallMethod(listener, "fileno", nullptr);
  if (fileno == nullptr) return nullptr;
  long lfd = PyLong_AsLong(fileno);
  Py_DECREF(fileno);
  if (lfd == -1 && PyErr_Occurred()) return nullptr;
  PyObject* transports = PyObject_GetAttr(loop, str_transports);
  if (transports == nullptr) return nullptr;
  if (!PyDict_Check(transports)) {
    Py_DECREF(transports);
    PyErr_SetString(PyExc_TypeError, "loop._transports must be a dict");
    return nullptr;
  }
  auto* a = reinterpret_cast<Acceptor*>(type->tp_alloc(type, 0));
  if (a == nullptr) {
    Py_DECREF(transports);
    return nullptr;
  }
  a->loop = reinterpret_cast<LoopCore*>(Py_NewRef(loop));
  a->listener = Py_NewRef(listener);
  a->factory = Py_NewRef(factory);
  a->server = Py_NewRef(server);
  a->kind = Py_NewRef(kind);
  a->type = Py_NewRef(ttype);
  a->transports = transports;
  a->lfd = static_cast<int>(lfd);
  a->backlog = backlog;
  a->family = family;
  a->proto = proto;
  a->sockname = known_sockname(a->lfd);
  a->wrap = wrap == Py_None ? nullptr : Py_NewRef(wrap);
  a->tcp = family != AF_UNIX;
  return reinterpret_cast<PyObject*>(a);
}

int Acceptor_traverse(PyObject* self, visitproc visit, void* arg) {
  Acceptor* a = A(self);
  Py_VISIT(reinterpret_cast<PyObject*>(a->loop));
  Py_VISIT(a->listener);
  Py_VISIT(a->factory);
  Py_VISIT(a->server);
  Py_VISIT(a->kind);
  Py_VISIT(a->type);
  Py_VISIT(a->transports);
  Py_VISIT(a->sockname);
  Py_VISIT(a->wrap);
  return 0;
}

int Acceptor_clear(PyObject* self) {
  Acceptor* a = A(self);
  Py_CLEAR(a->loop);
  Py_CLEAR(a->listener);
  Py_CLEAR(a->factory);
  Py_CLEAR(a->server);
  Py_CLEAR(a->kind);
  Py_CLEAR(a->type);
  Py_CLEAR(a->transports);
  Py_CLEAR(a->sockname);
  Py_CLEAR(a->wrap);
  return 0;
}

void Acceptor_dealloc(PyObject* self) {
  PyObject_GC_UnTrack(self);
  Acceptor_clear(self);
  Py_TYPE(self)->tp_free(self);
}

PyObject* Acceptor_repr(PyObject* self) {
  Acceptor* a = A(self);
  return PyUnicode_FromFormat("<uvpy Acceptor fd=%d factory=%R>", a->lfd,
                              a->factory ? a->factory : Py_None);
}

PyTypeObject AcceptorType = [] {
  PyTypeObject t{PyVarObject_HEAD_INIT(nullptr, 0)};
  t.tp_name = "uvpy._uvpy.Acceptor";
  t.tp_basicsize = sizeof(Acceptor);
  t.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC;
  t.tp_doc = "A stream server's accept step: accept, make the transport, schedule connection_made.";
  t.tp_new = Acceptor_new;
  t.tp_call = Acceptor_call;
  t.tp_repr = Acceptor_repr;
  t.tp_dealloc = Acceptor_dealloc;
  t.tp_traverse = Acceptor_traverse;
  t.tp_clear = Acceptor_clear;
  return t;
}();

}  // namespace

bool ready_acceptor(PyObject* module) {
  return intern(&str_accept_connection, "_accept_connection") &&
         intern(&str_accept_failed, "_accept_failed") && intern(&str_attach, "_attach") &&
         intern(&str_connection_made, "connection_made") && intern(&str_transports, "_transports") &&
         intern(&str_sockets, "_sockets") &&
         PyType_Ready(&AcceptorType) == 0 &&
         PyModule_AddObjectRef(module, "Acceptor", reinterpret_cast<PyObject*>(&AcceptorType)) == 0;
}

}  // namespace uvpy::py
