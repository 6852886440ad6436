// backend_select.cc — see backend_select.h.
#include "backend_select.h"

namespace uvpy::loop {
namespace {

// Rule 2: what "auto" tries, in order.
constexpr BackendKind kAutoOrder[] = {BackendKind::kLibuv, BackendKind::kIoUring};

std::unique_ptr<Backend> make_one(BackendKind kind, const BackendOptions& opts, std::string* why) {
  if (kind == BackendKind::kLibuv) return make_uv_backend(why);
  return make_uring_backend(why, opts.uring);
}

std::string failure(BackendKind kind, const std::string& why) {
  return kind == BackendKind::kLibuv ? "cannot create the libuv backend: " + why
                                     : "the io_uring backend is unavailable: " + why;
}

}  // namespace

bool parse_backend(std::string_view name, BackendKind* kind) {
  for (BackendKind k : {BackendKind::kAuto, BackendKind::kLibuv, BackendKind::kIoUring}) {
    if (name == backend_name(k)) {
      *kind = k;
      return true;
    }
  }
  return false;
}

const char* backend_name(BackendKind kind) {
  switch (kind) {
    case BackendKind::kLibuv:
      return "libuv";
    case BackendKind::kIoUring:
      return "io_uring";
    case BackendKind::kAuto:
      break;
  }
  return "auto";
}

std::unique_ptr<Backend> make_backend(const BackendOptions& opts, std::string* err) {
  std::string why;
  if (opts.kind != BackendKind::kAuto) {
    if (auto b = make_one(opts.kind, opts, &why)) return b;
    if (err) *err = failure(opts.kind, why);
    return nullptr;
  }
  std::string all;
  for (BackendKind kind : kAutoOrder) {
    why.clear();
    if (auto b = make_one(kind, opts, &why)) return b;
    all += (all.empty() ? "" : "; ") + failure(kind, why);
  }
  if (err) *err = all;
  return nullptr;
}

}  // namespace uvpy::loop
