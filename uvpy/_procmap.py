"""ProcessPool.map(): Executor.map when iterated with ``for``, a bounded
stream of results with ``async for``.

Invariants:

1. Nothing is submitted before iteration starts; with ``for``, everything is
   submitted when it starts (as Executor.map does at its call); with
   ``async for``, at most ``limit`` jobs are in flight, and the next job is
   submitted only as the oldest result is taken.
2. Results come in the order of the arguments. A job that raises ends the
   iteration there, and the jobs not yet taken are cancelled, as are those
   left when the iterator is closed early.
3. With ``chunksize`` > 1 a job is concurrent.futures.process._process_chunk
   over a tuple of argument tuples, as ProcessPoolExecutor.map sends it:
   the standard library's, so the worker imports nothing of uvpy, and a
   chunk fails whole, as there.
"""

import asyncio
import collections
import itertools
import time

__all__ = ("Mapping",)


class Mapping:
    """pool.map(fn, *iterables, ...) (invariants above)."""

    def __init__(self, pool, fn, iterables, timeout, chunksize, limit):
        self._pool, self._fn, self._iterables = pool, fn, iterables
        self._end = None if timeout is None else time.monotonic() + timeout
        self._chunksize, self._limit = chunksize, limit

    def _jobs(self):
        """(fn, args) of each job, in order."""
        items = zip(*self._iterables)
        if self._chunksize == 1:
            return ((self._fn, args) for args in items)
        from concurrent.futures.process import _process_chunk

        chunks = iter(lambda: tuple(itertools.islice(items, self._chunksize)), ())
        return ((_process_chunk, (self._fn, chunk)) for chunk in chunks)

    def __iter__(self):
        fs = [self._pool.submit(fn, *args) for fn, args in self._jobs()]
        chunked = self._chunksize > 1

        def results():
            try:
                fs.reverse()
                while fs:
                    if self._end is None:
                        r = fs.pop().result()
                    else:
                        r = fs.pop().result(self._end - time.monotonic())
                    if chunked:
                        yield from r
                    else:
                        yield r
            finally:
                for f in fs:
                    f.cancel()
        return results()

    async def __aiter__(self):
        pool, window = self._pool, collections.deque()
        single = self._chunksize == 1
        try:
            for fn, args in self._jobs():
                window.append(asyncio.ensure_future(pool.run(fn, *args)))
                if len(window) < self._limit:
                    continue
                r = await window.popleft()
                for x in (r,) if single else r:
                    yield x
            while window:
                r = await window.popleft()
                for x in (r,) if single else r:
                    yield x
        finally:
            for f in window:
                f.cancel()
