/* Kernels for tests/integration/test_offload.py, built by its fixture with
 * cc. mix_direct is the plain C function a program would call through
 * ctypes; mix_all and mix_chunk do the same work behind uvpy_kernel.h's
 * ABI, for uvpy.offload (the whole array in one call) and
 * uvpy.parallel_for (one call per chunk). All three run mix_range, so the
 * offloaded results must equal the direct one bit for bit. */
#include <math.h>
#include <stdint.h>

#include "uvpy_kernel.h"

/* y[i] = a * x[i] + sin(y[i]) for i in [begin, end). */
static void mix_range(double a, const double* x, double* y, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) y[i] = a * x[i] + sin(y[i]);
}

void mix_direct(double a, const double* x, double* y, int64_t n) { mix_range(a, x, y, 0, n); }

/* Arguments of both kernels (signature "drw"): a, x (float64, read), y
 * (float64, written, as long as x). */

/* For uvpy.offload: the whole array in one call. */
int mix_all(const uvpy_ctx_t* c) {
  if (c->args[1].len != c->args[2].len) return 22; /* EINVAL: KernelError(code=22) */
  mix_range(c->args[0].d, (const double*)c->args[1].ptr, (double*)c->args[2].ptr, 0,
            c->args[2].len / (int64_t)sizeof(double));
  return 0;
}

/* For uvpy.parallel_for(kernel, len(y), ...): the chunk [begin, end). */
int mix_chunk(const uvpy_ctx_t* c) {
  if (c->args[1].len != c->args[2].len) return 22;
  mix_range(c->args[0].d, (const double*)c->args[1].ptr, (double*)c->args[2].ptr, c->begin, c->end);
  return 0;
}
