// Executor: exactly-once execution and completion, worker count, the
// completion port's coalesced wakeups, cancellation, backpressure, metrics
// (shutdown: test_executor_shutdown.cc). Each test ends with every job handed back and the port empty.
#include <catch2/catch.hpp>
#include <sched.h>

#include <cerrno>
#include <deque>
#include <memory>
#include <thread>
#include <vector>

#include "exec_support.h"

using uvpy::exec::Executor;
using uvpy::exec::Job;
using namespace uvpy::test;
namespace exec = uvpy::exec;

TEST_CASE("every job runs exactly once and completes exactly once via its port", "[executor]") {
  TestLoop loop;
  std::deque<TestJob> jobs;
  Executor ex(opts(2));
  REQUIRE(ex.start() == 0);
  add_jobs(jobs, 2000, &loop.port);
  for (auto& j : jobs) REQUIRE(ex.submit(&j.job, true) == 0);
  REQUIRE(loop.run_until([&] { return loop.port.outstanding() == 0; }));
  for (auto& j : jobs) {
    REQUIRE(j.runs.load() == 1);
    REQUIRE(j.final_state.load() == exec::kJobDone);
    REQUIRE(j.job.start_ns >= j.job.submit_ns);
    REQUIRE(j.job.end_ns >= j.job.start_ns);
  }
  require_all_handed_back(jobs, loop);
  auto m = ex.metrics();
  REQUIRE(m.submitted == 2000);
  REQUIRE(m.completed == 2000);
  ex.shutdown(true);
}

TEST_CASE("default worker count is the CPUs in the affinity mask", "[executor]") {
  cpu_set_t set;
  CPU_ZERO(&set);
  REQUIRE(sched_getaffinity(0, sizeof set, &set) == 0);
  Executor ex;
  REQUIRE(ex.worker_count() == static_cast<unsigned>(CPU_COUNT(&set)));
  REQUIRE(Executor::affinity_cpu_count() == ex.worker_count());
  REQUIRE(ex.metrics().workers.size() == ex.worker_count());
}

TEST_CASE("a configured worker count runs that many jobs at once", "[executor]") {
  // Three jobs that wait for each other can only finish if three workers
  // pick them up: this exercises the wake relay and stealing as well.
  TestLoop loop;
  std::atomic<int> arrived{0};
  std::atomic<int> met{0};
  std::deque<TestJob> jobs;
  add_jobs(jobs, 3, &loop.port, [&](TestJob&) {
    arrived.fetch_add(1);
    if (eventually([&] { return arrived.load() == 3; }, 5s)) met.fetch_add(1);
  });
  Executor ex(opts(3));
  REQUIRE(ex.worker_count() == 3);
  REQUIRE(ex.start() == 0);
  for (auto& j : jobs) REQUIRE(ex.submit(&j.job) == 0);
  REQUIRE(loop.run_until([&] { return total(jobs, &TestJob::completes) == 3; }));
  REQUIRE(met.load() == 3);
  REQUIRE(ex.metrics().workers.size() == 3);
}

TEST_CASE("one job at a time wakes no extra worker per job", "[executor]") {
  // A searcher that picks up the only queued job must not relay the search
  // to a parked worker (idle.h rule 3): that worker would find nothing,
  // spin and park again -- a futex wake per job, and a preemption of the
  // job itself when both land on one core. A long spin keeps the worker
  // that ran job k searching until job k+1 arrives, so every job after the
  // first is found by a spinning searcher and no wake is needed at all.
  TestLoop loop;
  std::deque<TestJob> jobs;
  add_jobs(jobs, 1, &loop.port, [](TestJob&) {});
  auto o = opts(2);
  o.spin_us = 200000;
  Executor ex(o);
  REQUIRE(ex.start() == 0);
  constexpr int kRounds = 200;
  for (int i = 1; i <= kRounds; ++i) {
    REQUIRE(ex.submit(&jobs[0].job) == 0);
    REQUIRE(loop.run_until([&] { return jobs[0].completes.load() == i; }));
  }
  auto m = ex.metrics();
  REQUIRE(m.completed == kRounds);
  // Before the fix: about one wake per job (~200). Now: the first
  // submission's wake, plus one per round where a sanitizer or a busy
  // 2-core machine slowed the loop past the spin (26 seen under ASan in
  // CI); a bound of a quarter still tells the two apart.
  INFO("wakes: " << m.wakes);
  REQUIRE(m.wakes < kRounds / 4);
}

TEST_CASE("jobs that block never leave a queued job waiting behind them", "[executor]") {
  // Rounds of two jobs that wait for each other, on two workers: every round
  // deadlocks (until its timeout) if the second job sits in a busy worker's
  // local queue while the other worker sleeps. Spin off so workers park.
  constexpr int kRounds = 200;
  TestLoop loop;
  std::atomic<int> arrived[kRounds] = {}, met{0};
  std::deque<TestJob> jobs;
  for (int r = 0; r < kRounds; ++r)
    add_jobs(jobs, 2, &loop.port, [&, r](TestJob&) {
      arrived[r].fetch_add(1);
      if (eventually([&] { return arrived[r].load() == 2; }, 2s)) met.fetch_add(1);
    });
  Executor::Options o = opts(2);
  o.spin_us = 0;
  Executor ex(o);
  REQUIRE(ex.start() == 0);
  for (int r = 0; r < kRounds; ++r) {
    REQUIRE(ex.submit(&jobs[2 * r].job) == 0);
    REQUIRE(ex.submit(&jobs[2 * r + 1].job) == 0);
    REQUIRE(loop.run_until([&] { return loop.port.outstanding() == 0; }));
    REQUIRE(met.load() == 2 * (r + 1));
  }
}

TEST_CASE("current_worker() names the worker running a job, -1 elsewhere", "[executor]") {
  TestLoop loop;
  std::atomic<int> bad{0};
  std::deque<TestJob> jobs;
  Executor ex(opts(2));
  REQUIRE(ex.start() == 0);
  add_jobs(jobs, 50, &loop.port, [&](TestJob&) {
    int w = ex.current_worker();
    if (w < 0 || w >= 2) bad.fetch_add(1);
  });
  for (auto& j : jobs) REQUIRE(ex.submit(&j.job, true) == 0);
  REQUIRE(loop.run_until([&] { return loop.port.outstanding() == 0; }));
  REQUIRE(bad.load() == 0);
  REQUIRE(ex.current_worker() == -1);
}

TEST_CASE("completion port: one wake per drain cycle, however many pushes", "[executor][port]") {
  TestLoop loop;
  std::deque<TestJob> jobs;
  add_jobs(jobs, 1000, &loop.port);
  for (auto& j : jobs) loop.port.push(&j.job);
  REQUIRE(loop.wakes.load() == 1);
  // FIFO order within a batch.
  std::vector<Job*> order;
  REQUIRE(loop.port.drain([&](Job* j) { order.push_back(j); }) == 1000);
  for (size_t i = 0; i < order.size(); ++i) REQUIRE(order[i] == &jobs[i].job);
  REQUIRE(loop.port.drain() == 0);
  // The first push after a drain wakes again, and only it.
  loop.port.push(&jobs[0].job);
  loop.port.push(&jobs[1].job);
  REQUIRE(loop.wakes.load() == 2);
  REQUIRE(loop.port.drain() == 2);
  REQUIRE(jobs[0].completes.load() == 1);
}

TEST_CASE("completion port: concurrent pushers never strand a job", "[executor][port]") {
  TestLoop loop;
  constexpr int kThreads = 4, kEach = 5000;
  std::deque<TestJob> jobs;
  add_jobs(jobs, kThreads * kEach, &loop.port);
  std::atomic<int> done{0};
  for (auto& j : jobs) j.completed_counter = &done;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (int k = 0; k < kEach; ++k) loop.port.push(&jobs[t * kEach + k].job);
    });
  // Draining only on wakes: a lost wakeup would stall here until the deadline.
  REQUIRE(loop.run_until([&] { return done.load() == kThreads * kEach; }));
  for (auto& t : threads) t.join();
  REQUIRE(loop.wakes.load() >= 1);
  REQUIRE(static_cast<size_t>(loop.wakes.load()) <= loop.drains + 1);
  REQUIRE(loop.wakes.load() < kThreads * kEach);
  for (auto& j : jobs) REQUIRE(j.completes.load() == 1);
}

TEST_CASE("executor completions coalesce into far fewer wakes than jobs", "[executor][port]") {
  TestLoop loop;
  std::deque<TestJob> jobs, again;
  add_jobs(jobs, 1000, &loop.port);
  add_jobs(again, 1, &loop.port);
  {
    Executor ex(opts(2));
    REQUIRE(ex.start() == 0);
    for (auto& j : jobs) REQUIRE(ex.submit(&j.job, true) == 0);
    ex.shutdown(true);  // joined: every push has happened, and the loop never drained
  }
  REQUIRE(loop.wakes.load() == 1);
  REQUIRE(loop.port.drain() == 1000);
  // The next drain cycle gets its own wake (the port outlives executors).
  Executor ex(opts(1));
  REQUIRE(ex.start() == 0);
  REQUIRE(ex.submit(&again[0].job) == 0);
  REQUIRE(loop.run_until([&] { return again[0].completes.load() == 1; }));
  REQUIRE(loop.wakes.load() == 2);
  require_all_handed_back(jobs, loop);
}

TEST_CASE("cancelled queued jobs never run and come back cancelled", "[executor][cancel]") {
  TestLoop loop;
  Gate gate;
  TestJob blocker(&loop.port, [&](TestJob& t) { gate.pass(t.job); });
  std::deque<TestJob> jobs;
  add_jobs(jobs, 100, &loop.port);
  Executor ex(opts(1));
  REQUIRE(ex.start() == 0);
  REQUIRE(ex.submit(&blocker.job) == 0);
  REQUIRE(gate.wait_inside(1));
  for (auto& j : jobs) REQUIRE(ex.submit(&j.job) == 0);
  for (size_t i = 0; i < jobs.size(); i += 2) REQUIRE(ex.try_cancel(&jobs[i].job));
  REQUIRE(!ex.try_cancel(&blocker.job));  // already running
  gate.open = true;
  REQUIRE(loop.run_until([&] { return loop.port.outstanding() == 0; }));
  for (size_t i = 0; i < jobs.size(); ++i) {
    bool cancelled = i % 2 == 0;
    REQUIRE(jobs[i].runs.load() == (cancelled ? 0 : 1));
    REQUIRE(jobs[i].final_state.load() == (cancelled ? exec::kJobCancelled : exec::kJobDone));
  }
  REQUIRE(!ex.try_cancel(&jobs[1].job));  // done: too late
  require_all_handed_back(jobs, loop);
  auto m = ex.metrics();
  REQUIRE(m.cancelled == 50);
  REQUIRE(m.completed == 51);
}

TEST_CASE("a running job sees cancel_requested", "[executor][cancel]") {
  TestLoop loop;
  std::atomic<bool> running{false}, saw_cancel{false};
  TestJob job(&loop.port, [&](TestJob& t) {
    running = true;
    saw_cancel = eventually([&] { return t.job.should_stop(); }, 5s);
  });
  Executor ex(opts(1));
  REQUIRE(ex.start() == 0);
  REQUIRE(ex.submit(&job.job) == 0);
  REQUIRE(eventually([&] { return running.load(); }));
  REQUIRE(!ex.try_cancel(&job.job));  // too late to skip it...
  REQUIRE(loop.run_until([&] { return job.completes.load() == 1; }));
  REQUIRE(saw_cancel.load());  // ...but it was asked to stop
  REQUIRE(job.final_state.load() == exec::kJobDone);
}

TEST_CASE("backpressure: nonblocking submit fails when full, blocking waits for room", "[executor][backpressure]") {
  TestLoop loop;
  Gate gate;
  TestJob blocker(&loop.port, [&](TestJob& t) { gate.pass(t.job); });
  std::deque<TestJob> jobs;
  add_jobs(jobs, 6, &loop.port);
  std::atomic<int> rc{1};
  Executor ex(opts(1, 4));
  REQUIRE(ex.start() == 0);
  REQUIRE(ex.submit(&blocker.job) == 0);
  REQUIRE(gate.wait_inside(1));  // the worker holds it: the queue is empty
  for (int i = 0; i < 4; ++i) REQUIRE(ex.submit(&jobs[i].job, false) == 0);
  REQUIRE(ex.submit(&jobs[4].job, false) == -EAGAIN);
  REQUIRE(jobs[4].job.state.load() == exec::kJobIdle);  // refused: still the owner's

  std::thread producer([&] { rc = ex.submit(&jobs[4].job, true); });
  std::this_thread::sleep_for(20ms);
  REQUIRE(rc.load() == 1);  // still waiting for room
  gate.open = true;
  producer.join();
  REQUIRE(rc.load() == 0);
  REQUIRE(ex.submit(&jobs[5].job, true) == 0);
  REQUIRE(loop.run_until([&] { return loop.port.outstanding() == 0; }));
  require_all_handed_back(jobs, loop);
}

TEST_CASE("submit rejects malformed and already-queued jobs", "[executor]") {
  TestLoop loop;
  TestJob job(&loop.port);
  Job bare;
  Executor ex(opts(1));
  REQUIRE(ex.submit(nullptr) == -EINVAL);
  REQUIRE(ex.submit(&bare) == -EINVAL);
  REQUIRE(ex.submit(&job.job) == 0);  // not started: stays queued
  REQUIRE(ex.submit(&job.job) == -EBUSY);
  REQUIRE(ex.start() == 0);
  REQUIRE(loop.run_until([&] { return job.completes.load() == 1; }));
  REQUIRE(ex.submit(&job.job) == 0);  // completed jobs may be reused
  REQUIRE(loop.run_until([&] { return job.completes.load() == 2; }));
  REQUIRE(job.runs.load() == 2);
}

TEST_CASE("metrics add up", "[executor][metrics]") {
  TestLoop loop;
  std::deque<TestJob> jobs;
  add_jobs(jobs, 400, &loop.port, [](TestJob&) {
    auto until = Clock::now() + 5us;
    while (Clock::now() < until) {
    }
  });
  Executor ex(opts(2));
  for (auto& j : jobs) REQUIRE(ex.submit(&j.job) == 0);
  auto before = ex.metrics();
  REQUIRE(before.submitted == 400);
  REQUIRE(before.queued == 400);
  for (size_t i = 0; i < 100; ++i) REQUIRE(ex.try_cancel(&jobs[i].job));
  REQUIRE(ex.start() == 0);
  REQUIRE(loop.run_until([&] { return loop.port.outstanding() == 0; }));
  auto m = ex.metrics();
  REQUIRE(m.submitted == 400);
  REQUIRE(m.completed == 300);
  REQUIRE(m.cancelled == 100);
  REQUIRE(m.queued == 0);
  REQUIRE(m.running == 0);
  uint64_t completed = 0, cancelled = 0, busy = 0, steals = 0;
  for (auto& w : m.workers) {
    completed += w.completed;
    cancelled += w.cancelled;
    busy += w.busy_ns;
    steals += w.steals;
    if (w.completed > 0) REQUIRE(w.busy_ns > 0);
  }
  REQUIRE(completed == 300);
  REQUIRE(cancelled == 100);
  REQUIRE(steals == m.steals);
  REQUIRE(busy >= 300 * 5000);
  require_all_handed_back(jobs, loop);
}
