// exec_support.h — a stand-in loop and jobs for testing the executor without
// Python or a reactor.
//
// TestLoop plays the loop thread's part: its CompletionPort's wake() records
// the wake and signals a condition variable (where production posts one
// callback into the reactor), and run_until() drains on each wake. TestJob
// counts its runs and completions, which is how every test checks the
// exactly-once rules of job.h. Each waits with a deadline, so a scheduler
// bug fails a test instead of hanging it. require_all_handed_back() is the
// executor's MAKE_VALGRIND_HAPPY: every accepted job came back exactly once.
#pragma once
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "completion_port.h"
#include "executor.h"

namespace uvpy::test {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

struct TestLoop {
  std::mutex mu;
  std::condition_variable cv;
  bool woken = false;  // guarded by mu
  std::atomic<int> wakes{0};
  size_t drains = 0;  // drain cycles run by this (loop) thread
  exec::CompletionPort port{&TestLoop::wake, this};

  static void wake(void* arg) {
    auto* self = static_cast<TestLoop*>(arg);
    self->wakes.fetch_add(1, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lk(self->mu);
      self->woken = true;
    }
    self->cv.notify_one();
  }

  // Waits for a wake (or the deadline), then drains. Returns jobs completed.
  size_t wait_and_drain(Clock::time_point deadline) {
    {
      std::unique_lock<std::mutex> lk(mu);
      cv.wait_until(lk, deadline, [this] { return woken; });
      woken = false;
    }
    ++drains;
    return port.drain();
  }

  // Drains on every wake until pred() holds; false if the deadline passed.
  template <class Pred>
  bool run_until(Pred pred, std::chrono::milliseconds limit = 10s) {
    auto deadline = Clock::now() + limit;
    while (!pred()) {
      if (Clock::now() >= deadline) return false;
      wait_and_drain(deadline);
    }
    return true;
  }
};

struct TestJob {
  exec::Job job;
  std::atomic<int> runs{0};
  std::atomic<int> completes{0};
  std::atomic<int> final_state{-1};  // state seen by complete()
  std::function<void(TestJob&)> body;
  std::atomic<int>* completed_counter = nullptr;  // optional shared tally

  explicit TestJob(exec::CompletionPort* port = nullptr, std::function<void(TestJob&)> b = {})
      : body(std::move(b)) {
    job.run = &TestJob::run;
    job.complete = &TestJob::complete;
    job.port = port;
    job.data = this;
  }
  static void run(exec::Job* j) {
    auto* self = static_cast<TestJob*>(j->data);
    self->runs.fetch_add(1, std::memory_order_relaxed);
    if (self->body) self->body(*self);
  }
  static void complete(exec::Job* j) {
    auto* self = static_cast<TestJob*>(j->data);
    self->final_state.store(j->state.load(std::memory_order_relaxed), std::memory_order_relaxed);
    self->completes.fetch_add(1, std::memory_order_relaxed);
    if (self->completed_counter) self->completed_counter->fetch_add(1, std::memory_order_relaxed);
  }
};

// Holds workers inside a job until opened (or the job is told to stop).
struct Gate {
  std::atomic<bool> open{false};
  std::atomic<int> inside{0};

  // Run inside a job. Returns true if opened, false if told to stop or timed out.
  bool pass(const exec::Job& j, std::chrono::milliseconds limit = 10s) {
    inside.fetch_add(1);
    auto deadline = Clock::now() + limit;
    while (!open.load()) {
      if (j.should_stop() || Clock::now() >= deadline) return false;
      std::this_thread::sleep_for(100us);
    }
    return true;
  }
  // Test thread: waits until n jobs are inside.
  bool wait_inside(int n, std::chrono::milliseconds limit = 10s) {
    auto deadline = Clock::now() + limit;
    while (inside.load() < n)
      if (Clock::now() >= deadline) return false;
      else std::this_thread::sleep_for(50us);
    return true;
  }
};

// Spins until pred() or the deadline.
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds limit = 10s) {
  auto deadline = Clock::now() + limit;
  while (!pred()) {
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(50us);
  }
  return true;
}

inline exec::Executor::Options opts(unsigned workers, size_t capacity = 4096) {
  exec::Executor::Options o;
  o.workers = workers;
  o.queue_capacity = capacity;
  return o;
}

// Appends n jobs (a deque, because TestJob can neither be copied nor moved).
// Tests declare their job storage before the Executor, so that if a REQUIRE
// fails mid-test the executor is shut down and joined before the jobs its
// workers may still touch are destroyed.
inline void add_jobs(std::deque<TestJob>& jobs, size_t n, exec::CompletionPort* port,
                     std::function<void(TestJob&)> body = {}) {
  for (size_t i = 0; i < n; ++i) jobs.emplace_back(port, body);
}

inline int total(const std::deque<TestJob>& jobs, std::atomic<int> TestJob::*field) {
  int n = 0;
  for (const auto& j : jobs) n += (j.*field).load();
  return n;
}

inline void require_all_handed_back(const std::deque<TestJob>& jobs, const TestLoop& loop) {
  for (const auto& j : jobs) REQUIRE(j.completes.load() == 1);
  REQUIRE(loop.port.outstanding() == 0);
  REQUIRE(loop.port.empty());
}

}  // namespace uvpy::test
