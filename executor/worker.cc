// worker.cc — the worker loop: where a worker looks for its next job, how it
// searches and parks, and how a job is run and handed back. See executor.h
// for the search order and idle.h for the sleep/wake protocol.
#include <algorithm>

#include "executor.h"
#include "platform.h"
#include "worker.h"

namespace uvpy::exec {

namespace {
// Tokio's choice: prime, so the check drifts relative to any periodic
// pattern in the jobs.
constexpr uint32_t kGlobalPollInterval = 61;
// Pause hints between two probes while spinning: a probe reads shared cache
// lines, and back-to-back probes would only bounce them between cores.
constexpr int kPausesPerProbe = 32;
}  // namespace

void Executor::worker_main(Worker* w) {
  bool searching = false;
  for (;;) {
    if (abort_.load(std::memory_order_acquire)) break;
    Job* j = next_local(w);
    if (j == nullptr) j = search(w, &searching);
    if (j != nullptr) {
      // A searcher that found work hands the role on, so a backlog keeps
      // pulling in parked workers (idle.h rule 3) -- but only if there is a
      // backlog: with nothing else queued, the woken worker would only spin
      // and park again, costing a futex wake per job and, on a busy core, a
      // preemption of the very job it was woken for.
      if (searching) {
        searching = false;
        if (idle_.end_search() && work_pending()) notify_parked();
      }
      execute(w, j);
      continue;
    }
    // No job anywhere this worker can see.
    if (stopping_.load(std::memory_order_acquire)) break;
    park(w, &searching);
  }
  if (searching) idle_.end_search();
  // Phase 2 for this worker's queue (empty already when draining).
  while (Job* j = w->local.pop()) {
    bump(w->cancelled);
    hand_back_cancelled(j);
  }
}

Job* Executor::next_local(Worker* w) {
  if (++w->tick % kGlobalPollInterval == 0) {
    if (Job* j = take_injected(w)) return j;
  }
  return w->local.pop();
}

Job* Executor::take_injected(Worker* w) {
  size_t avail = inject_.len();
  if (avail == 0) return nullptr;
  // A fair share, capped by half a local queue and by the room we have (+1
  // for the job we run at once).
  size_t n = std::min<size_t>(avail / n_ + 1, LocalQueue::kCapacity / 2);
  n = std::min<size_t>(n, size_t{w->local.free_slots()} + 1);
  Job* first;
  size_t got = inject_.pop_batch(n, &first);
  if (got == 0) return nullptr;
  for (Job* k = first->next; k != nullptr;) {
    Job* next = k->next;
    w->local.push(k, inject_);
    k = next;
  }
  // We hold more than we are about to run: let a sleeper steal the rest
  // rather than have it wait behind a job that may block for long.
  if (got > 1) notify_parked();
  return first;
}

Job* Executor::steal(Worker* w) {
  if (n_ < 2) return nullptr;
  w->rng ^= w->rng << 13;
  w->rng ^= w->rng >> 7;
  w->rng ^= w->rng << 17;
  unsigned start = static_cast<unsigned>(w->rng % n_);
  for (unsigned i = 0; i < n_; ++i) {
    Worker& victim = workers_[(start + i) % n_];
    if (&victim == w) continue;
    uint32_t taken;
    if (Job* j = victim.local.steal_into(w->local, &taken)) {
      bump(w->steals);
      return j;
    }
  }
  return nullptr;
}

Job* Executor::search(Worker* w, bool* searching) {
  if (!*searching) *searching = idle_.try_begin_search();
  int64_t deadline = 0;
  for (bool first = true;; first = false) {
    if (Job* j = take_injected(w)) return j;
    if (Job* j = steal(w)) return j;
    // Only searchers spin (idle.h rule 2); the rest give up after one pass.
    if (!*searching || opts_.spin_us == 0 || stopping_.load(std::memory_order_relaxed))
      return nullptr;
    int64_t now = now_ns();
    if (first) {
      deadline = now + int64_t{opts_.spin_us} * 1000;
    } else if (now >= deadline) {
      return nullptr;
    }
    for (int i = 0; i < kPausesPerProbe; ++i) cpu_relax();
  }
}

bool Executor::work_pending() const {
  if (inject_.len() > 0) return true;
  for (unsigned i = 0; i < n_; ++i)
    if (!workers_[i].local.empty()) return true;
  return false;
}

void Executor::park(Worker* w, bool* searching) {
  idle_.park_begin(w->id, *searching);
  *searching = false;
  // Re-check after registering as a sleeper (idle.h rule 4); a shutdown
  // that began meanwhile must not be slept through either.
  if (work_pending() || stopping_.load(std::memory_order_seq_cst)) {
    *searching = idle_.leave_park(w->id);
    return;
  }
  w->parker.park();
  *searching = idle_.leave_park(w->id);
}

void Executor::execute(Worker* w, Job* j) {
  int expected = kJobQueued;
  if (abort_.load(std::memory_order_relaxed) ||
      !j->state.compare_exchange_strong(expected, kJobRunning, std::memory_order_acq_rel,
                                        std::memory_order_relaxed)) {
    bump(w->cancelled);
    hand_back_cancelled(j);
    return;
  }
  bump(w->started);
  int64_t t0 = now_ns();
  j->start_ns = t0;
  j->run(j);
  int64_t t1 = now_ns();
  j->end_ns = t1;
  bump(w->busy_ns, static_cast<uint64_t>(t1 - t0));
  bump(w->completed);
  j->state.store(kJobDone, std::memory_order_release);
  j->port->push(j);  // j may be gone once this returns
}

}  // namespace uvpy::exec
