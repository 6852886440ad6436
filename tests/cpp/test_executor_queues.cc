// The executor's queues on their own: the local ring (FIFO pops, overflow of
// half the ring to the injection queue, stealing half) and the injection
// queue (capacity, batches, close).
#include <catch2/catch.hpp>

#include <cerrno>
#include <vector>

#include "inject_queue.h"
#include "local_queue.h"

using uvpy::exec::InjectQueue;
using uvpy::exec::Job;
using uvpy::exec::LocalQueue;

namespace {
std::vector<Job> jobs_(size_t n) { return std::vector<Job>(n); }
}  // namespace

TEST_CASE("local queue pops in FIFO order", "[executor][queue]") {
  InjectQueue overflow(16);
  LocalQueue q;
  auto jobs = jobs_(10);
  REQUIRE(q.pop() == nullptr);
  for (auto& j : jobs) REQUIRE(!q.push(&j, overflow));
  REQUIRE(q.len() == 10);
  REQUIRE(q.free_slots() == LocalQueue::kCapacity - 10);
  for (auto& j : jobs) REQUIRE(q.pop() == &j);
  REQUIRE(q.pop() == nullptr);
  REQUIRE(q.empty());
}

TEST_CASE("a full local queue moves its older half plus the new job to the injection queue", "[executor][queue]") {
  InjectQueue overflow(1);  // overflow ignores the capacity
  LocalQueue q;
  auto jobs = jobs_(LocalQueue::kCapacity + 1);
  for (uint32_t i = 0; i < LocalQueue::kCapacity; ++i) REQUIRE(!q.push(&jobs[i], overflow));
  REQUIRE(q.push(&jobs[LocalQueue::kCapacity], overflow));
  REQUIRE(overflow.len() == LocalQueue::kCapacity / 2 + 1);
  REQUIRE(q.len() == LocalQueue::kCapacity / 2);
  Job* batch;
  REQUIRE(overflow.pop_batch(1000, &batch) == LocalQueue::kCapacity / 2 + 1);
  size_t i = 0;
  for (Job* j = batch; j != nullptr; j = j->next, ++i) {
    size_t expect = i < LocalQueue::kCapacity / 2 ? i : LocalQueue::kCapacity;
    REQUIRE(j == &jobs[expect]);
  }
  for (uint32_t k = LocalQueue::kCapacity / 2; k < LocalQueue::kCapacity; ++k) REQUIRE(q.pop() == &jobs[k]);
  REQUIRE(q.pop() == nullptr);
}

TEST_CASE("stealing takes half, oldest first, and returns one to run", "[executor][queue]") {
  InjectQueue overflow(16);
  LocalQueue victim, thief;
  auto jobs = jobs_(9);
  for (auto& j : jobs) victim.push(&j, overflow);
  uint32_t taken = 0;
  Job* first = victim.steal_into(thief, &taken);
  REQUIRE(taken == 5);  // ceil(9 / 2)
  REQUIRE(first == &jobs[4]);
  REQUIRE(thief.len() == 4);
  for (int i = 0; i < 4; ++i) REQUIRE(thief.pop() == &jobs[i]);
  for (int i = 5; i < 9; ++i) REQUIRE(victim.pop() == &jobs[i]);
  REQUIRE(victim.steal_into(thief, &taken) == nullptr);
  REQUIRE(taken == 0);
  // Wrap-around: indices keep running past the ring size.
  for (int round = 0; round < 3; ++round) {
    for (uint32_t i = 0; i < LocalQueue::kCapacity; ++i) victim.push(&jobs[i % 9], overflow);
    for (uint32_t i = 0; i < LocalQueue::kCapacity; ++i) REQUIRE(victim.pop() == &jobs[i % 9]);
  }
}

TEST_CASE("injection queue: capacity, batches and close", "[executor][queue]") {
  InjectQueue q(3);
  auto jobs = jobs_(5);
  REQUIRE(q.push(&jobs[0], false) == 0);
  REQUIRE(q.push(&jobs[1], false) == 0);
  REQUIRE(q.push(&jobs[2], false) == 0);
  REQUIRE(q.push(&jobs[3], false) == -EAGAIN);
  REQUIRE(q.len() == 3);
  Job* batch;
  REQUIRE(q.pop_batch(2, &batch) == 2);
  REQUIRE(batch == &jobs[0]);
  REQUIRE(batch->next == &jobs[1]);
  REQUIRE(batch->next->next == nullptr);
  REQUIRE(q.push(&jobs[3], false) == 0);
  q.close();
  REQUIRE(q.push(&jobs[4], true) == -ESHUTDOWN);
  q.push_batch(&jobs[4], &jobs[4], 1);  // overflow still lands after close
  REQUIRE(q.take_all(&batch) == 3);
  REQUIRE(batch == &jobs[2]);
  REQUIRE(q.len() == 0);
}
