// uring_dgram.cc — the io_uring backend's datagram readers (backend.h,
// contract 9; backend_uring.cc, invariant 12): a multishot RECVMSG into a
// provided-buffer ring of datagram-sized buffers, one datagram per CQE,
// parsed here with liburing's io_uring_recvmsg_* helpers.
//
// A buffer as the kernel fills it (the msghdr the RECVMSG was prepared
// with fixes the layout: msg_namelen = sizeof(sockaddr_storage), no
// control data):
//
//   [io_uring_recvmsg_out][sender: msg_namelen bytes][payload ...]
//
// io_uring_recvmsg_out.namelen is the sender's real length (0: an unnamed
// AF_UNIX sender), payloadlen the datagram's full length, and MSG_TRUNC in
// its flags says the payload did not fit. The payload room is the
// transport's max_size (UringOptions::dgram_buf_size), so a datagram the
// ring truncates is one recvfrom(max_size) truncates the same way.
//
// Does it pay? A little, in CPU: it saves a recvfrom() per datagram, the
// one that ends each wakeup with EAGAIN and the poll re-armed each
// iteration, and adds a copy out of the provided buffer. Against
// readiness on the same backend, CPU per operation was 0.94x on the
// sockets suite's 64 B UDP echo, 0.97x at 1400 B and 0.88x per flood
// datagram (docs/io_uring.md has the runs); an echo's cost is mostly the
// kernel's loopback sendto(), which neither path changes.
#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "uring_backend.h"

namespace uvpy::loop::uring {
namespace {

// The msghdr every datagram RECVMSG is prepared with, and every buffer is
// parsed with (io_uring_recvmsg_validate wants a mutable one).
msghdr dgram_msghdr() {
  msghdr m{};
  m.msg_namelen = sizeof(sockaddr_storage);
  return m;
}

}  // namespace

bool UringBackend::ensure_dgram_ring() {
  if (dbuf_.ready()) return true;
  // Lazily backed: a buffer costs the pages its datagrams touch, and
  // transparent huge pages would make each small datagram cost 2 MiB.
  if (dbuf_.init(&ring_, kDgramGroup, opts_.dgram_buf_count, opts_.dgram_buf_size + kDgramHeader,
                 /*no_huge=*/true) < 0) {
    dgram_ok_ = false;  // every datagram reader on readiness
    return false;
  }
  return true;
}

bool UringBackend::prep_recvmsg(FdState* s) {
  io_uring_sqe* sqe = get_sqe();
  if (sqe == nullptr) return false;
  s->recv_msg = dgram_msghdr();
  io_uring_prep_recvmsg_multishot(sqe, s->fd, &s->recv_msg, 0);
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = dbuf_.group();
  io_uring_sqe_set_data64(sqe, reinterpret_cast<uint64_t>(s) | kTagDgram);
  s->recv_armed = true;
  s->recv_dgram = true;
  s->recv_cancel = false;
  ++recv_inflight_;
  return true;
}

size_t UringBackend::take_datagram(FdState* s, char* buf, size_t len, sockaddr_storage* addr,
                                   socklen_t* alen) {
  FdState::Held& h = s->held[s->held_head];
  char* base = h.heap ? h.heap : dbuf_.data(h.bid);
  msghdr m = dgram_msghdr();
  size_t n = 0;
  *alen = 0;
  if (io_uring_recvmsg_out* o = io_uring_recvmsg_validate(base, static_cast<int>(h.len), &m)) {
    *alen = std::min<socklen_t>(o->namelen, m.msg_namelen);
    std::memcpy(addr, io_uring_recvmsg_name(o), *alen);
    n = std::min<size_t>(len, io_uring_recvmsg_payload_length(o, static_cast<int>(h.len), &m));
    std::memcpy(buf, io_uring_recvmsg_payload(o, &m), n);
  }
  if (h.heap)
    delete[] h.heap;
  else
    dbuf_.recycle(h.bid);
  if (++s->held_head == s->held.size()) {
    s->held.clear();
    s->held_head = 0;
  }
  return n;
}

ssize_t UringBackend::recv_datagram(IoWatcher* w, int fd, void* buf, size_t len,
                                    sockaddr_storage* addr, socklen_t* alen) {
  auto* s = w ? static_cast<FdState*>(w->backend_data) : nullptr;
  if (s == nullptr || !s->dgram) return Backend::recv_datagram(w, fd, buf, len, addr, alen);
  if (s->held_head == s->held.size() && s->streak >= kDgramPullAfter && s->recv_armed &&
      !s->recv_cancel && s->end == kNoEnd && on_owner_thread()) {
    // A flood: the kernel stops a multishot's inline retries after a few
    // dozen datagrams per task-work run and the rest wait for the next
    // io_uring_enter, one loop iteration away, while the socket's queue
    // overflows. One enter now (no submit, no wait) runs that task work,
    // which costs less than a recvfrom() per datagram. A quiet reader
    // (short streaks: an echo) never pays for it.
    s->streak = 0;
    io_uring_get_events(&ring_);
    harvest();
  }
  if (s->held_head < s->held.size()) {
    ++s->streak;
    return static_cast<ssize_t>(take_datagram(s, static_cast<char*>(buf), len, addr, alen));
  }
  s->streak = 0;
  if (s->end != kNoEnd) {
    int e = s->end;  // delivered once; flush() re-arms the receive
    s->end = kNoEnd;
    enqueue(s);
    return e;
  }
  if (s->recv_armed || wants_recv(s)) return -EAGAIN;
  // Readiness for this fd (refused, or the ring ran dry): nothing is held
  // and no receive is in flight, so the syscall keeps the order.
  return Backend::recv_datagram(w, fd, buf, len, addr, alen);
}

void UringBackend::recv_stop_datagrams(IoWatcher* w, std::vector<HeldDatagram>* out) {
  auto* s = static_cast<FdState*>(w->backend_data);
  if (s == nullptr || !s->dgram) return;
  stop_receiving(s);
  while (s->held_head < s->held.size()) {
    const FdState::Held& h = s->held[s->held_head];
    out->emplace_back();
    HeldDatagram& d = out->back();
    d.err = 0;
    d.data.resize(h.len);  // at least the payload
    const size_t n = take_datagram(s, d.data.data(), d.data.size(), &d.addr, &d.addrlen);
    d.data.resize(n);
  }
  if (s->end != kNoEnd) {
    out->push_back(HeldDatagram{{}, {}, 0, s->end});
    s->end = kNoEnd;
  }
}

void UringBackend::inject_recv_error(IoWatcher* w, int err) {
  auto* s = static_cast<FdState*>(w->backend_data);
  if (s == nullptr || err >= 0) return;
  s->inject = err;
  enqueue(s);  // flush() cancels a receive in flight; the next arm fails
}

}  // namespace uvpy::loop::uring
