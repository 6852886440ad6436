// completion_port.cc — see completion_port.h for the race argument.
#include "completion_port.h"

#include <sched.h>

namespace uvpy::exec {

CompletionPort::~CompletionPort() {
  // A pusher's increment happens-before its link, which our last drain (or
  // the caller's) acquired, so we cannot read a stale 0 here.
  while (pushers_.load(std::memory_order_acquire) != 0) sched_yield();
  drain();
}

void CompletionPort::push(Job* j) {
  pushers_.fetch_add(1, std::memory_order_relaxed);
  WakeFn wake = wake_;
  void* arg = wake_arg_;
  Job* head = head_.load(std::memory_order_relaxed);
  do {
    j->next = head;
  } while (!head_.compare_exchange_weak(head, j, std::memory_order_acq_rel,
                                        std::memory_order_relaxed));  // (a)
  // From here on j belongs to the drain thread and may already be freed.
  bool first = !armed_.exchange(true, std::memory_order_acq_rel);  // (b)
  if (first && wake != nullptr) wake(arg);
  pushers_.fetch_sub(1, std::memory_order_release);
}

Job* CompletionPort::take_batch() {
  armed_.exchange(false, std::memory_order_acq_rel);                 // (c)
  Job* j = head_.exchange(nullptr, std::memory_order_acq_rel);       // (d)
  Job* fifo = nullptr;  // the list is newest-first: reverse it
  while (j != nullptr) {
    Job* next = j->next;
    j->next = fifo;
    fifo = j;
    j = next;
  }
  return fifo;
}

}  // namespace uvpy::exec
