// BlockingPool: jobs that block never starve the ones they wait for, the
// thread limit holds, idle threads go away, cancel and shutdown hand every
// job back exactly once, batches are bracketed by enter/leave, and a host
// that cannot start a thread gets its job back (or, where a thread took it
// meanwhile, the submit succeeds) and strands no job queued behind the
// failed start, draining or not. The last cases are TSan stresses:
// submit/cancel/claim against threads that come and go, and a thread limit
// that moves up and down under load.
#include <catch2/catch.hpp>

#include <cerrno>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "blocking_pool.h"
#include "exec_support.h"

using uvpy::exec::BlockingPool;
using namespace uvpy::test;
namespace exec = uvpy::exec;

namespace {

BlockingPool::Options pool_opts(unsigned max_threads, unsigned keep_alive_ms = 10000) {
  BlockingPool::Options o;
  o.max_threads = max_threads;
  o.keep_alive_ms = keep_alive_ms;
  return o;
}

// A one-shot event a job can wait on, as threading.Event.wait would.
struct Event {
  std::mutex mu;
  std::condition_variable cv;
  bool set_ = false;
  void set() {
    {
      std::lock_guard<std::mutex> lk(mu);
      set_ = true;
    }
    cv.notify_all();
  }
  bool wait(std::chrono::milliseconds limit) {
    std::unique_lock<std::mutex> lk(mu);
    return cv.wait_for(lk, limit, [this] { return set_; });
  }
};

}  // namespace

TEST_CASE("N jobs that wait for job N+1 all finish, up to the limit", "[executor][blocking]") {
  for (unsigned n : {1u, 4u, 7u}) {
    TestLoop loop;
    Event ev;
    std::atomic<int> saw_set{0};
    std::deque<TestJob> jobs;
    add_jobs(jobs, n, &loop.port, [&](TestJob&) {
      if (ev.wait(10s)) saw_set.fetch_add(1);
    });
    jobs.emplace_back(&loop.port, [&](TestJob&) { ev.set(); });
    BlockingPool pool(pool_opts(n + 1));
    for (auto& j : jobs) REQUIRE(pool.submit(&j.job) == 0);
    REQUIRE(loop.run_until([&] { return total(jobs, &TestJob::completes) == int(n) + 1; }));
    REQUIRE(saw_set.load() == int(n));  // none timed out: the setter was never starved
    require_all_handed_back(jobs, loop);
    REQUIRE(pool.metrics().threads <= n + 1);
  }
}

TEST_CASE("at the thread limit, a blocked job and the one it waits for, over and over", "[executor][blocking]") {
  // Bursts of tiny jobs wake several sleepers while one thread may take the
  // whole burst in its batch; then a job blocks until the next one runs,
  // which needs a second thread. A sleeper the pool stopped counting as idle
  // (a claim whose job another thread took) would leave that job queued at
  // the limit until a keep-alive (10 s here) ran out.
  TestLoop loop;
  BlockingPool pool(pool_opts(3));
  for (int round = 0; round < 300; ++round) {
    std::deque<TestJob> burst;
    add_jobs(burst, 3, &loop.port);
    for (auto& j : burst) REQUIRE(pool.submit(&j.job) == 0);
    REQUIRE(loop.run_until([&] { return total(burst, &TestJob::completes) == 3; }));
    std::this_thread::sleep_for(100us);  // past the spin: the threads sleep
    Event ev;
    std::atomic<bool> ok{false};
    std::deque<TestJob> pair;
    pair.emplace_back(&loop.port, [&](TestJob&) { ok = ev.wait(8s); });
    pair.emplace_back(&loop.port, [&](TestJob&) { ev.set(); });
    for (auto& j : pair) REQUIRE(pool.submit(&j.job) == 0);
    REQUIRE(loop.run_until([&] { return total(pair, &TestJob::completes) == 2; }, 5s));
    REQUIRE(ok.load());
  }
}

TEST_CASE("the thread limit holds; queued jobs wait for a free thread", "[executor][blocking]") {
  TestLoop loop;
  std::atomic<int> inside{0}, most{0};
  Gate gate;
  std::deque<TestJob> jobs;
  add_jobs(jobs, 10, &loop.port, [&](TestJob& t) {
    int now = inside.fetch_add(1) + 1;
    int prev = most.load();
    while (now > prev && !most.compare_exchange_weak(prev, now)) {
    }
    gate.pass(t.job);
    inside.fetch_sub(1);
  });
  BlockingPool pool(pool_opts(3));
  for (auto& j : jobs) REQUIRE(pool.submit(&j.job) == 0);
  REQUIRE(gate.wait_inside(3));
  std::this_thread::sleep_for(20ms);  // a fourth thread would have entered by now
  REQUIRE(gate.inside.load() == 3);
  auto m = pool.metrics();
  REQUIRE(m.threads == 3);
  REQUIRE(m.queued == 7);
  REQUIRE(m.running == 3);
  gate.open = true;
  REQUIRE(loop.run_until([&] { return total(jobs, &TestJob::completes) == 10; }));
  REQUIRE(most.load() == 3);
  require_all_handed_back(jobs, loop);
  REQUIRE(pool.metrics().completed == 10);
}

TEST_CASE("idle threads exit after the keep-alive; a later job starts a new one", "[executor][blocking]") {
  TestLoop loop;
  std::deque<TestJob> jobs;
  add_jobs(jobs, 4, &loop.port, [](TestJob&) { std::this_thread::sleep_for(5ms); });
  BlockingPool pool(pool_opts(4, 30));
  for (int i = 0; i < 3; ++i) REQUIRE(pool.submit(&jobs[i].job) == 0);
  REQUIRE(loop.run_until([&] { return total(jobs, &TestJob::completes) == 3; }));
  REQUIRE(pool.metrics().spawned >= 1);
  REQUIRE(eventually([&] { return pool.metrics().threads == 0; }));
  const uint64_t spawned = pool.metrics().spawned;
  REQUIRE(pool.submit(&jobs[3].job) == 0);
  REQUIRE(loop.run_until([&] { return jobs[3].completes.load() == 1; }));
  REQUIRE(pool.metrics().spawned == spawned + 1);
  require_all_handed_back(jobs, loop);
}

TEST_CASE("lowering the limit lets the extra idle threads go", "[executor][blocking]") {
  TestLoop loop;
  Gate gate;
  std::deque<TestJob> jobs;
  add_jobs(jobs, 4, &loop.port, [&](TestJob& t) { gate.pass(t.job); });
  BlockingPool pool(pool_opts(4));
  for (auto& j : jobs) REQUIRE(pool.submit(&j.job) == 0);
  REQUIRE(gate.wait_inside(4));
  gate.open = true;
  REQUIRE(loop.run_until([&] { return total(jobs, &TestJob::completes) == 4; }));
  REQUIRE(pool.metrics().threads == 4);
  pool.set_max_threads(1);
  // The lowered limit holds at once, even while the extra threads are still there.
  std::atomic<int> inside{0}, most{0};
  std::deque<TestJob> more;
  add_jobs(more, 4, &loop.port, [&](TestJob&) {
    int now = inside.fetch_add(1) + 1;
    int prev = most.load();
    while (now > prev && !most.compare_exchange_weak(prev, now)) {
    }
    std::this_thread::sleep_for(2ms);
    inside.fetch_sub(1);
  });
  for (auto& j : more) REQUIRE(pool.submit(&j.job) == 0);
  REQUIRE(loop.run_until([&] { return total(more, &TestJob::completes) == 4; }));
  REQUIRE(most.load() == 1);
  REQUIRE(eventually([&] { return pool.metrics().threads == 1; }));
}

TEST_CASE("a lowered limit holds for threads that finish a job with more queued", "[executor][blocking]") {
  // Four threads are inside their jobs with more queued behind them when the
  // limit drops to one. Each finishes its job and would take the next, in its
  // batch or back at the top of its loop: only one may.
  for (int round = 0; round < 20; ++round) {
    TestLoop loop;
    Gate gate;
    std::atomic<int> inside{0}, most{0};
    std::deque<TestJob> first, more;
    add_jobs(first, 4, &loop.port, [&](TestJob& t) { gate.pass(t.job); });
    add_jobs(more, 6, &loop.port, [&](TestJob&) {
      int now = inside.fetch_add(1) + 1;
      int prev = most.load();
      while (now > prev && !most.compare_exchange_weak(prev, now)) {
      }
      std::this_thread::sleep_for(1ms);
      inside.fetch_sub(1);
    });
    BlockingPool pool(pool_opts(4));
    for (auto& j : first) REQUIRE(pool.submit(&j.job) == 0);
    REQUIRE(gate.wait_inside(4));
    for (auto& j : more) REQUIRE(pool.submit(&j.job) == 0);
    pool.set_max_threads(1);
    gate.open = true;
    REQUIRE(loop.run_until([&] { return total(more, &TestJob::completes) == 6; }));
    REQUIRE(most.load() == 1);
    require_all_handed_back(first, loop);
    require_all_handed_back(more, loop);
    REQUIRE(eventually([&] { return pool.metrics().threads == 1; }));
  }
}

TEST_CASE("a raised limit runs the queued jobs at once", "[executor][blocking]") {
  // One thread, blocked; two jobs queued behind it. Raising the limit must
  // put them on threads of their own now, not at the next submit: they may
  // be what the blocked one waits for.
  TestLoop loop;
  Gate gate;
  std::deque<TestJob> jobs;
  add_jobs(jobs, 3, &loop.port, [&](TestJob& t) { gate.pass(t.job); });
  BlockingPool pool(pool_opts(1));
  for (auto& j : jobs) REQUIRE(pool.submit(&j.job) == 0);
  REQUIRE(gate.wait_inside(1));
  std::this_thread::sleep_for(5ms);
  REQUIRE(gate.inside.load() == 1);
  pool.set_max_threads(3);
  REQUIRE(gate.wait_inside(3, 5s));
  REQUIRE(pool.metrics().threads == 3);
  gate.open = true;
  REQUIRE(loop.run_until([&] { return total(jobs, &TestJob::completes) == 3; }));
  require_all_handed_back(jobs, loop);
}

TEST_CASE("a cancelled queued job is handed back without running", "[executor][blocking]") {
  TestLoop loop;
  Gate gate;
  TestJob blocker(&loop.port, [&](TestJob& t) { gate.pass(t.job); });
  TestJob victim(&loop.port);
  BlockingPool pool(pool_opts(1));
  REQUIRE(pool.submit(&blocker.job) == 0);
  REQUIRE(gate.wait_inside(1));
  REQUIRE(pool.submit(&victim.job) == 0);
  REQUIRE(pool.submit(&victim.job) == -EBUSY);
  REQUIRE(exec::try_cancel(&victim.job));
  gate.open = true;
  REQUIRE(loop.run_until([&] { return victim.completes.load() == 1 && blocker.completes.load() == 1; }));
  REQUIRE(victim.runs.load() == 0);
  REQUIRE(victim.final_state.load() == exec::kJobCancelled);
  REQUIRE(pool.metrics().cancelled == 1);
  REQUIRE(loop.port.outstanding() == 0);
}

TEST_CASE("shutdown: drain runs what is queued, no drain hands it back", "[executor][blocking][shutdown]") {
  for (bool drain : {true, false}) {
    TestLoop loop;
    Gate gate;
    TestJob blocker(&loop.port, [&](TestJob& t) { gate.pass(t.job); });
    std::deque<TestJob> queued;
    add_jobs(queued, 20, &loop.port);
    TestJob late(&loop.port);
    BlockingPool pool(pool_opts(1));
    REQUIRE(pool.submit(&blocker.job) == 0);
    REQUIRE(gate.wait_inside(1));
    for (auto& j : queued) REQUIRE(pool.submit(&j.job) == 0);
    pool.shutdown(drain);
    REQUIRE(pool.submit(&late.job) == -ESHUTDOWN);
    gate.open = true;  // without drain the blocker also sees should_stop()
    pool.wait_exited();
    REQUIRE(loop.run_until([&] { return total(queued, &TestJob::completes) == 20; }));
    REQUIRE(blocker.completes.load() == 1);
    for (auto& j : queued)
      REQUIRE(j.final_state.load() == (drain ? exec::kJobDone : exec::kJobCancelled));
    REQUIRE(late.completes.load() == 0);
    REQUIRE(pool.metrics().threads == 0);
    REQUIRE(loop.port.outstanding() == 0);
  }
}

TEST_CASE("a full queue refuses with EAGAIN, or makes a blocking submit wait", "[executor][blocking][backpressure]") {
  TestLoop loop;
  Gate gate;
  TestJob blocker(&loop.port, [&](TestJob& t) { gate.pass(t.job); });
  TestJob queued(&loop.port), refused(&loop.port), waiter(&loop.port);
  auto o = pool_opts(1);
  o.queue_capacity = 1;
  BlockingPool pool(o);
  REQUIRE(pool.submit(&blocker.job) == 0);
  REQUIRE(gate.wait_inside(1));
  REQUIRE(pool.submit(&queued.job) == 0);
  REQUIRE(pool.submit(&refused.job) == -EAGAIN);
  std::atomic<int> rc{1};
  std::thread producer([&] { rc = pool.submit(&waiter.job, true); });
  std::this_thread::sleep_for(10ms);
  REQUIRE(rc.load() == 1);  // still waiting for room
  gate.open = true;
  producer.join();
  REQUIRE(rc.load() == 0);
  REQUIRE(loop.run_until([&] { return waiter.completes.load() == 1 && queued.completes.load() == 1; }));
  REQUIRE(refused.completes.load() == 0);
  REQUIRE(loop.port.outstanding() == 0);
}

TEST_CASE("batches are bracketed by enter/leave and run consecutive jobs", "[executor][blocking]") {
  struct Hooks {
    std::atomic<int> enters{0}, leaves{0}, depth{0}, bad{0};
  } hooks;
  TestLoop loop;
  std::deque<TestJob> jobs;
  add_jobs(jobs, 200, &loop.port, [&](TestJob&) {
    if (hooks.depth.load() <= 0) hooks.bad.fetch_add(1);  // ran outside a batch
  });
  auto o = pool_opts(1);
  o.batch_arg = &hooks;
  o.enter = [](void* a) {
    auto* h = static_cast<Hooks*>(a);
    h->enters.fetch_add(1);
    h->depth.fetch_add(1);
  };
  o.leave = [](void* a) {
    auto* h = static_cast<Hooks*>(a);
    h->depth.fetch_sub(1);
    h->leaves.fetch_add(1);
  };
  o.batch_us = 1000000;  // one batch takes everything queued
  BlockingPool pool(o);
  Gate gate;
  TestJob first(&loop.port, [&](TestJob& t) { gate.pass(t.job); });
  REQUIRE(pool.submit(&first.job) == 0);
  REQUIRE(gate.wait_inside(1));
  for (auto& j : jobs) REQUIRE(pool.submit(&j.job) == 0);
  gate.open = true;
  REQUIRE(loop.run_until([&] { return total(jobs, &TestJob::completes) == 200; }));
  REQUIRE(eventually([&] { return hooks.leaves.load() == hooks.enters.load(); }));
  REQUIRE(hooks.bad.load() == 0);
  REQUIRE(hooks.enters.load() == 1);  // the blocker's batch went on with the 200 queued behind it
}

TEST_CASE("a host that cannot start a thread gets its job back", "[executor][blocking]") {
  TestLoop loop;
  TestJob job(&loop.port);
  auto o = pool_opts(2);
  o.spawn = [](void*, BlockingPool*, unsigned) { return EAGAIN; };
  BlockingPool pool(o);
  REQUIRE(pool.submit(&job.job) == -EAGAIN);
  REQUIRE(job.job.state.load() == exec::kJobIdle);
  REQUIRE(loop.port.outstanding() == 0);
  auto m = pool.metrics();
  REQUIRE(m.threads == 0);
  REQUIRE(m.queued == 0);
}

namespace {
// A host whose call k (1, 2, ...) waits until release >= k, then fails: the
// order in which concurrent thread starts fail, chosen by the test.
struct FailingHost {
  std::atomic<int> calls{0}, release{0};
  static int spawn(void* arg, BlockingPool*, unsigned) {
    auto* h = static_cast<FailingHost*>(arg);
    const int k = h->calls.fetch_add(1) + 1;
    while (h->release.load() < k) std::this_thread::sleep_for(1ms);
    return EAGAIN;
  }
  bool wait_calls(int n) {
    return eventually([&] { return calls.load() >= n; });
  }
};

BlockingPool::Options failing_opts(unsigned max_threads, FailingHost* host) {
  auto o = pool_opts(max_threads);
  o.spawn = FailingHost::spawn;
  o.spawn_arg = host;
  return o;
}

// A one-thread pool on a FailingHost and n jobs; submitter A (thread a)
// submits jobs[0], and its thread start is pending once started() holds.
// fail_a() lets that start fail and waits for A's submit to return rc_a.
struct StartPending {
  TestLoop loop;
  std::deque<TestJob> jobs;
  FailingHost host;
  BlockingPool pool;
  int rc_a = 1;
  std::thread a;

  explicit StartPending(int n) : pool(failing_opts(1, &host)) {
    add_jobs(jobs, n, &loop.port);
    a = std::thread([this] { rc_a = pool.submit(&jobs[0].job); });
  }
  ~StartPending() {
    if (!a.joinable()) return;
    host.release = 1 << 30;  // a failed REQUIRE: let every start fail
    a.join();
  }
  bool started() { return host.wait_calls(1); }
  void fail_a() {
    host.release = 1;
    a.join();
  }
  // jobs[i] came back failed with the host's error, never run (job.h rule 6).
  void require_failed_back(int i) {
    REQUIRE(loop.run_until([&] { return jobs[i].completes.load() == 1; }, 5s));
    REQUIRE(jobs[i].runs.load() == 0);
    REQUIRE(jobs[i].final_state.load() == exec::kJobCancelled);
    REQUIRE(jobs[i].job.error == -EAGAIN);
  }
};
}  // namespace

TEST_CASE("a job queued behind a thread that fails to start goes back failed", "[executor][blocking]") {
  // B is accepted at the limit, behind A's thread being started. A's start
  // fails: A gets -EAGAIN, and B, with no thread left to run it, comes back
  // failed with the same error (job.h rule 6) instead of waiting forever.
  StartPending s(2);
  auto& loop = s.loop;
  auto& jobs = s.jobs;
  auto& pool = s.pool;
  REQUIRE(s.started());
  REQUIRE(pool.submit(&jobs[1].job) == 0);
  s.fail_a();
  REQUIRE(s.rc_a == -EAGAIN);
  REQUIRE(jobs[0].job.state.load() == exec::kJobIdle);
  s.require_failed_back(1);
  auto m = pool.metrics();
  REQUIRE(m.threads == 0);
  REQUIRE(m.queued == 0);
  REQUIRE(loop.port.outstanding() == 0);
}

TEST_CASE("a raise whose thread fails to start after the submit's fails the queued job", "[executor][blocking]") {
  // A's thread is being started when a raise reserves a second one for A's
  // job. A's start fails first (the raise's still counts, so A's submit
  // returns 0), then the raise's: the job comes back failed.
  StartPending s(1);
  auto& loop = s.loop;
  auto& jobs = s.jobs;
  auto& pool = s.pool;
  REQUIRE(s.started());
  std::thread raise([&] { pool.set_max_threads(2); });
  REQUIRE(s.host.wait_calls(2));
  s.fail_a();
  REQUIRE(s.rc_a == 0);
  s.host.release = 2;
  raise.join();
  s.require_failed_back(0);
  REQUIRE(pool.metrics().threads == 0);
  REQUIRE(loop.port.outstanding() == 0);
}

TEST_CASE("a job cancelled before its thread failed to start stays plainly cancelled", "[executor][blocking]") {
  StartPending s(2);
  auto& loop = s.loop;
  auto& jobs = s.jobs;
  auto& pool = s.pool;
  REQUIRE(s.started());
  REQUIRE(pool.submit(&jobs[1].job) == 0);
  REQUIRE(exec::try_cancel(&jobs[1].job));
  s.fail_a();
  REQUIRE(loop.run_until([&] { return jobs[1].completes.load() == 1; }, 5s));
  REQUIRE(jobs[1].final_state.load() == exec::kJobCancelled);
  REQUIRE(jobs[1].job.error == 0);
}

namespace {
// A host that starts its first thread and fails every later start, once
// ready() holds: what the pool did meanwhile is chosen by the test.
struct FirstThenFailingHost {
  std::atomic<int> calls{0};
  std::function<bool()> ready;
  static int spawn(void* arg, BlockingPool* pool, unsigned index) {
    auto* h = static_cast<FirstThenFailingHost*>(arg);
    if (h->calls.fetch_add(1) == 0) {
      std::thread([pool, index] { pool->thread_main(index); }).detach();
      return 0;
    }
    eventually(h->ready);
    return EAGAIN;
  }
};
}  // namespace

TEST_CASE("a submit whose start failed after a thread ran its job and exited succeeds", "[executor][blocking]") {
  // A's job is queued while A starts a second thread. The first thread runs
  // it, then exits (the limit was lowered), before A's start fails: no
  // thread is left, but A's job was accepted and completes, so A's submit
  // must return 0 (job.h rule 5: an error means complete() never runs).
  TestLoop loop;
  std::deque<TestJob> jobs;
  Event go;
  jobs.emplace_back(&loop.port, [&](TestJob&) { go.wait(5s); });
  jobs.emplace_back(&loop.port);
  FirstThenFailingHost host;
  auto o = pool_opts(2);
  o.spawn = FirstThenFailingHost::spawn;
  o.spawn_arg = &host;
  BlockingPool pool(o);
  host.ready = [&] {
    auto m = pool.metrics();
    return m.completed == 2 && m.threads == 1;  // only A's reservation left
  };
  REQUIRE(pool.submit(&jobs[0].job) == 0);
  REQUIRE(eventually([&] { return jobs[0].runs.load() == 1; }));
  int rc_a = 1;
  std::thread a([&] { rc_a = pool.submit(&jobs[1].job); });
  REQUIRE(eventually([&] { return host.calls.load() == 2; }));
  pool.set_max_threads(1);  // the running thread exits once it has no job
  go.set();
  a.join();
  REQUIRE(loop.run_until([&] { return jobs[1].completes.load() == 1; }, 5s));
  REQUIRE(jobs[1].runs.load() == 1);
  REQUIRE(jobs[1].final_state.load() == exec::kJobDone);
  REQUIRE(rc_a == 0);
  REQUIRE(pool.metrics().threads == 0);
  REQUIRE(loop.port.outstanding() == 0);
}

TEST_CASE("a draining shutdown does not strand jobs queued behind a thread that fails to start", "[executor][blocking]") {
  // shutdown(true) leaves queued jobs to the threads; when the only thread
  // being started fails, none is left to drain them: they go back failed.
  StartPending s(2);
  auto& loop = s.loop;
  auto& jobs = s.jobs;
  auto& pool = s.pool;
  REQUIRE(s.started());
  REQUIRE(pool.submit(&jobs[1].job) == 0);
  pool.shutdown(true);
  s.fail_a();
  REQUIRE(s.rc_a == -EAGAIN);
  s.require_failed_back(1);
  pool.wait_exited();
  REQUIRE(loop.port.outstanding() == 0);
}

TEST_CASE("a submit whose start fails after a shutdown took its job back succeeds", "[executor][blocking]") {
  // shutdown(false) hands back A's queued job, cancelled, while A's thread
  // is being started; the start then fails. The job will complete, so A's
  // submit returns 0 rather than the host's error (job.h rule 5).
  StartPending s(1);
  auto& loop = s.loop;
  auto& jobs = s.jobs;
  auto& pool = s.pool;
  REQUIRE(s.started());
  pool.shutdown(false);
  s.fail_a();
  REQUIRE(loop.run_until([&] { return jobs[0].completes.load() == 1; }, 5s));
  REQUIRE(jobs[0].final_state.load() == exec::kJobCancelled);
  REQUIRE(jobs[0].job.error == 0);
  REQUIRE(s.rc_a == 0);
  pool.wait_exited();
  REQUIRE(loop.port.outstanding() == 0);
}

TEST_CASE("blocking pool: many producers, cancels and short keep-alives, exactly once", "[stress]") {
  TestLoop loop;
  constexpr int kProducers = 4, kPerProducer = 5000;
  std::deque<TestJob> jobs;
  add_jobs(jobs, kProducers * kPerProducer, &loop.port, [](TestJob& t) {
    if ((reinterpret_cast<uintptr_t>(&t) >> 4) % 97 == 0) std::this_thread::sleep_for(50us);
  });
  BlockingPool pool(pool_opts(6, 1));  // threads come and go all the time
  std::atomic<int> cancelled{0}, refused{0};
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      for (int i = 0; i < kPerProducer; ++i) {
        TestJob& j = jobs[p * kPerProducer + i];
        if (pool.submit(&j.job, true) != 0) refused.fetch_add(1);  // REQUIRE is not thread-safe
        if (i % 7 == 0 && exec::try_cancel(&j.job)) cancelled.fetch_add(1);
        if (i % 500 == 0) std::this_thread::sleep_for(2ms);  // let threads time out
      }
    });
  }
  for (auto& t : producers) t.join();
  REQUIRE(refused.load() == 0);
  REQUIRE(loop.run_until([&] { return total(jobs, &TestJob::completes) == kProducers * kPerProducer; }, 60s));
  int ran = total(jobs, &TestJob::runs);
  REQUIRE(ran + cancelled.load() == kProducers * kPerProducer);
  require_all_handed_back(jobs, loop);
  auto m = pool.metrics();
  REQUIRE(m.completed == uint64_t(ran));
  REQUIRE(m.cancelled == uint64_t(cancelled.load()));
}

TEST_CASE("blocking pool: a limit that moves up and down under load strands no job", "[stress]") {
  // Producers submit while another thread moves max_threads between 1 and
  // 4: a thread that comes back from its batch over the limit exits, a
  // claim made before the limit dropped meets a full pool, a spinner finds
  // no room. Every job must still run, and once all is quiet the counts
  // must agree: every thread left waits (idle_ + claimed_), none is active.
  TestLoop loop;
  constexpr int kProducers = 2, kPerProducer = 4000;
  std::deque<TestJob> jobs;
  add_jobs(jobs, kProducers * kPerProducer, &loop.port, [](TestJob& t) {
    if ((reinterpret_cast<uintptr_t>(&t) >> 4) % 13 == 0) std::this_thread::sleep_for(20us);
  });
  BlockingPool pool(pool_opts(4, 2));
  std::atomic<bool> done{false};
  std::thread mover([&] {
    for (unsigned i = 0; !done.load(); ++i) {
      pool.set_max_threads(1 + (i * 7) % 4);
      std::this_thread::sleep_for(30us);
    }
  });
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      for (int i = 0; i < kPerProducer; ++i) pool.submit(&jobs[p * kPerProducer + i].job, true);
    });
  }
  for (auto& t : producers) t.join();
  bool all = loop.run_until([&] { return total(jobs, &TestJob::completes) == kProducers * kPerProducer; }, 60s);
  done = true;
  mover.join();
  REQUIRE(all);
  require_all_handed_back(jobs, loop);
  pool.set_max_threads(2);
  REQUIRE(eventually([&] {
    auto m = pool.metrics();
    return m.threads <= 2 && m.idle == m.threads && m.queued == 0 && m.running == 0;
  }));
}
