/* uvpy_kernel.h — the C ABI of native kernels run by uvpy.offload and
 * uvpy.parallel_for. Plain C so ctypes, cffi, numba @cfunc and C/C++
 * extensions can all provide kernels. No Python, no GIL: a kernel runs on an
 * executor worker while the interpreter keeps going.
 *
 *   int my_kernel(const uvpy_ctx_t* ctx);
 *
 * - ctx->args[0..nargs) are the arguments given in Python, converted:
 *     buffer-protocol objects (numpy arrays, bytes, bytearray, memoryview)
 *       -> UVPY_ARG_BUFFER: ptr, len (bytes), itemsize, readonly; the buffer
 *          is pinned (its Py_buffer held) until the kernel returns;
 *     int -> UVPY_ARG_INT (i), float -> UVPY_ARG_FLOAT (d).
 * - ctx->begin/ctx->end: the index range to process. offload() passes
 *   [0, 1); parallel_for(kernel, n, ...) splits [0, n) into chunks, one call
 *   per chunk, possibly concurrently: chunks must write disjoint memory.
 * - ctx->should_stop(ctx) turns non-zero once the awaiting task was
 *   cancelled or the executor is shutting down; long kernels poll it and
 *   return early (any return code).
 * - Return 0 on success. Any other value fails the call: Python gets
 *   uvpy.KernelError with .code set to the value.
 */
#ifndef UVPY_KERNEL_H
#define UVPY_KERNEL_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { UVPY_ARG_BUFFER = 1, UVPY_ARG_INT = 2, UVPY_ARG_FLOAT = 3 };

typedef struct uvpy_arg {
  int32_t kind;
  int32_t readonly; /* buffers only */
  void* ptr;        /* buffers only */
  int64_t len;      /* buffers only: size in bytes */
  int64_t itemsize; /* buffers only */
  int64_t i;        /* UVPY_ARG_INT */
  double d;         /* UVPY_ARG_FLOAT */
} uvpy_arg_t;

typedef struct uvpy_ctx {
  const uvpy_arg_t* args;
  int32_t nargs;
  int64_t begin;
  int64_t end;
  int (*should_stop)(const struct uvpy_ctx* ctx);
  void* reserved; /* uvpy's own; do not touch */
} uvpy_ctx_t;

typedef int (*uvpy_kernel_fn)(const uvpy_ctx_t* ctx);

/* Name of the PyCapsule uvpy accepts as a kernel (C++ extension authors:
 * PyCapsule_New((void*)my_kernel, UVPY_KERNEL_CAPSULE, NULL)). */
#define UVPY_KERNEL_CAPSULE "uvpy.kernel"

#ifdef __cplusplus
}
#endif
#endif /* UVPY_KERNEL_H */
