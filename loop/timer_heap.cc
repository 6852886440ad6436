// timer_heap.cc — see timer_heap.h for the invariants.
#include "timer_heap.h"

namespace uvpy::loop {

void TimerHeap::insert(TimerNode* node) {
  node->seq = next_seq_++;
  node->cb.retain();
  heap_.push_back(node);
  node->index = heap_.size() - 1;
  sift_up(node->index);
}

bool TimerHeap::remove(TimerNode* node) {
  if (!node->scheduled()) return false;
  remove_at(node->index);
  node->cb.release();  // may free the node's owner: touch nothing after this
  return true;
}

TimerNode* TimerHeap::pop_due(double limit) {
  if (heap_.empty() || heap_.front()->when >= limit) return nullptr;
  TimerNode* n = heap_.front();
  remove_at(0);
  return n;
}

void TimerHeap::clear() {
  while (!heap_.empty()) {
    TimerNode* n = heap_.back();
    heap_.pop_back();
    n->index = TimerNode::kNotScheduled;
    n->cb.release();
  }
}

void TimerHeap::remove_at(size_t i) {
  TimerNode* gone = heap_[i];
  TimerNode* last = heap_.back();
  heap_.pop_back();
  gone->index = TimerNode::kNotScheduled;
  if (i == heap_.size()) return;  // removed the last slot
  place(i, last);
  if (i > 0 && before(last, heap_[(i - 1) / 2]))
    sift_up(i);
  else
    sift_down(i);
}

void TimerHeap::sift_up(size_t i) {
  TimerNode* n = heap_[i];
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (!before(n, heap_[parent])) break;
    place(i, heap_[parent]);
    i = parent;
  }
  place(i, n);
}

void TimerHeap::sift_down(size_t i) {
  TimerNode* n = heap_[i];
  const size_t count = heap_.size();
  for (;;) {
    size_t child = 2 * i + 1;
    if (child >= count) break;
    if (child + 1 < count && before(heap_[child + 1], heap_[child])) ++child;
    if (!before(heap_[child], n)) break;
    place(i, heap_[child]);
    i = child;
  }
  place(i, n);
}

}  // namespace uvpy::loop
