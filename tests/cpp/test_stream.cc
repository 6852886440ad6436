// Stream: reads into lent buffers, writes now-or-queued, water marks,
// half-close, errors as -errno, and no reference left behind.
#include <arpa/inet.h>
#include <catch2/catch.hpp>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <functional>
#include <string>
#include <vector>

#include "stream.h"
#include "stream_support.h"
#include "support.h"

using uvpy::loop::Reactor;
using uvpy::loop::Stream;
using uvpy::loop::StreamOwner;
using uvpy::loop::kReadable;
using uvpy::loop::kWritable;
using uvpy::test::make_reactor;

using namespace uvpy::test;  // Recorder, tcp_pair, turn, spin, ...

TEST_CASE("reads arrive through the lent buffer; EOF stops reading", "[stream]") {
  auto r = make_reactor();
  int fds[2];
  tcp_pair(fds);
  Recorder rec;
  {
    Stream s(r.get(), fds[0], &rec);
    REQUIRE(s.start_reading() == 0);
    REQUIRE(r->has_io(fds[0], kReadable));
    REQUIRE(send(fds[1], "hello", 5, 0) == 5);
    spin(*r, [&] { return rec.data == "hello"; });
    shutdown(fds[1], SHUT_WR);
    spin(*r, [&] { return rec.eof(); });
    REQUIRE_FALSE(s.reading());
    REQUIRE_FALSE(r->has_io(fds[0], kReadable));
    s.close();
  }
  r->close();
  REQUIRE(rec.refs == 0);
  close(fds[0]);
  close(fds[1]);
}

TEST_CASE("stop_reading holds data back until start_reading", "[stream]") {
  StreamPair p;
  Stream& s = p.open();
  REQUIRE(s.start_reading() == 0);
  s.stop_reading();
  REQUIRE(s.start_reading() == 0);  // idempotent pairs
  s.stop_reading();
  s.stop_reading();
  REQUIRE(p.rec.refs == 0);
  REQUIRE(send(p.fds[1], "x", 1, 0) == 1);
  for (int i = 0; i < 5; ++i) turn(*p.r);
  REQUIRE(p.rec.reads.empty());
  REQUIRE(s.start_reading() == 0);
  spin(*p.r, [&] { return p.rec.data == "x"; });
  p.finish();
}

TEST_CASE("a small write goes out at once and installs nothing", "[stream]") {
  StreamPair p;
  Stream& s = p.open();
  REQUIRE(s.write("ping", 4) == 0);
  REQUIRE(s.queued() == 0);
  REQUIRE_FALSE(p.r->has_io(p.fds[0], kWritable));
  REQUIRE(p.rec.refs == 0);
  char buf[8];
  REQUIRE(recv(p.fds[1], buf, sizeof buf, 0) == 4);
  REQUIRE(std::string(buf, 4) == "ping");
  p.finish();
}

TEST_CASE("slow reader: the queue pauses at high water, resumes at low water", "[stream]") {
  StreamPair p;
  int small = 4096;
  setsockopt(p.fds[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
  setsockopt(p.fds[1], SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  Stream& s = p.open();
  REQUIRE(s.set_limits(64 * 1024, 16 * 1024) == 0);

  // A producer that honours pause_writing(): it stops at the first pause.
  const std::string chunk = pattern(8192);
  std::string sent;
  while (p.rec.pauses == 0) {
    REQUIRE(s.write(chunk.data(), chunk.size()) == 0);
    sent += chunk;
  }
  REQUIRE(p.rec.pauses == 1);
  REQUIRE(s.writing_paused());
  REQUIRE(s.queued() > s.high());
  REQUIRE(s.queued() <= s.high() + chunk.size());  // grew only to the limit
  REQUIRE(p.r->has_io(p.fds[0], kWritable));

  // The peer reads; the queue drains through low water exactly once.
  std::string got;
  spin(*p.r, [&] {
    got += slurp(p.fds[1]);
    return p.rec.drains == 1;
  });
  got += slurp(p.fds[1]);
  while (got.size() < sent.size()) {
    char tmp[65536];
    ssize_t n = recv(p.fds[1], tmp, sizeof tmp, 0);
    REQUIRE(n > 0);
    got.append(tmp, static_cast<size_t>(n));
  }
  REQUIRE(got == sent);
  REQUIRE(p.rec.pauses == 1);
  REQUIRE(p.rec.resumes == 1);
  REQUIRE_FALSE(s.writing_paused());
  REQUIRE(s.queued() == 0);
  REQUIRE_FALSE(p.r->has_io(p.fds[0], kWritable));
  p.finish();
}

TEST_CASE("resume_writing may write more; order is kept", "[stream]") {
  StreamPair p;
  int small = 4096;
  setsockopt(p.fds[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
  Stream& s = p.open();
  REQUIRE(s.set_limits(1, 0) == 0);
  const std::string a = pattern(3 << 20);
  const std::string tail = "--tail--";
  p.rec.on_resume = [&] { REQUIRE(s.write(tail.data(), tail.size()) == 0); };
  REQUIRE(s.write(a.data(), a.size()) == 0);
  REQUIRE(p.rec.pauses == 1);
  std::string got;
  spin(*p.r, [&] {
    got += slurp(p.fds[1]);
    return p.rec.drains == 1;
  });
  got += slurp(p.fds[1]);
  REQUIRE(got == a + tail);
  p.finish();
}

TEST_CASE("writev queues the unsent tail of several buffers in order", "[stream]") {
  StreamPair p;
  Stream& s = p.open();
  std::vector<std::string> parts;
  for (int i = 0; i < 200; ++i) parts.push_back(pattern(1000 + 37 * i) + std::to_string(i));
  std::string want;
  std::vector<iovec> iov;
  for (auto& p : parts) {
    iov.push_back({p.data(), p.size()});
    want += p;
  }
  REQUIRE(s.writev(iov.data(), static_cast<int>(iov.size())) == 0);
  REQUIRE(s.writev(iov.data(), static_cast<int>(iov.size())) == 0);  // behind a queue
  want += want;
  std::string got;
  spin(*p.r, [&] {
    got += slurp(p.fds[1]);
    return s.queued() == 0;
  });
  while (got.size() < want.size()) got += slurp(p.fds[1]);
  REQUIRE(got == want);
  p.finish();
}

TEST_CASE("half-close: FIN follows the queued data", "[stream]") {
  StreamPair p;
  Stream& s = p.open();
  const std::string big = pattern(4 << 20);
  REQUIRE(s.write(big.data(), big.size()) == 0);
  REQUIRE(s.queued() > 0);
  REQUIRE(s.shutdown_write() == 0);  // deferred
  REQUIRE(s.start_reading() == 0);   // the read side stays open
  std::string got;
  bool eof = false;
  spin(*p.r, [&] {
    char tmp[65536];
    ssize_t n;
    while ((n = recv(p.fds[1], tmp, sizeof tmp, MSG_DONTWAIT)) > 0) got.append(tmp, n);
    eof = n == 0;
    return eof;
  });
  REQUIRE(got == big);
  REQUIRE(send(p.fds[1], "back", 4, 0) == 4);
  spin(*p.r, [&] { return p.rec.data == "back"; });
  REQUIRE(s.shutdown_write() == 0);  // again, now immediate: harmless
  p.finish();
}

TEST_CASE("peer reset mid-write: the queue is dropped, the error reported", "[stream]") {
  StreamPair p;
  Stream& s = p.open();
  const std::string big = pattern(8 << 20);
  REQUIRE(s.write(big.data(), big.size()) == 0);
  REQUIRE(s.queued() > 0);
  reset(p.fds[1]);
  spin(*p.r, [&] { return p.rec.write_error != 0; });
  REQUIRE((p.rec.write_error == ECONNRESET || p.rec.write_error == EPIPE));
  REQUIRE(s.queued() == 0);
  REQUIRE_FALSE(p.r->has_io(p.fds[0], kWritable));
  REQUIRE(p.rec.drains == 0);
  // Writing again fails at once with nothing queued.
  int rc = s.write("x", 1);
  REQUIRE((rc == -EPIPE || rc == -ECONNRESET));
  REQUIRE(s.queued() == 0);
  s.close();
  p.r->close();
  REQUIRE(p.rec.refs == 0);
  close(p.fds[0]);
}

TEST_CASE("peer reset while reading: a read error, reading stops", "[stream]") {
  StreamPair p;
  Stream& s = p.open();
  REQUIRE(s.start_reading() == 0);
  reset(p.fds[1]);
  spin(*p.r, [&] { return !p.rec.reads.empty(); });
  REQUIRE(p.rec.reads.back() == -ECONNRESET);
  REQUIRE_FALSE(s.reading());
  REQUIRE_FALSE(p.r->has_io(p.fds[0], kReadable));
  s.close();
  p.r->close();
  REQUIRE(p.rec.refs == 0);
  close(p.fds[0]);
}

TEST_CASE("lowering the limits below the queue pauses at once", "[stream]") {
  StreamPair p;
  Stream& s = p.open();
  const std::string big = pattern(8 << 20);
  REQUIRE(s.write(big.data(), big.size()) == 0);
  size_t q = s.queued();
  REQUIRE(q > 0);
  REQUIRE(p.rec.pauses == (q > Stream::kDefaultHigh ? 1 : 0));
  if (p.rec.pauses == 0) {
    REQUIRE(s.set_limits(q - 1, 0) == 0);
    REQUIRE(p.rec.pauses == 1);
  }
  REQUIRE(s.set_limits(0, 0) == 0);  // already paused: no second report
  REQUIRE(p.rec.pauses == 1);
  s.close();
  REQUIRE(s.queued() == 0);
  REQUIRE(p.rec.refs == 0);
  p.r->close();
  close(p.fds[0]);
  close(p.fds[1]);
}

TEST_CASE("close() removes both watchers; a closed reactor refuses new ones", "[stream]") {
  StreamPair p;
  Stream& s = p.open();
  REQUIRE(s.start_reading() == 0);
  const std::string big = pattern(8 << 20);
  REQUIRE(s.write(big.data(), big.size()) == 0);
  REQUIRE(p.rec.refs == 2);
  s.close();
  REQUIRE(s.closed());
  REQUIRE(p.rec.refs == 0);
  REQUIRE(p.r->watcher_count() == 0);
  REQUIRE(s.write("x", 1) == -EBADF);
  REQUIRE(s.start_reading() == -EBADF);

  Stream t(p.r.get(), p.fds[0], &p.rec);
  REQUIRE(t.start_reading() == 0);
  p.r->close();  // the reactor lets go of its references
  REQUIRE(p.rec.refs == 0);
  t.stop_reading();  // stale registration: harmless
  REQUIRE(t.start_reading() == -ESHUTDOWN);
  REQUIRE(p.rec.refs == 0);
  close(p.fds[0]);
  close(p.fds[1]);
}

TEST_CASE("a queue that drains while it refills keeps order", "[stream]") {
  // Large writes behind a slow peer, with the queue partly drained between
  // them: consumed chunks at the front of the queue give their slots to new
  // ones, and the peer still sees every byte once, in order.
  StreamPair p;
  int small = 4096;
  setsockopt(p.fds[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
  Stream& s = p.open();
  REQUIRE(s.set_limits(SIZE_MAX / 2, 0) == 0);  // never pause: the test is the queue
  std::string want, got;
  for (int i = 0; i < 200; ++i) {
    std::string part = std::to_string(i) + ":" + pattern(20000 + 13 * i);
    REQUIRE(s.write(part.data(), part.size()) == 0);
    want += part;
    if (i % 3 == 2) {  // the peer takes a little, the stream sends a little
      char tmp[8192];
      ssize_t n = recv(p.fds[1], tmp, sizeof tmp, MSG_DONTWAIT);
      if (n > 0) got.append(tmp, static_cast<size_t>(n));
      turn(*p.r);
    }
  }
  spin(*p.r, [&] {
    got += slurp(p.fds[1]);
    return s.queued() == 0;
  });
  while (got.size() < want.size()) got += slurp(p.fds[1]);
  REQUIRE(got == want);
  REQUIRE(p.rec.drains == 1);
  p.finish();
}
