// idle.h — who is asleep, who is looking for work, and whom to wake.
//
// Modelled on tokio's multi_thread/idle.rs. A worker whose local queue is
// empty becomes *searching*: it polls the injection queue and steals, spinning
// up to spin_us with a pause hint, before it *parks* on its own Parker.
//
// Rules:
//  1. No thundering herd. A submitter wakes a parked worker only if no worker
//     is searching (a searcher will find the job) and not every worker is
//     awake. It wakes exactly one, and counts it as searching before it even
//     runs, so further submissions during its wake-up latency wake nobody.
//  2. At most half the workers search at once (at least one); the others park
//     straight away. This caps the CPU burnt on spinning.
//  3. Ramp-up by relay: a searcher that finds work, was the last searcher
//     and still sees work queued wakes one more worker
//     (Executor::notify_parked), so a backlog pulls in workers one at a
//     time, each waking the next only if it found work. (Tokio relays even
//     with nothing queued; for a stream of single jobs that is one futex
//     wake and one wasted spin per job.) The re-check cannot lose a job: it
//     is rule 4's argument, with end_search() as the seq_cst RMW -- a
//     submitter that saw this searcher and so woke nobody published its job
//     before the RMW, so the re-check sees it.
//  4. No lost wakeup. A submitter makes its job visible (a seq_cst store of a
//     queue's length or tail) and then reads the state word (seq_cst); a worker
//     going to sleep updates the state word (seq_cst RMW) and then re-reads
//     every queue. In the single total order of seq_cst operations one of the
//     two comes first: either the submitter sees the worker gone (and wakes
//     someone) or the worker sees the job. Tokio re-checks only in the last
//     searcher; here every parking worker does (a scan of n queue lengths),
//     because jobs may block for seconds: a worker that parks while a batch
//     sits in a busy peer's local queue would leave it waiting behind a
//     blocked job, not just delay it by a scheduling quantum.
//  5. A Parker holds a permit (like std::thread::park): an unpark that comes
//     before the park makes the park return at once, so a wake can never fall
//     between "decide to sleep" and "sleep". Spurious returns are harmless: a
//     worker that wakes still on the sleeper list takes itself off it.
//
// State: one 64-bit word, (unparked << 32) | searching. `searching` changes
// by atomic RMW without the lock; `unparked` and the sleeper list change
// together under mu_, so they always agree.
#pragma once
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <vector>

namespace uvpy::exec {

class Parker {
 public:
  void park() {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [this] { return permit_; });
    permit_ = false;
  }
  void unpark() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      permit_ = true;
    }
    cv_.notify_one();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool permit_ = false;  // guarded by mu_
};

class Idle {
 public:
  explicit Idle(unsigned workers)
      : n_(workers), state_(pack(workers, 0)), listed_(workers, 0), handed_(workers, 0) {
    sleepers_.reserve(workers);
  }
  Idle(const Idle&) = delete;
  Idle& operator=(const Idle&) = delete;

  // Submitter, after publishing a job: is waking someone worthwhile (rule 1)?
  bool should_wake() const {
    uint64_t s = state_.load(std::memory_order_seq_cst);
    return searching(s) == 0 && unparked(s) < n_;
  }

  // Takes one sleeper off the list, counting it unparked and searching.
  // Returns its id (the caller unparks it), or -1.
  int pop_sleeper() {
    std::lock_guard<std::mutex> lk(mu_);
    uint64_t s = state_.load(std::memory_order_seq_cst);
    if (searching(s) != 0 || unparked(s) >= n_ || sleepers_.empty()) return -1;
    unsigned id = sleepers_.back();
    sleepers_.pop_back();
    listed_[id] = 0;
    handed_[id] = 1;
    state_.fetch_add(kUnparkedOne + 1, std::memory_order_seq_cst);
    return static_cast<int>(id);
  }

  // Worker: may it search (rule 2)?
  bool try_begin_search() {
    uint64_t s = state_.load(std::memory_order_seq_cst);
    for (;;) {
      if (searching(s) > 0 && 2 * searching(s) >= n_) return false;
      if (state_.compare_exchange_weak(s, s + 1, std::memory_order_seq_cst)) return true;
    }
  }

  // Worker: stops searching. True if it was the last searcher (rule 3).
  bool end_search() { return searching(state_.fetch_sub(1, std::memory_order_seq_cst)) == 1; }

  // Worker: puts itself on the sleeper list; it must then re-check every
  // queue before it sleeps (rule 4).
  void park_begin(unsigned id, bool was_searching) {
    std::lock_guard<std::mutex> lk(mu_);
    state_.fetch_sub(kUnparkedOne + (was_searching ? 1 : 0), std::memory_order_seq_cst);
    sleepers_.push_back(id);
    listed_[id] = 1;
  }

  // Worker, after its park returned (or instead of parking): takes itself
  // off the list if still there. Returns true if a waker handed it the
  // searching role (pop_sleeper), which the worker must then honour.
  bool leave_park(unsigned id) {
    std::lock_guard<std::mutex> lk(mu_);
    if (listed_[id]) {
      sleepers_.erase(std::find(sleepers_.begin(), sleepers_.end(), id));
      listed_[id] = 0;
      state_.fetch_add(kUnparkedOne, std::memory_order_seq_cst);
      return false;
    }
    bool handed = handed_[id] != 0;
    handed_[id] = 0;
    return handed;
  }

  // Shutdown: empties the list (the caller then unparks every worker).
  void unlist_all() {
    std::lock_guard<std::mutex> lk(mu_);
    for (unsigned id : sleepers_) {
      listed_[id] = 0;
      state_.fetch_add(kUnparkedOne, std::memory_order_seq_cst);
    }
    sleepers_.clear();
  }

  unsigned searching_now() const { return searching(state_.load(std::memory_order_relaxed)); }

 private:
  static constexpr uint64_t kUnparkedOne = uint64_t{1} << 32;
  static uint64_t pack(unsigned unparked, unsigned searching) {
    return (static_cast<uint64_t>(unparked) << 32) | searching;
  }
  static unsigned searching(uint64_t s) { return static_cast<uint32_t>(s); }
  static unsigned unparked(uint64_t s) { return static_cast<uint32_t>(s >> 32); }

  const unsigned n_;
  std::atomic<uint64_t> state_;
  std::mutex mu_;
  std::vector<unsigned> sleepers_;  // guarded by mu_
  std::vector<char> listed_;        // guarded by mu_: id is on sleepers_
  std::vector<char> handed_;        // guarded by mu_: woken as a searcher
};

}  // namespace uvpy::exec
