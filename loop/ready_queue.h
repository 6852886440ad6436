// ready_queue.h — FIFO of callbacks that are ready to run this iteration.
//
// A growable ring buffer (no per-push allocation once warm). The queue
// retains what it holds and releases it after running or on clear().
//
// Fairness rule (asyncio's _run_once): drain() runs only the callbacks that
// were queued when it started. Callbacks queued while draining run on the
// next iteration, after the next poll, so a callback that reschedules itself
// can never starve I/O.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "callback.h"

namespace uvpy::loop {

class ReadyQueue {
 public:
  ReadyQueue() : buf_(64) {}
  ReadyQueue(const ReadyQueue&) = delete;
  ReadyQueue& operator=(const ReadyQueue&) = delete;
  ~ReadyQueue() { clear(); }

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }

  // Takes a new reference (cb.retain()).
  void push(Callback cb) {
    cb.retain();
    push_owned(cb);
  }
  // The caller hands over a reference it already holds.
  void push_owned(Callback cb) {
    if (size_ == buf_.size()) grow();
    buf_[(head_ + size_) & (buf_.size() - 1)] = cb;
    ++size_;
  }

  // Runs the callbacks present at entry, in order, adding each one run to
  // *ran. Returns 0, or -1 as soon as one callback returns -1; the ones not
  // yet run stay queued.
  int drain(uint64_t* ran) {
    const size_t n = size_;
    for (size_t i = 0; i < n; ++i) {
      Callback cb = pop();
      int rc = cb.run();
      cb.release();
      if (rc < 0) {
        *ran += i + 1;
        return -1;
      }
    }
    *ran += n;
    return 0;
  }

  // Calls f(callback) for every queued callback; stops at the first
  // non-zero result and returns it.
  template <class F>
  int for_each(F&& f) const {
    for (size_t i = 0; i < size_; ++i) {
      if (int rc = f(buf_[(head_ + i) & (buf_.size() - 1)])) return rc;
    }
    return 0;
  }

  // Releases everything without running it (loop close).
  void clear() {
    while (size_ > 0) pop().release();
  }

 private:
  Callback pop() {
    Callback cb = buf_[head_];
    head_ = (head_ + 1) & (buf_.size() - 1);
    --size_;
    return cb;
  }
  void grow() {
    std::vector<Callback> bigger(buf_.size() * 2);
    for (size_t i = 0; i < size_; ++i) bigger[i] = buf_[(head_ + i) & (buf_.size() - 1)];
    buf_.swap(bigger);
    head_ = 0;
  }

  std::vector<Callback> buf_;  // capacity is always a power of two
  size_t head_ = 0;
  size_t size_ = 0;
};

}  // namespace uvpy::loop
