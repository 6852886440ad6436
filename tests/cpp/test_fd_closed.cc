// An fd closed under its watcher, by an owner that does not tell the loop
// (a socket closed under a pending sock_recv or add_reader): the reactor
// neither aborts nor spins nor keeps the file open, on either backend, and
// the watcher can still be removed; an fd number reopened under the
// watcher watches the new file once the watcher is updated.
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
using uvpy::test::release;
using uvpy::test::turn;

namespace {

struct Pair {
  int sv[2];
  Pair() {
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0);
  }
  ~Pair() {
    for (int fd : sv)
      if (fd >= 0) close(fd);
  }
  void close_first() {
    REQUIRE(close(sv[0]) == 0);
    sv[0] = -1;
  }
};

// The peer's view: 0 once the other end's file is really closed, -1
// (EAGAIN) while something still holds it open.
ssize_t peer_read(int fd) {
  char c;
  return read(fd, &c, 1);
}

}  // namespace

TEST_CASE("an fd closed before its watcher's first poll", "[io][closed]") {
  auto r = make_reactor();
  Pair p;
  const int fd = p.sv[0];
  Probe reader, writer;
  Callback old;
  REQUIRE(r->set_io(fd, kReadable, reader.cb(), &old) == 0);
  REQUIRE(r->set_io(fd, kWritable, writer.cb(), &old) == 0);
  p.close_first();  // before the backend registered it
  for (int i = 0; i < 3; ++i) turn(*r);
  REQUIRE(reader.runs == 0);
  REQUIRE(writer.runs == 0);
  REQUIRE(peer_read(p.sv[1]) == 0);
  r->clear_io(fd, kReadable, &old);
  REQUIRE(old.obj == &reader);
  release(old);
  r->clear_io(fd, kWritable, &old);
  release(old);
  REQUIRE(r->watcher_count() == 0);
  r->close();
  REQUIRE(reader.refs == 0);
  REQUIRE(writer.refs == 0);
}

TEST_CASE("an fd closed under a registered watcher is released at once", "[io][closed]") {
  auto r = make_reactor();
  Pair p;
  const int fd = p.sv[0];
  Probe reader;
  Callback old;
  REQUIRE(r->set_io(fd, kReadable, reader.cb(), &old) == 0);
  turn(*r);  // registered (io_uring: waiting in the kernel)
  p.close_first();
  turn(*r);
  // Nothing the backend does may keep the file open: the peer sees EOF
  // now, as it does under asyncio's selector.
  REQUIRE(peer_read(p.sv[1]) == 0);
  REQUIRE(reader.runs == 0);

  // A new interest on the dead watcher (a sock_sendall started after the
  // close) registers nothing and reports nothing.
  Probe writer;
  REQUIRE(r->set_io(fd, kWritable, writer.cb(), &old) == 0);
  for (int i = 0; i < 3; ++i) turn(*r);
  REQUIRE(writer.runs == 0);
  REQUIRE(reader.runs == 0);

  r->clear_io(fd, kReadable, &old);
  release(old);
  r->clear_io(fd, kWritable, &old);
  release(old);
  REQUIRE(r->watcher_count() == 0);
  r->close();
  REQUIRE(reader.refs == 0);
  REQUIRE(writer.refs == 0);
}

TEST_CASE("an fd number reopened under its watcher watches the new file", "[io][closed]") {
  auto r = make_reactor();
  Pair p;
  const int fd = p.sv[0];
  Probe reader;
  Callback old;
  REQUIRE(r->set_io(fd, kReadable, reader.cb(), &old) == 0);
  turn(*r);
  p.close_first();
  turn(*r);

  Pair q;
  REQUIRE(dup2(q.sv[0], fd) == fd);  // the same number, a new socket
  Probe writer;
  REQUIRE(r->set_io(fd, kWritable, writer.cb(), &old) == 0);
  for (int i = 0; i < 3 && writer.runs == 0; ++i) turn(*r);
  REQUIRE(writer.runs >= 1);
  r->clear_io(fd, kWritable, &old);
  release(old);

  REQUIRE(write(q.sv[1], "x", 1) == 1);  // the new file, through its dup
  Probe reader2;
  REQUIRE(r->set_io(fd, kReadable, reader2.cb(), &old) == 0);
  REQUIRE(old.obj == &reader);
  release(old);
  for (int i = 0; i < 3 && reader2.runs == 0; ++i) turn(*r);
  REQUIRE(reader2.runs >= 1);

  r->clear_io(fd, kReadable, &old);
  release(old);
  REQUIRE(r->watcher_count() == 0);
  r->close();
  close(fd);
  REQUIRE(reader.refs == 0);
  REQUIRE(reader2.refs == 0);
  REQUIRE(writer.refs == 0);
}
