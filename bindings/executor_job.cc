// executor_job.cc — ExecJob, a Python object embedding an exec::Job: what a
// worker runs, how its result reaches the future, and how cancelling the
// future reaches the job. Also the submissions of Python callables
// (_submit_call for run_in_executor, _submit_thread for NativeExecutor).
//
// Invariants:
//  1. run() of a kernel never takes the GIL. run() of a Python callable takes
//     it, nested inside the batch's acquisition on a blocking-pool thread
//     (blocking_pool.h rule 7).
//  2. complete() is the job's one place to let go (job.h rule 2): it releases
//     the pinned buffers, resolves the future, drops the future (a
//     _JobFuture holds the job in its _job slot: no cycle outlives it) and
//     then the executor's reference (bridge rule 2).
//  3. An asyncio future is resolved in complete(), only while its loop is
//     open and only if it is not done already (cancelled): a closed loop's
//     futures stay pending, as asyncio leaves queued work of a closed loop.
//     A concurrent future (kThread) is resolved by run() on the worker, as
//     concurrent.futures' own workers do.
//  4. Exceptions reach an asyncio future as asyncio.wrap_future gives them:
//     concurrent.futures' CancelledError and InvalidStateError become
//     asyncio's (asyncio.futures._convert_future_exc). A kernel's non-zero
//     return becomes uvpy.KernelError with .code.
//  5. A parallel_for Group resolves its one future when its last chunk
//     completes, with the first non-zero code any chunk returned; a chunk
//     that never ran (cancelled) only counts down.
//  6. A job handed back unrun because no thread could be started for it
//     (job.h rule 6) fails its future, asyncio's or concurrent.futures', with
//     RuntimeError("can't start new thread ..."), as ThreadPoolExecutor's
//     submit() raises it: its submit() had returned before the start failed.
//     A submit() whose own start failed raises that error itself
//     (executor_port.cc's submit), rather than parking the job as if the
//     queue were full.
#include "executor_bridge.h"

#include <cstring>
#include <string>

namespace uvpy::py::executor {

PyObject* g_job_future_type = nullptr;

namespace {

PyObject* g_kernel_error = nullptr;  // uvpy.KernelError
PyObject* g_convert_exc = nullptr;   // asyncio.futures._convert_future_exc (invariant 4)

// obj.name(arg), with arg passed as-is (PyObject_CallMethod would unpack a
// tuple result into several arguments).
PyObject* call_method1(PyObject* obj, const char* name, PyObject* arg) {
  PyObject* n = PyUnicode_InternFromString(name);
  if (n == nullptr) return nullptr;
  PyObject* r = PyObject_CallMethodOneArg(obj, n, arg);
  Py_DECREF(n);
  return r;
}

// Interned method and attribute names of the hot paths (immortal for the
// life of the process, like CPython's own _Py_ID strings).
struct Names {
  PyObject *done, *set_result, *set_exception, *add_done_callback, *job;
};
Names* names() {
  static Names n = [] {
    Names x{};
    x.done = PyUnicode_InternFromString("done");
    x.set_result = PyUnicode_InternFromString("set_result");
    x.set_exception = PyUnicode_InternFromString("set_exception");
    x.add_done_callback = PyUnicode_InternFromString("add_done_callback");
    x.job = PyUnicode_InternFromString("_job");
    return x;
  }();
  return &n;
}

void store_exception(ExecJob* j) { j->exc = fetch_exception(); }

int kernel_should_stop(const uvpy_ctx_t* ctx) {
  return static_cast<const exec::Job*>(ctx->reserved)->should_stop() ? 1 : 0;
}

void job_run(exec::Job* job) {
  auto* j = static_cast<ExecJob*>(job->data);
  if (j->kind == kKernel) {
    uvpy_ctx_t ctx{j->kargs.data(), static_cast<int32_t>(j->kargs.size()), j->begin, j->end,
                   kernel_should_stop, job};
    j->rc = j->kernel(&ctx);
    return;
  }
  // A blocking-pool thread (a Python thread), inside a batch that holds the
  // GIL (batch_enter): this Ensure only nests.
  PyGILState_STATE g = PyGILState_Ensure();
  bool go = true;
  if (j->kind == kThread) {  // concurrent.futures protocol: may have been cancelled
    PyObject* r = PyObject_CallMethod(j->future, "set_running_or_notify_cancel", nullptr);
    go = r == Py_True;
    if (r == nullptr) PyErr_WriteUnraisable(j->future);
    Py_XDECREF(r);
  }
  if (go) {
    j->result = PyObject_Call(j->fn, j->args, j->kwargs);
    if (j->result == nullptr) store_exception(j);
    if (j->kind == kThread) {
      PyObject* r = j->exc ? call_method1(j->future, "set_exception", j->exc)
                           : call_method1(j->future, "set_result", j->result);
      if (r == nullptr) PyErr_WriteUnraisable(j->future);
      Py_XDECREF(r);
    }
  }
  PyGILState_Release(g);
}

PyObject* kernel_error(int rc) {
  PyObject* e = PyObject_CallFunction(g_kernel_error, "N", PyUnicode_FromFormat("native kernel returned %d", rc));
  if (e == nullptr) return nullptr;
  PyObject* code = PyLong_FromLong(rc);
  if (code == nullptr || PyObject_SetAttrString(e, "code", code) < 0) PyErr_Clear();
  Py_XDECREF(code);
  return e;
}

}  // namespace

// Invariant 6: RuntimeError for a job no thread could be started for (also
// raised by submit(), executor_port.cc). Never nullptr: where making it
// fails, the exception that says why.
PyObject* no_thread_error(int error) {
  const std::string text = "can't start new thread for this job: " + std::string(std::strerror(-error));
  PyObject* e = PyObject_CallFunction(PyExc_RuntimeError, "s", text.c_str());
  return e != nullptr ? e : fetch_exception();
}

namespace {

// Invariant 6 for a concurrent future (kThread), unless cancelled meanwhile.
void fail_thread_future(PyObject* fut, int error) {
  PyObject* done = PyObject_CallMethodNoArgs(fut, names()->done);
  if (done == Py_False) {
    PyObject* exc = no_thread_error(error);
    PyObject* r = call_method1(fut, "set_exception", exc);
    if (r == nullptr) PyErr_WriteUnraisable(fut);
    Py_XDECREF(r);
    Py_XDECREF(exc);
  } else if (done == nullptr) {
    PyErr_WriteUnraisable(fut);
  }
  Py_XDECREF(done);
}

void job_complete(exec::Job* job) {
  auto* j = static_cast<ExecJob*>(job->data);
  j->port->live.erase(j);
  const bool ran = job->state.load(std::memory_order_acquire) == exec::kJobDone;
  if (!ran && job->error != 0 && j->kind == kThread) fail_thread_future(j->future, job->error);
  for (Py_buffer& v : j->views) PyBuffer_Release(&v);
  j->views.clear();
  const bool loop_open = j->port->reactor == nullptr || j->port->open;
  if (j->kind != kThread && loop_open) {
    if (j->group != nullptr) {
      Group* g = j->group;
      if (ran && j->rc != 0 && g->rc == 0) g->rc = j->rc;
      if (--g->remaining == 0) {
        PyObject* err = g->rc ? kernel_error(g->rc) : nullptr;
        resolve(g->future, nullptr, err);
        Py_XDECREF(err);
        Py_DECREF(g->future);
        delete g;
      }
    } else if (ran) {
      PyObject* err = nullptr;
      if (j->kind == kKernel && j->rc != 0) {
        err = kernel_error(j->rc);
      } else if (j->exc != nullptr) {
        err = PyObject_CallOneArg(g_convert_exc, j->exc);
        if (err == nullptr) PyErr_WriteUnraisable(g_convert_exc);
      }
      resolve(j->future, j->result, err ? err : j->exc);
      Py_XDECREF(err);
    } else if (job->error != 0) {  // invariant 6
      PyObject* err = no_thread_error(job->error);
      resolve(j->future, nullptr, err);
      Py_XDECREF(err);
    }
  } else if (j->group != nullptr && --j->group->remaining == 0) {
    Py_DECREF(j->group->future);
    delete j->group;
  }
  j->group = nullptr;
  if (j->kind != kThread) Py_CLEAR(j->future);  // a _JobFuture holds j in its _job slot
  Py_DECREF(reinterpret_cast<PyObject*>(j));  // the executor's reference
}

// A done-callback: cancelling the awaiting task cancels the queued job(s).
PyObject* ExecJob_call(PyObject* self, PyObject* args, PyObject*) {
  PyObject* fut = PyTuple_GET_SIZE(args) ? PyTuple_GET_ITEM(args, 0) : nullptr;
  if (fut == nullptr) Py_RETURN_NONE;
  PyObject* c = PyObject_CallMethod(fut, "cancelled", nullptr);
  if (c == nullptr) return nullptr;
  if (c == Py_True) exec::try_cancel(&reinterpret_cast<ExecJob*>(self)->job);
  Py_DECREF(c);
  Py_RETURN_NONE;
}

void ExecJob_dealloc(PyObject* self) {
  auto* j = reinterpret_cast<ExecJob*>(self);
  for (Py_buffer& v : j->views) PyBuffer_Release(&v);
  Py_XDECREF(j->future);
  Py_XDECREF(j->fn);
  Py_XDECREF(j->args);
  Py_XDECREF(j->kwargs);
  Py_XDECREF(j->result);
  Py_XDECREF(j->exc);
  Py_XDECREF(j->keepalive);
  j->kargs.~vector();
  j->views.~vector();
  j->job.~Job();
  Py_TYPE(self)->tp_free(self);
}

PyTypeObject ExecJobType = [] {
  PyTypeObject t{PyVarObject_HEAD_INIT(nullptr, 0)};
  t.tp_name = "uvpy._uvpy.ExecJob";
  t.tp_basicsize = sizeof(ExecJob);
  t.tp_flags = Py_TPFLAGS_DEFAULT;
  t.tp_dealloc = ExecJob_dealloc;
  t.tp_call = ExecJob_call;
  return t;
}();

// _set_job_future_type(cls): uvpy._executor._JobFuture, an asyncio.Future
// whose cancel() cancels its job. Futures of that exact type carry their job
// in the `_job` slot, so completion schedules no extra done-callback. Set
// once at import.
PyObject* set_job_future_type(PyObject*, PyObject* cls) {
  if (!PyType_Check(cls)) {
    PyErr_SetString(PyExc_TypeError, "expected a type");
    return nullptr;
  }
  Py_XSETREF(g_job_future_type, Py_NewRef(cls));
  Py_RETURN_NONE;
}

// _submit_call(loop, future, fn, args) -> True (a full queue parks the job)
PyObject* submit_call(PyObject*, PyObject* const* a, Py_ssize_t n) {
  LoopCore* loop;
  if (n != 4 || !check_loop(a[0], &loop) || !PyTuple_Check(a[3])) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "_submit_call(loop, future, fn, args)");
    return nullptr;
  }
  ExecJob* j = new_job(kPython, loop_port(loop), a[1]);
  if (j == nullptr) return nullptr;
  j->fn = Py_NewRef(a[2]);
  j->args = Py_NewRef(a[3]);
  return submit_and_watch(j, a[1]);
}

// _submit_thread(cf_future, fn, args, kwargs): NativeExecutor.submit; blocks
// (GIL released) while the queue is full.
PyObject* submit_thread(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (n != 4 || !PyTuple_Check(a[2]) || !PyDict_Check(a[3])) {
    PyErr_SetString(PyExc_TypeError, "_submit_thread(future, fn, args, kwargs)");
    return nullptr;
  }
  ExecJob* j = new_job(kThread, inline_port(), a[0]);
  if (j == nullptr) return nullptr;
  j->fn = Py_NewRef(a[1]);
  j->args = Py_NewRef(a[2]);
  j->kwargs = PyDict_GET_SIZE(a[3]) ? Py_NewRef(a[3]) : nullptr;
  int rc = submit(j, true);
  Py_DECREF(j);
  if (rc != 0) return nullptr;
  Py_RETURN_NONE;
}

PyMethodDef functions[] = {
    UVPY_EXEC_FAST("_submit_call", submit_call),
    UVPY_EXEC_FAST("_submit_thread", submit_thread),
    {"_set_job_future_type", set_job_future_type, METH_O, nullptr},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

ExecJob* new_job(Kind kind, Port* port, PyObject* future) {
  auto* j = PyObject_New(ExecJob, &ExecJobType);
  if (j == nullptr) return nullptr;
  new (&j->job) exec::Job();
  new (&j->kargs) std::vector<uvpy_arg_t>();
  new (&j->views) std::vector<Py_buffer>();
  j->job.run = job_run;
  j->job.complete = job_complete;
  j->job.port = &port->cp;
  j->job.data = j;
  j->port = port;
  j->kind = kind;
  j->future = Py_XNewRef(future);
  j->fn = j->args = j->kwargs = j->result = j->exc = j->keepalive = nullptr;
  j->kernel = nullptr;
  j->begin = 0;
  j->end = 1;
  j->rc = 0;
  j->group = nullptr;
  return j;
}

void resolve(PyObject* future, PyObject* result, PyObject* exc) {
  Names* n = names();
  PyObject* done = PyObject_CallMethodNoArgs(future, n->done);
  if (done == Py_False) {
    PyObject* r = exc ? PyObject_CallMethodOneArg(future, n->set_exception, exc)
                      : PyObject_CallMethodOneArg(future, n->set_result, result ? result : Py_None);
    if (r == nullptr) PyErr_WriteUnraisable(future);
    Py_XDECREF(r);
  } else if (done == nullptr) {
    PyErr_WriteUnraisable(future);
  }
  Py_XDECREF(done);
}

int add_done_callback(PyObject* future, ExecJob* j) {
  PyObject* r = PyObject_CallMethodOneArg(future, names()->add_done_callback, reinterpret_cast<PyObject*>(j));
  if (r == nullptr) return -1;
  Py_DECREF(r);
  return 0;
}

int watch(ExecJob* j, PyObject* future) {
  if (g_job_future_type != nullptr && reinterpret_cast<PyObject*>(Py_TYPE(future)) == g_job_future_type)
    return PyObject_SetAttr(future, names()->job, reinterpret_cast<PyObject*>(j));
  return add_done_callback(future, j);
}

bool init_jobs(PyObject* module) {
  if (PyType_Ready(&ExecJobType) < 0) return false;
  PyObject* futures = PyImport_ImportModule("asyncio.futures");
  if (futures == nullptr) return false;
  g_convert_exc = PyObject_GetAttrString(futures, "_convert_future_exc");
  Py_DECREF(futures);
  if (g_convert_exc == nullptr) return false;
  g_kernel_error = PyErr_NewExceptionWithDoc(
      "uvpy.KernelError", "A native kernel returned a non-zero code (see .code).", PyExc_RuntimeError,
      nullptr);
  if (g_kernel_error == nullptr || PyModule_AddObjectRef(module, "KernelError", g_kernel_error) < 0)
    return false;
  return PyModule_AddFunctions(module, functions) == 0;
}

}  // namespace uvpy::py::executor
