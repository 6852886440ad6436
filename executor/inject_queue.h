// inject_queue.h — the executor's front door: one bounded FIFO that every
// submission from outside the pool enters, and that full local queues
// overflow into.
//
// A mutex and an intrusive list are enough: outside submitters are few (in
// practice the loop thread), and workers take jobs in batches (up to half a
// local queue per lock), so the lock is taken far less often than once per job.
//
// Invariants:
//  1. len_ mirrors the list length and can be read without the lock, so idle
//     workers poll "anything here?" without touching the mutex. It is stored
//     seq_cst: that store is the "job is visible" half of the sleep/wake
//     handshake in idle.h.
//  2. The capacity bounds external submissions only (push). Overflow from a
//     local queue (push_batch) is always accepted: those jobs were admitted
//     already, and refusing them would make a worker wait for space that only
//     workers can make.
//  3. After close(), push fails with -ESHUTDOWN and every submitter blocked
//     for space returns -ESHUTDOWN. push_batch and the pops keep working, so
//     shutdown can still empty the queue.
#pragma once
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstddef>
#include <mutex>

#include "job.h"

namespace uvpy::exec {

class InjectQueue {
 public:
  explicit InjectQueue(size_t capacity) : capacity_(capacity > 0 ? capacity : 1) {}
  InjectQueue(const InjectQueue&) = delete;
  InjectQueue& operator=(const InjectQueue&) = delete;

  // Returns 0, -EAGAIN (full, !blocking) or -ESHUTDOWN (closed, also while
  // waiting for space).
  int push(Job* j, bool blocking) {
    std::unique_lock<std::mutex> lk(mu_);
    while (!closed_ && count_ >= capacity_) {
      if (!blocking) return -EAGAIN;
      ++waiters_;
      not_full_.wait(lk);
      --waiters_;
    }
    if (closed_) return -ESHUTDOWN;
    link(j, j, 1);
    return 0;
  }

  // Appends the list first..last (n jobs linked through next), ignoring the
  // capacity and close() (invariant 2).
  void push_batch(Job* first, Job* last, size_t n) {
    std::lock_guard<std::mutex> lk(mu_);
    link(first, last, n);
  }

  // Detaches up to max jobs from the front as a list linked through next;
  // returns how many.
  size_t pop_batch(size_t max, Job** out) {
    *out = nullptr;
    if (max == 0 || len_.load(std::memory_order_relaxed) == 0) return 0;
    std::lock_guard<std::mutex> lk(mu_);
    size_t n = std::min(max, count_);
    if (n == 0) return 0;
    Job* first = head_;
    Job* last = first;
    for (size_t i = 1; i < n; ++i) last = last->next;
    head_ = last->next;
    if (head_ == nullptr) tail_ = nullptr;
    last->next = nullptr;
    count_ -= n;
    len_.store(count_, std::memory_order_seq_cst);
    // One waiter per freed slot: the rest would only find the queue full again.
    for (size_t i = 0, w = std::min(n, waiters_); i < w; ++i) not_full_.notify_one();
    *out = first;
    return n;
  }

  // Detaches everything (shutdown).
  size_t take_all(Job** out) { return pop_batch(static_cast<size_t>(-1), out); }

  void close() {
    std::lock_guard<std::mutex> lk(mu_);
    closed_ = true;
    not_full_.notify_all();
  }

  bool closed() const {
    std::lock_guard<std::mutex> lk(mu_);
    return closed_;
  }
  size_t len() const { return len_.load(std::memory_order_seq_cst); }
  size_t capacity() const { return capacity_; }

 private:
  void link(Job* first, Job* last, size_t n) {
    last->next = nullptr;
    if (tail_ != nullptr) {
      tail_->next = first;
    } else {
      head_ = first;
    }
    tail_ = last;
    count_ += n;
    len_.store(count_, std::memory_order_seq_cst);
  }

  const size_t capacity_;
  mutable std::mutex mu_;
  std::condition_variable not_full_;
  Job* head_ = nullptr;  // guarded by mu_
  Job* tail_ = nullptr;  // guarded by mu_
  size_t count_ = 0;     // guarded by mu_
  size_t waiters_ = 0;   // guarded by mu_
  bool closed_ = false;  // guarded by mu_
  std::atomic<size_t> len_{0};
};

}  // namespace uvpy::exec
