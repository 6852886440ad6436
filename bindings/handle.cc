// handle.cc — Handle and TimerHandle: what call_soon/call_later return, and
// what the reactor's queues hold (through kHandleOps).
//
// Rules (mirroring asyncio.events.Handle):
//  1. run() does nothing for a cancelled handle.
//  2. run() enters the handle's context, vectorcalls the callback, and
//     reports an exception to loop.call_exception_handler(), except
//     SystemExit and KeyboardInterrupt, which abort the loop iteration
//     (kHandleOps.run returns -1 with the exception set).
//  3. cancel() drops callback and args at once (keeping a repr in debug
//     mode); a TimerHandle also leaves the timer heap, so a cancelled timer
//     costs nothing afterwards.
//  4. run() holds its own references to callback and args, because the
//     callback may cancel its own handle.
//  5. A TimerHandle is untracked by the cyclic GC while it sits in the timer
//     heap, and so is the context it holds if that was tracked (schedule_at;
//     `context_untracked` remembers it). Whatever takes the handle out --
//     cancel(), the run or the release of its reactor reference -- tracks
//     both again (ensure_tracked). While the heap holds the handle it is
//     reachable from the reactor and so can never be garbage, but 100k
//     pending timeouts and their context copies would otherwise be walked by
//     every full collection, and would trigger more of them (rloop's handles
//     are never tracked at all). Everything they reference stays alive
//     through them, exactly as through any reference the GC cannot see;
//     tracking an object again is always safe. The order matters: CPython's
//     context dealloc untracks without checking (a crash if untracked), so
//     the context is tracked again before the handle can let go of it --
//     which is why every exit from the heap passes through ensure_tracked()
//     before any reference is dropped.
#include <cmath>
#include <cstring>

#include "clock.h"
#include "py.h"

namespace uvpy::py {

Hooks hooks;

namespace {

// Plain Handles are the most allocated object on a busy loop (one per
// call_soon and per task step). Recycling them skips the allocator and,
// more importantly, the GC's allocation counter that triggers collections.
// Sized for bursts: a loop that queues a thousand callbacks (or timers)
// before running them would otherwise allocate most of them fresh every
// round. At most ~1536 idle objects (~150 KiB) are kept.
constexpr int kFreeListMax = 1024;
Handle* free_list[kFreeListMax];
int free_count = 0;
constexpr int kTimerFreeListMax = 512;
TimerHandle* timer_free_list[kTimerFreeListMax];
int timer_free_count = 0;

// Rule 5: every way out of the timer heap passes through one of these.
inline void ensure_tracked(PyObject* obj) {
  if (PyObject_GC_IsTracked(obj)) return;
  PyObject_GC_Track(obj);
  auto* h = reinterpret_cast<Handle*>(obj);
  if (h->context_untracked) {
    h->context_untracked = false;
    if (h->context && !PyObject_GC_IsTracked(h->context)) PyObject_GC_Track(h->context);
  }
}

void retain(void* obj) { Py_INCREF(static_cast<PyObject*>(obj)); }
void release(void* obj) {
  ensure_tracked(static_cast<PyObject*>(obj));
  Py_DECREF(static_cast<PyObject*>(obj));
}

// Reports the pending exception the way asyncio's Handle._run does. Returns
// -1 when it must propagate (SystemExit/KeyboardInterrupt), else 0.
int report_exception(Handle* h, PyObject* callback, PyObject* args) {
  if (PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
    return -1;
  PyObject* exc = fetch_exception();
  PyObject* ctx = nullptr;
  PyObject* msg = nullptr;
  PyObject* cb_repr = PyObject_CallFunctionObjArgs(hooks.callback_repr, callback, args, nullptr);
  if (cb_repr) msg = PyUnicode_FromFormat("Exception in callback %U", cb_repr);
  Py_XDECREF(cb_repr);
  if (msg) ctx = PyDict_New();
  int rc = 0;
  if (ctx && PyDict_SetItemString(ctx, "message", msg) == 0 &&
      PyDict_SetItemString(ctx, "exception", exc) == 0 &&
      PyDict_SetItemString(ctx, "handle", reinterpret_cast<PyObject*>(h)) == 0 &&
      (h->source_traceback == nullptr ||
       PyDict_SetItemString(ctx, "source_traceback", h->source_traceback) == 0)) {
    PyObject* r = PyObject_CallMethod(reinterpret_cast<PyObject*>(h->loop),
                                      "call_exception_handler", "O", ctx);
    if (r == nullptr) {
      if (PyErr_ExceptionMatches(PyExc_SystemExit) ||
          PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
        rc = -1;
      else
        PyErr_WriteUnraisable(reinterpret_cast<PyObject*>(h));
    }
    Py_XDECREF(r);
  } else {
    PyErr_WriteUnraisable(reinterpret_cast<PyObject*>(h));
  }
  Py_XDECREF(ctx);
  Py_XDECREF(msg);
  Py_DECREF(exc);
  return rc;
}

int call_in_context(Handle* h) {
  PyObject* callback = h->callback;
  PyObject* args = h->args;
  Py_INCREF(callback);
  Py_INCREF(args);
  PyObject* context = h->context;
  Py_XINCREF(context);
  int rc = 0;
  if (context && PyContext_Enter(context) < 0) {
    rc = report_exception(h, callback, args);
  } else {
    PyObject* res = PyObject_Vectorcall(callback, &PyTuple_GET_ITEM(args, 0),
                                        static_cast<size_t>(PyTuple_GET_SIZE(args)), nullptr);
    if (context) PyContext_Exit(context);
    if (res == nullptr)
      rc = report_exception(h, callback, args);
    else
      Py_DECREF(res);
  }
  Py_XDECREF(context);
  Py_DECREF(callback);
  Py_DECREF(args);
  return rc;
}

int run(void* obj) {
  ensure_tracked(static_cast<PyObject*>(obj));
  auto* h = static_cast<Handle*>(obj);
  // Cleared by the GC (tp_clear) while still queued: nothing left to call.
  if (h->cancelled || h->callback == nullptr || h->loop == nullptr) return 0;
  // current_handle names what runs, for the watchdog (watchdog.cc) and
  // debug reports.
  PyObject* outer = h->loop->current_handle;
  h->loop->current_handle = reinterpret_cast<PyObject*>(h);
  if (!h->loop->debug && !h->loop->warn_slow) {
    const int rc = call_in_context(h);
    h->loop->current_handle = outer;
    return rc;
  }
  // Debug mode, or warn_slow_callbacks: warn about callbacks slower than
  // slow_callback_duration (two clock reads per callback).
  double t0 = loop::monotonic_now();
  int rc = call_in_context(h);
  double dt = loop::monotonic_now() - t0;
  h->loop->current_handle = outer;
  if (rc == 0 && dt >= h->loop->slow_callback_duration && hooks.slow_callback) {
    PyObject* r = PyObject_CallFunction(hooks.slow_callback, "Od", h, dt);
    if (r == nullptr) PyErr_WriteUnraisable(hooks.slow_callback);
    Py_XDECREF(r);
  }
  return rc;
}

void handle_cancel(Handle* h) {
  if (h->cancelled) return;
  h->cancelled = true;
  ensure_tracked(reinterpret_cast<PyObject*>(h));
  if (Py_TYPE(h) == &TimerHandleType || PyType_IsSubtype(Py_TYPE(h), &TimerHandleType)) {
    auto* t = reinterpret_cast<TimerHandle*>(h);
    // The heap's reference goes away here; our caller still holds one.
    if (t->node.scheduled()) h->loop->reactor->cancel_timer(&t->node);
  }
  if (h->loop->debug && h->repr == nullptr) {
    h->cancelled = false;  // repr of the live handle, as asyncio keeps it
    h->repr = PyObject_Repr(reinterpret_cast<PyObject*>(h));
    h->cancelled = true;
    if (h->repr == nullptr) PyErr_WriteUnraisable(reinterpret_cast<PyObject*>(h));
  }
  Py_CLEAR(h->callback);
  Py_CLEAR(h->args);
  Py_INCREF(Py_None);
  h->callback = Py_None;
  h->args = PyTuple_New(0);
}

// ---------------------------------------------------------------------------
// Python-visible methods

PyObject* Handle_cancel(PyObject* self, PyObject*) {
  handle_cancel(reinterpret_cast<Handle*>(self));
  Py_RETURN_NONE;
}

PyObject* Handle_cancelled(PyObject* self, PyObject*) {
  return PyBool_FromLong(reinterpret_cast<Handle*>(self)->cancelled);
}

PyObject* Handle_get_context(PyObject* self, PyObject*) {
  PyObject* ctx = reinterpret_cast<Handle*>(self)->context;
  return Py_NewRef(ctx ? ctx : Py_None);
}

PyObject* Handle_run_py(PyObject* self, PyObject*) {
  Py_INCREF(self);
  int rc = run(self);
  Py_DECREF(self);
  if (rc < 0) return nullptr;
  Py_RETURN_NONE;
}

PyObject* Handle_get_callback(PyObject* self, void*) {
  auto* h = reinterpret_cast<Handle*>(self);
  if (h->cancelled) Py_RETURN_NONE;
  return Py_NewRef(h->callback);
}

PyObject* Handle_get_args(PyObject* self, void*) {
  auto* h = reinterpret_cast<Handle*>(self);
  if (h->cancelled) Py_RETURN_NONE;
  return Py_NewRef(h->args);
}

PyObject* Handle_get_cancelled(PyObject* self, void*) { return Handle_cancelled(self, nullptr); }

PyObject* Handle_get_loop(PyObject* self, void*) {
  return Py_NewRef(reinterpret_cast<PyObject*>(reinterpret_cast<Handle*>(self)->loop));
}

PyObject* Handle_get_source_traceback(PyObject* self, void*) {
  PyObject* tb = reinterpret_cast<Handle*>(self)->source_traceback;
  return Py_NewRef(tb ? tb : Py_None);
}

PyObject* Handle_get_repr(PyObject* self, void*) {
  PyObject* r = reinterpret_cast<Handle*>(self)->repr;
  return Py_NewRef(r ? r : Py_None);
}

PyObject* Handle_repr(PyObject* self) {
  auto* h = reinterpret_cast<Handle*>(self);
  if (h->repr) return Py_NewRef(h->repr);
  if (hooks.handle_repr == nullptr) return PyUnicode_FromFormat("<%s>", Py_TYPE(self)->tp_name);
  return PyObject_CallOneArg(hooks.handle_repr, self);
}

int Handle_traverse(PyObject* self, visitproc visit, void* arg) {
  auto* h = reinterpret_cast<Handle*>(self);
  Py_VISIT(h->callback);
  Py_VISIT(h->args);
  Py_VISIT(h->context);
  Py_VISIT(reinterpret_cast<PyObject*>(h->loop));
  Py_VISIT(h->source_traceback);
  return 0;
}

int Handle_clear(PyObject* self) {
  auto* h = reinterpret_cast<Handle*>(self);
  Py_CLEAR(h->callback);
  Py_CLEAR(h->args);
  Py_CLEAR(h->context);
  Py_CLEAR(h->loop);
  Py_CLEAR(h->source_traceback);
  Py_CLEAR(h->repr);
  return 0;
}

void Handle_dealloc(PyObject* self) {
  PyObject_GC_UnTrack(self);
  auto* h = reinterpret_cast<Handle*>(self);
  if (h->weakreflist) PyObject_ClearWeakRefs(self);
  Handle_clear(self);
  if (Py_TYPE(self) == &HandleType && free_count < kFreeListMax) {
    free_list[free_count++] = h;
    return;
  }
  if (Py_TYPE(self) == &TimerHandleType || PyType_IsSubtype(Py_TYPE(self), &TimerHandleType))
    reinterpret_cast<TimerHandle*>(self)->node.~TimerNode();
  if (Py_TYPE(self) == &TimerHandleType && timer_free_count < kTimerFreeListMax) {
    timer_free_list[timer_free_count++] = reinterpret_cast<TimerHandle*>(self);
    return;
  }
  Py_TYPE(self)->tp_free(self);
}

// Handle(callback, args, loop, context=None), as asyncio.Handle.
PyObject* Handle_new(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
  static const char* kw[] = {"callback", "args", "loop", "context", nullptr};
  PyObject *callback, *cargs, *loop, *context = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|O:Handle", const_cast<char**>(kw),
                                   &callback, &cargs, &loop, &context))
    return nullptr;
  if (!PyObject_TypeCheck(loop, &LoopCoreType)) {
    PyErr_SetString(PyExc_TypeError, "loop must be a uvpy loop");
    return nullptr;
  }
  PyObject* tup = cargs == Py_None ? PyTuple_New(0) : PySequence_Tuple(cargs);
  if (tup == nullptr) return nullptr;
  Handle* h = new_handle(type, callback, tup, reinterpret_cast<LoopCore*>(loop), context);
  Py_DECREF(tup);
  return reinterpret_cast<PyObject*>(h);
}

PyObject* TimerHandle_when(PyObject* self, PyObject*) {
  return PyFloat_FromDouble(reinterpret_cast<TimerHandle*>(self)->node.when);
}

PyObject* TimerHandle_get_scheduled(PyObject* self, void*) {
  return PyBool_FromLong(reinterpret_cast<TimerHandle*>(self)->node.scheduled());
}

PyObject* TimerHandle_richcompare(PyObject* a, PyObject* b, int op) {
  if (!PyObject_TypeCheck(b, &TimerHandleType)) Py_RETURN_NOTIMPLEMENTED;
  double x = reinterpret_cast<TimerHandle*>(a)->node.when;
  double y = reinterpret_cast<TimerHandle*>(b)->node.when;
  if (op == Py_EQ || op == Py_NE) {
    bool eq = a == b;
    if (!eq && x == y) {
      auto* ha = reinterpret_cast<Handle*>(a);
      auto* hb = reinterpret_cast<Handle*>(b);
      eq = ha->cancelled == hb->cancelled && ha->callback == hb->callback;
      if (eq) {
        int r = PyObject_RichCompareBool(ha->args, hb->args, Py_EQ);
        if (r < 0) return nullptr;
        eq = r;
      }
    }
    return PyBool_FromLong(op == Py_EQ ? eq : !eq);
  }
  Py_RETURN_RICHCOMPARE(x, y, op);
}

// asyncio's TimerHandle hashes as hash(self._when). A float's hash is its
// value's, so a float made here hashes alike, with public API only (the
// double-hashing function, _Py_HashDouble, is private on every version).
// NaN hashes by identity (3.10+): asyncio's is that of the one float object
// the handle keeps, stable for the handle's life, so here it is the handle's
// own identity, which object.__hash__ gives.
Py_hash_t TimerHandle_hash(PyObject* self) {
  double when = reinterpret_cast<TimerHandle*>(self)->node.when;
  if (std::isnan(when)) return PyBaseObject_Type.tp_hash(self);
  PyObject* f = PyFloat_FromDouble(when);
  if (f == nullptr) return -1;
  Py_hash_t h = PyObject_Hash(f);
  Py_DECREF(f);
  return h;
}

PyMethodDef Handle_methods[] = {
    {"cancel", Handle_cancel, METH_NOARGS, "Cancel the callback; a no-op if already run or cancelled."},
    {"cancelled", Handle_cancelled, METH_NOARGS, "Return True if the callback was cancelled."},
    {"get_context", Handle_get_context, METH_NOARGS, "Return the contextvars.Context the callback runs in."},
    {"_run", Handle_run_py, METH_NOARGS, nullptr},
    {nullptr, nullptr, 0, nullptr},
};

PyGetSetDef Handle_getset[] = {
    {"_callback", Handle_get_callback, nullptr, nullptr, nullptr},
    {"_args", Handle_get_args, nullptr, nullptr, nullptr},
    {"_cancelled", Handle_get_cancelled, nullptr, nullptr, nullptr},
    {"_loop", Handle_get_loop, nullptr, nullptr, nullptr},
    {"_source_traceback", Handle_get_source_traceback, nullptr, nullptr, nullptr},
    {"_repr", Handle_get_repr, nullptr, nullptr, nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

PyMethodDef TimerHandle_methods[] = {
    {"when", TimerHandle_when, METH_NOARGS, "Return the scheduled time as a float (loop.time() clock)."},
    {nullptr, nullptr, 0, nullptr},
};

PyGetSetDef TimerHandle_getset[] = {
    {"_scheduled", TimerHandle_get_scheduled, nullptr, nullptr, nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

}  // namespace

const loop::CallbackOps kHandleOps{retain, run, release};

Handle* new_handle(PyTypeObject* type, PyObject* callback, PyObject* args, LoopCore* loop,
                   PyObject* context) {
  Handle* h;
  if (type == &HandleType && free_count > 0) {
    // PyObject_Init sets the type and a reference count of 1 (what
    // PyObject_GC_New does after allocating), and, unlike a fresh
    // allocation, does not count towards the next collection.
    h = free_list[--free_count];
    PyObject_Init(reinterpret_cast<PyObject*>(h), type);
  } else if (type == &TimerHandleType && timer_free_count > 0) {
    h = &timer_free_list[--timer_free_count]->base;
    PyObject_Init(reinterpret_cast<PyObject*>(h), type);
  } else {
    h = PyObject_GC_New(Handle, type);
    if (h == nullptr) return nullptr;
  }
  if (type == &TimerHandleType || PyType_IsSubtype(type, &TimerHandleType))
    new (&reinterpret_cast<TimerHandle*>(h)->node) loop::TimerNode();
  h->callback = Py_NewRef(callback);
  h->args = Py_NewRef(args);
  h->loop = reinterpret_cast<LoopCore*>(Py_NewRef(reinterpret_cast<PyObject*>(loop)));
  h->source_traceback = nullptr;
  h->repr = nullptr;
  h->weakreflist = nullptr;
  h->cancelled = false;
  h->context_untracked = false;
  if (context == nullptr || context == Py_None) {
    h->context = PyContext_CopyCurrent();
    if (h->context == nullptr) {
      Py_DECREF(h);
      return nullptr;
    }
  } else {
    h->context = Py_NewRef(context);
  }
  if (loop->debug && hooks.extract_stack) {
    h->source_traceback = PyObject_CallNoArgs(hooks.extract_stack);
    if (h->source_traceback == nullptr) {
      Py_DECREF(h);
      return nullptr;
    }
  }
  if (type == &TimerHandleType || PyType_IsSubtype(type, &TimerHandleType))
    reinterpret_cast<TimerHandle*>(h)->node.cb = as_callback(h);
  PyObject_GC_Track(h);
  return h;
}

PyTypeObject HandleType = [] {
  PyTypeObject t{PyVarObject_HEAD_INIT(nullptr, 0)};
  t.tp_name = "uvpy.Handle";
  t.tp_basicsize = sizeof(Handle);
  t.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE;
  t.tp_doc = "A callback scheduled on a uvpy loop (like asyncio.Handle).";
  t.tp_new = Handle_new;
  t.tp_dealloc = Handle_dealloc;
  t.tp_traverse = Handle_traverse;
  t.tp_clear = Handle_clear;
  t.tp_repr = Handle_repr;
  t.tp_methods = Handle_methods;
  t.tp_getset = Handle_getset;
  t.tp_weaklistoffset = offsetof(Handle, weakreflist);
  return t;
}();

PyTypeObject TimerHandleType = [] {
  PyTypeObject t{PyVarObject_HEAD_INIT(nullptr, 0)};
  t.tp_name = "uvpy.TimerHandle";
  t.tp_basicsize = sizeof(TimerHandle);
  t.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC;
  t.tp_doc = "A callback scheduled for a point in time on a uvpy loop (like asyncio.TimerHandle).";
  t.tp_base = &HandleType;
  t.tp_new = nullptr;
  t.tp_dealloc = Handle_dealloc;
  t.tp_traverse = Handle_traverse;
  t.tp_clear = Handle_clear;
  t.tp_repr = Handle_repr;
  t.tp_richcompare = TimerHandle_richcompare;
  t.tp_hash = TimerHandle_hash;
  t.tp_methods = TimerHandle_methods;
  t.tp_getset = TimerHandle_getset;
  return t;
}();

void cancel_handle(Handle* h) { handle_cancel(h); }

PyObject* fetch_exception() {
  PyObject *type, *exc, *tb;
  PyErr_Fetch(&type, &exc, &tb);
  PyErr_NormalizeException(&type, &exc, &tb);
  if (tb) PyException_SetTraceback(exc, tb);
  Py_XDECREF(type);
  Py_XDECREF(tb);
  return exc;
}

}  // namespace uvpy::py
