// backend_uring_stub.cc — make_uring_backend() where uvpy was built without
// liburing: the io_uring backend is simply never available.
#include "backend.h"

namespace uvpy::loop {

std::unique_ptr<Backend> make_uring_backend(std::string* err, UringSetup) {
  if (err) *err = "uvpy was built without liburing";
  return nullptr;
}

std::unique_ptr<Backend> make_uring_backend(std::string* err, const UringOptions&) {
  if (err) *err = "uvpy was built without liburing";
  return nullptr;
}

UringOptions default_uring_options() { return UringOptions{}; }

}  // namespace uvpy::loop
