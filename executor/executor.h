// executor.h — a fixed pool of worker threads that runs Jobs and hands each
// one back through its CompletionPort.
//
// Scheduling (tokio's multi-thread scheduler, for run-to-completion jobs).
// Each worker looks for its next job in this order:
//   1. its local queue (local_queue.h), lock-free;
//   2. the injection queue (inject_queue.h), taking a batch;
//   3. half of a random peer's local queue (work stealing);
//   4. spinning over 2-3 as a *searcher* for up to spin_us (idle.h);
//   5. parking until a submitter or a peer wakes it.
// Every 61st job it checks the injection queue before its local queue, so a
// worker busy with jobs it spawned itself cannot starve outside submitters.
//
// Threads: every public method is thread-safe. A submit from one of this
// executor's workers goes to that worker's local queue (no lock, and no
// backpressure: see inject_queue.h); any other submit goes to the injection
// queue, where queue_capacity applies.
//
// Errors are negative errno values; nothing throws.
//   submit:  -EINVAL     job lacks run, complete or port
//            -EBUSY      job is already queued or running
//            -EAGAIN     injection queue full and blocking == false
//            -ESHUTDOWN  shutdown() has begun (also ends a blocked wait)
//   start:   -EALREADY, -ESHUTDOWN, or pthread_create's error
//
// Lifetime: the executor must outlive every job submitted to it until that
// job's complete() has been called, and must not be destroyed by one of its
// own workers. The destructor is shutdown(false).
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "completion_port.h"
#include "idle.h"
#include "inject_queue.h"
#include "job.h"

namespace uvpy::exec {

class Executor {
 public:
  struct Options {
    unsigned workers = 0;         // 0: the CPUs in this process's sched_getaffinity mask
    size_t queue_capacity = 4096;  // injection queue bound (backpressure)
    unsigned spin_us = 20;        // how long a searching worker spins before parking
  };

  struct WorkerMetrics {
    uint64_t busy_ns = 0;    // time inside run()
    uint64_t completed = 0;  // jobs this worker ran
    uint64_t cancelled = 0;  // cancelled jobs this worker handed back
    uint64_t steals = 0;     // successful steal operations
  };

  // A snapshot, exact when the executor is quiescent:
  //   submitted == queued + running + completed + cancelled.
  // A job counts as completed (or cancelled) just before it is pushed to its
  // port, so these counters may run slightly ahead of what a drain returns.
  struct Metrics {
    uint64_t submitted = 0;  // accepted submissions
    uint64_t queued = 0;     // accepted, not yet taken out of a queue
    uint64_t running = 0;    // inside run() now
    uint64_t completed = 0;  // ran to the end (state done)
    uint64_t cancelled = 0;  // handed back without running (state cancelled)
    uint64_t steals = 0;     // sum over workers
    uint64_t wakes = 0;      // parked workers woken to look for work (idle.h)
    std::vector<WorkerMetrics> workers;
  };

  Executor();
  explicit Executor(const Options& opts);
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // Starts the workers. Jobs submitted before start() wait in the injection
  // queue. On failure the executor is shut down (queued jobs are handed back
  // cancelled) and the error returned.
  int start();

  // Accepts job (see job.h for what happens next). blocking: wait for room
  // in the injection queue instead of failing with -EAGAIN.
  int submit(Job* job, bool blocking = false);

  bool try_cancel(Job* job) { return exec::try_cancel(job); }

  // Stops accepting work and joins the workers (see executor.cc for the
  // phases). drain: run every queued job first; otherwise hand queued jobs
  // back cancelled and make should_stop() true for running ones. Idempotent;
  // a later shutdown(false) turns a draining shutdown into a cancelling one.
  // Called from one of this executor's own workers it does everything but the
  // join, which is left to a later call from another thread (or the
  // destructor).
  void shutdown(bool drain);

  unsigned worker_count() const { return n_; }
  Metrics metrics() const;

  // The calling thread's worker index in this executor, or -1.
  int current_worker() const;

  // CPUs in this process's affinity mask (the default worker count).
  static unsigned affinity_cpu_count();

 private:
  struct Worker;
  static thread_local Worker* t_worker_;  // the calling thread's Worker, in whichever executor
  static void* worker_entry(void* arg);
  void worker_main(Worker* w);
  Job* next_local(Worker* w);
  Job* search(Worker* w, bool* searching);
  Job* take_injected(Worker* w);
  Job* steal(Worker* w);
  void park(Worker* w, bool* searching);
  bool work_pending() const;
  void execute(Worker* w, Job* j);
  void notify_parked();
  void wake_all();
  void cancel_injected();

  const Options opts_;
  std::vector<int> cpus_;  // the affinity mask, in order
  const unsigned n_;
  std::unique_ptr<Worker[]> workers_;
  InjectQueue inject_;
  Idle idle_;

  std::atomic<bool> stopping_{false};  // shutdown began: refuse work, don't park
  std::atomic<bool> abort_{false};     // shutdown(false): cancel instead of run
  std::atomic<uint64_t> submitted_{0};           // external submissions
  std::atomic<uint64_t> wakes_{0};               // unparks by notify_parked()
  std::atomic<uint64_t> cancelled_by_shutdown_{0};
  std::mutex state_mu_;  // start/shutdown transitions
  std::mutex join_mu_;   // one joiner at a time
  bool started_ = false;  // guarded by state_mu_
};

}  // namespace uvpy::exec
