// backend_uring.cc — the Linux fast-path Backend on io_uring (liburing).
//
// Two models side by side, chosen per watcher direction:
//
//   readiness   plain watchers (add_reader/add_writer from Python, and any
//               direction where completion I/O is off): one-shot POLL_ADDs,
//               re-armed each iteration; the callback does its own I/O.
//   completion  consuming watchers (backend.h, contracts 5-8: a Stream's
//               reader, and its writer while its queue is non-empty): the
//               kernel does the I/O. A reader keeps a multishot RECV with
//               IOSQE_BUFFER_SELECT armed on one provided-buffer ring
//               (uring_buf_ring.h); its CQEs are recorded here as held data
//               and the reader is reported readable, and recv() copies out
//               and recycles. A writer hands over one SEND/SENDMSG at a time;
//               its CQE reports kWritable and send_result() gives the count.
//               An accepting listener (a server's) keeps a multishot ACCEPT
//               armed; the connections it posts wait here for accept().
//
// Either way one io_uring_enter per loop iteration carries everything: the
// poll (re-)arms, recvs, sends and cancels queued since the last iteration
// are submitted by the same call that waits.
//
// One-shot polls, not multishot. A multishot IORING_OP_POLL_ADD posts one
// CQE per wake-up of the fd's wait queue: a reader that leaves data behind
// is not told again until more data arrives (and IORING_POLL_ADD_LEVEL is
// refused with multishot). asyncio's selector loops are level-triggered, so
// each poll here is one-shot and is re-armed, if still wanted, just before
// the next wait: an fd that is still ready completes again inside that
// submit, costing no extra syscall. Held recv data is level-triggered the
// same way: reported in every poll() while the reader leaves some behind.
//
// user_data, 64 bits:
//   bits 0-2   tag: 0 the poll of an FdState, 1 a poll remove/update or a
//              cancel (its CQE, if any, only reports a lost race and is
//              ignored), 2 the wakeup eventfd's multishot poll, 3 the
//              multishot recv of an FdState, 4 the send of an FdState,
//              5 the multishot accept of an FdState, 6 the poll on the
//              epoll fd of plain watchers (invariant 11), 7 the multishot
//              recvmsg of an FdState's datagram reader (invariant 12)
//   bits 3-63  tags 0, 3-5, 7: the FdState's address (heap objects, 8-aligned)
//
// Invariants:
//  1. An FdState has at most one poll, one recv and one send in flight. It
//     is freed only when it is dead (io_close'd), none of them is in flight,
//     and it is on no list (pending_, ready_recv_, starved_, send_wake_),
//     so no CQE ever carries the address of freed memory.
//  2. Only the owner thread submits. With IORING_SETUP_SINGLE_ISSUER the
//     ring is created disabled and enabled by the first thread that polls;
//     if the loop later polls on another thread, the ring is rebuilt there.
//     Polls are one-shot, so re-arming every wanted fd on the new ring
//     loses no readiness; recv data the old ring posted is kept, and a send
//     whose outcome died with the old ring fails its writer with -EIO
//     rather than guess what went out. wakeup() only writes the eventfd.
//  3. A request in flight holds a reference to the fd's file, so io_close()
//     on the owner thread submits the removal/cancels at once and enters
//     the ring until their completions are out (DEFER_TASKRUN runs only a
//     bounded batch of task work per enter): the caller usually closes the
//     fd next, and the peer must see the FIN then, not at the next loop
//     iteration. Completions taken off the ring outside poll() are recv
//     data (recorded at once: recording calls no sink) or wait in stash_
//     for poll(), since the sink may be called only from poll().
//  4. A poll that fails (-EBADF: the fd was closed under its watcher) parks
//     its FdState, reporting nothing, as epoll drops a closed file; the next
//     io_update() unparks it. Re-arming it would spin.
//  5. The ring is torn down asynchronously by the kernel after close(), so
//     a request that points into our memory must have its final CQE reaped
//     before that memory is freed or reused. The wakeup is a multishot poll
//     on an eventfd that is never read (each write wakes the poll; the
//     64-bit counter cannot overflow in practice). Recvs write only into
//     provided buffers (invariant 7); sends share ownership of what they
//     read (invariant 9).
//  6. Completion reads never take a byte a plain watcher could see: only a
//     consuming reader gets a multishot recv. Where it cannot have one the
//     reader falls back to readiness and recv() is the syscall: the fd is
//     not a socket (-ENOTSOCK: that fd only), the kernel lacks multishot
//     recv (-EINVAL: all fds), the ring ran dry (-ENOBUFS: until an
//     eighth of the buffers is back), or the flow is bulk (a CQE filled a
//     whole buffer: until a recv() comes back short or empty; one big
//     recv() then beats a CQE and a copy per buffer). Switching is safe
//     for order: the syscall runs only when nothing is held and no recv is
//     in flight. A pause (recv_stop) cancels the recv
//     and waits for its final CQE, so all it read is handed back in order;
//     data for a reader that is not reading is copied to the heap and its
//     buffer recycled at once: a paused reader hoards no ring buffer.
//  7. Provided buffers are unmapped only when no recv is in flight (every
//     final CQE reaped): Backend::close cancels and reaps stragglers, and
//     leaks the buffers rather than unmap them if it cannot (off the owner
//     thread); a ring rebuild likewise leaves the old buffers behind.
//  8. A held buffer goes back to the ring exactly once: when recv() has
//     copied all of it, or when its reader is dropped.
//  9. A send reads memory it co-owns (SendRef::owner), so the writer may
//     drop its queue any time; dropping the writer cancels the send, whose
//     result is then discarded. One send per fd at a time, submitted at the
//     next flush; a partial send is simply a smaller result.
// 10. An accepting listener's connections are accepted by the kernel as they
//     arrive (one multishot ACCEPT, SOCK_NONBLOCK | SOCK_CLOEXEC, no
//     address: getpeername() fills it in as each CQE is taken) and wait in
//     FdState::accepted, in order, for accept(); an error the accept ends
//     with (EMFILE...) waits behind them and is delivered once. Once
//     kAcceptAhead wait the accept is cancelled and the kernel's backlog
//     holds the rest (a multishot accept drains the whole backlog in one
//     go, so one batch may overshoot by up to the listen backlog); it is
//     re-armed when the reader has brought the queue down to half that,
//     so a server at the cap does not arm and cancel every iteration.
//     A listener shared by several processes (pre-fork servers) is
//     drained the same way by whichever process's ring sees it first, as
//     an asyncio loop takes up to `backlog` connections per wakeup. Every accepted fd is owned by exactly one
//     place (a CQE not yet taken, the queue, or the caller of accept()):
//     accept CQEs are taken at once wherever CQEs are harvested, a
//     listener's queue is closed when its reader goes (io_update without
//     `accepts`, io_close), and a dead FdState's late CQEs close theirs. A
//     ring rebuilt on another thread cannot cancel the old ring's accept
//     first (only the owner may submit) nor flush the old ring's CQ
//     overflow list, so a connection that old ring accepts after the last
//     harvest, or whose CQE sits in that overflow list, is lost with it:
//     its fd stays open until the process exits and its client sees no
//     answer. Rebuilds are rare (the loop moved threads) and the window is
//     one in-flight batch. The fd limit an accept enforces is the
//     RLIMIT_NOFILE of when it was armed (the kernel reads it at submit);
//     a re-arm (after an error, the cap or a rebuild) reads it again.
// 11. A plain watcher (no consuming direction, not accepting: add_reader,
//     add_writer, sock_*) waits in an epoll set, never in a ring poll: its
//     owner may close the fd under it, and a ring poll would keep the file
//     open (no FIN for the peer, a connect carrying on). uring_epoll.cc has
//     the rules. A Stream's or listener's fd is closed only after io_close,
//     so their readiness fallbacks stay ring polls (invariant 3).
// 12. A datagram reader (contract 9) is invariant 6 with one datagram per
//     CQE: a multishot RECVMSG with IOSQE_BUFFER_SELECT into a ring of its
//     own (kDgramGroup, made on first use), whose buffers hold the
//     kernel's header, a full sockaddr_storage and max_size bytes of
//     payload, so the ring truncates a datagram exactly where the
//     readiness path's recvfrom() does and never splits or merges one.
//     Its fallbacks are invariant 6's, per fd: a refusal (-EINVAL,
//     -EOPNOTSUPP, -ENOTSOCK) turns this fd to readiness for good, -ENOBUFS
//     until an eighth of that ring is back (counted), and recvfrom() then
//     runs only when nothing is held. A socket error (ECONNREFUSED) ends
//     the multishot; it is delivered once, after the datagrams before it,
//     and the receive is re-armed. A pause hands every datagram received
//     ahead to the reader's owner (recv_stop_datagrams): the kernel has
//     consumed them, so they cannot be re-read, and the owner holds them
//     until it reads again. The kernel caps a multishot's inline retries
//     per task-work run, so a reader that took kDgramPullAfter in a row
//     when its held datagrams run out enters the ring once (no submit, no
//     wait) to run the rest now rather than one iteration later.
#include <liburing.h>
#include <poll.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>
#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <vector>

#include "uring_backend.h"

namespace uvpy::loop {
namespace uring {
namespace {

unsigned to_poll(int events) {
  return ((events & kReadable) ? POLLIN : 0) | ((events & kWritable) ? POLLOUT : 0);
}

// libuv's mapping (so both backends wake the same callbacks): an error, or
// a bare hang-up, wakes every direction of interest.
int from_poll(unsigned mask, int want) {
  mask &= to_poll(want) | POLLERR | POLLHUP;
  if ((mask & POLLERR) || mask == POLLHUP) return want;
  int ev = 0;
  if (mask & POLLIN) ev |= kReadable;
  if (mask & POLLOUT) ev |= kWritable;
  return ev & want;
}

// The opcodes this backend needs, probed on the first ring made in this
// process (the answer cannot change while it runs).
const char* missing_opcodes(io_uring* ring) {
  static const char* const reason = [ring]() -> const char* {
    io_uring_probe* probe = io_uring_get_probe_ring(ring);
    if (probe == nullptr) return "io_uring_get_probe_ring failed";
    const char* r = nullptr;
    if (!io_uring_opcode_supported(probe, IORING_OP_POLL_ADD) ||
        !io_uring_opcode_supported(probe, IORING_OP_POLL_REMOVE))
      r = "the kernel lacks IORING_OP_POLL_ADD/POLL_REMOVE";
    io_uring_free_probe(probe);
    return r;
  }();
  return reason;
}

// Whether the kernel knows every opcode in ops (false if it cannot say).
bool probe_supports(io_uring* ring, std::initializer_list<int> ops) {
  io_uring_probe* probe = io_uring_get_probe_ring(ring);
  if (probe == nullptr) return false;
  bool r = true;
  for (int op : ops) r = r && io_uring_opcode_supported(probe, op);
  io_uring_free_probe(probe);
  return r;
}

// What each kind of completion I/O needs, probed once per process like
// missing_opcodes(). Multishot recv itself is 6.0+ and multishot accept
// 5.19+: an older kernel fails the first one with -EINVAL, which turns
// that feature off (see on_recv, on_accept).
bool have_send_opcodes(io_uring* ring) {
  static const bool ok =
      probe_supports(ring, {IORING_OP_SEND, IORING_OP_SENDMSG, IORING_OP_ASYNC_CANCEL});
  return ok;
}

bool have_accept_opcodes(io_uring* ring) {
  static const bool ok = probe_supports(ring, {IORING_OP_ACCEPT, IORING_OP_ASYNC_CANCEL});
  return ok;
}

bool have_recvmsg_opcodes(io_uring* ring) {
  static const bool ok = probe_supports(ring, {IORING_OP_RECVMSG, IORING_OP_ASYNC_CANCEL});
  return ok;
}

bool have_recv_opcodes(io_uring* ring) {
  static const bool ok = probe_supports(ring, {IORING_OP_RECV, IORING_OP_ASYNC_CANCEL});
  return ok;
}

}  // namespace

int UringBackend::init(std::string* err) {
  int rc = setup(&ring_, err);
  if (rc < 0) return rc;
  ring_open_ = true;
  // RSRC_TAGS stands in for "5.13+", where poll update arrived.
  constexpr unsigned kNeed = IORING_FEAT_NODROP | IORING_FEAT_EXT_ARG | IORING_FEAT_RSRC_TAGS;
  if ((features_ & kNeed) != kNeed) {
    *err = "the kernel's io_uring lacks NODROP/EXT_ARG/poll update (Linux 5.13+ needed)";
    return -ENOSYS;
  }
  if (const char* why = missing_opcodes(&ring_)) {
    *err = why;
    return -ENOSYS;
  }
  efd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (efd_ < 0) {
    *err = std::string("eventfd: ") + strerror(errno);
    return -errno;
  }
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epfd_ < 0) {
    *err = std::string("epoll_create1: ") + strerror(errno);
    return -errno;
  }
  comp_ = opts_.completion && have_recv_opcodes(&ring_);
  send_ok_ = opts_.completion && opts_.completion_sends && have_send_opcodes(&ring_);
  accept_ok_ = opts_.completion && opts_.completion_accepts && have_accept_opcodes(&ring_);
  dgram_ok_ = opts_.completion && opts_.completion_datagrams && have_recvmsg_opcodes(&ring_);
  setup_buffers();
  return 0;
}

int UringBackend::poll(int timeout_ms) {
  if (!ring_open_) return -EBADF;
  int rc = ensure_owner();
  if (rc < 0) return rc;
  // Data read ahead and not yet taken is readiness that needs no wait.
  if (timeout_ms != 0 && undelivered()) timeout_ms = 0;
  for (int attempt = 0;; ++attempt) {
    flush();
    if (timeout_ms == 0) {
      rc = io_uring_submit_and_get_events(&ring_);
    } else if (timeout_ms < 0) {
      rc = io_uring_submit_and_wait(&ring_, 1);
    } else {
      __kernel_timespec ts{timeout_ms / 1000, (timeout_ms % 1000) * 1000000LL};
      io_uring_cqe* cqe;
      rc = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
    }
    // EEXIST: another thread now (a recycled pthread_t fooled the check).
    if (rc != -EEXIST || attempt > 0) break;
    if (int r = rebuild(); r < 0) return r;
  }
  reap();
  ep_collect();
  report_ready();
  // ETIME: the timeout; EINTR: a signal (its wakeup fd is watched);
  // EBUSY/EAGAIN: completions backed up, reaped above, retried next time.
  if (rc == -ETIME || rc == -EINTR || rc == -EBUSY || rc == -EAGAIN) rc = 0;
  return rc < 0 ? rc : 0;
}

void UringBackend::wakeup() {
  uint64_t one = 1;
  while (::write(efd_, &one, sizeof one) < 0 && errno == EINTR) {
  }
}

int UringBackend::io_update(IoWatcher* w, int events) {
  auto* s = static_cast<FdState*>(w->backend_data);
  if (s == nullptr) {
    // epoll's rules, which the libuv backend inherits: a closed fd is
    // EBADF; regular files and directories are always "ready" to poll(),
    // so epoll refuses them with EPERM. A socket accept() just made
    // (IoWatcher::socket) needs no asking.
    if (!w->socket) {
      struct stat st;
      if (::fstat(w->fd, &st) < 0) return -errno;
      if (S_ISREG(st.st_mode) || S_ISDIR(st.st_mode)) return -EPERM;
      // A character device may have no poll support either (/dev/null,
      // /dev/zero); epoll says so with EPERM, which a probe of our epoll
      // set asks now, while the caller can still be told (its registration
      // there is made later, in flush()).
      if (S_ISCHR(st.st_mode) && !ep_pollable(w->fd)) return -EPERM;
    }
    s = new FdState;
    s->watcher = w;
    s->fd = w->fd;
    link(s);
    w->backend_data = s;
  }
  if ((events & kReadable) && !(s->want & kReadable)) s->recv_paused = false;
  if (s->dgram != w->datagrams) {
    // Another kind of reader: what was held belongs to the old one's ring
    // (and kind), and flush() cancels a recv of the old kind.
    drop_held(s);
    s->end = kNoEnd;
    s->dgram = w->datagrams;
  }
  if (s->accepts && !w->accepts) {  // invariant 10: the accepting reader went
    drop_accepted(s);
    s->end = kNoEnd;  // its undelivered error too: a plain reader would see it forever
  }
  s->accepts = w->accepts;
  s->consume = w->consume;
  s->want = events;
  s->parked = false;
  s->ep_sync = true;  // invariant 11: the fd may name a new file now
  enqueue(s);
  return 0;
}

void UringBackend::io_close(IoWatcher* w) {
  auto* s = static_cast<FdState*>(w->backend_data);
  if (s == nullptr) return;
  w->backend_data = nullptr;
  s->watcher = nullptr;
  s->want = 0;
  ep_forget(s);
  drop_held(s);
  drop_send(s);
  drop_accepted(s);
  const bool poll_live = s->armed && s->armed_mask != 0;
  const bool recv_live = s->recv_armed && !s->recv_cancel;
  const bool send_live = s->send_armed && !s->send_cancel;
  const bool accept_live = s->accept_armed && !s->accept_cancel;
  if (poll_live || recv_live || send_live || accept_live) {
    // Off the owner thread (or with the SQ full) the next flush() removes
    // them; see invariant 3.
    bool ok = on_owner_thread();
    if (ok && poll_live) ok = prep_remove(s);
    if (ok && recv_live) ok = prep_recv_cancel(s);
    if (ok && send_live) ok = prep_send_cancel(s);
    if (ok && accept_live) ok = prep_accept_cancel(s);
    if (ok)
      release_now(s, poll_live, send_live);
    else
      enqueue(s);
  }
  maybe_free(s);
}

void UringBackend::close() {
  if (!ring_open_) return;
  ring_open_ = false;
  // Invariant 7: no recv may pick a provided buffer after we unmap them.
  // The reactor io_close()d every watcher first, which usually cancelled
  // and reaped them all; cancel any straggler and wait here.
  auto inflight = [this] { return recv_inflight_ > 0 || send_inflight_ > 0 || accept_inflight_ > 0; };
  if (inflight() && on_owner_thread()) {
    if (io_uring_sqe* sqe = get_sqe()) {
      io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);
      io_uring_sqe_set_data64(sqe, kTagCtl);
      for (int round = 0; round < 64 && inflight(); ++round) {
        io_uring_submit_and_get_events(&ring_);
        if (harvest() == 0 && !io_uring_cq_has_overflow(&ring_)) break;
        for (const Completion& c : stash_) {
          if ((c.user_data & kTagMask) != kTagSend) continue;
          auto* s = reinterpret_cast<FdState*>(c.user_data & ~kTagMask);
          s->send_armed = false;
          s->send_keep.clear();
          --send_inflight_;
        }
        stash_.clear();
      }
    }
  }
  const bool buffers_safe = recv_inflight_ == 0;  // both rings (invariant 7)
  if (send_inflight_ > 0) {
    // Sends we could not reap may still read their memory: keep it.
    for (FdState* s = all_; s != nullptr; s = s->next)
      if (s->send_armed) leak_send_memory(s);
  }
  // Exiting the ring cancels every request; nothing is reaped after it,
  // so every FdState can go now.
  io_uring_queue_exit(&ring_);
  while (all_ != nullptr) {
    FdState* s = all_;
    unlink(s);
    if (s->watcher) s->watcher->backend_data = nullptr;
    drop_held(s);
    drop_accepted(s);
    delete s;
  }
  buf_.release(buffers_safe);
  dbuf_.release(buffers_safe);
  pending_.clear();
  stash_.clear();
  ready_recv_.clear();
  starved_.clear();
  send_wake_.clear();
  if (efd_ >= 0) ::close(efd_);
  efd_ = -1;
  if (epfd_ >= 0) ::close(epfd_);
  epfd_ = -1;
  ep_count_ = 0;
  ep_by_fd_.clear();
}

int UringBackend::setup(io_uring* ring, std::string* err) {
  static constexpr unsigned kLadder[] = {
      IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_R_DISABLED,
      IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_R_DISABLED,
      IORING_SETUP_COOP_TASKRUN,
      0,
  };
  int rc = -EINVAL;
  for (size_t i = static_cast<size_t>(strongest_); i < sizeof kLadder / sizeof *kLadder; ++i) {
    io_uring_params p{};
    p.flags = kLadder[i] | IORING_SETUP_CQSIZE;
    p.cq_entries = kCqEntries;
    rc = io_uring_queue_init_params(kSqEntries, ring, &p);
    if (rc == 0) {
      flags_ = kLadder[i];
      features_ = p.features;
      enabled_ = !(flags_ & IORING_SETUP_R_DISABLED);
      owner_ = pthread_self();
      return 0;
    }
    if (rc != -EINVAL) break;
  }
  if (err) *err = std::string("io_uring_queue_init failed: ") + strerror(-rc);
  return rc;
}

int UringBackend::ensure_owner() {
  if (!single_issuer()) return 0;
  if (!enabled_) {
    int rc = io_uring_register(ring_.ring_fd, IORING_REGISTER_ENABLE_RINGS, nullptr, 0);
    if (rc < 0) return rc;
    enabled_ = true;
    owner_ = pthread_self();
    return 0;
  }
  return pthread_equal(owner_, pthread_self()) ? 0 : rebuild();
}

int UringBackend::rebuild() {
  io_uring fresh{};
  int rc = setup(&fresh, nullptr);
  if (rc < 0) return rc;
  // Data the old ring already posted is kept (reading the CQ ring is
  // plain memory); then every held provided buffer is copied out, since
  // the old buffers go with the old ring (leaked if a recv may still
  // pick one: invariant 7).
  harvest();
  for (const Completion& c : stash_)  // finished sends keep their results
    if ((c.user_data & kTagMask) == kTagSend)
      on_send(reinterpret_cast<FdState*>(c.user_data & ~kTagMask), c.res);
  stash_.clear();  // the old ring's other news: every state is reset below
  for (FdState* s = all_; s != nullptr; s = s->next) {
    spill(s);
    if (s->send_armed) {
      // Its outcome is lost with the ring: fail the writer rather than
      // guess how much went out, and never free what it may still read.
      leak_send_memory(s);
      s->send_armed = false;
      s->send_cancel = false;
      s->send_done = true;
      s->send_res = -EIO;
      wake_writer(s);
    }
  }
  send_inflight_ = 0;
  accept_inflight_ = 0;  // invariant 10: harvest() above took what it posted
  io_uring_queue_exit(&ring_);
  buf_.release(recv_inflight_ == 0);
  dbuf_.release(recv_inflight_ == 0);  // made again on first use
  recv_inflight_ = 0;
  ring_ = fresh;
  wake_armed_ = false;
  ep_armed_ = false;
  ep_ready_ = true;  // the old ring's poll on it is gone: look once
  setup_buffers();
  for (FdState* s = all_; s != nullptr;) {
    FdState* next = s->next;
    s->armed = false;
    s->armed_mask = 0;
    s->recv_armed = false;
    s->recv_cancel = false;
    s->starved = false;
    s->accept_armed = false;
    s->accept_cancel = false;
    if (s->watcher == nullptr)
      maybe_free(s);
    else if (s->want && !s->parked)
      enqueue(s);
    s = next;
  }
  return ensure_owner();
}

// What runs now: the setup flags the kernel took, and each completion
// feature as probed at init and turned off since (a refusal, a failed
// buffer ring). The stream ring's size is reported where its reads are on.
std::vector<BackendSetting> UringBackend::settings() const {
  const char* setup = (flags_ & IORING_SETUP_DEFER_TASKRUN)  ? "defer_taskrun"
                      : (flags_ & IORING_SETUP_SINGLE_ISSUER) ? "single_issuer_coop_taskrun"
                      : (flags_ & IORING_SETUP_COOP_TASKRUN)  ? "coop_taskrun"
                                                               : "plain";
  return {
      {"setup", 0, false, setup},
      {"completion", comp_, true},
      {"completion_sends", send_ok_, true},
      {"completion_accepts", accept_ok_, true},
      {"completion_datagrams", dgram_ok_, true},
      {"buf_count", comp_ ? opts_.buf_count : 0},
      {"buf_size", comp_ ? opts_.buf_size : 0},
  };
}

void UringBackend::setup_buffers() {
  if (comp_ && buf_.init(&ring_, kStreamGroup, opts_.buf_count, opts_.buf_size) < 0) comp_ = false;
}

io_uring_sqe* UringBackend::get_sqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (sqe == nullptr && io_uring_submit(&ring_) >= 0) sqe = io_uring_get_sqe(&ring_);
  return sqe;
}

bool UringBackend::prep_poll(FdState* s, int want) {
  io_uring_sqe* sqe = get_sqe();
  if (sqe == nullptr) return false;
  io_uring_prep_poll_add(sqe, s->fd, to_poll(want));
  io_uring_sqe_set_data64(sqe, reinterpret_cast<uint64_t>(s) | kTagPoll);
  s->armed = true;
  s->armed_mask = want;
  return true;
}

bool UringBackend::prep_update(FdState* s, int want) {
  io_uring_sqe* sqe = get_sqe();
  if (sqe == nullptr) return false;
  uint64_t ud = reinterpret_cast<uint64_t>(s) | kTagPoll;
  // new_user_data must be 0 unless IORING_POLL_UPDATE_USER_DATA (EINVAL).
  io_uring_prep_poll_update(sqe, ud, 0, to_poll(want), IORING_POLL_UPDATE_EVENTS);
  ctl_flags(sqe);
  s->armed_mask = want;
  return true;
}

bool UringBackend::prep_remove(FdState* s) {
  io_uring_sqe* sqe = get_sqe();
  if (sqe == nullptr) return false;
  io_uring_prep_poll_remove(sqe, reinterpret_cast<uint64_t>(s) | kTagPoll);
  ctl_flags(sqe);
  s->armed_mask = 0;
  return true;
}

void UringBackend::arm_wakeup() {
  io_uring_sqe* sqe = get_sqe();
  if (sqe == nullptr) return;
  io_uring_prep_poll_multishot(sqe, efd_, POLLIN);
  io_uring_sqe_set_data64(sqe, kTagWake);
  wake_armed_ = true;
}

void UringBackend::flush() {
  if (!wake_armed_) arm_wakeup();
  if (!starved_.empty()) {
    // Buffers are back in a reader's ring: it returns to multishot recv.
    size_t keep_n = 0;
    for (FdState* s : starved_) {
      const BufRing& ring = ring_of(s);
      if (ring.ready() && ring.avail() < std::max(1u, ring.count() / 8)) {
        starved_[keep_n++] = s;
        continue;
      }
      s->in_starved = false;
      s->starved = false;
      enqueue(s);
    }
    starved_.resize(keep_n);
  }
  size_t done = 0;
  for (; done < pending_.size(); ++done) {
    FdState* s = pending_[done];
    bool ok = true;
    // Invariant 11: a plain watcher's interest goes to the epoll set.
    if (!s->parked && s->dgram) {
      // Before poll_want() below: either may turn this reader to readiness.
      if (wants_recv(s) && !dbuf_.ready()) ensure_dgram_ring();
      if (s->inject && wants_recv(s) && !s->recv_armed) {
        // inject_recv_error(): this arm "fails" with the error at once.
        const int err = s->inject;
        s->inject = 0;
        s->recv_armed = true;
        s->recv_dgram = true;
        ++recv_inflight_;
        on_recv(s, err, 0, true);
      }
    }
    const int pw = plain(s) ? 0 : poll_want(s);
    if (s->parked) {
      ep_forget(s);
    } else {
      ep_apply(s, plain(s) ? s->want : 0);
      if (wants_recv(s)) {
        if (!s->recv_armed)
          ok = prep_recv(s);
        else if ((s->recv_dgram != s->dgram || s->inject) && !s->recv_cancel)
          ok = prep_recv_cancel(s);  // the wrong kind, or a test's error waits
      } else if (s->recv_armed && !s->recv_cancel) {
        ok = prep_recv_cancel(s);
      }
      if (!ok) {
      } else if (wants_accept(s)) {
        if (!s->accept_armed) ok = prep_accept(s);
      } else if (s->accept_armed && !s->accept_cancel) {
        ok = prep_accept_cancel(s);
      }
      if (!ok) {
      } else if (!wants_send(s)) {
        drop_send(s);
        if (s->send_armed && !s->send_cancel) ok = prep_send_cancel(s);
      } else if (s->send_queued && !s->send_armed) {
        ok = prep_send(s);
      }
      if (!ok) {
      } else if (!s->armed) {
        if (pw) ok = prep_poll(s, pw);
      } else if (pw == 0) {  // idle, or dead (io_close'd off the owner thread)
        if (s->armed_mask != 0) ok = prep_remove(s);
      } else if (pw != s->armed_mask) {
        ok = prep_update(s, pw);
      }
    }
    if (!ok) break;
    s->queued = false;
    maybe_free(s);
  }
  pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(done));
  // After the pending states: they may have made the first registration.
  if (ep_count_ > 0 && !ep_armed_) arm_epoll();
}

void UringBackend::release_now(FdState* s, bool poll_live, bool send_live) {
  const uint64_t ud = reinterpret_cast<uint64_t>(s) | kTagPoll;
  const uint64_t send_ud = reinterpret_cast<uint64_t>(s) | kTagSend;
  bool poll_done = !poll_live, send_done = !send_live;
  s->pinned = true;  // on_recv() must not free it under us
  for (int round = 0; round < 64 && !(poll_done && send_done && !s->recv_armed && !s->accept_armed);
       ++round) {
    io_uring_submit_and_get_events(&ring_);
    size_t before = stash_.size();
    unsigned n = harvest();
    for (size_t i = before; i < stash_.size(); ++i) {
      if (stash_[i].user_data == ud) poll_done = true;
      if (stash_[i].user_data == send_ud) send_done = true;
    }
    if (n == 0 && !io_uring_cq_has_overflow(&ring_)) break;
  }
  s->pinned = false;
}

unsigned UringBackend::harvest() {
  unsigned head, n = 0;
  io_uring_cqe* cqe;
  io_uring_for_each_cqe(&ring_, head, cqe) {
    ++n;
    const uint64_t tag = cqe->user_data & kTagMask;
    if (tag == kTagRecv || tag == kTagDgram)
      on_recv(reinterpret_cast<FdState*>(cqe->user_data & ~kTagMask), cqe->res, cqe->flags,
              tag == kTagDgram);
    else if ((cqe->user_data & kTagMask) == kTagAccept)  // an fd: owned at once
      on_accept(reinterpret_cast<FdState*>(cqe->user_data & ~kTagMask), cqe->res, cqe->flags);
    else
      stash_.push_back({cqe->user_data, cqe->res, cqe->flags});
  }
  io_uring_cq_advance(&ring_, n);
  return n;
}

void UringBackend::reap() {
  for (const Completion& c : stash_) handle(c);
  stash_.clear();
  for (;;) {
    unsigned head, n = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      ++n;
      handle({cqe->user_data, cqe->res, cqe->flags});
    }
    io_uring_cq_advance(&ring_, n);
    if (!io_uring_cq_has_overflow(&ring_)) return;
    io_uring_get_events(&ring_);  // moves the kernel's overflow list in
  }
}

void UringBackend::handle(const Completion& c) {
  switch (c.user_data & kTagMask) {
    case kTagPoll:
      on_poll(reinterpret_cast<FdState*>(c.user_data & ~kTagMask), c.res);
      break;
    case kTagWake:
      if (!(c.flags & IORING_CQE_F_MORE)) wake_armed_ = false;
      break;
    case kTagEpoll:
      ep_armed_ = false;
      ep_ready_ = true;
      break;
    case kTagRecv:
    case kTagDgram:
      on_recv(reinterpret_cast<FdState*>(c.user_data & ~kTagMask), c.res, c.flags,
              (c.user_data & kTagMask) == kTagDgram);
      break;
    case kTagSend:
      on_send(reinterpret_cast<FdState*>(c.user_data & ~kTagMask), c.res);
      break;
    case kTagAccept:
      on_accept(reinterpret_cast<FdState*>(c.user_data & ~kTagMask), c.res, c.flags);
      break;
    default:
      // A removal or update that lost the race with its poll firing
      // (ENOENT, EALREADY); anything else is a bug here.
      assert(c.res >= 0 || c.res == -ENOENT || c.res == -EALREADY || c.res == -ECANCELED);
      break;
  }
}

void UringBackend::on_poll(FdState* s, int res) {
  s->armed = false;
  s->armed_mask = 0;
  if (s->watcher == nullptr) {
    maybe_free(s);
    return;
  }
  if (plain(s)) {
    // Its readiness moved to the epoll set since this poll was armed.
  } else if (res >= 0) {
    if (int ev = from_poll(static_cast<unsigned>(res), poll_want(s))) sink_->on_io(s->watcher, ev);
  } else if (res != -ECANCELED) {
    s->parked = true;  // invariant 4
    return;
  }
  if (s->want) enqueue(s);  // level-triggered: look again next iteration
}

void UringBackend::maybe_free(FdState* s) {
  if (s->watcher != nullptr || s->armed || s->queued || s->recv_armed || s->in_ready ||
      s->in_starved || s->pinned || s->send_armed || s->in_wake || s->accept_armed)
    return;
  unlink(s);
  drop_held(s);
  delete s;
}
}  // namespace uring


std::unique_ptr<Backend> make_uring_backend(std::string* err, const UringOptions& opts) {
  auto b = std::make_unique<uring::UringBackend>(opts);
  std::string why;
  if (b->init(&why) < 0) {
    if (err) *err = why;
    return nullptr;
  }
  return b;
}

}  // namespace uvpy::loop
