// Datagram readers (backend.h, contract 9): a reader installed with
// datagrams=true takes one whole datagram and its sender per
// Reactor::recv_datagram(); io_uring receives ahead with a multishot
// RECVMSG into a ring of its own (backend_uring.cc, invariant 12). The
// [dgram] cases hold on both backends (libuv: recvfrom on readiness); the
// [uring] ones also check what only io_uring does: the kernel received
// ahead, the ring ran dry, a refused receive fell back.
#include <catch2/catch.hpp>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <vector>

#include "stream_support.h"
#include "support.h"

using uvpy::loop::HeldDatagram;
using uvpy::loop::kReadable;
using uvpy::loop::Reactor;
using uvpy::loop::UringOptions;
using namespace uvpy::test;

namespace {

int udp_socket(uint16_t port = 0) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  return fd;
}

uint16_t port_of(int fd) {
  sockaddr_in a{};
  socklen_t len = sizeof a;
  REQUIRE(getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  return ntohs(a.sin_port);
}

void send_to(int fd, const std::string& data, uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  REQUIRE(sendto(fd, data.data(), data.size(), 0, reinterpret_cast<sockaddr*>(&a), sizeof a) ==
          static_cast<ssize_t>(data.size()));
}

// Whether fd's receive queue holds no datagram.
bool queue_empty(int fd) {
  char c;
  return recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC) < 0 && errno == EAGAIN;
}

// What a datagram reader got: a datagram (err 0) and its sender's port, or
// an error.
struct Got {
  std::string data;
  uint16_t port;
  int err;
  bool operator==(const Got& o) const { return data == o.data && port == o.port && err == o.err; }
};

// The reader's callback: takes every datagram it is offered (unless
// `skip`), at most `lend` bytes of each.
struct DgramReader {
  Reactor* r = nullptr;
  int fd = -1;
  bool skip = false;
  size_t lend = 65536;
  std::vector<Got> got;
  Probe probe{[this] {
    if (skip) return 0;
    std::string buf(lend, '\0');
    for (;;) {
      sockaddr_storage ss;
      socklen_t len = 0;
      ssize_t n = r->recv_datagram(fd, buf.data(), buf.size(), &ss, &len);
      if (n == -EAGAIN) return 0;
      if (n < 0) {
        got.push_back({"", 0, static_cast<int>(n)});
        return 0;  // as DatagramCore: an error ends the batch
      }
      REQUIRE(len == sizeof(sockaddr_in));
      got.push_back({buf.substr(0, static_cast<size_t>(n)),
                     ntohs(reinterpret_cast<sockaddr_in&>(ss).sin_port), 0});
    }
  }};

  void install() {
    uvpy::loop::Callback old;
    REQUIRE(r->set_io(fd, kReadable, probe.cb(), &old, true, false, true) == 0);
    release(old);
  }
  void remove() {
    uvpy::loop::Callback old;
    r->clear_io(fd, kReadable, &old);
    release(old);
  }
};

std::unique_ptr<Reactor> uring_reactor(const UringOptions& o) {
  std::string err;
  auto b = uvpy::loop::make_uring_backend(&err, o);
  if (!b) throw std::runtime_error(err);
  return std::make_unique<Reactor>(std::move(b));
}

}  // namespace

TEST_CASE("datagrams arrive whole, one per call, each with its own sender", "[dgram]") {
  auto r = make_reactor();
  int server = udp_socket(), a = udp_socket(), b = udp_socket();
  DgramReader rd;
  rd.r = r.get();
  rd.fd = server;
  rd.install();
  // Queued before the first turn: io_uring takes them all in one go. 9000
  // bytes is more than a stream read buffer; 0 bytes is a datagram too.
  std::vector<Got> want;
  const size_t sizes[] = {1, 9000, 0, 1400, 60000, 7};
  for (int i = 0; i < 12; ++i) {
    int from = i % 2 ? b : a;
    std::string d = pattern(sizes[i % 6]);
    send_to(from, d, port_of(server));
    want.push_back({d, port_of(from), 0});
  }
  spin(*r, [&] { return rd.got.size() == want.size(); });
  REQUIRE(rd.got == want);
  rd.remove();
  r->close();
  REQUIRE(rd.probe.refs == 0);
  close(server);
  close(a);
  close(b);
}

TEST_CASE("a socket error is delivered once, in order, and reading goes on", "[dgram]") {
  auto r = make_reactor();
  int gone = udp_socket();
  const uint16_t port = port_of(gone);
  close(gone);
  int c = udp_socket();
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  to.sin_port = htons(port);
  REQUIRE(connect(c, reinterpret_cast<sockaddr*>(&to), sizeof to) == 0);
  DgramReader rd;
  rd.r = r.get();
  rd.fd = c;
  rd.install();
  REQUIRE(send(c, "x", 1, 0) == 1);  // port unreachable: ECONNREFUSED on c
  spin(*r, [&] { return !rd.got.empty(); });
  REQUIRE(rd.got == std::vector<Got>{{"", 0, -ECONNREFUSED}});
  int back = udp_socket(port);  // the peer is back: its datagrams arrive
  send_to(back, "after", port_of(c));
  spin(*r, [&] { return rd.got.size() == 2; });
  REQUIRE(rd.got[1] == Got{"after", port, 0});
  rd.remove();
  r->close();
  REQUIRE(rd.probe.refs == 0);
  close(c);
  close(back);
}

TEST_CASE("io_uring receives ahead; a pause hands it over in order, resume reads on",
          "[uring]") {
  auto r = make_reactor();
  int server = udp_socket(), a = udp_socket();
  DgramReader rd;
  rd.r = r.get();
  rd.fd = server;
  rd.skip = true;  // the owner takes nothing: what leaves the socket was received ahead
  rd.install();
  for (int i = 0; i < 5; ++i) send_to(a, "d" + std::to_string(i), port_of(server));
  spin(*r, [&] { return queue_empty(server); });
  REQUIRE(r->backend_counters().dgram_ring == 5);
  std::vector<HeldDatagram> held;
  r->recv_stop_datagrams(server, &held);
  rd.remove();
  REQUIRE(held.size() == 5);
  for (int i = 0; i < 5; ++i) {
    REQUIRE(held[i].err == 0);
    REQUIRE(held[i].data == "d" + std::to_string(i));
    REQUIRE(ntohs(reinterpret_cast<sockaddr_in&>(held[i].addr).sin_port) == port_of(a));
  }
  send_to(a, "later", port_of(server));
  for (int i = 0; i < 5; ++i) turn(*r);
  REQUIRE_FALSE(queue_empty(server));  // paused: left in the socket
  rd.skip = false;
  rd.install();
  spin(*r, [&] { return rd.got.size() == 1; });
  REQUIRE(rd.got[0] == Got{"later", port_of(a), 0});
  rd.remove();
  r->close();
  REQUIRE(rd.probe.refs == 0);
  close(server);
  close(a);
}

TEST_CASE("a receive the kernel refuses turns that fd to readiness, nothing lost",
          "[uring]") {
  for (int err : {-EINVAL, -EOPNOTSUPP}) {
    auto r = make_reactor();
    int server = udp_socket(), a = udp_socket();
    DgramReader rd;
    rd.r = r.get();
    rd.fd = server;
    rd.install();
    send_to(a, "ring", port_of(server));
    spin(*r, [&] { return rd.got.size() == 1; });
    const uint64_t by_ring = r->backend_counters().dgram_ring;
    REQUIRE(by_ring == 1);
    REQUIRE(r->inject_recv_error(server, err));  // the re-armed receive "fails"
    for (int i = 0; i < 3; ++i) turn(*r);
    for (int i = 0; i < 20; ++i) send_to(a, std::to_string(i), port_of(server));
    spin(*r, [&] { return rd.got.size() == 21; });
    for (int i = 0; i < 20; ++i) REQUIRE(rd.got[1 + i] == Got{std::to_string(i), port_of(a), 0});
    REQUIRE(r->backend_counters().dgram_ring == by_ring);  // recvfrom took them all
    rd.remove();
    r->close();
    REQUIRE(rd.probe.refs == 0);
    close(server);
    close(a);
  }
}

TEST_CASE("a tiny datagram ring runs dry (ENOBUFS, counted) and reading recovers", "[uring]") {
  UringOptions o;
  o.dgram_buf_count = 2;
  o.dgram_buf_size = 2048;
  auto r = uring_reactor(o);
  int server = udp_socket(), a = udp_socket();
  DgramReader rd;
  rd.r = r.get();
  rd.fd = server;
  rd.lend = 2048;
  rd.skip = true;  // hold both buffers: the multishot must starve
  rd.install();
  for (int i = 0; i < 10; ++i) send_to(a, pattern(100 + i), port_of(server));
  for (int i = 0; i < 10; ++i) turn(*r);
  REQUIRE(r->backend_counters().dgram_nobufs >= 1);
  REQUIRE_FALSE(queue_empty(server));  // only two were received ahead
  rd.skip = false;
  spin(*r, [&] { return rd.got.size() == 10; });
  for (int i = 0; i < 10; ++i) REQUIRE(rd.got[i] == Got{pattern(100 + i), port_of(a), 0});
  // The ring is back: the multishot was re-armed and takes the next ones.
  const uint64_t by_ring = r->backend_counters().dgram_ring;
  send_to(a, "again", port_of(server));
  spin(*r, [&] { return rd.got.size() == 11; });
  REQUIRE(rd.got[10] == Got{"again", port_of(a), 0});
  REQUIRE(r->backend_counters().dgram_ring == by_ring + 1);
  rd.remove();
  r->close();
  REQUIRE(rd.probe.refs == 0);
  close(server);
  close(a);
}

TEST_CASE("a datagram larger than the ring's payload room is cut as recvfrom cuts it",
          "[uring]") {
  UringOptions o;
  o.dgram_buf_size = 1024;  // the owner reads at most 1024 bytes (contract 9)
  auto r = uring_reactor(o);
  int server = udp_socket(), a = udp_socket();
  DgramReader rd;
  rd.r = r.get();
  rd.fd = server;
  rd.lend = 1024;
  rd.install();
  const std::string big = pattern(3000), small = pattern(1024);
  send_to(a, big, port_of(server));
  send_to(a, small, port_of(server));
  spin(*r, [&] { return rd.got.size() == 2; });
  REQUIRE(rd.got[0] == Got{big.substr(0, 1024), port_of(a), 0});  // MSG_TRUNC: the rest is gone
  REQUIRE(rd.got[1] == Got{small, port_of(a), 0});
  REQUIRE(r->backend_counters().dgram_ring == 2);
  rd.remove();
  r->close();
  REQUIRE(rd.probe.refs == 0);
  close(server);
  close(a);
}

TEST_CASE("closing the reactor with a datagram receive in flight frees everything",
          "[dgram]") {
  auto r = make_reactor();
  int server = udp_socket(), a = udp_socket();
  DgramReader rd;
  rd.r = r.get();
  rd.fd = server;
  rd.skip = true;
  rd.install();
  send_to(a, "held", port_of(server));
  for (int i = 0; i < 5; ++i) turn(*r);
  r->close();  // with the reader installed and a datagram held
  REQUIRE(rd.probe.refs == 0);
  close(server);
  close(a);
}
