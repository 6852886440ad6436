// Watchdog: one stall, one stalled/lingering/ended sequence, exact end;
// a loop that keeps coming back to its poll is reported only for the spells
// the reactor itself measured as long (an OS that descheduled it).
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "clock.h"
#include "support.h"
#include "watchdog.h"

using uvpy::loop::Watchdog;
using uvpy::loop::monotonic_ns;
using uvpy::test::Probe;
using uvpy::test::make_reactor;

namespace {

struct Record {
  std::atomic<int> stalled{0}, lingering{0}, ended{0};
  std::atomic<int64_t> start{0}, end{0}, lingering_start{0};
  std::mutex mu;
  std::vector<int64_t> starts;  // every stalled(start), in order; guarded by mu

  Watchdog::Hooks hooks() {
    return {[this](int64_t s) {
              {
                std::lock_guard<std::mutex> lock(mu);
                starts.push_back(s);
              }
              start = s;
              ++stalled;
            },
            [this](int64_t s) {
              lingering_start = s;
              ++lingering;
            },
            [this](int64_t s, int64_t e) {
              if (s == start) end = e;
              ++ended;
            }};
  }
};

// Waits (a bound against hangs, not a timing assertion) for cond.
template <class F>
bool eventually(F cond) {
  for (int i = 0; i < 5000 && !cond(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return cond();
}

constexpr int64_t kMs = 1'000'000;

}  // namespace

TEST_CASE("a callback that blocks the loop is one stall, ended exactly", "[watchdog]") {
  auto r = make_reactor();
  Record rec;
  Watchdog dog(r->beacon(), 20 * kMs, 60 * kMs, rec.hooks());
  int64_t blocked_from = 0, blocked_to = 0;
  Probe blocker([&] {
    blocked_from = monotonic_ns();
    // Blocks until the watchdog has said both (so a starved watchdog thread
    // delays the test instead of failing it), and for 150 ms at least.
    REQUIRE(eventually([&] { return rec.lingering == 1; }));
    std::this_thread::sleep_until(std::chrono::steady_clock::now() +
                                  std::chrono::nanoseconds(blocked_from + 150 * kMs - monotonic_ns()));
    blocked_to = monotonic_ns();
    return 0;
  });
  r->call_soon(blocker.cb());
  REQUIRE(r->run_once(nullptr) == 0);
  CHECK(rec.stalled == 1);    // noticed while blocked (rule 3: by 1.25 x 20 ms)
  CHECK(rec.lingering == 1);  // and still going at 60 ms
  r->mark_idle();             // run_forever returned: the spell is over
  REQUIRE(eventually([&] { return rec.ended == 1; }));
  CHECK(rec.start <= blocked_from);
  CHECK(rec.lingering_start == rec.start);
  CHECK(rec.end >= blocked_to);  // the recorded end, not a later sample
  CHECK(rec.end - rec.start >= 150 * kMs);
  dog.stop();
  CHECK(rec.stalled == 1);
  CHECK(rec.ended == 1);
  r->close();
}

TEST_CASE("a loop that keeps polling is reported only for spells it really stalled", "[watchdog]") {
  auto r = make_reactor();
  Record rec;
  Watchdog dog(r->beacon(), 20 * kMs, 20 * kMs, rec.hooks());
  Probe quick([] {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return 0;
  });
  // The OS may deschedule this thread for the threshold on a loaded
  // machine; that is a real stall (rule 3), and the reactor records it as a
  // long spell. So every report must be of a spell the reactor measured as
  // long (by its start: a false report cannot hide behind a real stall the
  // watchdog missed), and on a machine that kept this thread running there
  // are none.
  auto* beacon = r->beacon();
  std::set<int64_t> long_spells;
  auto note_long_spell = [&] {
    const int64_t s = beacon->last_long_start.load();
    if (s != 0) long_spells.insert(s);
  };
  const int64_t until = monotonic_ns() + 200 * kMs;
  while (monotonic_ns() < until) {
    r->call_soon(quick.cb());
    REQUIRE(r->run_once(nullptr) == 0);
    note_long_spell();  // a spell ends at the next poll: at most one per run_once
  }
  r->mark_idle();
  note_long_spell();
  dog.stop();
  std::lock_guard<std::mutex> lock(rec.mu);
  for (int64_t s : rec.starts) {
    INFO("stalled(" << s << ")");
    CHECK(long_spells.count(s) == 1);
  }
  CHECK(std::set<int64_t>(rec.starts.begin(), rec.starts.end()).size() == rec.starts.size());
  CHECK(rec.stalled == static_cast<int>(rec.starts.size()));
  CHECK(rec.ended == rec.stalled);
  r->close();
}

TEST_CASE("a stall open when the watchdog stops ends with it", "[watchdog]") {
  auto r = make_reactor();
  Record rec;
  auto dog = std::make_unique<Watchdog>(r->beacon(), 10 * kMs, 1000 * kMs, rec.hooks());
  Probe blocker([&] {
    REQUIRE(eventually([&] { return rec.stalled == 1; }));
    dog->stop();  // from inside the stall, as loop.close() from a thread could
    return 0;
  });
  r->call_soon(blocker.cb());
  REQUIRE(r->run_once(nullptr) == 0);
  CHECK(rec.stalled == 1);
  CHECK(rec.ended == 1);
  CHECK(rec.lingering == 0);
  dog.reset();
  r->close();
}
