"""UringOptions: the io_uring backend's switches, as an option of the loop.

    loop = uvpy.new_event_loop("io_uring", uring=uvpy.UringOptions(completion_accepts=False))
    loop.backend_info()   # {'backend': 'io_uring', 'completion_accepts': False, ...}

Each switch turns one completion feature of the io_uring backend off
(docs/io_uring.md, "Measurement switches"), so that a measurement can
price it against readiness on the same build. The defaults are what every
loop should run with; nothing else is tuned here.

Invariants:

1. ``uring=None`` means ``UringOptions.from_env()``: the UVPY_URING_*
   variables (README's table), so that bench/ can switch loops made by code
   it does not control. An explicit UringOptions ignores them, as
   ``backend=`` ignores UVPY_BACKEND.
2. Values are checked when the options are made: a switch is a bool
   (TypeError), a buffer count a power of two up to 32768 and a buffer size
   a positive int below 2**31 (ValueError). An environment value that does
   not parse is a ValueError naming the variable; loop creation raises it,
   whichever backend the loop gets.
3. Options are a request. A kernel without a feature runs without it, as
   it does by default; ``loop.backend_info()`` reports what is in effect.
4. Only the io_uring backend reads them: a libuv loop ignores them, so one
   UringOptions can go to ``backend="auto"``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

__all__ = ("UringOptions",)

_MAX_BUF_COUNT = 32768  # the kernel's limit on a provided-buffer ring
_MAX_BUF_SIZE = 2**31 - 1  # a receive's result is an int


@dataclasses.dataclass(frozen=True)
class UringOptions:
    """The io_uring backend's completion features (all on by default).

    ``completion``: completion I/O at all; off, the backend waits for
    readiness and reads, writes and accepts with syscalls. With it on,
    ``completion_sends`` (stream writes as ring sends),
    ``completion_accepts`` (listeners through one multishot accept) and
    ``completion_datagrams`` (datagram readers through a multishot
    recvmsg) each turn one feature off alone. ``buf_count`` x ``buf_size``
    is the provided-buffer ring stream reads land in.
    """

    completion: bool = True
    completion_sends: bool = True
    completion_accepts: bool = True
    completion_datagrams: bool = True
    buf_count: int = 256
    buf_size: int = 8192

    def __post_init__(self):
        for field in ("completion", "completion_sends", "completion_accepts",
                      "completion_datagrams"):
            value = getattr(self, field)
            if not isinstance(value, bool):
                raise TypeError(f"{field} must be a bool, not {type(value).__name__}")
        for field in ("buf_count", "buf_size"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{field} must be an int, not {type(value).__name__}")
            error = _size_error(field, value)
            if error:
                raise ValueError(error)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> UringOptions:
        """The options the UVPY_URING_* variables set (invariant 1); an
        unset or empty variable leaves its default."""
        env = os.environ if environ is None else environ
        kwargs = {}
        completion = env.get("UVPY_URING_COMPLETION", "")
        if completion == "0":
            kwargs["completion"] = False
        elif completion == "recv":
            kwargs["completion_sends"] = False
        elif completion not in ("", "1"):
            raise ValueError(f"UVPY_URING_COMPLETION must be '0', '1' or 'recv', not {completion!r}")
        for var, field in (("UVPY_URING_ACCEPT", "completion_accepts"),
                           ("UVPY_URING_DGRAM", "completion_datagrams")):
            value = env.get(var, "")
            if value in ("0", "1"):
                kwargs[field] = value == "1"
            elif value:
                raise ValueError(f"{var} must be '0' or '1', not {value!r}")
        for var, field in (("UVPY_URING_BUF_COUNT", "buf_count"),
                           ("UVPY_URING_BUF_SIZE", "buf_size")):
            value = env.get(var, "")
            if not value:
                continue
            try:
                number = int(value)
            except ValueError:
                raise ValueError(f"{var} must be an integer, not {value!r}") from None
            error = _size_error(field, number)
            if error:
                raise ValueError(f"{var}={value}: {error}")
            kwargs[field] = number
        return cls(**kwargs)


def _size_error(field: str, value: int) -> str | None:
    """Why value can not be buf_count or buf_size (invariant 2), or None."""
    if field == "buf_count":
        if 1 <= value <= _MAX_BUF_COUNT and not value & (value - 1):
            return None
        return f"buf_count must be a power of two from 1 to {_MAX_BUF_COUNT}, not {value}"
    if 1 <= value <= _MAX_BUF_SIZE:
        return None
    return f"buf_size must be from 1 to {_MAX_BUF_SIZE}, not {value}"


def resolve(uring: UringOptions | None) -> UringOptions:
    """What a new loop runs with for ``uring=`` (invariant 1)."""
    if uring is None:
        return UringOptions.from_env()
    if not isinstance(uring, UringOptions):
        raise TypeError(f"uring must be a uvpy.UringOptions or None, not {type(uring).__name__}")
    return uring
