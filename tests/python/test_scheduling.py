"""call_soon, call_later, call_at, call_soon_threadsafe and their handles."""

import asyncio
import contextvars
import sys
import threading
import time

import pytest


def run_briefly(loop, seconds=0.0):
    loop.call_later(seconds, loop.stop)
    loop.run_forever()


def test_call_soon_runs_in_fifo_order_with_args(loop):
    out = []
    for i in range(5):
        loop.call_soon(out.append, i)
    loop.call_soon(out.extend, ("a", "b"))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == [0, 1, 2, 3, 4, "a", "b"]


def test_callbacks_added_while_running_wait_for_next_iteration(loop):
    seen = []

    def first():
        seen.append("first")
        loop.call_soon(seen.append, "added")
        loop.stop()  # stop after this iteration: "added" must not run in it

    loop.call_soon(first)
    loop.call_soon(seen.append, "second")
    loop.run_forever()
    assert seen == ["first", "second"]
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ["first", "second", "added"]


def test_call_soon_uses_given_context_else_a_copy(loop):
    var = contextvars.ContextVar("var", default="default")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in ctx")
    out = []
    var.set("outer")
    loop.call_soon(lambda: out.append(var.get()), context=ctx)
    loop.call_soon(lambda: out.append(var.get()))
    loop.call_soon(lambda: var.set("changed inside"))
    loop.call_soon(lambda: out.append(var.get()))
    loop.call_soon(lambda: out.append(var.get()), context=ctx)
    loop.call_soon(loop.stop)
    loop.run_forever()
    # Each callback without context= runs in its own copy of the caller's.
    assert out == ["in ctx", "outer", "outer", "in ctx"]
    assert var.get() == "outer"


def test_cancelled_handle_does_not_run(loop):
    out = []
    h = loop.call_soon(out.append, 1)
    assert not h.cancelled()
    h.cancel()
    h.cancel()  # idempotent
    assert h.cancelled()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == []


def test_handle_cancelling_itself_while_running(loop):
    out = []
    holder = {}

    def cb(x):
        holder["h"].cancel()
        out.append(x)

    holder["h"] = loop.call_soon(cb, "ran")
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == ["ran"]
    assert holder["h"].cancelled()


def test_call_later_orders_by_deadline_and_is_never_early(loop):
    fired = []
    start = loop.time()
    for delay in (0.03, 0.01, 0.02, 0.0):
        loop.call_later(delay, lambda d=delay: fired.append((d, loop.time())))
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert [d for d, _ in fired] == [0.0, 0.01, 0.02, 0.03]
    for delay, at in fired:
        assert at - start >= delay - time.get_clock_info("monotonic").resolution


def test_same_deadline_all_fire(loop, loop_name):
    out = []
    when = loop.time() + 0.01
    for i in range(10):
        loop.call_at(when, out.append, i)
    loop.call_at(when + 0.01, loop.stop)
    loop.run_forever()
    assert sorted(out) == list(range(10))
    if loop_name == "uvpy":
        # asyncio leaves ties undefined (heapq); uvpy documents FIFO.
        assert out == list(range(10))


def test_timer_handle_when_and_cancel(loop):
    out = []
    when = loop.time() + 0.01
    h = loop.call_at(when, out.append, "x")
    assert isinstance(h, asyncio.TimerHandle) or type(h).__name__ == "TimerHandle"
    assert h.when() == pytest.approx(when)
    h.cancel()
    assert h.cancelled()
    run_briefly(loop, 0.03)
    assert out == []


@pytest.mark.parametrize("when", [12345.5, 7.0, -3.25, 1e300, float("inf")])
def test_timer_handle_hashes_as_its_deadline(loop, when):
    # asyncio's TimerHandle.__hash__ is hash(self._when).
    h = loop.call_at(when, lambda: None)
    try:
        assert hash(h) == hash(when) == hash(h.when())
        assert h in {h}
    finally:
        h.cancel()
    assert hash(h) == hash(when)


def test_nan_deadline_hash_is_stable_and_per_handle(loop):
    # A NaN hashes by identity: asyncio's that of the float object each
    # handle keeps, so stable for one handle and distinct between two.
    a = loop.call_at(float("nan"), lambda: None)
    b = loop.call_at(float("nan"), lambda: None)
    try:
        assert hash(a) == hash(a)
        assert hash(a) != hash(b)
        assert a in {a} and b not in {a}
    finally:
        a.cancel()
        b.cancel()


def test_call_later_accepts_int_and_float_like(loop):
    out = []
    loop.call_later(0, out.append, "int")
    loop.call_later(False, out.append, "bool")
    run_briefly(loop, 0.01)
    assert out == ["int", "bool"]


def test_nan_deadline_is_due_at_once_and_never_blocks_the_loop(loop, loop_name):
    # asyncio 3.11 runs it at once (its poll timeout is max(0, nan) == 0);
    # the loop must not take a NaN timeout for "block until an event".
    if loop_name == "asyncio" and sys.version_info >= (3, 13):
        pytest.skip("asyncio 3.13+ hands a NaN poll timeout to the selector, whose "
                    "math.ceil() raises ValueError out of run_forever()")
    out, rescued = [], []

    def rescue():
        rescued.append(True)
        loop.call_soon_threadsafe(loop.stop)

    guard = threading.Timer(5, rescue)
    guard.start()
    try:
        loop.call_later(float("nan"), out.append, "nan")
        loop.call_later(0.01, out.append, "later")
        loop.call_later(0.02, loop.stop)
        loop.run_forever()
    finally:
        guard.cancel()
        guard.join()
    assert rescued == []
    assert out == ["nan", "later"]


def test_time_is_monotonic_clock(loop):
    before = time.monotonic()
    t = loop.time()
    after = time.monotonic()
    assert before <= t <= after


@pytest.mark.parametrize("method", ["call_soon", "call_later", "call_at", "call_soon_threadsafe"])
def test_scheduling_on_closed_loop_raises(loop, method):
    loop.close()
    fn = getattr(loop, method)
    args = (lambda: None,) if method in ("call_soon", "call_soon_threadsafe") else (1, lambda: None)
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        fn(*args)


def test_none_delay_and_when_are_type_errors(loop):
    with pytest.raises(TypeError, match="delay must not be None"):
        loop.call_later(None, lambda: None)
    with pytest.raises(TypeError, match="when cannot be None"):
        loop.call_at(None, lambda: None)


def test_non_number_delay_raises_like_asyncio(loop):
    with pytest.raises(TypeError, match="unsupported operand"):
        loop.call_later("1", lambda: None)


def test_unknown_keyword_is_rejected(loop):
    with pytest.raises(TypeError):
        loop.call_soon(lambda: None, contxt=None)


def test_debug_mode_checks_callbacks(loop):
    loop.set_debug(True)

    async def coro():
        pass

    with pytest.raises(TypeError, match="coroutines cannot be used with call_soon"):
        loop.call_soon(coro)
    with pytest.raises(TypeError, match="a callable object was expected by call_at"):
        loop.call_later(0, 42)
    c = coro()
    with pytest.raises(TypeError, match="coroutines cannot be used with call_soon_threadsafe"):
        loop.call_soon_threadsafe(c)
    c.close()


def test_debug_mode_rejects_other_threads(loop):
    loop.set_debug(True)
    errors = []

    def from_thread():
        try:
            loop.call_soon(lambda: None)
        except RuntimeError as exc:
            errors.append(str(exc))
        loop.call_soon_threadsafe(loop.stop)

    loop.call_soon(lambda: threading.Thread(target=from_thread).start())
    loop.run_forever()
    assert errors and "Non-thread-safe operation" in errors[0]


def test_call_soon_threadsafe_wakes_a_blocked_loop(loop):
    out = []

    def worker():
        time.sleep(0.05)
        loop.call_soon_threadsafe(out.append, "from thread")
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=worker)
    t.start()
    loop.call_later(30, out.append, "timeout")  # the loop would sleep this long
    loop.run_forever()
    t.join()
    assert out == ["from thread"]


def test_call_soon_threadsafe_from_many_threads_loses_nothing(loop):
    n_threads, each = 4, 2000
    counter = []
    done = threading.Barrier(n_threads + 1)

    def worker(k):
        for i in range(each):
            loop.call_soon_threadsafe(counter.append, (k, i))
        done.wait()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()

    def check():
        if len(counter) == n_threads * each:
            loop.stop()
        else:
            loop.call_later(0.001, check)

    loop.call_soon(check)
    loop.run_forever()
    done.wait()
    for t in threads:
        t.join()
    assert len(counter) == n_threads * each
    for k in range(n_threads):  # per-thread order is preserved
        assert [i for kk, i in counter if kk == k] == list(range(each))


def test_handle_repr_shows_callback(loop):
    def my_callback():
        pass

    h = loop.call_soon(my_callback)
    assert "my_callback" in repr(h)
    h.cancel()
    assert "cancelled" in repr(h)
    t = loop.call_later(10, my_callback)
    assert "when=" in repr(t) and "my_callback" in repr(t)
    t.cancel()


def test_debug_repr_names_the_creation_site(loop):
    loop.set_debug(True)
    h = loop.call_soon(print)
    assert "created at" in repr(h) and __file__ in repr(h)
    h.cancel()
    # asyncio keeps the live repr after cancel in debug mode.
    assert "print" in repr(h)


def test_threadsafe_and_call_soon_share_one_fifo(loop):
    out = []
    done = threading.Event()

    def other():
        loop.call_soon_threadsafe(out.append, "threadsafe first")
        done.set()

    threading.Thread(target=other).start()
    done.wait()
    loop.call_soon(out.append, "call_soon second")
    loop.call_soon_threadsafe(out.append, "threadsafe third")
    loop.call_soon(out.append, "call_soon fourth")
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == ["threadsafe first", "call_soon second", "threadsafe third", "call_soon fourth"]


class _Owner:
    """Holds its own timer handle, whose callback is a bound method: a
    reference cycle owner -> handle -> bound method -> owner."""

    def __init__(self, loop, delay):
        self.handle = loop.call_later(delay, self.on_timer)
        self.fired = False

    def on_timer(self):
        self.fired = True


@pytest.mark.parametrize("how", ["fired", "cancelled", "loop_closed"])
def test_cycle_through_a_timer_handle_is_collected(loop, how):
    # uvpy keeps pending TimerHandles out of the GC's sight; each way out of
    # the timer heap must hand them back, or such cycles would leak.
    import gc
    import weakref

    owner = _Owner(loop, 0.001 if how == "fired" else 60)
    ref = weakref.ref(owner)
    if how == "fired":
        run_briefly(loop, 0.02)
        assert owner.fired
    elif how == "cancelled":
        owner.handle.cancel()
    else:
        loop.close()
    del owner
    for _ in range(3):
        gc.collect()
    assert ref() is None


def test_pending_timer_handles_are_not_walked_by_the_gc(loop, loop_name):
    import gc

    h = loop.call_later(60, lambda: None)
    if loop_name.startswith("uvpy"):
        # In the heap: reachable from the reactor, and so is its context copy.
        assert not gc.is_tracked(h)
        assert not gc.is_tracked(h.get_context())
    h.cancel()
    assert gc.is_tracked(h)
    # asyncio 3.11's handles have no get_context() (3.12 added it)
    assert gc.is_tracked(h.get_context() if hasattr(h, "get_context") else h._context)
    assert h.cancelled()


_owner_var = contextvars.ContextVar("owner")


@pytest.mark.parametrize("how", ["fired", "cancelled", "loop_closed"])
def test_cycle_through_a_timer_handles_context_is_collected(loop, how):
    # owner -> handle -> its context copy -> owner (a context variable's
    # value): collectable once the handle has left the timer heap.
    import gc
    import weakref

    class Owner:
        pass

    def schedule():
        owner = Owner()
        _owner_var.set(owner)
        owner.handle = loop.call_later(0.001 if how == "fired" else 60, lambda: None)
        return weakref.ref(owner)

    ref = contextvars.copy_context().run(schedule)
    if how == "fired":
        run_briefly(loop, 0.02)
    elif how == "cancelled":
        ref().handle.cancel()
        loop.call_soon(loop.stop)  # asyncio drops a cancelled timer lazily,
        loop.run_forever()  # when it reaches the head of its heap: here
    else:
        loop.close()
    for _ in range(3):
        gc.collect()
    assert ref() is None
