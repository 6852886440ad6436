// uring_epoll.cc — plain watchers of the io_uring backend wait in an epoll set.
//
// A plain watcher (add_reader/add_writer, the sock_* coroutines) watches an
// fd its owner may close at any moment, from any callback, without telling
// the loop. An io_uring POLL_ADD holds a reference to the fd's file for as
// long as it is in flight, so close(2) would not close the socket: its peer
// would never see the FIN or the reset and a connect in progress would go
// on. An epoll registration holds no reference; the kernel drops it when
// the file is released, exactly as asyncio's selector sees it. So these
// watchers are registered in one epoll set, and the ring waits on that set
// with a one-shot POLL_ADD on the epoll fd (ours, never closed under us),
// re-armed in every flush while anything is registered: an epoll fd polls
// readable while any registered fd is ready, so a level-triggered fd that
// stays ready completes the re-armed poll inside the next submit, and the
// readiness stays level-triggered as asyncio's is.
//
// Rules (invariant 11 in backend_uring.cc cites them):
//  1. An epoll event carries the fd number, never an address: ep_by_fd_
//     maps it to the registered FdState, so a registration the kernel kept
//     (the file is still open through a dup) can only wake a live watcher
//     spuriously, never touch freed memory.
//  2. io_update() marks the registration for a fresh epoll_ctl even when
//     the interest did not change: the fd number may now name a new file
//     (closed and reopened under the watcher), which MOD reports as ENOENT
//     and ADD then registers.
//  3. A closed fd (EBADF) parks its FdState, reporting nothing, as for a
//     failed ring poll (invariant 4); the next io_update() tries again.
//  4. io_close() removes the registration at once; EBADF/ENOENT there mean
//     the kernel already dropped it.
#include <poll.h>
#include <sys/epoll.h>

#include <cerrno>

#include "uring_backend.h"

namespace uvpy::loop::uring {

namespace {
unsigned to_epoll(int mask) {
  return ((mask & kReadable) ? EPOLLIN : 0u) | ((mask & kWritable) ? EPOLLOUT : 0u);
}
}  // namespace

void UringBackend::ep_apply(FdState* s, int mask) {
  if (mask == 0) {
    ep_forget(s);
    return;
  }
  if (mask == s->ep_mask && !s->ep_sync) return;
  s->ep_sync = false;
  epoll_event ev{};
  ev.events = to_epoll(mask);
  ev.data.fd = s->fd;
  int rc = -1;
  if (s->ep_mask != 0) {
    rc = epoll_ctl(epfd_, EPOLL_CTL_MOD, s->fd, &ev);
    if (rc < 0 && errno == ENOENT) rc = epoll_ctl(epfd_, EPOLL_CTL_ADD, s->fd, &ev);  // rule 2
  } else {
    rc = epoll_ctl(epfd_, EPOLL_CTL_ADD, s->fd, &ev);
    if (rc < 0 && errno == EEXIST) rc = epoll_ctl(epfd_, EPOLL_CTL_MOD, s->fd, &ev);
  }
  if (rc < 0) {  // rule 3: EBADF, the fd was closed under its watcher
    ep_forget(s);
    s->parked = true;
    return;
  }
  if (s->ep_mask == 0) {
    ++ep_count_;
    if (ep_by_fd_.size() <= static_cast<size_t>(s->fd)) ep_by_fd_.resize(s->fd + 1, nullptr);
    ep_by_fd_[s->fd] = s;
  }
  s->ep_mask = mask;
}

bool UringBackend::ep_pollable(int fd) {
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = fd;
  if (epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) == 0) {
    epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, &ev);
    return true;
  }
  return errno != EPERM;  // EEXIST: registered already, so pollable
}

void UringBackend::ep_forget(FdState* s) {
  s->ep_sync = false;
  if (s->ep_mask == 0) return;
  epoll_event ev{};
  epoll_ctl(epfd_, EPOLL_CTL_DEL, s->fd, &ev);  // rule 4: failure = already gone
  s->ep_mask = 0;
  --ep_count_;
  if (static_cast<size_t>(s->fd) < ep_by_fd_.size() && ep_by_fd_[s->fd] == s)
    ep_by_fd_[s->fd] = nullptr;
}

void UringBackend::arm_epoll() {
  io_uring_sqe* sqe = get_sqe();
  if (sqe == nullptr) return;
  io_uring_prep_poll_add(sqe, epfd_, POLLIN);
  io_uring_sqe_set_data64(sqe, kTagEpoll);
  ep_armed_ = true;
}

void UringBackend::ep_collect() {
  if (!ep_ready_) return;
  ep_ready_ = false;
  epoll_event evs[256];
  int n = epoll_wait(epfd_, evs, 256, 0);
  for (int i = 0; i < n; ++i) {
    const int fd = evs[i].data.fd;
    FdState* s = static_cast<size_t>(fd) < ep_by_fd_.size() ? ep_by_fd_[fd] : nullptr;
    if (s == nullptr || s->watcher == nullptr) continue;  // rule 1
    // libuv's mapping, as for ring polls: an error or a bare hang-up wakes
    // every direction of interest.
    const unsigned m = evs[i].events & (to_epoll(s->ep_mask) | EPOLLERR | EPOLLHUP);
    int ev = 0;
    if ((m & EPOLLERR) || m == EPOLLHUP)
      ev = s->ep_mask;
    else
      ev = ((m & EPOLLIN) ? kReadable : 0) | ((m & EPOLLOUT) ? kWritable : 0);
    if (ev & s->ep_mask) sink_->on_io(s->watcher, ev & s->ep_mask);
  }
  // More than 256 ready: the re-armed poll completes at once next time.
}

}  // namespace uvpy::loop::uring
