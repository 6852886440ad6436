// The backend's poll timeout: a poll with a deadline always ends by itself.
//
// libuv before 1.45 runs due timers at the top of uv_run(), before it
// computes how long to block. If the clock passes the backend's poll
// deadline between arming the timer and that point, the timer fires early
// and, unless the backend reacts, epoll_wait then blocks with no timeout:
// the loop hangs with timers due (seen as a rare hang of the Python suite in
// a test doing a thousand short sleeps). This binary interposes uv_run() so
// a test can stall right before it, which makes that race deterministic.
#include <catch2/catch.hpp>
#include <dlfcn.h>
#include <uv.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "support.h"

using uvpy::test::Probe;
using uvpy::test::make_reactor;

namespace {
std::atomic<int> g_stall_us{0};  // sleep this long before each blocking uv_run()

struct StallBeforeRun {
  explicit StallBeforeRun(int us) { g_stall_us = us; }
  ~StallBeforeRun() { g_stall_us = 0; }
};
}  // namespace

// Calls from the loop library resolve here (the executable's definition wins
// over the shared libuv's), and this forwards to libuv's own uv_run.
extern "C" int uv_run(uv_loop_t* loop, uv_run_mode mode) {
  using Fn = int (*)(uv_loop_t*, uv_run_mode);
  static const Fn real = [] {
    auto fn = reinterpret_cast<Fn>(dlsym(RTLD_NEXT, "uv_run"));
    if (fn == nullptr) {
      std::fprintf(stderr, "test_poll_timeout: libuv's uv_run not found (libuv linked statically?)\n");
      std::abort();
    }
    return fn;
  }();
  if (int us = g_stall_us.load(); us > 0 && mode == UV_RUN_ONCE)
    std::this_thread::sleep_for(std::chrono::microseconds(us));
  return real(loop, mode);
}

TEST_CASE("a poll deadline that passes before libuv polls still ends the poll",
          "[timers][reactor]") {
  auto r = make_reactor();
  Probe p;
  p.node.when = r->time() + 0.002;
  r->add_timer(&p.node);

  // A backend that misses the early expiry polls forever here: a guard
  // thread wakes it after 2 s, so that shows as a failed check, not a hang.
  std::atomic<bool> done{false};
  std::atomic<bool> guard_woke{false};
  std::thread guard([&] {
    for (int i = 0; i < 200 && !done; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (!done) {
      guard_woke = true;
      r->wakeup();
    }
  });
  const double start = r->time();
  {
    StallBeforeRun stall(5000);  // past the 2 ms deadline, before libuv looks
    while (p.runs == 0 && r->run_once(nullptr) == 0) {
    }
  }
  const double elapsed = r->time() - start;
  done = true;
  guard.join();

  CHECK_FALSE(guard_woke);
  CHECK(elapsed < 1.0);
  REQUIRE(p.runs == 1);
  r->close();
  REQUIRE(p.refs == 0);
}
