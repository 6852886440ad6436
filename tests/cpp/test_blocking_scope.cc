// BlockingScope: the caller's seam around the poll. Its proceed() may end an
// iteration between the poll and the callbacks (the bindings do when a
// Python signal handler raised); what that poll found must then run exactly
// once, on the next run_once, which does not poll first.
#include <catch2/catch.hpp>
#include <sys/socket.h>
#include <unistd.h>

#include "support.h"

using uvpy::loop::BlockingScope;
using uvpy::loop::Callback;
using uvpy::loop::kReadable;
using uvpy::test::Probe;
using uvpy::test::make_reactor;

namespace {

struct CountingScope final : BlockingScope {
  int enters = 0, leaves = 0, proceeds = 0;
  bool refuse_next = false;
  void enter() override { ++enters; }
  void leave() override { ++leaves; }
  bool proceed() override {
    ++proceeds;
    const bool ok = !refuse_next;
    refuse_next = false;
    return ok;
  }
};

}  // namespace

TEST_CASE("an iteration ended after its poll runs what the poll found once, next time",
          "[scope]") {
  auto r = make_reactor();
  int sv[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  char buf[16];
  // The reader drains the socket: a second report of the same readiness in
  // one turn would find nothing and still count.
  Probe reader([&] {
    (void)!read(sv[0], buf, sizeof buf);
    return 0;
  });
  Callback old;
  REQUIRE(r->set_io(sv[0], kReadable, reader.cb(), &old) == 0);
  REQUIRE(write(sv[1], "x", 1) == 1);

  CountingScope scope;
  scope.refuse_next = true;
  REQUIRE(r->run_once(&scope) == -1);  // a blocking poll found the fd ...
  CHECK(scope.enters == 1);
  CHECK(scope.leaves == 1);
  CHECK(scope.proceeds == 1);
  CHECK(reader.runs == 0);  // ... and nothing ran
  CHECK(r->ready_count() == 1);

  REQUIRE(r->run_once(&scope) == 0);  // runs it, without a poll or a check
  CHECK(scope.enters == 1);
  CHECK(scope.proceeds == 1);
  CHECK(reader.runs == 1);

  // The data is gone: a later turn reports nothing again.
  Probe nop;
  r->call_soon(nop.cb());
  REQUIRE(r->run_once(&scope) == 0);
  CHECK(scope.proceeds == 2);  // a non-blocking poll is checked too
  CHECK(scope.enters == 1);
  CHECK(reader.runs == 1);

  r->clear_io(sv[0], kReadable, &old);
  old.release();
  r->close();
  CHECK(reader.refs == 0);
  CHECK(nop.refs == 0);
  close(sv[0]);
  close(sv[1]);
}

TEST_CASE("close() after an ended iteration releases what it queued", "[scope]") {
  auto r = make_reactor();
  Probe timer;
  timer.node.when = 0;  // due at once: the poll does not block
  r->add_timer(&timer.node);
  CountingScope scope;
  scope.refuse_next = true;
  REQUIRE(r->run_once(&scope) == -1);
  CHECK(scope.enters == 0);
  CHECK(scope.proceeds == 1);
  CHECK(timer.runs == 0);
  CHECK(timer.refs == 1);
  r->close();
  CHECK(timer.runs == 0);
  CHECK(timer.refs == 0);
}
