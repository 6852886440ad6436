// timer_heap.h — the loop's timers: an intrusive 4-ary min-heap.
//
// Each TimerNode lives inside its owner (a Python TimerHandle, or a test
// struct) and records its own heap index, so cancel() is O(log n) and leaves
// nothing behind: no tombstones to skip, no periodic compaction.
//
// Layout: the array holds each node's sort key (deadline, seq) next to its
// pointer, so sifting compares contiguous entries and touches a node only to
// record its new index; a node is a Python object somewhere else in memory,
// and chasing a pointer per comparison was most of the cost of firing 100k
// timers (a cache miss per level). Four children per node halve the depth,
// and the four keys of a sibling group share one or two cache lines.
//
// Ordering: by deadline, ties broken by insertion order (seq), so two timers
// scheduled for the same instant fire in the order they were scheduled.
//
// Ownership: insert() retains the node's callback; remove() and pop_due()
// hand that reference on (released by remove, moved into the ready queue by
// the reactor on expiry).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "callback.h"

namespace uvpy::loop {

struct TimerNode {
  static constexpr size_t kNotScheduled = SIZE_MAX;

  // `when` is copied into the heap at insert(): set it before, never change
  // it while scheduled.

  double when = 0.0;
  uint64_t seq = 0;
  size_t index = kNotScheduled;
  Callback cb;

  bool scheduled() const { return index != kNotScheduled; }
};

class TimerHeap {
 public:
  TimerHeap() = default;
  TimerHeap(const TimerHeap&) = delete;
  TimerHeap& operator=(const TimerHeap&) = delete;
  ~TimerHeap() { clear(); }

  size_t size() const { return heap_.size(); }
  bool empty() const { return heap_.empty(); }
  // Deadline of the earliest timer; only valid when !empty().
  double next_when() const { return heap_.front().when; }

  // Schedules node (which must not be scheduled) and retains its callback.
  void insert(TimerNode* node);
  // Unschedules node if scheduled and releases its callback. Returns whether
  // it was scheduled.
  bool remove(TimerNode* node);
  // Pops the earliest timer if its deadline is before `limit`; the caller
  // takes over the heap's reference. Returns nullptr when none is due.
  TimerNode* pop_due(double limit);
  // Unschedules and releases everything (loop close).
  void clear();
  // Calls f(callback) for every scheduled timer, in no particular order;
  // stops at the first non-zero result and returns it.
  template <class F>
  int for_each(F&& f) const {
    for (const Entry& e : heap_) {
      if (int rc = f(e.node->cb)) return rc;
    }
    return 0;
  }

 private:
  static constexpr size_t kArity = 4;
  struct Entry {
    double when;
    uint64_t seq;
    TimerNode* node;
  };
  static bool before(const Entry& a, const Entry& b) {
    return a.when < b.when || (a.when == b.when && a.seq < b.seq);
  }
  void place(size_t i, const Entry& e) {
    heap_[i] = e;
    e.node->index = i;
  }
  void sift_up(size_t i, Entry e);
  void sift_down(size_t i, Entry e);
  void remove_at(size_t i);

  std::vector<Entry> heap_;
  uint64_t next_seq_ = 0;
};

}  // namespace uvpy::loop
