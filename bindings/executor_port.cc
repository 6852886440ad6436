// executor_port.cc — a loop's Port: how finished jobs get back to the loop
// that submitted them, how work enters the pools, and what a full queue or a
// closing loop does to it.
//
// Invariants:
//  1. One wakeup per batch. A loop port's wake posts one drain callback into
//     its loop's reactor; the loop thread completes the whole batch there.
//     An inline port (NativeExecutor's, and a closed loop's) takes the GIL
//     and drains on the thread that woke it, one drainer at a time.
//  2. wake() never touches the reactor of a closed loop: it reads `open`
//     under Port::mu, and close flips it under the same lock first.
//  3. submit_and_watch never blocks the loop on a full queue (see Port): the
//     job waits in `waiting`, behind anything already there so order holds,
//     and pump() resubmits after every drain of the port, or from the retry
//     timer while nothing of the loop is in the executor to drain.
//     (parallel_for's chunks alone wait for room: executor_kernel.cc
//     invariant 4.)
//  4. Closing a loop with work in flight: the Port stops posting, cancels
//     what is still queued (running kernels see should_stop()), drops what
//     waits (never submitted, so never completed: job.h rule 5), then drains
//     on the loop thread — GIL released while waiting — until nothing is
//     outstanding. Only then is the Port freed, so no worker ever touches
//     freed memory.
//  5. Close waits 100 ms at most: a Python callable that keeps running is not
//     waited for (like asyncio's executor.shutdown(wait=False)). Its port
//     becomes an orphan, drained inline as it completes, and sweep_orphans()
//     frees it once nothing of it is outstanding — never from inside a drain.
#include <chrono>
#include <thread>

#include "executor_bridge.h"

namespace uvpy::py::executor {
namespace {

Port* g_inline_port = nullptr;

// Ports of closed loops whose jobs were still running (invariant 5).
std::vector<Port*> g_orphans;

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

}  // namespace

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

void forget_ports() {
  g_inline_port = nullptr;
  g_orphans.clear();
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

Port* loop_port(LoopCore* loop) {
  if (loop->exec_port == nullptr) {
    loop->exec_port = new Port(loop->reactor);
    loop_ports_changed(+1);
  }
  return static_cast<Port*>(loop->exec_port);
}

Port* inline_port() {
  if (g_inline_port == nullptr) g_inline_port = new Port(nullptr);
  return g_inline_port;
}

int submit(ExecJob* j, bool blocking) {
  const bool python = j->kind != kKernel;  // Python callables may block: the blocking pool
  if (python) {
    ensure_blocking();
  } else if (!ensure_executor()) {
    return -1;
  }
  j->port->live.insert(j);
  Py_INCREF(j);  // the executor's reference
  t_blocking_start_failed = false;
  int rc;
  if (blocking) {  // bridge rule 3: from here on, j may complete before we return
    Py_BEGIN_ALLOW_THREADS rc = python ? g_blocking->submit(&j->job, true) : g_exec->submit(&j->job, true);
    Py_END_ALLOW_THREADS
  } else {
    rc = python ? g_blocking->submit(&j->job, false) : g_exec->submit(&j->job, false);
  }
  if (rc < 0) {
    j->port->live.erase(j);
    Py_DECREF(j);
    // -EAGAIN after a failed start is the host's (a full queue starts
    // nothing): no thread for the job, which a retry would not change.
    if (python && rc == -EAGAIN && t_blocking_start_failed) {
      PyObject* e = no_thread_error(rc);
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(e)), e);
      Py_DECREF(e);
      return -1;
    }
    if (rc == -EAGAIN) return -EAGAIN;
    PyErr_SetString(PyExc_RuntimeError, rc == -ESHUTDOWN ? "the native executor has been shut down"
                                                         : "cannot submit to the native executor");
    return -1;
  }
  sweep_orphans();
  return 0;
}

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
  rc = watch(j, future);
  Py_DECREF(j);
  if (rc < 0) return nullptr;
  Py_RETURN_TRUE;
}

}  // namespace uvpy::py::executor

namespace uvpy::py {

using executor::ExecJob;
using executor::Port;

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

// Called by LoopCore close/dealloc with the GIL held (invariants 4 and 5).
// Queued jobs are cancelled and running kernels asked to stop; close waits a
// little for them (kernels poll should_stop), but never for a Python
// callable that keeps running: that one finishes on its own and its port is
// freed afterwards.
void close_exec_port(LoopCore* loop) {
  auto* p = static_cast<Port*>(loop->exec_port);
  if (p == nullptr) return;
  loop->exec_port = nullptr;
  executor::loop_ports_changed(-1);
  {
    std::lock_guard<std::mutex> lock(p->mu);
    p->open = false;
  }
  for (ExecJob* j : p->live) exec::try_cancel(&j->job);
  p->reactor->cancel_timer(&p->retry);
  while (!p->waiting.empty()) {  // never submitted: their futures stay pending, as queued work does
    ExecJob* j = p->waiting.front();
    p->waiting.pop_front();
    executor::discard_waiting(j);
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
      executor::g_orphans.push_back(p);
      break;
    }
    Py_BEGIN_ALLOW_THREADS std::this_thread::sleep_for(std::chrono::microseconds(200));
    Py_END_ALLOW_THREADS
  }
  executor::sweep_orphans();
}

}  // namespace uvpy::py
