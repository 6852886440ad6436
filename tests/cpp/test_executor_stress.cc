// Stress: many producers, spawning jobs, stealing, cancellation and a loop
// thread draining on wakes, all at once; then the exactly-once rules checked
// job by job. Built for ThreadSanitizer (UVPY_TSAN=ON), which stands in for
// the model checking tokio does with loom: run `uvpy_cpp_tests [stress]`.
#include <catch2/catch.hpp>

#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "exec_support.h"
#include "local_queue.h"

using uvpy::exec::Executor;
using uvpy::exec::Job;
using namespace uvpy::test;
namespace exec = uvpy::exec;

namespace {
// A job small enough that scheduling dominates; its children are spawned
// from the worker, so they enter a local queue and must be stolen to spread.
struct StressJob {
  exec::Job job;
  std::atomic<int> runs{0};
  std::atomic<int> completes{0};
  std::atomic<bool> cancel_won{false};
  int final_state = -1;  // written by complete() on the loop thread only
  Executor* ex = nullptr;
  StressJob* children = nullptr;
  int n_children = 0;
  std::atomic<int>* done = nullptr;
  std::atomic<int>* spawn_failures = nullptr;

  static void run(Job* j) {
    auto* self = static_cast<StressJob*>(j->data);
    self->runs.fetch_add(1, std::memory_order_relaxed);
    for (int i = 0; i < self->n_children; ++i)
      if (self->ex->submit(&self->children[i].job) != 0) self->spawn_failures->fetch_add(1);
  }
  static void complete(Job* j) {
    auto* self = static_cast<StressJob*>(j->data);
    self->final_state = j->state.load(std::memory_order_relaxed);
    self->completes.fetch_add(1, std::memory_order_relaxed);
    self->done->fetch_add(1, std::memory_order_relaxed);
  }
};
}  // namespace

TEST_CASE("100k jobs from many producers run and complete exactly once", "[stress]") {
  constexpr int kProducers = 4;
  constexpr int kPerProducer = 20000;  // roots
  constexpr int kChildren = 4;         // every 16th root spawns this many
  constexpr int kRoots = kProducers * kPerProducer;
  constexpr int kSpawners = kRoots / 16;
  constexpr int kTotal = kRoots + kSpawners * kChildren;  // 100,000

  TestLoop loop;
  std::atomic<int> done{0}, spawn_failures{0};
  std::unique_ptr<StressJob[]> jobs(new StressJob[kTotal]);  // outlives the executor
  Executor::Options o;
  o.workers = 4;  // more workers than cores: parking, waking and stealing all happen
  o.queue_capacity = 1024;
  o.spin_us = 5;
  Executor ex(o);
  REQUIRE(ex.start() == 0);

  for (int i = 0; i < kTotal; ++i) {
    StressJob& s = jobs[i];
    s.job.run = &StressJob::run;
    s.job.complete = &StressJob::complete;
    s.job.port = &loop.port;
    s.job.data = &s;
    s.ex = &ex;
    s.done = &done;
    s.spawn_failures = &spawn_failures;
  }
  for (int k = 0; k < kSpawners; ++k) {
    StressJob& parent = jobs[k * 16];
    parent.children = &jobs[kRoots + k * kChildren];
    parent.n_children = kChildren;
  }

  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p)
    producers.emplace_back([&, p] {
      for (int i = p; i < kRoots; i += kProducers) ex.submit(&jobs[i].job, /*blocking=*/true);
    });
  // A canceller racing the workers for roots that are not parents.
  std::thread canceller([&] {
    std::mt19937 rng(42);
    for (int k = 0; k < 2000; ++k) {
      int i = static_cast<int>(rng() % kRoots);
      if (i % 16 == 0) continue;  // keep the tree intact
      if (jobs[i].job.state.load() == exec::kJobIdle) continue;  // not submitted yet
      if (ex.try_cancel(&jobs[i].job)) jobs[i].cancel_won = true;
    }
  });

  REQUIRE(loop.run_until([&] { return done.load() == kTotal; }, std::chrono::seconds(60)));
  for (auto& t : producers) t.join();
  canceller.join();

  REQUIRE(spawn_failures.load() == 0);
  int cancelled = 0;
  for (int i = 0; i < kTotal; ++i) {
    StressJob& s = jobs[i];
    REQUIRE(s.completes.load() == 1);
    if (s.cancel_won) {
      ++cancelled;
      REQUIRE(s.runs.load() == 0);
      REQUIRE(s.final_state == exec::kJobCancelled);
    } else {
      REQUIRE(s.runs.load() == 1);
      REQUIRE(s.final_state == exec::kJobDone);
    }
  }
  auto m = ex.metrics();
  REQUIRE(m.submitted == static_cast<uint64_t>(kTotal));
  REQUIRE(m.cancelled == static_cast<uint64_t>(cancelled));
  REQUIRE(m.completed == static_cast<uint64_t>(kTotal - cancelled));
  REQUIRE(m.steals > 0);
  REQUIRE(static_cast<size_t>(loop.wakes.load()) <= loop.drains + 1);
  REQUIRE(loop.port.outstanding() == 0);
  ex.shutdown(true);
}

TEST_CASE("local queue: owner push/pop against two thieves, exactly once", "[stress]") {
  constexpr int kJobs = 200000;
  std::vector<Job> jobs(kJobs);
  std::vector<std::atomic<int>> seen(kJobs);
  for (int i = 0; i < kJobs; ++i) jobs[i].data = reinterpret_cast<void*>(static_cast<intptr_t>(i));
  exec::InjectQueue overflow(1);
  exec::LocalQueue owner;
  std::atomic<bool> stop{false};
  auto take = [&](Job* j) { seen[reinterpret_cast<intptr_t>(j->data)].fetch_add(1); };

  std::vector<std::thread> thieves;
  for (int t = 0; t < 2; ++t)
    thieves.emplace_back([&] {
      exec::LocalQueue mine;
      uint32_t taken;
      while (!stop.load()) {
        if (Job* j = owner.steal_into(mine, &taken)) {
          take(j);
          while (Job* k = mine.pop()) take(k);
        }
      }
    });
  for (int i = 0; i < kJobs; ++i) {
    owner.push(&jobs[i], overflow);
    if (i % 3 == 0)
      if (Job* j = owner.pop()) take(j);
  }
  while (Job* j = owner.pop()) take(j);
  stop = true;
  for (auto& t : thieves) t.join();
  Job* batch;
  overflow.take_all(&batch);
  for (Job* j = batch; j != nullptr; j = j->next) take(j);
  for (int i = 0; i < kJobs; ++i) REQUIRE(seen[i].load() == 1);
}
