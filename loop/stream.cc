// stream.cc — see stream.h for the model and the invariants.
#include "stream.h"

#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>

#include "reactor.h"

namespace uvpy::loop {
namespace {

// Small writes coalesce into chunks of at least this size, so a burst of
// tiny writes costs a few allocations and a few iovecs, not one each.
constexpr size_t kChunkMin = 16 * 1024;

}  // namespace

// The reactor's references to a stream are references to its owner.
void Stream::cb_retain(void* p) { static_cast<Stream*>(p)->owner_->retain(); }
void Stream::cb_release(void* p) { static_cast<Stream*>(p)->owner_->release(); }
int Stream::cb_read(void* p) { return static_cast<Stream*>(p)->on_readable(); }
int Stream::cb_write(void* p) { return static_cast<Stream*>(p)->on_writable(); }

const CallbackOps Stream::kReadOps{cb_retain, cb_read, cb_release};
const CallbackOps Stream::kWriteOps{cb_retain, cb_write, cb_release};

Stream::Stream(Reactor* reactor, int fd, StreamOwner* owner)
    : reactor_(reactor), owner_(owner), fd_(fd) {}

// Installed watchers hold references to the owner, so by the time the
// owner (and this stream) dies, none is left in a live reactor.
Stream::~Stream() = default;

int Stream::watch(int which, bool on) {
  Callback old;
  if (on) {
    if (reactor_->closed()) return -ESHUTDOWN;
    Callback cb{which == kReadable ? &kReadOps : &kWriteOps, this};
    int rc = reactor_->set_io(fd_, which, cb, &old, is_socket_, false, false, known_socket_);
    if (rc < 0) return rc;
  } else {
    reactor_->clear_io(fd_, which, &old);
  }
  // A displaced watcher (ours, or a stray one on our fd) loses its
  // reference last: releasing may run arbitrary code.
  if (old) old.release();
  return 0;
}

// --- reading -----------------------------------------------------------------

int Stream::start_reading() {
  if (closed_) return -EBADF;
  if (reading_) return 0;
  int rc = watch(kReadable, true);
  if (rc < 0) return rc;
  reading_ = true;
  // What a pause took back is readable now, whether or not the fd is.
  if (!held_.empty() || held_end_ != 1) reactor_->call_soon(Callback{&kReadOps, this});
  return 0;
}

void Stream::stop_reading() {
  if (!reading_) return;
  reading_ = false;
  // Take back what the backend read ahead (invariant 6); its watcher may go.
  if (is_socket_ && held_end_ == 1) {
    int end = reactor_->recv_stop(fd_, &held_);
    if (end != 1) held_end_ = end;
  }
  watch(kReadable, false);
}

// One read: held_ first, then the reactor (consuming) or read() (not a
// socket). n >= 0, or -errno.
ssize_t Stream::read_some(char* buf, size_t len) {
  if (!held_.empty()) {
    size_t n = std::min(len, held_.size());
    std::memcpy(buf, held_.data(), n);
    held_.erase(0, n);
    if (held_.empty()) std::string().swap(held_);
    return static_cast<ssize_t>(n);
  }
  if (held_end_ != 1) {
    ssize_t n = held_end_;
    held_end_ = 1;
    return n;
  }
  for (;;) {
    if (is_socket_) {
      ssize_t n = reactor_->recv(fd_, buf, len);
      if (n != -ENOTSOCK) return n;
      is_socket_ = false;
    }
    ssize_t n = ::read(fd_, buf, len);
    if (n >= 0) return n;
    if (errno == EINTR) continue;
    return errno == EWOULDBLOCK ? -EAGAIN : -errno;
  }
}

int Stream::on_readable() {
  // Paused or closed after this wakeup was queued: nothing to do.
  if (!reading_ || closed_) return 0;
  char* buf;
  size_t len;
  if (int rc = owner_->read_buffer(&buf, &len); rc <= 0) return rc;
  ssize_t n = read_some(buf, len);
  if (n > 0) reactor_->counters().stream_bytes_in += static_cast<uint64_t>(n);
  if (n == -EAGAIN) return owner_->on_read(-EAGAIN);
  if (n <= 0) stop_reading();
  return owner_->on_read(n);
}

// --- writing -----------------------------------------------------------------

ssize_t Stream::send_iov(const struct iovec* iov, int count) {
  for (;;) {
    ssize_t n;
    if (is_socket_) {
      struct msghdr msg {};
      msg.msg_iov = const_cast<struct iovec*>(iov);
      msg.msg_iovlen = static_cast<size_t>(count);
      // MSG_NOSIGNAL: a reset peer is an EPIPE return, never a SIGPIPE.
      n = ::sendmsg(fd_, &msg, MSG_NOSIGNAL);
      if (n < 0 && errno == ENOTSOCK) {
        is_socket_ = false;
        continue;
      }
    } else {
      n = ::writev(fd_, iov, count);
    }
    if (n >= 0) {
      reactor_->counters().stream_bytes_out += static_cast<uint64_t>(n);
      return n;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return -EAGAIN;
    return -errno;
  }
}

void Stream::enqueue(const char* p, size_t n) {
  if (n == 0) return;
  queued_ += n;
  if (head_ < chunks_.size()) {
    Chunk& last = chunks_.back();
    size_t take = std::min(n, last.cap - last.end);
    std::memcpy(last.data.get() + last.end, p, take);
    last.end += take;
    p += take;
    n -= take;
  }
  if (n == 0) return;
  size_t cap = std::max(n, kChunkMin);
  if (head_ > 0 && chunks_.size() == chunks_.capacity()) {
    // Full with consumed chunks in front: reuse their slots before growing.
    chunks_.erase(chunks_.begin(), chunks_.begin() + static_cast<std::ptrdiff_t>(head_));
    head_ = 0;
  }
  Chunk c{std::shared_ptr<char[]>(new char[cap]), cap, 0, n};
  std::memcpy(c.data.get(), p, n);
  chunks_.push_back(std::move(c));
}

void Stream::consume(size_t n) {
  queued_ -= n;
  while (n > 0) {
    Chunk& c = chunks_[head_];
    size_t take = std::min(n, c.end - c.begin);
    c.begin += take;
    n -= take;
    if (c.begin == c.end) {
      c.data.reset();
      ++head_;
    }
  }
  if (head_ == chunks_.size()) {  // drained: keep the slots, not the chunks
    chunks_.clear();
    head_ = 0;
  }
}

int Stream::maybe_pause() {
  if (paused_ || queued_ <= high_) return 0;
  paused_ = true;
  return owner_->on_pause_writing();
}

int Stream::write(const void* data, size_t len) {
  struct iovec iov {
    const_cast<void*>(data), len
  };
  return writev(&iov, 1);
}

int Stream::writev(const struct iovec* iov, int count) {
  if (closed_) return -EBADF;
  size_t total = 0;
  for (int i = 0; i < count; ++i) total += iov[i].iov_len;
  if (total == 0) return 0;
  size_t sent = 0;
  if (queued_ == 0) {
    ssize_t n = send_iov(iov, std::min(count, IOV_MAX));
    if (n < 0 && n != -EAGAIN) return static_cast<int>(n);
    sent = n > 0 ? static_cast<size_t>(n) : 0;
    if (sent == total) return 0;
    int rc = watch(kWritable, true);
    if (rc < 0) return rc;
    writer_on_ = true;
  }
  for (int i = 0; i < count; ++i) {
    size_t len = iov[i].iov_len;
    if (sent >= len) {
      sent -= len;
      continue;
    }
    enqueue(static_cast<const char*>(iov[i].iov_base) + sent, len - sent);
    sent = 0;
  }
  if (!send_inflight_) start_send();
  // The owner sees a failed on_pause_writing() itself: the data is queued.
  maybe_pause();
  return 0;
}

// Hands the backend a send of the queue's head (contract 7); on -ENOTSUP
// (libuv, or no completion sends) the writer stays readiness-driven.
void Stream::start_send() {
  if (!is_socket_ || queued_ == 0) return;
  SendRef parts[kMaxIov];
  int count = 0;
  for (size_t i = head_; i < chunks_.size() && count < kMaxIov; ++i) {
    const Chunk& c = chunks_[i];
    parts[count++] = {c.data.get() + c.begin, c.end - c.begin, c.data};
  }
  if (reactor_->send_start(fd_, parts, count) == 0) send_inflight_ = true;
}

int Stream::on_writable() {
  if (closed_ || !writer_on_) return 0;
  if (send_inflight_) {
    ssize_t n = reactor_->send_result(fd_);
    if (n == -EINPROGRESS) return 0;
    send_inflight_ = false;
    if (n < 0 && n != -EAGAIN && n != -ENOENT) {
      discard_writes();
      return owner_->on_write_error(static_cast<int>(-n));
    }
    if (n > 0) {
      reactor_->counters().stream_bytes_out += static_cast<uint64_t>(n);
      consume(static_cast<size_t>(n));
    }
  } else if (queued_ > 0 && (start_send(), !send_inflight_)) {
    // Readiness (or the backend is busy with a cancelled send, whose end
    // wakes us again): send ourselves.
    struct iovec iov[kMaxIov];
    int count = 0;
    for (size_t i = head_; i < chunks_.size() && count < kMaxIov; ++i) {
      const Chunk& c = chunks_[i];
      iov[count++] = {c.data.get() + c.begin, c.end - c.begin};
    }
    ssize_t n = send_iov(iov, count);
    if (n == -EAGAIN) return 0;
    if (n < 0) {
      discard_writes();
      return owner_->on_write_error(static_cast<int>(-n));
    }
    consume(static_cast<size_t>(n));
  }
  if (paused_ && queued_ <= low_) {
    paused_ = false;
    // May write more, close, or abort (which empties the queue).
    if (owner_->on_resume_writing() < 0) return -1;
  }
  if (closed_ || !writer_on_) return 0;
  if (queued_ > 0) {
    if (!send_inflight_) start_send();
    return 0;
  }
  writer_on_ = false;
  watch(kWritable, false);
  if (shut_pending_) {
    shut_pending_ = false;
    ::shutdown(fd_, SHUT_WR);  // a failure here surfaces on the next read
  }
  return owner_->on_drain();
}

void Stream::discard_writes() {
  // A send in flight keeps what it reads (invariant 7); dropping the
  // writer cancels it.
  send_inflight_ = false;
  chunks_.clear();
  head_ = 0;
  queued_ = 0;
  if (writer_on_) {
    writer_on_ = false;
    watch(kWritable, false);
  }
}

int Stream::shutdown_write() {
  if (closed_) return -EBADF;
  if (queued_ > 0) {
    shut_pending_ = true;
    return 0;
  }
  return ::shutdown(fd_, SHUT_WR) < 0 ? -errno : 0;
}

int Stream::set_limits(size_t high, size_t low) {
  high_ = high;
  low_ = low;
  return maybe_pause();
}

void Stream::close() {
  if (closed_) return;
  closed_ = true;
  shut_pending_ = false;
  stop_reading();
  discard_writes();
  std::string().swap(held_);
  held_end_ = 1;
}

}  // namespace uvpy::loop
