// Completion reads (backend.h, contracts 5-6): a Stream's reader consumes
// through Reactor::recv(), which io_uring feeds from a multishot recv into
// provided buffers. The [stream] cases hold on both backends; the [uring]
// ones also check that the kernel really read ahead (the socket is empty
// while the owner has taken nothing), which only io_uring does.
#include <catch2/catch.hpp>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <thread>

#include "stream.h"
#include "stream_support.h"
#include "support.h"

using uvpy::loop::kReadable;
using uvpy::loop::Reactor;
using uvpy::loop::Stream;
using uvpy::loop::UringOptions;
using namespace uvpy::test;

namespace {

// Bytes the kernel still holds in fd's receive queue.
ssize_t in_socket(int fd) {
  char tmp[65536];
  ssize_t n = recv(fd, tmp, sizeof tmp, MSG_PEEK | MSG_DONTWAIT);
  return n < 0 ? 0 : n;
}

std::unique_ptr<Reactor> uring_reactor(unsigned buf_count, unsigned buf_size) {
  std::string err;
  UringOptions o;
  o.buf_count = buf_count;
  o.buf_size = buf_size;
  auto b = uvpy::loop::make_uring_backend(&err, o);
  if (!b) throw std::runtime_error(err);
  return std::make_unique<Reactor>(std::move(b));
}

}  // namespace

TEST_CASE("reads larger than the owner's buffer arrive whole and in order", "[stream]") {
  StreamPair p;
  p.rec.lend = 7;  // every read stops mid-message; the rest waits its turn
  Stream& s = p.open();
  REQUIRE(s.start_reading() == 0);
  const std::string want = pattern(5000);
  REQUIRE(send(p.fds[1], want.data(), want.size(), 0) == static_cast<ssize_t>(want.size()));
  spin(*p.r, [&] { return p.rec.data.size() == want.size(); });
  REQUIRE(p.rec.data == want);
  for (ssize_t n : p.rec.reads) REQUIRE((n > 0 && n <= 7));
  p.finish();
}

TEST_CASE("pause/resume loses and reorders nothing", "[stream]") {
  StreamPair p;
  p.rec.lend = 100;
  Stream& s = p.open();
  REQUIRE(s.start_reading() == 0);
  std::string want;
  for (int i = 0; i < 40; ++i) {
    std::string part = std::to_string(i) + ":" + pattern(300 + 17 * i) + ";";
    REQUIRE(send(p.fds[1], part.data(), part.size(), 0) == static_cast<ssize_t>(part.size()));
    want += part;
    turn(*p.r);
    if (i % 2 == 0) {
      s.stop_reading();
      turn(*p.r);
      REQUIRE_FALSE(p.r->has_io(p.fds[0], kReadable));
      REQUIRE(s.start_reading() == 0);
    }
  }
  spin(*p.r, [&] { return p.rec.data.size() == want.size(); });
  REQUIRE(p.rec.data == want);
  p.finish();
}

TEST_CASE("io_uring reads ahead; a pause takes it back and resume delivers it first",
          "[uring]") {
  StreamPair p;
  Stream& s = p.open();
  REQUIRE(s.start_reading() == 0);
  p.rec.skip = true;  // the owner takes nothing: what leaves the socket is read ahead
  REQUIRE(send(p.fds[1], "first;", 6, 0) == 6);
  spin(*p.r, [&] { return in_socket(p.fds[0]) == 0; });
  REQUIRE(p.rec.reads.empty());
  s.stop_reading();  // no watcher left: the read-ahead must survive in the stream
  REQUIRE_FALSE(p.r->has_io(p.fds[0], kReadable));
  REQUIRE(send(p.fds[1], "second", 6, 0) == 6);
  for (int i = 0; i < 5; ++i) turn(*p.r);
  REQUIRE(in_socket(p.fds[0]) == 6);  // paused: nothing more was read
  p.rec.skip = false;
  REQUIRE(s.start_reading() == 0);
  spin(*p.r, [&] { return p.rec.data.size() == 12; });
  REQUIRE(p.rec.data == "first;second");
  p.finish();
}

TEST_CASE("a tiny buffer ring runs dry (ENOBUFS) and reading recovers", "[uring]") {
  StreamPair p(uring_reactor(2, 16));  // 32 bytes of provided buffers in all
  p.rec.lend = 64;
  Stream& s = p.open();
  REQUIRE(s.start_reading() == 0);
  p.rec.skip = true;  // hold both buffers: the multishot recv must starve
  const std::string want = pattern(20000);
  REQUIRE(send(p.fds[1], want.data(), want.size(), 0) == static_cast<ssize_t>(want.size()));
  for (int i = 0; i < 20; ++i) turn(*p.r);
  REQUIRE(in_socket(p.fds[0]) >= static_cast<ssize_t>(want.size() - 32));  // only 32 read ahead
  p.rec.skip = false;
  spin(*p.r, [&] { return p.rec.data.size() == want.size(); });
  REQUIRE(p.rec.data == want);
  // And again, with the ring refilled: the multishot recv was re-armed.
  const std::string more = pattern(3000);
  REQUIRE(send(p.fds[1], more.data(), more.size(), 0) == static_cast<ssize_t>(more.size()));
  spin(*p.r, [&] { return p.rec.data.size() == want.size() + more.size(); });
  REQUIRE(p.rec.data == want + more);
  p.finish();
}

TEST_CASE("data read ahead comes before EOF", "[stream]") {
  StreamPair p;
  p.rec.lend = 4;
  Stream& s = p.open();
  REQUIRE(s.start_reading() == 0);
  REQUIRE(send(p.fds[1], "0123456789", 10, 0) == 10);
  shutdown(p.fds[1], SHUT_WR);
  spin(*p.r, [&] { return p.rec.eof(); });
  REQUIRE(p.rec.data == "0123456789");
  REQUIRE(p.rec.reads == std::vector<ssize_t>{4, 4, 2, 0});
  REQUIRE_FALSE(s.reading());
  p.finish();
}

TEST_CASE("a reset is reported after a pause took back the data before it", "[stream]") {
  StreamPair p;
  Stream& s = p.open();
  REQUIRE(s.start_reading() == 0);
  p.rec.skip = true;
  reset(p.fds[1]);
  for (int i = 0; i < 20; ++i) turn(*p.r);
  s.stop_reading();
  p.rec.skip = false;
  REQUIRE(s.start_reading() == 0);
  spin(*p.r, [&] { return !p.rec.reads.empty(); });
  REQUIRE(p.rec.reads.back() == -ECONNRESET);
  REQUIRE_FALSE(s.reading());
  s.close();
  p.r->close();
  REQUIRE(p.rec.refs == 0);
  close(p.fds[0]);
}

TEST_CASE("a plain reader is never read ahead for", "[io]") {
  auto r = make_reactor();
  int fds[2];
  tcp_pair(fds);
  Probe reader;
  uvpy::loop::Callback old;
  REQUIRE(r->set_io(fds[0], kReadable, reader.cb(), &old) == 0);
  REQUIRE(send(fds[1], "abc", 3, 0) == 3);
  spin(*r, [&] { return reader.runs > 0; });
  REQUIRE(in_socket(fds[0]) == 3);  // readiness only: the bytes are still there
  r->clear_io(fds[0], kReadable, &old);
  old.release();
  r->close();
  REQUIRE(reader.refs == 0);
  close(fds[0]);
  close(fds[1]);
}

TEST_CASE("closing a stream with a recv in flight sends FIN at once and frees all",
          "[stream]") {
  StreamPair p;
  Stream& s = p.open();
  REQUIRE(s.start_reading() == 0);
  p.rec.skip = true;
  REQUIRE(send(p.fds[1], "held", 4, 0) == 4);  // read ahead into a provided buffer
  for (int i = 0; i < 5; ++i) turn(*p.r);
  s.close();
  close(p.fds[0]);
  // No reactor turn in between: the recv must not keep the file open.
  std::string got;
  ssize_t end = read_to_end(p.fds[1], &got);
  // FIN, or RST where the unread "held" was still in our socket (readiness
  // backends); never the 2 s timeout, and no data.
  REQUIRE((end == 0 || end == -ECONNRESET));
  REQUIRE(got.empty());
  p.r->close();
  REQUIRE(p.rec.refs == 0);
  close(p.fds[1]);
}

TEST_CASE("closing the reactor with streams still reading (recvs in flight)", "[stream]") {
  auto r = make_reactor();
  int a[2], b[2];
  tcp_pair(a);
  tcp_pair(b);
  Recorder ra, rb;
  Stream sa(r.get(), a[0], &ra), sb(r.get(), b[0], &rb);
  REQUIRE(sa.start_reading() == 0);
  REQUIRE(sb.start_reading() == 0);
  ra.skip = true;
  REQUIRE(send(a[1], "x", 1, 0) == 1);
  for (int i = 0; i < 5; ++i) turn(*r);
  r->close();  // the streams are still open; the reactor lets go of them
  REQUIRE(ra.refs + rb.refs == 0);
  sa.close();
  sb.close();
  REQUIRE(send(b[1], "y", 1, 0) == 1);  // nothing may land anywhere now
  for (int* p : {a, b}) {
    close(p[0]);
    close(p[1]);
  }
}

// --- completion sends (backend.h, contract 7) -----------------------------------

TEST_CASE("a queued write drains through partial sends, in order, then reports drain",
          "[stream]") {
  StreamPair p;
  int small = 4096;
  setsockopt(p.fds[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
  Stream& s = p.open();
  REQUIRE(s.set_limits(SIZE_MAX / 2, 0) == 0);
  const std::string want = pattern(3 * 1024 * 1024);
  REQUIRE(s.write(want.data(), want.size()) == 0);
  REQUIRE(s.queued() > 0);  // the kernel took only part of it
  std::string got;
  int sends_seen = 0;
  spin(*p.r, [&] {
    size_t before = got.size();
    got += slurp(p.fds[1]);
    if (got.size() > before) ++sends_seen;
    return s.queued() == 0;
  });
  got += slurp(p.fds[1]);
  REQUIRE(got == want);
  REQUIRE(sends_seen > 1);  // it took several partial sends
  REQUIRE(p.rec.drains == 1);
  REQUIRE(p.rec.write_error == 0);
  REQUIRE_FALSE(p.r->has_io(p.fds[0], uvpy::loop::kWritable));
  p.finish();
}

TEST_CASE("dropping the queue with a send in flight: the peer sees a clean prefix",
          "[stream]") {
  StreamPair p;
  int small = 4096;
  setsockopt(p.fds[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
  Stream& s = p.open();
  REQUIRE(s.set_limits(SIZE_MAX / 2, 0) == 0);
  const std::string want = pattern(2 * 1024 * 1024);
  REQUIRE(s.write(want.data(), want.size()) == 0);
  for (int i = 0; i < 10; ++i) turn(*p.r);  // a send is in flight, blocked on the peer
  REQUIRE(s.queued() > 0);
  s.discard_writes();  // abort(): the memory goes now, the send may not have
  REQUIRE(s.queued() == 0);
  REQUIRE_FALSE(p.r->has_io(p.fds[0], uvpy::loop::kWritable));
  std::string junk = pattern(1 << 20);  // reuse the freed heap, if anything freed it
  for (char& c : junk) c = '#';
  for (int i = 0; i < 10; ++i) turn(*p.r);
  s.close();
  shutdown(p.fds[0], SHUT_WR);
  std::string got;
  read_to_end(p.fds[1], &got);
  REQUIRE(got.size() < want.size());
  REQUIRE(got == want.substr(0, got.size()));
  p.r->close();
  REQUIRE(p.rec.refs == 0);
  close(p.fds[0]);
  close(p.fds[1]);
}

TEST_CASE("closing a stream with a send in flight frees the file at once", "[stream]") {
  StreamPair p;
  int small = 4096;
  setsockopt(p.fds[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
  Stream& s = p.open();
  const std::string want = pattern(1024 * 1024);
  REQUIRE(s.write(want.data(), want.size()) == 0);
  for (int i = 0; i < 10; ++i) turn(*p.r);
  REQUIRE(s.queued() > 0);
  s.close();
  close(p.fds[0]);  // unsent data: the kernel resets the connection
  std::string ignored;
  ssize_t end = read_to_end(p.fds[1], &ignored);
  REQUIRE((end == 0 || end == -ECONNRESET));  // not EAGAIN: no 2 s wait
  p.r->close();
  REQUIRE(p.rec.refs == 0);
  close(p.fds[1]);
}

TEST_CASE("a bulk flow moves to readiness and back without losing order", "[uring]") {
  StreamPair p;
  Stream& s = p.open();
  REQUIRE(s.start_reading() == 0);
  std::string want;
  for (int round = 0; round < 3; ++round) {
    // Big: whole provided buffers at a time, so the reader goes bulk.
    const std::string big = std::to_string(round) + pattern(600 * 1000);
    size_t off = 0;
    while (off < big.size()) {
      ssize_t n = send(p.fds[1], big.data() + off, big.size() - off, MSG_DONTWAIT);
      if (n > 0) off += static_cast<size_t>(n);
      turn(*p.r);
    }
    want += big;
    spin(*p.r, [&] { return p.rec.data.size() == want.size(); });
    // A short read ends the bulk mode...
    REQUIRE(send(p.fds[1], "tiny", 4, 0) == 4);
    want += "tiny";
    spin(*p.r, [&] { return p.rec.data.size() == want.size(); });
    // ...and the next small message is read ahead by the multishot again.
    p.rec.skip = true;
    REQUIRE(send(p.fds[1], "more", 4, 0) == 4);
    want += "more";
    spin(*p.r, [&] { return in_socket(p.fds[0]) == 0; });
    p.rec.skip = false;
    spin(*p.r, [&] { return p.rec.data.size() == want.size(); });
  }
  REQUIRE(p.rec.data == want);
  p.finish();
}

TEST_CASE("a reading stream keeps its bytes, in order, when the loop moves threads",
          "[stream]") {
  StreamPair p;
  Stream& s = p.open();
  REQUIRE(s.start_reading() == 0);
  // No REQUIRE off the main thread: Catch2 is not thread-safe.
  auto turns_on_another_thread = [&](int n) {
    std::thread([&] {
      for (int i = 0; i < n; ++i) turn(*p.r);
    }).join();
  };
  REQUIRE(send(p.fds[1], "one;", 4, 0) == 4);
  turns_on_another_thread(50);  // the ring binds to thread A; recv armed there
  REQUIRE(send(p.fds[1], "two;", 4, 0) == 4);
  p.rec.skip = true;  // read ahead on A, not yet taken
  turns_on_another_thread(50);
  REQUIRE(send(p.fds[1], "three", 5, 0) == 5);
  p.rec.skip = false;
  turns_on_another_thread(1);  // thread B: the ring is rebuilt here
  spin(*p.r, [&] { return p.rec.data.size() == 13; });  // and again on the main thread
  REQUIRE(p.rec.data == "one;two;three");
  p.finish();
}
