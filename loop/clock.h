// clock.h — the loop's clock: CLOCK_MONOTONIC as float seconds, the same
// clock and unit as Python's time.monotonic(), which asyncio's loop.time()
// uses. Timer deadlines are compared in this unit everywhere.
#pragma once
#include <time.h>

#include <cstdint>

namespace uvpy::loop {

inline double monotonic_now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// The same clock in integer nanoseconds, for counters and the watchdog.
inline int64_t monotonic_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// Resolution asyncio uses for "is this timer due" (time.get_clock_info("monotonic").resolution).
inline double monotonic_resolution() {
  timespec ts;
  clock_getres(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

}  // namespace uvpy::loop
