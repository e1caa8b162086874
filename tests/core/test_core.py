"""The core queue and worker loop, tested directly against both implementations.

`core_impl` is fastpool._core (compiled) or fastpool._py (fallback); they must
behave the same.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
import weakref
from concurrent.futures import Future

import pytest

# Generous bounds: CI machines are small and busy. What matters is "returns" vs "hangs".
SHORT = 0.1
PROMPT = 5.0


class Obj:
    """A weak-referenceable item."""

    def __init__(self, n: int = 0) -> None:
        self.n = n


def start(fn, *args) -> threading.Thread:
    t = threading.Thread(target=fn, args=args, daemon=True)
    t.start()
    return t


def join(t: threading.Thread, timeout: float = PROMPT) -> None:
    t.join(timeout)
    assert not t.is_alive(), f"{t} did not finish within {timeout}s"


def make_item(core, fn, *args, **kwargs):
    f = Future()
    return core.WorkItem(f, fn, args, kwargs), f


# ---------------------------------------------------------------------------- basics


def test_fifo(core_impl):
    q = core_impl.WorkQueue()
    for i in range(100):
        assert q.put(i) is True
    assert q.qsize() == len(q) == 100
    assert [q.get() for _ in range(100)] == list(range(100))
    assert q.qsize() == 0


def test_defaults_and_properties(core_impl):
    q = core_impl.WorkQueue()
    assert q.maxsize == 0
    assert q.closed is False
    assert q.idle_workers == 0
    assert core_impl.WorkQueue(7).maxsize == 7
    q.close()
    assert q.closed is True


def test_get_timeout_and_nowait_on_empty(core_impl):
    q = core_impl.WorkQueue()
    with pytest.raises(core_impl.QueueEmpty):
        q.get_nowait()
    with pytest.raises(core_impl.QueueEmpty):
        q.get(timeout=0)
    with pytest.raises(core_impl.QueueEmpty):
        q.get(timeout=-1)  # negative: as 0, not an error
    t0 = time.monotonic()
    with pytest.raises(core_impl.QueueEmpty):
        q.get(timeout=SHORT)
    assert time.monotonic() - t0 >= SHORT * 0.9


def test_get_wakes_on_put(core_impl):
    q = core_impl.WorkQueue()
    got = []
    t = start(lambda: got.append(q.get()))
    time.sleep(SHORT)
    q.put("x")
    join(t)
    assert got == ["x"]


# ---------------------------------------------------------------------------- bounded


@pytest.mark.parametrize("maxsize", [1, 2, 3, 5, 1000, 1025])
def test_exact_maxsize(core_impl, maxsize):
    # The ring's capacity is a power of two; the bound must still be exact.
    q = core_impl.WorkQueue(maxsize)
    for i in range(maxsize):
        assert q.put_nowait(i) is True
    assert q.put_nowait("one too many") is False
    assert q.put("one too many", timeout=0) is False
    assert q.qsize() == maxsize
    assert q.get() == 0
    assert q.put_nowait(maxsize) is True
    assert q.put_nowait("one too many") is False
    assert q.drain() == list(range(1, maxsize + 1))
    # Wrap around the ring several times: still exact.
    for _lap in range(3):
        for i in range(maxsize):
            assert q.put_nowait(i) is True
        assert q.put_nowait("one too many") is False
        assert [q.get_nowait() for _ in range(maxsize)] == list(range(maxsize))


def test_bounded_put_times_out(core_impl):
    q = core_impl.WorkQueue(2)
    q.put(1)
    q.put(2)
    t0 = time.monotonic()
    assert q.put(3, timeout=SHORT) is False
    assert time.monotonic() - t0 >= SHORT * 0.9
    assert q.drain() == [1, 2]


def test_bounded_put_blocks_until_space(core_impl):
    q = core_impl.WorkQueue(1)
    q.put("a")
    done = threading.Event()
    result = []

    def producer():
        result.append(q.put("b"))
        done.set()

    t = start(producer)
    assert not done.wait(SHORT), "put() on a full queue did not block"
    assert q.get() == "a"
    join(t)
    assert result == [True]
    assert q.get_nowait() == "b"


def test_bounded_put_timeout_wakes_on_space(core_impl):
    q = core_impl.WorkQueue(1)
    q.put("a")
    result = []
    t = start(lambda: result.append(q.put("b", timeout=PROMPT)))
    time.sleep(SHORT)
    t0 = time.monotonic()
    assert q.get() == "a"
    join(t)
    assert result == [True]
    assert time.monotonic() - t0 < PROMPT / 2


# ---------------------------------------------------------------------------- unbounded


def test_unbounded_beyond_ring_capacity(core_impl):
    # The native ring holds 1024; the rest goes to the overflow list.
    n = 5000
    q = core_impl.WorkQueue()
    for i in range(n):
        assert q.put_nowait(i) is True
    assert q.qsize() == n
    assert [q.get_nowait() for _ in range(n // 2)] == list(range(n // 2))
    # Interleave puts with the overflow non-empty: FIFO still holds.
    for i in range(n, n + 3000):
        q.put(i)
    assert [q.get() for _ in range(q.qsize())] == list(range(n // 2, n + 3000))
    with pytest.raises(core_impl.QueueEmpty):
        q.get_nowait()


def test_unbounded_fifo_per_producer(core_impl):
    q = core_impl.WorkQueue()
    producers, per = 4, 5000
    got = []
    go = threading.Event()

    def produce(p):
        go.wait()
        for i in range(per):
            q.put((p, i))

    def consume():
        go.wait()
        for _ in range(producers * per):
            got.append(q.get(timeout=PROMPT * 4))

    threads = [start(produce, p) for p in range(producers)] + [start(consume)]
    go.set()
    for t in threads:
        join(t, 60)
    assert len(got) == producers * per
    for p in range(producers):
        assert [i for (pp, i) in got if pp == p] == list(range(per))


# ---------------------------------------------------------------------------- close


def test_close_wakes_blocked_getters(core_impl):
    q = core_impl.WorkQueue()
    errors = []

    def getter():
        try:
            q.get()
        except core_impl.QueueClosed as exc:
            errors.append(exc)

    threads = [start(getter) for _ in range(3)]
    time.sleep(SHORT)
    q.close()
    for t in threads:
        join(t)
    assert len(errors) == 3


def test_close_wakes_getter_with_timeout(core_impl):
    q = core_impl.WorkQueue()
    errors = []

    def getter():
        try:
            q.get(timeout=60)
        except core_impl.QueueClosed as exc:
            errors.append(exc)

    t = start(getter)
    time.sleep(SHORT)
    q.close()
    join(t)
    assert len(errors) == 1


def test_close_wakes_blocked_putters(core_impl):
    q = core_impl.WorkQueue(1)
    q.put("a")
    errors = []

    def putter(timeout):
        try:
            q.put("b", timeout=timeout)
        except core_impl.QueueClosed as exc:
            errors.append(exc)

    threads = [start(putter, None), start(putter, 60)]
    time.sleep(SHORT)
    q.close()
    for t in threads:
        join(t)
    assert len(errors) == 2
    assert q.drain() == ["a"]


def test_getters_drain_after_close(core_impl):
    q = core_impl.WorkQueue()
    for i in range(3):
        q.put(i)
    q.close()
    assert [q.get(), q.get_nowait(), q.get(timeout=1)] == [0, 1, 2]
    with pytest.raises(core_impl.QueueClosed):
        q.get()
    with pytest.raises(core_impl.QueueClosed):
        q.get_nowait()
    with pytest.raises(core_impl.QueueClosed):
        q.get(timeout=1)


def test_put_after_close_raises(core_impl):
    for maxsize in (0, 1):
        q = core_impl.WorkQueue(maxsize)
        q.close()
        q.close()  # idempotent
        with pytest.raises(core_impl.QueueClosed):
            q.put(1)
        with pytest.raises(core_impl.QueueClosed):
            q.put_nowait(1)
        with pytest.raises(core_impl.QueueClosed):
            q.put(1, timeout=1)
        assert q.qsize() == 0


def test_drain(core_impl):
    q = core_impl.WorkQueue()
    assert q.drain() == []
    for i in range(2000):  # ring and overflow
        q.put(i)
    assert q.drain() == list(range(2000))
    assert q.qsize() == 0
    q.put("after")
    assert q.get() == "after"
    q.put("closed")
    q.close()
    assert q.drain() == ["closed"]
    with pytest.raises(core_impl.QueueClosed):
        q.get()


def test_drain_wakes_blocked_putter(core_impl):
    q = core_impl.WorkQueue(1)
    q.put("a")
    result = []
    t = start(lambda: result.append(q.put("b")))
    time.sleep(SHORT)
    drained = q.drain()
    join(t)
    assert result == [True]
    # drain() is not one atomic step: the putter it woke may land "b" while it is still
    # emptying the queue (seen without the GIL). Each item is handed out exactly once.
    rest = [] if drained == ["a", "b"] else [q.get_nowait()]
    assert drained + rest == ["a", "b"]
    assert q.qsize() == 0


# ---------------------------------------------------------------------------- bad input


def test_bad_args(core_impl):
    with pytest.raises(ValueError):
        core_impl.WorkQueue(-1)
    q = core_impl.WorkQueue()
    nan = float("nan")
    with pytest.raises(ValueError):
        q.get(timeout=nan)
    with pytest.raises(ValueError):
        q.put(1, timeout=nan)
    assert q.qsize() == 0
    with pytest.raises(ValueError):
        core_impl.run_worker(q, idle_timeout=nan)
    assert q.idle_workers == 0


# ---------------------------------------------------------------------------- WorkItem


def test_work_item_runs_into_future(core_impl):
    item, f = make_item(core_impl, lambda a, b=0: a + b, 1, b=2)
    item.run()
    assert f.result(0) == 3


def test_work_item_exception_lands_on_future(core_impl):
    def boom():
        raise KeyboardInterrupt

    item, f = make_item(core_impl, boom)
    item.run()  # must not raise: even a BaseException goes to the future
    assert isinstance(f.exception(0), KeyboardInterrupt)


def test_work_item_cancelled_does_not_run(core_impl):
    ran = []
    item, f = make_item(core_impl, ran.append, 1)
    assert f.cancel()
    item.run()
    assert ran == []
    assert f.cancelled()


# ---------------------------------------------------------------------------- run_worker


def test_run_worker_runs_items_and_exits_on_close(core_impl):
    q = core_impl.WorkQueue()
    returned = []
    t = start(lambda: returned.append(core_impl.run_worker(q)))
    futures = []
    for i in range(200):
        item, f = make_item(core_impl, pow, i, 2)
        q.put(item)
        futures.append(f)
    assert [f.result(PROMPT) for f in futures] == [i * i for i in range(200)]
    q.close()
    join(t)
    assert returned == [True]
    assert q.idle_workers == 0


def test_run_worker_finishes_queued_work_after_close(core_impl):
    q = core_impl.WorkQueue()
    futures = []
    for i in range(50):
        item, f = make_item(core_impl, str, i)
        q.put(item)
        futures.append(f)
    q.close()
    assert core_impl.run_worker(q) is True  # in this thread: returns once drained
    assert [f.result(0) for f in futures] == [str(i) for i in range(50)]


def test_run_worker_calls_run_of_other_items(core_impl):
    # Pool tasks subclass/replace WorkItem; the loop calls their run().
    q = core_impl.WorkQueue()
    ran = []

    class Custom:
        def run(self):
            ran.append(self)

    class Sub(core_impl.WorkItem):
        def run(self):
            ran.append("sub")

    items = [Custom(), Sub(Future(), print, (), {}), Custom()]
    for it in items:
        q.put(it)
    q.close()
    assert core_impl.run_worker(q) is True
    assert ran == [items[0], "sub", items[2]]


def test_run_worker_survives_raising_items(core_impl, caplog):
    q = core_impl.WorkQueue()
    ran = []

    class Bad:
        def __init__(self, exc):
            self.exc = exc

        def run(self):
            raise self.exc

    class Good:
        def run(self):
            ran.append(1)

    for exc in (ValueError("v"), SystemExit(3), KeyboardInterrupt()):
        q.put(Bad(exc))
        q.put(Good())
    q.close()
    with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
        assert core_impl.run_worker(q) is True
    assert ran == [1, 1, 1]
    records = [r for r in caplog.records if r.name == "concurrent.futures"]
    assert len(records) == 3
    assert {type(r.exc_info[1]) for r in records} == {ValueError, SystemExit, KeyboardInterrupt}


def test_run_worker_idle_workers_count(core_impl):
    q = core_impl.WorkQueue()
    threads = [start(core_impl.run_worker, q) for _ in range(3)]
    deadline = time.monotonic() + PROMPT
    while q.idle_workers != 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert q.idle_workers == 3
    gate = threading.Event()
    item, f = make_item(core_impl, gate.wait)
    q.put(item)
    deadline = time.monotonic() + PROMPT
    while q.idle_workers != 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert q.idle_workers == 2
    gate.set()
    assert f.result(PROMPT) is True
    q.close()
    for t in threads:
        join(t)
    assert q.idle_workers == 0


def test_run_worker_idle_timeout_without_on_idle(core_impl):
    q = core_impl.WorkQueue()
    t0 = time.monotonic()
    assert core_impl.run_worker(q, idle_timeout=SHORT) is False
    assert time.monotonic() - t0 >= SHORT * 0.9
    assert q.idle_workers == 0


def test_run_worker_on_idle_true_exits(core_impl):
    q = core_impl.WorkQueue()
    calls = []

    def on_idle():
        calls.append(time.monotonic())
        return True

    assert core_impl.run_worker(q, idle_timeout=0.05, on_idle=on_idle) is False
    assert len(calls) == 1


def test_run_worker_on_idle_false_keeps_waiting(core_impl):
    q = core_impl.WorkQueue()
    calls = []
    returned = []

    def on_idle():
        calls.append(1)
        return False

    t = start(lambda: returned.append(core_impl.run_worker(q, idle_timeout=0.02,
                                                           on_idle=on_idle)))
    deadline = time.monotonic() + PROMPT
    while len(calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(calls) >= 3, "on_idle returning False must keep the worker waiting"
    assert t.is_alive()
    item, f = make_item(core_impl, lambda: "still working")
    q.put(item)
    assert f.result(PROMPT) == "still working"
    q.close()
    join(t)
    assert returned == [True]


def test_run_worker_idle_timer_restarts_after_work(core_impl):
    # Work arriving more often than idle_timeout keeps the worker alive.
    q = core_impl.WorkQueue()
    idle_calls = []
    returned = []
    t = start(lambda: returned.append(core_impl.run_worker(
        q, idle_timeout=0.5, on_idle=lambda: idle_calls.append(1) or True)))
    for i in range(5):
        item, f = make_item(core_impl, int, i)
        q.put(item)
        assert f.result(PROMPT) == i
        time.sleep(0.05)
    assert idle_calls == [] and t.is_alive()
    join(t)
    assert returned == [False] and idle_calls == [1]


# ---------------------------------------------------------------------------- stress


@pytest.mark.parametrize("maxsize", [0, 64])
def test_mpmc_stress(core_impl, maxsize):
    producers, consumers, per = 4, 4, 20_000
    q = core_impl.WorkQueue(maxsize)
    received = [[] for _ in range(consumers)]
    go = threading.Event()

    def produce(p):
        go.wait()
        base = p * per
        for i in range(base, base + per):
            q.put(i)

    def consume(c):
        go.wait()
        out = received[c]
        try:
            while True:
                out.append(q.get())
        except core_impl.QueueClosed:
            pass

    prods = [start(produce, p) for p in range(producers)]
    cons = [start(consume, c) for c in range(consumers)]
    go.set()
    for t in prods:
        join(t, 120)
    q.close()
    for t in cons:
        join(t, 120)
    everything = [x for out in received for x in out]
    assert len(everything) == producers * per
    assert sorted(everything) == list(range(producers * per))
    for out in received:
        # Each consumer sees each producer's items in the order they were put.
        for p in range(producers):
            mine = [x for x in out if x // per == p]
            assert mine == sorted(mine)


def test_workers_stress(core_impl):
    # The worker loop itself, fed from several threads at once.
    q = core_impl.WorkQueue()
    counter = []
    lock = threading.Lock()

    def task(i):
        with lock:
            counter.append(i)

    workers = [start(core_impl.run_worker, q) for _ in range(4)]

    def produce(p):
        for i in range(p * 5000, (p + 1) * 5000):
            q.put(core_impl.WorkItem(Future(), task, (i,), {}))

    prods = [start(produce, p) for p in range(4)]
    for t in prods:
        join(t, 60)
    q.close()
    for t in workers:
        join(t, 60)
    assert sorted(counter) == list(range(20_000))


# ---------------------------------------------------------------------------- references


def _alive_after(ref) -> bool:
    gc.collect()
    return ref() is not None


def test_no_leak_get(core_impl):
    q = core_impl.WorkQueue()
    obj = Obj()
    ref = weakref.ref(obj)
    q.put(obj)
    del obj
    assert _alive_after(ref), "the queue must own a reference to what it holds"
    got = q.get()
    assert got is ref()
    del got
    assert not _alive_after(ref)


def test_no_leak_drain(core_impl):
    q = core_impl.WorkQueue()
    refs = []
    for i in range(1500):  # ring and overflow
        o = Obj(i)
        refs.append(weakref.ref(o))
        q.put(o)
    del o
    assert all(_alive_after(r) for r in refs[:1] + refs[-1:])
    items = q.drain()
    assert [o.n for o in items] == list(range(1500))
    del items
    gc.collect()
    assert all(r() is None for r in refs)


def test_no_leak_queue_deleted(core_impl):
    for maxsize in (0, 4):
        q = core_impl.WorkQueue(maxsize)
        refs = []
        for i in range(4):
            o = Obj(i)
            refs.append(weakref.ref(o))
            q.put(o)
        del o, q
        gc.collect()
        assert all(r() is None for r in refs)


def test_no_leak_failed_puts(core_impl):
    obj = Obj()
    base = sys.getrefcount(obj)
    q = core_impl.WorkQueue(1)
    q.put(Obj())
    assert q.put_nowait(obj) is False
    assert q.put(obj, timeout=0.01) is False
    assert sys.getrefcount(obj) == base
    q.close()
    with pytest.raises(core_impl.QueueClosed):
        q.put(obj)
    with pytest.raises(core_impl.QueueClosed):
        q.put_nowait(obj)
    assert sys.getrefcount(obj) == base


def test_refcount_round_trip(core_impl):
    obj = Obj()
    base = sys.getrefcount(obj)
    q = core_impl.WorkQueue()
    for _ in range(3000):
        q.put(obj)
    assert sys.getrefcount(obj) == base + 3000
    for _ in range(1000):
        q.get()
    assert sys.getrefcount(obj) == base + 2000
    q.drain()
    assert sys.getrefcount(obj) == base


def test_no_leak_run_worker(core_impl):
    q = core_impl.WorkQueue()
    arg = Obj()
    ref = weakref.ref(arg)
    item, f = make_item(core_impl, id, arg)
    q.put(item)
    del item, arg
    q.close()
    core_impl.run_worker(q)
    assert f.done()
    assert not _alive_after(ref)


def test_submit_queues_a_work_item_unless_a_worker_is_needed(core_impl):
    """WorkQueue.submit: the executor's fast path. It never starts threads: when the
    item would need one more worker (or cannot be queued) it returns None and queues
    nothing, and the executor's Python path takes over."""
    q = core_impl.WorkQueue()
    assert q.submit(divmod, (7, 2), {}) is not None  # unbound: no pool, no workers to ask
    q.get_nowait()
    threads = {"t1"}
    q.bind_workers(threads, 2)
    assert q.submit(divmod, (7, 2), {}) is None  # 1 waiting, 0 idle, room for a 2nd thread
    assert q.qsize() == 0
    threads.add("t2")  # the live set is read
    fut = q.submit(divmod, (7, 2), {})
    assert isinstance(fut, core_impl.Future) and not fut.done()
    item = q.get_nowait()
    assert isinstance(item, core_impl.WorkItem) and item.future is fut
    assert (item.fn, item.args, item.kwargs) == (divmod, (7, 2), {})
    item.run()
    assert fut.result(0) == (3, 1)
    q.set_max_workers(3)
    assert q.submit(print, (), {}) is None  # room for a 3rd thread again
    q.set_max_workers(2)
    q.close()
    assert q.submit(print, (), {}) is None  # closed: nothing queued
    assert q.qsize() == 0
