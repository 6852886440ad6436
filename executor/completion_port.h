// completion_port.h — the one way finished jobs get back to the loop thread:
// a multi-producer, single-consumer list plus one coalesced wakeup.
//
// Why a lock-free LIFO list (Linux's llist: llist_add / llist_del_all)
// rather than a Vyukov MPSC queue or a mutex-guarded vector:
//   - push is one CAS on the head, with no lock a preempted worker could hold;
//   - the consumer only ever takes the whole list (one exchange), so there is
//     no ABA problem, and no window where a half-linked node makes the
//     consumer spin or give up, as Vyukov's queue has;
//   - the batch is reversed once on the loop thread to restore FIFO order.
//
// Wakeup coalescing: armed_ means "a wake is on its way, a drain will come".
//   push:  (a) link the job (CAS head_, acq_rel)
//          (b) if armed_.exchange(true) was false: call wake()
//   drain: (c) armed_.exchange(false)           — disarm first
//          (d) head_.exchange(nullptr)          — then take the batch
// A push racing with a drain is either in this batch or re-arms and wakes:
//   - if (a) precedes (d) on head_, the job is in this batch;
//   - otherwise (d) precedes (a), so (c) happens-before (b) (d's release is
//     acquired by (a)'s CAS), and (b) reads (c)'s false or a later value:
//     reading false, this push wakes; reading true, some push that armed after
//     (c) has woken, and the drain that wake causes disarms after (b) in
//     armed_'s modification order, acquires (b), and so sees (a).
// So every push is followed by a drain that sees it, there is at most one
// wake per drain cycle, and a burst of N completions costs one wake.
//
// Lifetime: push may still be touching the port (arming, waking) after its
// job has been drained and completed. pushers_ counts pushes in flight; the
// destructor waits for it to reach 0, so a loop may destroy its port as soon
// as outstanding() is 0, even while the executor keeps running for others.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "job.h"

namespace uvpy::exec {

class CompletionPort {
 public:
  // wake(arg) is called from worker threads (or the thread calling
  // Executor::shutdown) at most once per drain cycle. It must be thread-safe
  // and cheap: in production it posts one callback into the loop's reactor.
  using WakeFn = void (*)(void* arg);

  CompletionPort(WakeFn wake, void* arg) : wake_(wake), wake_arg_(arg) {}
  // Waits for pushes in flight, then completes whatever was never drained,
  // on the destroying thread. Jobs still queued or running with this port
  // must not exist (outstanding() counts them).
  ~CompletionPort();
  CompletionPort(const CompletionPort&) = delete;
  CompletionPort& operator=(const CompletionPort&) = delete;

  // Any thread. The job must be done or cancelled; the port owns its `next`.
  void push(Job* j);

  // Drain thread only (one at a time, not re-entrantly). Calls on_job(job),
  // or job->complete(job), for each job in the batch, oldest first, and
  // returns how many. Jobs pushed meanwhile (even by complete() itself, by
  // resubmitting) come in a later batch, announced by a fresh wake.
  template <class F>
  size_t drain(F&& on_job) {
    Job* j = take_batch();
    size_t n = 0;
    while (j != nullptr) {
      Job* next = j->next;  // on_job may free or resubmit j
      outstanding_.fetch_sub(1, std::memory_order_relaxed);
      on_job(j);
      ++n;
      j = next;
    }
    return n;
  }
  size_t drain() {
    return drain([](Job* j) { j->complete(j); });
  }

  // Jobs accepted by an executor for this port whose completion has not yet
  // started. A port may be destroyed once this is 0.
  int64_t outstanding() const { return outstanding_.load(std::memory_order_acquire); }
  bool empty() const { return head_.load(std::memory_order_acquire) == nullptr; }
  bool armed() const { return armed_.load(std::memory_order_acquire); }
  // Nothing outstanding and no push in flight (a push may still be running
  // wake()): destroying the port now cannot wait, and no wake can follow.
  bool quiescent() const {
    return outstanding() == 0 && pushers_.load(std::memory_order_acquire) == 0;
  }

 private:
  friend class Executor;      // count accepted submissions in outstanding_
  friend class BlockingPool;
  Job* take_batch();

  const WakeFn wake_;
  void* const wake_arg_;
  alignas(64) std::atomic<Job*> head_{nullptr};
  std::atomic<bool> armed_{false};
  std::atomic<uint32_t> pushers_{0};
  alignas(64) std::atomic<int64_t> outstanding_{0};
};

// Hands back a job taken out of a queue without running it (job.h rule 3):
// cancelled if it was still queued (a shutdown's), already cancelled
// otherwise (try_cancel's), and pushed to its port.
inline void hand_back_cancelled(Job* j, int error = 0) {
  int expected = kJobQueued;
  if (j->state.compare_exchange_strong(expected, kJobCancelled, std::memory_order_acq_rel,
                                       std::memory_order_relaxed))
    j->error = error;  // job.h rule 6: a job try_cancel had cancelled keeps error 0
  j->cancel_requested.store(true, std::memory_order_relaxed);
  j->port->push(j);
}

}  // namespace uvpy::exec
