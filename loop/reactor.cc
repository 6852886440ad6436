// reactor.cc — see reactor.h for the phases and the ownership rules.
#include "reactor.h"

#include <cerrno>
#include <cmath>

#include "clock.h"

namespace uvpy::loop {

namespace {
// asyncio caps one select() at 24 hours (base_events.MAXIMUM_SELECT_TIMEOUT).
constexpr double kMaxTimeoutSeconds = 24 * 3600;
}  // namespace

Reactor::Reactor(std::unique_ptr<Backend> backend)
    : backend_(std::move(backend)), resolution_(monotonic_resolution()) {
  backend_->set_sink(this);
}

Reactor::~Reactor() { close(); }

double Reactor::time() const { return monotonic_now(); }

int Reactor::set_io(int fd, int which, Callback cb, Callback* old, bool consume,
                    bool accepts, bool datagrams, bool socket) {
  IoWatcher* w;
  auto it = watchers_.find(fd);
  bool fresh = it == watchers_.end();
  if (fresh) {
    w = new IoWatcher;
    w->fd = fd;
    w->socket = socket;
  } else {
    w = it->second;
  }
  Callback& slot = which == kReadable ? w->reader : w->writer;
  Callback prev = slot;
  const int prev_consume = w->consume;
  const bool prev_accepts = w->accepts;
  const bool prev_datagrams = w->datagrams;
  slot = cb;
  w->consume = consume ? (w->consume | which) : (w->consume & ~which);
  if (which == kReadable) {
    w->accepts = accepts;
    w->datagrams = datagrams && consume;
  }
  int rc = backend_->io_update(w, w->interest());
  if (rc < 0) {
    slot = prev;
    w->consume = prev_consume;
    w->accepts = prev_accepts;
    w->datagrams = prev_datagrams;
    if (fresh) {
      backend_->io_close(w);
      delete w;
    } else {
      backend_->io_update(w, w->interest());
    }
    return rc;
  }
  cb.retain();
  if (fresh) watchers_.emplace(fd, w);
  *old = prev;
  return 0;
}

void Reactor::clear_io(int fd, int which, Callback* old) {
  *old = Callback{};
  auto it = watchers_.find(fd);
  if (it == watchers_.end()) return;
  IoWatcher* w = it->second;
  Callback& slot = which == kReadable ? w->reader : w->writer;
  *old = slot;
  slot = Callback{};
  w->consume &= ~which;
  if (which == kReadable) {
    w->accepts = false;
    w->datagrams = false;
  }
  if (w->interest() == 0) {
    watchers_.erase(it);
    backend_->io_close(w);
    delete w;
  } else {
    backend_->io_update(w, w->interest());
  }
}

int Reactor::accept(int fd, sockaddr_storage* addr, socklen_t* len) {
  auto it = watchers_.find(fd);
  const int conn = backend_->accept(it == watchers_.end() ? nullptr : it->second, fd, addr, len);
  if (conn >= 0) ++counters_.accepted;
  return conn;
}

ssize_t Reactor::recv(int fd, void* buf, size_t len) {
  auto it = watchers_.find(fd);
  return backend_->recv(it == watchers_.end() ? nullptr : it->second, fd, buf, len);
}

int Reactor::recv_stop(int fd, std::string* held) {
  auto it = watchers_.find(fd);
  return it == watchers_.end() ? 1 : backend_->recv_stop(it->second, held);
}

ssize_t Reactor::recv_datagram(int fd, void* buf, size_t len, sockaddr_storage* addr,
                               socklen_t* alen) {
  auto it = watchers_.find(fd);
  return backend_->recv_datagram(it == watchers_.end() ? nullptr : it->second, fd, buf, len, addr,
                                 alen);
}

void Reactor::recv_stop_datagrams(int fd, std::vector<HeldDatagram>* held) {
  auto it = watchers_.find(fd);
  if (it != watchers_.end()) backend_->recv_stop_datagrams(it->second, held);
}

bool Reactor::inject_recv_error(int fd, int err) {
  auto it = watchers_.find(fd);
  if (it == watchers_.end()) return false;
  backend_->inject_recv_error(it->second, err);
  return true;
}

int Reactor::send_start(int fd, const SendRef* parts, int count) {
  auto it = watchers_.find(fd);
  return it == watchers_.end() ? -ENOTSUP : backend_->send_start(it->second, parts, count);
}

ssize_t Reactor::send_result(int fd) {
  auto it = watchers_.find(fd);
  return it == watchers_.end() ? -ENOENT : backend_->send_result(it->second);
}

bool Reactor::has_io(int fd, int which) const {
  auto it = watchers_.find(fd);
  if (it == watchers_.end()) return false;
  return static_cast<bool>(which == kReadable ? it->second->reader : it->second->writer);
}

Reactor::WatcherKinds Reactor::watcher_kinds() const {
  WatcherKinds k;
  for (const auto& [fd, w] : watchers_) {
    if (w->datagrams) ++k.datagrams;
    else if (w->accepts) ++k.listeners;
    else if (w->consume != 0) ++k.streams;
    else ++k.other;
  }
  return k;
}

void Reactor::on_io(IoWatcher* w, int events) { io_pending_.push_back({w, events}); }

void Reactor::post(Callback cb) {
  {
    std::lock_guard<std::mutex> lock(inbox_mu_);
    inbox_.push_back(cb);
  }
  // Only the first post after the loop last drained pays for a wakeup.
  if (!armed_.exchange(true, std::memory_order_acq_rel)) backend_->wakeup();
}

void Reactor::drain_inbox() {
  if (!armed_.load(std::memory_order_acquire)) return;
  // Disarm before taking the batch: a post racing with us either lands in
  // this batch or re-arms and wakes the next poll; none is ever stranded.
  armed_.store(false, std::memory_order_release);
  {
    std::lock_guard<std::mutex> lock(inbox_mu_);
    inbox_swap_.swap(inbox_);
  }
  for (const Callback& cb : inbox_swap_) ready_.push_owned(cb);
  inbox_swap_.clear();
}

int Reactor::compute_timeout(int64_t* now_ns) {
  if (!ready_.empty() || stopping_ || armed_.load(std::memory_order_acquire)) return 0;
  if (timers_.empty()) return -1;
  *now_ns = monotonic_ns();
  double delay = timers_.next_when() - static_cast<double>(*now_ns) * 1e-9;
  // Written so a NaN deadline counts as due, as in asyncio (max(0, nan) is
  // 0): cast to int, NaN would become a negative timeout, i.e. "forever".
  if (!(delay > 0)) return 0;
  if (delay > kMaxTimeoutSeconds) delay = kMaxTimeoutSeconds;
  // Round up: waking a little late is correct, waking early only spins.
  return static_cast<int>(std::ceil(delay * 1000.0));
}

// Adaptive, like an adaptive mutex: a spin that ends in a post doubles the
// budget (up to spin_ns_), one that times out halves it. On an idle machine
// completions land within the window and the budget stays full; on an
// oversubscribed one (the spinning loop would steal the worker's core) it
// decays to nothing, then a cheap probe every 64 polls tries again.
bool Reactor::spin_for_post() {
  if (spin_budget_ns_ < 1000) {
    if (++spin_probe_ % 64 != 0) return false;
    spin_budget_ns_ = spin_ns_ / 4;
  }
  if (spin_budget_ns_ > spin_ns_) spin_budget_ns_ = spin_ns_;
  const double deadline = time() + static_cast<double>(spin_budget_ns_) * 1e-9;
  do {
    for (int i = 0; i < 64; ++i) {
      if (armed_.load(std::memory_order_acquire)) {
        spin_budget_ns_ = spin_budget_ns_ * 2 > spin_ns_ ? spin_ns_ : spin_budget_ns_ * 2;
        return true;
      }
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
  } while (time() < deadline);
  spin_budget_ns_ /= 2;
  return false;
}

int Reactor::run_once(BlockingScope* scope) {
  // 1-2. Wait. Only this phase may run without the GIL. An iteration that
  // the scope ended after its poll already queued what that poll found.
  if (resume_) {
    resume_ = false;
    return drain_ready();
  }
  // The clock is read before a poll only when the poll may block (or
  // compute_timeout() read it anyway): a busy loop pays one read per
  // iteration, the one phase 5 needs.
  int64_t poll_start = 0;
  int timeout = compute_timeout(&poll_start);
  end_busy();
  if (timeout == 0) {
    poll_start = 0;
  } else {
    if (poll_start == 0) poll_start = monotonic_ns();
    if (poll_end_ns_ != 0) counters_.run_ns += static_cast<uint64_t>(poll_start - poll_end_ns_);
  }
  if (timeout != 0 && scope != nullptr) {
    scope->enter();
    if (spin_ns_ > 0 && spin_for_post()) timeout = 0;
    backend_->poll(timeout);
    scope->leave();
  } else {
    backend_->poll(timeout);
  }
  // A poll that could not block counts as running: the loop had work.
  const int64_t poll_end = monotonic_ns();
  if (poll_start != 0) {
    counters_.poll_ns += static_cast<uint64_t>(poll_end - poll_start);
  } else if (poll_end_ns_ != 0) {
    counters_.run_ns += static_cast<uint64_t>(poll_end - poll_end_ns_);
  }
  poll_end_ns_ = poll_end;
  beacon_.since.store(poll_end, std::memory_order_relaxed);
  ++counters_.iterations;
  const bool proceed = scope == nullptr || scope->proceed();

  // 3. Work from other threads, ahead of this iteration's I/O and timers.
  drain_inbox();

  // 4. I/O: readers before writers, as asyncio's selector loop does.
  for (const Pending& p : io_pending_) {
    if ((p.events & kReadable) && p.w->reader) ready_.push(p.w->reader);
    if ((p.events & kWritable) && p.w->writer) ready_.push(p.w->writer);
  }
  io_pending_.clear();

  // 5. Timers due within the clock's resolution, like asyncio's end_time
  // (the clock read that ended phase 2 is "now").
  const double limit = static_cast<double>(poll_end) * 1e-9 + resolution_;
  while (TimerNode* n = timers_.pop_due(limit)) ready_.push_owned(n->cb);

  // 6. Callbacks ready at this point; new ones wait for the next iteration.
  if (!proceed) {
    resume_ = true;
    return -1;
  }
  return drain_ready();
}

void Reactor::end_long_spell(int64_t since, int64_t long_ns) {
  // `since` is cleared before the clock is read. The watchdog reads its
  // clock before `since` (watchdog.cc), so a spell it saw open at its
  // `now` ends here at a later one: a spell it reported is recorded as
  // long (watchdog.h rule 3). Read the other way round, a loop thread
  // descheduled between the read and the store would measure the spell
  // shorter than the watchdog saw it. seq_cst: the clock read does not
  // pass the store. A watchdog that finds `since` changed before
  // last_long is written takes its own clock as the end (rule 2).
  beacon_.since.store(0, std::memory_order_seq_cst);
  const int64_t now = monotonic_ns();
  if (now - since >= long_ns) {
    beacon_.last_long_end.store(now, std::memory_order_relaxed);
    beacon_.last_long_start.store(since, std::memory_order_release);
  }
}


void Reactor::close() {
  if (closed_) return;
  closed_ = true;
  resume_ = false;
  ready_.clear();
  timers_.clear();
  for (auto& [fd, w] : watchers_) {
    backend_->io_close(w);
    if (w->reader) w->reader.release();
    if (w->writer) w->writer.release();
    delete w;
  }
  watchers_.clear();
  {
    std::lock_guard<std::mutex> lock(inbox_mu_);
    inbox_swap_.swap(inbox_);
  }
  for (const Callback& cb : inbox_swap_) cb.release();
  inbox_swap_.clear();
  backend_->close();
}

}  // namespace uvpy::loop
