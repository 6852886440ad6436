// Accepting listeners (backend.h, contract 8): a reader installed with
// accepts=true takes its connections through Reactor::accept(). On io_uring
// they are accepted ahead by a multishot accept; on libuv accept() is
// accept4(). ctest runs this file on both backends; what a caller sees must
// not differ.
#include <catch2/catch.hpp>
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "support.h"

using uvpy::loop::Callback;
using uvpy::loop::kReadable;
using uvpy::loop::Reactor;
using uvpy::test::Probe;
using uvpy::test::make_reactor;
using uvpy::test::release;
using uvpy::test::turn;

namespace {

int open_fds() {
  int n = 0;
  DIR* d = opendir("/proc/self/fd");
  while (dirent* e = readdir(d))
    if (e->d_name[0] != '.') ++n;
  closedir(d);
  return n - 1;  // the DIR's own fd
}

struct Listener {
  int fd = -1;
  sockaddr_in addr{};

  Listener() {
    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(listen(fd, 1024) == 0);
    REQUIRE(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  }
  ~Listener() {
    if (fd >= 0) close(fd);
  }

  // A blocking connect: loopback completes it from the backlog, accepted or not.
  int connect_one() const {
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(::connect(c, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0);
    return c;
  }
};

// Leaves this process room for exactly `room` more fds while lower()ed:
// fills every hole below the highest open fd (fds are allocated
// lowest-first) and sets RLIMIT_NOFILE just above it. raise() puts the
// limit back; the destructor also closes the fillers.
struct FdLimit {
  rlimit saved{}, low{};
  std::vector<int> fillers;

  explicit FdLimit(int room) {
    REQUIRE(getrlimit(RLIMIT_NOFILE, &saved) == 0);
    int top = 0;
    DIR* d = opendir("/proc/self/fd");
    while (dirent* e = readdir(d))
      if (e->d_name[0] != '.') top = std::max(top, atoi(e->d_name));
    closedir(d);
    for (int fd = 0; fd <= top; ++fd)
      if (fcntl(fd, F_GETFD) < 0) fillers.push_back(-1);
    for (int& f : fillers) REQUIRE((f = dup(0)) >= 0);
    low = saved;
    low.rlim_cur = static_cast<rlim_t>(top + 1 + room);
  }
  ~FdLimit() {
    setrlimit(RLIMIT_NOFILE, &saved);
    for (int f : fillers) close(f);
  }
  void lower() { REQUIRE(setrlimit(RLIMIT_NOFILE, &low) == 0); }
  void raise() { REQUIRE(setrlimit(RLIMIT_NOFILE, &saved) == 0); }
};

// Connects n clients to l and runs r until the accepting reader was called,
// then a few more iterations: on io_uring every connection is accepted
// ahead by then (the reader takes nothing).
std::vector<int> connect_accepted_ahead(Reactor& r, const Listener& l, const Probe& reader, int n) {
  std::vector<int> clients;
  for (int i = 0; i < n; ++i) clients.push_back(l.connect_one());
  for (int i = 0; i < 100000 && reader.runs == 0; ++i) turn(r);
  REQUIRE(reader.runs > 0);
  for (int i = 0; i < 5; ++i) turn(r);
  return clients;
}

uint16_t local_port(int fd) {
  sockaddr_in a{};
  socklen_t len = sizeof a;
  REQUIRE(getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  return ntohs(a.sin_port);
}

// Everything accept() has now: (fd, peer port); stops at -EAGAIN. Any
// other error is returned in *err (and stops too).
std::vector<std::pair<int, uint16_t>> accept_all(Reactor& r, int lfd, int* err = nullptr) {
  std::vector<std::pair<int, uint16_t>> got;
  for (;;) {
    sockaddr_storage ss{};
    socklen_t len = 0;
    int c = r.accept(lfd, &ss, &len);
    if (c < 0) {
      if (err) *err = c;
      if (c != -EAGAIN) REQUIRE(err != nullptr);
      return got;
    }
    REQUIRE(len == sizeof(sockaddr_in));
    auto* in = reinterpret_cast<sockaddr_in*>(&ss);
    REQUIRE(in->sin_family == AF_INET);
    REQUIRE(in->sin_addr.s_addr == htonl(INADDR_LOOPBACK));
    got.emplace_back(c, ntohs(in->sin_port));
  }
}

}  // namespace

TEST_CASE("an accepting reader takes every connection, in order, with its peer's address",
          "[accept]") {
  auto r = make_reactor();
  Listener l;
  Probe reader;
  Callback old;
  REQUIRE(r->set_io(l.fd, kReadable, reader.cb(), &old, false, true) == 0);
  std::vector<int> clients;
  for (int i = 0; i < 5; ++i) clients.push_back(l.connect_one());
  std::vector<std::pair<int, uint16_t>> got;
  for (int i = 0; i < 100000 && got.size() < clients.size(); ++i) {
    turn(*r);
    if (reader.runs > 0) {
      auto more = accept_all(*r, l.fd);
      got.insert(got.end(), more.begin(), more.end());
    }
  }
  REQUIRE(got.size() == clients.size());
  for (size_t i = 0; i < clients.size(); ++i) {
    REQUIRE(got[i].second == local_port(clients[i]));  // the backlog's order
    const int fl = fcntl(got[i].first, F_GETFL);
    REQUIRE((fl & O_NONBLOCK) != 0);
    REQUIRE((fcntl(got[i].first, F_GETFD) & FD_CLOEXEC) != 0);
    // A working connection: a byte each way.
    REQUIRE(write(clients[i], "q", 1) == 1);
    char c = 0;
    for (int k = 0; k < 100000 && recv(got[i].first, &c, 1, 0) != 1; ++k) {
    }
    REQUIRE(c == 'q');
    REQUIRE(write(got[i].first, "a", 1) == 1);
    REQUIRE(read(clients[i], &c, 1) == 1);
    REQUIRE(c == 'a');
  }
  sockaddr_storage ss;
  socklen_t len;
  REQUIRE(r->accept(l.fd, &ss, &len) == -EAGAIN);  // nothing more
  r->clear_io(l.fd, kReadable, &old);
  release(old);
  r->close();
  REQUIRE(reader.refs == 0);
  for (auto& g : got) close(g.first);
  for (int c : clients) close(c);
}

TEST_CASE("connections never taken are closed with the reader: no fd is leaked",
          "[accept]") {
  const int before = open_fds();
  {
    auto r = make_reactor();
    Listener l;
    Probe reader;
    Callback old;
    REQUIRE(r->set_io(l.fd, kReadable, reader.cb(), &old, false, true) == 0);
    auto clients = connect_accepted_ahead(*r, l, reader, 20);
    auto got = accept_all(*r, l.fd);  // take some, leave the rest
    REQUIRE(!got.empty());
    close(got.front().first);
    for (size_t i = 1; i < got.size(); ++i) close(got[i].first);
    r->clear_io(l.fd, kReadable, &old);
    release(old);
    close(l.fd);
    l.fd = -1;
    // Every client hears the end now: EOF for those accepted and closed,
    // a reset for those left in a backlog or accepted ahead.
    for (int c : clients) {
      char b;
      ssize_t n = recv(c, &b, 1, MSG_DONTWAIT);
      const int e = errno;
      INFO("recv gave " << n << " errno " << e);
      REQUIRE((n == 0 || (n < 0 && e == ECONNRESET)));
      close(c);
    }
    r->close();
    REQUIRE(reader.refs == 0);
  }
  REQUIRE(open_fds() == before);
}

TEST_CASE("closing the reactor with connections accepted ahead leaks no fd", "[accept]") {
  const int before = open_fds();
  {
    auto r = make_reactor();
    Listener l;
    Probe reader;
    Callback old;
    REQUIRE(r->set_io(l.fd, kReadable, reader.cb(), &old, false, true) == 0);
    auto clients = connect_accepted_ahead(*r, l, reader, 8);
    r->close();  // the watcher still installed
    REQUIRE(reader.refs == 0);
    for (int c : clients) close(c);
  }
  REQUIRE(open_fds() == before);
}

TEST_CASE("accepting ahead stops once enough connections wait", "[accept]") {
  auto r = make_reactor();
  Listener l;
  Probe reader;
  Callback old;
  REQUIRE(r->set_io(l.fd, kReadable, reader.cb(), &old, false, true) == 0);
  const int base = open_fds();
  constexpr int kBurst = 300;
  std::vector<int> clients;
  for (int i = 0; i < kBurst; ++i) clients.push_back(l.connect_one());
  for (int i = 0; i < 50; ++i) turn(*r);  // the reader takes nothing
  REQUIRE(reader.runs > 0);
  // io_uring: one multishot accept drains what the backlog held (the whole
  // burst, past kAcceptAhead = 128), then is cancelled; libuv: none.
  for (int i = 0; i < kBurst; ++i) clients.push_back(l.connect_one());
  for (int i = 0; i < 200; ++i) turn(*r);
  const int ahead = open_fds() - base - 2 * kBurst;
  INFO("accepted ahead: " << ahead);
  REQUIRE(ahead <= kBurst);  // nothing of the second burst
  // All of them arrive, in order, once the reader catches up.
  std::vector<std::pair<int, uint16_t>> got;
  for (int i = 0; i < 100000 && got.size() < clients.size(); ++i) {
    auto more = accept_all(*r, l.fd);
    got.insert(got.end(), more.begin(), more.end());
    if (got.size() < clients.size()) turn(*r);
  }
  REQUIRE(got.size() == clients.size());
  for (size_t i = 0; i < clients.size(); ++i) REQUIRE(got[i].second == local_port(clients[i]));
  r->clear_io(l.fd, kReadable, &old);
  release(old);
  r->close();
  for (auto& g : got) close(g.first);
  for (int c : clients) close(c);
}

TEST_CASE("EMFILE is reported once, after the connections before it, and accepting resumes",
          "[accept]") {
  auto r = make_reactor();
  Listener l;
  Probe reader;
  Callback old;
  std::vector<int> clients;
  for (int i = 0; i < 6; ++i) clients.push_back(l.connect_one());
  FdLimit limit(2);  // room for exactly two more fds in this process
  limit.lower();
  REQUIRE(r->set_io(l.fd, kReadable, reader.cb(), &old, false, true) == 0);
  std::vector<int> got;
  int err = 0;
  for (int i = 0; i < 100000 && err != -EMFILE; ++i) {
    turn(*r);
    if (reader.runs == 0) continue;
    auto more = accept_all(*r, l.fd, &err);
    for (auto& g : more) got.push_back(g.first);
  }
  limit.raise();
  REQUIRE(err == -EMFILE);
  REQUIRE(got.size() == 2);  // every fd the limit allowed, before the error
  // The error was delivered once; with room again the rest arrive.
  for (int i = 0; i < 100000 && got.size() < clients.size(); ++i) {
    err = 0;
    auto more = accept_all(*r, l.fd, &err);
    REQUIRE((err == -EAGAIN || err == -EMFILE));
    for (auto& g : more) got.push_back(g.first);
    if (got.size() < clients.size()) turn(*r);
  }
  REQUIRE(got.size() == clients.size());
  r->clear_io(l.fd, kReadable, &old);
  release(old);
  r->close();
  for (int f : got) close(f);
  for (int c : clients) close(c);
}

TEST_CASE("an accept error not yet taken goes with the accepting reader", "[accept]") {
  // io_uring: the multishot accept ends with EMFILE; before accept() takes
  // it the listener gets a plain reader. That reader must not be told
  // "readable" forever by the stale error (a busy loop): once it has taken
  // every connection it is not called again.
  auto r = make_reactor();
  Listener l;
  Probe accepting;
  Callback old;
  FdLimit limit(0);  // room for nothing
  limit.lower();
  REQUIRE(r->set_io(l.fd, kReadable, accepting.cb(), &old, false, true) == 0);
  std::vector<int> clients;
  for (int i = 0; i < 3; ++i) {
    limit.raise();  // the client's own fd
    clients.push_back(l.connect_one());
    limit.lower();
  }
  for (int i = 0; i < 100000 && accepting.runs == 0; ++i) turn(*r);
  REQUIRE(accepting.runs > 0);  // io_uring: the EMFILE waits; libuv: readiness
  limit.raise();
  Probe plain;
  REQUIRE(r->set_io(l.fd, kReadable, plain.cb(), &old) == 0);  // accepts=false
  release(old);
  std::vector<int> got;
  for (int i = 0; i < 100000 && got.size() < clients.size(); ++i) {
    turn(*r);
    for (auto& g : accept_all(*r, l.fd)) got.push_back(g.first);
  }
  REQUIRE(got.size() == clients.size());
  const int runs = plain.runs;
  for (int i = 0; i < 20; ++i) turn(*r);
  REQUIRE(plain.runs == runs);  // nothing left to report
  r->clear_io(l.fd, kReadable, &old);
  release(old);
  r->close();
  for (int f : got) close(f);
  for (int c : clients) close(c);
}

// IoWatcher::socket: a watcher on an fd accept() made may skip the
// backend's checks of the fd (libuv: reuses a stopped poll handle, no
// uv_poll_init). Through churn, with a plain watcher's fd between them,
// every watcher reports its own fd's readiness and a removed one nothing.
TEST_CASE("watchers of accepted sockets report their own fd through churn", "[accept]") {
  auto r = make_reactor();
  Listener l;
  std::vector<std::unique_ptr<Probe>> probes;
  Callback old;
  for (int i = 0; i < 50; ++i) {
    int client = l.connect_one();
    int c = -1;
    for (int k = 0; k < 1000 && c < 0; ++k) {
      sockaddr_storage ss{};
      socklen_t len = 0;
      c = r->accept(l.fd, &ss, &len);
      if (c < 0) turn(*r);
    }
    REQUIRE(c >= 0);
    // A plain reader on a pipe in between: through uv_poll_init as ever.
    int p[2];
    REQUIRE(pipe2(p, O_NONBLOCK | O_CLOEXEC) == 0);
    Probe pipe_reader;
    REQUIRE(r->set_io(p[0], kReadable, pipe_reader.cb(), &old) == 0);
    release(old);
    probes.push_back(std::make_unique<Probe>());
    Probe& reader = *probes.back();
    REQUIRE(r->set_io(c, kReadable, reader.cb(), &old, false, false, true) == 0);
    release(old);
    for (int k = 0; k < 5; ++k) turn(*r);
    CHECK(reader.runs == 0);  // nothing sent yet
    REQUIRE(write(client, "x", 1) == 1);
    REQUIRE(write(p[1], "y", 1) == 1);
    for (int k = 0; k < 100000 && (reader.runs == 0 || pipe_reader.runs == 0); ++k) turn(*r);
    CHECK(reader.runs > 0);
    CHECK(pipe_reader.runs > 0);
    r->clear_io(c, kReadable, &old);
    release(old);
    r->clear_io(p[0], kReadable, &old);
    release(old);
    const int runs = reader.runs;
    for (int k = 0; k < 5; ++k) turn(*r);
    CHECK(reader.runs == runs);  // removed: quiet although still readable
    close(c);
    close(client);
    close(p[0]);
    close(p[1]);
    CHECK(pipe_reader.refs == 0);
  }
  r->close();
  for (auto& p : probes) CHECK(p->refs == 0);
}
