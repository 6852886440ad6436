// io_uring only: every io_uring setup the backend may fall back to works.
// (The reactor semantics are shared with libuv and tested in test_io.cc,
// test_wakeup.cc, ... which ctest runs on both backends.) A setup this
// kernel refuses is reported, not failed, like liburing's exit-77 skips.
#include <catch2/catch.hpp>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include "support.h"

using uvpy::loop::Callback;
using uvpy::loop::kReadable;
using uvpy::loop::Reactor;
using uvpy::loop::UringSetup;
using uvpy::test::Probe;

TEST_CASE("each io_uring setup of the fallback ladder runs the reactor", "[uring]") {
  for (UringSetup s : {UringSetup::kDeferTaskrun, UringSetup::kCoopTaskrun, UringSetup::kCoop,
                       UringSetup::kPlain}) {
    std::string err;
    uvpy::loop::UringOptions o;
    o.strongest = s;
    auto backend = uvpy::loop::make_uring_backend(&err, o);
    if (!backend) {
      WARN("io_uring setup " << static_cast<int>(s) << " unavailable: " << err);
      continue;
    }
    REQUIRE(std::string(backend->name()) == "io_uring");
    Reactor r(std::move(backend));
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0);
    Probe reader([&] {
      char c;
      return read(sv[0], &c, 1) == 1 ? 0 : 0;
    });
    Callback old;
    REQUIRE(r.set_io(sv[0], kReadable, reader.cb(), &old) == 0);
    ssize_t wrote = 0;  // Catch2's REQUIRE is not thread-safe: check after join
    std::thread t([&] { wrote = write(sv[1], "x", 1); });
    while (reader.runs == 0) REQUIRE(r.run_once(nullptr) == 0);  // blocks: no timers
    t.join();
    REQUIRE(wrote == 1);
    Probe posted;
    std::thread p([&] {
      posted.retain(&posted);
      r.post(posted.cb());
    });
    while (posted.runs == 0) REQUIRE(r.run_once(nullptr) == 0);
    p.join();
    r.clear_io(sv[0], kReadable, &old);
    old.release();
    r.close();
    REQUIRE(reader.refs + posted.refs == 0);
    close(sv[0]);
    close(sv[1]);
  }
}
