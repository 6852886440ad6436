// stream.h — the I/O half of a stream transport on one connected fd: no
// Python, no policy. bindings/transport.cc puts asyncio's semantics on top.
//
//   reading   while on, the fd's reader is installed as a consuming one
//             (backend.h, contract 5); each readiness event does one
//             Reactor::recv() into a buffer the owner lends (the libuv
//             alloc_cb/read_cb pattern, which also fits BufferedProtocol)
//             and reports the outcome through on_read(). The backend may
//             have read ahead (io_uring); recv() then copies what it holds.
//   pausing   stop_reading() takes back whatever the backend read ahead
//             (held_); the next reads deliver it first, in order.
//   writing   write() sends at once when nothing is queued; whatever the
//             kernel does not take is copied into the write queue and the
//             fd's writer is installed until the queue drains: a consuming
//             writer (backend.h, contract 7) hands the backend one send of
//             up to kMaxIov chunks at a time and takes its result when the
//             writer runs (io_uring); where the backend says -ENOTSUP, the
//             writer waits for readiness and calls sendmsg itself.
//   flow      the queue crossing the high-water mark upwards reports
//             on_pause_writing(); draining to the low-water mark reports
//             on_resume_writing(). Each edge is reported once.
//   half      shutdown_write() sends FIN now, or once the queue drains.
//
// Invariants:
//  1. The reader is installed iff reading is on and the stream is open; the
//     writer iff the queue is non-empty and the stream is open.
//  2. Errors are -errno; nothing throws. A write error drops the queue and
//     removes the writer before on_write_error(); a read error or EOF turns
//     reading off before on_read() reports it.
//  3. The stream never closes its fd. close() removes both watchers and
//     drops the queue; the owner closes the fd afterwards.
//  4. Each reactor reference to the stream (an installed watcher, a queued
//     readiness callback) holds a StreamOwner::retain(), so the owner --
//     and the stream inside it -- outlives every callback the reactor runs.
//  7. At most one backend send is in flight (send_inflight_); it shares
//     the chunks it reads (Chunk::data), so dropping the queue never frees
//     memory the kernel may still read. Its result is consumed from the
//     queue before anything else is sent.
//  6. Bytes reach the owner in the order the peer sent them: held_ (what a
//     pause took back) always goes before anything recv() returns, and an
//     end (EOF or error) held with it goes after its data.
//  5. Owner callbacks return 0, or -1 to abort the reactor's current drain
//     (the owner keeps the reason). The stream returns at once after a -1,
//     in a consistent state. Inside write()/set_limits() on_pause_writing()
//     is the last step, so its result is the owner's own business.
#pragma once
#include <sys/types.h>
#include <sys/uio.h>

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "callback.h"

namespace uvpy::loop {

class Reactor;

class StreamOwner {
 public:
  virtual ~StreamOwner() = default;
  virtual void retain() = 0;
  virtual void release() = 0;
  // Where the next recv() goes: 1 with *buf/*len set, 0 to skip this read
  // (the owner has dealt with why, e.g. closed the transport), -1 to abort.
  virtual int read_buffer(char** buf, size_t* len) = 0;
  // The recv() result: n > 0 bytes, 0 end of stream, -EAGAIN nothing after
  // all (the owner gets its buffer back), other -errno a read error.
  virtual int on_read(ssize_t n) = 0;
  virtual int on_write_error(int err) = 0;
  virtual int on_pause_writing() = 0;
  virtual int on_resume_writing() = 0;
  // The writer drained the queue (not called when write() sent everything
  // at once).
  virtual int on_drain() = 0;
};

class Stream {
 public:
  static constexpr size_t kDefaultHigh = 64 * 1024;  // asyncio's defaults
  static constexpr size_t kDefaultLow = 16 * 1024;
  static constexpr int kMaxIov = 64;

  Stream(Reactor* reactor, int fd, StreamOwner* owner);
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  int fd() const { return fd_; }
  // The owner vouches that the fd is a connected socket (it came from
  // accept()), so the reactor's backend may skip its own checks of the fd.
  void set_known_socket() { known_socket_ = true; }
  bool closed() const { return closed_; }

  // Reading. start_reading() returns 0 or -errno (-ESHUTDOWN when the
  // reactor is closed).
  int start_reading();
  void stop_reading();
  bool reading() const { return reading_; }

  // Sends what it can now and queues the rest. Returns 0, or -errno with
  // nothing queued (a send error, or -ESHUTDOWN). May call
  // on_pause_writing().
  int write(const void* data, size_t len);
  // Same for several buffers (one sendmsg when the queue is empty).
  int writev(const struct iovec* iov, int count);
  size_t queued() const { return queued_; }
  // Drops the queue and removes the writer; no callback.
  void discard_writes();

  // Returns 0 or -errno of shutdown(SHUT_WR) when the queue is empty;
  // otherwise 0 and the shutdown happens when it drains.
  int shutdown_write();

  // high >= low. May call on_pause_writing() (never on_resume_writing(),
  // as asyncio).
  int set_limits(size_t high, size_t low);
  size_t high() const { return high_; }
  size_t low() const { return low_; }
  bool writing_paused() const { return paused_; }

  // Removes both watchers and drops the queue; the stream is inert after.
  void close();

 private:
  struct Chunk {
    std::shared_ptr<char[]> data;  // shared with a send in flight
    size_t cap, begin, end;
  };
  static const CallbackOps kReadOps;
  static const CallbackOps kWriteOps;
  static void cb_retain(void* p);
  static void cb_release(void* p);
  static int cb_read(void* p);
  static int cb_write(void* p);

  int on_readable();
  ssize_t read_some(char* buf, size_t len);
  int on_writable();
  void start_send();
  ssize_t send_iov(const struct iovec* iov, int count);
  void enqueue(const char* p, size_t n);
  void consume(size_t n);
  int watch(int which, bool on);
  int maybe_pause();

  Reactor* reactor_;
  StreamOwner* owner_;
  int fd_;
  bool reading_ = false;
  bool writer_on_ = false;
  bool send_inflight_ = false;  // a backend send's result is still to come
  bool paused_ = false;        // on_pause_writing() reported, resume not yet
  bool shut_pending_ = false;  // shutdown(SHUT_WR) once the queue drains
  bool closed_ = false;
  bool is_socket_ = true;      // false after ENOTSOCK: plain read()/writev()
  bool known_socket_ = false;  // set_known_socket(): passed on to set_io()
  size_t high_ = kDefaultHigh;
  size_t low_ = kDefaultLow;
  size_t queued_ = 0;
  std::string held_;    // read ahead before a pause, not yet delivered
  int held_end_ = 1;    // after held_: 0 EOF, -errno; 1 none
  // The write queue: chunks_[head_..] are live. A vector (no allocation
  // until the first queued write; std::deque allocates ~600 bytes up front,
  // paid by every idle connection) that is reset once it drains.
  std::vector<Chunk> chunks_;
  size_t head_ = 0;
};

}  // namespace uvpy::loop
