// backend_select.h — which backend a loop gets: the one place it is decided.
//
// The bindings (a Python loop's `backend=` argument or UVPY_BACKEND) and the
// C++ tests (tests/cpp/support.h) both come here.
//
// Rules:
//  1. A named backend is that backend or nothing: its failure is the error,
//     never a silent switch to another.
//  2. "auto" probes kAutoOrder in order, as Seastar's reactor probes its
//     backends, and takes the first that starts; its error lists every
//     reason. libuv comes first: io_uring is faster on some workloads and
//     slower on others (docs/io_uring.md, "Choosing it").
//  3. Nothing here reads the environment: options come from the caller.
#pragma once
#include <memory>
#include <string>
#include <string_view>

#include "backend.h"
#include "backend_uring.h"

namespace uvpy::loop {

enum class BackendKind { kAuto, kLibuv, kIoUring };

// "auto", "libuv" or "io_uring"; false for any other name.
bool parse_backend(std::string_view name, BackendKind* kind);
// The name parse_backend() takes for kind.
const char* backend_name(BackendKind kind);

struct BackendOptions {
  BackendKind kind = BackendKind::kAuto;
  UringOptions uring;  // used where the io_uring backend is made
};

// The backend opts ask for, or nullptr with *err saying why (rules 1, 2).
std::unique_ptr<Backend> make_backend(const BackendOptions& opts, std::string* err);

}  // namespace uvpy::loop
