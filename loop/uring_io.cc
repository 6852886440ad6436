// uring_io.cc — the io_uring backend's completion I/O: multishot recvs into
// the provided-buffer ring for consuming readers, sends for consuming
// writers, and multishot accepts for accepting listeners (backend.h,
// contracts 5-8). The model and the invariants (6-10 here) are in
// backend_uring.cc's header comment.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "uring_backend.h"

namespace uvpy::loop::uring {

int UringBackend::send_start(IoWatcher* w, const SendRef* parts, int count) {
  auto* s = static_cast<FdState*>(w->backend_data);
  if (s == nullptr || !send_capable(s)) return -ENOTSUP;
  // One at a time; a cancelled one still in flight reports kWritable
  // when it ends, and the writer tries again then.
  if (s->send_armed || s->send_queued || s->send_done || count <= 0) return -EBUSY;
  s->send_iov.clear();
  s->send_keep.clear();
  for (int i = 0; i < count; ++i) {
    s->send_iov.push_back({const_cast<char*>(parts[i].data), parts[i].len});
    s->send_keep.push_back(parts[i].owner);
  }
  s->send_queued = true;  // batched into the next io_uring_enter
  enqueue(s);
  return 0;
}

ssize_t UringBackend::send_result(IoWatcher* w) {
  auto* s = static_cast<FdState*>(w->backend_data);
  if (s == nullptr) return -ENOENT;
  if (s->send_done) {
    s->send_done = false;
    return s->send_res;
  }
  return s->send_armed || s->send_queued ? -EINPROGRESS : -ENOENT;
}

ssize_t UringBackend::recv(IoWatcher* w, int fd, void* buf, size_t len) {
  auto* s = w ? static_cast<FdState*>(w->backend_data) : nullptr;
  if (s == nullptr || !(s->consume & kReadable) || s->dgram) return Backend::recv(w, fd, buf, len);
  size_t n = take(s, static_cast<char*>(buf), len);
  if (n > 0) return static_cast<ssize_t>(n);
  if (s->end != kNoEnd) {
    int e = s->end;  // delivered once; a reader that stays reads again
    s->end = kNoEnd;
    enqueue(s);
    return e;
  }
  if (s->recv_armed || wants_recv(s)) return -EAGAIN;
  ssize_t r = Backend::recv(w, fd, buf, len);  // readiness for this fd (invariant 6)
  if (s->bulk && (r == -EAGAIN || (r > 0 && static_cast<size_t>(r) < buf_.size()))) {
    s->bulk = false;  // the flow went quiet or small: back to the multishot recv
    enqueue(s);
  }
  return r;
}

void UringBackend::stop_receiving(FdState* s) {
  s->recv_paused = true;
  if (s->recv_armed && on_owner_thread()) {
    // Invariant 6: wait for the final CQE, so everything the kernel read
    // for this reader is in s->held before the reader goes.
    if (s->recv_cancel || prep_recv_cancel(s)) {
      s->pinned = true;
      for (int round = 0; round < 64 && s->recv_armed; ++round) {
        io_uring_submit_and_get_events(&ring_);
        if (harvest() == 0 && !io_uring_cq_has_overflow(&ring_)) break;
      }
      s->pinned = false;
    }
  }
}

int UringBackend::recv_stop(IoWatcher* w, std::string* out) {
  auto* s = static_cast<FdState*>(w->backend_data);
  if (s == nullptr || !(s->consume & kReadable) || s->dgram) return 1;
  stop_receiving(s);
  for (size_t i = s->held_head; i < s->held.size(); ++i) {
    const FdState::Held& h = s->held[i];
    out->append((h.heap ? h.heap : buf_.data(h.bid)) + h.off, h.len - h.off);
  }
  drop_held(s);
  int e = s->end;
  s->end = kNoEnd;
  return e;
}

bool UringBackend::prep_send(FdState* s) {
  io_uring_sqe* sqe = get_sqe();
  if (sqe == nullptr) return false;
  if (s->send_iov.size() == 1) {
    io_uring_prep_send(sqe, s->fd, s->send_iov[0].iov_base, s->send_iov[0].iov_len,
                       MSG_NOSIGNAL);
  } else {
    s->send_msg = msghdr{};
    s->send_msg.msg_iov = s->send_iov.data();
    s->send_msg.msg_iovlen = s->send_iov.size();
    io_uring_prep_sendmsg(sqe, s->fd, &s->send_msg, MSG_NOSIGNAL);
  }
  io_uring_sqe_set_data64(sqe, reinterpret_cast<uint64_t>(s) | kTagSend);
  s->send_queued = false;
  s->send_armed = true;
  s->send_cancel = false;
  s->send_unwanted = false;
  ++send_inflight_;
  return true;
}

bool UringBackend::prep_cancel(FdState* s, uint64_t tag, bool* flag) {
  io_uring_sqe* sqe = get_sqe();
  if (sqe == nullptr) return false;
  io_uring_prep_cancel64(sqe, reinterpret_cast<uint64_t>(s) | tag, 0);
  ctl_flags(sqe);
  *flag = true;
  return true;
}

void UringBackend::drop_send(FdState* s) {
  s->send_queued = false;
  s->send_done = false;
  if (!s->send_armed) {
    s->send_keep.clear();
    s->send_iov.clear();
  } else {
    s->send_unwanted = true;
  }
}

void UringBackend::leak_send_memory(FdState* s) {
  new std::vector<std::shared_ptr<char[]>>(std::move(s->send_keep));  // on purpose
  s->send_keep.clear();
}

void UringBackend::on_send(FdState* s, int res) {
  s->send_armed = false;
  --send_inflight_;
  s->send_keep.clear();  // the kernel is done reading it
  s->send_iov.clear();
  if (s->watcher == nullptr) {
    maybe_free(s);
    return;
  }
  if (!s->send_unwanted) {
    s->send_done = true;
    s->send_res = res;
  }
  s->send_cancel = false;
  s->send_unwanted = false;
  if (wants_send(s)) wake_writer(s);
}

bool UringBackend::prep_recv(FdState* s) {
  if (s->dgram) return prep_recvmsg(s);
  io_uring_sqe* sqe = get_sqe();
  if (sqe == nullptr) return false;
  io_uring_prep_recv_multishot(sqe, s->fd, nullptr, 0, 0);
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = buf_.group();
  io_uring_sqe_set_data64(sqe, reinterpret_cast<uint64_t>(s) | kTagRecv);
  s->recv_armed = true;
  s->recv_dgram = false;
  s->recv_cancel = false;
  ++recv_inflight_;
  return true;
}

void UringBackend::on_recv(FdState* s, int res, unsigned flags, bool dgram) {
  const bool more = flags & IORING_CQE_F_MORE;
  BufRing& ring = dgram ? dbuf_ : buf_;
  // A bulk flow (a whole buffer at a time) is cheaper on readiness: one
  // recv() of the owner's big buffer instead of a CQE and an extra copy
  // per provided buffer, through a cache footprint of the whole ring.
  if (!dgram && res > 0 && static_cast<unsigned>(res) >= buf_.size() && !s->bulk && s->watcher) {
    s->bulk = true;
    enqueue(s);  // flush() cancels the multishot recv
  }
  if (flags & IORING_CQE_F_BUFFER) {
    const unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
    ring.taken();
    // A CQE of the other kind (the reader changed kinds while it was in
    // flight) carries nothing this reader can take.
    if (res > 0 && s->watcher != nullptr && s->dgram == dgram) {
      keep(s, bid, static_cast<uint32_t>(res));
      if (dgram) ++counters_.dgram_ring;
    } else {
      ring.recycle(bid);
    }
  }
  if (!more) {
    s->recv_armed = false;
    s->recv_cancel = false;
    --recv_inflight_;
  }
  if (s->watcher == nullptr) {
    if (!more) maybe_free(s);
    return;
  }
  if (dgram && res == -ENOBUFS) ++counters_.dgram_nobufs;
  if (res == -ENOBUFS) {
    s->starved = true;
    if (!s->in_starved) {
      s->in_starved = true;
      starved_.push_back(s);
    }
  } else if (dgram) {
    // Invariant 12: a datagram CQE always carries its header (res > 0). A
    // refusal turns off this fd's receives alone; another error is the
    // socket's (an ICMP error: ECONNREFUSED...), delivered once after the
    // datagrams before it.
    if (res == -EINVAL || res == -EOPNOTSUPP || res == -ENOTSOCK)
      s->recv_off = true;
    else if (res < 0 && res != -ECANCELED && s->dgram)
      s->end = res;
  } else if (res == 0) {
    s->end = 0;
  } else if (res == -EINVAL && !s->has_data()) {
    comp_ = false;  // no multishot recv here (before 6.0): readiness for all
  } else if (res == -ENOTSOCK || res == -EOPNOTSUPP || res == -EINVAL) {
    s->recv_off = true;  // this fd only
  } else if (res < 0 && res != -ECANCELED) {
    s->end = res;
  }
  if (s->has_data()) mark_ready(s);
  if (!more) enqueue(s);  // flush() decides: re-arm, or readiness
}

void UringBackend::keep(FdState* s, unsigned bid, uint32_t len) {
  char* heap = nullptr;
  if (!(s->want & kReadable) || s->recv_paused) {
    BufRing& ring = ring_of(s);
    heap = new char[len];
    std::memcpy(heap, ring.data(bid), len);
    ring.recycle(bid);
  }
  s->held.push_back({heap, static_cast<uint32_t>(bid), 0, len});
}

void UringBackend::spill(FdState* s) {
  for (size_t i = s->held_head; i < s->held.size(); ++i) {
    FdState::Held& h = s->held[i];
    if (h.heap) continue;
    h.heap = new char[h.len];
    std::memcpy(h.heap, ring_of(s).data(h.bid), h.len);
  }
}

size_t UringBackend::take(FdState* s, char* buf, size_t len) {
  size_t n = 0;
  while (n < len && s->held_head < s->held.size()) {
    FdState::Held& h = s->held[s->held_head];
    size_t k = std::min<size_t>(len - n, h.len - h.off);
    std::memcpy(buf + n, (h.heap ? h.heap : buf_.data(h.bid)) + h.off, k);
    n += k;
    h.off += static_cast<uint32_t>(k);
    if (h.off < h.len) break;  // the owner's buffer is full; the rest waits
    if (h.heap)
      delete[] h.heap;
    else
      buf_.recycle(h.bid);
    ++s->held_head;
  }
  if (s->held_head == s->held.size()) {
    s->held.clear();
    s->held_head = 0;
  }
  return n;
}

void UringBackend::drop_held(FdState* s) {
  BufRing& ring = ring_of(s);
  for (size_t i = s->held_head; i < s->held.size(); ++i) {
    FdState::Held& h = s->held[i];
    if (h.heap)
      delete[] h.heap;
    else if (ring.ready())
      ring.recycle(h.bid);
  }
  s->held.clear();
  s->held_head = 0;
}

bool UringBackend::undelivered() const {
  for (const FdState* s : ready_recv_)
    if (s->watcher && (s->want & kReadable) && s->has_data()) return true;
  return false;
}

void UringBackend::report_ready() {
  for (FdState* s : send_wake_) {
    s->in_wake = false;
    if (s->watcher && (s->want & kWritable))
      sink_->on_io(s->watcher, kWritable);
    else
      maybe_free(s);
  }
  send_wake_.clear();
  size_t keep_n = 0;
  for (size_t i = 0; i < ready_recv_.size(); ++i) {
    FdState* s = ready_recv_[i];
    if (s->watcher && (s->want & kReadable) && s->has_data()) {
      sink_->on_io(s->watcher, kReadable);
      ready_recv_[keep_n++] = s;
    } else if (s->watcher && s->has_data()) {
      ready_recv_[keep_n++] = s;  // paused: reported once reading resumes
    } else {
      s->in_ready = false;
      maybe_free(s);
    }
  }
  ready_recv_.resize(keep_n);
}

// --- accepting ahead (invariant 10) ---------------------------------------------

int UringBackend::accept(IoWatcher* w, int fd, sockaddr_storage* addr, socklen_t* len) {
  auto* s = w ? static_cast<FdState*>(w->backend_data) : nullptr;
  if (s == nullptr || !s->accepts) return Backend::accept(w, fd, addr, len);
  if (s->accepted_head < s->accepted.size()) {
    FdState::Accepted& a = s->accepted[s->accepted_head++];
    int c = a.fd;
    *len = a.len;
    std::memcpy(addr, &a.addr, a.len);
    if (s->accepted_head == s->accepted.size()) {
      s->accepted.clear();
      s->accepted_head = 0;
    }
    if (!s->accept_armed) enqueue(s);  // room again: flush() re-arms the accept
    return c;
  }
  if (s->end != kNoEnd) {
    int e = s->end;  // delivered once, after every connection before it
    s->end = kNoEnd;
    enqueue(s);
    return e;
  }
  if (s->accept_armed || wants_accept(s)) return -EAGAIN;
  return Backend::accept(w, fd, addr, len);  // readiness for this fd
}

bool UringBackend::prep_accept(FdState* s) {
  io_uring_sqe* sqe = get_sqe();
  if (sqe == nullptr) return false;
  // No address: one buffer would be overwritten by every connection
  // accepted in the same batch. on_accept() asks getpeername() instead.
  io_uring_prep_multishot_accept(sqe, s->fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  io_uring_sqe_set_data64(sqe, reinterpret_cast<uint64_t>(s) | kTagAccept);
  s->accept_armed = true;
  s->accept_cancel = false;
  ++accept_inflight_;
  return true;
}

void UringBackend::on_accept(FdState* s, int res, unsigned flags) {
  const bool more = flags & IORING_CQE_F_MORE;
  if (!more) {
    s->accept_armed = false;
    s->accept_cancel = false;
    --accept_inflight_;
  }
  if (res >= 0) {
    if (s->watcher == nullptr || !s->accepts) {
      ::close(res);  // nobody will take it: the peer sees the reset now
    } else {
      s->accepted.emplace_back();
      FdState::Accepted& a = s->accepted.back();
      a.fd = res;
      a.len = sizeof a.addr;
      if (::getpeername(res, reinterpret_cast<sockaddr*>(&a.addr), &a.len) < 0) a.len = 0;
    }
  }
  if (s->watcher == nullptr) {
    if (!more) maybe_free(s);
    return;
  }
  if (res == -EINVAL && !more && s->accepted_count() == 0 && s->end == kNoEnd) {
    // No multishot accept here (before 5.19), or not a listening socket:
    // readiness and accept4(), which gives the caller the same answer.
    s->accept_off = true;
  } else if (res < 0 && res != -ECANCELED && res != -EAGAIN && s->accepts) {
    s->end = res;  // EMFILE and friends: reported once, after the queue
  }
  if (s->has_data()) mark_ready(s);
  // flush() decides: re-arm an accept that ended, cancel one past the cap.
  if (!more || s->accepted_count() >= kAcceptAhead) enqueue(s);
}

void UringBackend::drop_accepted(FdState* s) {
  for (size_t i = s->accepted_head; i < s->accepted.size(); ++i) ::close(s->accepted[i].fd);
  s->accepted.clear();
  s->accepted_head = 0;
}
}  // namespace uvpy::loop::uring
