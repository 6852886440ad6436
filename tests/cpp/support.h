// support.h — plain C++ callbacks for driving the reactor without Python.
//
// A Probe is a refcounted callback object. Tests assert that every retain is
// matched by a release (`refs == 0` at the end), the C++ analogue of
// libuv's MAKE_VALGRIND_HAPPY: a closed reactor holds nothing.
//
// make_reactor() builds on the backend named by UVPY_BACKEND (libuv when
// unset); ctest runs the reactor tests once per backend (see main.cc).
#pragma once
#include <cstdlib>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>

#include "backend_select.h"
#include "reactor.h"

namespace uvpy::test {

struct Probe {
  std::function<int()> fn;
  int refs = 0;
  int runs = 0;
  loop::TimerNode node;

  explicit Probe(std::function<int()> f = [] { return 0; }) : fn(std::move(f)) { node.cb = cb(); }

  static void retain(void* p) { ++static_cast<Probe*>(p)->refs; }
  static int run(void* p) {
    auto* self = static_cast<Probe*>(p);
    ++self->runs;
    return self->fn();
  }
  static void release(void* p) { --static_cast<Probe*>(p)->refs; }
  static constexpr loop::CallbackOps kOps{retain, run, release};

  loop::Callback cb() { return loop::Callback{&kOps, this}; }
};

inline std::string backend_under_test() {
  const char* b = std::getenv("UVPY_BACKEND");
  return b && *b ? b : "libuv";
}

inline std::unique_ptr<loop::Backend> make_backend(std::string* err) {
  const std::string name = backend_under_test();
  loop::BackendOptions opts;
  if (!loop::parse_backend(name, &opts.kind) || opts.kind == loop::BackendKind::kAuto) {
    *err = "UVPY_BACKEND must be libuv or io_uring, not " + name;
    return nullptr;
  }
  return loop::make_backend(opts, err);
}

// One reactor iteration that never blocks: the test's peer lives on this
// thread too, so a blocking poll could wait for a read only we can do.
inline void turn(loop::Reactor& r) {
  static Probe nop;
  r.call_soon(nop.cb());
  r.run_once(nullptr);
}

// Drops the reference set_io()/clear_io() handed back in old, if any.
inline void release(loop::Callback& old) {
  if (old) old.release();
  old = loop::Callback{};
}

inline std::unique_ptr<loop::Reactor> make_reactor() {
  std::string err;
  auto backend = make_backend(&err);
  if (!backend) throw std::runtime_error(err);
  return std::make_unique<loop::Reactor>(std::move(backend));
}

}  // namespace uvpy::test
