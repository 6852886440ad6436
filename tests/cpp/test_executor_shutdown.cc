// Executor shutdown: drain and non-drain with work in flight, before
// start(), from the destructor and from inside a job. Each test ends with
// every accepted job handed back through the port exactly once.
#include <catch2/catch.hpp>

#include <cerrno>
#include <thread>

#include "exec_support.h"

using uvpy::exec::Executor;
using namespace uvpy::test;
namespace exec = uvpy::exec;

TEST_CASE("shutdown releases a submitter blocked for room", "[executor][backpressure][shutdown]") {
  TestLoop loop;
  Gate gate;
  TestJob blocker(&loop.port, [&](TestJob& t) { gate.pass(t.job); });
  TestJob queued(&loop.port), refused(&loop.port);
  std::atomic<int> rc{1};
  Executor ex(opts(1, 1));
  REQUIRE(ex.start() == 0);
  REQUIRE(ex.submit(&blocker.job) == 0);
  REQUIRE(gate.wait_inside(1));
  REQUIRE(ex.submit(&queued.job) == 0);
  std::thread producer([&] { rc = ex.submit(&refused.job, true); });
  std::this_thread::sleep_for(10ms);
  ex.shutdown(false);  // the blocker sees should_stop() and returns
  producer.join();
  REQUIRE(rc.load() == -ESHUTDOWN);
  REQUIRE(loop.port.drain() == 2);
  REQUIRE(queued.final_state.load() == exec::kJobCancelled);
  REQUIRE(refused.completes.load() == 0);
  REQUIRE(loop.port.outstanding() == 0);
}

TEST_CASE("shutdown(drain) runs every queued job", "[executor][shutdown]") {
  TestLoop loop;
  std::deque<TestJob> jobs;
  add_jobs(jobs, 500, &loop.port, [](TestJob&) {
    auto until = Clock::now() + 10us;
    while (Clock::now() < until) {
    }
  });
  TestJob late(&loop.port);
  Executor ex(opts(2));
  REQUIRE(ex.start() == 0);
  for (auto& j : jobs) REQUIRE(ex.submit(&j.job, true) == 0);
  ex.shutdown(true);  // returns once the workers have joined
  REQUIRE(ex.submit(&late.job) == -ESHUTDOWN);
  REQUIRE(loop.port.drain() == 500);
  for (auto& j : jobs) {
    REQUIRE(j.runs.load() == 1);
    REQUIRE(j.final_state.load() == exec::kJobDone);
  }
  require_all_handed_back(jobs, loop);
  auto m = ex.metrics();
  REQUIRE(m.completed == 500);
  REQUIRE(m.cancelled == 0);
  REQUIRE(m.queued == 0);
  REQUIRE(m.running == 0);
  ex.shutdown(true);  // idempotent
  ex.shutdown(false);
}

TEST_CASE("shutdown(no drain) hands back queued and spawned jobs cancelled", "[executor][shutdown]") {
  TestLoop loop;
  Gate gate;
  std::atomic<int> spawned{0};
  std::deque<TestJob> parents, children, queued;
  add_jobs(children, 300, &loop.port);
  add_jobs(queued, 200, &loop.port);
  Executor ex(opts(2));
  REQUIRE(ex.start() == 0);
  // Each parent fills its worker's local queue, then blocks until shutdown.
  add_jobs(parents, 2, &loop.port, [&](TestJob& t) {
    int base = spawned.fetch_add(150);
    for (int i = 0; i < 150; ++i)
      if (ex.submit(&children[base + i].job) != 0) break;
    gate.pass(t.job);
  });
  for (auto& p : parents) REQUIRE(ex.submit(&p.job) == 0);
  REQUIRE(gate.wait_inside(2));
  for (auto& j : queued) REQUIRE(ex.submit(&j.job) == 0);
  ex.shutdown(false);
  loop.port.drain();
  // Everything came back exactly once: parents done, the rest cancelled or
  // (children stolen before the shutdown) done.
  for (auto* set : {&parents, &children, &queued}) require_all_handed_back(*set, loop);
  for (auto& p : parents) REQUIRE(p.final_state.load() == exec::kJobDone);
  for (auto& j : queued) {
    REQUIRE(j.runs.load() == 0);
    REQUIRE(j.final_state.load() == exec::kJobCancelled);
  }
  for (auto& c : children)
    REQUIRE(c.final_state.load() == (c.runs.load() ? exec::kJobDone : exec::kJobCancelled));
  auto m = ex.metrics();
  REQUIRE(m.submitted == 502);
  REQUIRE(m.submitted == m.completed + m.cancelled);
  REQUIRE(m.queued == 0);
  REQUIRE(m.running == 0);
}

TEST_CASE("shutdown before start and the destructor hand back queued jobs", "[executor][shutdown]") {
  TestLoop loop;
  std::deque<TestJob> jobs;
  add_jobs(jobs, 10, &loop.port);
  {
    Executor ex(opts(2));
    for (auto& j : jobs) REQUIRE(ex.submit(&j.job) == 0);  // waits for start()
    SECTION("explicit shutdown") {
      ex.shutdown(true);
      REQUIRE(ex.start() == -ESHUTDOWN);
    }
    SECTION("destructor only") {}
  }
  REQUIRE(loop.port.drain() == 10);
  for (auto& j : jobs) REQUIRE(j.final_state.load() == exec::kJobCancelled);
  require_all_handed_back(jobs, loop);
}

TEST_CASE("the destructor stops running work and hands everything back", "[executor][shutdown]") {
  TestLoop loop;
  Gate gate;
  std::deque<TestJob> jobs;
  add_jobs(jobs, 100, &loop.port, [&](TestJob& t) { gate.pass(t.job); });
  {
    Executor ex(opts(2));
    REQUIRE(ex.start() == 0);
    REQUIRE(ex.start() == -EALREADY);
    for (auto& j : jobs) REQUIRE(ex.submit(&j.job) == 0);
    REQUIRE(gate.wait_inside(2));
  }
  REQUIRE(loop.port.drain() == 100);
  REQUIRE(total(jobs, &TestJob::runs) == 2);
  require_all_handed_back(jobs, loop);
}

TEST_CASE("shutdown from inside a job does not deadlock", "[executor][shutdown]") {
  TestLoop loop;
  TestJob job(&loop.port), late(&loop.port);
  Executor ex(opts(2));
  REQUIRE(ex.start() == 0);
  job.body = [&](TestJob&) { ex.shutdown(false); };
  REQUIRE(ex.submit(&job.job) == 0);
  REQUIRE(loop.run_until([&] { return job.completes.load() == 1; }));
  REQUIRE(ex.submit(&late.job) == -ESHUTDOWN);
  ex.shutdown(false);  // joins
}
