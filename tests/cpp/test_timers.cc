// Timers: ordering by deadline, FIFO among ties, cancellation, expiry.
#include <catch2/catch.hpp>
#include <algorithm>
#include <random>
#include <set>
#include <utility>
#include <vector>

#include "support.h"

using uvpy::test::Probe;
using uvpy::test::make_reactor;

TEST_CASE("timer heap orders by deadline, ties in insertion order", "[timers]") {
  uvpy::loop::TimerHeap heap;
  std::vector<int> order;
  std::vector<std::unique_ptr<Probe>> probes;
  const double whens[] = {5, 1, 3, 3, 0.5, 3, 2};
  for (int i = 0; i < 7; ++i) {
    probes.push_back(std::make_unique<Probe>([&order, i] { order.push_back(i); return 0; }));
    probes.back()->node.when = whens[i];
    heap.insert(&probes.back()->node);
  }
  while (auto* n = heap.pop_due(100)) {
    n->cb.run();
    n->cb.release();
  }
  REQUIRE(order == std::vector<int>{4, 1, 6, 2, 3, 5, 0});
  for (auto& p : probes) REQUIRE(p->refs == 0);
}

TEST_CASE("timer heap cancel removes from anywhere and releases", "[timers]") {
  uvpy::loop::TimerHeap heap;
  std::vector<std::unique_ptr<Probe>> probes;
  for (int i = 0; i < 100; ++i) {
    probes.push_back(std::make_unique<Probe>());
    probes.back()->node.when = (i * 37) % 100;
    heap.insert(&probes.back()->node);
    REQUIRE(probes.back()->refs == 1);
  }
  // Cancel every third, including the root.
  for (int i = 0; i < 100; i += 3) REQUIRE(heap.remove(&probes[i]->node));
  REQUIRE_FALSE(heap.remove(&probes[0]->node));  // second cancel is a no-op
  REQUIRE(probes[0]->refs == 0);
  double last = -1;
  size_t popped = 0;
  while (auto* n = heap.pop_due(1000)) {
    REQUIRE(n->when >= last);
    last = n->when;
    n->cb.release();
    ++popped;
  }
  REQUIRE(popped == 100 - 34);
  for (auto& p : probes) REQUIRE(p->refs == 0);
}

TEST_CASE("timer heap agrees with a sorted reference under random inserts, cancels and pops",
          "[timers]") {
  // Interleaves the three operations at random on a few thousand timers with
  // many equal deadlines, checking every pop against an ordered set of
  // (deadline, insertion number): exercises sift-up from removals in the
  // middle, partial sibling groups at the end of the array, and ties.
  std::mt19937 rng(12345);
  uvpy::loop::TimerHeap heap;
  std::vector<std::unique_ptr<Probe>> probes;
  std::set<std::pair<double, size_t>> ref;
  std::vector<size_t> live;
  size_t pops = 0;
  for (int step = 0; step < 20000; ++step) {
    int op = static_cast<int>(rng() % 10);
    if (op < 5 || live.empty()) {
      size_t id = probes.size();
      probes.push_back(std::make_unique<Probe>());
      probes.back()->node.when = static_cast<double>(rng() % 200);
      heap.insert(&probes.back()->node);
      ref.emplace(probes.back()->node.when, id);
      live.push_back(id);
    } else if (op < 8) {
      size_t k = rng() % live.size();
      size_t id = live[k];
      live[k] = live.back();
      live.pop_back();
      REQUIRE(heap.remove(&probes[id]->node));
      ref.erase({probes[id]->node.when, id});
      REQUIRE(probes[id]->refs == 0);
    } else {
      auto* n = heap.pop_due(1e9);
      REQUIRE(n != nullptr);
      auto expect = *ref.begin();
      ref.erase(ref.begin());
      REQUIRE(n == &probes[expect.second]->node);
      REQUIRE_FALSE(n->scheduled());
      live.erase(std::find(live.begin(), live.end(), expect.second));
      n->cb.release();
      ++pops;
    }
    REQUIRE(heap.size() == ref.size());
    if (!ref.empty()) REQUIRE(heap.next_when() == ref.begin()->first);
  }
  REQUIRE(pops > 1000);
  heap.clear();
  for (auto& p : probes) REQUIRE(p->refs == 0);
}

TEST_CASE("pop_due respects the limit", "[timers]") {
  uvpy::loop::TimerHeap heap;
  Probe a, b;
  a.node.when = 1.0;
  b.node.when = 2.0;
  heap.insert(&a.node);
  heap.insert(&b.node);
  REQUIRE(heap.pop_due(1.0) == nullptr);  // strictly before the limit
  auto* n = heap.pop_due(1.5);
  REQUIRE(n == &a.node);
  n->cb.release();
  heap.clear();
  REQUIRE(a.refs == 0);
  REQUIRE(b.refs == 0);
  REQUIRE_FALSE(b.node.scheduled());
}

TEST_CASE("reactor fires timers in deadline order and not early", "[timers][reactor]") {
  auto r = make_reactor();
  std::vector<int> order;
  std::vector<double> fired_at;
  std::vector<std::unique_ptr<Probe>> probes;
  const double start = r->time();
  const double delays[] = {0.030, 0.010, 0.020, 0.010};
  for (int i = 0; i < 4; ++i) {
    probes.push_back(std::make_unique<Probe>([&, i] {
      order.push_back(i);
      fired_at.push_back(r->time());
      return 0;
    }));
    probes.back()->node.when = start + delays[i];
    r->add_timer(&probes.back()->node);
  }
  Probe cancelled;
  cancelled.node.when = start + 0.015;
  r->add_timer(&cancelled.node);
  REQUIRE(r->cancel_timer(&cancelled.node));

  while (order.size() < 4) REQUIRE(r->run_once(nullptr) == 0);
  REQUIRE(order == std::vector<int>{1, 3, 2, 0});
  for (int k = 0; k < 4; ++k)
    REQUIRE(fired_at[k] + r->clock_resolution() >= start + delays[order[k]]);
  REQUIRE(cancelled.runs == 0);
  r->close();
  for (auto& p : probes) REQUIRE(p->refs == 0);
  REQUIRE(cancelled.refs == 0);
}

TEST_CASE("closing the reactor releases pending timers", "[timers][close]") {
  auto r = make_reactor();
  Probe p;
  p.node.when = r->time() + 3600;
  r->add_timer(&p.node);
  REQUIRE(p.refs == 1);
  r->close();
  REQUIRE(p.refs == 0);
  REQUIRE(p.runs == 0);
}
