// uring_buf_ring.cc — see uring_buf_ring.h.
#include "uring_buf_ring.h"

#include <sys/mman.h>

#include <cerrno>

namespace uvpy::loop {

int BufRing::init(io_uring* ring, uint16_t group, unsigned count, unsigned size, bool no_huge) {
  if (count == 0 || count > 32768 || (count & (count - 1)) != 0 || size == 0) return -EINVAL;
  // Both regions page-aligned and lazily backed: an idle loop pays for the
  // mapping, not for the pages.
  size_t ring_bytes = count * sizeof(io_uring_buf);
  void* mem = mmap(nullptr, ring_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return -errno;
  size_t bufs_bytes = static_cast<size_t>(count) * size;
  void* bufs = mmap(nullptr, bufs_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (bufs == MAP_FAILED) {
    int err = -errno;
    munmap(mem, ring_bytes);
    return err;
  }
  if (no_huge) madvise(bufs, bufs_bytes, MADV_NOHUGEPAGE);  // advice only: a failure is harmless
  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<uint64_t>(mem);
  reg.ring_entries = count;
  reg.bgid = group;
  int rc = io_uring_register_buf_ring(ring, &reg, 0);
  if (rc < 0) {
    munmap(bufs, bufs_bytes);
    munmap(mem, ring_bytes);
    return rc;
  }
  br_ = static_cast<io_uring_buf_ring*>(mem);
  ring_mem_ = mem;
  ring_bytes_ = ring_bytes;
  bufs_ = static_cast<char*>(bufs);
  bufs_bytes_ = bufs_bytes;
  count_ = count;
  size_ = size;
  group_ = group;
  io_uring_buf_ring_init(br_);
  const int mask = io_uring_buf_ring_mask(count);
  for (unsigned i = 0; i < count; ++i)
    io_uring_buf_ring_add(br_, data(i), size, static_cast<unsigned short>(i), mask, static_cast<int>(i));
  io_uring_buf_ring_advance(br_, static_cast<int>(count));
  avail_ = count;
  return 0;
}

void BufRing::recycle(unsigned bid) {
  io_uring_buf_ring_add(br_, data(bid), size_, static_cast<unsigned short>(bid),
                        io_uring_buf_ring_mask(count_), 0);
  io_uring_buf_ring_advance(br_, 1);  // a release store: visible to the kernel now
  ++avail_;
}

void BufRing::release(bool safe) {
  if (ring_mem_ == nullptr) return;
  if (safe) {
    munmap(bufs_, bufs_bytes_);
    munmap(ring_mem_, ring_bytes_);
  }
  br_ = nullptr;
  ring_mem_ = nullptr;
  bufs_ = nullptr;
  count_ = avail_ = 0;
}

}  // namespace uvpy::loop
