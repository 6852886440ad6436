// tls.h — the native record path of a TLS connection (tls.cc): what the
// stream transport (transport.cc) calls when an SSLProtocol is attached to
// it. Private to bindings/.
#pragma once
#include "py.h"

namespace uvpy::py::transport {
struct Transport;
}

namespace uvpy::py::tls {

// One TLS connection's OpenSSL objects, borrowed from the ssl module's own
// SSLObject and MemoryBIOs (tls.cc, rule 4). Owned by the Transport.
struct Link;

// Attaches `sslproto` (uvpy._tls.SSLProtocol, the transport's protocol) to
// the transport's record path. 1: attached; 0: the native path is not
// available (the Python path stays; see status()); -1: an exception.
int attach(transport::Transport* t, PyObject* sslproto);
// Lets go of the link, if any (protocol switch, connection lost, dealloc).
void detach(transport::Transport* t);
int traverse(const Link* link, visitproc visit, void* arg);

// Received records: SSLProtocol.buffer_updated() for `n` bytes at `buf`.
// Returns as a stream owner callback does (0, or -1 to abort the drain).
int on_records(transport::Transport* t, const char* buf, size_t n);

// Adds TLSRecords' helpers to the module: _tls_status() and
// _tls_install_write(cls).
bool ready(PyObject* module);

}  // namespace uvpy::py::tls
