// watchdog.cc — see watchdog.h for the rules.
#include "watchdog.h"

#include <pthread.h>

#include <algorithm>
#include <chrono>

#include "clock.h"

namespace uvpy::loop {

Watchdog::Watchdog(Reactor::BusyBeacon* beacon, int64_t threshold_ns, int64_t linger_ns,
                   Hooks hooks)
    : beacon_(beacon),
      threshold_ns_(threshold_ns),
      linger_ns_(std::max(linger_ns, threshold_ns)),
      hooks_(std::move(hooks)) {
  beacon_->long_ns.store(threshold_ns_, std::memory_order_relaxed);
  thread_ = std::thread([this] { run(); });
  // Named (by its creator, so the name is there once this returns), so that
  // tools (top -H, /proc/PID/task/*/comm) and tests can tell it apart.
  pthread_setname_np(thread_.native_handle(), "uvpy-watchdog");
}

Watchdog::~Watchdog() { stop(); }

void Watchdog::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  beacon_->long_ns.store(INT64_MAX, std::memory_order_relaxed);
}

void Watchdog::run() {
  // Rule 3.
  const int64_t period = std::clamp<int64_t>(threshold_ns_ / 4, 1'000'000, 250'000'000);
  int64_t stall = 0;  // the `since` value of the stall being reported, 0: none
  bool lingered = false;
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait_for(lock, std::chrono::nanoseconds(period), [this] { return stopping_; });
    if (stopping_) {
      // A stall still open ends with the watching (rule 2: every stalled()
      // gets its ended()).
      lock.unlock();
      if (stall != 0 && hooks_.ended) hooks_.ended(stall, monotonic_ns());
      return;
    }
    lock.unlock();
    // The clock first: a `since` still set after `now` was read means the
    // spell lasted at least now - since, so a reported stall has really
    // lasted the threshold (read the other way round, a spell that ended
    // while this thread was descheduled between the two reads would be
    // reported at the length of the delay).
    const int64_t now = monotonic_ns();
    const int64_t since = beacon_->since.load(std::memory_order_acquire);
    if (stall != 0 && since != stall) {
      // Rule 2: the stall is over. The reactor recorded its exact end if it
      // was a long spell that ended in a poll or mark_idle(); else the end
      // is when this thread saw it: a clock read after `since` was (`now`
      // may be from before the spell ended).
      int64_t end;
      if (beacon_->last_long_start.load(std::memory_order_acquire) == stall) {
        end = beacon_->last_long_end.load(std::memory_order_relaxed);
      } else {
        end = monotonic_ns();
      }
      if (hooks_.ended) hooks_.ended(stall, end);
      stall = 0;
    }
    if (stall == 0 && since != 0 && now - since >= threshold_ns_) {
      stall = since;
      lingered = false;
      if (hooks_.stalled) hooks_.stalled(stall);
    } else if (stall != 0 && !lingered && now - stall >= linger_ns_) {
      lingered = true;
      if (hooks_.lingering) hooks_.lingering(stall);
    }
    lock.lock();
  }
}

}  // namespace uvpy::loop
