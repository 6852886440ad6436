// watchdog.h — a thread that notices a loop which has not come back to its
// poll for longer than a threshold: a callback or a task step blocking the
// loop (a sync database call, a big json.dumps, a CPU loop).
//
// The reactor publishes a BusyBeacon (reactor.h): `since`, the time the
// current iteration's poll ended, 0 while it polls or is not running. A busy
// spell is one value of `since`; it is a stall once it has lasted the
// threshold.
//
// Rules:
//  1. Watching costs the loop nothing: the reactor keeps the beacon whether
//     or not a watchdog exists (two relaxed stores and one relaxed load per
//     iteration); this thread only reads it, except for `long_ns`, which it
//     sets to the threshold while it runs.
//  2. One stall, one sequence of hooks, at most: stalled(start) once it has
//     lasted the threshold; lingering(start) once if it is still going at
//     `linger` (for stalls that may never end: a deadlock); ended(start, end)
//     once when `since` changes, with the exact end when the reactor
//     recorded it (beacon.last_long_*), else the time this thread saw it;
//     a stall still open when the watchdog stops ends then.
//  3. This thread samples every threshold/4 (at least 1 ms, at most 250 ms):
//     a stall is noticed between 1x and 1.25x the threshold after it began.
//     A reported stall has lasted the threshold, and the reactor records
//     it as a long spell (last_long): this thread reads its clock before
//     `since`, the reactor clears `since` before it reads its clock. A loop
//     thread the OS deschedules for the threshold is a real stall.
//  4. Hooks run on this thread and may block (the bindings take the GIL in
//     them); sampling resumes when they return. stop() wakes and joins the
//     thread, so whoever calls it must not hold what a hook waits for (the
//     bindings release the GIL around it). No hook runs after stop() returns.
//  5. The beacon must outlive the watchdog: its owner stops the watchdog
//     before the reactor goes away.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>

#include "reactor.h"

namespace uvpy::loop {

class Watchdog {
 public:
  struct Hooks {
    std::function<void(int64_t start_ns)> stalled;
    std::function<void(int64_t start_ns)> lingering;
    std::function<void(int64_t start_ns, int64_t end_ns)> ended;
  };

  // Starts the thread. threshold_ns and linger_ns are > 0, linger >= threshold.
  Watchdog(Reactor::BusyBeacon* beacon, int64_t threshold_ns, int64_t linger_ns, Hooks hooks);
  ~Watchdog();  // stop()
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  void stop();
  int64_t threshold_ns() const { return threshold_ns_; }

 private:
  void run();

  Reactor::BusyBeacon* beacon_;
  const int64_t threshold_ns_;
  const int64_t linger_ns_;
  Hooks hooks_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;  // guarded by mu_
  std::thread thread_;
};

}  // namespace uvpy::loop
