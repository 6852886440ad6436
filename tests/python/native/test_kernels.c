/* Kernels for tests/python/test_executor.py, built by its fixture with cc. */
#include <stdint.h>

#include "uvpy_kernel.h"

/* out[i] += 1 for every index of the chunk: proves exactly-once coverage. */
int mark_range(const uvpy_ctx_t* c) {
  int64_t* out = (int64_t*)c->args[0].ptr;
  for (int64_t i = c->begin; i < c->end; ++i) out[i] += 1;
  return 0;
}

/* Returns its int argument: non-zero becomes uvpy.KernelError. */
int fail_with(const uvpy_ctx_t* c) { return (int)c->args[0].i; }

/* Sets flag[2] when it starts, then spins until flag[0] is set; if asked to
 * stop first, sets flag[1]. */
int spin_until(const uvpy_ctx_t* c) {
  volatile int32_t* flag = (volatile int32_t*)c->args[0].ptr;
  flag[2] = 1;
  while (!flag[0]) {
    if (c->should_stop(c)) {
      flag[1] = 1;
      return 0;
    }
  }
  return 0;
}

/* out[0] = i + d: scalars arrive converted. */
int add_scalars(const uvpy_ctx_t* c) {
  double* out = (double*)c->args[2].ptr;
  out[0] = (double)c->args[0].i + c->args[1].d;
  return 0;
}
