// kernels.cc — see kernels.h. Kernels poll should_stop() every block so a
// cancelled task stops burning a core; the returned code is ignored then.
#include "kernels.h"

#include <algorithm>
#include <cstring>

namespace uvpy::exec::kernels {
namespace {
constexpr int64_t kBlock = 1 << 16;

const double* f64(const uvpy_ctx_t* c, int i) { return static_cast<const double*>(c->args[i].ptr); }
double* f64_rw(const uvpy_ctx_t* c, int i) { return static_cast<double*>(c->args[i].ptr); }
}  // namespace

int sum_f64(const uvpy_ctx_t* c) {
  const double* x = f64(c, 0);
  double acc = 0;
  for (int64_t b = c->begin; b < c->end; b += kBlock) {
    if (c->should_stop(c)) return 1;
    const int64_t e = std::min(c->end, b + kBlock);
    for (int64_t i = b; i < e; ++i) acc += x[i];
  }
  f64_rw(c, 1)[0] = acc;
  return 0;
}

int dot_f64(const uvpy_ctx_t* c) {
  const double* x = f64(c, 0);
  const double* y = f64(c, 1);
  double acc = 0;
  for (int64_t b = c->begin; b < c->end; b += kBlock) {
    if (c->should_stop(c)) return 1;
    const int64_t e = std::min(c->end, b + kBlock);
    for (int64_t i = b; i < e; ++i) acc += x[i] * y[i];
  }
  f64_rw(c, 2)[0] = acc;
  return 0;
}

int axpy_f64(const uvpy_ctx_t* c) {
  const double a = c->args[0].d;
  const double* x = f64(c, 1);
  double* y = f64_rw(c, 2);
  for (int64_t b = c->begin; b < c->end; b += kBlock) {
    if (c->should_stop(c)) return 1;
    const int64_t e = std::min(c->end, b + kBlock);
    for (int64_t i = b; i < e; ++i) y[i] += a * x[i];
  }
  return 0;
}

int sort_f64(const uvpy_ctx_t* c) {
  double* x = f64_rw(c, 0);
  std::sort(x + c->begin, x + c->end);
  return 0;
}

int fnv1a64(const uvpy_ctx_t* c) {
  const auto* p = static_cast<const unsigned char*>(c->args[0].ptr);
  uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a 64 offset basis
  for (int64_t b = c->begin; b < c->end; b += kBlock) {
    if (c->should_stop(c)) return 1;
    const int64_t e = std::min(c->end, b + kBlock);
    for (int64_t i = b; i < e; ++i) {
      h ^= p[i];
      h *= 0x100000001b3ULL;  // FNV-1a 64 prime
    }
  }
  std::memcpy(c->args[1].ptr, &h, sizeof h);
  return 0;
}

int noop(const uvpy_ctx_t*) { return 0; }

}  // namespace uvpy::exec::kernels
