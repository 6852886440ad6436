// executor_bridge.h — what the files of the executor bridge share: the bridge
// from uvpy's native executor (executor/) to Python. Private to bindings/;
// everything not named here stays file-local.
//
// Two process-wide pools serve every loop (executor_module.cc): native
// kernels on the exec::Executor, Python callables on the exec::BlockingPool.
// Both hand results back the same way. Each loop owns a Port: a
// CompletionPort whose wake posts one drain callback into that loop's
// reactor, so a burst of completions costs one wakeup and the loop thread
// resolves the whole batch of asyncio futures in one pass — no
// concurrent.futures layer, no extra call_soon. NativeExecutor (usable
// without a loop) has an "inline" Port: its wake takes the GIL and drains on
// the worker that finished the batch.
//
// The files, one concept each:
//   executor_port.cc    a loop's Port: its wake and drain, submission into
//                       the pools, backpressure (the waiting FIFO, the retry
//                       timer, pump), close.
//   executor_job.cc     ExecJob, the Python object embedding an exec::Job:
//                       run, complete, resolving futures, KernelError; the
//                       submissions of Python callables.
//   executor_kernel.cc  the submissions of native kernels (_offload,
//                       _submit_kernel): the checks both make, in one
//                       function, and the conversion of arguments to the
//                       kernel ABI.
//   executor_module.cc  the pools' lifecycle and the module functions around
//                       them: configure, metrics, the blocking-pool thread
//                       body, shutdown, after-fork, init_executor.
//
// Rules every file keeps:
//  1. The GIL guards every global of the bridge, every field of an ExecJob
//     and the fields of a Port marked GIL-protected. complete() always runs
//     with the GIL held.
//  2. References to an ExecJob: the executor holds one from a successful
//     submit() until complete(); the waiting list holds one while the job
//     waits there; the future's done-callback (or a _JobFuture's _job slot)
//     holds one — that is how cancelling the awaiting task reaches
//     exec::try_cancel.
//  3. Everything about a job is recorded before submit() makes it visible to
//     workers: with the GIL released, an inline port may complete (and free)
//     the job before submit() returns.
//  4. A Port is freed only once nothing of it is outstanding (live empty, its
//     CompletionPort quiescent), and never from inside one of its drains.
#pragma once
#include <deque>
#include <mutex>
#include <unordered_set>
#include <vector>

#include "blocking_pool.h"
#include "completion_port.h"
#include "executor.h"
#include "py.h"
#include "uvpy_kernel.h"

// A METH_FASTCALL entry of a PyMethodDef table.
#define UVPY_EXEC_FAST(name, fn) \
  {name, reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(fn)), METH_FASTCALL, nullptr}

namespace uvpy::py::executor {

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

//   kPython  run_in_executor: the worker takes the GIL and calls fn(*args)
//   kThread  NativeExecutor.submit: same, resolving a concurrent future
//   kKernel  offload/parallel_for: a C function pointer, GIL never taken;
//            buffer arguments stay pinned (Py_buffer held) until complete
enum Kind { kPython, kThread, kKernel };

// parallel_for: chunks resolve one future once all of them completed.
struct Group {
  PyObject* future;
  Py_ssize_t remaining;
  int rc = 0;
};

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

// --- executor_module.cc: the pools ------------------------------------------

extern exec::Executor* g_exec;          // nullptr until first use
extern exec::BlockingPool* g_blocking;  // nullptr until first use
bool start_executor();                  // false with an exception set
void start_blocking();
inline bool ensure_executor() { return g_exec != nullptr || start_executor(); }
inline void ensure_blocking() {
  if (g_blocking == nullptr) start_blocking();
}
// A loop port opened (+1) or closed (-1): the blocking pool's limit follows.
void loop_ports_changed(int delta);
// Set on the submitting thread when the blocking pool's host failed to start
// a thread (the submitter clears it first): the host's EAGAIN, unlike a full
// queue's, fails the submit instead of parking the job.
extern thread_local bool t_blocking_start_failed;

// --- executor_port.cc: ports --------------------------------------------------

// *out = obj, a uvpy loop that is not closed; else false with an exception.
bool check_loop(PyObject* obj, LoopCore** out);
// The loop's Port, made on first use.
Port* loop_port(LoopCore* loop);
// NativeExecutor's Port, made on first use.
Port* inline_port();
// Submits j. On success the executor holds its own reference (released by
// job_complete); the caller keeps and later drops its own. Returns 0, or
// -EAGAIN (queue full, nothing submitted), or -1 with an exception set (a
// shut-down pool, or no thread for the job: RuntimeError, as
// ThreadPoolExecutor's submit() raises it).
int submit(ExecJob* j, bool blocking);
// Submits j (of a loop port) without blocking and makes cancelling `future`
// cancel the job. Consumes the caller's reference to j. Returns True, or
// nullptr with an exception set. A full queue parks j in `waiting`.
PyObject* submit_and_watch(ExecJob* j, PyObject* future);
// Frees the ports of closed loops that nothing is outstanding on any more.
void sweep_orphans();
// After fork: the ports the parent's workers would have completed into are
// abandoned, like the pools.
void forget_ports();

// --- executor_job.cc: jobs ---------------------------------------------------

// RuntimeError("can't start new thread for this job: ...") for -errno error;
// never nullptr (else the exception that says why making it failed).
PyObject* no_thread_error(int error);
// uvpy._executor._JobFuture (see watch()); nullptr until _set_job_future_type.
extern PyObject* g_job_future_type;
// A new job of `port` (one reference, the caller's), nothing recorded but
// its kind and future; nullptr with an exception set.
ExecJob* new_job(Kind kind, Port* port, PyObject* future);
// Resolves an asyncio future unless it is already done (cancelled).
void resolve(PyObject* future, PyObject* result, PyObject* exc);
// future.add_done_callback(j): 0, or -1 with an exception set.
int add_done_callback(PyObject* future, ExecJob* j);
// Makes cancelling `future` cancel j (a _JobFuture's _job slot, else
// add_done_callback): 0, or -1 with an exception set.
int watch(ExecJob* j, PyObject* future);
// The ExecJob type, KernelError, and _submit_call, _submit_thread,
// _set_job_future_type.
bool init_jobs(PyObject* module);

// --- executor_kernel.cc: kernel submissions ---------------------------------

// _offload, _submit_kernel, _builtin_kernels.
bool init_kernels(PyObject* module);

}  // namespace uvpy::py::executor
