// watchdog.cc — LoopCore._set_watchdog(): a loop::Watchdog (loop/watchdog.h)
// whose hooks call a Python reporter (uvpy/_watchdog.py) with the GIL.
//
// Rules:
//  1. Hooks run on the watchdog's own thread and take the GIL there
//     (PyGILState_Ensure). The loop thread is then either blocked outside
//     the GIL (time.sleep, a blocking socket call) or between two bytecodes
//     (a pure-Python loop gives up the GIL at the switch interval), so its
//     frames are still and safe to read. If it holds the GIL in native code
//     for the whole stall, the hook gets the GIL only after the stall; the
//     reporter is told (`current` false) and captures nothing. Held for
//     part of it, the stack is taken once native code lets go, and the
//     reporter gets how long the hook waited (`gil_wait`) to say so.
//  2. Nothing here waits for the loop thread while holding the GIL, and
//     stopping releases the GIL around the join (watchdog.h rule 4): a hook
//     waiting for the GIL finishes, then the thread exits.
//  3. The reporter holds the loop only weakly (uvpy/_watchdog.py), so the
//     watchdog state holds no cycle, and the loop stops its watchdog on
//     close() and dealloc, before the reactor (the beacon's owner) goes.
//  4. No hook takes the GIL once the interpreter is finalizing; uvpy stops
//     every watchdog at exit (atexit) before that.
#include <memory>

#include "clock.h"
#include "py.h"
#include "watchdog.h"

namespace uvpy::py {
namespace {

struct WatchState {
  std::unique_ptr<loop::Watchdog> dog;
  PyObject* reporter = nullptr;  // strong; touched only with the GIL
  loop::Reactor::BusyBeacon* beacon = nullptr;
};

bool finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing();
#else
  return _Py_IsFinalizing();
#endif
}

// Rule 1. end_ns 0: not ended.
void report(WatchState* st, const char* event, int64_t start_ns, int64_t end_ns) {
  if (finalizing()) return;  // rule 4
  const int64_t asked = loop::monotonic_ns();
  PyGILState_STATE g = PyGILState_Ensure();
  const double gil_wait = static_cast<double>(loop::monotonic_ns() - asked) * 1e-9;
  const bool current = st->beacon->since.load(std::memory_order_acquire) == start_ns;
  PyObject* end = end_ns ? PyFloat_FromDouble(static_cast<double>(end_ns) * 1e-9) : Py_NewRef(Py_None);
  PyObject* r = end ? PyObject_CallFunction(st->reporter, "sdOOd", event,
                                            static_cast<double>(start_ns) * 1e-9, end,
                                            current ? Py_True : Py_False, gil_wait)
                    : nullptr;
  if (r == nullptr) PyErr_WriteUnraisable(st->reporter);
  Py_XDECREF(r);
  Py_XDECREF(end);
  PyGILState_Release(g);
}

}  // namespace

// Called with the GIL held; returns with it held (rule 2).
void stop_watchdog(LoopCore* loop) {
  auto* st = static_cast<WatchState*>(loop->watchdog);
  if (st == nullptr) return;
  loop->watchdog = nullptr;
  Py_BEGIN_ALLOW_THREADS st->dog->stop();
  Py_END_ALLOW_THREADS
  st->dog.reset();
  Py_DECREF(st->reporter);
  delete st;
}

// _set_watchdog(threshold, linger, reporter) starts watching (replacing a
// previous watchdog); _set_watchdog(None) stops. Thresholds in seconds.
// reporter(event, start, end, current, gil_wait): event "stalled",
// "lingering" or "ended"; start and end in loop.time() seconds (end None
// unless ended); current: the stall is still going as the reporter runs;
// gil_wait: seconds this hook waited for the GIL.
PyObject* LoopCore_set_watchdog(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  auto* loop = reinterpret_cast<LoopCore*>(self);
  if (nargs == 1 && args[0] == Py_None) {
    stop_watchdog(loop);
    Py_RETURN_NONE;
  }
  if (nargs != 3 || !PyCallable_Check(args[2])) {
    PyErr_SetString(PyExc_TypeError, "_set_watchdog(threshold, linger, reporter) or _set_watchdog(None)");
    return nullptr;
  }
  const double threshold = PyFloat_AsDouble(args[0]);
  const double linger = PyFloat_AsDouble(args[1]);
  if (PyErr_Occurred()) return nullptr;
  if (!(threshold > 0) || !(linger >= threshold) || linger > 1e6) {
    PyErr_SetString(PyExc_ValueError, "need 0 < threshold <= linger");
    return nullptr;
  }
  if (loop->reactor == nullptr || loop->reactor->closed()) {
    PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
    return nullptr;
  }
  stop_watchdog(loop);
  auto* st = new WatchState;
  st->reporter = Py_NewRef(args[2]);
  st->beacon = loop->reactor->beacon();
  loop::Watchdog::Hooks hooks{
      [st](int64_t s) { report(st, "stalled", s, 0); },
      [st](int64_t s) { report(st, "lingering", s, 0); },
      [st](int64_t s, int64_t e) { report(st, "ended", s, e); },
  };
  st->dog = std::make_unique<loop::Watchdog>(st->beacon, static_cast<int64_t>(threshold * 1e9),
                                             static_cast<int64_t>(linger * 1e9), std::move(hooks));
  loop->watchdog = st;
  Py_RETURN_NONE;
}

}  // namespace uvpy::py
