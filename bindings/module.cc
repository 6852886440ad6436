// module.cc — the private extension module uvpy._uvpy.
//
// pybind11 owns the module object and the cold functions; the hot types
// (Handle, TimerHandle, LoopCore) are raw CPython types from handle.cc and
// loop_core.cc, added to the module here.
#include <pybind11/pybind11.h>

#include "py.h"

namespace py = pybind11;

namespace {

void set_hooks(py::object extract_stack, py::object handle_repr, py::object callback_repr,
               py::object slow_callback) {
  auto keep = [](PyObject*& slot, py::object& value) {
    Py_XDECREF(slot);
    slot = value.release().ptr();  // lives as long as the interpreter
  };
  keep(uvpy::py::hooks.extract_stack, extract_stack);
  keep(uvpy::py::hooks.handle_repr, handle_repr);
  keep(uvpy::py::hooks.callback_repr, callback_repr);
  keep(uvpy::py::hooks.slow_callback, slow_callback);
}

}  // namespace

PYBIND11_MODULE(_uvpy, m) {
  m.doc() = "uvpy's native core: the reactor, handles and the loop's fast paths.";
  m.attr("__version__") = UVPY_VERSION;  // pyproject.toml's, through CMake
  if (!uvpy::py::ready_types(m.ptr()) || !uvpy::py::init_executor(m.ptr()) ||
      !uvpy::py::ready_transport(m.ptr()) || !uvpy::py::ready_datagram(m.ptr()) ||
      !uvpy::py::ready_acceptor(m.ptr()))
    throw py::error_already_set();
  m.def("_set_hooks", &set_hooks, py::arg("extract_stack"), py::arg("handle_repr"),
        py::arg("callback_repr"), py::arg("slow_callback"),
        "Register the Python helpers the native layer formats and logs through.");
  m.attr("READABLE") = static_cast<int>(uvpy::loop::kReadable);
  m.attr("WRITABLE") = static_cast<int>(uvpy::loop::kWritable);
  // _io_set()'s reader kinds (loop_core.cc): a listener's, a datagram socket's.
  m.attr("IO_ACCEPTS") = 1;
  m.attr("IO_DATAGRAMS") = 2;
}
