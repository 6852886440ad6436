// callback.h — the one type-erased unit of work the reactor moves around.
//
// The reactor never knows what it runs. A Callback is an object pointer plus
// a table of three functions supplied by whoever owns the object (bindings/
// for Python handles, tests for plain C++ lambdas):
//
//   retain(obj)   a queue or heap starts holding obj          (Py_INCREF)
//   run(obj)      execute it; returns 0, or -1 to abort the   (Handle._run)
//                 current drain (KeyboardInterrupt/SystemExit)
//   release(obj)  the queue or heap lets go of obj            (Py_DECREF)
//
// Invariant: every retain is paired with exactly one release, whether the
// callback ran, was cancelled, or was dropped when the reactor closed.
#pragma once

namespace uvpy::loop {

struct CallbackOps {
  void (*retain)(void* obj);
  int (*run)(void* obj);
  void (*release)(void* obj);
};

struct Callback {
  const CallbackOps* ops = nullptr;
  void* obj = nullptr;

  explicit operator bool() const { return ops != nullptr; }
  void retain() const { ops->retain(obj); }
  int run() const { return ops->run(obj); }
  void release() const { ops->release(obj); }
};

}  // namespace uvpy::loop
