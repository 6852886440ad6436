// backend_uring_stub.cc — make_uring_backend() where uvpy was built without
// liburing: the io_uring backend is simply never available.
#include "backend_uring.h"

namespace uvpy::loop {

std::unique_ptr<Backend> make_uring_backend(std::string* err, const UringOptions&) {
  if (err) *err = "uvpy was built without liburing";
  return nullptr;
}

}  // namespace uvpy::loop
