// Wakeups from other threads: post() reaches a blocked loop, batches coalesce.
#include <catch2/catch.hpp>
#include <atomic>
#include <thread>
#include <vector>

#include "support.h"

using uvpy::test::Probe;
using uvpy::test::make_reactor;

namespace {
// A thread-safe refcount probe for posting from many threads.
struct AtomicProbe {
  std::atomic<int> refs{0};
  std::atomic<int> runs{0};
  static void retain(void* p) { static_cast<AtomicProbe*>(p)->refs++; }
  static int run(void* p) {
    static_cast<AtomicProbe*>(p)->runs++;
    return 0;
  }
  static void release(void* p) { static_cast<AtomicProbe*>(p)->refs--; }
  static constexpr uvpy::loop::CallbackOps kOps{retain, run, release};
  uvpy::loop::Callback cb() { return {&kOps, this}; }
};
}  // namespace

TEST_CASE("post from another thread wakes a loop blocked without timers", "[wakeup]") {
  auto r = make_reactor();
  Probe p;
  std::thread t([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    p.retain(&p);  // post() takes over a reference the caller holds
    r->post(p.cb());
  });
  // No timers, nothing ready: this poll would block forever without the wakeup.
  while (p.runs == 0) REQUIRE(r->run_once(nullptr) == 0);
  t.join();
  REQUIRE(p.runs == 1);
  r->close();
  REQUIRE(p.refs == 0);
}

TEST_CASE("many threads posting concurrently lose nothing", "[wakeup]") {
  auto r = make_reactor();
  AtomicProbe p;
  constexpr int kThreads = 4, kEach = 5000;
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i)
    threads.emplace_back([&] {
      for (int k = 0; k < kEach; ++k) {
        p.retain(&p);
        r->post(p.cb());
      }
    });
  while (p.runs.load() < kThreads * kEach) REQUIRE(r->run_once(nullptr) == 0);
  for (auto& t : threads) t.join();
  REQUIRE(p.runs.load() == kThreads * kEach);
  r->close();
  REQUIRE(p.refs.load() == 0);
}

TEST_CASE("work posted but never run is released on close", "[wakeup][close]") {
  auto r = make_reactor();
  Probe p;
  p.retain(&p);
  r->post(p.cb());
  r->close();
  REQUIRE(p.refs == 0);
  REQUIRE(p.runs == 0);
}

TEST_CASE("posted work keeps FIFO order with a later call_soon", "[wakeup][ready]") {
  auto r = make_reactor();
  std::vector<int> order;
  Probe posted([&] { order.push_back(1); return 0; });
  Probe soon([&] { order.push_back(2); return 0; });
  std::thread t([&] {
    posted.retain(&posted);
    r->post(posted.cb());
  });
  t.join();  // the post happens-before the call_soon below
  r->call_soon(soon.cb());
  REQUIRE(r->run_once(nullptr) == 0);
  REQUIRE(order == std::vector<int>{1, 2});
  r->close();
  REQUIRE(posted.refs + soon.refs == 0);
}
