// fd watchers: readiness reaches the reader/writer callbacks, removal stops it.
#include <catch2/catch.hpp>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "support.h"

using uvpy::loop::Callback;
using uvpy::loop::kReadable;
using uvpy::loop::kWritable;
using uvpy::test::Probe;
using uvpy::test::make_reactor;
using uvpy::test::release;
using uvpy::test::turn;

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

TEST_CASE("watching a character device without poll support fails with EPERM", "[io]") {
  // /dev/null has no poll method: epoll refuses it, as asyncio's selector
  // reports; a pty (also a character device) can be polled.
  auto r = make_reactor();
  int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  Probe p;
  Callback old;
  REQUIRE(r->set_io(fd, kReadable, p.cb(), &old) == -EPERM);
  REQUIRE(r->watcher_count() == 0);
  REQUIRE(p.refs == 0);
  int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
  REQUIRE(master >= 0);
  REQUIRE(r->set_io(master, kWritable, p.cb(), &old) == 0);
  r->run_once(nullptr);
  REQUIRE(p.runs >= 1);
  r->clear_io(master, kWritable, &old);
  old.release();
  r->close();
  REQUIRE(p.refs == 0);
  close(master);
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

// --- semantics both backends must share (ctest runs this file on each) ------

namespace {

using uvpy::loop::Reactor;

template <class Pred>
void spin(Reactor& r, Pred done) {
  for (int i = 0; i < 100000 && !done(); ++i) turn(r);
  REQUIRE(done());
}

}  // namespace

TEST_CASE("a reader that leaves data behind is called again (level-triggered)", "[io]") {
  auto r = make_reactor();
  int sv[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0);
  REQUIRE(write(sv[1], "abc", 3) == 3);
  std::string got;
  Probe reader([&] {
    char c;
    if (read(sv[0], &c, 1) == 1) got += c;
    return 0;
  });
  Callback old;
  REQUIRE(r->set_io(sv[0], kReadable, reader.cb(), &old) == 0);
  spin(*r, [&] { return got.size() == 3; });
  REQUIRE(got == "abc");
  REQUIRE(reader.runs == 3);  // one byte per iteration, no wakeup lost
  for (int i = 0; i < 5; ++i) turn(*r);
  REQUIRE(reader.runs == 3);  // drained: quiet
  r->clear_io(sv[0], kReadable, &old);
  release(old);
  r->close();
  REQUIRE(reader.refs == 0);
  close(sv[0]);
  close(sv[1]);
}

TEST_CASE("interest changes while a poll is in flight take effect", "[io]") {
  auto r = make_reactor();
  int sv[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0);
  Probe reader, writer, reader2;
  Callback old;
  REQUIRE(r->set_io(sv[0], kReadable, reader.cb(), &old) == 0);
  turn(*r);  // the reader's poll is armed, nothing to read
  REQUIRE(reader.runs == 0);

  REQUIRE(r->set_io(sv[0], kWritable, writer.cb(), &old) == 0);  // widen
  spin(*r, [&] { return writer.runs > 0; });
  REQUIRE(reader.runs == 0);
  r->clear_io(sv[0], kWritable, &old);  // narrow again
  release(old);
  int w = writer.runs;
  for (int i = 0; i < 3; ++i) turn(*r);
  REQUIRE(writer.runs == w);

  REQUIRE(r->set_io(sv[0], kReadable, reader2.cb(), &old) == 0);  // replace
  release(old);
  REQUIRE(write(sv[1], "x", 1) == 1);
  spin(*r, [&] { return reader2.runs > 0; });
  REQUIRE(reader.runs == 0);

  r->clear_io(sv[0], kReadable, &old);
  release(old);
  r->close();
  REQUIRE(reader.refs + writer.refs + reader2.refs == 0);
  close(sv[0]);
  close(sv[1]);
}

TEST_CASE("a watcher cleared after its fd became ready is not called", "[io]") {
  auto r = make_reactor();
  int sv[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0);
  Probe reader, other;
  Callback old;
  REQUIRE(r->set_io(sv[0], kReadable, reader.cb(), &old) == 0);
  turn(*r);
  REQUIRE(write(sv[1], "x", 1) == 1);  // the poll fires in the kernel...
  r->clear_io(sv[0], kReadable, &old);  // ...but its watcher is gone first
  release(old);
  REQUIRE(r->watcher_count() == 0);
  for (int i = 0; i < 3; ++i) turn(*r);
  REQUIRE(reader.runs == 0);
  // The fd can be watched afresh at once.
  REQUIRE(r->set_io(sv[0], kReadable, other.cb(), &old) == 0);
  spin(*r, [&] { return other.runs > 0; });
  r->clear_io(sv[0], kReadable, &old);
  release(old);
  r->close();
  REQUIRE(reader.refs + other.refs == 0);
  close(sv[0]);
  close(sv[1]);
}

TEST_CASE("clearing a watcher lets go of the fd: its close reaches the peer at once", "[io]") {
  auto r = make_reactor();
  int sv[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0);
  Probe reader, writer;
  Callback old;
  REQUIRE(r->set_io(sv[0], kReadable, reader.cb(), &old) == 0);
  turn(*r);  // a poll is in flight on sv[0]
  r->clear_io(sv[0], kReadable, &old);
  release(old);
  close(sv[0]);  // no loop iteration in between
  char c;
  REQUIRE(recv(sv[1], &c, 1, MSG_DONTWAIT) == 0);  // EOF, not EAGAIN
  r->close();
  close(sv[1]);
}

TEST_CASE("a reader that closes its fd without clearing it is not called again", "[io]") {
  auto r = make_reactor();
  int sv[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0);
  REQUIRE(write(sv[1], "x", 1) == 1);
  const int fd = sv[0];
  Probe reader([&] {
    close(fd);  // asyncio forbids this, but it must not make the loop spin
    return 0;
  });
  Probe timer;
  Callback old;
  REQUIRE(r->set_io(fd, kReadable, reader.cb(), &old) == 0);
  while (reader.runs == 0) REQUIRE(r->run_once(nullptr) == 0);
  timer.node.when = r->time() + 0.05;
  r->add_timer(&timer.node);
  int iterations = 0;
  while (timer.runs == 0) {
    REQUIRE(r->run_once(nullptr) == 0);
    ++iterations;
  }
  REQUIRE(reader.runs == 1);
  REQUIRE(iterations < 10);  // it blocked until the timer: no busy loop
  r->clear_io(fd, kReadable, &old);
  release(old);
  r->close();
  REQUIRE(reader.refs + timer.refs == 0);
  close(sv[1]);
}

TEST_CASE("a reactor polled from other threads in turn keeps its watchers", "[io][wakeup]") {
  auto r = make_reactor();
  int sv[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0);
  std::string got;
  Probe reader([&] {
    char buf[8];
    ssize_t n = read(sv[0], buf, sizeof buf);
    if (n > 0) got.append(buf, static_cast<size_t>(n));
    return 0;
  });
  Callback old;
  REQUIRE(r->set_io(sv[0], kReadable, reader.cb(), &old) == 0);
  std::thread([&] { turn(*r); }).join();  // armed on thread A
  REQUIRE(write(sv[1], "a", 1) == 1);
  std::thread([&] {  // then B (no REQUIRE off the main thread: Catch2 is not thread-safe)
    for (int i = 0; i < 100000 && got != "a"; ++i) turn(*r);
  }).join();
  REQUIRE(got == "a");
  // Blocked on yet another thread, with no timer: only a post can wake it.
  Probe posted;
  std::thread t([&] {
    while (posted.runs == 0) r->run_once(nullptr);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  posted.retain(&posted);
  r->post(posted.cb());
  t.join();
  REQUIRE(write(sv[1], "b", 1) == 1);
  spin(*r, [&] { return got == "ab"; });  // and back on this one
  r->clear_io(sv[0], kReadable, &old);
  release(old);
  r->close();
  REQUIRE(reader.refs + posted.refs == 0);
  close(sv[0]);
  close(sv[1]);
}

TEST_CASE("thousands of fds ready at once are all reported", "[io]") {
  auto r = make_reactor();
  constexpr int kPairs = 1500;  // more completions than the io_uring CQ holds
  std::vector<std::array<int, 2>> pairs(kPairs);
  std::vector<std::unique_ptr<Probe>> readers;
  int done = 0;
  for (auto& sv : pairs) {
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv.data()) == 0);
    const int fd = sv[0];
    readers.push_back(std::make_unique<Probe>([fd, &done] {
      char c;
      if (read(fd, &c, 1) == 1) ++done;
      return 0;
    }));
    Callback old;
    REQUIRE(r->set_io(fd, kReadable, readers.back()->cb(), &old) == 0);
  }
  turn(*r);
  for (auto& sv : pairs) REQUIRE(write(sv[1], "x", 1) == 1);
  spin(*r, [&] { return done == kPairs; });
  for (auto& sv : pairs) {
    Callback old;
    r->clear_io(sv[0], kReadable, &old);
    release(old);
    close(sv[0]);
    close(sv[1]);
  }
  r->close();
  for (auto& p : readers) REQUIRE(p->refs == 0);
}

TEST_CASE("watchers removed on another thread are let go at the next iteration", "[io]") {
  auto r = make_reactor();
  constexpr int kPairs = 300;  // more removals than the io_uring SQ holds
  std::vector<std::array<int, 2>> pairs(kPairs);
  Probe reader;
  for (auto& sv : pairs) {
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv.data()) == 0);
    Callback old;
    REQUIRE(r->set_io(sv[0], kReadable, reader.cb(), &old) == 0);
  }
  turn(*r);  // every poll armed, on this thread
  std::thread([&] {  // the loop is not running: another thread may edit it
    for (auto& sv : pairs) {
      Callback old;
      r->clear_io(sv[0], kReadable, &old);
      release(old);
    }
  }).join();
  REQUIRE(r->watcher_count() == 0);
  for (auto& sv : pairs) close(sv[0]);
  // io_uring lets go once the loop runs on its own thread again (DEFER_TASKRUN
  // runs the removals' task work in batches over a few iterations).
  auto eofs = [&] {
    int n = 0;
    char c;
    for (auto& sv : pairs) n += recv(sv[1], &c, 1, MSG_DONTWAIT) == 0;
    return n;
  };
  for (int i = 0; i < 100 && eofs() < kPairs; ++i) turn(*r);
  REQUIRE(eofs() == kPairs);
  for (auto& sv : pairs) close(sv[1]);
  REQUIRE(reader.runs == 0);
  r->close();
  REQUIRE(reader.refs == 0);
}

TEST_CASE("a watcher cleared while many completions are pending lets go at once", "[io]") {
  auto r = make_reactor();
  constexpr int kPairs = 100;  // more than DEFER_TASKRUN's task-work batch
  std::vector<std::array<int, 2>> pairs(kPairs);
  std::vector<std::unique_ptr<Probe>> readers;
  for (auto& sv : pairs) {
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv.data()) == 0);
    const int fd = sv[0];
    readers.push_back(std::make_unique<Probe>([fd] {
      char c;
      return read(fd, &c, 1) == 1 ? 0 : 0;
    }));
    Callback old;
    REQUIRE(r->set_io(fd, kReadable, readers.back()->cb(), &old) == 0);
  }
  turn(*r);
  for (int i = 0; i < kPairs - 1; ++i) REQUIRE(write(pairs[i][1], "x", 1) == 1);  // they fire
  Callback old;
  r->clear_io(pairs[kPairs - 1][0], kReadable, &old);  // its removal queues behind them
  release(old);
  close(pairs[kPairs - 1][0]);
  char c;
  REQUIRE(recv(pairs[kPairs - 1][1], &c, 1, MSG_DONTWAIT) == 0);  // EOF, not EAGAIN
  // The other completions are not lost on the way.
  spin(*r, [&] {
    for (int i = 0; i < kPairs - 1; ++i)
      if (readers[i]->runs == 0) return false;
    return true;
  });
  REQUIRE(readers[kPairs - 1]->runs == 0);
  for (int i = 0; i < kPairs - 1; ++i) {
    r->clear_io(pairs[i][0], kReadable, &old);
    release(old);
    close(pairs[i][0]);
  }
  for (auto& sv : pairs) close(sv[1]);
  r->close();
  for (auto& p : readers) REQUIRE(p->refs == 0);
}
