// tls.cc — the native record path of a TLS connection.
//
// A TLS connection is asyncio's SSLProtocol (uvpy/_tls.py's subclass) over
// uvpy's native stream transport. SSLProtocol stays the state machine: the
// handshake, shutdown, flow-control decisions, every error path and every
// message are its own Python code. This file takes over only its steady
// state, SSLProtocol in WRAPPED:
//
//   records in   the stream's recv() lands in the loop's read buffer; the
//                bytes go into the incoming BIO, SSL_read drains every
//                whole record into one buffer, and the app protocol's
//                data_received() gets one bytes object (asyncio's
//                _do_read__copied joins its chunks the same way).
//   records out  the app transport's write() (installed as a C method on
//                _tls.SSLProtocolTransport) runs SSL_write, and the outgoing BIO goes
//                straight into the stream's write path.
//
// Per 1 KiB round trip that replaces 17 Python frames, an SSLWantReadError
// raised and caught, two intermediate bytes objects and a memoryview slice
// (docs/tls.md) by one data_received() call and one write() call.
//
// Why OpenSSL's API on the user's own objects, not SSLObject's methods:
// calling SSLObject.read/write and MemoryBIO.read/write from C++ (by
// vectorcall) would keep their costs: each read ends in SSLWantReadError
// (an exception object with formatted reason strings), each read allocates a
// 256 KiB bytes object and shrinks it, and each call releases and takes the
// GIL. SSL_read_ex/SSL_write_ex/BIO_read/BIO_write on the same SSL* and BIO*
// do none of that. docs/tls.md has the measurements.
//
// Rules:
//  1. One OpenSSL. The functions are resolved at run time from the `_ssl`
//     extension module's own dependencies (dlopen(RTLD_NOLOAD) + dlsym), and
//     OpenSSL_version_num() must equal ssl.OPENSSL_VERSION_NUMBER; uvpy
//     links no OpenSSL. Where resolution fails the Python path stays
//     (_tls_status() says why).
//  2. The SSL* and BIO* are read from CPython's _ssl objects, whose layout
//     ({PyObject_HEAD; PyObject *Socket; SSL *ssl; ...} for _SSLSocket,
//     {PyObject_HEAD; BIO *bio; ...} for MemoryBIO) is the same from 3.11
//     through 3.14. That is private CPython layout, so: a compile-time
//     version guard (3.11 <= Python < 3.15, not free-threaded); a check, once,
//     on an SSLObject made for the purpose, that SSL_get_app_data() is the
//     _SSLSocket (CPython sets it) and that the SSL's BIOs are the
//     MemoryBIOs'; the same BIO check on every connection; and a test
//     (tests/python/test_tls.py) that the native path is on.
//  3. The native path runs only while SSLProtocol._state is WRAPPED, for an
//     app protocol that is a plain Protocol and not paused. Everything else
//     (handshake, flushing, shutdown, BufferedProtocol apps, a paused app,
//     a write backlog) is SSLProtocol's own Python method, entered exactly
//     where asyncio would enter it, after the received bytes are in the
//     incoming BIO (buffer_updated's first step).
//  4. Nothing the Python path keeps goes stale: the native path writes no
//     SSLProtocol attribute (it reads _state, _app_protocol, the pause flags,
//     the water marks and _write_buffer_size), and calls
//     _control_app_writing() / _control_ssl_reading() whenever their
//     thresholds say a pause or resume is due.
//  5. An OpenSSL result other than data, WANT_READ or a close_notify is left
//     in OpenSSL's state and error queue, and SSLProtocol._do_read() (or, for
//     a write, _write_appdata()) takes over: it calls OpenSSL again, gets the
//     same condition and raises, logs and closes exactly as asyncio does.
//  6. A Link holds strong references to the _SSLSocket and both MemoryBIOs,
//     so the SSL* and BIO*s it uses live as long as it does.
//  7. Rule 4's reads (about twenty per round trip) come from the SSLProtocol's
//     instance dict, not getattr(), once its class is shown to make the two
//     equal: lookup is object's own and no class in the MRO defines a data
//     descriptor of those names (plain_fields(), checked once per class and
//     type version tag). A key missing from the dict falls back to getattr().
//     The dict is taken per entry (on_records, write), never kept: a kept
//     reference would be a cycle through the transport.
#include "tls.h"

#include <dlfcn.h>

#include <cstring>
#include <memory>
#include <string>

#include "transport.h"

// OpenSSL's ABI as far as this file uses it: opaque handles, functions
// resolved at run time (rule 1), and the stable values of SSL_get_error().
extern "C" {
typedef struct ssl_st SSL;
typedef struct bio_st BIO;
}

namespace uvpy::py::tls {

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030F0000 && !defined(Py_GIL_DISABLED)
#define UVPY_TLS_NATIVE 1
#else
#define UVPY_TLS_NATIVE 0
#endif

struct Link {
  SSL* ssl;
  BIO* in;
  BIO* out;
  PyObject* sslsocket;  // _ssl._SSLSocket: owns `ssl`
  PyObject* incoming;   // _ssl.MemoryBIO: owns `in`
  PyObject* outgoing;   // _ssl.MemoryBIO: owns `out`
};

namespace {

using transport::Transport;

constexpr int kErrorWantRead = 2;    // SSL_ERROR_WANT_READ
constexpr int kErrorZeroReturn = 6;  // SSL_ERROR_ZERO_RETURN
constexpr size_t kReadChunk = 256 * 1024;  // SSLProtocol.max_size
constexpr size_t kRecordMax = 16 * 1024;   // TLS plaintext per record

struct Api {
  int (*SSL_read_ex)(SSL*, void*, size_t, size_t*);
  int (*SSL_write_ex)(SSL*, const void*, size_t, size_t*);
  int (*SSL_get_error)(const SSL*, int);
  int (*SSL_pending)(const SSL*);
  BIO* (*SSL_get_rbio)(const SSL*);
  BIO* (*SSL_get_wbio)(const SSL*);
  void* (*SSL_get_ex_data)(const SSL*, int);
  int (*BIO_write)(BIO*, const void*, int);
  int (*BIO_read)(BIO*, void*, int);
  size_t (*BIO_ctrl_pending)(BIO*);
  void (*ERR_clear_error)();
  unsigned long (*ERR_peek_error)();
  unsigned long (*OpenSSL_version_num)();
};

Api api;
int state = 0;  // 0 not tried, 1 available, -1 unavailable (why_unavailable)
std::string why_unavailable;
PyTypeObject* sslsocket_type;  // _ssl._SSLSocket
PyTypeObject* memorybio_type;  // _ssl.MemoryBIO
PyObject* wrapped_state;       // asyncio.sslproto.SSLProtocolState.WRAPPED

// Interned attribute and method names of SSLProtocol and friends.
PyObject *s_state, *s_app_protocol, *s_app_reading_paused, *s_app_protocol_is_buffer,
    *s_write_backlog, *s_ssl_writing_paused, *s_write_buffer_size, *s_outgoing_high_water,
    *s_outgoing_low_water, *s_app_writing_paused, *s_ssl_reading_paused,
    *s_incoming_high_water, *s_incoming_low_water, *s_data_received, *s_records_received,
    *s_do_read, *s_do_write, *s_fatal_error, *s_call_eof_received, *s_start_shutdown,
    *s_control_app_writing, *s_control_ssl_reading, *s_ssl_protocol, *s_transport,
    *s_write_appdata, *s_sslobj, *s_incoming, *s_outgoing, *s_context, *s_msg_callback;
PyObject* fatal_message;  // "Fatal error on SSL protocol"

// The layout rule 2 relies on.
struct SSLSocketHead {
  PyObject_HEAD
  PyObject* socket;
  SSL* ssl;
};
struct MemoryBIOHead {
  PyObject_HEAD
  BIO* bio;
};

SSL* ssl_of(PyObject* sslsocket) { return reinterpret_cast<SSLSocketHead*>(sslsocket)->ssl; }
BIO* bio_of(PyObject* memorybio) { return reinterpret_cast<MemoryBIOHead*>(memorybio)->bio; }

// A growable scratch buffer, not zero-filled.
struct Scratch {
  std::unique_ptr<char[]> data;
  size_t cap = 0;
  // At least n bytes; the old contents are not kept.
  char* reserve(size_t n) {
    if (cap < n) {
      size_t c = cap ? cap : kReadChunk;
      while (c < n) c *= 2;
      data.reset(new char[c]);
      cap = c;
    }
    return data.get();
  }
};

// The outgoing records on their way to the stream.
thread_local Scratch write_scratch;

bool init_names() {
  return intern(&s_state, "_state") && intern(&s_app_protocol, "_app_protocol") &&
         intern(&s_app_reading_paused, "_app_reading_paused") &&
         intern(&s_app_protocol_is_buffer, "_app_protocol_is_buffer") &&
         intern(&s_write_backlog, "_write_backlog") &&
         intern(&s_ssl_writing_paused, "_ssl_writing_paused") &&
         intern(&s_write_buffer_size, "_write_buffer_size") &&
         intern(&s_outgoing_high_water, "_outgoing_high_water") &&
         intern(&s_outgoing_low_water, "_outgoing_low_water") &&
         intern(&s_app_writing_paused, "_app_writing_paused") &&
         intern(&s_ssl_reading_paused, "_ssl_reading_paused") &&
         intern(&s_incoming_high_water, "_incoming_high_water") &&
         intern(&s_incoming_low_water, "_incoming_low_water") &&
         intern(&s_data_received, "data_received") &&
         intern(&s_records_received, "_records_received") && intern(&s_do_read, "_do_read") &&
         intern(&s_do_write, "_do_write") && intern(&s_fatal_error, "_fatal_error") &&
         intern(&s_call_eof_received, "_call_eof_received") &&
         intern(&s_start_shutdown, "_start_shutdown") &&
         intern(&s_control_app_writing, "_control_app_writing") &&
         intern(&s_control_ssl_reading, "_control_ssl_reading") &&
         intern(&s_ssl_protocol, "_ssl_protocol") && intern(&s_transport, "_transport") &&
         intern(&s_write_appdata, "_write_appdata") && intern(&s_sslobj, "_sslobj") &&
         intern(&s_incoming, "_incoming") && intern(&s_outgoing, "_outgoing") &&
         intern(&s_context, "context") && intern(&s_msg_callback, "_msg_callback") &&
         (fatal_message = PyUnicode_InternFromString("Fatal error on SSL protocol")) != nullptr;
}

// --- resolving OpenSSL (rules 1 and 2) --------------------------------------------

bool unavailable(const std::string& why) {
  why_unavailable = why;
  state = -1;
  return false;
}

template <class F>
bool sym(void* handle, const char* name, F* slot) {
  void* p = dlsym(handle, name);
  if (p == nullptr) return false;
  *slot = reinterpret_cast<F>(p);
  return true;
}

// Makes an SSLObject over two MemoryBIOs and checks rule 2's layout on it.
bool check_layout() {
  PyObject* code = PyUnicode_FromString(
      "import ssl\n"
      "ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)\n"
      "i, o = ssl.MemoryBIO(), ssl.MemoryBIO()\n"
      "obj = ctx.wrap_bio(i, o, server_hostname='uvpy.invalid')\n"
      "result = (obj._sslobj, i, o)\n");
  PyObject* globals = code ? PyDict_New() : nullptr;
  PyObject* builtins = PyEval_GetBuiltins();
  bool ok = false;
  if (globals && PyDict_SetItemString(globals, "__builtins__", builtins) == 0) {
    const char* src = PyUnicode_AsUTF8(code);
    PyObject* r = src ? PyRun_String(src, Py_file_input, globals, globals) : nullptr;
    Py_XDECREF(r);
    PyObject* result = r ? PyDict_GetItemString(globals, "result") : nullptr;
    if (result && PyTuple_Check(result) && PyTuple_GET_SIZE(result) == 3) {
      PyObject* sock = PyTuple_GET_ITEM(result, 0);
      PyObject* in = PyTuple_GET_ITEM(result, 1);
      PyObject* out = PyTuple_GET_ITEM(result, 2);
      sslsocket_type = reinterpret_cast<PyTypeObject*>(Py_NewRef(Py_TYPE(sock)));
      memorybio_type = reinterpret_cast<PyTypeObject*>(Py_NewRef(Py_TYPE(in)));
      SSL* ssl = ssl_of(sock);
      // A bio-wrapped _SSLSocket has no socket; its SSL's app data is the
      // _SSLSocket itself, and its BIOs are the MemoryBIOs'.
      ok = reinterpret_cast<SSLSocketHead*>(sock)->socket == nullptr && ssl != nullptr &&
           api.SSL_get_ex_data(ssl, 0) == sock && api.SSL_get_rbio(ssl) == bio_of(in) &&
           api.SSL_get_wbio(ssl) == bio_of(out);
    }
  }
  PyErr_Clear();
  Py_XDECREF(globals);
  Py_XDECREF(code);
  return ok;
}

bool resolve() {
  if (state != 0) return state > 0;
#if !UVPY_TLS_NATIVE
  return unavailable("this Python build (version or free-threading) has no checked _ssl layout");
#else
  PyObject* file = import_attr("_ssl", "__file__");
  void* handle = nullptr;
  if (file != nullptr) {
    const char* path = PyUnicode_AsUTF8(file);
    if (path) handle = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    Py_DECREF(file);
  }
  PyErr_Clear();
  if (handle == nullptr) handle = RTLD_DEFAULT;  // _ssl built into the interpreter
  bool found = sym(handle, "SSL_read_ex", &api.SSL_read_ex) &&
               sym(handle, "SSL_write_ex", &api.SSL_write_ex) &&
               sym(handle, "SSL_get_error", &api.SSL_get_error) &&
               sym(handle, "SSL_pending", &api.SSL_pending) &&
               sym(handle, "SSL_get_rbio", &api.SSL_get_rbio) &&
               sym(handle, "SSL_get_wbio", &api.SSL_get_wbio) &&
               sym(handle, "SSL_get_ex_data", &api.SSL_get_ex_data) &&
               sym(handle, "BIO_write", &api.BIO_write) && sym(handle, "BIO_read", &api.BIO_read) &&
               sym(handle, "BIO_ctrl_pending", &api.BIO_ctrl_pending) &&
               sym(handle, "ERR_clear_error", &api.ERR_clear_error) &&
               sym(handle, "ERR_peek_error", &api.ERR_peek_error) &&
               sym(handle, "OpenSSL_version_num", &api.OpenSSL_version_num);
  if (handle != RTLD_DEFAULT) dlclose(handle);  // RTLD_NOLOAD took a reference
  if (!found) return unavailable("OpenSSL's functions were not found beside the _ssl module");
  PyObject* number = import_attr("ssl", "OPENSSL_VERSION_NUMBER");
  unsigned long expected = number ? PyLong_AsUnsignedLong(number) : 0;
  Py_XDECREF(number);
  PyErr_Clear();
  if (expected == 0 || api.OpenSSL_version_num() != expected)
    return unavailable("the OpenSSL found is not the one the ssl module reports");
  if (!init_names()) {
    PyErr_Clear();
    return unavailable("out of memory");
  }
  PyObject* states = import_attr("asyncio.sslproto", "SSLProtocolState");
  wrapped_state = states ? PyObject_GetAttrString(states, "WRAPPED") : nullptr;
  Py_XDECREF(states);
  PyErr_Clear();
  if (wrapped_state == nullptr) return unavailable("asyncio.sslproto has no SSLProtocolState.WRAPPED");
  if (!check_layout()) return unavailable("the _ssl objects' layout is not the expected one");
  state = 1;
  return true;
#endif
}

// --- small helpers -------------------------------------------------------------------

// SSL_get_error() reads the thread's error queue, which must be empty before
// the I/O call it explains. Peeking is a read of one slot; clearing walks all
// sixteen, so the queue is cleared only when something is in it.
void clear_errors() {
  if (api.ERR_peek_error() != 0) api.ERR_clear_error();
}

// The SSLProtocol fields the native path reads (rule 7).
PyObject** const kFieldNames[] = {
    &s_state,           &s_app_protocol,        &s_app_reading_paused, &s_app_protocol_is_buffer,
    &s_write_backlog,   &s_ssl_writing_paused,  &s_write_buffer_size,  &s_outgoing_high_water,
    &s_outgoing_low_water, &s_app_writing_paused, &s_ssl_reading_paused, &s_incoming_high_water,
    &s_incoming_low_water};

// The class, and its version tag, whose instances' fields were last shown to
// be plain instance attributes (rule 7).
PyTypeObject* fields_type;
unsigned int fields_tag;

// Whether getattr(obj, name) is obj.__dict__[name] whenever the key is
// there, for every field: attribute lookup is object's own, and the class
// (with its bases) defines no data descriptor of that name. Checked once per
// class and version tag; any change to the class or a base gives it a new
// tag (or none, and then the answer is no).
bool plain_fields(PyTypeObject* type) {
  if (type == fields_type && type->tp_version_tag == fields_tag && fields_tag != 0) return true;
  if (type->tp_getattro != PyObject_GenericGetAttr) return false;
  for (PyObject** name : kFieldNames) {
    PyObject* v = PyObject_GetAttr(reinterpret_cast<PyObject*>(type), *name);
    bool descriptor = v != nullptr && Py_TYPE(v)->tp_descr_set != nullptr;
    Py_XDECREF(v);
    if (v == nullptr && !PyErr_ExceptionMatches(PyExc_AttributeError)) {
      PyErr_Clear();
      return false;
    }
    PyErr_Clear();
    if (descriptor) return false;
  }
  // The lookups above gave the class a version tag if it can have one.
  if (type->tp_version_tag == 0) return false;
  Py_XSETREF(fields_type, reinterpret_cast<PyTypeObject*>(Py_NewRef(type)));
  fields_tag = type->tp_version_tag;
  return true;
}

// Reads of an SSLProtocol's fields for the length of one entry into this
// file (rule 7): from the instance dict where plain_fields() allows, else
// (and for a key the dict lacks) by getattr().
class Fields {
 public:
  explicit Fields(PyObject* obj) : obj_(obj) {
    if (plain_fields(Py_TYPE(obj))) {
      dict_ = PyObject_GenericGetDict(obj, nullptr);
      if (dict_ == nullptr) PyErr_Clear();
    }
  }
  ~Fields() { Py_XDECREF(dict_); }
  Fields(const Fields&) = delete;
  Fields& operator=(const Fields&) = delete;

  PyObject* obj() const { return obj_; }

  // getattr(obj, name): a new reference, or nullptr with an exception.
  PyObject* get(PyObject* name) const {
    if (dict_ != nullptr) {
      PyObject* v = PyDict_GetItemWithError(dict_, name);
      if (v != nullptr) return Py_NewRef(v);
      if (PyErr_Occurred()) return nullptr;
    }
    return PyObject_GetAttr(obj_, name);
  }

  // bool(getattr(obj, name)): 1, 0, or -1 with an exception.
  int truth(PyObject* name) const {
    PyObject* v = get(name);
    if (v == nullptr) return -1;
    int r = v == Py_False ? 0 : v == Py_True ? 1 : PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
  }

  // getattr(obj, name) as a size; -1 with an exception.
  long long size(PyObject* name) const {
    PyObject* v = get(name);
    if (v == nullptr) return -1;
    long long r = PyLong_AsLongLong(v);
    Py_DECREF(v);
    return r;
  }

 private:
  PyObject* obj_;  // borrowed: the caller holds it
  PyObject* dict_ = nullptr;
};

// obj.name(): 0, or -1 with the exception pending.
int call0(PyObject* obj, PyObject* name) {
  PyObject* r = PyObject_CallMethodNoArgs(obj, name);
  if (r == nullptr) return -1;
  Py_DECREF(r);
  return 0;
}

// Keeps a link's objects alive across Python calls that may detach it
// (rule 6): the app may close or replace the connection from a callback.
struct Hold {
  Link link;
  explicit Hold(const Link* l) : link(*l) {
    Py_INCREF(link.sslsocket);
    Py_INCREF(link.incoming);
    Py_INCREF(link.outgoing);
  }
  ~Hold() {
    Py_DECREF(link.sslsocket);
    Py_DECREF(link.incoming);
    Py_DECREF(link.outgoing);
  }
  Hold(const Hold&) = delete;
  Hold& operator=(const Hold&) = delete;
};

// SSLProtocol's `except Exception as ex: self._fatal_error(ex, 'Fatal error
// on SSL protocol')` around its read and write steps. SystemExit and
// KeyboardInterrupt propagate (-1), as they do through asyncio's except.
// Returns 0 when the pending exception was handled, -1 when one is still
// pending.
int protocol_error(PyObject* sslproto) {
  if (fatal_exception()) return -1;
  PyObject* exc = fetch_exception();
  PyObject* r = PyObject_CallMethodObjArgs(sslproto, s_fatal_error, exc, fatal_message, nullptr);
  Py_DECREF(exc);
  if (r == nullptr) return -1;
  Py_DECREF(r);
  return 0;
}

// SSLProtocol._process_outgoing(): the outgoing BIO to the stream unless the
// stream asked to pause, then _control_app_writing() when a threshold says
// so. -1 with an exception pending.
int process_outgoing(Transport* t, Link* link, const Fields& p) {
  int paused = p.truth(s_ssl_writing_paused);
  if (paused < 0) return -1;
  if (!paused) {
    size_t pending = api.BIO_ctrl_pending(link->out);
    if (pending > 0) {
      char* buf = write_scratch.reserve(pending);
      int n = api.BIO_read(link->out, buf, static_cast<int>(pending));
      if (n > 0 && !transport::write_bytes(t, buf, static_cast<size_t>(n))) return -1;
    }
  }
  // Only the water mark that can change the app's state is read.
  int app_paused = p.truth(s_app_writing_paused);
  if (app_paused < 0) return -1;
  long long buffered = p.size(s_write_buffer_size);
  if (buffered < 0 && PyErr_Occurred()) return -1;
  long long bound = p.size(app_paused ? s_outgoing_low_water : s_outgoing_high_water);
  if (bound < 0 && PyErr_Occurred()) return -1;
  long long size = static_cast<long long>(api.BIO_ctrl_pending(link->out)) + buffered;
  if (app_paused ? size <= bound : size >= bound) return call0(p.obj(), s_control_app_writing);
  return 0;
}

// SSLProtocol._control_ssl_reading(), entered only when a threshold says a
// pause or resume is due.
int control_ssl_reading(Link* link, const Fields& p) {
  long long size = static_cast<long long>(api.BIO_ctrl_pending(link->in));
  int paused = p.truth(s_ssl_reading_paused);
  if (paused < 0) return -1;
  long long bound = p.size(paused ? s_incoming_low_water : s_incoming_high_water);
  if (bound < 0 && PyErr_Occurred()) return -1;
  if ((!paused && size >= bound) || (paused && size <= bound)) return call0(p.obj(), s_control_ssl_reading);
  return 0;
}

enum class ReadEnd { kWantRead, kCloseNotify, kOther };

// SSL_read_ex into `data` (a bytes object of `cap` bytes, being filled)
// until OpenSSL has no more: how it stopped, and the bytes read in *total.
// -1 with an exception if growing `data` failed.
int drain_records(Link* link, PyObject** data, size_t* total, ReadEnd* end) {
  size_t cap = *data ? static_cast<size_t>(PyBytes_GET_SIZE(*data)) : 0;
  for (;;) {
    if (*total == cap) {
      // TLS does not expand data (and ssl disables compression), so the
      // first size rarely falls short; a record still undecrypted does.
      cap = cap ? cap * 2 : kRecordMax;
      if (*data == nullptr ? (*data = PyBytes_FromStringAndSize(nullptr, cap)) == nullptr
                           : _PyBytes_Resize(data, static_cast<Py_ssize_t>(cap)) < 0)
        return -1;
    }
    size_t got = 0;
    int rc = api.SSL_read_ex(link->ssl, PyBytes_AS_STRING(*data) + *total, cap - *total, &got);
    if (rc == 1) {
      *total += got;
      continue;
    }
    int err = api.SSL_get_error(link->ssl, rc);
    *end = err == kErrorWantRead ? ReadEnd::kWantRead
                                 : err == kErrorZeroReturn ? ReadEnd::kCloseNotify : ReadEnd::kOther;
    return 0;
  }
}

// SSLProtocol._do_read() for a plain Protocol that is not paused (rule 3).
int read_wrapped(Transport* t, Link* link, const Fields& p) {
  PyObject* sslproto = p.obj();
  // The plaintext waiting is at most the ciphertext in the incoming BIO plus
  // what OpenSSL decrypted and has not returned yet, so SSL_read_ex writes
  // straight into a bytes object of that size: no scratch copy.
  size_t bound = api.BIO_ctrl_pending(link->in) + static_cast<size_t>(api.SSL_pending(link->ssl));
  PyObject* data = nullptr;
  size_t total = 0;
  ReadEnd end = ReadEnd::kWantRead;
  clear_errors();
  if (bound > 0) {
    data = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(bound));
    if (data == nullptr || drain_records(link, &data, &total, &end) < 0) {
      Py_XDECREF(data);
      return protocol_error(sslproto);
    }
  }
  if (total > 0 && total < static_cast<size_t>(PyBytes_GET_SIZE(data)) &&
      _PyBytes_Resize(&data, static_cast<Py_ssize_t>(total)) < 0)
    return protocol_error(sslproto);
  if (total > 0) {
    PyObject* app = p.get(s_app_protocol);
    PyObject* r = app ? PyObject_CallMethodOneArg(app, s_data_received, data) : nullptr;
    Py_XDECREF(app);
    Py_DECREF(data);
    if (r == nullptr) return protocol_error(sslproto);
    Py_DECREF(r);
  } else {
    Py_XDECREF(data);
  }
  if (end == ReadEnd::kCloseNotify) {
    if (call0(sslproto, s_call_eof_received) < 0 || call0(sslproto, s_start_shutdown) < 0)
      return protocol_error(sslproto);
  } else if (end == ReadEnd::kOther) {
    // Rule 5: SSLProtocol reads again, meets the same condition, and deals
    // with it (it catches what it should itself).
    return call0(sslproto, s_do_read);
  }
  PyObject* backlog = p.get(s_write_backlog);
  Py_ssize_t queued = backlog ? PyObject_Length(backlog) : -1;
  Py_XDECREF(backlog);
  int rc = queued < 0 ? -1
           : queued > 0 ? call0(sslproto, s_do_write)
                        : process_outgoing(t, link, p);
  if (rc == 0) rc = control_ssl_reading(link, p);
  return rc < 0 ? protocol_error(sslproto) : 0;
}

// The app transport's write(data) (installed on _tls.SSLProtocolTransport): asyncio's
// _SSLProtocolTransport.write, natively while rule 3 allows, else its
// _write_appdata((data,)).
PyObject* app_write(PyObject* self, PyObject* data) {
  if (!PyBytes_Check(data) && !PyByteArray_Check(data) && !PyMemoryView_Check(data)) {
    PyErr_Format(PyExc_TypeError, "data: expecting a bytes-like instance, got %s", Py_TYPE(data)->tp_name);
    return nullptr;
  }
  int nonempty = PyObject_IsTrue(data);
  if (nonempty <= 0) return nonempty < 0 ? nullptr : Py_NewRef(Py_None);
  PyObject* sslproto = PyObject_GetAttr(self, s_ssl_protocol);
  if (sslproto == nullptr) return nullptr;
  PyObject* result = nullptr;
  PyObject* raw = PyObject_GetAttr(sslproto, s_transport);
  Transport* t = raw && transport::is_transport(raw) ? reinterpret_cast<Transport*>(raw) : nullptr;
  Link* link = t && t->protocol == sslproto ? t->tls : nullptr;
  PyErr_Clear();  // no _transport attribute: the Python path says what is wrong
  bool native = false;
  Fields p(sslproto);
  if (link != nullptr) {
    PyObject* st = p.get(s_state);
    PyObject* backlog = st ? p.get(s_write_backlog) : nullptr;
    Py_ssize_t queued = backlog ? PyObject_Length(backlog) : -1;
    native = st == wrapped_state && queued == 0;
    Py_XDECREF(st);
    Py_XDECREF(backlog);
    PyErr_Clear();
  }
  Py_buffer view;
  if (native && PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) == 0) {
    clear_errors();
    size_t written = 0;
    int rc = api.SSL_write_ex(link->ssl, view.buf, static_cast<size_t>(view.len), &written);
    PyBuffer_Release(&view);
    if (rc == 1) {
      // _write_appdata's `except Exception` covers _process_outgoing too.
      Hold hold(link);
      if (process_outgoing(t, &hold.link, p) == 0 || protocol_error(sslproto) == 0)
        result = Py_NewRef(Py_None);
      goto done;
    }
    // Rule 5: not written; SSLProtocol retries the same bytes (OpenSSL's
    // retry rule) through its backlog.
  }
  PyErr_Clear();
  {
    PyObject* list = PyTuple_Pack(1, data);
    result = list ? PyObject_CallMethodOneArg(sslproto, s_write_appdata, list) : nullptr;
    Py_XDECREF(list);
  }
done:
  Py_XDECREF(raw);
  Py_DECREF(sslproto);
  return result;
}

PyMethodDef app_write_def = {
    "write", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(app_write)), METH_O,
    "Write bytes: encrypted now, sent now if possible, else buffered."};

PyObject* install_write(PyObject*, PyObject* cls) {
  if (!PyType_Check(cls)) {
    PyErr_SetString(PyExc_TypeError, "a class is required");
    return nullptr;
  }
  if (!resolve()) Py_RETURN_FALSE;
  PyObject* descr = PyDescr_NewMethod(reinterpret_cast<PyTypeObject*>(cls), &app_write_def);
  if (descr == nullptr) return nullptr;
  int rc = PyObject_SetAttrString(cls, "write", descr);
  Py_DECREF(descr);
  if (rc < 0) return nullptr;
  Py_RETURN_TRUE;
}

PyObject* status(PyObject*, PyObject*) {
  if (resolve()) return PyUnicode_FromString("native");
  return PyUnicode_FromString(why_unavailable.c_str());
}

PyMethodDef module_methods[] = {
    {"_tls_install_write", install_write, METH_O,
     "Install the native write() on an app-transport class; False if unavailable."},
    {"_tls_status", status, METH_NOARGS,
     "'native' when TLS records take the native path, else why they do not."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

int attach(Transport* t, PyObject* sslproto) {
  detach(t);
  if (!resolve()) return 0;
  PyObject* sslobj = PyObject_GetAttr(sslproto, s_sslobj);
  PyObject* sslsocket = sslobj ? PyObject_GetAttr(sslobj, s_sslobj) : nullptr;
  PyObject* context = sslobj ? PyObject_GetAttr(sslobj, s_context) : nullptr;
  PyObject* msg_callback = context ? PyObject_GetAttr(context, s_msg_callback) : nullptr;
  PyObject* incoming = PyObject_GetAttr(sslproto, s_incoming);
  PyObject* outgoing = PyObject_GetAttr(sslproto, s_outgoing);
  PyErr_Clear();
  int rc = 0;
  // A context with a message callback (ssl's private debugging hook) keeps
  // the Python path: the callback expects the _ssl module's error handling.
  if (sslsocket && Py_TYPE(sslsocket) == sslsocket_type && incoming &&
      Py_TYPE(incoming) == memorybio_type && outgoing && Py_TYPE(outgoing) == memorybio_type &&
      msg_callback == Py_None) {
    SSL* ssl = ssl_of(sslsocket);
    if (ssl && api.SSL_get_rbio(ssl) == bio_of(incoming) && api.SSL_get_wbio(ssl) == bio_of(outgoing)) {
      t->tls = new Link{ssl, bio_of(incoming), bio_of(outgoing), Py_NewRef(sslsocket),
                        Py_NewRef(incoming), Py_NewRef(outgoing)};
      rc = 1;
    }
  }
  Py_XDECREF(sslobj);
  Py_XDECREF(sslsocket);
  Py_XDECREF(context);
  Py_XDECREF(msg_callback);
  Py_XDECREF(incoming);
  Py_XDECREF(outgoing);
  return rc;
}

void detach(Transport* t) {
  Link* link = t->tls;
  if (link == nullptr) return;
  t->tls = nullptr;
  Py_DECREF(link->sslsocket);
  Py_DECREF(link->incoming);
  Py_DECREF(link->outgoing);
  delete link;
}

int traverse(const Link* link, visitproc visit, void* arg) {
  if (link == nullptr) return 0;
  Py_VISIT(link->sslsocket);
  Py_VISIT(link->incoming);
  Py_VISIT(link->outgoing);
  return 0;
}

int on_records(Transport* t, const char* buf, size_t n) {
  Link* link = t->tls;
  PyObject* sslproto = Py_NewRef(t->protocol);
  int rc;
  if (api.BIO_write(link->in, buf, static_cast<int>(n)) != static_cast<int>(n)) {
    PyErr_NoMemory();
    rc = protocol_error(sslproto);
  } else {
    Fields p(sslproto);
    PyObject* st = p.get(s_state);
    int plain = -1;
    if (st == wrapped_state) {
      int paused = p.truth(s_app_reading_paused);
      int buffered = paused < 0 ? -1 : p.truth(s_app_protocol_is_buffer);
      plain = buffered < 0 ? -1 : !paused && !buffered;
    } else if (st != nullptr) {
      plain = 0;
    }
    Py_XDECREF(st);
    if (plain < 0) {
      rc = protocol_error(sslproto);
    } else if (plain) {
      Hold hold(link);
      rc = read_wrapped(t, &hold.link, p);
    } else {
      // Rule 3: the rest of SSLProtocol.buffer_updated(), in Python.
      rc = call0(sslproto, s_records_received);
    }
  }
  Py_DECREF(sslproto);
  return rc;
}

bool ready(PyObject* module) { return PyModule_AddFunctions(module, module_methods) == 0; }

}  // namespace uvpy::py::tls
