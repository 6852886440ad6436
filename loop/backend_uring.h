// backend_uring.h — the io_uring backend's factory and options.
//
// The backend itself is private (uring_backend.h); this is what its users
// choose: how strongly the ring is set up, and which completion features
// (contracts 5, 7, 8 and 9 of backend.h) it uses instead of readiness. Every
// option falls back at run time where the kernel lacks the feature, so a
// default is always safe; turning one off is for measuring what it buys.
#pragma once
#include <memory>
#include <string>

#include "backend.h"

namespace uvpy::loop {

// io_uring setups, strongest first; the factory starts at `strongest` and
// falls back down the list while the kernel rejects a flag (EINVAL).
enum class UringSetup {
  kDeferTaskrun,  // SINGLE_ISSUER | DEFER_TASKRUN (Linux 6.1+)
  kCoopTaskrun,   // SINGLE_ISSUER | COOP_TASKRUN (5.19+ / 6.0+)
  kCoop,          // COOP_TASKRUN alone
  kPlain,         // no flags
};

struct UringOptions {
  UringSetup strongest = UringSetup::kDeferTaskrun;
  // Completion I/O for consuming watchers (contract 5): stream reads
  // through a multishot recv; with completion_sends, queued stream writes
  // as ring sends (contract 7).
  bool completion = true;
  bool completion_sends = true;
  bool completion_accepts = true;  // listeners: a multishot accept (contract 8)
  unsigned buf_count = 256;        // provided buffers: a power of two (2 MiB: fits in cache)
  unsigned buf_size = 8192;        // bytes each; a bad value falls back at init
  // Datagram readers (contract 9) receive into a ring of their own, made
  // when the first one reads: each buffer takes one datagram whole, so its
  // payload room is the largest datagram a reader takes (the transport's
  // max_size): the ring truncates exactly where recvfrom() would.
  bool completion_datagrams = true;
  unsigned dgram_buf_count = 64;         // a power of two
  unsigned dgram_buf_size = 256 * 1024;  // payload bytes each
};

// nullptr (with the reason) when io_uring cannot run here: no kernel
// support, disabled by seccomp or sysctl, no memory, or uvpy built without
// liburing.
std::unique_ptr<Backend> make_uring_backend(std::string* err, const UringOptions& opts = {});

}  // namespace uvpy::loop
