// executor_kernel.cc — the submissions of native kernels: uvpy.offload in
// one call (_offload) and parallel_for's chunks (_submit_kernel), the checks
// they make, and the conversion of Python arguments to the kernel ABI
// (executor/uvpy_kernel.h).
//
// Invariants:
//  1. One function, check_call(), makes the checks both submissions make (the
//     argument tuple, the loop, the function pointer), and one,
//     new_kernel_job(), makes every kernel job and converts its arguments:
//     the two paths cannot diverge. Each keeps only its own usage message
//     and what it alone does (the future _offload makes, the chunks).
//  2. A job's arguments are checked (against the signature, when one is
//     given) and converted before it is submitted: a bad argument raises at
//     once and nothing runs.
//  3. Every job pins its own buffers (a parallel_for chunk too) and releases
//     them when it completes, or when it is dropped unsubmitted. A kernel
//     never takes the GIL, so everything it reads is in its kargs.
//  4. _offload's job enters through submit_and_watch: a full queue parks it
//     on the loop's port, the loop never blocks. parallel_for's chunks are
//     bounded (n / grain), and wait for queue room with the GIL released:
//     that is their backpressure.
//  5. A parallel_for that fails part-way leaves no group behind: chunks never
//     submitted are counted off at once; if some were, they complete the
//     group, and its future is cancelled when a chunk's arguments fail.
#include <algorithm>
#include <cstring>

#include "executor_bridge.h"
#include "kernels.h"

namespace uvpy::py::executor {
namespace {

// A kernel submission as check_call() found it. Borrowed references.
struct KernelCall {
  LoopCore* loop;
  uvpy_kernel_fn fn;
  PyObject* keep;  // the kernel's Python object: each job holds it alive
  PyObject* args;  // a tuple
  PyObject* sig;   // str or None
};

// The checks of both submissions (invariant 1), in this order: `args` is a
// tuple (else TypeError(usage)); the loop — `loop`, or the running uvpy loop
// when nullptr — is there and open; `ptr` is a non-NULL function pointer.
bool check_call(PyObject* loop, PyObject* ptr, PyObject* keep, PyObject* args, PyObject* sig,
                const char* usage, KernelCall* call) {
  if (!PyTuple_Check(args)) {
    PyErr_SetString(PyExc_TypeError, usage);
    return false;
  }
  if (loop == nullptr) {
    call->loop = t_running_loop;
    if (call->loop == nullptr || g_job_future_type == nullptr) {
      PyErr_SetString(PyExc_RuntimeError, "uvpy.offload and uvpy.parallel_for need a running uvpy loop");
      return false;
    }
  } else if (!check_loop(loop, &call->loop)) {
    return false;
  }
  void* fn = PyLong_AsVoidPtr(ptr);
  if (fn == nullptr) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "kernel is a NULL function pointer");
    return false;
  }
  call->fn = reinterpret_cast<uvpy_kernel_fn>(fn);
  call->keep = keep;
  call->args = args;
  call->sig = sig;
  return true;
}

// Converts Python arguments to the kernel ABI, pinning buffers. `sig`
// (optional str): per argument 'r' buffer, 'w' writable buffer, 'i' int,
// 'd' float.
bool convert_args(ExecJob* j, PyObject* args, PyObject* sig) {
  const Py_ssize_t n = PyTuple_GET_SIZE(args);
  const char* s = nullptr;
  if (sig != Py_None) {
    s = PyUnicode_AsUTF8(sig);
    if (s == nullptr) return false;
    if (static_cast<Py_ssize_t>(strlen(s)) != n || strspn(s, "rwid") != strlen(s)) {
      PyErr_Format(PyExc_ValueError,
                   "invalid signature %R for %zd arguments: use one of 'r' (buffer), "
                   "'w' (writable buffer), 'i' (int), 'd' (float) per argument",
                   sig, n);
      return false;
    }
  }
  j->kargs.resize(n);
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* o = PyTuple_GET_ITEM(args, i);
    uvpy_arg_t& k = j->kargs[i];
    k = uvpy_arg_t{};
    const char want = s ? s[i] : 0;
    if (PyLong_Check(o) && !PyBool_Check(o) && (want == 0 || want == 'i' || want == 'd')) {
      if (want == 'd') {
        k.kind = UVPY_ARG_FLOAT;
        k.d = PyLong_AsDouble(o);
      } else {
        k.kind = UVPY_ARG_INT;
        k.i = PyLong_AsLongLong(o);
      }
      if (PyErr_Occurred()) return false;
    } else if (PyFloat_Check(o) && (want == 0 || want == 'd')) {
      k.kind = UVPY_ARG_FLOAT;
      k.d = PyFloat_AS_DOUBLE(o);
    } else if (PyObject_CheckBuffer(o) && (want == 0 || want == 'r' || want == 'w')) {
      Py_buffer view;
      int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT;
      if (PyObject_GetBuffer(o, &view, flags | PyBUF_WRITABLE) < 0) {
        if (want == 'w') {
          PyErr_Clear();
          PyErr_Format(PyExc_TypeError, "argument %zd must be a writable buffer, got read-only %s",
                       i, Py_TYPE(o)->tp_name);
          return false;
        }
        PyErr_Clear();
        if (PyObject_GetBuffer(o, &view, flags) < 0) return false;
      }
      j->views.push_back(view);
      k.kind = UVPY_ARG_BUFFER;
      k.readonly = view.readonly;
      k.ptr = view.buf;
      k.len = view.len;
      k.itemsize = view.itemsize;
    } else {
      const char* need = want == 'r'   ? "a buffer"
                         : want == 'w' ? "a writable buffer"
                         : want == 'i' ? "an int"
                         : want == 'd' ? "a float"
                                       : "a buffer, int or float";
      PyErr_Format(PyExc_TypeError, "argument %zd must be %s, not %s", i, need, Py_TYPE(o)->tp_name);
      return false;
    }
  }
  return true;
}

// Every kernel job is made here (invariant 1): over [0, 1) until the caller
// sets begin/end, for `future` (nullptr: a chunk, whose Group holds it), its
// arguments converted and pinned. nullptr with an exception set.
ExecJob* new_kernel_job(const KernelCall& call, PyObject* future) {
  ExecJob* j = new_job(kKernel, loop_port(call.loop), future);
  if (j == nullptr) return nullptr;
  j->kernel = call.fn;
  j->keepalive = Py_NewRef(call.keep);
  if (!convert_args(j, call.args, call.sig)) {
    Py_DECREF(j);  // releases whatever convert_args pinned
    return nullptr;
  }
  return j;
}

// _offload(ptr, keep, args, sig) -> a _JobFuture of the running uvpy loop
// (pending in the port's waiting list while the pool's queue is full).
// uvpy.offload in one call from Python.
PyObject* offload_fast(PyObject*, PyObject* const* a, Py_ssize_t nargs) {
  static const char kUsage[] = "_offload(ptr, keep, args, sig)";
  KernelCall call;
  if (nargs != 4) {
    PyErr_SetString(PyExc_TypeError, kUsage);
    return nullptr;
  }
  if (!check_call(nullptr, a[0], a[1], a[2], a[3], kUsage, &call)) return nullptr;
  static PyObject* loop_kw = Py_BuildValue("(s)", "loop");
  PyObject* loop_arg = reinterpret_cast<PyObject*>(call.loop);
  PyObject* fut = PyObject_Vectorcall(g_job_future_type, &loop_arg, 0, loop_kw);
  if (fut == nullptr) return nullptr;
  ExecJob* j = new_kernel_job(call, fut);
  if (j == nullptr) {
    Py_DECREF(fut);
    return nullptr;
  }
  PyObject* ok = submit_and_watch(j, fut);  // True on a loop port, or an error
  if (ok == nullptr) {
    Py_DECREF(fut);
    return nullptr;
  }
  Py_DECREF(ok);
  return fut;
}

// Drops a group that no chunk will complete any more.
void drop_group(Group* g) {
  Py_DECREF(g->future);
  delete g;
}

// _submit_kernel(loop, future, fnptr, keepalive, args, sig, n, grain) -> True
//   n < 0: one call over [0, 1) (offload); else chunks of `grain` over [0, n)
PyObject* submit_kernel(PyObject*, PyObject* const* a, Py_ssize_t nargs) {
  static const char kUsage[] = "_submit_kernel(loop, future, ptr, keep, args, sig, n, grain)";
  KernelCall call;
  if (nargs != 8) {
    PyErr_SetString(PyExc_TypeError, kUsage);
    return nullptr;
  }
  if (!check_call(a[0], a[2], a[3], a[4], a[5], kUsage, &call)) return nullptr;
  PyObject* future = a[1];
  long long n = PyLong_AsLongLong(a[6]);
  long long grain = PyLong_AsLongLong(a[7]);
  if (PyErr_Occurred()) return nullptr;
  if (n < 0) {
    ExecJob* j = new_kernel_job(call, future);
    if (j == nullptr) return nullptr;
    return submit_and_watch(j, future);
  }
  if (grain <= 0) {
    PyErr_SetString(PyExc_ValueError, "grain must be positive");
    return nullptr;
  }
  if (n == 0) {
    resolve(future, Py_None, nullptr);
    Py_RETURN_TRUE;
  }
  auto* g = new Group{Py_NewRef(future), 0};
  const long long chunks = (n + grain - 1) / grain;
  g->remaining = static_cast<Py_ssize_t>(chunks);
  for (long long c = 0; c < chunks; ++c) {
    ExecJob* j = new_kernel_job(call, nullptr);
    if (j == nullptr) {
      g->remaining -= static_cast<Py_ssize_t>(chunks - c);
      if (g->remaining == 0) {
        drop_group(g);
      } else {  // chunks already queued complete the group; fail it now
        PyObject* cancel = PyObject_CallMethod(future, "cancel", nullptr);
        Py_XDECREF(cancel);
      }
      return nullptr;
    }
    j->begin = c * grain;
    j->end = std::min<long long>(n, (c + 1) * grain);
    j->group = g;
    // The group's chunks are bounded; waiting for queue room (GIL released)
    // is the backpressure here (invariant 4).
    if (submit(j, true) != 0) {
      j->group = nullptr;
      Py_DECREF(j);
      g->remaining -= static_cast<Py_ssize_t>(chunks - c);
      if (g->remaining == 0) drop_group(g);
      return nullptr;
    }
    int rc = add_done_callback(future, j);
    Py_DECREF(j);
    if (rc < 0) {  // this chunk is in flight and completes the group
      g->remaining -= static_cast<Py_ssize_t>(chunks - c - 1);
      return nullptr;
    }
  }
  Py_RETURN_TRUE;
}

PyObject* builtin_kernels(PyObject*, PyObject*) {
  namespace k = exec::kernels;
  return Py_BuildValue("{s:N,s:N,s:N,s:N,s:N,s:N}", "sum_f64", PyLong_FromVoidPtr((void*)&k::sum_f64),
                       "dot_f64", PyLong_FromVoidPtr((void*)&k::dot_f64), "axpy_f64",
                       PyLong_FromVoidPtr((void*)&k::axpy_f64), "sort_f64",
                       PyLong_FromVoidPtr((void*)&k::sort_f64), "fnv1a64",
                       PyLong_FromVoidPtr((void*)&k::fnv1a64), "noop", PyLong_FromVoidPtr((void*)&k::noop));
}

PyMethodDef functions[] = {
    UVPY_EXEC_FAST("_offload", offload_fast),
    UVPY_EXEC_FAST("_submit_kernel", submit_kernel),
    {"_builtin_kernels", builtin_kernels, METH_NOARGS, nullptr},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

bool init_kernels(PyObject* module) { return PyModule_AddFunctions(module, functions) == 0; }

}  // namespace uvpy::py::executor
