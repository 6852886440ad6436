// worker.h — one worker thread's state, shared by executor.cc (start,
// submit, shutdown, metrics) and worker.cc (the scheduling loop). Internal:
// not part of the public API.
//
// Invariants:
//  1. Only the worker's own thread pushes to or pops its local queue; every
//     other thread may only steal from it.
//  2. The counters have a single writer, the worker itself (bump); other
//     threads only load them, so plain relaxed load/store suffices and no
//     counter is ever a contended read-modify-write.
//  3. Workers are allocated in the constructor and never move, so a peer's
//     queue and Parker are valid to touch from the first submit on, even
//     before start().
#pragma once
#include <pthread.h>

#include <atomic>
#include <cstdint>

#include "executor.h"
#include "local_queue.h"

namespace uvpy::exec {

// Cache-line aligned: each worker's hot fields stay off its neighbours' lines.
struct alignas(64) Executor::Worker {
  Executor* exec = nullptr;
  unsigned id = 0;
  int cpu = -1;
  pthread_t thread{};
  bool running = false;  // thread created and not yet joined; guarded by state_mu_
  uint32_t tick = 0;
  uint64_t rng = 0;
  LocalQueue local;
  Parker parker;
  std::atomic<uint64_t> spawned{0};    // submissions made from this worker
  std::atomic<uint64_t> started{0};    // jobs taken from a queue and run
  std::atomic<uint64_t> completed{0};  // of those, finished
  std::atomic<uint64_t> cancelled{0};  // jobs taken from a queue but handed back
  std::atomic<uint64_t> steals{0};
  std::atomic<uint64_t> busy_ns{0};
};

// Single-writer counters: the owning worker stores, metrics() loads.
inline void bump(std::atomic<uint64_t>& c, uint64_t d = 1) {
  c.store(c.load(std::memory_order_relaxed) + d, std::memory_order_relaxed);
}

}  // namespace uvpy::exec
