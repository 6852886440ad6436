// executor.cc — the bridge from uvpy's native executor (executor/) to Python.
//
// Two process-wide pools serve every loop. Native kernels (offload,
// parallel_for, uvpy.kernels), which never block, run on the exec::Executor:
// one worker per CPU in the affinity mask. Python callables
// (run_in_executor(None, ...), NativeExecutor.submit), which may block for as
// long as they like, run on the exec::BlockingPool: threads started on
// demand, named uvpy_0, uvpy_1, ... (real threading.Thread objects, so
// threading.enumerate(), logging and py-spy show them), up to a limit of
// `blocking_threads` (default asyncio's min(32, cpus + 4)) for each loop
// that uses the executor, and gone after 10 s idle. Both hand results back
// the same way. Each loop owns a Port: a CompletionPort whose wake posts
// one drain callback into that loop's reactor, so a burst of completions
// costs one wakeup and the loop thread resolves the whole batch of asyncio
// futures in one pass — no concurrent.futures layer, no extra call_soon.
// NativeExecutor (usable without a loop) has an "inline" Port: its wake
// takes the GIL and drains on the worker that finished the batch.
//
// An ExecJob is a Python object embedding an exec::Job:
//   kind kPython  run_in_executor: the worker takes the GIL and calls fn(*args)
//   kind kThread  NativeExecutor.submit: same, resolving a concurrent future
//   kind kKernel  offload/parallel_for: a C function pointer, GIL never taken;
//                 buffer arguments stay pinned (Py_buffer held) until complete
// References: the executor holds one from submit until complete(); the
// future's done-callback holds one (that is how cancelling the awaiting task
// reaches exec::try_cancel). complete() always runs with the GIL held.
//
// Closing a loop with work in flight: the Port stops posting, cancels what is
// still queued (running kernels see should_stop()), then drains on the loop
// thread — GIL released while waiting — until nothing is outstanding. Only
// then is the Port freed, so no worker ever touches freed memory.
#include <chrono>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_set>
#include <vector>

#include "blocking_pool.h"
#include "completion_port.h"
#include "executor.h"
#include "kernels.h"
#include "py.h"
#include "uvpy_kernel.h"

namespace uvpy::py {
namespace {

exec::Executor* g_exec = nullptr;
exec::Executor::Options g_options;  // set by configure_executor() before first use
exec::BlockingPool* g_blocking = nullptr;
unsigned g_blocking_per_loop = 0;  // 0: min(32, cpus + 4), as asyncio's default executor
unsigned g_loop_ports = 0;         // open loop ports (each adds g_blocking_per_loop threads)
PyObject* g_start_thread = nullptr;  // uvpy._executor._start_blocking_thread
PyObject* g_kernel_error = nullptr;  // uvpy.KernelError
// asyncio.futures._convert_future_exc: concurrent.futures' CancelledError
// and InvalidStateError become asyncio's, exactly as wrap_future does.
PyObject* g_convert_exc = nullptr;

struct ExecJob;

// Backpressure on a loop port. A submission the full injection queue refuses
// waits in `waiting` (FIFO, one reference each; later submissions queue
// behind it so order holds) and the future stays pending. pump() resubmits
// from the front after every drain of this port — each completion means a
// worker took a job out of the queue, so there is room again — and from
// `retry`, a 1 ms reactor timer armed only while nothing of this loop is in
// the executor (the queue is full of other loops' or threads' work, so no
// drain of ours is coming). Invariant: waiting non-empty ⇒ live non-empty or
// retry armed. The loop never blocks and the queue never grows past its bound.
struct Port {
  explicit Port(loop::Reactor* r) : cp(&Port::wake, this), reactor(r) {}
  static void wake(void* arg);
  exec::CompletionPort cp;
  std::mutex mu;                    // guards `open` against wake()
  std::mutex drain_mu;              // inline ports: one drainer at a time
  loop::Reactor* reactor;           // nullptr: inline port
  bool open = true;
  std::unordered_set<ExecJob*> live;  // GIL-protected: submitted, not completed
  std::deque<ExecJob*> waiting;       // GIL-protected: refused by a full queue, not yet submitted
  loop::TimerNode retry;              // pump() again when no drain of ours is coming
};
Port* g_inline_port = nullptr;

// Ports of closed loops whose jobs were still running (GIL-protected). Their
// completions drain inline; a port is freed by sweep_orphans() once nothing
// of it is outstanding, never from inside a drain.
std::vector<Port*> g_orphans;

void sweep_orphans() {
  for (size_t i = 0; i < g_orphans.size();) {
    Port* p = g_orphans[i];
    if (p->live.empty() && p->cp.quiescent()) {
      delete p;
      g_orphans[i] = g_orphans.back();
      g_orphans.pop_back();
    } else {
      ++i;
    }
  }
}


void pump(Port* p);

int drain_run(void* obj) {
  auto* p = static_cast<Port*>(obj);
  p->cp.drain();
  if (!p->waiting.empty()) pump(p);
  return 0;
}
int retry_run(void* obj) {
  pump(static_cast<Port*>(obj));
  return 0;
}
void noop_ref(void*) {}
const loop::CallbackOps kDrainOps{noop_ref, drain_run, noop_ref};
const loop::CallbackOps kRetryOps{noop_ref, retry_run, noop_ref};

// Worker threads keep one Python thread state for their whole life, so
// taking the GIL per job is a PyEval_RestoreThread, not a state allocation.
void ensure_thread_state() {
  thread_local bool ready = false;
  if (ready) return;
  PyGILState_Ensure();  // never released: keeps the state
  PyEval_SaveThread();
  ready = true;
}

void Port::wake(void* arg) {
  auto* p = static_cast<Port*>(arg);
  {
    std::lock_guard<std::mutex> lock(p->mu);
    if (p->reactor != nullptr && p->open) {
      p->reactor->post(loop::Callback{&kDrainOps, p});
      return;
    }
  }
  if (PyGILState_Check()) {  // shutdown pushed from a thread holding the GIL
    p->cp.drain();
    return;
  }
  if (g_exec != nullptr && g_exec->current_worker() >= 0) ensure_thread_state();
  PyGILState_STATE g = PyGILState_Ensure();
  {
    std::lock_guard<std::mutex> lock(p->drain_mu);
    p->cp.drain();
  }
  PyGILState_Release(g);
}

enum Kind { kPython, kThread, kKernel };

struct Group;

struct ExecJob {
  PyObject_HEAD
  exec::Job job;
  Port* port;
  Kind kind;
  PyObject* future;  // asyncio.Future (kPython/kKernel) or concurrent future (kThread)
  PyObject* fn;
  PyObject* args;
  PyObject* kwargs;
  PyObject* result;
  PyObject* exc;
  PyObject* keepalive;  // the kernel's Python object (ctypes function, capsule...)
  uvpy_kernel_fn kernel;
  std::vector<uvpy_arg_t> kargs;
  std::vector<Py_buffer> views;
  int64_t begin, end;
  int rc;
  Group* group;
};

// parallel_for: chunks resolve one future once all of them completed.
struct Group {
  PyObject* future;
  Py_ssize_t remaining;
  int rc = 0;
};

extern PyTypeObject ExecJobType;

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

// uvpy._executor._JobFuture: an asyncio.Future whose cancel() cancels its
// job. Futures of that exact type carry their job in the `_job` slot, so
// completion schedules no extra done-callback. Set once at import.
PyObject* g_job_future_type = nullptr;

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

// Resolves an asyncio future unless it is already done (cancelled).
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

void job_complete(exec::Job* job) {
  auto* j = static_cast<ExecJob*>(job->data);
  j->port->live.erase(j);
  const bool ran = job->state.load(std::memory_order_acquire) == exec::kJobDone;
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

bool ensure_executor() {
  if (g_exec != nullptr) return true;
  auto* e = new exec::Executor(g_options);
  int rc = e->start();
  if (rc < 0) {
    delete e;
    errno = -rc;
    PyErr_SetFromErrno(PyExc_OSError);
    return false;
  }
  g_exec = e;
  return true;
}

unsigned blocking_per_loop() {
  if (g_blocking_per_loop > 0) return g_blocking_per_loop;
  return std::min(32u, exec::Executor::affinity_cpu_count() + 4);
}

// The pool's limit: blocking_per_loop() for each open loop port (and one
// share for NativeExecutor's threads), so that every loop can have as many
// callables blocked at once as asyncio's default executor would give it.
// Capped at tokio's default of 512 threads, or one loop's share if larger.
void update_blocking_limit() {
  if (g_blocking == nullptr) return;
  const unsigned per = blocking_per_loop();
  const unsigned shares = std::max(1u, g_loop_ports);
  g_blocking->set_max_threads(std::min(per * shares, std::max(per, 512u)));
}

// Starts a pool thread as a threading.Thread (blocking_pool.h rule 5), so
// that it is a thread Python knows: named, listed, joined at exit.
int spawn_python_thread(void*, exec::BlockingPool* pool, unsigned index) {
  PyGILState_STATE g = PyGILState_Ensure();
  PyObject* r = PyObject_CallFunction(g_start_thread, "NI", PyLong_FromVoidPtr(pool), index);
  int rc = 0;
  if (r == nullptr) {
    // Interpreter shutdown ("can't create new thread at interpreter
    // shutdown") or out of resources: the submitter sees EAGAIN.
    PyErr_WriteUnraisable(g_start_thread);
    rc = EAGAIN;
  }
  Py_XDECREF(r);
  PyGILState_Release(g);
  return rc;
}

// blocking_pool.h rule 7: one GIL acquisition for a batch of callables.
// Pool threads are Python threads, so each has its thread state already.
thread_local PyGILState_STATE t_batch_gil;
void batch_enter(void*) { t_batch_gil = PyGILState_Ensure(); }
void batch_leave(void*) { PyGILState_Release(t_batch_gil); }

bool ensure_blocking() {
  if (g_blocking != nullptr) return true;
  exec::BlockingPool::Options o;
  o.spawn = spawn_python_thread;
  o.enter = batch_enter;
  o.leave = batch_leave;
  o.core_threads = exec::Executor::affinity_cpu_count();
  g_blocking = new exec::BlockingPool(o);
  update_blocking_limit();
  return true;
}

// Submits j. On success the executor holds its own reference (released by
// job_complete); the caller keeps and later drops its own. Returns 0, or
// -EAGAIN (queue full, nothing submitted), or -1 with an exception set.
//
// Everything about j is recorded before the job is visible to workers: with
// blocking=true the GIL is released, and an inline port may complete (and
// free) the job before submit() returns.
int submit(ExecJob* j, bool blocking) {
  const bool python = j->kind != kKernel;  // Python callables may block: the blocking pool
  if (python ? !ensure_blocking() : !ensure_executor()) return -1;
  j->port->live.insert(j);
  Py_INCREF(j);  // the executor's reference
  int rc;
  if (blocking) {
    Py_BEGIN_ALLOW_THREADS rc = python ? g_blocking->submit(&j->job, true) : g_exec->submit(&j->job, true);
    Py_END_ALLOW_THREADS
  } else {
    rc = python ? g_blocking->submit(&j->job, false) : g_exec->submit(&j->job, false);
  }
  if (rc < 0) {
    j->port->live.erase(j);
    Py_DECREF(j);
    if (rc == -EAGAIN) return -EAGAIN;
    PyErr_SetString(PyExc_RuntimeError, rc == -ESHUTDOWN ? "the native executor has been shut down"
                                                         : "cannot submit to the native executor");
    return -1;
  }
  sweep_orphans();
  return 0;
}

Port* loop_port(LoopCore* loop) {
  if (loop->exec_port == nullptr) {
    loop->exec_port = new Port(loop->reactor);
    ++g_loop_ports;
    update_blocking_limit();
  }
  return static_cast<Port*>(loop->exec_port);
}

bool check_loop(PyObject* obj, LoopCore** out) {
  if (!PyObject_TypeCheck(obj, &LoopCoreType)) {
    PyErr_SetString(PyExc_TypeError, "expected a uvpy loop");
    return false;
  }
  *out = reinterpret_cast<LoopCore*>(obj);
  if ((*out)->reactor->closed()) {
    PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
    return false;
  }
  return true;
}

void arm_retry(Port* p) {
  if (p->retry.scheduled() || p->reactor->closed()) return;
  p->retry.cb = loop::Callback{&kRetryOps, p};
  p->retry.when = p->reactor->time() + 0.001;
  p->reactor->add_timer(&p->retry);
}

// Drops a waiting job that will never be submitted (its future was
// cancelled, or the loop closed): complete() never runs for it (job.h rule 5).
void discard_waiting(ExecJob* j) {
  for (Py_buffer& v : j->views) PyBuffer_Release(&v);
  j->views.clear();
  Py_CLEAR(j->future);
  Py_DECREF(reinterpret_cast<PyObject*>(j));
}

void pump(Port* p) {
  while (!p->waiting.empty()) {
    ExecJob* j = p->waiting.front();
    if (j->job.cancel_requested.load(std::memory_order_relaxed)) {  // its future was cancelled
      p->waiting.pop_front();
      discard_waiting(j);
      continue;
    }
    int rc = submit(j, false);
    if (rc == -EAGAIN) break;
    p->waiting.pop_front();
    if (rc != 0) {  // the executor shut down: fail the future rather than strand it
      PyObject* exc = fetch_exception();
      resolve(j->future, nullptr, exc);
      Py_XDECREF(exc);
      discard_waiting(j);
      continue;
    }
    Py_DECREF(reinterpret_cast<PyObject*>(j));  // the executor holds its own now
  }
  if (!p->waiting.empty() && p->live.empty()) arm_retry(p);
}

// Submits j (of a loop port) without blocking and makes cancelling `future`
// cancel the job. Consumes the caller's reference to j. Returns True, or
// nullptr with an exception set. A full queue parks j in `waiting` (see Port).
PyObject* submit_and_watch(ExecJob* j, PyObject* future) {
  Port* p = j->port;
  int rc = p->waiting.empty() ? submit(j, false) : -EAGAIN;
  if (rc == -EAGAIN) {
    p->waiting.push_back(j);
    Py_INCREF(j);  // the waiting list's reference, handed to the executor by pump()
    if (p->live.empty()) arm_retry(p);
    rc = 0;
  }
  if (rc != 0) {
    Py_DECREF(j);
    return nullptr;
  }
  PyObject* r;
  if (g_job_future_type != nullptr && reinterpret_cast<PyObject*>(Py_TYPE(future)) == g_job_future_type) {
    r = PyObject_SetAttr(future, names()->job, reinterpret_cast<PyObject*>(j)) < 0 ? nullptr : Py_NewRef(Py_None);
  } else {
    r = PyObject_CallMethodOneArg(future, names()->add_done_callback, reinterpret_cast<PyObject*>(j));
  }
  Py_DECREF(j);
  if (r == nullptr) return nullptr;
  Py_DECREF(r);
  Py_RETURN_TRUE;
}

// _set_job_future_type(cls)
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

// _submit_thread(cf_future, fn, args, kwargs): NativeExecutor.submit
PyObject* submit_thread(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (n != 4 || !PyTuple_Check(a[2]) || !PyDict_Check(a[3])) {
    PyErr_SetString(PyExc_TypeError, "_submit_thread(future, fn, args, kwargs)");
    return nullptr;
  }
  if (g_inline_port == nullptr) g_inline_port = new Port(nullptr);
  ExecJob* j = new_job(kThread, g_inline_port, a[0]);
  if (j == nullptr) return nullptr;
  j->fn = Py_NewRef(a[1]);
  j->args = Py_NewRef(a[2]);
  j->kwargs = PyDict_GET_SIZE(a[3]) ? Py_NewRef(a[3]) : nullptr;
  int rc = submit(j, true);
  Py_DECREF(j);
  if (rc != 0) return nullptr;
  Py_RETURN_NONE;
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

// _submit_kernel(loop, future, fnptr, keepalive, args, sig, n, grain) -> True
//   n < 0: one call over [0, 1) (offload); else chunks of `grain` over [0, n)
PyObject* submit_kernel(PyObject*, PyObject* const* a, Py_ssize_t nargs) {
  LoopCore* loop;
  if (nargs != 8 || !check_loop(a[0], &loop) || !PyTuple_Check(a[4])) {
    if (!PyErr_Occurred())
      PyErr_SetString(PyExc_TypeError, "_submit_kernel(loop, future, ptr, keep, args, sig, n, grain)");
    return nullptr;
  }
  void* ptr = PyLong_AsVoidPtr(a[2]);
  if (ptr == nullptr) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "kernel is a NULL function pointer");
    return nullptr;
  }
  long long n = PyLong_AsLongLong(a[6]);
  long long grain = PyLong_AsLongLong(a[7]);
  if (PyErr_Occurred()) return nullptr;
  Port* port = loop_port(loop);
  if (n < 0) {
    ExecJob* j = new_job(kKernel, port, a[1]);
    if (j == nullptr) return nullptr;
    j->kernel = reinterpret_cast<uvpy_kernel_fn>(ptr);
    j->keepalive = Py_NewRef(a[3]);
    if (!convert_args(j, a[4], a[5])) {
      Py_DECREF(j);
      return nullptr;
    }
    return submit_and_watch(j, a[1]);
  }
  if (grain <= 0) {
    PyErr_SetString(PyExc_ValueError, "grain must be positive");
    return nullptr;
  }
  if (n == 0) {
    resolve(a[1], Py_None, nullptr);
    Py_RETURN_TRUE;
  }
  auto* g = new Group{Py_NewRef(a[1]), 0};
  const long long chunks = (n + grain - 1) / grain;
  g->remaining = static_cast<Py_ssize_t>(chunks);
  // Convert once, then give every chunk its own pinned views: each job
  // releases its own Py_buffers when it completes.
  for (long long c = 0; c < chunks; ++c) {
    ExecJob* j = new_job(kKernel, port, nullptr);
    if (j == nullptr || !convert_args(j, a[4], a[5])) {
      Py_XDECREF(j);
      g->remaining -= static_cast<Py_ssize_t>(chunks - c);
      if (g->remaining == 0) {
        Py_DECREF(g->future);
        delete g;
      } else {  // chunks already queued complete the group; fail it now
        PyObject* cancel = PyObject_CallMethod(a[1], "cancel", nullptr);
        Py_XDECREF(cancel);
      }
      return nullptr;
    }
    j->kernel = reinterpret_cast<uvpy_kernel_fn>(ptr);
    j->keepalive = Py_NewRef(a[3]);
    j->begin = c * grain;
    j->end = std::min<long long>(n, (c + 1) * grain);
    j->group = g;
    // The group's chunks are bounded; waiting for queue room (GIL released)
    // is the backpressure here.
    if (submit(j, true) != 0) {
      j->group = nullptr;
      Py_DECREF(j);
      g->remaining -= static_cast<Py_ssize_t>(chunks - c);
      if (g->remaining == 0) {
        Py_DECREF(g->future);
        delete g;
      }
      return nullptr;
    }
    PyObject* r = call_method1(a[1], "add_done_callback", reinterpret_cast<PyObject*>(j));
    Py_DECREF(j);
    if (r == nullptr) return nullptr;
    Py_DECREF(r);
  }
  Py_RETURN_TRUE;
}

}  // namespace

// A few jobs in flight and idle cores: a completion is likely within
// microseconds, so spinning beats two sleeping-thread wakeups. With every
// worker busy (or many jobs queued) the loop would only steal a core.
int64_t exec_spin_ns(LoopCore* loop) {
  auto* p = static_cast<Port*>(loop->exec_port);
  if (p == nullptr || p->live.empty()) return 0;
  static const size_t cpus = exec::Executor::affinity_cpu_count();
  return p->live.size() < cpus ? 100000 : 0;
}

// loop._exec_pending() -> list of this loop's futures still in the executor
PyObject* exec_pending(LoopCore* loop) {
  auto* p = static_cast<Port*>(loop->exec_port);
  if (p == nullptr) return PyList_New(0);
  PyObject* set = PySet_New(nullptr);  // parallel_for chunks share one future
  if (set == nullptr) return nullptr;
  auto add = [set](ExecJob* j) {
    PyObject* f = j->group ? j->group->future : j->future;
    return f == nullptr || PySet_Add(set, f) == 0;
  };
  bool ok = true;
  for (ExecJob* j : p->live) ok = ok && add(j);
  for (ExecJob* j : p->waiting) ok = ok && add(j);
  PyObject* out = ok ? PySequence_List(set) : nullptr;
  Py_DECREF(set);
  return out;
}

namespace {

// The blocking pool's counters (all zero before its first use).
PyObject* blocking_metrics() {
  exec::BlockingPool::Metrics b;
  if (g_blocking != nullptr) b = g_blocking->metrics();
  else b.max_threads = blocking_per_loop();
  return Py_BuildValue("{s:I,s:I,s:I,s:I,s:K,s:K,s:K,s:K,s:K}", "threads", b.threads, "idle", b.idle,
                       "max_threads", b.max_threads, "per_loop", blocking_per_loop(), "queued",
                       (unsigned long long)b.queued, "running", (unsigned long long)b.running,
                       "completed", (unsigned long long)b.completed, "cancelled",
                       (unsigned long long)b.cancelled, "spawned", (unsigned long long)b.spawned);
}

PyObject* executor_metrics(PyObject*, PyObject*) {
  if (!ensure_executor()) return nullptr;
  exec::Executor::Metrics m = g_exec->metrics();
  PyObject* workers = PyList_New(0);
  if (workers == nullptr) return nullptr;
  for (const auto& w : m.workers) {
    PyObject* d = Py_BuildValue("{s:d,s:K,s:K,s:K}", "busy_s", w.busy_ns / 1e9, "completed",
                                (unsigned long long)w.completed, "cancelled",
                                (unsigned long long)w.cancelled, "steals", (unsigned long long)w.steals);
    if (d == nullptr || PyList_Append(workers, d) < 0) {
      Py_XDECREF(d);
      Py_DECREF(workers);
      return nullptr;
    }
    Py_DECREF(d);
  }
  PyObject* blocking = blocking_metrics();
  if (blocking == nullptr) {
    Py_DECREF(workers);
    return nullptr;
  }
  return Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:N,s:N}", "submitted",
                       (unsigned long long)m.submitted, "queued", (unsigned long long)m.queued,
                       "running", (unsigned long long)m.running, "completed",
                       (unsigned long long)m.completed, "cancelled", (unsigned long long)m.cancelled,
                       "steals", (unsigned long long)m.steals, "wakes", (unsigned long long)m.wakes,
                       "workers", workers, "blocking", blocking);
}

// configure_executor(workers, pin, nice): only before the pool has started.
PyObject* configure_executor(PyObject*, PyObject* const* a, Py_ssize_t n) {
  if (n != 3) {
    PyErr_SetString(PyExc_TypeError, "configure_executor(workers, pin, nice)");
    return nullptr;
  }
  long workers = PyLong_AsLong(a[0]);
  int pin = PyObject_IsTrue(a[1]);
  long nice = PyLong_AsLong(a[2]);
  if ((workers == -1 && PyErr_Occurred()) || pin < 0 || (nice == -1 && PyErr_Occurred()))
    return nullptr;
  if (workers < 0 || workers > 4096) {
    PyErr_SetString(PyExc_ValueError, "workers must be between 0 (one per CPU) and 4096");
    return nullptr;
  }
  if (nice < 0 || nice > 19) {
    PyErr_SetString(PyExc_ValueError, "nice must be between 0 and 19");
    return nullptr;
  }
  if (g_exec != nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "the native executor has already started");
    return nullptr;
  }
  g_options.workers = static_cast<unsigned>(workers);
  g_options.pin = pin;
  g_options.nice = static_cast<int>(nice);
  Py_RETURN_NONE;
}

// _configure_blocking(n): threads per loop for Python callables; 0 means
// asyncio's default. Takes effect at once, also on a running pool.
PyObject* configure_blocking(PyObject*, PyObject* arg) {
  long n = PyLong_AsLong(arg);
  if (n == -1 && PyErr_Occurred()) return nullptr;
  if (n < 0 || n > 4096) {
    PyErr_SetString(PyExc_ValueError, "blocking_threads must be between 1 and 4096 (0: min(32, cpus + 4))");
    return nullptr;
  }
  g_blocking_per_loop = static_cast<unsigned>(n);
  update_blocking_limit();
  Py_RETURN_NONE;
}

// _blocking_thread_main(pool, index): the body of a pool thread, started by
// uvpy._executor._start_blocking_thread; runs without the GIL until the
// thread's keep-alive runs out or the pool shuts down.
PyObject* blocking_thread_main(PyObject*, PyObject* const* a, Py_ssize_t n) {
  void* pool = n == 2 ? PyLong_AsVoidPtr(a[0]) : nullptr;
  unsigned long index = n == 2 ? PyLong_AsUnsignedLong(a[1]) : 0;
  if (pool == nullptr || PyErr_Occurred()) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "_blocking_thread_main(pool, index)");
    return nullptr;
  }
  Py_BEGIN_ALLOW_THREADS static_cast<exec::BlockingPool*>(pool)->thread_main(static_cast<unsigned>(index));
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

// _set_blocking_starter(fn): fn(pool, index) starts a thread running
// _blocking_thread_main(pool, index).
PyObject* set_blocking_starter(PyObject*, PyObject* fn) {
  Py_XSETREF(g_start_thread, Py_NewRef(fn));
  Py_RETURN_NONE;
}

// Before threading joins non-daemon threads at exit: stop accepting, let the
// pool's threads finish what is queued, and wake the idle ones so they exit
// now rather than at the end of their keep-alive.
PyObject* blocking_shutdown(PyObject*, PyObject*) {
  if (g_blocking != nullptr) g_blocking->shutdown(true);
  Py_RETURN_NONE;
}

// os.register_at_fork(after_in_child=...): the child has none of the pools'
// threads. Their objects are abandoned, never touched again (a lock in them
// may be held by a thread that no longer exists), and the first use in the
// child starts fresh pools. Work the parent had in flight never completes in
// the child.
PyObject* executor_after_fork(PyObject*, PyObject*) {
  g_exec = nullptr;
  g_blocking = nullptr;
  g_inline_port = nullptr;
  g_orphans.clear();
  Py_RETURN_NONE;
}

PyObject* executor_workers(PyObject*, PyObject*) {
  if (!ensure_executor()) return nullptr;
  return PyLong_FromUnsignedLong(g_exec->worker_count());
}

// atexit: stop the workers before the interpreter finalizes.
PyObject* executor_shutdown(PyObject*, PyObject*) {
  if (g_exec == nullptr) Py_RETURN_NONE;
  Py_BEGIN_ALLOW_THREADS g_exec->shutdown(false);
  Py_END_ALLOW_THREADS
  sweep_orphans();
  Py_RETURN_NONE;
}

PyObject* builtin_kernels(PyObject*, PyObject*) {
  namespace k = exec::kernels;
  return Py_BuildValue("{s:N,s:N,s:N,s:N,s:N,s:N}", "sum_f64", PyLong_FromVoidPtr((void*)&k::sum_f64),
                       "dot_f64", PyLong_FromVoidPtr((void*)&k::dot_f64), "axpy_f64",
                       PyLong_FromVoidPtr((void*)&k::axpy_f64), "sort_f64",
                       PyLong_FromVoidPtr((void*)&k::sort_f64), "fnv1a64",
                       PyLong_FromVoidPtr((void*)&k::fnv1a64), "noop", PyLong_FromVoidPtr((void*)&k::noop));
}

// _offload(ptr, keep, args, sig) -> a _JobFuture of the running uvpy loop
// (pending in the port's waiting list while the pool's queue is full).
// uvpy.offload in one call from Python.
PyObject* offload_fast(PyObject*, PyObject* const* a, Py_ssize_t nargs) {
  if (nargs != 4 || !PyTuple_Check(a[2])) {
    PyErr_SetString(PyExc_TypeError, "_offload(ptr, keep, args, sig)");
    return nullptr;
  }
  LoopCore* loop = t_running_loop;
  if (loop == nullptr || g_job_future_type == nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "uvpy.offload and uvpy.parallel_for need a running uvpy loop");
    return nullptr;
  }
  void* ptr = PyLong_AsVoidPtr(a[0]);
  if (ptr == nullptr) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "kernel is a NULL function pointer");
    return nullptr;
  }
  static PyObject* loop_kw = Py_BuildValue("(s)", "loop");
  PyObject* loop_arg = reinterpret_cast<PyObject*>(loop);
  PyObject* fut = PyObject_Vectorcall(g_job_future_type, &loop_arg, 0, loop_kw);
  if (fut == nullptr) return nullptr;
  ExecJob* j = new_job(kKernel, loop_port(loop), fut);
  if (j == nullptr) {
    Py_DECREF(fut);
    return nullptr;
  }
  j->kernel = reinterpret_cast<uvpy_kernel_fn>(ptr);
  j->keepalive = Py_NewRef(a[1]);
  if (!convert_args(j, a[2], a[3])) {
    Py_DECREF(j);
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

#define FAST(name, fn) {name, reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(fn)), METH_FASTCALL, nullptr}
PyMethodDef functions[] = {
    FAST("_submit_call", submit_call),
    FAST("_submit_thread", submit_thread),
    FAST("_submit_kernel", submit_kernel),
    FAST("_configure_executor", configure_executor),
    {"_configure_blocking", configure_blocking, METH_O, nullptr},
    FAST("_blocking_thread_main", blocking_thread_main),
    {"_set_blocking_starter", set_blocking_starter, METH_O, nullptr},
    {"_blocking_shutdown", blocking_shutdown, METH_NOARGS, nullptr},
    {"_executor_after_fork", executor_after_fork, METH_NOARGS, nullptr},
    {"_set_job_future_type", set_job_future_type, METH_O, nullptr},
    FAST("_offload", offload_fast),
    {"executor_metrics", executor_metrics, METH_NOARGS, "Counters of the native executor."},
    {"executor_workers", executor_workers, METH_NOARGS, "Number of native executor workers."},
    {"_executor_shutdown", executor_shutdown, METH_NOARGS, nullptr},
    {"_builtin_kernels", builtin_kernels, METH_NOARGS, nullptr},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

// Called by LoopCore close/dealloc with the GIL held. Queued jobs are
// cancelled and running kernels asked to stop; close waits a little for
// them (kernels poll should_stop), but never for a Python callable that
// keeps running: like asyncio's executor.shutdown(wait=False), that one
// finishes on its own and its port is freed afterwards.
void close_exec_port(LoopCore* loop) {
  auto* p = static_cast<Port*>(loop->exec_port);
  if (p == nullptr) return;
  loop->exec_port = nullptr;
  --g_loop_ports;
  update_blocking_limit();
  {
    std::lock_guard<std::mutex> lock(p->mu);
    p->open = false;
  }
  for (ExecJob* j : p->live) exec::try_cancel(&j->job);
  p->reactor->cancel_timer(&p->retry);
  while (!p->waiting.empty()) {  // never submitted: their futures stay pending, as queued work does
    ExecJob* j = p->waiting.front();
    p->waiting.pop_front();
    discard_waiting(j);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(100);
  // Never delete (or wait in ~CompletionPort) while holding the GIL with a
  // push in flight: that push's wake() may be waiting for this very GIL.
  for (;;) {
    p->cp.drain();  // completes (releases) whatever came back
    if (p->live.empty() && p->cp.quiescent()) {
      delete p;
      break;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      g_orphans.push_back(p);
      break;
    }
    Py_BEGIN_ALLOW_THREADS std::this_thread::sleep_for(std::chrono::microseconds(200));
    Py_END_ALLOW_THREADS
  }
  sweep_orphans();
}

bool init_executor(PyObject* module) {
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

}  // namespace uvpy::py
