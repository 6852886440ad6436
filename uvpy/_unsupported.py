"""The asyncio.AbstractEventLoop methods uvpy does not implement yet.

asyncio.AbstractEventLoop raises a bare NotImplementedError from each of
them, which reads like a bug in the caller's code. Here each one raises
NotImplementedError naming the method and saying that uvpy does not
support it yet, so the message points at the loop. They stay coroutine
functions, as in asyncio: the error comes when the call is awaited.
"""

from __future__ import annotations

__all__ = ("UnsupportedMixin", "UNSUPPORTED")

# Every coroutine method of asyncio.AbstractEventLoop that uvpy.Loop lacks.
UNSUPPORTED = (
    "connect_read_pipe",
    "connect_write_pipe",
    "subprocess_exec",
    "subprocess_shell",
)


def _unsupported(name):
    message = f"loop.{name}() is not supported by uvpy yet"

    async def method(self, *args, **kwargs):
        raise NotImplementedError(message)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"Not supported by uvpy yet: raises NotImplementedError({message!r})."
    return method


class UnsupportedMixin:
    """Named NotImplementedErrors for the methods in UNSUPPORTED."""

    for _name in UNSUPPORTED:
        locals()[_name] = _unsupported(_name)
    del _name
