// py.h — shared declarations of the bindings layer (the only place that
// includes Python.h). Types are defined with the raw CPython API where a
// profile says per-call cost matters (handles, the loop's scheduling
// methods); pybind11 owns the module itself.
#pragma once
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <sys/socket.h>

#include <cstring>

#include "reactor.h"

namespace uvpy::py {

struct LoopCore;

// asyncio.Handle-alike. `loop` is a strong reference, as in asyncio.
struct Handle {
  PyObject_HEAD
  PyObject* callback;
  PyObject* args;  // a tuple, never NULL while not cancelled
  PyObject* context;
  LoopCore* loop;
  PyObject* source_traceback;  // debug mode only, else NULL
  PyObject* repr;              // kept on cancel in debug mode
  PyObject* weakreflist;
  bool cancelled;
  bool context_untracked;  // handle.cc rule 5: we untracked `context`
};

// asyncio.TimerHandle-alike: a Handle plus its place in the timer heap.
struct TimerHandle {
  Handle base;
  uvpy::loop::TimerNode node;
};

struct LoopCore {
  PyObject_HEAD
  uvpy::loop::Reactor* reactor;
  PyObject* weakreflist;
  unsigned long thread_id;  // of the thread running the loop, 0 if none
  double slow_callback_duration;
  PyObject* current_handle;  // borrowed; set while a Handle runs
  void* exec_port;           // executor_port.cc's per-loop Port, lazily made
  void* watchdog;            // watchdog.cc's state while watched, else NULL
  bool debug;
  bool running;
  bool warn_slow;  // report slow Handles without debug mode (handle.cc)
};

// The uvpy loop running on this thread (set by _run_forever_native), or
// NULL: asyncio.get_running_loop() without the getpid() check.
extern thread_local LoopCore* t_running_loop;

// Takes the pending exception: normalized, with its traceback attached.
// Returns a new reference (the caller checked PyErr_Occurred()).
PyObject* fetch_exception();

// The pending exception is SystemExit or KeyboardInterrupt: what asyncio
// lets through its `except Exception` and the bindings let abort a drain.
inline bool fatal_exception() {
  return PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt);
}

// *slot = an interned str; false with an exception set.
// errno to exception, in one place (as uvloop's convert_error): the OSError
// subclass that OSError(err, strerror(err)) picks (ConnectionResetError for
// ECONNRESET, ...), which is what the socket module raises for the same
// failure. os_error() returns it (a new reference, or nullptr with an
// exception); raise_os_error() sets it and returns nullptr.
inline PyObject* os_error(int err) {
  return PyObject_CallFunction(PyExc_OSError, "is", err, strerror(err));
}
inline PyObject* raise_os_error(int err) {
  PyObject* exc = os_error(err);
  if (exc != nullptr) {
    PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc)), exc);
    Py_DECREF(exc);
  }
  return nullptr;
}

inline bool intern(PyObject** slot, const char* s) {
  *slot = PyUnicode_InternFromString(s);
  return *slot != nullptr;
}

// getattr(import module, name): a new reference, or nullptr with an exception.
inline PyObject* import_attr(const char* module, const char* name) {
  PyObject* m = PyImport_ImportModule(module);
  if (m == nullptr) return nullptr;
  PyObject* attr = PyObject_GetAttrString(m, name);
  Py_DECREF(m);
  return attr;
}

extern PyTypeObject HandleType;
extern PyTypeObject TimerHandleType;
extern PyTypeObject LoopCoreType;
extern const uvpy::loop::CallbackOps kHandleOps;

// Creates a handle. `args` must be a tuple; `context` may be NULL/None
// (then the current context is copied, as asyncio does).
Handle* new_handle(PyTypeObject* type, PyObject* callback, PyObject* args, LoopCore* loop,
                   PyObject* context);

// Python-level helpers registered by uvpy/_loop.py through _set_hooks():
// formatting and logging code that is not worth duplicating in C++.
struct Hooks {
  PyObject* extract_stack = nullptr;    // () -> list, the caller's stack
  PyObject* handle_repr = nullptr;      // (handle) -> str
  PyObject* callback_repr = nullptr;    // (callback, args) -> str
  PyObject* slow_callback = nullptr;    // (handle, seconds) -> None
};
extern Hooks hooks;

void cancel_handle(Handle* h);

inline loop::Callback as_callback(Handle* h) { return loop::Callback{&kHandleOps, h}; }

bool ready_types(PyObject* module);
// An accepted AF_INET/AF_INET6/AF_UNIX peer's address as socket.accept()
// spells it; None for an empty IP address or another family (loop_core.cc).
PyObject* peer_address(const sockaddr_storage& ss, socklen_t len);
// Creates Acceptor (acceptor.cc), the native accept step of a stream server.
bool ready_acceptor(PyObject* module);
bool init_executor(PyObject* module);
void close_exec_port(LoopCore* loop);
// watchdog.cc: stops the loop's watchdog, if any (GIL held; released
// around the join).
void stop_watchdog(LoopCore* loop);
PyObject* LoopCore_set_watchdog(PyObject* self, PyObject* const* args, Py_ssize_t nargs);
PyObject* exec_pending(LoopCore* loop);
// How long the loop should spin for completions before blocking (ns).
int64_t exec_spin_ns(LoopCore* loop);
// Creates TransportCore (transport.cc), a subclass of asyncio.Transport.
bool ready_transport(PyObject* module);
// A native subclass of asyncio.Transport from spec, added to module under
// the last part of spec's name. Its C struct must start with PyObject_HEAD,
// then BaseTransport's one slot (`_extra`, at extra_offset), then its own
// fields (from fields_offset): checked against asyncio's classes, with
// ImportError where they differ. nullptr with an exception on failure.
PyTypeObject* native_transport_type(PyObject* module, PyType_Spec* spec, Py_ssize_t extra_offset,
                                    Py_ssize_t fields_offset);
// Creates DatagramCore (datagram.cc), the native base of DatagramTransport.
bool ready_datagram(PyObject* module);

}  // namespace uvpy::py
