// uring_backend.h — the io_uring backend's state and class, shared by its
// two halves: backend_uring.cc (the ring, polls, lifecycle; the model and
// the invariants are in its header comment) and uring_io.cc (completion
// reads and sends). Private to them: nothing else includes it.
#pragma once
#include <liburing.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend.h"
#include "backend_uring.h"
#include "reactor.h"
#include "uring_buf_ring.h"

namespace uvpy::loop::uring {

constexpr uint64_t kTagPoll = 0, kTagCtl = 1, kTagWake = 2, kTagRecv = 3, kTagSend = 4,
                   kTagAccept = 5, kTagEpoll = 6, kTagDgram = 7, kTagMask = 7;
// The provided-buffer groups: stream reads, and datagrams (invariant 12).
constexpr uint16_t kStreamGroup = 0, kDgramGroup = 1;
// A datagram buffer starts with the kernel's io_uring_recvmsg_out and the
// sender's address (msg_namelen bytes, always reserved), then the payload.
constexpr unsigned kDgramHeader = sizeof(io_uring_recvmsg_out) + sizeof(sockaddr_storage);
// A datagram reader that has taken this many in a row when the held ones
// run out asks the kernel for more at once (invariant 12).
constexpr uint32_t kDgramPullAfter = 16;
constexpr int kNoEnd = 1;  // FdState::end: nothing after the data
constexpr unsigned kSqEntries = 256;
constexpr unsigned kCqEntries = 1024;  // overflow is kept by the kernel (FEAT_NODROP)
// Connections a listener may hold accepted ahead of its reader (invariant
// 10): past this the multishot accept is cancelled and the kernel's own
// backlog limits the rest again, until the reader catches up.
constexpr size_t kAcceptAhead = 128;

struct FdState {
  IoWatcher* watcher = nullptr;  // nullptr once io_close()d: dead
  int fd = -1;
  int want = 0;        // the interest the reactor asked for
  int armed_mask = 0;  // the interest of the poll in flight (0: being removed)
  bool armed = false;  // a poll is in flight
  bool queued = false; // in pending_: look at it in the next flush
  bool parked = false; // its last poll failed; wait for io_update
  // Readiness through the epoll set (invariant 11), for a plain watcher.
  int ep_mask = 0;       // the interest registered there (0: not registered)
  bool ep_sync = false;  // io_update since: register again even if unchanged
  // Completion reads (invariant 6).
  struct Held {
    char* heap;  // nullptr: the data is in provided buffer `bid`
    uint32_t bid, off, len;
  };
  int consume = 0;          // the watcher's consuming directions
  bool recv_armed = false;  // a multishot recv in flight
  bool recv_cancel = false; // ... and its cancel submitted
  bool recv_paused = false; // recv_stop()ped: not re-armed until the reader is back
  bool recv_off = false;    // this fd cannot multishot recv (not a socket): readiness
  bool starved = false;     // its recv ended with -ENOBUFS: readiness until buffers return
  bool bulk = false;        // a recv filled a whole buffer: readiness while reads stay big
  bool in_ready = false;    // in ready_recv_
  bool in_starved = false;  // in starved_
  bool pinned = false;      // release_now() still looks at it
  // Datagram readers (invariant 12).
  bool dgram = false;       // the reader takes datagrams: held[] are datagram buffers
  bool recv_dgram = false;  // the recv in flight is a multishot RECVMSG (kTagDgram)
  int inject = 0;           // inject_recv_error(): the next recv arm ends with this
  uint32_t streak = 0;      // datagrams taken since recv_datagram() last said -EAGAIN
  msghdr recv_msg{};        // what the RECVMSG was prepared with
  int end = kNoEnd;         // after the held data: 0 EOF, -errno an error
  std::vector<Held> held;   // read ahead, not yet recv()'d: held[held_head..]
  size_t held_head = 0;
  // Completion sends (invariant 9).
  bool send_queued = false; // send_iov waits for the next flush
  bool send_armed = false;  // a send in flight
  bool send_cancel = false; // ... and its cancel submitted
  bool send_unwanted = false; // ... and its writer gone: drop its result
  bool send_done = false;   // send_res waits for send_result()
  bool in_wake = false;     // in send_wake_
  int send_res = 0;
  std::vector<iovec> send_iov;
  std::vector<std::shared_ptr<char[]>> send_keep;  // what the send reads
  msghdr send_msg{};
  // Accepting ahead (invariant 10).
  bool accepts = false;       // the watcher's reader accepts (contract 8)
  bool accept_armed = false;  // a multishot accept in flight
  bool accept_cancel = false; // ... and its cancel submitted
  bool accept_off = false;    // this fd cannot multishot accept: readiness + accept4
  struct Accepted {
    int fd;
    socklen_t len;  // 0: getpeername failed (the peer was already gone)
    sockaddr_storage addr;
  };
  std::vector<Accepted> accepted;  // accepted[accepted_head..] not yet taken
  size_t accepted_head = 0;
  FdState* prev = nullptr;
  FdState* next = nullptr;

  size_t accepted_count() const { return accepted.size() - accepted_head; }
  bool has_data() const {
    return held_head < held.size() || end != kNoEnd || accepted_head < accepted.size();
  }
};

struct Completion {
  uint64_t user_data;
  int res;
  unsigned flags;
};

class UringBackend final : public Backend {
 public:
  explicit UringBackend(const UringOptions& opts) : opts_(opts), strongest_(opts.strongest) {}
  ~UringBackend() override { close(); }

  int init(std::string* err);

  const char* name() const override { return "io_uring"; }

  int poll(int timeout_ms) override;
  void wakeup() override;
  int io_update(IoWatcher* w, int events) override;
  void io_close(IoWatcher* w) override;
  int send_start(IoWatcher* w, const SendRef* parts, int count) override;
  ssize_t send_result(IoWatcher* w) override;
  ssize_t recv(IoWatcher* w, int fd, void* buf, size_t len) override;
  int recv_stop(IoWatcher* w, std::string* out) override;
  int accept(IoWatcher* w, int fd, sockaddr_storage* addr, socklen_t* len) override;
  ssize_t recv_datagram(IoWatcher* w, int fd, void* buf, size_t len, sockaddr_storage* addr,
                        socklen_t* alen) override;
  void recv_stop_datagrams(IoWatcher* w, std::vector<HeldDatagram>* held) override;
  void inject_recv_error(IoWatcher* w, int err) override;
  BackendCounters counters() const override { return counters_; }
  std::vector<BackendSetting> settings() const override;
  void close() override;

 private:
  // Strongest setup first; EINVAL means this kernel lacks a flag, so try
  // the next. Anything else (ENOSYS, EPERM from seccomp or
  // kernel.io_uring_disabled, ENOMEM from RLIMIT_MEMLOCK) is final.
  int setup(io_uring* ring, std::string* err);

  bool single_issuer() const { return flags_ & IORING_SETUP_SINGLE_ISSUER; }
  bool on_owner_thread() const {
    return !single_issuer() || (enabled_ && pthread_equal(owner_, pthread_self()));
  }

  // Binds a disabled ring to this thread, or moves the ring here.
  int ensure_owner();

  // A fresh ring on this thread (invariant 2). The old ring's requests die
  // with it; their user_data is never seen again.
  int rebuild();

  // Registers the provided-buffer ring on a (still disabled) ring; without
  // it every consuming reader stays on readiness.
  void setup_buffers();

  // Only on the owner thread. nullptr: the SQ is full and the kernel would
  // not take it (the caller retries in the next flush).
  io_uring_sqe* get_sqe();
  bool prep_poll(FdState* s, int want);

  // Updates the poll in flight in place; if it already fired, the update
  // fails (ENOENT/EALREADY) and the poll's own CQE brings the old result.
  bool prep_update(FdState* s, int want);

  // The poll ends with -ECANCELED (or its result, if it fired first).
  bool prep_remove(FdState* s);

  // Cancels s's request of kind `tag` (kTagRecv/kTagSend/kTagAccept) and
  // sets *flag, the FdState's "its cancel is submitted" bit; the request
  // ends with -ECANCELED (or its own result, if it finished first).
  bool prep_cancel(FdState* s, uint64_t tag, bool* flag);

  void ctl_flags(io_uring_sqe* sqe) {
    io_uring_sqe_set_data64(sqe, kTagCtl);
    if (features_ & IORING_FEAT_CQE_SKIP) io_uring_sqe_set_flags(sqe, IOSQE_CQE_SKIP_SUCCESS);
  }

  // Re-armed only when the kernel ends the multishot (a CQE without
  // IORING_CQE_F_MORE: CQ overflow, or the ring was rebuilt).
  void arm_wakeup();

  // Turns what changed since the last iteration into SQEs. If the SQ
  // cannot take more, the rest stays queued for the next iteration.
  void flush();

  // Invariant 3: enter the ring until the removed poll's completion (after
  // which the kernel has dropped its file) is off the ring. Each round makes
  // progress or finds nothing left to run; the bound is only a safety net.
  // The same for a multishot recv (its final CQE) and a send.
  void release_now(FdState* s, bool poll_live, bool send_live);

  // Takes every CQE off the ring: recv completions are recorded at once
  // (on_recv() never calls the sink), the rest wait in stash_ for poll().
  unsigned harvest();

  // Stashed completions first: they are older than those still on the ring.
  void reap();
  void handle(const Completion& c);
  void on_poll(FdState* s, int res);

  void enqueue(FdState* s) {
    if (s->queued) return;
    s->queued = true;
    pending_.push_back(s);
  }

  void maybe_free(FdState* s);

  // --- plain watchers on epoll (invariant 11, uring_epoll.cc) -------------------

  // A watcher the backend never does I/O for: its owner may close the fd
  // under it at any time, so its readiness must not hold the file.
  static bool plain(const FdState* s) { return s->consume == 0 && !s->accepts; }
  // Makes the epoll registration match `mask` (0: none). A closed fd parks s.
  void ep_apply(FdState* s, int mask);
  void ep_forget(FdState* s);
  bool ep_pollable(int fd);  // epoll would take fd (not EPERM)
  // The one-shot poll on the epoll fd itself; re-armed in every flush
  // while anything is registered.
  void arm_epoll();
  // After the ring's CQEs: the ready plain watchers, to the sink.
  void ep_collect();

  // --- completion reads (invariants 6-8) ----------------------------------------

  bool recv_capable(const FdState* s) const {
    return comp_ && (s->consume & kReadable) && !s->recv_off && (!s->dgram || dgram_ok_);
  }
  bool send_capable(const FdState* s) const { return send_ok_ && (s->consume & kWritable); }
  bool wants_send(const FdState* s) const { return send_capable(s) && (s->want & kWritable); }

  bool wants_recv(const FdState* s) const {
    return recv_capable(s) && (s->want & kReadable) && !s->recv_paused && !s->starved &&
           !s->bulk && s->end == kNoEnd;
  }

  // The poll's share of the interest: a reader fed by a multishot recv
  // needs no POLLIN (a starved one does, until buffers return), nor does a
  // listener fed by a multishot accept. So does a writer whose sends are
  // completion sends.
  int poll_want(const FdState* s) const {
    int w = s->want;
    const bool fallback = (s->starved || s->bulk) && !s->recv_armed && !s->recv_paused;
    if (recv_capable(s) && !fallback) w &= ~kReadable;
    if (accept_capable(s)) w &= ~kReadable;
    if (send_capable(s)) w &= ~kWritable;
    return w;
  }

  // --- accepting ahead (invariant 10) -------------------------------------------

  bool accept_capable(const FdState* s) const { return accept_ok_ && s->accepts && !s->accept_off; }
  // Armed: until kAcceptAhead wait. Not armed: from half that down
  // (hysteresis, invariant 10).
  bool wants_accept(const FdState* s) const {
    const size_t limit = s->accept_armed ? kAcceptAhead : kAcceptAhead / 2 + 1;
    return accept_capable(s) && (s->want & kReadable) && s->end == kNoEnd &&
           s->accepted_count() < limit;
  }
  bool prep_accept(FdState* s);
  bool prep_accept_cancel(FdState* s) { return prep_cancel(s, kTagAccept, &s->accept_cancel); }
  void on_accept(FdState* s, int res, unsigned flags);
  // Closes every connection accepted ahead and not taken.
  void drop_accepted(FdState* s);

  // --- completion sends (invariant 9) -------------------------------------------

  bool prep_send(FdState* s);
  bool prep_send_cancel(FdState* s) { return prep_cancel(s, kTagSend, &s->send_cancel); }

  // The writer went: a queued send is dropped; one in flight is cancelled
  // (by the caller) and keeps its memory until its CQE.
  void drop_send(FdState* s);
  void leak_send_memory(FdState* s);
  void on_send(FdState* s, int res);

  void wake_writer(FdState* s) {
    if (s->in_wake) return;
    s->in_wake = true;
    send_wake_.push_back(s);
  }

  bool prep_recv(FdState* s);

  // The recv ends with -ECANCELED (after any data it had already taken).
  bool prep_recv_cancel(FdState* s) {
    return prep_cancel(s, s->recv_dgram ? kTagDgram : kTagRecv, &s->recv_cancel);
  }
  // `dgram`: the CQE is a RECVMSG's (its buffer is from dbuf_).
  void on_recv(FdState* s, int res, unsigned flags, bool dgram = false);
  // Pauses s's reader: cancels its recv and waits for the final CQE, so
  // everything the kernel read for it is in s->held (invariant 6).
  void stop_receiving(FdState* s);

  // --- datagram readers (invariant 12, uring_dgram.cc) ---------------------------

  // The ring whose buffers s's held entries and recv use.
  BufRing& ring_of(const FdState* s) { return s->dgram ? dbuf_ : buf_; }
  // Registers the datagram ring on first use; false (datagram readers stay
  // on readiness) when it cannot be made.
  bool ensure_dgram_ring();
  bool prep_recvmsg(FdState* s);
  // The first held datagram's payload (up to len bytes) and sender, then
  // its buffer goes back; returns the bytes copied.
  size_t take_datagram(FdState* s, char* buf, size_t len, sockaddr_storage* addr,
                       socklen_t* alen);

  // A reader that is not reading (paused) must not hoard provided buffers:
  // its data moves to the heap and the buffer goes back at once.
  void keep(FdState* s, unsigned bid, uint32_t len);

  // Every held provided buffer to the heap (the buffers are about to go).
  void spill(FdState* s);
  size_t take(FdState* s, char* buf, size_t len);
  void drop_held(FdState* s);

  void mark_ready(FdState* s) {
    if (s->in_ready) return;
    s->in_ready = true;
    ready_recv_.push_back(s);
  }

  bool undelivered() const;

  // Level-triggered, as for polls: a reader is reported in every poll()
  // while data it has not taken is held for it.
  void report_ready();

  void link(FdState* s) {
    s->next = all_;
    if (all_) all_->prev = s;
    all_ = s;
  }
  void unlink(FdState* s) {
    if (s->prev) s->prev->next = s->next;
    else all_ = s->next;
    if (s->next) s->next->prev = s->prev;
  }

  UringOptions opts_;
  UringSetup strongest_;
  io_uring ring_{};
  unsigned flags_ = 0;
  unsigned features_ = 0;
  bool ring_open_ = false;
  bool enabled_ = false;
  pthread_t owner_{};
  int efd_ = -1;
  bool wake_armed_ = false;
  int epfd_ = -1;            // plain watchers' epoll set (invariant 11)
  bool ep_armed_ = false;    // its poll is in flight
  bool ep_ready_ = false;    // its poll fired: collect after reaping
  size_t ep_count_ = 0;      // registrations in it
  std::vector<FdState*> ep_by_fd_;  // fd -> the registered FdState (epoll data is the fd)
  std::vector<FdState*> pending_;
  std::vector<Completion> stash_;  // taken off the ring outside poll()
  FdState* all_ = nullptr;  // every FdState, for close() and rebuild()
  // Completion reads.
  bool comp_ = false;       // on: consuming readers get multishot recvs
  BufRing buf_;
  bool dgram_ok_ = false;   // on: datagram readers get multishot recvmsgs
  BufRing dbuf_;            // their ring, made on first use
  BackendCounters counters_;
  int recv_inflight_ = 0;   // multishot recvs whose final CQE is not reaped
  bool send_ok_ = false;    // on: consuming writers get completion sends
  int send_inflight_ = 0;
  bool accept_ok_ = false;  // on: accepting listeners get a multishot accept
  int accept_inflight_ = 0;
  std::vector<FdState*> send_wake_;   // a send ended: report kWritable
  std::vector<FdState*> ready_recv_;  // may hold data for their reader
  std::vector<FdState*> starved_;     // ended with -ENOBUFS
};

}  // namespace uvpy::loop::uring
