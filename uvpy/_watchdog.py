"""The blocked-loop watchdog: ``uvpy.watchdog(loop, threshold=0.1)``.

A native thread (loop/watchdog.h, bindings/watchdog.cc) watches when the
loop thread last came back to its poll. When one iteration has kept it away
longer than ``threshold``, the watchdog takes the GIL on its own thread and
captures, while the loop is still blocked, the loop thread's Python stack,
the task it is running and the callback (Handle) it is in. The stall is
reported once, through the ``uvpy.watchdog`` logger (a WARNING) or the
``callback``.

Rules:
1. One report per stall, made when the stall ends, with its final duration
   (exact: the reactor records the end of a long busy spell). A stall still
   going at ``linger`` seconds (default max(1 s, 10 x threshold); it may be a
   deadlock) is reported then, ``finished=False``; its end is one INFO line.
2. Debug mode is not needed, and a healthy loop costs nothing: the loop
   thread keeps a beacon it keeps anyway; the watchdog thread wakes every
   threshold/4 to read it.
3. The capture never waits on the loop thread: a thread blocked outside the
   GIL (time.sleep, a blocking call) or running bytecode hands it over; one
   holding the GIL in native code for the whole stall is reported without a
   stack (``stack`` None), and one holding it for part of the stall with the
   stack it had when it let go (``gil_wait`` says how long that took; the
   blocking call is then the one that just returned).
4. The callback and the logger run on the watchdog thread, not the loop's:
   they must not touch the loop except through call_soon_threadsafe.
5. The watchdog stops with ``stop()``, with the loop's close(), and at
   interpreter exit; it holds the loop only weakly.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import sys
import traceback
import weakref
from asyncio import base_events, tasks

__all__ = ("Watchdog", "StallReport", "watchdog")

logger = logging.getLogger("uvpy.watchdog")


@dataclasses.dataclass(frozen=True)
class StallReport:
    """One stall of an event loop (rule 1)."""

    started: float  # loop.time() when the loop left its poll
    duration: float  # seconds; final when finished, else so far
    finished: bool
    threshold: float
    stack: traceback.StackSummary | None  # the loop thread's, while blocked (rule 3)
    task: str | None  # repr of the task running, if any
    handle: str | None  # the callback running, if not the task's step
    gil_wait: float = 0.0  # seconds the capture waited for the loop thread's GIL

    def format(self) -> str:
        state = "was blocked for" if self.finished else "has been blocked for"
        lines = [f"Event loop {state} {self.duration:.3f} s "
                 f"(threshold {self.threshold:.3f} s)"]
        if self.task is not None:
            lines.append(f"  running task: {self.task}")
        if self.handle is not None:
            lines.append(f"  in callback: {self.handle}")
        if self.stack is None:
            lines.append("  (no Python stack: the loop thread held the GIL in native code "
                         "for the whole stall)")
        else:
            if self.gil_wait >= _LATE_CAPTURE:
                lines.append(f"  (the loop thread held the GIL in native code for "
                             f"{self.gil_wait:.3f} s before this stack was taken: the "
                             f"blocking call is likely the one that returned just before)")
            lines.append("  loop thread stack (most recent call last):")
            lines.extend(line.rstrip("\n") for line in self.stack.format())
        return "\n".join(lines)


# A capture that waited this long for the GIL came after native code let go
# (a thread running bytecode hands the GIL over within the switch interval).
_LATE_CAPTURE = 0.05

_live: weakref.WeakSet[Watchdog] = weakref.WeakSet()


class Watchdog:
    """Watches one uvpy loop for stalls; see the module docstring."""

    def __init__(self, loop, threshold: float = 0.1, callback=None, *, linger: float | None = None):
        from ._loop import Loop

        if not isinstance(loop, Loop):
            raise TypeError(f"loop must be a uvpy.Loop, not {type(loop).__name__!r}")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise TypeError(f"threshold must be a number, not {type(threshold).__name__!r}")
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0, not {threshold!r}")
        if linger is None:
            linger = max(1.0, 10 * threshold)
        elif not linger >= threshold:
            raise ValueError(f"linger must be >= threshold ({threshold!r}), not {linger!r}")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable or None, not {type(callback).__name__!r}")
        self.threshold = float(threshold)
        self.linger = float(linger)
        self.callback = callback
        self.reports = 0  # stalls reported so far
        self._loop = weakref.ref(loop)
        self._pending: dict[float, tuple] = {}  # start -> capture (watchdog thread only)
        self._reported: set[float] = set()
        ref = weakref.ref(self)
        loop._set_watchdog(self.threshold, self.linger,
                           lambda *a: (w := ref()) is not None and w._on_event(*a))
        loop._watchdog = self
        _live.add(self)

    def stop(self) -> None:
        """Stop watching (idempotent). A stall still open is reported first."""
        loop = self._loop()
        if loop is not None and getattr(loop, "_watchdog", None) is self:
            loop._watchdog = None
            loop._set_watchdog(None)
        _live.discard(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return f"<uvpy.Watchdog threshold={self.threshold} reports={self.reports}>"

    # -- the watchdog thread (bindings/watchdog.cc) -------------------------

    def _on_event(self, event, start, end, current, gil_wait):
        if event == "stalled":
            capture = self._capture() if current else (None, None, None)
            self._pending[start] = (*capture, gil_wait)
        elif event == "lingering":
            self._report(start, None, self._pending.get(start))
            self._reported.add(start)
        elif start in self._reported:  # ended, after a lingering report
            self._reported.discard(start)
            self._pending.pop(start, None)
            logger.info("Event loop unblocked after %.3f s", end - start)
        else:  # ended
            self._report(start, end, self._pending.pop(start, None))

    def _capture(self):
        loop = self._loop()
        if loop is None:
            return (None, None, None)
        frame = sys._current_frames().get(loop._thread_id)
        stack = _below_the_loop(traceback.extract_stack(frame)) if frame is not None else None
        task = tasks.current_task(loop)
        task = repr(task) if task is not None else None
        handle = loop._current_handle
        handle = base_events._format_handle(handle) if handle is not None else None
        return (stack, task, None if handle == task else handle)

    def _report(self, start, end, capture):
        stack, task, handle, gil_wait = capture or (None, None, None, 0.0)
        finished = end is not None
        if not finished:
            loop = self._loop()
            end = loop.time() if loop is not None else start
        report = StallReport(started=start, duration=end - start, finished=finished,
                             threshold=self.threshold, stack=stack, task=task, handle=handle,
                             gil_wait=gil_wait)
        self.reports += 1
        if self.callback is None:
            logger.warning("%s", report.format())
            return
        try:
            self.callback(report)
        except Exception:
            logger.exception("uvpy.watchdog callback %r failed", self.callback)


def _below_the_loop(stack):
    """The frames the loop called: run()/run_until_complete()/run_forever()
    above them say nothing about the stall."""
    from . import _loop

    for i in range(len(stack) - 1, -1, -1):
        if stack[i].filename == _loop.__file__ and stack[i].name == "run_forever":
            return traceback.StackSummary.from_list(stack[i + 1:])
    return stack


def watchdog(loop=None, threshold: float = 0.1, callback=None, *,
             linger: float | None = None) -> Watchdog:
    """Watch ``loop`` (default: the running loop) for callbacks or task steps
    that keep it from its poll longer than ``threshold`` seconds; report each
    such stall once (module docstring). Returns the Watchdog; ``stop()`` it,
    or use it as a context manager. Starting one replaces the loop's previous
    watchdog."""
    if loop is None:
        import asyncio

        loop = asyncio.get_running_loop()
    previous = getattr(loop, "_watchdog", None)
    if previous is not None:
        previous.stop()
    return Watchdog(loop, threshold, callback, linger=linger)


@atexit.register
def _stop_all():
    # Rule 5: no watchdog may take the GIL while the interpreter finalizes.
    for w in list(_live):
        w.stop()

