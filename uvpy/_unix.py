"""Unix stream sockets on uvpy: UnixTransport and the loop's
create_unix_connection / create_unix_server.

A Unix stream connection is the same native transport as a TCP one
(_uvpy.TransportCore over one loop::Stream, see _tcp.TCPTransport);
UnixTransport only names it and skips the TCP_NODELAY probe. Listeners
are served by _tcp.TCPMixin's accept path, which asks
_stream_transport_type() for the class by the listener's family. TLS
(ssl=) runs over it as over TCP: asyncio's SSLProtocol on a UnixTransport
(_tls.py).

Invariants (asyncio's _UnixSelectorEventLoop has the same ones):

1. Paths are str, bytes or os.PathLike (os.fspath); a leading NUL names a
   Linux abstract socket, which has no file and is never stat()ed,
   removed or cleaned up.
2. Before binding a path, a stale socket file there is removed; a file
   that is not a socket is left alone (bind then fails with EADDRINUSE,
   reported as asyncio words it). A failed bind closes the socket.
3. cleanup_socket (the default from Python 3.13 on, as there) records the
   inode of the bound path; when the server stops serving that socket the
   path is unlinked only if it still has that inode, so a newer server's
   socket at the same path survives. A socket uvpy.serve's supervisor bound
   (or a copy of one, _serveworker.is_inherited) is never recorded: its
   file is the supervisor's, and the other workers still listen on it.
4. ssl= is checked as asyncio checks it, before any socket or file is
   touched: create_unix_connection with ssl needs server_hostname (""
   skips the name check), create_unix_server takes an SSLContext or None.
   A TLS connection is a UnixTransport under SSLProtocol, so a handshake
   that fails closes the socket (_tls invariant 2).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import sys
from asyncio import tasks
from asyncio.log import logger

from . import _serveworker
from ._server import Server
from ._tcp import TCPTransport

__all__ = ("UnixTransport", "UnixMixin")

_CLEANUP_DEFAULT = sys.version_info >= (3, 13)


def _is_abstract(path):
    # An empty name asks the kernel for an autobound abstract address.
    return not path or path[0] in (0, "\x00")


def _unix_stream_required(sock):
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")


def remove_stale_socket(path):
    """Remove a socket file left at path by an earlier listener (not abstract)."""
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        # The directory may allow creating the socket but not stat()ing it.
        logger.error("Unable to check or remove stale UNIX socket %r: %r", path, err)


class UnixTransport(TCPTransport):
    """A Unix stream connection as an asyncio.Transport (native I/O path)."""

    __slots__ = ()
    _maybe_ip = False


class UnixMixin:
    """create_unix_connection / create_unix_server (see the module docstring)."""

    def _stream_transport_type(self, family):
        return UnixTransport if family == socket.AF_UNIX else TCPTransport

    async def create_unix_connection(self, protocol_factory, path=None, *, ssl=None, sock=None,
                                     server_hostname=None, ssl_handshake_timeout=None,
                                     ssl_shutdown_timeout=None):
        """Connect to the Unix socket at path (or use sock); return (transport, protocol)."""
        assert server_hostname is None or isinstance(server_hostname, str)
        if ssl:
            if server_hostname is None:
                raise ValueError("you have to pass server_hostname when using ssl")
        else:
            if server_hostname is not None:
                raise ValueError("server_hostname is only meaningful with ssl")
            if ssl_handshake_timeout is not None:
                raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
            if ssl_shutdown_timeout is not None:
                raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")

        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")
            path = os.fspath(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0)
            try:
                sock.setblocking(False)
                await self.sock_connect(sock, path)
            except BaseException:
                sock.close()
                raise
        else:
            if sock is None:
                raise ValueError("no path and sock were specified")
            _unix_stream_required(sock)
            sock.setblocking(False)

        return await self._create_connection_transport(
            sock, protocol_factory, ssl, server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout, transport_type=UnixTransport)

    async def create_unix_server(self, protocol_factory, path=None, *, sock=None, backlog=100,
                                 ssl=None, ssl_handshake_timeout=None, ssl_shutdown_timeout=None,
                                 start_serving=True, cleanup_socket=_CLEANUP_DEFAULT):
        """Listen on the Unix socket at path (or on sock); return a Server."""
        if isinstance(ssl, bool):
            raise TypeError("ssl argument must be an SSLContext or None")
        if ssl_handshake_timeout is not None and not ssl:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        if ssl_shutdown_timeout is not None and not ssl:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")

        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")
            path = os.fspath(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            if not _is_abstract(path):
                remove_stale_socket(path)
            try:
                sock.bind(path)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    raise OSError(errno.EADDRINUSE,
                                  f"Address {path!r} is already in use") from None
                raise
            except BaseException:
                sock.close()
                raise
        else:
            if sock is None:
                raise ValueError("path was not specified, and no sock specified")
            _unix_stream_required(sock)

        accept_ahead = path is not None  # _tcp._start_serving: sock= may be shared
        if cleanup_socket and not _serveworker.is_inherited(sock):
            # (uvpy.serve's supervisor owns the file of a socket it bound.)
            bound = sock.getsockname()
            if not _is_abstract(bound):
                try:
                    self._unix_server_inodes[sock] = os.stat(bound).st_ino
                except FileNotFoundError:
                    pass

        sock.setblocking(False)
        server = Server(self, [sock], protocol_factory, backlog, ssl, ssl_handshake_timeout,
                        ssl_shutdown_timeout, accept_ahead=accept_ahead)
        if start_serving:
            server._start_serving()
            await tasks.sleep(0)  # let the accept watcher settle, as asyncio
        return server

    @property
    def _unix_server_inodes(self):
        # listening socket -> inode of its path (invariant 3); made on first use.
        inodes = self.__dict__.get("_unix_inodes")
        if inodes is None:
            inodes = self.__dict__["_unix_inodes"] = {}
        return inodes

    def _stop_serving(self, sock):
        inodes = self.__dict__.get("_unix_inodes")
        ino = inodes.pop(sock, None) if inodes else None
        path = sock.getsockname() if ino is not None else None
        super()._stop_serving(sock)
        if path is None:
            return
        try:
            if os.stat(path).st_ino == ino:
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as err:
            logger.error("Unable to clean up listening UNIX socket %r: %r", path, err)
