// Clean close: a reactor closed with work of every kind pending holds nothing.
#include <catch2/catch.hpp>
#include <sys/socket.h>
#include <unistd.h>

#include <map>

#include "support.h"

using uvpy::loop::Callback;
using uvpy::loop::kReadable;
using uvpy::test::Probe;
using uvpy::test::make_reactor;

TEST_CASE("close with ready, timer, watcher and inbox work releases all of it", "[close]") {
  auto r = make_reactor();
  int sv[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  Probe ready, timer, reader, posted;
  r->call_soon(ready.cb());
  timer.node.when = r->time() + 10;
  r->add_timer(&timer.node);
  Callback old;
  REQUIRE(r->set_io(sv[0], kReadable, reader.cb(), &old) == 0);
  posted.retain(&posted);
  r->post(posted.cb());

  r->close();
  REQUIRE(r->closed());
  r->close();  // idempotent
  for (Probe* p : {&ready, &timer, &reader, &posted}) {
    REQUIRE(p->refs == 0);
    REQUIRE(p->runs == 0);
  }
  REQUIRE(r->watcher_count() == 0);
  REQUIRE(r->ready_count() == 0);
  REQUIRE(r->timer_count() == 0);
  close(sv[0]);
  close(sv[1]);
}

TEST_CASE("the reactor can be created and destroyed many times", "[close]") {
  for (int i = 0; i < 200; ++i) {
    auto r = make_reactor();
    Probe p;
    r->call_soon(p.cb());
    REQUIRE(r->run_once(nullptr) == 0);
    REQUIRE(p.runs == 1);
    REQUIRE(p.refs == 0);
  }
}

TEST_CASE("for_each_held reports exactly the references the reactor holds", "[close]") {
  // A garbage collector above trusts this count: one report per reference
  // (reporting one too many could free a live object).
  auto r = make_reactor();
  int sv[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  Probe ready, timer, reader, writer, posted, stopper;
  r->call_soon(ready.cb());
  r->call_soon(ready.cb());  // queued twice: two references
  timer.node.when = r->time() + 10;
  r->add_timer(&timer.node);
  Callback old;
  REQUIRE(r->set_io(sv[0], kReadable, reader.cb(), &old) == 0);
  REQUIRE(r->set_io(sv[0], uvpy::loop::kWritable, writer.cb(), &old) == 0);
  posted.retain(&posted);
  r->post(posted.cb());

  auto count = [&r] {
    std::map<const void*, int> seen;
    REQUIRE(r->for_each_held([&seen](const Callback& cb) {
      ++seen[cb.obj];
      return 0;
    }) == 0);
    return seen;
  };
  auto seen = count();
  for (Probe* p : {&ready, &timer, &reader, &writer, &posted}) REQUIRE(seen[p] == p->refs);
  REQUIRE(seen[&ready] == 2);
  REQUIRE(seen.size() == 5);

  // A non-zero result stops the walk and is returned.
  int visits = 0;
  REQUIRE(r->for_each_held([&visits](const Callback&) { return ++visits == 2 ? 7 : 0; }) == 7);
  REQUIRE(visits == 2);

  // What ran or was cancelled is no longer reported.
  r->cancel_timer(&timer.node);
  REQUIRE(r->run_once(nullptr) == 0);
  seen = count();
  REQUIRE(seen.count(&ready) == 0);
  REQUIRE(seen.count(&timer) == 0);
  REQUIRE(seen.count(&posted) == 0);
  REQUIRE(seen[&reader] == 1);

  r->close();
  REQUIRE(count().empty());
  close(sv[0]);
  close(sv[1]);
}
