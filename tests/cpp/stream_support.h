// stream_support.h — a recording StreamOwner, loopback TCP pairs and
// non-blocking reactor turns, shared by the Stream tests (test_stream.cc,
// test_uring_recv.cc, ...).
#pragma once
#include <arpa/inet.h>
#include <catch2/catch.hpp>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "stream.h"
#include "support.h"

namespace uvpy::test {

using loop::Reactor;
using loop::StreamOwner;

// Records every callback; refs must be back to 0 when a test ends.
struct Recorder final : StreamOwner {
  int refs = 0;
  char buf[4096];
  std::string data;
  std::vector<ssize_t> reads;  // every on_read() result
  int write_error = 0;
  int pauses = 0, resumes = 0, drains = 0;
  std::function<void()> on_resume;

  void retain() override { ++refs; }
  void release() override { --refs; }
  size_t lend = sizeof buf;  // how much of buf each read may fill
  bool skip = false;         // read_buffer() says "skip this read"
  int read_buffer(char** b, size_t* len) override {
    if (skip) return 0;
    *b = buf;
    *len = lend;
    return 1;
  }
  int on_read(ssize_t n) override {
    reads.push_back(n);
    if (n > 0) data.append(buf, static_cast<size_t>(n));
    return 0;
  }
  int on_write_error(int err) override {
    write_error = err;
    return 0;
  }
  int on_pause_writing() override {
    ++pauses;
    return 0;
  }
  int on_resume_writing() override {
    ++resumes;
    if (on_resume) on_resume();
    return 0;
  }
  int on_drain() override {
    ++drains;
    return 0;
  }
  bool eof() const { return !reads.empty() && reads.back() == 0; }
};

inline void set_nonblocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

// A connected loopback TCP pair: fds[0] non-blocking (the stream's side),
// fds[1] blocking (the test's peer).
inline void tcp_pair(int fds[2]) {
  int lst = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(bind(lst, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(listen(lst, 1) == 0);
  socklen_t len = sizeof addr;
  getsockname(lst, reinterpret_cast<sockaddr*>(&addr), &len);
  fds[0] = socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(connect(fds[0], reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  fds[1] = accept(lst, nullptr, nullptr);
  REQUIRE(fds[1] >= 0);
  close(lst);
  set_nonblocking(fds[0]);
}

inline void reset(int fd) {  // close with RST instead of FIN
  linger lg{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  close(fd);
}

// The set-up most Stream tests share: a reactor (make_reactor() unless
// given), a loopback TCP pair and a Recorder. open() makes the Stream on
// fds[0], once the Recorder is set up; finish() closes the stream and the
// reactor, checks that the Recorder was released, and closes both ends.
struct StreamPair {
  std::unique_ptr<Reactor> r;
  int fds[2] = {-1, -1};
  Recorder rec;
  std::optional<loop::Stream> stream;

  explicit StreamPair(std::unique_ptr<Reactor> reactor = make_reactor()) : r(std::move(reactor)) {
    tcp_pair(fds);
  }
  loop::Stream& open() { return stream.emplace(r.get(), fds[0], &rec); }
  void finish() {
    if (stream) stream->close();
    r->close();
    REQUIRE(rec.refs == 0);
    close(fds[0]);
    close(fds[1]);
  }
};

inline std::string pattern(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + i % 26);
  return s;
}

// Drains whatever the peer can read right now (non-blocking).
inline std::string slurp(int fd) {
  std::string out;
  char tmp[65536];
  for (;;) {
    ssize_t n = recv(fd, tmp, sizeof tmp, MSG_DONTWAIT);
    if (n <= 0) return out;
    out.append(tmp, static_cast<size_t>(n));
  }
}

// Reads the peer until it ends, waiting at most 2 s for each read; appends
// what came to *out. Returns 0 (FIN) or -errno (-ECONNRESET, or -EAGAIN when
// the 2 s ran out: the end never came).
inline ssize_t read_to_end(int fd, std::string* out) {
  timeval tv{2, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char tmp[65536];
  for (;;) {
    ssize_t n = recv(fd, tmp, sizeof tmp, 0);
    if (n < 0) return -errno;
    if (n == 0) return 0;
    out->append(tmp, static_cast<size_t>(n));
  }
}

template <class Pred>
void spin(Reactor& r, Pred done) {
  for (long i = 0; i < 10000000 && !done(); ++i) turn(r);
  REQUIRE(done());
}


}  // namespace uvpy::test
