// Ready queue: FIFO, fairness across iterations, abort, growth.
#include <catch2/catch.hpp>
#include <vector>

#include "support.h"

using uvpy::test::Probe;
using uvpy::test::make_reactor;

TEST_CASE("ready queue runs FIFO and grows past its initial capacity", "[ready]") {
  uvpy::loop::ReadyQueue q;
  std::vector<int> order;
  std::vector<std::unique_ptr<Probe>> probes;
  for (int i = 0; i < 1000; ++i) {
    probes.push_back(std::make_unique<Probe>([&order, i] { order.push_back(i); return 0; }));
    q.push(probes.back()->cb());
  }
  REQUIRE(q.size() == 1000);
  uint64_t ran = 0;
  REQUIRE(q.drain(&ran) == 0);
  REQUIRE(ran == 1000);
  REQUIRE(order.size() == 1000);
  for (int i = 0; i < 1000; ++i) REQUIRE(order[i] == i);
  for (auto& p : probes) REQUIRE(p->refs == 0);
}

TEST_CASE("callbacks queued while draining run on the next iteration", "[ready][reactor]") {
  auto r = make_reactor();
  int iteration = 0;
  std::vector<int> ran_in;
  // A callback that reschedules itself must not starve the loop: it runs
  // exactly once per iteration.
  Probe self_rescheduling;
  self_rescheduling.fn = [&] {
    ran_in.push_back(iteration);
    if (ran_in.size() < 3) r->call_soon(self_rescheduling.cb());
    return 0;
  };
  r->call_soon(self_rescheduling.cb());
  for (iteration = 0; iteration < 3; ++iteration) {
    REQUIRE(r->run_once(nullptr) == 0);
    REQUIRE(ran_in.size() == static_cast<size_t>(iteration + 1));
  }
  REQUIRE(ran_in == std::vector<int>{0, 1, 2});
  REQUIRE(r->ready_count() == 0);
  r->close();
  REQUIRE(self_rescheduling.refs == 0);
}

TEST_CASE("a callback returning -1 aborts the drain and keeps the rest queued", "[ready]") {
  uvpy::loop::ReadyQueue q;
  Probe ok1, boom([] { return -1; }), ok2;
  q.push(ok1.cb());
  q.push(boom.cb());
  q.push(ok2.cb());
  uint64_t ran = 0;
  REQUIRE(q.drain(&ran) == -1);
  REQUIRE(ran == 2);  // the aborting callback counts: it ran
  REQUIRE(ok1.runs == 1);
  REQUIRE(boom.runs == 1);
  REQUIRE(ok2.runs == 0);
  REQUIRE(q.size() == 1);
  REQUIRE(q.drain(&ran) == 0);
  REQUIRE(ran == 3);
  REQUIRE(ok2.runs == 1);
  REQUIRE(ok1.refs + boom.refs + ok2.refs == 0);
}

TEST_CASE("stop makes the next poll non-blocking", "[ready][reactor]") {
  auto r = make_reactor();
  Probe far;
  far.node.when = r->time() + 3600;
  r->add_timer(&far.node);
  r->stop();
  const double t0 = r->time();
  REQUIRE(r->run_once(nullptr) == 0);  // would block for an hour without stop
  REQUIRE(r->time() - t0 < 60);
  REQUIRE(far.runs == 0);
  r->close();
  REQUIRE(far.refs == 0);
}
