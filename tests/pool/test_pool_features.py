"""fastpool.Pool: scaling, rate limiting, groups, streaming map, asyncio, contextvars,
signals, fork and interpreter exit."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextvars
import itertools
import os
import signal
import sys
import threading
import time

import pytest

from fastpool import Pool, Retry, Stats, current_token
from pool_support import (PROMPT, Gate, check_invariant, fail, gate, make_pool, ok,  # noqa: F401
                          wait_until)

# -- scaling -----------------------------------------------------------------------------

def test_idle_workers_above_minimum_exit(make_pool, gate):
    pool = make_pool(4, min_workers=1, idle_timeout=0.1)
    futs = [pool.submit(gate, i) for i in range(4)]
    gate.wait_started(4)
    assert pool.stats().workers == 4
    gate.open()
    assert [f.result(PROMPT) for f in futs] == [0, 1, 2, 3]
    wait_until(lambda: pool.stats().workers == 1, what="idle workers to retire")
    time.sleep(0.3)
    assert pool.stats().workers == 1  # never below the minimum
    # New work finds a worker (new ones start when work waits).
    assert [f.result(PROMPT) for f in [pool.submit(ok, i) for i in range(50)]] == list(range(50))


def test_all_workers_may_retire_and_come_back(make_pool):
    pool = make_pool(2, idle_timeout=0.05)
    assert pool.submit(ok, 1).result(PROMPT) == 1
    wait_until(lambda: pool.stats().workers == 0, what="every worker to retire")
    for i in range(20):  # each submit races a retiring worker: none may be lost
        assert pool.submit(ok, i).result(PROMPT) == i


def test_retry_after_workers_retired(make_pool):
    pool = make_pool(1, idle_timeout=0.05)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise ValueError
        return "ok"

    fut = pool.schedule(flaky, retry=Retry(attempts=2, backoff=0.5, jitter=0))
    assert fut.result(PROMPT) == "ok"


def test_resize(make_pool, gate):
    pool = make_pool(4, idle_timeout=None)
    futs = [pool.submit(gate, i) for i in range(6)]
    gate.wait_started(4)
    assert pool.stats().workers == 4
    pool.resize(6)
    assert pool.workers == 6
    gate.wait_started(6)  # queued work got the new workers at once
    assert pool.stats().workers == 6
    gate.open()
    assert [f.result(PROMPT) for f in futs] == list(range(6))
    pool.resize(2)
    wait_until(lambda: pool.stats().workers <= 2, what="surplus workers to exit")
    assert [f.result(PROMPT) for f in [pool.submit(ok, i) for i in range(20)]] == list(range(20))
    assert pool.stats().workers <= 2
    with pytest.raises(TypeError):
        pool.resize("3")


def test_resize_down_while_saturated(make_pool):
    """A busy pool never goes idle: surplus workers leave after their current task."""
    pool = make_pool(4, idle_timeout=None)
    lock = threading.Lock()
    active: set[int] = set()
    peak_after: list[int] = []
    shrunk = threading.Event()

    def task(i: int) -> int:
        me = threading.get_ident()
        with lock:
            active.add(me)
            if shrunk.is_set():
                peak_after.append(len(active))
        time.sleep(0.002)
        with lock:
            active.discard(me)
        return i

    futs = [pool.submit(task, i) for i in range(400)]
    wait_until(lambda: pool.stats().workers == 4, what="4 workers")
    pool.resize(1)
    wait_until(lambda: pool.stats().workers == 1, what="3 busy workers to retire")
    assert pool.stats().queued > 0  # it shrank while work was still waiting
    shrunk.set()
    assert [f.result(PROMPT) for f in futs] == list(range(400))
    # Once the surplus had left, one task ran at a time (the last of the retiring
    # workers' tasks may still have been finishing as the first checks ran).
    assert peak_after and max(peak_after[10:] or [1]) == 1
    assert pool._work_queue.retire_requested == 0
    pool.resize(3)  # growing back cancels nothing it should not, and starts workers
    futs = [pool.submit(task, i) for i in range(60)]
    wait_until(lambda: pool.stats().workers == 3, what="3 workers again")
    assert [f.result(PROMPT) for f in futs] == list(range(60))


# -- rate limit ----------------------------------------------------------------------------

def test_rate_limit(make_pool):
    rate = 20.0
    pool = make_pool(4, rate_limit=rate)
    starts = []
    futs = [pool.submit(lambda: starts.append(time.monotonic())) for _ in range(11)]
    cf.wait(futs, PROMPT)
    starts.sort()
    # 11 starts at 20/s take at least 0.5 s (a lower bound only: load only slows it).
    assert starts[-1] - starts[0] >= 10 / rate * 0.9


def test_rate_limit_burst_and_shutdown_wakes_waiters(make_pool):
    pool = make_pool(2, rate_limit=(0.01, 3))  # 3 at once, then one per 100 s
    futs = [pool.submit(ok, i) for i in range(6)]
    wait_until(lambda: sum(f.done() for f in futs) == 3, what="the burst")
    time.sleep(0.1)
    assert sum(f.done() for f in futs) == 3
    t0 = time.monotonic()
    report = pool.shutdown(timeout=0.1)
    assert time.monotonic() - t0 < PROMPT  # workers waiting for a slot woke up
    assert len(report.not_started) == 3 and all(t.future.cancelled() for t in report.not_started)
    check_invariant(pool.stats())


# -- groups --------------------------------------------------------------------------------

def test_group_waits_for_all(make_pool):
    pool = make_pool(3)
    with pool.group() as g:
        futs = [g.submit(time.sleep, 0.01) for _ in range(6)] + [g.submit(fail, 1)]
    assert all(f.done() for f in futs)
    assert [type(e) for e in g.exceptions()] == [ValueError]


def test_group_fail_fast(make_pool):
    pool = make_pool(3)
    stopped = []
    go = threading.Event()

    def patient(i):
        if current_token().wait(PROMPT):
            stopped.append(i)
        return i

    def fail_on_cue():
        go.wait(PROMPT)
        raise ValueError("bad 0")

    with pytest.raises(ValueError, match="bad 0"):
        with pool.group(fail_fast=True) as g:
            running = [g.submit(patient, i) for i in range(2)] + [g.submit(fail_on_cue)]
            wait_until(lambda: pool.stats().running == 3)
            queued = [g.submit(ok, i) for i in range(5)]
            go.set()
            wait_until(lambda: all(f.done() for f in running), what="cancellation")
    assert sorted(stopped) == [0, 1]  # running members saw the group token
    assert all(f.cancelled() for f in queued)
    check_invariant(pool.stats())


def test_group_body_error_cancels_queued(make_pool, gate):
    pool = make_pool(1)
    with pytest.raises(KeyError):
        with pool.group() as g:
            g.submit(gate)
            gate.wait_started(1)
            queued = g.submit(ok, 1)
            threading.Timer(0.1, gate.open).start()
            raise KeyError("body")
    assert queued.cancelled()


# -- map -----------------------------------------------------------------------------------

def test_map_ordered_and_unordered(make_pool):
    pool = make_pool(4, queue_size=8)
    data = list(range(200))
    assert list(pool.map(lambda x: x * 2, data)) == [x * 2 for x in data]
    assert list(pool.map(pow, data, itertools.repeat(2))) == [x * x for x in data]
    assert sorted(pool.map(lambda x: x, data, ordered=False)) == data
    assert list(pool.map(lambda x: x + 1, data, chunksize=7)) == [x + 1 for x in data]
    assert sorted(pool.map(lambda x: x + 1, data, chunksize=7, ordered=False)) == [
        x + 1 for x in data]


def test_map_is_lazy_and_bounded(make_pool):
    pool = make_pool(2)
    consumed = []

    def source():
        for i in itertools.count():
            consumed.append(i)
            yield i

    it = pool.map(ok, source(), buffersize=5)
    assert len(consumed) == 5
    assert [next(it) for _ in range(20)] == list(range(20))
    assert len(consumed) <= 20 + 5
    it.close()
    assert pool.join(PROMPT)
    check_invariant(pool.stats())


@pytest.mark.parametrize("queue_size, window", [(0, 4096), (5, 10)])
def test_map_default_window(make_pool, queue_size, window):
    # Unbounded queue: 4096 calls in flight (a small window makes the consumer and the
    # workers wait on each other; see _map.MAP_WINDOW); bounded: twice the queue.
    pool = make_pool(2, queue_size=queue_size)
    consumed = []

    def source():
        for i in itertools.count():
            consumed.append(i)
            yield i

    it = pool.map(ok, source())
    assert len(consumed) == window
    assert next(it) == 0
    it.close()
    assert pool.join(PROMPT)


def test_map_unordered_yields_as_completed(make_pool):
    pool = make_pool(2)
    release = threading.Event()

    def slow_first(x):
        if x == 0:
            release.wait(PROMPT)
        return x

    it = pool.map(slow_first, range(4), ordered=False)
    firsts = [next(it) for _ in range(3)]
    assert sorted(firsts) == [1, 2, 3]
    release.set()
    assert next(it) == 0


def test_map_exceptions(make_pool):
    pool = make_pool(2)

    def maybe(x):
        if x % 3 == 0:
            raise ValueError(x)
        return x

    out = list(pool.map(maybe, range(7), return_exceptions=True))
    assert [type(v).__name__ if isinstance(v, Exception) else v for v in out] == [
        "ValueError", 1, 2, "ValueError", 4, 5, "ValueError"]
    chunked = list(pool.map(maybe, range(7), chunksize=2, return_exceptions=True))
    assert [isinstance(v, ValueError) for v in chunked] == [x % 3 == 0 for x in range(7)]
    it = pool.map(maybe, range(1, 7))
    assert next(it) == 1 and next(it) == 2
    with pytest.raises(ValueError):
        next(it)


@pytest.mark.parametrize("ordered", [True, False])
def test_map_timeout(make_pool, gate, ordered):
    # concurrent.futures.TimeoutError, as the stdlib's map (the builtin only from 3.11).
    pool = make_pool(1)
    it = pool.map(gate, range(3), timeout=0.1, ordered=ordered)
    with pytest.raises(cf.TimeoutError):
        next(it)
    gate.open()


def test_map_bad_arguments(make_pool):
    pool = make_pool(1)
    with pytest.raises(TypeError):
        pool.map(3, [1])
    with pytest.raises(ValueError):
        pool.map(ok, [1], chunksize=0)
    with pytest.raises(ValueError):
        pool.map(ok, [1], buffersize=0)
    with pytest.raises(TypeError):
        pool.map(ok, [1], progress="yes")


def test_map_progress_callable(make_pool):
    pool = make_pool(2)
    seen: list[Stats] = []
    assert list(pool.map(ok, range(50), progress=seen.append)) == list(range(50))
    assert seen and all(isinstance(s, Stats) for s in seen)
    assert seen[-1].succeeded == 50


def test_map_progress_true(make_pool, monkeypatch):
    pool = make_pool(1)
    try:
        import tqdm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="needs tqdm"):
            pool.map(ok, [1], progress=True)
        return
    assert list(pool.map(ok, range(10), progress=True)) == list(range(10))
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(ImportError, match="needs tqdm"):
        pool.map(ok, [1], progress=True)


# -- asyncio -------------------------------------------------------------------------------

async def _take(stream, n):
    async for x in stream:
        yield x
        n -= 1
        if not n:
            return


def test_asubmit_and_amap(make_pool):
    pool = make_pool(2, queue_size=2)

    async def agen():
        for i in range(10):
            await asyncio.sleep(0)
            yield i

    async def main():
        assert await pool.asubmit(pow, 3, 2) == 9
        results = await asyncio.gather(*(pool.asubmit(ok, i) for i in range(20)))
        assert results == list(range(20))
        assert [x async for x in pool.amap(lambda x: x * 3, range(30))] == [
            x * 3 for x in range(30)]
        assert sorted([x async for x in pool.amap(ok, range(30), ordered=False)]) == list(
            range(30))
        assert [x async for x in pool.amap(lambda x: -x, agen())] == [-x for x in range(10)]
        out = [x async for x in pool.amap(fail, range(2), return_exceptions=True)]
        assert [type(e) for e in out] == [ValueError, ValueError]
        with pytest.raises(ValueError):
            async for _ in pool.amap(fail, range(2)):
                pass
        with pytest.raises(ValueError):
            await pool.asubmit(fail, 1)
        consumed = []

        def endless():
            for i in itertools.count():
                consumed.append(i)
                yield i

        stream = pool.amap(ok, endless(), buffersize=4)
        assert [x async for x in _take(stream, 10)] == list(range(10))
        await stream.aclose()
        assert len(consumed) <= 10 + 4 + 1  # lazy: bounded read-ahead

    asyncio.run(main())
    with pytest.raises(TypeError):
        pool.asubmit(1)
    with pytest.raises(TypeError):
        pool.amap(1, [])


def test_default_executor_of_asyncio(make_pool):
    pool = make_pool(2)

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_default_executor(pool)
        return await loop.run_in_executor(None, pow, 2, 5)

    assert asyncio.run(main()) == 32


# -- contextvars --------------------------------------------------------------------------

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


def test_copy_context(make_pool):
    copying = make_pool(2, copy_context=True)
    # Without copy_context a task runs in its worker thread's own context. Where threads
    # start with a copy of their starter's context (sys.flags.thread_inherit_context: on by
    # default on free-threaded 3.14), that is the context at the time the worker started:
    # start the one worker before the variable is set, so the check means the same there.
    plain = make_pool(1)
    assert plain.submit(request_id.get).result(PROMPT) == "none"

    def read_and_set():
        value = request_id.get()
        request_id.set("changed in task")
        return value

    token = request_id.set("req-42")
    try:
        assert copying.submit(read_and_set).result(PROMPT) == "req-42"
        assert copying.schedule(read_and_set, key="k").result(PROMPT) == "req-42"
        assert request_id.get() == "req-42"  # the task's change stayed in its copy
        assert plain.submit(read_and_set).result(PROMPT) == "none"
    finally:
        request_id.reset(token)


# -- signals --------------------------------------------------------------------------------

def test_handle_signals_needs_main_thread(make_pool):
    pool = make_pool(1)
    errors = []

    def other():
        try:
            pool.handle_signals()
        except RuntimeError as exc:
            errors.append(str(exc))

    t = threading.Thread(target=other)
    t.start()
    t.join(PROMPT)
    assert errors == ["handle_signals() must be called from the main thread"]


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs SIGUSR1")
def test_handle_signals_graceful_then_immediate(make_pool):
    sig = signal.SIGUSR1
    previous = signal.getsignal(sig)
    pool = make_pool(1)
    # exit=False: the program carries on after the signal (by default it would exit
    # with 128 + signum once the shutdown is over: see test_pool_trust.py).
    pool.handle_signals(signals=(sig,), timeout=PROMPT * 4, exit=False)
    assert signal.getsignal(sig) is not previous

    def patient():
        return "stopped" if current_token().wait(PROMPT * 4) else "timeout"

    running = pool.submit(patient)
    wait_until(lambda: pool.stats().running == 1)
    queued = [pool.submit(ok, i) for i in range(3)]
    signal.raise_signal(sig)  # graceful: stop accepting, drain...
    wait_until(lambda: pool._shutdown, what="shutdown to start")
    with pytest.raises(RuntimeError):
        pool.submit(ok)
    assert not running.done()
    signal.raise_signal(sig)  # ...second signal: cancel now
    assert running.result(PROMPT) == "stopped"
    report = pool.shutdown()  # main thread: the same report, and the handler goes back
    assert report.timed_out
    assert [t.future for t in report.not_started] == queued
    assert signal.getsignal(sig) is previous
    assert pool.signal_received == sig


# -- fork and interpreter exit ----------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_with_a_busy_pool(run_py):
    code = """
import os, threading, time, warnings
warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads (3.12+)
from fastpool import Pool, Retry
pool = Pool(2, retry=Retry(attempts=3, backoff=5))
release = threading.Event()
busy = [pool.submit(release.wait, 30) for _ in range(2)]
while pool.stats().running < 2:
    time.sleep(0.001)
queued = [pool.submit(pow, i, 2) for i in range(5)]
retrying = pool.submit(lambda: 1 / 0)
pid = os.fork()
if pid == 0:
    # Child: what the parent had in flight is cancelled here; the pool still works.
    ok = all(f.cancelled() for f in busy + queued)
    ok = ok and pool.submit(pow, 3, 3).result(10) == 27
    st = pool.stats()
    rep = pool.shutdown(timeout=10)
    os._exit(0 if ok and not rep.timed_out else 3)
release.set()
_, status = os.waitpid(pid, 0)
assert [f.result(10) for f in queued] == [i * i for i in range(5)]
print("child", os.waitstatus_to_exitcode(status))
print("parent", pool.shutdown(cancel_futures=True).completed >= 7)
"""
    res = run_py(code, timeout=60)
    assert res.returncode == 0, res
    assert "child 0" in res.stdout and "parent True" in res.stdout, res


def test_interpreter_exit_with_queued_work(run_py):
    code = """
import time
from fastpool import Pool, Retry
pool = Pool(1, retry=Retry(attempts=2, backoff=60))
for i in range(50):
    pool.submit(time.sleep, 0.001)
pool.submit(lambda: 1 / 0)  # leaves a retry waiting in the timer
print("exiting")
"""
    res = run_py(code, timeout=60)
    assert res.returncode == 0 and "exiting" in res.stdout, res
