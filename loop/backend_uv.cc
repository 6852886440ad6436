// backend_uv.cc — the portable Backend on libuv.
//
// One uv_loop_t per reactor, with three kinds of handle:
//   - uv_async_t   the cross-thread wakeup (uv_async_send coalesces by itself);
//   - uv_timer_t   the poll timeout: armed just before uv_run(UV_RUN_ONCE),
//                  because uvpy keeps its own timer heap and only needs
//                  libuv to stop waiting at the next deadline (its callback
//                  calls uv_stop(), see on_poll_timeout for why);
//   - uv_poll_t    one per watched fd (libuv allows one poll handle per fd),
//                  allocated here and freed only in its close callback, as
//                  libuv requires; the IoWatcher may die before that.
//
// An fd closed under its watcher. The kernel drops a closed file from the
// epoll set by itself, so a registered watcher just goes quiet, as under
// asyncio's selector. But uv_poll_start() only queues the registration:
// libuv's epoll_ctl runs at the top of the next uv_run(), and libuv aborts
// the process when it fails -- EBADF if the watcher's owner closed the fd
// in a callback in between (a socket closed under a pending sock_recv,
// sock_connect...). So every start is recorded in starting_, and poll()
// checks those fds before uv_run(): a closed one is stopped and parked,
// reporting nothing, until the next io_update(). A start always registers
// afresh (uv_poll_start deregisters first), so an fd number reopened under
// its watcher registers the new file and needs no check beyond "open".
//
// Socket watchers reuse poll handles. uv_poll_init() checks its fd before
// anything is watched: an epoll_ctl ADD and DEL (uv__io_check_fd, to refuse
// a regular file) and an ioctl(FIONBIO); uv_close() then stops the handle a
// second time, another epoll_ctl DEL (failing ENOENT). For a connection
// that came from accept() (IoWatcher::socket) none of that says anything:
// the fd is a non-blocking socket. So io_close() keeps the stopped handle
// in pool_ (uv_poll_stop has taken it off the epoll set and out of libuv's
// fd table, and it is bound to no fd), and the next socket watcher takes it
// with only its io_watcher.fd set -- the one field uv_poll_init sets from
// the fd (libuv 1.44's uv_poll_init/uv__io_init; the struct is public in
// uv/unix.h). Per accepted connection that is 4 syscalls fewer (of 10 the
// libuv backend made beyond the recv/send), measured with strace. What
// remains is libuv's: uv_poll_start() deregisters before it registers (an
// epoll_ctl DEL failing ENOENT) and the real ADD, one DEL when the watcher
// goes, and the F_GETFD of check_starting() below. The alternatives were
// worse: uv_poll_init_socket() is uv_poll_init() on Unix, and registering
// the fds with an epoll set of our own nested in libuv's costs an
// epoll_wait per iteration. Other fds (add_reader's, pipes') still go
// through uv_poll_init(), whose checks they need.
//
// libuv stops a poll handle when the fd reports POLLERR and passes a negative
// status. asyncio's selectors treat an error as "readable and writable" and
// keep watching (level-triggered), so the callback re-arms the handle and
// reports both directions of interest.
#include <fcntl.h>
#include <uv.h>

#include <cerrno>
#include <vector>

#include "backend.h"
#include "reactor.h"

namespace uvpy::loop {
namespace {

struct PollSlot {
  uv_poll_t handle;
  IoWatcher* watcher;  // nullptr once closed
  Backend::Sink* sink;
  int events;
  std::vector<PollSlot*>* starting;  // the backend's starting_
};

int to_uv(int events) {
  return ((events & kReadable) ? UV_READABLE : 0) | ((events & kWritable) ? UV_WRITABLE : 0);
}

void on_poll(uv_poll_t* h, int status, int uv_events) {
  auto* slot = static_cast<PollSlot*>(h->data);
  if (slot->watcher == nullptr) return;
  int events = 0;
  if (status < 0) {
    events = slot->events;
    if (uv_poll_start(h, to_uv(slot->events), on_poll) == 0) slot->starting->push_back(slot);
  } else {
    if (uv_events & (UV_READABLE | UV_DISCONNECT)) events |= kReadable;
    if (uv_events & UV_WRITABLE) events |= kWritable;
  }
  if (events) slot->sink->on_io(slot->watcher, events & slot->events);
}

void free_on_close(uv_handle_t* h) { delete static_cast<PollSlot*>(h->data); }

// The poll timeout fired. libuv before 1.45 runs due timers at the top of
// uv_run(), before it computes how long to block: when the clock passes the
// deadline between uv_timer_start() and that point (a 1 ms timeout and a
// millisecond tick in between, or a preemption on a busy machine), the timer
// fires there, no timer is left armed, and epoll_wait blocks with no timeout
// at all -- the loop hangs with its timers due. uv_stop() turns that poll
// into a non-blocking one. When the timer fires after the poll, as it
// normally does, uv_run(UV_RUN_ONCE) is returning anyway and clears the flag.
void on_poll_timeout(uv_timer_t* t) { uv_stop(t->loop); }
void noop_async(uv_async_t*) {}

class UvBackend final : public Backend {
 public:
  int init() {
    int rc = uv_loop_init(&loop_);
    if (rc < 0) return rc;
    uv_async_init(&loop_, &async_, noop_async);
    uv_timer_init(&loop_, &timer_);
    uv_unref(reinterpret_cast<uv_handle_t*>(&timer_));
    open_ = true;
    return 0;
  }
  ~UvBackend() override { close(); }

  const char* name() const override { return "libuv"; }

  int poll(int timeout_ms) override {
    check_starting();
    if (timeout_ms == 0) {
      uv_run(&loop_, UV_RUN_NOWAIT);
      return 0;
    }
    if (timeout_ms > 0) {
      uv_update_time(&loop_);
      uv_timer_start(&timer_, on_poll_timeout, static_cast<uint64_t>(timeout_ms), 0);
      uv_ref(reinterpret_cast<uv_handle_t*>(&timer_));
    }
    uv_run(&loop_, UV_RUN_ONCE);
    if (timeout_ms > 0) {
      uv_timer_stop(&timer_);
      uv_unref(reinterpret_cast<uv_handle_t*>(&timer_));
    }
    return 0;
  }

  void wakeup() override { uv_async_send(&async_); }

  int io_update(IoWatcher* w, int events) override {
    auto* slot = static_cast<PollSlot*>(w->backend_data);
    if (slot == nullptr) {
      if (w->socket && !pool_.empty()) {
        // A stopped handle is bound to no fd: it takes the new one as
        // uv_poll_init would, without its checks (see the header).
        slot = pool_.back();
        pool_.pop_back();
        slot->handle.io_watcher.fd = w->fd;
      } else {
        slot = new PollSlot{};
        int rc = uv_poll_init(&loop_, &slot->handle, w->fd);
        if (rc < 0) {
          delete slot;
          return rc;
        }
      }
      slot->handle.data = slot;
      slot->watcher = w;
      slot->sink = sink_;
      slot->starting = &starting_;
      w->backend_data = slot;
    }
    slot->events = events;
    if (events == 0) return uv_poll_stop(&slot->handle);
    int rc = uv_poll_start(&slot->handle, to_uv(events), on_poll);
    if (rc == 0) starting_.push_back(slot);
    return rc;
  }

  void io_close(IoWatcher* w) override {
    auto* slot = static_cast<PollSlot*>(w->backend_data);
    if (slot == nullptr) return;
    w->backend_data = nullptr;
    slot->watcher = nullptr;
    slot->events = 0;
    uv_poll_stop(&slot->handle);  // off the epoll set and libuv's fd table
    if (pool_.size() < kPoolMax) {
      pool_.push_back(slot);
      return;
    }
    uv_close(reinterpret_cast<uv_handle_t*>(&slot->handle), free_on_close);
  }

  // Slots are freed only by close callbacks, which run inside uv_run(), so
  // every slot recorded since the last uv_run() is still allocated here
  // (io_close()d ones have no watcher and are skipped).
  void check_starting() {
    for (PollSlot* slot : starting_) {
      if (slot->watcher == nullptr || slot->events == 0) continue;
      if (::fcntl(slot->watcher->fd, F_GETFD) < 0 && errno == EBADF) {
        uv_poll_stop(&slot->handle);  // its deregistration ignores EBADF
        slot->events = 0;
      }
    }
    starting_.clear();
  }

  void close() override {
    if (!open_) return;
    open_ = false;
    uv_close(reinterpret_cast<uv_handle_t*>(&async_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&timer_), nullptr);
    // Poll handles still open belong to watchers the reactor closes first;
    // close any straggler so uv_loop_close can succeed.
    uv_walk(
        &loop_,
        [](uv_handle_t* h, void*) {
          if (!uv_is_closing(h)) uv_close(h, h->type == UV_POLL ? free_on_close : nullptr);
        },
        nullptr);
    starting_.clear();
    pool_.clear();  // closed by the walk above
    uv_run(&loop_, UV_RUN_DEFAULT);  // runs the close callbacks
    uv_loop_close(&loop_);
  }

 private:
  uv_loop_t loop_{};
  uv_async_t async_{};
  uv_timer_t timer_{};
  bool open_ = false;
  std::vector<PollSlot*> starting_;  // uv_poll_start()ed since the last poll
  // Stopped poll handles, open but bound to no fd, for the next socket
  // watcher (see the header). Bounded: a burst of closes beyond it closes
  // handles as before.
  static constexpr size_t kPoolMax = 1024;
  std::vector<PollSlot*> pool_;
};

}  // namespace

std::unique_ptr<Backend> make_uv_backend(std::string* err) {
  auto b = std::make_unique<UvBackend>();
  int rc = b->init();
  if (rc < 0) {
    if (err) *err = std::string("uv_loop_init failed: ") + uv_strerror(rc);
    return nullptr;
  }
  return b;
}

}  // namespace uvpy::loop
