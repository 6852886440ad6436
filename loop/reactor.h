// reactor.h — the event loop core: one iteration is a fixed list of phases.
//
//   run_once():
//     1. timeout  0 if anything is ready, a stop is pending or another
//                 thread posted work; else until the next timer; else forever
//     2. poll     the backend waits (the caller may drop the GIL around this
//                 phase only, via BlockingScope) and records ready fds
//     3. inbox    work posted by other threads moves to ready
//     4. io       ready fds queue their reader, then their writer callback
//     5. timers   every timer due by now + clock resolution moves to ready
//     6. ready    run what was ready when this phase began (ReadyQueue::drain)
//
// Order: asyncio has one FIFO for call_soon and call_soon_threadsafe. Here
// posted work waits in the inbox, so call_soon() first moves any posted work
// into the ready queue: a post that happened before a call_soon runs before
// it, and posted work runs ahead of the next iteration's I/O and timers, as
// in asyncio.
//
// Threads: everything is loop-thread only, except post() and wakeup(), which
// are the single way in from other threads: a mutex-guarded inbox plus one
// coalesced backend wakeup per batch (the `armed_` flag).
//
// Ownership: the ready queue, the timer heap, fd watchers and the inbox each
// hold one reference to every callback they contain (see callback.h).
// close() releases all of them, so a closed reactor holds nothing.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "backend.h"
#include "callback.h"
#include "ready_queue.h"
#include "timer_heap.h"

namespace uvpy::loop {

// One per watched fd; owned by the reactor.
struct IoWatcher {
  int fd = -1;
  Callback reader;
  Callback writer;
  void* backend_data = nullptr;  // the backend's private per-fd state
  // Directions that consume (backend.h, 5 and 7): the reader reads only via
  // Reactor::recv, the writer sends only via Reactor::send_start.
  int consume = 0;
  // A listener whose reader takes connections only via Reactor::accept
  // (contract 8), so the backend may accept ahead for it.
  bool accepts = false;
  // A datagram socket's consuming reader, which takes one datagram at a
  // time only via Reactor::recv_datagram (contract 9).
  bool datagrams = false;
  // The fd is a connected socket (accept() made it), set when the watcher
  // is made: the backend may skip checking that the fd can be polled.
  bool socket = false;

  int interest() const { return (reader ? kReadable : 0) | (writer ? kWritable : 0); }
};

// Lets the caller drop and retake a lock (the GIL) around the blocking poll.
struct BlockingScope {
  virtual void enter() = 0;
  virtual void leave() = 0;
  virtual ~BlockingScope() = default;
};

class Reactor final : private Backend::Sink {
 public:
  explicit Reactor(std::unique_ptr<Backend> backend);
  ~Reactor() override;
  Reactor(const Reactor&) = delete;
  Reactor& operator=(const Reactor&) = delete;

  const char* backend_name() const { return backend_->name(); }
  double time() const;
  double clock_resolution() const { return resolution_; }

  // --- loop thread ---------------------------------------------------------
  void call_soon(Callback cb) {
    drain_inbox();
    ready_.push(cb);
  }
  void add_timer(TimerNode* n) { timers_.insert(n); }
  bool cancel_timer(TimerNode* n) { return timers_.remove(n); }

  // Installs cb as the fd's reader (or writer). Returns 0 or -errno. The
  // previous callback, if any, is handed back in *old with its reference.
  // A reader installed with consume=true reads only through recv() below,
  // which lets the backend read ahead for it (backend.h, contract 5); a
  // writer installed so sends only through send_start() (contract 7).
  // A reader installed with accepts=true (a listening socket's) takes
  // connections only through accept() below (contract 8); one installed
  // with datagrams=true (and consume=true) takes datagrams only through
  // recv_datagram() (contract 9). socket=true vouches that fd is a socket
  // (IoWatcher::socket); it matters only to the call that creates the fd's
  // watcher.
  int set_io(int fd, int which, Callback cb, Callback* old, bool consume = false,
             bool accepts = false, bool datagrams = false, bool socket = false);
  // Removes the fd's reader (or writer); the callback is handed back in *old
  // with its reference (empty if there was none).
  void clear_io(int fd, int which, Callback* old);
  bool has_io(int fd, int which) const;
  // A consuming reader's read: n > 0, 0 EOF, -EAGAIN, -errno.
  ssize_t recv(int fd, void* buf, size_t len);
  // Stops reading ahead for fd; see Backend::recv_stop.
  int recv_stop(int fd, std::string* held);
  // A consuming writer's send; see Backend::send_start / send_result.
  int send_start(int fd, const SendRef* parts, int count);
  ssize_t send_result(int fd);
  // An accepting reader's accept: the new fd, -EAGAIN, -errno.
  int accept(int fd, sockaddr_storage* addr, socklen_t* len);
  // A datagram reader's read; see Backend::recv_datagram.
  ssize_t recv_datagram(int fd, void* buf, size_t len, sockaddr_storage* addr, socklen_t* alen);
  // Stops receiving ahead for fd; see Backend::recv_stop_datagrams.
  void recv_stop_datagrams(int fd, std::vector<HeldDatagram>* held);
  // Test hook; see Backend::inject_recv_error. false: fd has no watcher.
  bool inject_recv_error(int fd, int err);
  BackendCounters backend_counters() const { return backend_->counters(); }
  std::vector<BackendSetting> backend_settings() const { return backend_->settings(); }
  size_t watcher_count() const { return watchers_.size(); }

  // Before blocking in poll, spin up to `ns` (without the GIL) waiting for a
  // post from another thread. The bindings set it while a few executor jobs
  // of this loop are in flight, so a completion skips two sleeping-thread
  // wakeups (the "almost no latency" hand-back). 0 disables.
  void set_spin_ns(int64_t ns) { spin_ns_ = ns; }

  void stop() { stopping_ = true; }
  bool stopping() const { return stopping_; }
  void clear_stop() { stopping_ = false; }

  // One iteration (see the header comment). Returns 0, or -1 when a ready
  // callback asked to abort (the rest stay queued).
  int run_once(BlockingScope* scope);

  size_t ready_count() const { return ready_.size(); }

  // Calls f(callback) once for every reference the reactor holds: the ready
  // queue, the timer heap, fd watchers and the inbox. Stops at the first
  // non-zero result and returns it. This is what a garbage collector above
  // needs to see through the reactor (the bindings' LoopCore traverse).
  // Callbacks being run right now are held by the running phase, not here.
  // Not concurrently with a loop-thread phase (the bindings' GIL orders it).
  template <class F>
  int for_each_held(F&& f) {
    if (int rc = ready_.for_each(f)) return rc;
    if (int rc = timers_.for_each(f)) return rc;
    for (const auto& [fd, w] : watchers_) {
      if (w->reader) {
        if (int rc = f(w->reader)) return rc;
      }
      if (w->writer) {
        if (int rc = f(w->writer)) return rc;
      }
    }
    std::lock_guard<std::mutex> lock(inbox_mu_);
    for (const Callback& cb : inbox_) {
      if (int rc = f(cb)) return rc;
    }
    return 0;
  }
  size_t timer_count() const { return timers_.size(); }

  // Drops every queued callback, timer and watcher, then the backend.
  void close();
  bool closed() const { return closed_; }

  // --- any thread ----------------------------------------------------------
  // Queues cb (the caller's reference is handed over) and wakes the loop.
  void post(Callback cb);
  void wakeup() { backend_->wakeup(); }

 private:
  void on_io(IoWatcher* w, int events) override;
  int compute_timeout();
  bool spin_for_post();
  void drain_inbox();
  void forget_if_idle(IoWatcher* w);

  std::unique_ptr<Backend> backend_;
  ReadyQueue ready_;
  TimerHeap timers_;
  std::unordered_map<int, IoWatcher*> watchers_;
  struct Pending {
    IoWatcher* w;
    int events;
  };
  std::vector<Pending> io_pending_;
  double resolution_;
  bool stopping_ = false;
  bool closed_ = false;
  int64_t spin_ns_ = 0;         // the cap, set by the bindings per iteration
  int64_t spin_budget_ns_ = 0;  // adaptive, see spin_for_post()
  uint32_t spin_probe_ = 0;

  std::mutex inbox_mu_;
  std::vector<Callback> inbox_;     // guarded by inbox_mu_
  std::vector<Callback> inbox_swap_;  // loop thread only
  std::atomic<bool> armed_{false};  // true: a wakeup is already on its way
};

}  // namespace uvpy::loop
