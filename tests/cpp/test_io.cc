// fd watchers: readiness reaches the reader/writer callbacks, removal stops it.
#include <catch2/catch.hpp>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "support.h"

using uvpy::loop::Callback;
using uvpy::loop::kReadable;
using uvpy::loop::kWritable;
using uvpy::test::Probe;
using uvpy::test::make_reactor;

TEST_CASE("reader fires when data arrives, writer when writable", "[io]") {
  auto r = make_reactor();
  int sv[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  Probe reader, writer;
  Callback old;
  REQUIRE(r->set_io(sv[0], kReadable, reader.cb(), &old) == 0);
  REQUIRE_FALSE(old);
  REQUIRE(r->set_io(sv[0], kWritable, writer.cb(), &old) == 0);
  REQUIRE(r->watcher_count() == 1);

  r->run_once(nullptr);
  REQUIRE(writer.runs >= 1);
  REQUIRE(reader.runs == 0);

  r->clear_io(sv[0], kWritable, &old);
  REQUIRE(old.obj == &writer);
  old.release();
  REQUIRE(write(sv[1], "x", 1) == 1);
  while (reader.runs == 0) r->run_once(nullptr);
  REQUIRE(r->has_io(sv[0], kReadable));
  REQUIRE_FALSE(r->has_io(sv[0], kWritable));

  r->clear_io(sv[0], kReadable, &old);
  old.release();
  REQUIRE(r->watcher_count() == 0);
  r->close();
  REQUIRE(reader.refs == 0);
  REQUIRE(writer.refs == 0);
  close(sv[0]);
  close(sv[1]);
}

TEST_CASE("replacing a reader hands the old one back", "[io]") {
  auto r = make_reactor();
  int sv[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  Probe a, b;
  Callback old;
  REQUIRE(r->set_io(sv[0], kReadable, a.cb(), &old) == 0);
  REQUIRE(r->set_io(sv[0], kReadable, b.cb(), &old) == 0);
  REQUIRE(old.obj == &a);
  old.release();
  REQUIRE(a.refs == 0);
  REQUIRE(b.refs == 1);
  r->close();  // releases the watcher's callbacks
  REQUIRE(b.refs == 0);
  close(sv[0]);
  close(sv[1]);
}

TEST_CASE("watching a regular file fails with EPERM and leaves nothing", "[io]") {
  auto r = make_reactor();
  char path[] = "/tmp/uvpy-io-XXXXXX";
  int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  unlink(path);
  Probe p;
  Callback old;
  REQUIRE(r->set_io(fd, kReadable, p.cb(), &old) == -EPERM);
  REQUIRE(r->watcher_count() == 0);
  REQUIRE(p.refs == 0);
  r->close();
  close(fd);
}

TEST_CASE("watching a closed fd fails with EBADF", "[io]") {
  auto r = make_reactor();
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  close(fds[0]);
  close(fds[1]);
  Probe p;
  Callback old;
  REQUIRE(r->set_io(fds[0], kReadable, p.cb(), &old) == -EBADF);
  REQUIRE(r->watcher_count() == 0);
  r->close();
}
