// kernels.h — uvpy's built-in kernels (C ABI in uvpy_kernel.h), enough for
// common numeric work and for benchmarking without third-party packages.
// All are range-aware, so parallel_for can split them across workers.
//
//   sum_f64    (x: f64[], out: f64[nchunks]... )  see kernels.cc for each
//              kernel's argument list; bindings validate sizes before calling.
#pragma once
#include "uvpy_kernel.h"

namespace uvpy::exec::kernels {

// out[0] = sum(x[begin:end])          args: x (ro f64), out (rw f64, >= 1)
int sum_f64(const uvpy_ctx_t* ctx);
// out[0] = dot(x, y)[begin:end]        args: x, y (ro f64), out (rw f64)
int dot_f64(const uvpy_ctx_t* ctx);
// y[i] += a * x[i] for i in range      args: a (float), x (ro f64), y (rw f64)
int axpy_f64(const uvpy_ctx_t* ctx);
// sorts x[begin:end] in place          args: x (rw f64)
int sort_f64(const uvpy_ctx_t* ctx);
// out[0] = FNV-1a 64 of bytes[begin:end]  args: data (ro), out (rw u64)
int fnv1a64(const uvpy_ctx_t* ctx);
// does nothing: measures dispatch cost  args: none
int noop(const uvpy_ctx_t* ctx);

}  // namespace uvpy::exec::kernels
