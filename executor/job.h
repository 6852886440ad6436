// job.h — the executor's unit of work: intrusive, type-erased, owned by the
// submitter.
//
// The executor never allocates or frees a Job. It links it into queues
// through `next` and calls its two functions. The owner embeds a Job in its
// own object (the bridge to a Python future in bindings/, a struct in tests),
// points `data` wherever it likes, and keeps the Job alive from a successful
// submit() until complete() has been called.
//
// State machine (`state`); every transition is one atomic step:
//
//   idle ──submit──▶ queued ──a worker dequeues it──▶ running ──run returns──▶ done
//                      │
//                      └──try_cancel, shutdown(false), or no thread to run it──▶ cancelled
//
//   done and cancelled last until complete() has run; after that the job may
//   be submitted again.
//
// Rules:
//  1. run(job) is called at most once per submission, on a worker thread.
//  2. complete(job) is called exactly once per accepted submission (submit
//     returned 0), on the thread that drains the job's CompletionPort (the loop
//     thread), both when the job ran (state done) and when it did not (state
//     cancelled). It is the owner's one place to release resources. After it
//     returns the executor never touches the job again, so it may free it.
//  3. try_cancel succeeds only while the job is queued (CAS queued→cancelled),
//     and then run() will never be called. The job stays physically in its
//     queue until a worker, or shutdown, takes it out; that remover — never
//     try_cancel's caller — pushes it to the port without running it. So the
//     decision is immediate but the hand-back is asynchronous, just like
//     concurrent.futures skipping a cancelled work item. A cancelled job still
//     counts against queue_capacity until it is taken out.
//  4. cancel_requested asks a job that may already be running to stop early.
//     Long kernels poll should_stop(), which also turns true once the
//     executor shuts down without draining.
//  5. A job whose submit() failed was never seen by the executor: the owner
//     keeps it, and complete() is not called.
//  6. A job the executor accepted but then cannot run, because no thread is
//     left to run it and none can be started (BlockingPool rule 5), is
//     handed back cancelled with `error` set to the host's -errno, so the
//     owner can fail its future with the error submit() would have returned.
//     Every other cancelled job has error 0.
#pragma once
#include <atomic>
#include <cerrno>
#include <cstdint>

namespace uvpy::exec {

class CompletionPort;

enum JobState : int {
  kJobIdle = 0,
  kJobQueued = 1,
  kJobRunning = 2,
  kJobDone = 3,
  kJobCancelled = 4,
};

struct Job {
  // --- set by the owner before submit -------------------------------------
  void (*run)(Job*) = nullptr;       // on a worker thread
  void (*complete)(Job*) = nullptr;  // on the thread that drains `port`
  CompletionPort* port = nullptr;
  void* data = nullptr;  // the owner's; the executor never reads it

  // --- shared ---------------------------------------------------------------
  std::atomic<int> state{kJobIdle};
  std::atomic<bool> cancel_requested{false};

  // --- written by the executor ---------------------------------------------
  // now_ns() at acceptance and around run(); complete() may read them (the
  // port hand-off orders these writes before it).
  int64_t submit_ns = 0;
  int64_t start_ns = 0;
  int64_t end_ns = 0;
  int error = 0;  // rule 6: handed back unrun for this -errno, not cancelled
  const std::atomic<bool>* abort = nullptr;  // the executor's "stop running jobs" flag
  Job* next = nullptr;  // intrusive link, owned by whichever queue holds the job

  Job() = default;
  Job(const Job&) = delete;
  Job& operator=(const Job&) = delete;

  // For long kernels, from inside run(): true once try_cancel was called on
  // this job or its executor is shutting down without draining.
  bool should_stop() const {
    return cancel_requested.load(std::memory_order_relaxed) ||
           (abort != nullptr && abort->load(std::memory_order_relaxed));
  }
};

// The checks and resets every executor makes before it accepts j (its state
// still idle, done or cancelled): 0, -EINVAL (run, complete or port missing)
// or -EBUSY (queued or running). abort: the executor's flag should_stop()
// reads; now: the submit time.
inline int begin_submit(Job* j, const std::atomic<bool>* abort, int64_t now) {
  if (j == nullptr || j->run == nullptr || j->complete == nullptr || j->port == nullptr)
    return -EINVAL;
  int s = j->state.load(std::memory_order_acquire);
  if (s == kJobQueued || s == kJobRunning) return -EBUSY;
  j->cancel_requested.store(false, std::memory_order_relaxed);
  j->abort = abort;
  j->submit_ns = now;
  j->start_ns = j->end_ns = 0;
  j->error = 0;
  return 0;
}

// Requests cancellation (rule 4) and succeeds only if the job had not started
// (rule 3). Any thread, but only between submit() and complete().
inline bool try_cancel(Job* job) {
  job->cancel_requested.store(true, std::memory_order_relaxed);
  int expected = kJobQueued;
  return job->state.compare_exchange_strong(expected, kJobCancelled, std::memory_order_acq_rel,
                                            std::memory_order_relaxed);
}

}  // namespace uvpy::exec
