// local_queue.h — a worker's own run queue: a fixed ring that its owner
// pushes and pops without locks, and that idle workers steal half of.
//
// This is tokio's multi_thread/queue.rs. Indices are free-running uint32
// counters (wrap-around is harmless because kCapacity divides 2^32); a slot
// is index & kMask.
//
//   tail_  written by the owner only (push); read by thieves.
//   head_  two indices packed as (steal << 32) | real:
//            real   next job to hand out; pop and a thief's claim both
//                   advance it by CAS, so each job is taken exactly once;
//            steal  lags behind real while a thief copies the jobs it claimed
//                   out of the ring. The owner treats [steal, tail) as
//                   occupied, so it never overwrites a slot being copied.
//                   steal == real: no steal in flight. At most one thief has
//                   a steal in flight; others back off.
//
// Invariants: steal <= real <= tail and tail - steal <= kCapacity (mod 2^32).
// A full ring moves its older half to the injection queue in one batch, so a
// burst of local submissions costs one lock per kCapacity/2 jobs.
//
// Memory order: slots are relaxed atomics; they are published by the release
// store of tail_ (push) or by head_'s CAS (a thief returning slots), and
// acquired by the matching loads. tail_ is stored seq_cst because it is the
// "job is visible" half of the sleep/wake handshake in idle.h.
#pragma once
#include <atomic>
#include <cstdint>

#include "inject_queue.h"
#include "job.h"

namespace uvpy::exec {

class LocalQueue {
 public:
  static constexpr uint32_t kCapacity = 256;
  static constexpr uint32_t kMask = kCapacity - 1;
  static_assert((kCapacity & kMask) == 0, "capacity must be a power of two");

  LocalQueue() {
    for (auto& s : buf_) s.store(nullptr, std::memory_order_relaxed);
  }
  LocalQueue(const LocalQueue&) = delete;
  LocalQueue& operator=(const LocalQueue&) = delete;

  // --- owner ---------------------------------------------------------------

  // Appends j; if the ring is full, moves its older half plus j to overflow.
  // Returns true when it overflowed.
  bool push(Job* j, InjectQueue& overflow) {
    for (;;) {
      uint64_t h = head_.load(std::memory_order_acquire);
      uint32_t steal = steal_of(h), real = real_of(h);
      uint32_t t = tail_.load(std::memory_order_relaxed);
      if (t - steal < kCapacity) {
        buf_[t & kMask].store(j, std::memory_order_relaxed);
        tail_.store(t + 1, std::memory_order_seq_cst);
        return false;
      }
      if (steal != real) {
        // A thief is about to free half the ring; don't wait for it.
        j->next = nullptr;
        overflow.push_batch(j, j, 1);
        return true;
      }
      if (push_overflow(j, real, overflow)) return true;
      // A thief claimed jobs between our load and CAS: there is room now.
    }
  }

  Job* pop() {
    uint64_t h = head_.load(std::memory_order_acquire);
    for (;;) {
      uint32_t steal = steal_of(h), real = real_of(h);
      if (real == tail_.load(std::memory_order_relaxed)) return nullptr;
      uint64_t next = steal == real ? pack(real + 1, real + 1) : pack(steal, real + 1);
      if (head_.compare_exchange_weak(h, next, std::memory_order_acq_rel, std::memory_order_acquire))
        return buf_[real & kMask].load(std::memory_order_relaxed);
    }
  }

  // Slots the owner can fill without overflowing.
  uint32_t free_slots() const {
    uint32_t steal = steal_of(head_.load(std::memory_order_acquire));
    return kCapacity - (tail_.load(std::memory_order_relaxed) - steal);
  }

  // --- any other thread ----------------------------------------------------

  // Moves half of this queue's jobs into dst (the caller's own queue, which
  // must be at most half full) and returns one of them for the caller to run
  // now; *taken says how many jobs moved in all. nullptr: nothing to steal,
  // dst too full, or another thief is mid-steal here.
  Job* steal_into(LocalQueue& dst, uint32_t* taken) {
    *taken = 0;
    uint32_t dst_tail = dst.tail_.load(std::memory_order_relaxed);
    uint32_t dst_steal = steal_of(dst.head_.load(std::memory_order_acquire));
    if (dst_tail - dst_steal > kCapacity / 2) return nullptr;
    uint32_t n = steal_into2(dst, dst_tail);
    if (n == 0) return nullptr;
    *taken = n;
    --n;  // the last one copied is returned instead of published
    Job* ret = dst.buf_[(dst_tail + n) & kMask].load(std::memory_order_relaxed);
    if (n > 0) dst.tail_.store(dst_tail + n, std::memory_order_seq_cst);
    return ret;
  }

  // Jobs available to pop or steal. Reads head before tail so the difference
  // can never underflow.
  uint32_t len() const {
    uint32_t real = real_of(head_.load(std::memory_order_seq_cst));
    return tail_.load(std::memory_order_seq_cst) - real;
  }
  bool empty() const { return len() == 0; }

 private:
  static uint64_t pack(uint32_t steal, uint32_t real) {
    return (static_cast<uint64_t>(steal) << 32) | real;
  }
  static uint32_t steal_of(uint64_t h) { return static_cast<uint32_t>(h >> 32); }
  static uint32_t real_of(uint64_t h) { return static_cast<uint32_t>(h); }

  // Claims [real, real + kCapacity/2) by moving head past it, then hands
  // those jobs and j to the injection queue as one list. Fails (returns
  // false) if a thief moved head first.
  bool push_overflow(Job* j, uint32_t real, InjectQueue& overflow) {
    constexpr uint32_t kTake = kCapacity / 2;
    uint64_t expected = pack(real, real);
    if (!head_.compare_exchange_strong(expected, pack(real + kTake, real + kTake),
                                       std::memory_order_acq_rel, std::memory_order_relaxed))
      return false;
    Job* first = buf_[real & kMask].load(std::memory_order_relaxed);
    Job* last = first;
    for (uint32_t i = 1; i < kTake; ++i) {
      Job* x = buf_[(real + i) & kMask].load(std::memory_order_relaxed);
      last->next = x;
      last = x;
    }
    last->next = j;
    overflow.push_batch(first, j, kTake + 1);
    return true;
  }

  // Claims half of the available jobs (advancing real, leaving steal behind),
  // copies them into dst's ring after dst_tail, then lets steal catch up.
  // Returns how many were copied (not yet published in dst).
  uint32_t steal_into2(LocalQueue& dst, uint32_t dst_tail) {
    uint64_t prev = head_.load(std::memory_order_acquire);
    uint64_t claimed;
    uint32_t n;
    for (;;) {
      uint32_t steal = steal_of(prev), real = real_of(prev);
      if (steal != real) return 0;  // another thief is copying
      n = tail_.load(std::memory_order_acquire) - real;
      n -= n / 2;
      if (n == 0) return 0;
      if (n > kCapacity / 2) {  // tail read after a burst of pops: stale head
        prev = head_.load(std::memory_order_acquire);
        continue;
      }
      claimed = pack(steal, real + n);
      if (head_.compare_exchange_weak(prev, claimed, std::memory_order_acq_rel,
                                      std::memory_order_acquire))
        break;
    }
    uint32_t first = steal_of(claimed);
    for (uint32_t i = 0; i < n; ++i) {
      Job* x = buf_[(first + i) & kMask].load(std::memory_order_relaxed);
      dst.buf_[(dst_tail + i) & kMask].store(x, std::memory_order_relaxed);
    }
    // Give the slots back: steal catches up with real (which the owner may
    // have advanced meanwhile by popping).
    prev = claimed;
    for (;;) {
      uint32_t real = real_of(prev);
      if (head_.compare_exchange_weak(prev, pack(real, real), std::memory_order_acq_rel,
                                      std::memory_order_acquire))
        return n;
    }
  }

  alignas(64) std::atomic<uint64_t> head_{0};
  alignas(64) std::atomic<uint32_t> tail_{0};
  std::atomic<Job*> buf_[kCapacity];
};

}  // namespace uvpy::exec
