"""fastpool.ThreadPoolExecutor is a drop-in for concurrent.futures.ThreadPoolExecutor.

Every test takes `executor_cls` and runs twice: on fastpool's executor and on the
stdlib's, so each behaviour is checked against the reference it copies. The two stdlib
bugs fastpool fixes are marked `stdlib_bug`: strict xfail for the stdlib only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import inspect
import itertools
import logging
import os
import re
import sys
import sysconfig
import threading
import time
import traceback
import weakref

import pytest

import fastpool

PROMPT = 10.0  # "returns promptly": generous for a busy 2-core CI machine
HANG = 1.0  # how long a stdlib-bug test waits before calling it a hang


FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))

def has_buffersize(executor_cls) -> bool:
    return "buffersize" in inspect.signature(executor_cls.map).parameters


@pytest.fixture
def needs_buffersize(executor_cls):
    if not has_buffersize(executor_cls):
        pytest.skip(f"map(buffersize=...) is new in Python 3.14 (running {sys.version.split()[0]})")


class Gate:
    """Tasks that block until released; records which ones started."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.started: list[object] = []
        self._lock = threading.Lock()
        self._started_cond = threading.Condition(self._lock)

    def __call__(self, tag: object = None) -> object:
        with self._lock:
            self.started.append(tag)
            self._started_cond.notify_all()
        assert self.event.wait(PROMPT), "gate never opened"
        return tag

    def wait_started(self, n: int = 1) -> None:
        with self._lock:
            assert self._started_cond.wait_for(lambda: len(self.started) >= n, PROMPT)

    def open(self) -> None:
        self.event.set()


@pytest.fixture
def gate():
    g = Gate()
    yield g
    g.open()  # never leave a worker blocked behind a failed assertion


# ---------------------------------------------------------------------------- types


def test_is_a_stdlib_thread_pool_executor():
    ex = fastpool.ThreadPoolExecutor(1)
    try:
        assert isinstance(ex, cf.ThreadPoolExecutor)
        assert isinstance(ex, cf.Executor)
        assert fastpool.BrokenThreadPool is cf.thread.BrokenThreadPool
    finally:
        ex.shutdown()


def test_futures_are_stdlib_futures(executor_cls):
    with executor_cls(2) as ex:
        f = ex.submit(int, "7")
        assert isinstance(f, cf.Future)
        assert f.result(PROMPT) == 7
        assert all(isinstance(x, cf.Future) for x in [ex.submit(str, 1), ex.submit(abs, -1)])


# ---------------------------------------------------------------------------- submit


def test_submit_args_and_kwargs(executor_cls):
    def f(*args, **kwargs):
        return args, kwargs

    with executor_cls(2) as ex:
        assert ex.submit(f, 1, 2, a=3).result(PROMPT) == ((1, 2), {"a": 3})
        assert ex.submit(f).result(PROMPT) == ((), {})


def test_submit_fn_is_positional_only(executor_cls):
    def f(**kwargs):
        return kwargs

    with executor_cls(2) as ex:
        # Keyword arguments named like submit's own parameters go to the task.
        assert ex.submit(f, fn=1, self=2).result(PROMPT) == {"fn": 1, "self": 2}
        with pytest.raises(TypeError):
            ex.submit(fn=f)


def test_submit_non_callable_fails_in_future(executor_cls):
    with executor_cls(1) as ex:
        f = ex.submit(42)
        assert isinstance(f.exception(PROMPT), TypeError)


def test_submit_from_many_threads(executor_cls):
    with executor_cls(4) as ex:
        results = {}

        def producer(p):
            results[p] = [ex.submit(pow, i, 2) for i in range(2000)]

        threads = [threading.Thread(target=producer, args=(p,)) for p in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for p in range(6):
            assert [f.result(PROMPT) for f in results[p]] == [i * i for i in range(2000)]
        assert len(ex._threads) <= 4


# ---------------------------------------------------------------------------- map


def test_map_order(executor_cls):
    def slow_for_small(i):
        time.sleep(0.002 * (20 - i))
        return i * 10

    with executor_cls(4) as ex:
        assert list(ex.map(slow_for_small, range(20))) == [i * 10 for i in range(20)]
        assert list(ex.map(pow, [2, 3, 4], [5, 6, 7, 8])) == [32, 729, 16384]
        assert list(ex.map(abs, [])) == []


def test_map_submits_eagerly_without_buffersize(executor_cls, gate):
    with executor_cls(1) as ex:
        it = ex.map(gate, range(5))
        gate.wait_started(1)  # submitted before the first next()
        gate.open()
        assert list(it) == list(range(5))


def test_map_raises_task_exception_in_order(executor_cls):
    def f(i):
        if i == 3:
            raise ValueError(i)
        return i

    with executor_cls(2) as ex:
        it = ex.map(f, range(6))
        assert [next(it) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ValueError, match="3"):
            next(it)


def test_map_timeout_counts_from_the_call(executor_cls, gate):
    with executor_cls(1) as ex:
        it = ex.map(gate, range(3), timeout=1.0)
        time.sleep(1.2)  # the whole budget is spent before iterating
        t0 = time.monotonic()
        with pytest.raises(cf.TimeoutError):
            next(it)
        # Counted from the first next() it would wait another second.
        assert time.monotonic() - t0 < 0.5
        gate.open()


def test_map_timeout_cancels_the_rest(executor_cls, gate):
    ex = executor_cls(1)
    try:
        it = ex.map(gate, range(5), timeout=0.3)
        gate.wait_started(1)
        with pytest.raises(cf.TimeoutError):
            next(it)
        gate.open()
    finally:
        ex.shutdown(wait=True)
    assert gate.started == [0]


@pytest.mark.parametrize("primed", [False, True], ids=["fresh", "primed"])
def test_map_fast_items_not_held_behind_a_slow_one(executor_cls, primed):
    """The stdlib's test_map_timeout (3.10-3.13): map(sleep, [0, 0, 6], timeout=5) yields
    both fast results, then times out. fastpool's map grows a runner's chunk while calls
    are fast; the last inputs must still spread over the idle workers, or the second fast
    item waits in one chunk behind the slow one (it did, with every worker started)."""
    release = threading.Event()

    def call(slow: bool) -> None:
        if slow:
            release.wait(30)

    with executor_cls(5) as ex:
        if primed:  # as the stdlib's ExecutorMixin.setUp on 3.10/3.11: all workers up
            for f in [ex.submit(time.sleep, 0.05) for _ in range(5)]:
                f.result()
        results = []
        try:
            with pytest.raises(cf.TimeoutError):
                for r in ex.map(call, [False, False, True], timeout=1.5):
                    results.append(r)
        finally:
            release.set()
    assert results == [None, None]


@pytest.mark.parametrize("how", ["close", "drop"])
def test_map_close_cancels_the_rest(executor_cls, gate, how):
    def f(i):
        return i if i == 0 else gate(i)

    ex = executor_cls(1)
    try:
        it = ex.map(f, range(6))
        assert next(it) == 0
        gate.wait_started(1)
        if how == "close":
            it.close()
        else:
            del it
            gc.collect()
        gate.open()
    finally:
        ex.shutdown(wait=True)
    assert gate.started == [1]


def test_map_error_cancels_the_rest(executor_cls, gate):
    def f(i):
        if i == 0:
            raise ValueError(i)
        return gate(i)

    ex = executor_cls(1)
    try:
        it = ex.map(f, range(6))
        gate.wait_started(1)
        with pytest.raises(ValueError):
            next(it)
        gate.open()
        with pytest.raises(StopIteration):
            next(it)
    finally:
        ex.shutdown(wait=True)
    assert gate.started == [1]


class Obj:
    """A weakref-able result."""

    def __init__(self, tag: object = None) -> None:
        self.tag = tag


def _dead_soon(refs: list, timeout: float = PROMPT) -> list[int]:
    """Indexes of refs still alive after waiting up to `timeout` (a worker may drop its
    last reference a moment after the consumer got the value, as in the stdlib)."""
    end = time.monotonic() + timeout
    while True:
        if FREE_THREADED:
            # Without the GIL an object dropped by another thread than its owner waits
            # in the owner's queue until a collection (biased reference counting): the
            # stdlib's executor shows the same.
            gc.collect()
        alive = [i for i, r in enumerate(refs) if r() is not None]
        if not alive or time.monotonic() > end:
            return alive
        time.sleep(0.01)


@pytest.mark.parametrize("speed", ["fast", "slow"])
def test_map_drops_results_it_has_yielded(executor_cls, gate, speed):
    # bpo-14406: the iterator keeps no reference to a result it has yielded. "fast":
    # no-op calls (fastpool hands their results over in chunks); "slow": one at a time,
    # the last call blocking (a worker moving on to its next call must not hold on to
    # the result of its previous one).
    n = 1000 if speed == "fast" else 12

    def make(i):
        if speed == "slow":
            if i == n - 1:
                gate()
            time.sleep(0.002)
        return Obj(i)

    with executor_cls(2) as ex:
        it = ex.map(make, range(n))
        refs = []
        for _ in range(n - 1):
            obj = next(it)
            refs.append(weakref.ref(obj))
            del obj
        assert _dead_soon(refs) == []
        gate.open()
        assert next(it).tag == n - 1
        with pytest.raises(StopIteration):
            next(it)


def _counting(executor, how: str, calls: list):
    """Make executor.submit count its calls: `how` = "subclass" (an override on the
    type; executor is a class then) or "instance" (an attribute set on the instance)."""
    if how == "subclass":
        class Counting(executor):
            def submit(self, fn, /, *args, **kwargs):
                calls.append(args)
                return super().submit(fn, *args, **kwargs)

        return Counting(2)
    ex = executor(2)
    plain_submit = ex.submit

    def submit(fn, /, *args, **kwargs):
        calls.append(args)
        return plain_submit(fn, *args, **kwargs)

    ex.submit = submit
    return ex


@pytest.mark.parametrize("how", ["subclass", "instance"])
def test_map_goes_through_an_overridden_submit(executor_cls, how):
    # Wrappers count or carry context there (tqdm's thread_map counts its progress bar
    # in a submit wrapper): map() calls submit once per item, as the stdlib's does.
    calls: list = []
    with _counting(executor_cls, how, calls) as ex:
        assert list(ex.map(abs, [-1, -2, -3])) == [1, 2, 3]
        assert calls == [(-1,), (-2,), (-3,)]
        del calls[:]
        assert list(ex.map(pow, [2, 3], [5, 6], timeout=PROMPT)) == [32, 729]
        assert calls == [(2, 5), (3, 6)]
        if has_buffersize(type(ex)):
            del calls[:]
            it = ex.map(abs, range(-10, 0), buffersize=2)
            assert len(calls) == 2, "buffersize=2 submits 2 calls up front"
            assert next(it) == 10
            assert len(calls) == 3
            assert list(it) == list(range(9, 0, -1))
            assert len(calls) == 10


def test_map_without_override_does_not_call_submit():
    # The fast path (no Future per item) stays where submit is fastpool's own.
    class Plain(fastpool.ThreadPoolExecutor):
        pass

    with Plain(2) as ex:
        it = ex.map(abs, range(-5, 0))
        assert isinstance(it, fastpool._pick_core.core.MapJob)
        assert list(it) == [5, 4, 3, 2, 1]


def test_map_takes_inputs_at_the_call(executor_cls):
    # Without buffersize the inputs are consumed in map() itself, in the caller's
    # thread: an error raised by the input iterable comes from the map() call.
    def inputs():
        yield 1
        raise KeyError("input")

    with executor_cls(2) as ex:
        with pytest.raises(KeyError):
            ex.map(abs, inputs())


def test_map_buffersize_is_lazy(executor_cls, needs_buffersize):
    consumed = []

    def source(n):
        for i in range(n):
            consumed.append(i)
            yield i

    with executor_cls(2) as ex:
        it = ex.map(abs, source(1000), buffersize=2)
        assert len(consumed) == 2, "buffersize=2 submits 2 calls up front"
        for k in range(1, 50):
            assert next(it) == k - 1
            assert len(consumed) <= 2 + k
        assert list(it) == list(range(49, 1000))
        assert len(consumed) == 1000


def test_map_buffersize_with_endless_input(executor_cls, needs_buffersize):
    with executor_cls(2) as ex:
        it = ex.map(str, itertools.count(), buffersize=4)
        assert list(itertools.islice(it, 10)) == [str(i) for i in range(10)]
        it.close()


def test_map_buffersize_close_cancels_the_rest(executor_cls, needs_buffersize, gate):
    consumed = []

    def source():
        for i in range(100):
            consumed.append(i)
            yield i

    def f(i):
        return i if i == 0 else gate(i)

    ex = executor_cls(1)
    try:
        it = ex.map(f, source(), buffersize=3)
        assert next(it) == 0
        gate.wait_started(1)
        it.close()
        gate.open()
    finally:
        ex.shutdown(wait=True)
    assert gate.started == [1]
    assert len(consumed) <= 4


def test_map_buffersize_timeout_cancels_the_rest(executor_cls, needs_buffersize, gate):
    ex = executor_cls(1)
    try:
        it = ex.map(gate, range(100), timeout=0.3, buffersize=3)
        gate.wait_started(1)
        with pytest.raises(cf.TimeoutError):
            next(it)
        gate.open()
    finally:
        ex.shutdown(wait=True)
    assert gate.started == [0]


def test_map_buffersize_validation(executor_cls, needs_buffersize):
    with executor_cls(1) as ex:
        with pytest.raises(ValueError):
            ex.map(abs, [1], buffersize=0)
        with pytest.raises(ValueError):
            ex.map(abs, [1], buffersize=-1)
        with pytest.raises(TypeError):
            ex.map(abs, [1], buffersize=2.0)
        assert list(ex.map(abs, [-1, -2], buffersize=1)) == [1, 2]


# ---------------------------------------------------------------------------- shutdown


def test_shutdown_wait_runs_everything_queued(executor_cls):
    ex = executor_cls(2)
    fs = [ex.submit(time.sleep, 0.01) for _ in range(20)]
    ex.shutdown(wait=True)
    assert all(f.done() and not f.cancelled() for f in fs)
    assert all(not t.is_alive() for t in ex._threads)


def test_shutdown_nowait_returns_at_once(executor_cls, gate):
    ex = executor_cls(1)
    f = ex.submit(gate, "a")
    queued = ex.submit(str, "b")
    gate.wait_started(1)
    t0 = time.monotonic()
    ex.shutdown(wait=False)
    assert time.monotonic() - t0 < 1.0
    assert not f.done()
    gate.open()
    # Already accepted work still runs.
    assert f.result(PROMPT) == "a"
    assert queued.result(PROMPT) == "b"
    for t in list(ex._threads):
        t.join(PROMPT)
        assert not t.is_alive()


def test_shutdown_cancel_futures(executor_cls, gate):
    ex = executor_cls(1)
    running = ex.submit(gate, "running")
    gate.wait_started(1)
    queued = [ex.submit(str, i) for i in range(5)]
    ex.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    gate.open()
    assert running.result(PROMPT) == "running"
    ex.shutdown(wait=True)
    assert gate.started == ["running"]


def test_shutdown_twice(executor_cls):
    ex = executor_cls(1)
    ex.submit(int).result(PROMPT)
    ex.shutdown()
    ex.shutdown()
    ex.shutdown(wait=False, cancel_futures=True)


def test_submit_after_shutdown(executor_cls):
    ex = executor_cls(1)
    ex.shutdown()
    with pytest.raises(RuntimeError, match=r"^cannot schedule new futures after shutdown$"):
        ex.submit(int)
    ex2 = executor_cls(1)
    ex2.submit(int).result(PROMPT)
    ex2.shutdown(wait=False)
    with pytest.raises(RuntimeError, match=r"^cannot schedule new futures after shutdown$"):
        ex2.submit(int)
    with pytest.raises(RuntimeError, match=r"^cannot schedule new futures after shutdown$"):
        ex2.map(int, [1])


def test_concurrent_submit_and_shutdown_lose_nothing(executor_cls):
    # Every accepted future is run; every refused submit raises the shutdown error.
    for _ in range(20):
        ex = executor_cls(3)
        accepted = []
        refused = []

        def producer(ex, accepted, refused):
            while True:
                try:
                    accepted.append(ex.submit(abs, -1))
                except RuntimeError as exc:
                    refused.append(str(exc))
                    return

        threads = [threading.Thread(target=producer, args=(ex, accepted, refused))
                   for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.005)
        ex.shutdown(wait=True)
        for t in threads:
            t.join()
        assert all(f.done() for f in accepted)
        assert all(f.result(0) == 1 for f in accepted)
        assert refused == ["cannot schedule new futures after shutdown"] * 3


def test_context_manager(executor_cls, gate):
    with executor_cls(1) as ex:
        assert isinstance(ex, executor_cls)
        f = ex.submit(gate, "x")
        gate.wait_started(1)
        threading.Timer(0.1, gate.open).start()
    assert f.done()  # __exit__ waited
    assert all(not t.is_alive() for t in ex._threads)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(int)


def test_threads_are_joinable(executor_cls):
    ex = executor_cls(3)
    for f in [ex.submit(time.sleep, 0.01) for _ in range(6)]:
        f.result(PROMPT)
    assert 1 <= len(ex._threads) <= 3
    assert all(isinstance(t, threading.Thread) for t in ex._threads)
    ex.shutdown(wait=False)
    for t in ex._threads:
        t.join(PROMPT)
        assert not t.is_alive()


# ---------------------------------------------------------------------------- workers


def test_max_workers_default_matches_running_stdlib(executor_cls):
    ex = executor_cls()
    ref = cf.ThreadPoolExecutor()
    try:
        assert ex._max_workers == ref._max_workers
        count = getattr(os, "process_cpu_count", os.cpu_count)()
        assert ex._max_workers == min(32, (count or 1) + 4)
    finally:
        ex.shutdown()
        ref.shutdown()


@pytest.mark.parametrize("n", [0, -1])
def test_max_workers_must_be_positive(executor_cls, n):
    with pytest.raises(ValueError, match=r"^max_workers must be greater than 0$"):
        executor_cls(n)
    with pytest.raises(ValueError, match=r"^max_workers must be greater than 0$"):
        executor_cls(max_workers=n)


@pytest.mark.parametrize("n, threads", [(1.5, 2), (True, 1), (2**63, 4), (float("inf"), 4)],
                         ids=["1.5", "True", "2**63", "inf"])
def test_max_workers_accepts_what_the_stdlib_accepts(executor_cls, n, threads):
    # The stdlib checks only `max_workers <= 0`, and starts a thread while
    # len(threads) < max_workers: 1.5 allows 2 threads; 2**63 and inf are unbounded.
    with executor_cls(n) as ex:
        assert ex._max_workers == n
        barrier = threading.Barrier(threads)
        fs = [ex.submit(barrier.wait, PROMPT) for _ in range(threads)]
        assert sorted(f.result(PROMPT) for f in fs) == list(range(threads))
        assert len(ex._threads) == threads
        assert list(ex.map(abs, range(-20, 0))) == list(range(20, 0, -1))


def test_max_workers_nan_is_accepted_like_the_stdlib(executor_cls):
    # nan <= 0 is false, and so is len(threads) < nan: no worker ever starts.
    ex = executor_cls(float("nan"))
    try:
        f = ex.submit(abs, -1)
        time.sleep(0.05)
        assert not f.done() and not ex._threads
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("value", ["3", b"3", [], (), 1j, 0.0, -0.5, -2**63, float("-inf"),
                                   False], ids=repr)
def test_bad_max_workers_errors_match_the_stdlib(value):
    with pytest.raises(Exception) as want:
        cf.ThreadPoolExecutor(value)
    with pytest.raises(type(want.value)) as got:
        fastpool.ThreadPoolExecutor(value)
    assert str(got.value) == str(want.value)


def test_initializer_must_be_callable(executor_cls):
    with pytest.raises(TypeError, match=r"^initializer must be a callable$"):
        executor_cls(1, initializer=42)


def test_max_workers_respected(executor_cls):
    active = 0
    peak = 0
    lock = threading.Lock()

    def task():
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.02)
        with lock:
            active -= 1

    with executor_cls(3) as ex:
        assert ex._max_workers == 3
        for f in [ex.submit(task) for _ in range(30)]:
            f.result(PROMPT)
        assert len(ex._threads) == 3
    assert peak == 3


def test_workers_run_concurrently_up_to_max(executor_cls):
    # Tasks that need each other (a barrier) run together when max_workers allows,
    # in fresh pools (no worker yet) and in warm ones.
    for _ in range(30):
        with executor_cls(3) as ex:
            for _ in range(3):
                barrier = threading.Barrier(3)
                fs = [ex.submit(barrier.wait, PROMPT) for _ in range(3)]
                assert sorted(f.result(PROMPT) for f in fs) == [0, 1, 2]


def test_fresh_pool_starts_a_worker_per_task(executor_cls):
    # Two tasks submitted back to back to a new pool of two run at the same time: the
    # second must not be queued behind the first because the first worker, which just
    # took its task, still looked idle.
    for _ in range(300):
        gate = Gate()
        ex = executor_cls(2)
        try:
            ex.submit(gate, 0)
            ex.submit(gate, 1)
            gate.wait_started(2)
        finally:
            gate.open()
            ex.shutdown()


def test_thread_name_prefix(executor_cls):
    with executor_cls(2, thread_name_prefix="pfx") as ex:
        names = {ex.submit(lambda: threading.current_thread().name).result(PROMPT)}
        barrier = threading.Barrier(2)
        fs = [ex.submit(lambda: (barrier.wait(PROMPT), threading.current_thread().name)[1])
              for _ in range(2)]
        names |= {f.result(PROMPT) for f in fs}
        assert names == {"pfx_0", "pfx_1"}
        assert {t.name for t in ex._threads} == {"pfx_0", "pfx_1"}


def test_default_thread_names(executor_cls):
    pattern = re.compile(r"^ThreadPoolExecutor-(\d+)_(\d+)$")
    with executor_cls(1) as a, executor_cls(1) as b:
        name_a = a.submit(lambda: threading.current_thread().name).result(PROMPT)
        name_b = b.submit(lambda: threading.current_thread().name).result(PROMPT)
    ma, mb = pattern.match(name_a), pattern.match(name_b)
    assert ma and mb, (name_a, name_b)
    assert ma.group(2) == mb.group(2) == "0"
    # Each executor takes the next number of the (shared) counter.
    assert int(mb.group(1)) > int(ma.group(1))


def test_idle_worker_reuse(executor_cls):
    if executor_cls is cf.ThreadPoolExecutor:
        # The stdlib's worker counts itself idle only after the future is set, so the
        # next submit may start a second thread (seen in CI): it reuses idle workers
        # only loosely. fastpool's worker counts itself idle again before it releases
        # the GIL after a task (run_worker), so a woken caller always sees it idle.
        pytest.skip("the stdlib reuses idle workers racily")
    if not getattr(sys, "_is_gil_enabled", lambda: True)():
        pytest.skip("with the GIL off a woken caller may run before the worker is idle")
    with executor_cls(8) as ex:
        idents = {ex.submit(threading.get_ident).result(PROMPT) for _ in range(50)}
        assert len(ex._threads) == 1
        assert len(idents) == 1


def test_initializer_and_initargs(executor_cls):
    local = threading.local()
    calls = []
    lock = threading.Lock()

    def init(tag, n):
        with lock:
            calls.append((tag, n, threading.current_thread().name))
        local.value = tag * n

    def task():
        return local.value, threading.current_thread().name

    with executor_cls(2, initializer=init, initargs=("ab", 2),
                      thread_name_prefix="init") as ex:
        barrier = threading.Barrier(2)
        fs = [ex.submit(lambda: (barrier.wait(PROMPT), task())[1]) for _ in range(2)]
        results = [f.result(PROMPT) for f in fs]
    assert sorted(results) == [("abab", "init_0"), ("abab", "init_1")]
    assert sorted(calls) == [("ab", 2, "init_0"), ("ab", 2, "init_1")]


def test_initializer_failure_breaks_the_pool(executor_cls, caplog):
    release = threading.Event()

    def init():
        release.wait(PROMPT)
        raise ValueError("bad init")

    ex = executor_cls(2, initializer=init)
    try:
        with caplog.at_level(logging.CRITICAL, logger="concurrent.futures"):
            assert ex._broken is False
            fs = [ex.submit(int, i) for i in range(5)]
            release.set()
            for f in fs:
                with pytest.raises(fastpool.BrokenThreadPool):
                    f.result(PROMPT)
            deadline = time.monotonic() + PROMPT
            while not ex._broken and time.monotonic() < deadline:
                time.sleep(0.01)
            assert ex._broken
            with pytest.raises(fastpool.BrokenThreadPool, match="initializer failed"):
                ex.submit(int)
            with pytest.raises(cf.BrokenExecutor):
                ex.submit(int)
    finally:
        ex.shutdown(wait=True)
    assert any("Exception in initializer" in r.getMessage() for r in caplog.records)
    assert all(not t.is_alive() for t in ex._threads)


# ---------------------------------------------------------------------------- futures


def test_wait_and_as_completed(executor_cls):
    gates = [threading.Event() for _ in range(3)]
    with executor_cls(3) as ex:
        fs = [ex.submit(g.wait, PROMPT) for g in gates]
        done, not_done = cf.wait(fs, timeout=0.05)
        assert not done and len(not_done) == 3
        gates[1].set()
        done, not_done = cf.wait(fs, return_when=cf.FIRST_COMPLETED, timeout=PROMPT)
        assert done == {fs[1]}
        order = []
        for f in cf.as_completed(fs, timeout=PROMPT):
            order.append(fs.index(f))
            if f is fs[1]:
                gates[2].set()
            elif f is fs[2]:
                gates[0].set()
        assert order == [1, 2, 0]
        done, not_done = cf.wait(fs, return_when=cf.ALL_COMPLETED, timeout=PROMPT)
        assert done == set(fs) and not not_done


def test_wait_first_exception(executor_cls, gate):
    def boom():
        raise ValueError

    with executor_cls(2) as ex:
        slow = ex.submit(gate)
        bad = ex.submit(boom)
        done, not_done = cf.wait([slow, bad], return_when=cf.FIRST_EXCEPTION, timeout=PROMPT)
        assert done == {bad} and not_done == {slow}
        gate.open()


def test_result_and_exception_timeouts(executor_cls, gate):
    with executor_cls(1) as ex:
        f = ex.submit(gate, 5)
        with pytest.raises(cf.TimeoutError):
            f.result(timeout=0.05)
        with pytest.raises(cf.TimeoutError):
            f.exception(timeout=0.05)
        assert f.running() and not f.done()
        gate.open()
        assert f.result(PROMPT) == 5
        assert f.exception(0) is None
        assert f.done() and not f.running() and not f.cancelled()


def test_add_done_callback(executor_cls, gate):
    seen = []
    with executor_cls(1) as ex:
        f = ex.submit(gate, "v")
        f.add_done_callback(lambda fut: seen.append(("first", fut, threading.current_thread())))
        f.add_done_callback(lambda fut: seen.append(("second", fut, None)))
        gate.open()
        f.result(PROMPT)
        worker = next(iter(ex._threads))
        deadline = time.monotonic() + PROMPT
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [s[0] for s in seen] == ["first", "second"]
        assert seen[0][1] is f and seen[0][2] is worker  # called in the worker
        # Added after completion: called at once, in the caller's thread.
        f.add_done_callback(lambda fut: seen.append(("late", fut, threading.current_thread())))
        assert seen[-1] == ("late", f, threading.current_thread())


def test_cancel_only_before_running(executor_cls, gate):
    cancelled_cb = []
    with executor_cls(1) as ex:
        running = ex.submit(gate, "r")
        gate.wait_started(1)
        queued = ex.submit(gate, "q")
        queued.add_done_callback(cancelled_cb.append)
        assert running.cancel() is False
        assert queued.cancel() is True
        assert queued.cancel() is True  # idempotent
        assert queued.cancelled() and queued.done()
        assert cancelled_cb == [queued]
        with pytest.raises(cf.CancelledError):
            queued.result(0)
        with pytest.raises(cf.CancelledError):
            queued.exception(0)
        gate.open()
        assert running.result(PROMPT) == "r"
        assert running.cancel() is False  # finished
    assert gate.started == ["r"]


def test_exception_keeps_traceback(executor_cls):
    def inner_raiser():
        raise ValueError("from the task")

    def task():
        inner_raiser()

    with executor_cls(1) as ex:
        f = ex.submit(task)
        exc = f.exception(PROMPT)
        assert isinstance(exc, ValueError)
        names = [fr.name for fr in traceback.extract_tb(exc.__traceback__)]
        assert names[-2:] == ["task", "inner_raiser"]
        with pytest.raises(ValueError, match="from the task") as info:
            f.result()
        assert "inner_raiser" in [fr.name for fr in traceback.extract_tb(info.value.__traceback__)]


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_task_raising_base_exception_lands_on_future(executor_cls, exc_type):
    def task():
        raise exc_type()

    with executor_cls(1) as ex:
        first = ex.submit(threading.get_ident).result(PROMPT)
        f = ex.submit(task)
        assert isinstance(f.exception(PROMPT), exc_type)
        with pytest.raises(exc_type):
            f.result()
        # The worker survived: the same thread runs the next task.
        assert ex.submit(threading.get_ident).result(PROMPT) == first
        assert len(ex._threads) == 1


@pytest.mark.stdlib_bug("gh-109934: a done-callback raising BaseException kills its worker")
@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt])
def test_callback_raising_base_exception_keeps_worker(executor_cls, exc_type, gate, caplog):
    def bad_callback(fut):
        raise exc_type("from callback")

    ex = executor_cls(1)
    try:
        with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
            f = ex.submit(gate, 1)
            f.add_done_callback(bad_callback)
            gate.open()
            assert f.result(PROMPT) == 1
            # A one-worker pool whose worker died would never run this.
            timeout = HANG if executor_cls is cf.ThreadPoolExecutor else PROMPT
            assert ex.submit(str, 2).result(timeout) == "2"
    finally:
        ex.shutdown(wait=False, cancel_futures=True)
    assert any(r.exc_info and isinstance(r.exc_info[1], exc_type) for r in caplog.records)


def test_callback_errors_use_concurrent_futures_logger(executor_cls, gate, caplog):
    def bad_callback(fut):
        raise ValueError("cb failed")

    with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
        with executor_cls(1) as ex:
            f = ex.submit(gate)
            f.add_done_callback(bad_callback)  # runs in the worker
            gate.open()
            f.result(PROMPT)
            ex.submit(int).result(PROMPT)  # the worker is fine
            f.add_done_callback(bad_callback)  # already done: runs here
    records = [r for r in caplog.records if "exception calling callback for" in r.getMessage()]
    assert len(records) == 2
    assert all(r.name == "concurrent.futures" for r in records)
    assert all(isinstance(r.exc_info[1], ValueError) for r in records)


def test_task_submits_to_own_pool(executor_cls):
    with executor_cls(2) as ex:
        def outer(n):
            return ex.submit(pow, n, 2).result(PROMPT) + 1

        assert [ex.submit(outer, i).result(PROMPT) for i in range(10)] == [
            i * i + 1 for i in range(10)]

    with executor_cls(1) as ex:
        # One worker: the task cannot wait for the inner one, but may submit it.
        inner = ex.submit(lambda: ex.submit(str, "inner")).result(PROMPT)
        assert inner.result(PROMPT) == "inner"


# ---------------------------------------------------------------------------- asyncio


def test_asyncio_wrap_future(executor_cls):
    async def main(ex):
        return await asyncio.wrap_future(ex.submit(pow, 2, 10))

    with executor_cls(1) as ex:
        assert asyncio.run(main(ex)) == 1024


def test_asyncio_run_in_executor(executor_cls):
    async def main(ex):
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(*(loop.run_in_executor(ex, pow, i, 2) for i in range(20)))
        with pytest.raises(ZeroDivisionError):
            await loop.run_in_executor(ex, divmod, 1, 0)
        return results

    with executor_cls(2) as ex:
        assert asyncio.run(main(ex)) == [i * i for i in range(20)]


def test_asyncio_cancel_wrapped_future(executor_cls, gate):
    async def main(ex):
        ex.submit(gate)  # occupy the only worker
        gate.wait_started(1)
        fut = ex.submit(str, "never")
        wrapped = asyncio.wrap_future(fut)
        wrapped.cancel()
        with pytest.raises(asyncio.CancelledError):
            await wrapped
        return fut

    with executor_cls(1) as ex:
        fut = asyncio.run(main(ex))
        assert fut.cancelled()
        gate.open()


def test_asyncio_set_default_executor(executor_cls):
    ex = executor_cls(2, thread_name_prefix="dflt")

    async def main():
        loop = asyncio.get_running_loop()
        # asyncio insists on a ThreadPoolExecutor instance (a warning or TypeError otherwise).
        loop.set_default_executor(ex)
        a = await loop.run_in_executor(None, lambda: threading.current_thread().name)
        b = await asyncio.to_thread(lambda: threading.current_thread().name)
        return a, b

    try:
        a, b = asyncio.run(main())
    finally:
        ex.shutdown()
    assert a.startswith("dflt_") and b.startswith("dflt_")


# ---------------------------------------------------------------------------- stdlib bugs


@pytest.mark.stdlib_bug("gh-92001: cancelled futures not reported done to wait/as_completed")
def test_wait_after_shutdown_cancel_futures(executor_cls, gate):
    ex = executor_cls(1)
    try:
        ex.submit(gate)
        gate.wait_started(1)
        queued = [ex.submit(str, i) for i in range(5)]
        ex.shutdown(wait=False, cancel_futures=True)
        t0 = time.monotonic()
        done, not_done = cf.wait(queued, timeout=HANG)
        assert not not_done
        assert set(cf.as_completed(queued, timeout=HANG)) == set(queued)
        assert time.monotonic() - t0 < HANG
    finally:
        gate.open()
        ex.shutdown(wait=True)


@pytest.mark.stdlib_bug("gh-92001: cancelled futures not reported done to wait/as_completed")
def test_wait_sees_cancel_of_queued_future(executor_cls, gate):
    with executor_cls(1) as ex:
        ex.submit(gate)
        gate.wait_started(1)
        queued = ex.submit(str, "q")
        waiter_result = []
        # A waiter already blocked when the cancel happens must be woken, too.
        waiter = threading.Thread(
            target=lambda: waiter_result.append(cf.wait([queued], timeout=HANG)))
        waiter.start()
        time.sleep(0.05)
        try:
            assert queued.cancel()
            done, not_done = cf.wait([queued], timeout=HANG)
            assert done == {queued}
            assert next(cf.as_completed([queued], timeout=HANG)) is queued
            waiter.join()
            assert waiter_result[0].done == {queued}
        finally:
            gate.open()
            waiter.join()


# ---------------------------------------------------------------------------- interpreter exit

_ATEXIT_SUBMIT = """
import atexit, threading, sys
def run_last():
    try:
        ex.submit(id, None)
    except RuntimeError as exc:
        print("runtime-error:", exc, flush=True)
    else:
        print("accepted", flush=True)
{register_call}
from {module} import ThreadPoolExecutor
ex = ThreadPoolExecutor(5)
{warm}
"""


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
@pytest.mark.parametrize("hook", ["atexit", "threading"])
def test_submit_after_interpreter_shutdown(executor_cls, run_py, warm, hook):
    module = "fastpool" if executor_cls is fastpool.ThreadPoolExecutor else "concurrent.futures"
    if hook == "atexit":
        # atexit hooks run after threading's shutdown, where the executors stop.
        call = "atexit.register(run_last)"
    else:
        # threading._register_atexit hooks run in reverse order of registration: one
        # registered before the executor module is imported runs after the executor's.
        call = "threading._register_atexit(run_last)"
    code = _ATEXIT_SUBMIT.format(register_call=call, module=module,
                                 warm="ex.submit(id, 42).result()" if warm else "")
    proc = run_py(code, timeout=60)
    assert proc.returncode == 0, proc
    if warm:
        # The stdlib's workers flag their executor shut down on their way out, so its
        # message may name plain shutdown here; both are RuntimeErrors.
        assert re.fullmatch(
            r"runtime-error: cannot schedule new futures after (interpreter )?shutdown",
            proc.stdout.strip()), proc
    else:
        assert proc.stdout.strip() == (
            "runtime-error: cannot schedule new futures after interpreter shutdown"), proc
