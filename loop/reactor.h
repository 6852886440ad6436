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
//                 unless BlockingScope::proceed() said no after the poll:
//                 then the next run_once starts here, without phases 1-5
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
#include "clock.h"
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

// Counters of the loop's own work, read by loop.stats(). Loop thread only:
// plain integers, incremented where the work is done, so keeping them costs
// an add each (and one clock read per iteration for the time split).
struct LoopCounters {
  uint64_t iterations = 0;
  uint64_t callbacks = 0;  // ready callbacks run (phase 6): handles, timers, I/O
  uint64_t poll_ns = 0;    // time in phase 2 polls that could block (waiting)
  uint64_t run_ns = 0;     // the rest of the time since the first poll
  uint64_t accepted = 0;   // connections taken through accept()
  uint64_t stream_bytes_in = 0;  // loop::Stream reads and writes (TCP, Unix,
  uint64_t stream_bytes_out = 0;  // pipes; TLS counts its records)
  uint64_t datagrams_in = 0;  // counted by the datagram transport
  uint64_t datagrams_out = 0;
  uint64_t datagram_bytes_in = 0;
  uint64_t datagram_bytes_out = 0;
};

// Lets the caller drop and retake a lock (the GIL) around the blocking poll,
// and end an iteration between its poll and its callbacks.
struct BlockingScope {
  virtual void enter() = 0;
  virtual void leave() = 0;
  // Called after every poll (blocking or not) with the lock held. False ends
  // the iteration once what the poll found is queued (phases 3-5): run_once
  // returns -1 without running a callback, and the next run_once runs the
  // queued work without polling first, so nothing is lost or reported twice.
  // The bindings return false when a Python signal handler raised (Ctrl-C
  // while the loop waits): the exception leaves run_forever before any
  // callback runs, as it leaves asyncio's select() call.
  virtual bool proceed() { return true; }
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

  // fd watchers by what watches them, for loop.stats().
  struct WatcherKinds {
    size_t streams = 0;    // a consuming reader or writer (native stream transports)
    size_t listeners = 0;  // an accepting reader
    size_t datagrams = 0;  // a datagram transport's reader
    size_t other = 0;      // add_reader/add_writer, sock_* waits, Python transports
  };
  WatcherKinds watcher_kinds() const;

  LoopCounters& counters() { return counters_; }
  const LoopCounters& counters() const { return counters_; }

  // The watchdog's view of this loop (watchdog.h): busy_since is the
  // monotonic time in ns at which the current iteration's poll ended, or 0
  // while the loop polls or is not running; the loop thread stores it twice
  // per iteration (relaxed: a watchdog needs the value, not ordering with
  // anything else; a watched loop ends a spell with a seq_cst store, see
  // end_long_spell). A busy spell that lasted at least long_ns is recorded
  // at its end, exactly, in last_long (its start and end), so a watchdog
  // that sampled the stall can report its true duration. mark_idle() is the
  // caller's "run_forever returned", which also ends a busy spell.
  struct BusyBeacon {
    std::atomic<int64_t> since{0};
    std::atomic<int64_t> long_ns{INT64_MAX};
    std::atomic<int64_t> last_long_start{0};
    std::atomic<int64_t> last_long_end{0};
  };
  BusyBeacon* beacon() { return &beacon_; }
  void mark_idle() { end_busy(); }

  // One iteration (see the header comment). Returns 0, or -1 when a ready
  // callback asked to abort (the rest stay queued) or the scope's proceed()
  // ended the iteration after its poll.
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
  int compute_timeout(int64_t* now_ns);
  bool spin_for_post();
  void drain_inbox();
  int drain_ready() { return ready_.drain(&counters_.callbacks); }
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
  bool resume_ = false;  // the last iteration ended after its poll: skip the next one
  LoopCounters counters_;
  int64_t poll_end_ns_ = 0;  // when the last poll ended (0: none yet)
  BusyBeacon beacon_;
  // Ends a busy spell (the poll is next, or run_forever returned). Only a
  // watched loop (long_ns set) pays for a clock read here.
  void end_busy() {
    const int64_t since = beacon_.since.load(std::memory_order_relaxed);
    if (since == 0) return;
    const int64_t long_ns = beacon_.long_ns.load(std::memory_order_relaxed);
    if (long_ns != INT64_MAX) return end_long_spell(since, long_ns);
    beacon_.since.store(0, std::memory_order_release);
  }
  void end_long_spell(int64_t since, int64_t long_ns);
  int64_t spin_ns_ = 0;         // the cap, set by the bindings per iteration
  int64_t spin_budget_ns_ = 0;  // adaptive, see spin_for_post()
  uint32_t spin_probe_ = 0;

  std::mutex inbox_mu_;
  std::vector<Callback> inbox_;     // guarded by inbox_mu_
  std::vector<Callback> inbox_swap_;  // loop thread only
  std::atomic<bool> armed_{false};  // true: a wakeup is already on its way
};

}  // namespace uvpy::loop
