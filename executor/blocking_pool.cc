// blocking_pool.cc — see blocking_pool.h for the rules the code cites.
#include "blocking_pool.h"

#include <pthread.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>

#include "completion_port.h"
#include "platform.h"

namespace uvpy::exec {

namespace {

struct PthreadStart {
  BlockingPool* pool;
  unsigned index;
};

void* pthread_entry(void* arg) {
  auto* s = static_cast<PthreadStart*>(arg);
  BlockingPool* pool = s->pool;
  unsigned index = s->index;
  delete s;
  pool->thread_main(index);
  return nullptr;
}

int spawn_pthread(void*, BlockingPool* pool, unsigned index) {
  auto* s = new PthreadStart{pool, index};
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_t t;
  int rc = pthread_create(&t, &attr, pthread_entry, s);
  pthread_attr_destroy(&attr);
  if (rc != 0) delete s;
  return rc;
}

constexpr int kPausesPerProbe = 32;
constexpr int kLockTries = 64;  // spin_for_work: lock retries once a job is seen

}  // namespace

BlockingPool::BlockingPool(const Options& opts) : opts_(opts) {
  if (opts_.spawn == nullptr) opts_.spawn = spawn_pthread;
  if (opts_.max_threads == 0) opts_.max_threads = 1;
}

BlockingPool::~BlockingPool() {
  shutdown(false);
  wait_exited();
}

// --- submit ---------------------------------------------------------------------

int BlockingPool::submit(Job* j, bool blocking) {
  if (int rc = begin_submit(j, &abort_, now_ns())) return rc;
  j->next = nullptr;

  unsigned starts[kMaxStarts];  // slots reserved for threads to start (rule 5)
  unsigned n_start = 0;
  bool wake = false;
  {
    std::unique_lock<std::mutex> lk(mu_);
    while (blocking && !stopping_ && len_ >= opts_.queue_capacity) {
      ++room_waiters_;
      room_cv_.wait(lk);
      --room_waiters_;
    }
    if (stopping_) return -ESHUTDOWN;
    if (len_ >= opts_.queue_capacity) return -EAGAIN;
    j->state.store(kJobQueued, std::memory_order_relaxed);  // published by mu_
    j->port->outstanding_.fetch_add(1, std::memory_order_relaxed);
    if (tail_ != nullptr) tail_->next = j;
    else head_ = j;
    tail_ = j;
    ++len_;
    queued_.store(len_, std::memory_order_release);
    if (idle_ > 0 && active_ + claimed_ < opts_.max_threads) {  // rule 2: claim a waiting thread
      --idle_;
      ++claimed_;
      // Spinners take queued jobs without being woken (one each): wake a
      // sleeper only for the jobs they cannot cover.
      wake = len_ > spinning_;
    } else if (idle_ == 0 && threads_ < opts_.max_threads) {  // rule 2: or start one, or the core (rule 8)
      unsigned want = std::max(1u, opts_.core_threads > threads_ ? opts_.core_threads - threads_ : 0u);
      n_start = reserve_threads_locked(want, starts);
    }
  }
  // Notified after unlocking, so the woken thread does not block on mu_ at
  // once; a claim outlives the unlock (rule 3), so no wakeup is lost.
  if (wake) cv_.notify_one();
  int rc = start_threads(starts, n_start);
  if (rc == 0) return 0;
  // If no thread is left to run it, take the job back out and report the
  // host's error; jobs queued behind it by others go back failed (rule 5),
  // a draining shutdown's too: no thread is left to drain them. A job no
  // longer queued was taken by a thread that has exited since (a lowered
  // limit, a keep-alive): it ran or was handed back, so it was accepted and
  // submit() must say so (job.h rule 5).
  std::unique_lock<std::mutex> lk(mu_);
  if (threads_ > 0) return 0;
  Job** link = &head_;
  Job* prev = nullptr;
  while (*link != nullptr && *link != j) {
    prev = *link;
    link = &(*link)->next;
  }
  const bool taken_back = *link == j;
  if (taken_back) {
    *link = j->next;
    if (tail_ == j) tail_ = prev;
    --len_;
    queued_.store(len_, std::memory_order_release);
    release_stale_claim_locked();
    j->port->outstanding_.fetch_sub(1, std::memory_order_relaxed);
    j->state.store(kJobIdle, std::memory_order_relaxed);
  }
  Job* stranded = take_queue_locked();
  lk.unlock();
  hand_back_all(stranded, -rc);
  return taken_back ? -rc : 0;
}

// Empties the queue (rule 3's counts kept): its jobs, linked through next.
Job* BlockingPool::take_queue_locked() {
  Job* jobs = head_;
  head_ = tail_ = nullptr;
  len_ = 0;
  queued_.store(0, std::memory_order_release);
  idle_ += claimed_;
  claimed_ = 0;
  if (room_waiters_ > 0) room_cv_.notify_all();
  return jobs;
}

// Hands back jobs taken out of the queue without running them: cancelled,
// or, with error (job.h rule 6), failed for want of a thread.
void BlockingPool::hand_back_all(Job* jobs, int error) {
  while (jobs != nullptr) {
    Job* next = jobs->next;
    cancelled_.fetch_add(1, std::memory_order_relaxed);
    exec::hand_back_cancelled(jobs, error);
    jobs = next;
  }
}

// Rule 5: reserves up to `want` thread slots (within max_threads and
// kMaxStarts) with the lowest free indices; returns how many, in starts.
unsigned BlockingPool::reserve_threads_locked(unsigned want, unsigned* starts) {
  want = std::min({want, opts_.max_threads > threads_ ? opts_.max_threads - threads_ : 0u,
                   kMaxStarts});
  unsigned n = 0;
  for (unsigned index = 0; n < want; ++index) {
    if (index == index_used_.size()) index_used_.push_back(false);
    if (index_used_[index]) continue;
    index_used_[index] = true;
    starts[n++] = index;
  }
  threads_ += n;
  return n;
}

// Rule 5: starts the reserved threads with mu_ released, giving back the
// slot of each the host could not start. 0, or the last host error.
int BlockingPool::start_threads(const unsigned* starts, unsigned n) {
  int rc = 0;
  for (unsigned i = 0; i < n; ++i) {
    int r = opts_.spawn(opts_.spawn_arg, this, starts[i]);
    if (r == 0) {
      spawned_.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    rc = r;
    std::lock_guard<std::mutex> lk(mu_);
    --threads_;
    index_used_[starts[i]] = false;
    exit_cv_.notify_all();
  }
  return rc;
}

void BlockingPool::set_max_threads(unsigned n) {
  unsigned starts[kMaxStarts];
  unsigned n_start = 0;
  {
    std::lock_guard<std::mutex> lk(mu_);
    opts_.max_threads = n > 0 ? n : 1;
    if (threads_ > opts_.max_threads) {
      cv_.notify_all();  // rule 4: extras exit when idle
    } else if (head_ != nullptr && !stopping_) {
      // Rule 2 for the jobs already queued: the waiting threads take what
      // the raised limit now lets run, and new threads the rest.
      cv_.notify_all();
      const size_t waiting = idle_ + claimed_;
      if (len_ > waiting) {
        n_start = reserve_threads_locked(unsigned(std::min<size_t>(len_ - waiting, kMaxStarts)),
                                         starts);
      }
    }
  }
  int rc = start_threads(starts, n_start);
  if (rc == 0) return;
  Job* stranded = nullptr;  // rule 5: no thread left for the queued jobs (draining or not)
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (threads_ == 0) stranded = take_queue_locked();
  }
  hand_back_all(stranded, -rc);
}

// --- the threads -------------------------------------------------------------------

Job* BlockingPool::pop_locked() {
  Job* j = head_;
  if (j == nullptr) return nullptr;
  head_ = j->next;
  if (head_ == nullptr) tail_ = nullptr;
  --len_;
  queued_.store(len_, std::memory_order_release);
  release_stale_claim_locked();
  if (room_waiters_ > 0) room_cv_.notify_one();
  return j;
}

// Rule 3: a claim stands for a queued job. When another thread took that job
// (a batch going on, or a spinner), the claimed thread wakes to an empty
// queue and waits on: it is idle again, and must be counted so.
void BlockingPool::release_stale_claim_locked() {
  if (claimed_ > len_) {
    --claimed_;
    ++idle_;
  }
}

void BlockingPool::leave_idle_locked() {  // rule 3
  if (claimed_ > 0) --claimed_;
  else --idle_;
}

// Spins (rule 3's idle state, without mu_) until a job is queued and mu_ can
// be taken without sleeping, or spin_us pass. Returns with lk locked either
// way. Blocking on mu_ the moment queued_ turns non-zero would mean sleeping
// on the submitter, which still holds mu_, and a futex wake to get back up.
void BlockingPool::spin_for_work(std::unique_lock<std::mutex>& lk) {
  if (opts_.spin_us > 0) {
    const int64_t deadline = now_ns() + int64_t{opts_.spin_us} * 1000;
    do {
      if (queued_.load(std::memory_order_acquire) > 0) {
        // The submitter publishes queued_ while it still holds mu_, for a
        // few more instructions: retry the lock after one pause, not after
        // a whole probe interval (32 pauses are over a microsecond on
        // recent x86, a third of a no-op round trip).
        for (int i = 0; i < kLockTries; ++i) {
          if (lk.try_lock()) return;
          cpu_relax();
        }
      }
      for (int i = 0; i < kPausesPerProbe; ++i) cpu_relax();
    } while (now_ns() < deadline);
  }
  lk.lock();
}

void BlockingPool::thread_main(unsigned index) {
  char name[16];
  std::snprintf(name, sizeof name, "uvpy_%u", index);
  pthread_setname_np(pthread_self(), name);
  const auto keep_alive = std::chrono::milliseconds(opts_.keep_alive_ms);
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    if (active_ < opts_.max_threads || stopping_) {  // rule 2
      if (Job* j = pop_locked()) {
        ++active_;
        lk.unlock();
        run_batch(j);
        lk.lock();
        --active_;
        continue;
      }
    }
    if (stopping_ || threads_ > opts_.max_threads) break;
    // Wait for work: counted idle from here (rule 3), spinning first.
    ++idle_;
    ++spinning_;
    lk.unlock();
    spin_for_work(lk);
    --spinning_;
    bool timed_out = false;
    const bool core = index < opts_.core_threads;  // rule 8: waits without a keep-alive
    bool take = false;
    for (;;) {
      // A queued job is ours while fewer than max_threads run jobs (rule 2:
      // for claimed threads and spinners alike); when draining at shutdown,
      // always.
      if (head_ != nullptr && (active_ < opts_.max_threads || stopping_)) {
        take = true;
        break;
      }
      if (timed_out || stopping_ || threads_ > opts_.max_threads) break;
      if (core) cv_.wait(lk);
      else timed_out = cv_.wait_for(lk, keep_alive) == std::cv_status::timeout;
    }
    leave_idle_locked();
    if (!take) break;  // else mu_ is still held: the top of the loop pops the job
  }
  --threads_;
  index_used_[index] = false;
  exit_cv_.notify_all();
}

void BlockingPool::run_batch(Job* j) {  // rules 7 and 9
  if (opts_.enter != nullptr) opts_.enter(opts_.batch_arg);
  const int64_t deadline = now_ns() + int64_t{opts_.batch_us} * 1000;
  Job* ran = nullptr;  // its completion not pushed yet
  for (;;) {
    if (abort_.load(std::memory_order_acquire)) hand_back_cancelled(j);
    else if (run_job(j)) ran = j;
    if (now_ns() >= deadline || queued_.load(std::memory_order_acquire) == 0) break;
    Job* next = nullptr;
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (active_ <= opts_.max_threads || stopping_) next = pop_locked();  // rule 2: counting this thread
    }
    if (ran != nullptr) {  // before the next job, which may block for long
      finish(ran);
      ran = nullptr;
    }
    if (next == nullptr) break;
    j = next;
  }
  if (opts_.leave != nullptr) opts_.leave(opts_.batch_arg);
  if (ran != nullptr) finish(ran);
}

bool BlockingPool::run_job(Job* j) {  // rule 1
  int expected = kJobQueued;
  if (!j->state.compare_exchange_strong(expected, kJobRunning, std::memory_order_acq_rel,
                                        std::memory_order_relaxed)) {
    hand_back_cancelled(j);
    return false;
  }
  running_.fetch_add(1, std::memory_order_relaxed);
  j->start_ns = now_ns();
  j->run(j);
  j->end_ns = now_ns();
  running_.fetch_sub(1, std::memory_order_relaxed);
  completed_.fetch_add(1, std::memory_order_relaxed);
  return true;
}

void BlockingPool::finish(Job* j) {
  j->state.store(kJobDone, std::memory_order_release);
  j->port->push(j);  // j may be gone once this returns
}

void BlockingPool::hand_back_cancelled(Job* j) {
  cancelled_.fetch_add(1, std::memory_order_relaxed);
  exec::hand_back_cancelled(j);
}

// --- shutdown and metrics -------------------------------------------------------------

void BlockingPool::shutdown(bool drain) {  // rule 6
  Job* cancelled = nullptr;
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
    if (!drain) {
      abort_.store(true, std::memory_order_release);
      cancelled = take_queue_locked();
    }
    cv_.notify_all();
    room_cv_.notify_all();
  }
  hand_back_all(cancelled, 0);
}

void BlockingPool::wait_exited() {
  std::unique_lock<std::mutex> lk(mu_);
  exit_cv_.wait(lk, [this] { return threads_ == 0; });
}

BlockingPool::Metrics BlockingPool::metrics() const {
  Metrics m;
  {
    std::lock_guard<std::mutex> lk(mu_);
    m.threads = threads_;
    m.idle = idle_ + claimed_;
    m.max_threads = opts_.max_threads;
    m.queued = len_;
  }
  m.running = running_.load(std::memory_order_relaxed);
  m.completed = completed_.load(std::memory_order_relaxed);
  m.cancelled = cancelled_.load(std::memory_order_relaxed);
  m.spawned = spawned_.load(std::memory_order_relaxed);
  return m;
}

}  // namespace uvpy::exec
