// executor_module.cc — the two process-wide pools that serve every loop's
// executor, and the module functions that size, observe, start and stop
// them; init_executor adds the whole bridge to uvpy._uvpy.
//
// Native kernels (offload, parallel_for, uvpy.kernels), which never block,
// run on the exec::Executor: one worker per CPU in the affinity mask. Python
// callables (run_in_executor(None, ...), NativeExecutor.submit), which may
// block for as long as they like, run on the exec::BlockingPool: threads
// started on demand, named uvpy_0, uvpy_1, ... (real threading.Thread
// objects, so threading.enumerate(), logging and py-spy show them), up to a
// limit of `blocking_threads` (default asyncio's min(32, cpus + 4)) for each
// loop that uses the executor, and gone after 10 s idle.
//
// Invariants:
//  1. Each pool starts on its first use, not at import. configure_executor
//     sizes the per-core pool only before it starts; the blocking limit may
//     change at any time, also on a running pool.
//  2. The blocking pool's limit is blocking_per_loop() for each open loop
//     port, one share at least (NativeExecutor's), capped at tokio's 512
//     threads or one share if that is larger (update_blocking_limit).
//  3. A blocking-pool thread is a threading.Thread (blocking_pool.h rule 5)
//     that runs without the GIL except while it runs a batch of callables,
//     which takes the GIL once (rule 7).
//  4. At exit, first (threading's atexit, before it joins non-daemon
//     threads) the blocking pool stops accepting, finishes what is queued
//     and lets its idle threads go; then (atexit) the per-core workers stop
//     before the interpreter finalizes.
//  5. A forked child has none of the pools' threads: the parent's pools and
//     ports are abandoned, never touched again (a lock in them may be held
//     by a thread that no longer exists), and the first use in the child
//     starts fresh ones. Work the parent had in flight never completes in
//     the child.
#include <algorithm>

#include "executor_bridge.h"

namespace uvpy::py {
namespace executor {

exec::Executor* g_exec = nullptr;
exec::BlockingPool* g_blocking = nullptr;

thread_local bool t_blocking_start_failed = false;

namespace {

exec::Executor::Options g_options;   // set by configure_executor() before first use
unsigned g_blocking_per_loop = 0;    // 0: min(32, cpus + 4), as asyncio's default executor
unsigned g_loop_ports = 0;           // open loop ports (each adds g_blocking_per_loop threads)
PyObject* g_start_thread = nullptr;  // uvpy._executor._start_blocking_thread

unsigned blocking_per_loop() {
  if (g_blocking_per_loop > 0) return g_blocking_per_loop;
  return std::min(32u, exec::Executor::affinity_cpu_count() + 4);
}

// Invariant 2: every loop can have as many callables blocked at once as
// asyncio's default executor would give it.
void update_blocking_limit() {
  if (g_blocking == nullptr) return;
  const unsigned per = blocking_per_loop();
  const unsigned shares = std::max(1u, g_loop_ports);
  g_blocking->set_max_threads(std::min(per * shares, std::max(per, 512u)));
}

// Starts a pool thread as a threading.Thread (invariant 3), so that it is a
// thread Python knows: named, listed, joined at exit.
int spawn_python_thread(void*, exec::BlockingPool* pool, unsigned index) {
  PyGILState_STATE g = PyGILState_Ensure();
  PyObject* r = PyObject_CallFunction(g_start_thread, "NI", PyLong_FromVoidPtr(pool), index);
  int rc = 0;
  if (r == nullptr) {
    // Interpreter shutdown ("can't create new thread at interpreter
    // shutdown") or out of resources: the submitter sees EAGAIN.
    PyErr_WriteUnraisable(g_start_thread);
    rc = EAGAIN;
    t_blocking_start_failed = true;  // spawn runs on the submitting thread
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

PyObject* metrics_dict();

PyObject* executor_metrics(PyObject*, PyObject*) {
  if (!ensure_executor()) return nullptr;
  return metrics_dict();
}

// _executor_snapshot(): executor_metrics() for loop.stats(), which must not
// start the pool: None until something has started it.
PyObject* executor_snapshot(PyObject*, PyObject*) {
  if (g_exec == nullptr) Py_RETURN_NONE;
  return metrics_dict();
}

PyObject* metrics_dict() {
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

// configure_executor(workers): only before the pool has started.
PyObject* configure_executor(PyObject*, PyObject* arg) {
  long workers = PyLong_AsLong(arg);
  if (workers == -1 && PyErr_Occurred()) return nullptr;
  if (workers < 0 || workers > 4096) {
    PyErr_SetString(PyExc_ValueError, "workers must be between 0 (one per CPU) and 4096");
    return nullptr;
  }
  if (g_exec != nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "the native executor has already started");
    return nullptr;
  }
  g_options.workers = static_cast<unsigned>(workers);
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

// Invariant 4, first step: stop accepting, let the pool's threads finish
// what is queued, and wake the idle ones so they exit now rather than at the
// end of their keep-alive.
PyObject* blocking_shutdown(PyObject*, PyObject*) {
  if (g_blocking != nullptr) g_blocking->shutdown(true);
  Py_RETURN_NONE;
}

// os.register_at_fork(after_in_child=...): invariant 5.
PyObject* executor_after_fork(PyObject*, PyObject*) {
  g_exec = nullptr;
  g_blocking = nullptr;
  forget_ports();
  Py_RETURN_NONE;
}

PyObject* executor_workers(PyObject*, PyObject*) {
  if (!ensure_executor()) return nullptr;
  return PyLong_FromUnsignedLong(g_exec->worker_count());
}

// Invariant 4, second step (atexit): stop the workers before the interpreter
// finalizes.
PyObject* executor_shutdown(PyObject*, PyObject*) {
  if (g_exec == nullptr) Py_RETURN_NONE;
  Py_BEGIN_ALLOW_THREADS g_exec->shutdown(false);
  Py_END_ALLOW_THREADS
  sweep_orphans();
  Py_RETURN_NONE;
}

PyMethodDef functions[] = {
    {"_configure_executor", configure_executor, METH_O, nullptr},
    {"_configure_blocking", configure_blocking, METH_O, nullptr},
    UVPY_EXEC_FAST("_blocking_thread_main", blocking_thread_main),
    {"_set_blocking_starter", set_blocking_starter, METH_O, nullptr},
    {"_blocking_shutdown", blocking_shutdown, METH_NOARGS, nullptr},
    {"_executor_after_fork", executor_after_fork, METH_NOARGS, nullptr},
    {"executor_metrics", executor_metrics, METH_NOARGS, "Counters of the native executor."},
    {"_executor_snapshot", executor_snapshot, METH_NOARGS, nullptr},
    {"executor_workers", executor_workers, METH_NOARGS, "Number of native executor workers."},
    {"_executor_shutdown", executor_shutdown, METH_NOARGS, nullptr},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

bool start_executor() {
  auto* e = new exec::Executor(g_options);
  int rc = e->start();
  if (rc < 0) {
    delete e;
    raise_os_error(-rc);
    return false;
  }
  g_exec = e;
  return true;
}

void start_blocking() {
  exec::BlockingPool::Options o;
  o.spawn = spawn_python_thread;
  o.enter = batch_enter;
  o.leave = batch_leave;
  o.core_threads = exec::Executor::affinity_cpu_count();
  g_blocking = new exec::BlockingPool(o);
  update_blocking_limit();
}

void loop_ports_changed(int delta) {
  g_loop_ports += delta;
  update_blocking_limit();
}

}  // namespace executor

bool init_executor(PyObject* module) {
  return executor::init_jobs(module) && executor::init_kernels(module) &&
         PyModule_AddFunctions(module, executor::functions) == 0;
}

}  // namespace uvpy::py
