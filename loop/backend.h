// backend.h — the seam between the reactor and the OS's I/O interface.
//
// Everything above this file is backend-agnostic: no libuv or liburing type
// appears in a header outside the backend's own files. A backend waits for
// readiness and reports it (contracts 1-4), and, where the OS lets it, does
// a watcher's I/O itself: reads ahead for a stream or a datagram reader,
// sends a stream's queue, accepts ahead for a listener (5-9). Either way it
// only records; it never runs user code.
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
//  5. Consuming reads. A watcher whose `consume` flag is set (a Stream's
//     reader) reads only through recv(); the backend may read its fd ahead
//     (io_uring: a multishot recv into a provided-buffer ring) and reports
//     kReadable while data, EOF or an error waits to be recv()'d. A plain
//     watcher (add_reader from Python) is readiness-only: the backend never
//     takes a byte from under it. Where a backend lacks an opcode or
//     feature, recv() is the plain syscall: never a failure.
//  6. recv_stop() ends reading ahead and hands over whatever was read ahead
//     but not yet recv()'d, so nothing is lost or reordered when a reader
//     pauses (its watcher may then be forgotten).
//  7. Consuming writes. A watcher whose writer consumes (a Stream with a
//     non-empty write queue) may hand the backend a send with
//     send_start(); 0 means it is on its way and its result comes back as
//     one kWritable report, collected with send_result(). -ENOTSUP means
//     "not here": wait for kWritable readiness and send yourself. A send
//     shares ownership of the memory it reads (SendRef::owner), so the
//     writer may drop its queue at any time; dropping kWritable (or
//     io_close) cancels the send.
//  8. Accepting listeners. A watcher whose `accepts` flag is set (a
//     server's listening socket) takes connections only through accept();
//     the backend may accept ahead for it (io_uring: a multishot accept)
//     and reports kReadable while an accepted connection or an error waits
//     to be accept()ed. Connections accepted ahead and never taken are
//     closed when the watcher goes, as the kernel resets those left in a
//     closed listener's backlog. Where a backend cannot accept ahead,
//     accept() is the plain accept4(): never a failure.
//  9. Datagram readers. A consuming reader whose `datagrams` flag is set (a
//     datagram transport's) reads only through recv_datagram(): one whole
//     datagram and its sender per call, never merged or split. The backend
//     may receive ahead (io_uring: a multishot RECVMSG into a ring of
//     datagram-sized provided buffers) and reports kReadable while a
//     datagram or an error waits. A datagram is truncated only where
//     recvfrom() into the caller's `len` bytes would truncate it, given
//     an owner whose `len` is at most the backend's payload room
//     (UringOptions::dgram_buf_size; DatagramCore's max_size).
//     recv_stop_datagrams() is contract 6 for datagrams: reading ahead
//     ends, and what was received ahead is handed over in order. Where a
//     backend cannot receive ahead, recv_datagram() is the plain
//     recvfrom(): never a failure.
#pragma once
#include <sys/socket.h>
#include <sys/types.h>

#include <cerrno>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace uvpy::loop {

enum IoEvents : int { kReadable = 1, kWritable = 2 };

struct IoWatcher;  // reactor.h

// One piece of a send: [data, data+len) inside memory kept alive by owner.
struct SendRef {
  const char* data;
  size_t len;
  std::shared_ptr<char[]> owner;
};

// One datagram received ahead and handed back by recv_stop_datagrams()
// (contract 9), or the error the receive ended with (err < 0; no data).
struct HeldDatagram {
  std::string data;
  sockaddr_storage addr;
  socklen_t addrlen;
  int err;
};

// Event counts a backend keeps for tests and benchmarks.
struct BackendCounters {
  uint64_t dgram_ring = 0;    // datagrams taken from the provided-buffer ring
  uint64_t dgram_nobufs = 0;  // datagram receives ended by an empty ring (-ENOBUFS)
};

// One setting a backend runs with, as loop.backend_info() reports it: a
// switch (flag: value 0 or 1), a number, or a name (text). It is what is in
// effect after init's fallbacks (a feature the kernel lacks is off), not
// what the options asked for.
struct BackendSetting {
  const char* name;
  unsigned long value = 0;
  bool flag = false;
  const char* text = nullptr;  // set: the setting is this name, value unused
};

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

  // Contract 5: n > 0 bytes copied into buf, 0 end of stream, -EAGAIN
  // nothing now, other -errno an error. w may be null (no watcher).
  virtual ssize_t recv(IoWatcher* w, int fd, void* buf, size_t len) {
    (void)w;
    for (;;) {
      ssize_t n = ::recv(fd, buf, len, 0);
      if (n >= 0) return n;
      if (errno == EINTR) continue;
      return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }
  }
  // Contract 6: appends what was read ahead to *held and returns 1, or the
  // end read ahead after it (0 EOF, -errno). Reading ahead resumes when the
  // reader is installed again.
  virtual int recv_stop(IoWatcher* w, std::string* held) {
    (void)w;
    (void)held;
    return 1;
  }
  // Contract 7. send_result(): n >= 0 bytes sent, -errno the send's error,
  // -EINPROGRESS still in flight, -ENOENT no send started.
  virtual int send_start(IoWatcher* w, const SendRef* parts, int count) {
    (void)w;
    (void)parts;
    (void)count;
    return -ENOTSUP;
  }
  virtual ssize_t send_result(IoWatcher* w) {
    (void)w;
    return -ENOENT;
  }
  // Contract 8: the accepted fd (non-blocking, close-on-exec) with the
  // peer's address in *addr/*len (*len 0: the peer was gone before its
  // address could be read), -EAGAIN nothing now, other -errno an error.
  // w may be null (no watcher).
  virtual int accept(IoWatcher* w, int fd, sockaddr_storage* addr, socklen_t* len) {
    (void)w;
    for (;;) {
      *len = sizeof *addr;
      int c = ::accept4(fd, reinterpret_cast<sockaddr*>(addr), len, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (c >= 0) return c;
      if (errno == EINTR) continue;
      return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }
  }

  // Contract 9: n >= 0 bytes of one datagram copied into buf (its first
  // len bytes when it is longer), its sender in *addr/*alen (*alen 0: an
  // unnamed sender), -EAGAIN nothing now, other -errno an error (the
  // socket's pending error, e.g. ECONNREFUSED). w may be null.
  virtual ssize_t recv_datagram(IoWatcher* w, int fd, void* buf, size_t len,
                                sockaddr_storage* addr, socklen_t* alen) {
    (void)w;
    for (;;) {
      *alen = sizeof *addr;
      ssize_t n = ::recvfrom(fd, buf, len, 0, reinterpret_cast<sockaddr*>(addr), alen);
      if (n >= 0) return n;
      if (errno == EINTR) continue;
      return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }
  }
  // Contract 9: appends what was received ahead to *held, in order.
  // Receiving ahead resumes when the reader is installed again.
  virtual void recv_stop_datagrams(IoWatcher* w, std::vector<HeldDatagram>* held) {
    (void)w;
    (void)held;
  }
  // A test hook: the next receive armed for w's fd ends at once with err
  // (-errno), as if the kernel had refused it.
  virtual void inject_recv_error(IoWatcher* w, int err) {
    (void)w;
    (void)err;
  }
  virtual BackendCounters counters() const { return {}; }
  // The settings in effect (BackendSetting); none where there is no choice.
  virtual std::vector<BackendSetting> settings() const { return {}; }

  void set_sink(Sink* s) { sink_ = s; }

 protected:
  Sink* sink_ = nullptr;
};

// The libuv backend; nullptr and *err (a reason) when it cannot start. The
// io_uring backend's factory and options are in backend_uring.h; which
// backend a loop gets is decided in backend_select.h.
std::unique_ptr<Backend> make_uv_backend(std::string* err);

}  // namespace uvpy::loop
