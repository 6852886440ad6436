// backend.h — the seam between the reactor and the OS's readiness interface.
//
// Everything above this file is backend-agnostic: no libuv or liburing type
// appears in a header outside the backend's own .cc file. A backend only
// waits and reports; it never runs user code.
//
// Contract:
//  1. poll() is called on the loop thread, possibly without the GIL: it may
//     call only Sink::on_io / Sink::on_wakeup, which record, never run.
//  2. wakeup() is the one thread-safe entry point. Any number of calls made
//     while the loop is busy collapse into (at least) one early return of the
//     next poll().
//  3. io_update() sets the full interest mask of a watcher (0 = idle but
//     still registered); io_close() forgets it. After io_close returns the
//     backend never touches the watcher again.
//  4. Errors are negative errno values; nothing throws.
#pragma once
#include <memory>
#include <string>

namespace uvpy::loop {

enum IoEvents : int { kReadable = 1, kWritable = 2 };

struct IoWatcher;  // reactor.h

class Backend {
 public:
  struct Sink {
    virtual void on_io(IoWatcher* w, int events) = 0;
    virtual ~Sink() = default;
  };

  virtual ~Backend() = default;
  virtual const char* name() const = 0;

  // Blocks for at most timeout_ms (-1: until an event or wakeup; 0: don't
  // block) and reports readiness to the sink. Returns 0 or -errno.
  virtual int poll(int timeout_ms) = 0;
  virtual void wakeup() = 0;

  // Registers the watcher's fd on first use. Returns 0 or -errno (-EPERM for
  // a regular file, -EBADF for a closed fd), leaving nothing registered.
  virtual int io_update(IoWatcher* w, int events) = 0;
  virtual void io_close(IoWatcher* w) = 0;

  // Releases every OS resource. The backend is unusable afterwards.
  virtual void close() = 0;

  void set_sink(Sink* s) { sink_ = s; }

 protected:
  Sink* sink_ = nullptr;
};

// Factories. Each returns nullptr and sets *err (a reason) when the backend
// cannot run here.
std::unique_ptr<Backend> make_uv_backend(std::string* err);

// io_uring setups, strongest first; the factory starts at `strongest` and
// falls back down the list while the kernel rejects a flag (EINVAL).
enum class UringSetup {
  kDeferTaskrun,  // SINGLE_ISSUER | DEFER_TASKRUN (Linux 6.1+)
  kCoopTaskrun,   // SINGLE_ISSUER | COOP_TASKRUN (5.19+ / 6.0+)
  kCoop,          // COOP_TASKRUN alone
  kPlain,         // no flags
};
// nullptr (with the reason) when io_uring cannot run here: no kernel
// support, disabled by seccomp or sysctl, no memory, or uvpy built without
// liburing.
std::unique_ptr<Backend> make_uring_backend(std::string* err,
                                            UringSetup strongest = UringSetup::kDeferTaskrun);

}  // namespace uvpy::loop
