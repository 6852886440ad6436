// transport.h — the instance layout of TransportCore and the operations
// shared by transport.cc (asyncio's transport semantics over loop::Stream)
// and transport_type.cc (the Python type: methods, attributes, creation).
// Private to bindings/.
//
// Layout: [PyObject_HEAD][BaseTransport's `_extra` slot][fields], checked
// against asyncio's classes when the type is created.
#pragma once
#include <new>

#include "py.h"
#include "stream.h"
#include "tls.h"

namespace uvpy::py::transport {

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
  // The peer's address while `extra` is not made yet: an idle accepted
  // connection needs no dict (~200 bytes) until someone asks for more than
  // "peername" (the `_extra` getter makes the dict and moves it there).
  PyObject* peername;
  // The protocol's hot methods, looked up once by set_protocol().
  // A method the protocol's class defines is kept as the plain function
  // (its bit in `unbound` set) and called with the protocol as its first
  // argument: a bound method object per connection is ~64 bytes.
  PyObject* data_received;
  PyObject* get_buffer;
  PyObject* buffer_updated;
  uint8_t unbound;  // kUnboundDataReceived | kUnboundGetBuffer | kUnboundBufferUpdated
  // asyncio's _empty_waiter: a future set while loop.sendfile() owns the
  // socket (uvpy/_sendfile.py). It completes when the write queue drains
  // and fails on a write error or connection_lost; write() and
  // writelines() refuse while it is set. During the native send itself
  // sendfile sets its own guard here (anything with done() and
  // set_exception()), which connection_lost settles before the socket
  // closes.
  PyObject* empty_waiter;
  // The stream and its owner live inside the transport (constructed by
  // __init__, destroyed by dealloc): one allocation per connection, and the
  // read path touches one object's cache lines, not three objects'.
  // `stream` is null until __init__ ran.
  loop::Stream* stream;
  Owner* owner;
  // The TLS record path while an SSLProtocol is attached (tls.cc), else null.
  tls::Link* tls;
  Py_buffer view;  // BufferedProtocol: get_buffer()'s buffer during a recv
  Py_ssize_t conn_lost;
  bool have_view;
  bool buffered;
  bool closing;
  bool paused;  // pause_reading() in effect
  bool eof;     // write_eof() called
  bool protocol_connected;
  bool lost;    // connection_lost() called
  // Made by the native accept step (acceptor.cc). Its fd is owned by the
  // transport itself (`owns_fd`, `sock` null) until something asks for
  // `_sock`, which then makes the socket.socket (lazy_family/lazy_proto)
  // and hands it the fd. At connection_lost its extras are filled
  // natively: "sockname" from `sockname` (the listener's address, when
  // that is the connection's) or getsockname(2); "socket" only when the
  // socket object exists (else _materialize_extra makes a closed stand-in
  // on demand).
  bool accepted;
  bool owns_fd;
  int lazy_family;
  int lazy_proto;
  PyObject* sockname;
  alignas(loop::Stream) unsigned char stream_storage[sizeof(loop::Stream)];
  alignas(Owner) unsigned char owner_storage[sizeof(Owner)];
};

enum : uint8_t { kUnboundDataReceived = 1, kUnboundGetBuffer = 2, kUnboundBufferUpdated = 4 };

inline PyObject* as_obj(Transport* t) { return reinterpret_cast<PyObject*>(t); }

// The extras dict, made on first use from `peername` (borrowed; nullptr with
// an exception set).
PyObject* ensure_extra(Transport* t);

// What TransportCore.__init__ does, for callers that have the fd and the
// objects at hand (the native accept path, acceptor.cc): `extra` and
// `server` may be null; `peername` is kept only while `extra` is null.
// Not called twice on one transport. False with an exception set.
bool init(Transport* t, LoopCore* loop, PyObject* sock, int fd, PyObject* protocol,
          PyObject* extra, PyObject* server, PyObject* peername);
// The socket.socket of an accepted transport that owns its fd (see
// `accepted`); false with an exception set.
bool make_socket(Transport* t);

// Interned names and asyncio objects; false with an exception set.
bool init_names();

// asyncio's _SelectorSocketTransport operations (see transport.cc). The
// bool ones return false with an exception set.
bool check_ready(Transport* t);
bool is_reading(Transport* t);
bool set_protocol(Transport* t, PyObject* protocol);
bool close_transport(Transport* t);
bool force_close(Transport* t, PyObject* exc);
int connection_lost(Transport* t, PyObject* exc);  // -1: the protocol raised
void release_view(Transport* t);
// True for a TransportCore (or subclass) instance.
bool is_transport(PyObject* obj);
bool is_transport_type(PyTypeObject* type);
// write(bytes) after the type check: asyncio's checks (write_eof, sendfile,
// empty, lost connection), then the stream. False with an exception set.
bool write_bytes(Transport* t, const void* data, size_t len);
// A write after the connection was lost: counted, dropped, logged from the
// 5th on. False if logging raised.
bool drop_write(Transport* t);
// A -errno from a failed send: self._fatal_error(); -1 only for
// SystemExit/KeyboardInterrupt.
int fail_errno(Transport* t, int err, const char* message);
// Raises for a -errno from the stream (the loop's message when closed).
PyObject* raise_errno(int rc);
// Completes the empty waiter, if set and not done: its result (exc null)
// or exc. Errors are unraisable.
void settle_empty_waiter(Transport* t, PyObject* exc);

}  // namespace uvpy::py::transport
