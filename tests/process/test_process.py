"""fastpool.ProcessPoolExecutor: the stdlib's semantics, checked against the stdlib.

Most tests run on both executors (`process_cls`): whatever fastpool does differently
inside (batched pipes, one reader thread) must not show from outside. Tasks are
builtins and stdlib functions, so workers never need to import this file. Processes
start slowly on a loaded machine: tests share a warmed executor where they can.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import inspect
import itertools
import multiprocessing as mp
import operator
import os
import select
import signal
import sys
import threading
import time
import weakref
from concurrent.futures.process import BrokenProcessPool

import pytest

import fastpool
from fastpool.process import ProcessPoolExecutor

CTX = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
IMPLS = {"fastpool": ProcessPoolExecutor, "stdlib": cf.ProcessPoolExecutor}


@pytest.fixture(params=list(IMPLS), scope="module")
def process_cls(request):
    return IMPLS[request.param]


@pytest.fixture(scope="module")
def shared(process_cls):
    """A warmed 2-worker executor for tests that leave it usable."""
    ex = process_cls(2, mp_context=CTX)
    # Both workers and the manager thread exist before any test (the leak check).
    list(ex.map(time.sleep, [0.05, 0.05], chunksize=1))
    yield ex
    ex.shutdown()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # Still there, or a zombie not yet reaped by its parent (the forkserver).
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def _wait_gone(pids, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        alive = [p for p in pids if not _gone(p)]
        if not alive:
            return []
        time.sleep(0.02)
    return alive


# ------------------------------------------------------------------ the API itself

def _params(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def test_is_a_drop_in():
    assert issubclass(ProcessPoolExecutor, cf.ProcessPoolExecutor)
    assert fastpool.ProcessPoolExecutor is ProcessPoolExecutor
    assert "ProcessPoolExecutor" in fastpool.__all__
    if sys.version_info >= (3, 11):  # 3.10's lacks max_tasks_per_child, offered here
        assert _params(ProcessPoolExecutor.__init__) == _params(cf.ProcessPoolExecutor.__init__)
    for name in ("submit", "shutdown") + (("map",) if sys.version_info >= (3, 14) else ()):
        assert _params(getattr(ProcessPoolExecutor, name)) == _params(
            getattr(cf.ProcessPoolExecutor, name))
        assert getattr(ProcessPoolExecutor, name).__doc__


def test_import_fastpool_does_not_load_multiprocessing(run_py):
    r = run_py("import sys, fastpool\n"
               "print('multiprocessing' in sys.modules)\n"
               "fastpool.ProcessPoolExecutor\n"
               "print('multiprocessing' in sys.modules)\n")
    assert r.returncode == 0, r
    assert r.stdout.split() == ["False", "True"]


@pytest.mark.parametrize("kwargs, error, match", [
    ({"max_workers": 0}, ValueError, "max_workers must be greater than 0"),
    ({"initializer": 3}, TypeError, "initializer must be a callable"),
    ({"max_tasks_per_child": 0}, ValueError, "max_tasks_per_child must be >= 1"),
    ({"max_tasks_per_child": 1.5}, TypeError, "max_tasks_per_child must be an integer"),
    ({"max_tasks_per_child": 1, "mp_context": mp.get_context("fork")}, ValueError,
     "incompatible with the 'fork'"),
])
def test_constructor_errors(process_cls, kwargs, error, match):
    if sys.version_info < (3, 11) and "max_tasks_per_child" in kwargs \
            and process_cls is cf.ProcessPoolExecutor:
        pytest.skip("max_tasks_per_child is 3.11+ in the stdlib")
    with pytest.raises(error, match=match):
        process_cls(**kwargs)


def test_default_start_method_never_forks(run_py):
    # Before 3.14 the stdlib forks on Linux, also from a threaded parent; fastpool
    # takes 3.14's forkserver there. A start method the user set is respected.
    r = run_py("from fastpool import ProcessPoolExecutor as P\n"
               "import multiprocessing as mp\n"
               "print(P(1)._mp_context.get_start_method())\n"
               "print(P(1, max_tasks_per_child=2)._mp_context.get_start_method())\n"
               "mp.set_start_method('spawn')\n"
               "print(P(1)._mp_context.get_start_method())\n")
    assert r.returncode == 0, r
    first, with_max_tasks, chosen = r.stdout.split()
    if sys.platform == "linux":
        assert first == "forkserver"
    assert first != "fork"
    assert with_max_tasks == "spawn"  # as the stdlib
    assert chosen == "spawn"


# ------------------------------------------------------------------ results and errors

def test_submit_and_map(shared):
    assert shared.submit(pow, 2, 10).result() == 1024
    assert shared.submit(divmod, 7, b=2).exception() is not None  # kwargs reach fn
    assert shared.submit(int, "7", base=8).result() == 7
    assert list(shared.map(pow, range(50), itertools.repeat(2))) == [i * i for i in range(50)]
    for chunksize in (1, 3, 64):
        assert list(shared.map(abs, range(-20, 20), chunksize=chunksize)) == [
            abs(i) for i in range(-20, 20)]
    assert list(shared.map(abs, [])) == []
    with pytest.raises(ValueError, match="chunksize must be >= 1"):
        shared.map(abs, [1], chunksize=0)


def test_map_keeps_no_reference_to_yielded_results(shared):
    # bpo-14406 (CPython's test_free_reference): sets support weak references.
    for obj in shared.map(set, [[i] for i in range(10)]):
        ref = weakref.ref(obj)
        del obj
        gc.collect()
        assert ref() is None


def test_exception_carries_remote_traceback(shared):
    exc = shared.submit(divmod, 1, 0).exception(timeout=30)
    assert type(exc) is ZeroDivisionError
    assert type(exc.__cause__) is cf.process._RemoteTraceback
    assert "ZeroDivisionError" in str(exc.__cause__)
    assert "Traceback (most recent call last)" in str(exc.__cause__)


@pytest.mark.parametrize("chunksize", [1, 2])
def test_map_raises_at_the_failing_item(shared, chunksize):
    it = shared.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5], chunksize=chunksize)
    if chunksize == 1:
        # Every result before the failing call is yielded, then its exception.
        assert next(it) == (0, 1)
        assert next(it) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        list(it)


def test_map_timeout(shared):
    start = time.monotonic()
    it = shared.map(time.sleep, [0, 1.0], timeout=0.2)
    with pytest.raises(cf.TimeoutError):
        list(it)
    assert time.monotonic() - start < 5
    time.sleep(1.0)  # leave the shared workers idle for the next test


def test_unpicklable_argument_fails_its_future(shared):
    # (A lambda would do with the stdlib, but fastpool sends one by value when the
    # cloudpickle extra is installed: tests/process/test_process_cloudpickle.py.)
    f = shared.submit(id, threading.Lock())
    with pytest.raises(TypeError, match="pickle"):
        f.result(timeout=30)
    # Only that future: the pool is fine.
    assert shared.submit(abs, -3).result(timeout=30) == 3


def test_unpicklable_result_fails_its_future(shared):
    f = shared.submit(threading.Lock)
    with pytest.raises(TypeError, match="pickle"):
        f.result(timeout=30)
    assert shared.submit(abs, -4).result(timeout=30) == 4


def test_base_exception_in_task_is_returned(shared):
    # The stdlib catches BaseException in the worker: SystemExit lands on the future.
    f = shared.submit(sys.exit, 3)
    with pytest.raises(SystemExit):
        f.result(timeout=30)
    assert shared.submit(abs, -5).result(timeout=30) == 5


def test_as_completed_and_wait(shared):
    fs = [shared.submit(time.sleep, d) for d in (0.3, 0.0, 0.0)]
    first = next(cf.as_completed(fs, timeout=30))
    assert first is not fs[0]
    done, not_done = cf.wait(fs, timeout=30)
    assert len(done) == 3 and not not_done


def test_every_future_ends_in_one_state(shared):
    # Invariant: every submitted future ends done, with its own result or cancelled.
    fs = [shared.submit(operator.mul, i, 3) for i in range(3000)]
    cancelled = {i for i, f in enumerate(fs) if i % 7 == 0 and f.cancel()}
    done, not_done = cf.wait(fs, timeout=60)
    assert not not_done
    for i, f in enumerate(fs):
        if i in cancelled:
            assert f.cancelled()
        else:
            assert f.result() == 3 * i


def test_map_buffersize_is_lazy():
    if not hasattr(cf.Executor.map, "__code__") or sys.version_info < (3, 14):
        impls = [ProcessPoolExecutor]  # fastpool offers it on every version
    else:
        impls = [ProcessPoolExecutor, cf.ProcessPoolExecutor]
    for cls in impls:
        with cls(2, mp_context=CTX) as ex:
            it = ex.map(pow, itertools.count(), itertools.repeat(2), buffersize=4)
            assert list(itertools.islice(it, 20)) == [i * i for i in range(20)]
            it.close()
            with pytest.raises(ValueError):
                ex.map(abs, [1], buffersize=0)


# ------------------------------------------------------------------ workers

def test_initializer(process_cls):
    with process_cls(1, mp_context=CTX, initializer=sys.setrecursionlimit,
                     initargs=(1234,)) as ex:
        assert ex.submit(sys.getrecursionlimit).result(timeout=30) == 1234


def test_initializer_failure_breaks_the_pool(process_cls):
    with process_cls(1, mp_context=CTX, initializer=operator.truediv,
                     initargs=(1, 0)) as ex:
        f = ex.submit(abs, 1)
        with pytest.raises(BrokenProcessPool):
            f.result(timeout=30)
        with pytest.raises(BrokenProcessPool):
            ex.submit(abs, 1)


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_worker_death_breaks_the_pool(process_cls, how):
    ex = process_cls(2, mp_context=CTX)
    try:
        slow = [ex.submit(time.sleep, 3)]
        if how == "exit":
            crash = ex.submit(os._exit, 3)
        else:
            pid = next(iter(ex._processes))
            # A task that cannot finish before the kill is seen: abs() could, on the
            # worker not killed, and its result would stand (seen in CI, stdlib too).
            crash = ex.submit(time.sleep, 3)
            os.kill(pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(BrokenProcessPool):
            crash.result(timeout=30)
        # The task running on the other worker fails too. (The stdlib may have run
        # both on one worker, one after the other.)
        if process_cls is ProcessPoolExecutor:
            with pytest.raises(BrokenProcessPool):
                slow[0].result(timeout=30)
            # One exception each: a shared one would collect every result() frame.
            assert slow[0].exception() is not crash.exception()
        assert time.monotonic() - start < 10  # seen at once, not after the sleeps
        with pytest.raises(BrokenProcessPool):
            ex.submit(abs, 1)
        pids = list(ex._processes)
    finally:
        ex.shutdown()
    assert not _wait_gone(pids)


def test_max_tasks_per_child(process_cls):
    if sys.version_info < (3, 11) and process_cls is cf.ProcessPoolExecutor:
        pytest.skip("max_tasks_per_child is 3.11+ in the stdlib")
    with process_cls(1, mp_context=CTX, max_tasks_per_child=2) as ex:
        pids = [ex.submit(os.getpid).result(timeout=30) for _ in range(5)]
        assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
        assert len(ex._processes) == 1
        if process_cls is ProcessPoolExecutor or sys.version_info >= (3, 14):
            # Many at once: every task runs, on replaced workers (the stdlib hangs
            # here in 3.11-3.13.0: gh-115634).
            fs = [ex.submit(abs, -i) for i in range(7)]
            assert [f.result(timeout=30) for f in fs] == list(range(7))


def test_shutdown_cancel_futures(process_cls):
    ex = process_cls(1, mp_context=CTX)
    first = ex.submit(time.sleep, 0.5)
    rest = [ex.submit(abs, -i) for i in range(20)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert first.result() is None
    assert all(f.done() for f in rest)
    assert any(f.cancelled() for f in rest)
    for i, f in enumerate(rest):
        assert f.cancelled() or f.result() == i
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(abs, 1)


def test_shutdown_no_wait_finishes_the_work(process_cls):
    ex = process_cls(2, mp_context=CTX)
    fs = [ex.submit(operator.mul, i, 2) for i in range(30)]
    ex.shutdown(wait=False)
    assert [f.result(timeout=30) for f in fs] == [2 * i for i in range(30)]


def test_del_shuts_down():
    ex = ProcessPoolExecutor(1, mp_context=CTX)
    assert ex.submit(abs, -1).result(timeout=30) == 1
    thread, pids = ex._executor_manager_thread, list(ex._processes)
    del ex
    gc.collect()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert not _wait_gone(pids)


def test_no_leaked_processes_after_many_cycles():
    children_before = {p.pid for p in mp.active_children()}
    threads_before = set(threading.enumerate())
    pids = []
    for i in range(50):
        with ProcessPoolExecutor(1, mp_context=CTX) as ex:
            assert ex.submit(operator.add, i, 1).result(timeout=30) == i + 1
            pids.extend(ex._processes)
    assert len(set(pids)) == 50
    assert not _wait_gone(pids)
    assert {p.pid for p in mp.active_children()} <= children_before
    assert not set(threading.enumerate()) - threads_before  # every reader thread joined


@pytest.mark.skipif(not hasattr(cf.ProcessPoolExecutor, "terminate_workers"),
                    reason="terminate_workers() is 3.14+ in the stdlib")
def test_terminate_workers(process_cls):
    ex = process_cls(2, mp_context=CTX)
    f = ex.submit(time.sleep, 30)
    while not f.running():
        time.sleep(0.01)
    pids = list(ex._processes)
    ex.terminate_workers()
    with pytest.raises((BrokenProcessPool, cf.CancelledError)):
        f.result(timeout=30)
    ex.shutdown()
    assert not _wait_gone(pids)


def test_argument_outlives_its_pickle_until_the_worker_has_it(process_cls):
    """A Manager proxy passed as the only reference to its object: the parent must keep
    the task's arguments until the worker answers (the stdlib keeps its work item), or
    the manager frees the object before the worker's proxy registers with it."""
    with CTX.Manager() as manager, process_cls(2, mp_context=CTX) as ex:
        fs = [ex.submit(operator.methodcaller("is_set"), manager.Event()) for _ in range(20)]
        assert [f.result(timeout=60) for f in fs] == [False] * 20


# ------------------------------------------------------------------ lazy map

class _Counted:
    """An input iterator that counts how far it was read."""

    def __init__(self, n, fail_at=None):
        self.n, self.fail_at, self.read = n, fail_at, 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.read == self.fail_at:
            raise KeyError("input failed")
        if self.read >= self.n:
            raise StopIteration
        self.read += 1
        return self.read - 1


def test_map_reads_a_huge_input_lazily(shared):
    if not isinstance(shared, ProcessPoolExecutor):
        pytest.skip("the stdlib's map reads its whole input at once")
    src = _Counted(1_000_000)
    it = shared.map(abs, src)
    assert src.read <= 2 * 2 * 4 * 256  # two windows (4 chunks of 256 per worker)
    assert list(itertools.islice(it, 10_000)) == list(range(10_000))
    # Read as consumed: the windows ahead of the consumer, not the rest.
    assert src.read <= 10_000 + 2 * 2 * 4 * 256 + 256  # + the chunk being yielded
    it.close()
    read = src.read
    time.sleep(0.05)
    assert src.read == read  # a closed iterator reads no more


def test_map_small_input_is_submitted_at_once(shared):
    src = _Counted(1000)
    it = shared.map(abs, src)
    assert src.read == 1000  # fits in the first window: as the stdlib
    assert list(it) == list(range(1000))


def test_map_input_error_is_raised_after_the_results_before_it(shared):
    src = _Counted(10_000, fail_at=5000)
    if isinstance(shared, ProcessPoolExecutor):
        out = []
        with pytest.raises(KeyError, match="input failed"):
            for r in shared.map(abs, src):
                out.append(r)
        assert out == list(range(5000))
    else:  # the stdlib reads it all at once
        with pytest.raises(KeyError, match="input failed"):
            shared.map(abs, src)


@pytest.mark.parametrize("wait", [True, False])
def test_map_unread_input_still_runs_at_shutdown(process_cls, wait):
    """The stdlib submits every input at once, so a map() never iterated, or iterated
    only after shutdown(), still runs all of it: so does the lazy one."""
    ex = process_cls(2, mp_context=CTX)
    src = _Counted(20_000)
    it = ex.map(abs, src)
    ex.shutdown(wait=wait)
    assert src.read == 20_000
    assert sum(it) == sum(range(20_000))


def test_map_shutdown_cancel_futures_drops_the_unread_input(process_cls):
    ex = process_cls(2, mp_context=CTX)
    src = _Counted(50_000)
    it = ex.map(abs, src)
    ex.shutdown(wait=True, cancel_futures=True)
    if process_cls is ProcessPoolExecutor:
        assert src.read < 50_000
    got = []
    with pytest.raises(cf.CancelledError):
        for r in it:
            got.append(r)
    assert got == list(range(len(got)))


def test_map_consumed_while_another_thread_shuts_down():
    """The consumer pulls more input while shutdown() submits the rest: every result
    still arrives, once, in input order."""
    for _ in range(3):
        ex = ProcessPoolExecutor(2, mp_context=CTX)
        it = ex.map(abs, range(30_000))
        got = list(itertools.islice(it, 3000))
        t = threading.Thread(target=ex.shutdown)
        t.start()
        got.extend(it)
        t.join(timeout=60)
        assert got == list(range(30_000))


# ------------------------------------------------------------------ the transport

def test_map_over_one_iterable_sends_its_items_as_they_are(monkeypatch):
    """No 1-tuple per item to build, pickle and unpack (zip's): the chunk is the items."""
    sent = []
    submit = ProcessPoolExecutor.submit

    def spy(self, fn, /, *args, **kwargs):
        sent.append(args)
        return submit(self, fn, *args, **kwargs)

    monkeypatch.setattr(ProcessPoolExecutor, "submit", spy)
    with ProcessPoolExecutor(1, mp_context=CTX) as ex:
        assert list(ex.map(abs, [-1, -2, 3], chunksize=2)) == [1, 2, 3]
        assert list(ex.map(pow, [2, 3], [3, 2], chunksize=2)) == [8, 9]
    assert [chunk for _, chunk in sent] == [[-1, -2], [3], [(2, 3), (3, 2)]]


def test_a_fast_worker_gets_its_next_batch_while_it_runs_one(monkeypatch):
    """Pipelining: the worker does not wait for the parent between two batches."""
    from fastpool import process
    # Every batch counts as short, however slow this machine is.
    monkeypatch.setattr(process, "_PIPELINE_UNDER", float("inf"))
    with ProcessPoolExecutor(1, mp_context=CTX) as ex:
        assert ex.submit(abs, -1).result() == 1
        first = ex.submit(process._wait_for_next_batch, 30)
        # More queued than there are workers: one of them may go ahead.
        rest = [ex.submit(abs, -2), ex.submit(abs, -3)]
        assert first.result() is True  # a second batch was in its pipe
        assert [f.result() for f in rest] == [2, 3]


def test_no_second_batch_while_another_worker_may_idle(monkeypatch):
    """A second batch goes ahead only when more tasks are queued than there are
    workers: else a queued task could wait behind a long one while a worker idles."""
    from fastpool import process
    monkeypatch.setattr(process, "_PIPELINE_UNDER", float("inf"))
    with ProcessPoolExecutor(2, mp_context=CTX) as ex:
        assert list(ex.map(time.sleep, [0.05, 0.05], chunksize=1)) == [None, None]
        waits = [ex.submit(process._wait_for_next_batch, 1.0) for _ in range(2)]
        last = ex.submit(abs, -1)
        assert [f.result() for f in waits] == [False, False]
        assert last.result() == 1


def test_a_slow_worker_gets_no_second_batch(monkeypatch):
    """Tasks that take long are not queued behind each other in one worker while
    another may be idle."""
    from fastpool import process
    monkeypatch.setattr(process, "_PIPELINE_UNDER", 0.0)
    with ProcessPoolExecutor(1, mp_context=CTX) as ex:
        assert ex.submit(abs, -1).result() == 1
        first = ex.submit(process._wait_for_next_batch, 0.5)
        second = ex.submit(abs, -2)
        assert first.result() is False
        assert second.result() == 2


def test_big_batches_and_results_do_not_deadlock_the_pipe(monkeypatch):
    """A second batch larger than the pipe's buffer, while the worker writes results
    larger than it too: it waits in the parent until the worker answers."""
    from fastpool import process
    monkeypatch.setattr(process, "_PIPELINE_UNDER", float("inf"))
    blob = bytes(1 << 20)
    ex = ProcessPoolExecutor(1, mp_context=CTX)
    try:
        assert ex.submit(abs, -1).result() == 1
        fs = [ex.submit(bytes, blob) for _ in range(8)]
        assert all(f.result(timeout=60) == blob for f in fs)
    finally:
        for p in list(ex._processes.values()):
            p.kill()  # unblocks a deadlocked reader, so the test fails instead of hanging
        ex.shutdown()


@pytest.mark.skipif(not hasattr(select, "poll"), reason="Windows: wait() as it is")
def test_the_reader_makes_no_poll_object_per_answer(monkeypatch):
    """multiprocessing.connection.wait() makes and fills a selector per call: the
    reader keeps one until its set of pipes changes."""
    from fastpool import process
    made = []
    poll, wait = select.poll, process._wait

    def counted():
        made.append(1)
        return poll()

    def counted_wait(objs):
        made.append(1)  # a selector made for this call
        return wait(objs)

    monkeypatch.setattr(select, "poll", counted)
    monkeypatch.setattr(process, "_wait", counted_wait)
    with ProcessPoolExecutor(1, mp_context=CTX) as ex:
        for i in range(200):
            assert ex.submit(abs, -i).result() == i
    assert len(made) < 20  # one per worker start, exit or wake-up, not per answer


def test_a_task_that_does_not_pickle_uses_none_of_max_tasks_per_child():
    """The worker counts the tasks it runs: one that never reached it must not use up
    the parent's count of what it may still be sent (else the worker, idle with none
    left and never exiting, would leave the queue stuck)."""
    with ProcessPoolExecutor(1, mp_context=CTX, max_tasks_per_child=2) as ex:
        first = ex.submit(time.sleep, 0.5)
        bad = ex.submit(abs, threading.Lock())
        good = ex.submit(abs, -3)
        assert first.result(timeout=60) is None
        with pytest.raises(TypeError, match="pickle"):
            bad.result(timeout=60)
        assert good.result(timeout=60) == 3


def test_the_error_of_a_task_that_does_not_pickle_holds_no_parent_frames():
    """Its error keeps the formatted traceback (as __cause__), not the frames: those
    hold the executor's state and the pickler's BytesIO, whose buffer is still
    exported. Collected in a reference cycle, that BytesIO raised "BufferError:
    Existing exports of data" from the garbage collector (3.14, in CI: this module's
    tests, then test_process_stdlib's gc.collect())."""
    with ProcessPoolExecutor(1, mp_context=CTX) as ex:
        bad = ex.submit(abs, threading.Lock())
        err = bad.exception(timeout=60)
    assert isinstance(err, TypeError) and "pickle" in str(err)
    assert "Traceback" in str(err.__cause__)
    assert err.__traceback__ is None and err.__context__ is None
