// timer_heap.cc — see timer_heap.h for the layout and the invariants.
#include "timer_heap.h"

namespace uvpy::loop {

void TimerHeap::insert(TimerNode* node) {
  node->seq = next_seq_++;
  node->cb.retain();
  heap_.push_back(Entry{node->when, node->seq, node});
  sift_up(heap_.size() - 1, heap_.back());
}

bool TimerHeap::remove(TimerNode* node) {
  if (!node->scheduled()) return false;
  remove_at(node->index);
  node->cb.release();  // may free the node's owner: touch nothing after this
  return true;
}

TimerNode* TimerHeap::pop_due(double limit) {
  if (heap_.empty() || heap_.front().when >= limit) return nullptr;
  TimerNode* n = heap_.front().node;
  remove_at(0);
  return n;
}

void TimerHeap::clear() {
  while (!heap_.empty()) {
    TimerNode* n = heap_.back().node;
    heap_.pop_back();
    n->index = TimerNode::kNotScheduled;
    n->cb.release();
  }
}

void TimerHeap::remove_at(size_t i) {
  heap_[i].node->index = TimerNode::kNotScheduled;
  Entry last = heap_.back();
  heap_.pop_back();
  if (i == heap_.size()) return;  // removed the last slot
  if (i > 0 && before(last, heap_[(i - 1) / kArity]))
    sift_up(i, last);
  else
    sift_down(i, last);
}

// Both sifts move a hole from i to where e belongs, then place e there.
void TimerHeap::sift_up(size_t i, Entry e) {
  while (i > 0) {
    size_t parent = (i - 1) / kArity;
    if (!before(e, heap_[parent])) break;
    place(i, heap_[parent]);
    i = parent;
  }
  place(i, e);
}

void TimerHeap::sift_down(size_t i, Entry e) {
  const size_t count = heap_.size();
  for (;;) {
    size_t first = kArity * i + 1;
    if (first >= count) break;
    size_t end = first + kArity < count ? first + kArity : count;
    size_t best = first;
    for (size_t c = first + 1; c < end; ++c)
      if (before(heap_[c], heap_[best])) best = c;
    if (!before(heap_[best], e)) break;
    place(i, heap_[best]);
    i = best;
  }
  place(i, e);
}

}  // namespace uvpy::loop
