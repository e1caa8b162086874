"""The map engine (core.MapJob) behind ThreadPoolExecutor.map: no Future per item.

Runs on whichever core is active (the suite runs once native, once with
FASTPOOL_NO_EXTENSIONS=1); executor-level stdlib parity lives in test_executor.py.
"""

import gc
import itertools
import threading
import time
import weakref
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as FuturesTimeoutError

import pytest

import fastpool
from fastpool._pick_core import core


@pytest.fixture
def ex():
    executor = fastpool.ThreadPoolExecutor(4)
    yield executor
    executor.shutdown(wait=True, cancel_futures=True)


def test_large_map_in_order(ex):
    n = 50_000
    assert list(ex.map(lambda x: x + 1, range(n))) == list(range(1, n + 1))


def test_several_iterables_stop_at_shortest(ex):
    assert list(ex.map(pow, [2, 3, 4], [5, 6])) == [32, 729]


def test_exception_raised_at_its_item_and_rest_cancelled(ex):
    started = []

    def fn(x):
        started.append(x)
        if x == 3:
            raise KeyError(x)
        time.sleep(0.01)
        return x

    it = ex.map(fn, range(1000))
    got = []
    with pytest.raises(KeyError):
        for v in it:
            got.append(v)
    assert got == [0, 1, 2]
    time.sleep(0.2)
    n = len(started)
    time.sleep(0.2)
    # The job stopped: nothing new starts after the error was raised.
    assert len(started) == n < 1000


def test_slow_items_spread_over_all_workers(ex):
    threads = set()
    barrier = threading.Barrier(4, timeout=30)

    def fn(_):
        threads.add(threading.get_ident())
        barrier.wait()  # only passes if 4 items run at the same time
        return 1

    assert sum(ex.map(fn, range(4))) == 4
    assert len(threads) == 4


def test_lazy_buffersize_consumes_input_in_step(ex):
    consumed = []

    def source():
        for i in itertools.count():
            consumed.append(i)
            yield i

    it = ex.map(lambda x: x * 10, source(), buffersize=3)
    assert len(consumed) == 3          # taken at the call, in this thread
    assert [next(it) for _ in range(4)] == [0, 10, 20, 30]
    assert len(consumed) == 3 + 4      # one more per result, as Python 3.14's map
    it.close()


def test_timeout_counts_from_the_call(ex):
    it = ex.map(time.sleep, [0.0, 5.0])
    it.close()
    it = ex.map(time.sleep, [1.0], timeout=0.2)
    time.sleep(0.3)
    t0 = time.monotonic()
    with pytest.raises(FuturesTimeoutError):
        next(it)
    assert time.monotonic() - t0 < 0.5  # already past the deadline: no fresh 0.2 s


def test_dropping_the_iterator_cancels_unstarted(ex):
    ran = []
    it = ex.map(lambda x: (time.sleep(0.01), ran.append(x)), range(500))
    next(it)
    del it
    gc.collect()
    time.sleep(0.3)
    n = len(ran)
    time.sleep(0.2)
    assert len(ran) == n < 100


def test_shutdown_cancel_futures_aborts_running_map():
    executor = fastpool.ThreadPoolExecutor(2)
    ran = []

    def slow(x):
        time.sleep(0.02)
        ran.append(x)
        return x

    it = executor.map(slow, range(200))
    time.sleep(0.1)
    executor.shutdown(wait=True, cancel_futures=True)
    got = []
    with pytest.raises(CancelledError):
        for v in it:
            got.append(v)
    assert got == list(range(len(got)))
    assert len(ran) < 100
    # What ran and finished before the abort was delivered, in order.
    assert len(got) >= 1


def test_unordered_and_return_exceptions():
    q = core.WorkQueue()
    worker = threading.Thread(target=core.run_worker, args=(q,))
    worker.start()
    try:
        def fn(x):
            if x % 5 == 0:
                raise ValueError(x)
            return x

        job = core.MapJob(fn, range(50), q.put, 1, star=False, ordered=False,
                          return_exceptions=True)
        out = list(job)
        assert len(out) == 50
        errors = [e for e in out if isinstance(e, ValueError)]
        assert sorted(e.args[0] for e in errors) == list(range(0, 50, 5))
        assert sorted(v for v in out if not isinstance(v, ValueError)) == [
            x for x in range(50) if x % 5]
    finally:
        q.close()
        worker.join(30)


def test_inputs_and_results_are_released(ex):
    class Obj:
        pass

    refs = []

    def make():
        for _ in range(100):
            o = Obj()
            refs.append(weakref.ref(o))
            yield o

    assert sum(1 for _ in ex.map(lambda o: o, make())) == 100
    # The consumer can get the last result a moment before the worker that produced it
    # drops its chunk: released *soon*, not necessarily at this very instant.
    deadline = time.monotonic() + 5.0
    while True:
        gc.collect()
        if all(r() is None for r in refs) or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert all(r() is None for r in refs)


def test_map_after_shutdown_raises():
    executor = fastpool.ThreadPoolExecutor(1)
    executor.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.map(abs, [1, 2, 3])


@pytest.mark.timeout(60)
def test_map_fails_with_broken_pool_when_initializer_fails(caplog):
    # The map's queued runners have no future: the broken pool must still fail them
    # (once, this left the worker dying on AttributeError and the map hanging).
    def bad_init():
        time.sleep(0.1)  # the map's runners are queued by then
        raise OSError("no database")

    executor = fastpool.ThreadPoolExecutor(1, initializer=bad_init)
    try:
        first = executor.submit(abs, -1)
        it = executor.map(abs, range(5))
        with pytest.raises(fastpool.BrokenThreadPool):
            list(it)
        with pytest.raises(fastpool.BrokenThreadPool):
            first.result(30)
    finally:
        executor.shutdown(wait=True)


def test_weak_enqueue_takes_no_input_once_its_owner_is_gone():
    # The executor hands its map jobs a weak reference to its enqueue method, so that
    # a live iterator does not keep it alive; once it is gone, no input is taken any
    # more and the job ends after the ones already taken (as the stdlib's map).
    q = core.WorkQueue()
    worker = threading.Thread(target=core.run_worker, args=(q,))
    worker.start()

    class Owner:
        def enqueue(self, item):
            q.put(item)

    taken = []

    def source():
        for i in range(10):
            taken.append(i)
            yield i

    try:
        owner = Owner()
        job = core.MapJob(abs, source(), weakref.WeakMethod(owner.enqueue), 2, star=False,
                          buffersize=2)
        assert next(job) == 0
        assert taken == [0, 1, 2]
        ref = weakref.ref(owner)
        del owner
        assert ref() is None, "the job keeps its owner alive"
        assert list(job) == [1, 2]
        assert taken == [0, 1, 2]
    finally:
        q.close()
        worker.join(30)
