// blocking_pool.h — threads for work that may block: Python callables
// (run_in_executor(None, ...), NativeExecutor.submit) that wait on files,
// sockets, locks, SDK calls or on each other for as long as they like.
//
// Why a second pool. The per-core Executor (executor.h) has one worker per
// CPU and is the home of work that never blocks: native kernels. A callable
// that blocks there holds a core's only worker, so the jobs queued behind it
// wait, and deadlock when they are what it waits for. Here, as in tokio's
// blocking pool (runtime/blocking/pool.rs), threads are started on demand up
// to a limit and exit after an idle keep-alive, so a job never waits behind
// a blocked one while the pool is below its limit.
//
// State (all under mu_, except the atomic mirror queued_):
//   queue_   FIFO of accepted jobs, intrusive through Job::next
//   threads_ threads started (or being started) and not yet exited
//   idle_    threads waiting for work that no submitter has claimed
//   claimed_ idle threads a submitter has claimed (notified), not yet awake
//   active_  threads that took a job and have not come back from its batch
//   spinning_ idle threads still spinning: they need no notify (rule 3)
// A thread waits for work by spinning (spin_us, no lock) and then on cv_.
//
// Rules
//  1. Every accepted job is run or handed back cancelled, exactly once
//     (job.h rules 1-3): the thread that takes it out of queue_ decides with
//     one CAS queued -> running.
//  2. No job waits while a thread could take it, and no more than
//     max_threads threads run jobs. active_ counts the threads between
//     taking a job out of queue_ and coming back from its batch; a thread
//     takes a job (at the top of its loop, out of its wait, or to go on with
//     its batch) only while the others leave room under the limit. submit()
//     claims an idle thread if there is one and active_ + claimed_ is under
//     the limit (idle_ -> claimed_, one notify), otherwise it starts a thread
//     while threads_ < max_threads. With the pool at its limit the job waits
//     for the next thread to finish its job; that is the bound, as with
//     asyncio's ThreadPoolExecutor. A lowered limit holds at once, before the
//     extra threads have exited and for the threads whose jobs were running;
//     a raised one puts queued jobs on waiting or new threads at once.
//  3. idle_ + claimed_ is always the number of waiting threads, and
//     claimed_ <= len_: a claim stands for a queued job. A thread that stops
//     waiting (to take a job, or to exit) consumes a claim if there is one,
//     else leaves idle_. A job taken out of the queue by a thread that was
//     not claimed for it (a batch going on, a spinner) turns the claim it
//     leaves without a job back into idle_: the claimed sleeper wakes to an
//     empty queue and waits on, and later submits must still see it idle, or
//     at the thread limit they would queue behind it with nobody to run them.
//     A claim notifies cv_ only when more jobs are queued than threads spin:
//     a spinner that gives up re-checks the queue under mu_ before it
//     sleeps, so the job that went unnotified is still seen.
//  4. A waiting thread exits after keep_alive_ms without work, or at once
//     when threads_ exceeds max_threads (the limit was lowered), so an idle
//     process holds no threads and a burst's extra threads go away.
//  5. Threads are started by the host (Options::spawn) with the pool's mutex
//     released: a host that starts Python threads takes the GIL to do it,
//     and a pool thread that holds the GIL may be waiting for mu_. The slot
//     is reserved (threads_++) before mu_ is released, so rule 2's count is
//     exact, and given back if the host fails to start the thread. When
//     that leaves no thread at all (a start that failed after others had
//     queued behind its reservation), the queued jobs go back failed with
//     the host's error (job.h rule 6): none would run until a later submit,
//     or ever once a draining shutdown began.
//  6. shutdown(drain) stops accepting (-ESHUTDOWN) and wakes every waiting
//     thread. With drain, threads run what is queued, then exit; without,
//     queued jobs are handed back cancelled and running ones see
//     should_stop(). wait_exited() waits for every thread to leave
//     thread_main; the pool must outlive that.
//  7. A thread that took a job goes on taking queued jobs, between one
//     enter() and one leave(), until the queue is empty or batch_us have
//     passed. The host uses that to take the GIL once for many short
//     callables instead of once each: a burst of tiny jobs then costs few GIL
//     hand-offs among many threads. A job that blocks releases the GIL while
//     it waits, so a batch never holds up the others for longer than a
//     runnable callable would. Lock order: enter()'s lock (the GIL) before
//     mu_, as for submitters that hold the GIL; mu_ is never held across
//     enter(), leave() or a job.
//  8. The first core_threads threads (indices 0..core_threads-1) start
//     together, at the submit that starts the first of them, and wait for
//     work without a keep-alive. With one per CPU a job finds a thread
//     spinning on a free core: a single thread shares its core with the
//     submitting loop about half the time, and a hand-off then waits for
//     the scheduler instead of a spin.
//  9. A job's completion goes to its port before the next job of its batch
//     starts, or, for the batch's last job, after leave(). The loop thread
//     that the push wakes takes the GIL next: pushed after leave(), it finds
//     the GIL free instead of sleeping on it until leave() (a futex wake and
//     a context switch, measured as the no-op round trip's p50 rising from
//     5.0 to 5.7 µs); pushed before the next job, a completion is never held
//     back by a job that blocks.
//
// Errors are negative errno values; nothing throws.
//   submit: -EINVAL (job lacks run, complete or port), -EBUSY (already
//           queued or running), -EAGAIN (queue_capacity reached),
//           -ESHUTDOWN (shutdown began), or the host's error when no thread
//           exists and none could be started (nothing is then queued); a
//           job a thread took meanwhile was accepted: 0.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include "job.h"

namespace uvpy::exec {

class BlockingPool {
 public:
  // Starts a thread that calls pool->thread_main(index) and returns 0, or
  // returns a positive errno. index is the lowest free one (0, 1, ...), for
  // the thread's name. nullptr: a detached pthread.
  using SpawnFn = int (*)(void* arg, BlockingPool* pool, unsigned index);
  // Called around a run of consecutive jobs on one thread (rule 7).
  using BatchFn = void (*)(void* arg);

  struct Options {
    unsigned max_threads = 8;
    unsigned core_threads = 0;     // started together, and kept while idle (rule 8)
    size_t queue_capacity = 4096;  // accepted jobs not yet taken (backpressure)
    unsigned spin_us = 20;         // how long a thread that finished a job spins for the next (as Executor's)
    unsigned keep_alive_ms = 10000;
    SpawnFn spawn = nullptr;
    void* spawn_arg = nullptr;
    BatchFn enter = nullptr;  // before the first job of a batch
    BatchFn leave = nullptr;  // after its last
    void* batch_arg = nullptr;
    unsigned batch_us = 200;  // a batch takes more jobs until it has run this long
  };

  struct Metrics {
    unsigned threads = 0;      // started, not exited
    unsigned idle = 0;         // waiting for work
    unsigned max_threads = 0;
    uint64_t queued = 0;       // accepted, not yet taken
    uint64_t running = 0;      // inside run() now
    uint64_t completed = 0;    // ran to the end
    uint64_t cancelled = 0;    // handed back without running
    uint64_t spawned = 0;      // threads ever started
  };

  explicit BlockingPool(const Options& opts);
  ~BlockingPool();  // shutdown(false), then wait_exited()
  BlockingPool(const BlockingPool&) = delete;
  BlockingPool& operator=(const BlockingPool&) = delete;

  // blocking: wait for room instead of failing with -EAGAIN (shutdown ends
  // the wait with -ESHUTDOWN).
  int submit(Job* job, bool blocking = false);
  void shutdown(bool drain);
  void wait_exited();
  void set_max_threads(unsigned n);
  Metrics metrics() const;

  // The body of every pool thread (rule 5); returns when the thread exits.
  void thread_main(unsigned index);

 private:
  static constexpr unsigned kMaxStarts = 64;  // threads one call starts at most
  unsigned reserve_threads_locked(unsigned want, unsigned* starts);
  int start_threads(const unsigned* starts, unsigned n);
  Job* take_queue_locked();
  void hand_back_all(Job* jobs, int error);
  Job* pop_locked();
  void leave_idle_locked();
  void release_stale_claim_locked();
  void hand_back_cancelled(Job* j);
  bool run_job(Job* j);  // true: it ran, and finish(j) is due
  void finish(Job* j);   // done: to the port (rule 9)
  void run_batch(Job* first);
  void spin_for_work(std::unique_lock<std::mutex>& lk);

  Options opts_;
  mutable std::mutex mu_;
  std::condition_variable cv_;       // work arrived, or shutdown
  std::condition_variable exit_cv_;  // a thread exited
  std::condition_variable room_cv_;  // a job left the queue, or shutdown
  unsigned room_waiters_ = 0;
  Job* head_ = nullptr;
  Job* tail_ = nullptr;
  size_t len_ = 0;
  unsigned threads_ = 0;
  unsigned idle_ = 0;
  unsigned claimed_ = 0;
  unsigned active_ = 0;
  unsigned spinning_ = 0;
  std::vector<bool> index_used_;
  bool stopping_ = false;
  std::atomic<size_t> queued_{0};  // len_, for spinners that read it without mu_
  std::atomic<bool> abort_{false};
  std::atomic<uint64_t> running_{0}, completed_{0}, cancelled_{0}, spawned_{0};
};

}  // namespace uvpy::exec
