// executor.cc — start, submission, shutdown and metrics. The worker loop is
// in worker.cc; executor.h has the scheduling order, idle.h the sleep/wake
// protocol.
//
// Shutdown, in phases (shutdown() is idempotent and safe with work in flight):
//   1. Stop accepting. stopping_ is set and the injection queue closed under
//      state_mu_: every later submit, and every submitter blocked for room,
//      gets -ESHUTDOWN. (ESHUTDOWN, "cannot send after transport endpoint
//      shutdown", says exactly that and is distinct from a full queue.)
//      Without drain, abort_ is set too, which should_stop() reports to jobs
//      already running.
//   2. Without drain, hand back what is queued: the injection queue is
//      emptied here, each job pushed to its port as cancelled; each worker
//      empties its own local queue the same way when it next looks at abort_
//      (between jobs), since only the owner may pop it. With drain, nothing
//      happens here: workers keep running jobs.
//   3. Wake everyone. Sleepers are taken off the list and every Parker gets a
//      permit, so a worker that was about to park returns at once. From now
//      on workers never park: a worker that finds no job anywhere exits, and
//      with drain that is the moment the queues it can see are empty. Jobs
//      cannot enter after phase 1 except by a worker's own push or overflow,
//      and that worker looks again before it exits, so nothing is stranded.
//   4. Join every worker (skipped when called from a worker of this executor:
//      a thread cannot join itself; the next call from outside, or the
//      destructor, joins).
//   5. Hand back anything still in the injection queue as cancelled: a
//      worker's last overflow, or everything if no worker ever ran.
// After phase 5 every accepted job has been pushed to its port exactly once;
// the ports' owners complete them by draining.
#include "executor.h"

#include <pthread.h>
#include <sched.h>
#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>

#include "platform.h"
#include "worker.h"

namespace uvpy::exec {

namespace {
std::vector<int> affinity_cpus() {
  std::vector<int> cpus;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set)) cpus.push_back(c);
  }
  return cpus;
}
}  // namespace

thread_local Executor::Worker* Executor::t_worker_ = nullptr;

unsigned Executor::affinity_cpu_count() {
  return static_cast<unsigned>(std::max<size_t>(1, affinity_cpus().size()));
}

Executor::Executor() : Executor(Options{}) {}

Executor::Executor(const Options& opts)
    : opts_(opts),
      cpus_(affinity_cpus()),
      n_(opts.workers > 0 ? opts.workers : static_cast<unsigned>(std::max<size_t>(1, cpus_.size()))),
      workers_(new Worker[n_]),
      inject_(opts.queue_capacity),
      idle_(n_) {
  for (unsigned i = 0; i < n_; ++i) {
    Worker& w = workers_[i];
    w.exec = this;
    w.id = i;
    w.rng = 0x9E3779B97F4A7C15ull * (i + 1);
  }
}

Executor::~Executor() { shutdown(false); }

int Executor::current_worker() const {
  Worker* w = t_worker_;
  return w != nullptr && w->exec == this ? static_cast<int>(w->id) : -1;
}

// --- start --------------------------------------------------------------------

int Executor::start() {
  int rc = 0;
  {
    std::lock_guard<std::mutex> lk(state_mu_);
    if (stopping_.load(std::memory_order_acquire)) return -ESHUTDOWN;
    if (started_) return -EALREADY;
    started_ = true;
    // Workers block asynchronous signals, so the kernel delivers them to a
    // thread that runs the loop (Python handles signals on the main thread).
    // The new threads inherit this mask; the caller's is restored below.
    sigset_t all, old;
    sigfillset(&all);
    for (int s : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT, SIGSYS}) sigdelset(&all, s);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (unsigned i = 0; i < n_ && rc == 0; ++i) {
      Worker& w = workers_[i];
      rc = pthread_create(&w.thread, nullptr, &Executor::worker_entry, &w);
      if (rc == 0) w.running = true;
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
  }
  if (rc != 0) {
    shutdown(false);
    return -rc;
  }
  return 0;
}

void* Executor::worker_entry(void* arg) {
  auto* w = static_cast<Worker*>(arg);
  char name[16];
  std::snprintf(name, sizeof name, "uvpy-exec-%u", w->id);
  pthread_setname_np(pthread_self(), name);
  t_worker_ = w;
  w->exec->worker_main(w);
  t_worker_ = nullptr;
  return nullptr;
}

// --- submit -------------------------------------------------------------------

int Executor::submit(Job* j, bool blocking) {
  if (int rc = begin_submit(j, &abort_, now_ns())) return rc;
  j->state.store(kJobQueued, std::memory_order_relaxed);  // published by the queue
  CompletionPort* port = j->port;
  port->outstanding_.fetch_add(1, std::memory_order_relaxed);

  Worker* w = t_worker_;
  if (w != nullptr && w->exec == this) {
    if (stopping_.load(std::memory_order_acquire)) {
      port->outstanding_.fetch_sub(1, std::memory_order_relaxed);
      j->state.store(kJobIdle, std::memory_order_relaxed);
      return -ESHUTDOWN;
    }
    bump(w->spawned);
    w->local.push(j, inject_);
    notify_parked();
    return 0;
  }

  int rc = inject_.push(j, blocking);
  if (rc < 0) {
    port->outstanding_.fetch_sub(1, std::memory_order_relaxed);
    j->state.store(kJobIdle, std::memory_order_relaxed);
    return rc;
  }
  submitted_.fetch_add(1, std::memory_order_relaxed);
  notify_parked();
  return 0;
}

void Executor::notify_parked() {
  if (!idle_.should_wake()) return;
  int id = idle_.pop_sleeper();
  if (id < 0) return;
  wakes_.fetch_add(1, std::memory_order_relaxed);
  workers_[id].parker.unpark();
}

// --- shutdown -----------------------------------------------------------------

void Executor::cancel_injected() {
  Job* j;
  uint64_t n = inject_.take_all(&j);
  while (j != nullptr) {
    Job* next = j->next;
    hand_back_cancelled(j);
    j = next;
  }
  if (n > 0) cancelled_by_shutdown_.fetch_add(n, std::memory_order_relaxed);
}

void Executor::wake_all() {
  idle_.unlist_all();
  for (unsigned i = 0; i < n_; ++i) workers_[i].parker.unpark();
}

void Executor::shutdown(bool drain) {
  {  // 1. Stop accepting.
    std::lock_guard<std::mutex> lk(state_mu_);
    if (!drain) abort_.store(true, std::memory_order_release);
    if (!stopping_.load(std::memory_order_relaxed)) {
      stopping_.store(true, std::memory_order_seq_cst);
      inject_.close();
    }
  }
  // 2. Without drain, hand back the injection queue now.
  if (abort_.load(std::memory_order_acquire)) cancel_injected();
  // 3. Wake everyone.
  wake_all();
  // 4. Join, unless we are one of the workers.
  if (current_worker() >= 0) return;
  std::lock_guard<std::mutex> jl(join_mu_);
  for (unsigned i = 0; i < n_; ++i) {
    Worker& w = workers_[i];
    bool running;
    {
      std::lock_guard<std::mutex> lk(state_mu_);
      running = w.running;
    }
    if (!running) continue;
    pthread_join(w.thread, nullptr);
    std::lock_guard<std::mutex> lk(state_mu_);
    w.running = false;
  }
  // 5. Leftovers.
  cancel_injected();
}

// --- metrics ------------------------------------------------------------------

Executor::Metrics Executor::metrics() const {
  // Read "later" counters before "earlier" ones (completed before started
  // before submitted), so concurrent progress can only overstate queued and
  // running, never make them negative.
  Metrics m;
  m.workers.resize(n_);
  uint64_t started = 0, spawned = 0;
  for (unsigned i = 0; i < n_; ++i) {
    const Worker& w = workers_[i];
    WorkerMetrics& wm = m.workers[i];
    wm.completed = w.completed.load(std::memory_order_relaxed);
    wm.busy_ns = w.busy_ns.load(std::memory_order_relaxed);
    wm.steals = w.steals.load(std::memory_order_relaxed);
    m.completed += wm.completed;
    m.steals += wm.steals;
  }
  m.cancelled = cancelled_by_shutdown_.load(std::memory_order_relaxed);
  m.wakes = wakes_.load(std::memory_order_relaxed);
  for (unsigned i = 0; i < n_; ++i) {
    const Worker& w = workers_[i];
    started += w.started.load(std::memory_order_relaxed);
    m.workers[i].cancelled = w.cancelled.load(std::memory_order_relaxed);
    m.cancelled += m.workers[i].cancelled;
  }
  for (unsigned i = 0; i < n_; ++i) spawned += workers_[i].spawned.load(std::memory_order_relaxed);
  m.submitted = submitted_.load(std::memory_order_relaxed) + spawned;
  m.running = started > m.completed ? started - m.completed : 0;
  uint64_t out = started + m.cancelled;
  m.queued = m.submitted > out ? m.submitted - out : 0;
  return m;
}

}  // namespace uvpy::exec
