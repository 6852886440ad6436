// platform.h — the two machine primitives the scheduler is built on.
//
// now_ns(): CLOCK_MONOTONIC in nanoseconds. Busy time and spin deadlines must
// not jump with wall-clock changes, and the vDSO makes a read cost ~20 ns,
// cheap enough to take twice per job.
//
// cpu_relax(): the spin-wait hint (x86 PAUSE, ARM YIELD). A searching worker
// polls shared queues in a loop; the hint keeps that loop from flooding the
// memory bus with speculative loads and hands the core to a hyperthread
// sibling while it waits.
#pragma once
#include <time.h>

#include <atomic>
#include <cstdint>

namespace uvpy::exec {

inline int64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
  asm volatile("yield" ::: "memory");
#else
  std::atomic_signal_fence(std::memory_order_seq_cst);
#endif
}

}  // namespace uvpy::exec
