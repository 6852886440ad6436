// uring_buf_ring.h — one provided-buffer ring (IORING_REGISTER_PBUF_RING,
// Linux 5.19+) for the io_uring backend's multishot recvs. Private to the
// io_uring backend: only its files include it.
//
// The kernel picks a free buffer when data arrives and names it in the
// CQE (IORING_CQE_F_BUFFER, id in the upper 16 bits of flags); the backend
// hands it back with recycle() once the data is copied out.
//
// Invariants:
//  1. `avail()` counts the buffers the kernel may still pick: count at
//     init, minus one per CQE that carried a buffer (taken()), plus one per
//     recycle(). A buffer is recycled exactly once per time it was taken.
//  2. The memory is the backend's, not the kernel's: release(true) unmaps
//     it and may be called only when no request that could pick a buffer
//     is in flight (every multishot recv's final CQE reaped). release(false)
//     leaks it on purpose (a ring we could not drain): a leak, never a
//     kernel write into freed memory.
//  3. Nothing throws; init() returns 0 or -errno and leaves nothing behind.
#pragma once
#include <liburing.h>

#include <cstddef>
#include <cstdint>

namespace uvpy::loop {

class BufRing {
 public:
  BufRing() = default;
  ~BufRing() { release(true); }
  BufRing(const BufRing&) = delete;
  BufRing& operator=(const BufRing&) = delete;

  // count: a power of two up to 32768; size: bytes per buffer. no_huge:
  // keep transparent huge pages off the buffers (large buffers of which
  // most bytes are never touched).
  int init(io_uring* ring, uint16_t group, unsigned count, unsigned size, bool no_huge = false);
  bool ready() const { return ring_mem_ != nullptr; }
  uint16_t group() const { return group_; }
  unsigned size() const { return size_; }
  unsigned count() const { return count_; }
  unsigned avail() const { return avail_; }

  char* data(unsigned bid) const { return bufs_ + static_cast<size_t>(bid) * size_; }
  void taken() { --avail_; }
  void recycle(unsigned bid);

  // Forgets the memory: unmapped when `safe`, leaked otherwise (invariant 2).
  void release(bool safe);

 private:
  io_uring_buf_ring* br_ = nullptr;
  void* ring_mem_ = nullptr;
  size_t ring_bytes_ = 0;
  char* bufs_ = nullptr;
  size_t bufs_bytes_ = 0;
  unsigned count_ = 0;
  unsigned size_ = 0;
  unsigned avail_ = 0;
  uint16_t group_ = 0;
};

}  // namespace uvpy::loop
