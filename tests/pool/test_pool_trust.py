"""Pool at the edges (issue 9, points 1-9): a timed shutdown is a bound, signals bound
exit, inf means no limit, timers end with their pool, no internal error loses a task,
every shutdown report accounts for every task, and the small limits hold.

Every test here failed on the code before the fix, on both cores. Bounds on time are
generous (the machine is shared): they tell "returns at its timeout" from "waits for
the task", never measure speed.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
import time

import pytest

from fastpool import CancelToken, DeadlineExceeded, Pool, QueueFull, Retry, current_token
from fastpool import _timer
from pool_support import (PROMPT, Gate, check_invariant, fail, gate, make_pool, ok,  # noqa: F401
                          wait_until)

# "Returns at its timeout": timeout + this much at most (scheduling on a busy machine).
SLACK = 2.0


def _timed(fn, *args, **kwargs):
    t0 = time.monotonic()
    result = fn(*args, **kwargs)
    return result, time.monotonic() - t0


# -- 1. a timed shutdown is a bound ----------------------------------------------------

def test_timed_shutdown_returns_at_timeout_with_an_overdue_task(make_pool):
    pool = make_pool(1)
    release = threading.Event()
    # Ignores its token: its deadline fails the future, the thread stays blocked.
    fut = pool.schedule(release.wait, (PROMPT,), deadline=0.2)
    with pytest.raises(DeadlineExceeded):
        fut.result(PROMPT)
    s = pool.stats()
    assert s.running == 1, s  # its worker is still busy: counted as such
    check_invariant(s)
    report, took = _timed(pool.shutdown, timeout=0.5)
    assert took < 0.5 + SLACK, took
    assert report.timed_out
    assert [t.future for t in report.still_running] == [fut]
    assert pool.stats().running == 1
    release.set()
    wait_until(lambda: pool.stats().running == 0, what="the overdue task to return")
    s = pool.stats()
    assert (s.failed, s.succeeded, s.running) == (1, 0, 0), s
    check_invariant(s)


def test_overdue_task_with_retry_is_dead_lettered_once(make_pool):
    pool = make_pool(1, retry=Retry(attempts=3, backoff=0))
    release = threading.Event()
    fut = pool.schedule(release.wait, (PROMPT,), deadline=0.1, key="k")
    with pytest.raises(DeadlineExceeded):
        fut.result(PROMPT)
    # The letter is there as soon as the future failed; it is counted with the failure.
    assert [d.key for d in pool.dead_letters] == ["k"]
    assert pool.stats().dead_lettered == 0
    release.set()
    assert pool.join(PROMPT)
    s = pool.stats()
    assert (s.failed, s.dead_lettered, s.retried) == (1, 1, 0), s
    assert len(pool.dead_letters) == 1


# -- 2. signals bound exit -----------------------------------------------------------------

SIGNAL_PROGRAM = """
import os, signal, sys, threading, time
from fastpool import Pool
mode = sys.argv[1]
if mode == "no-pthread_kill":
    # Windows has no pthread_kill: the exit goes through _thread.interrupt_main, which
    # cannot interrupt a blocking wait, so the main thread here is busy in short sleeps.
    del signal.pthread_kill
pool = Pool(2)
with pool:
    pool.handle_signals(timeout=0.5, **({"exit": False} if mode == "noexit" else {}))
    # Both ignore their token: the pool abandons them after the timeout.
    pool.submit(time.sleep, 60)
    pool.submit(time.sleep, 60)
    while pool.stats().running < 2:
        time.sleep(0.001)
    t0 = time.monotonic()
    os.kill(os.getpid(), signal.SIGTERM)
    if mode == "twice":
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)
    if mode in ("exit", "twice"):
        time.sleep(60)  # busy main thread: the exit interrupts it
    if mode == "no-pthread_kill":
        for _ in range(6000):
            time.sleep(0.01)
# "leave" and "noexit": leaving the block waits for the timed shutdown, no longer
report = pool.shutdown()
print("after", round(time.monotonic() - t0, 2), report, pool.signal_received, flush=True)
sys.exit(7)
"""


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="POSIX signals")
@pytest.mark.parametrize("mode", ["exit", "leave", "twice", "noexit", "no-pthread_kill"])
def test_sigterm_bounds_exit(run_py, mode):
    t0 = time.monotonic()
    res = run_py(SIGNAL_PROGRAM, args=(mode,), timeout=50)
    took = time.monotonic() - t0
    if mode == "noexit":
        # The program decides: it carries on after the shutdown and exits with 7.
        assert res.returncode == 7, res
        assert "still_running=2, timed_out=True" in res.stdout, res
        assert f"{int(signal.SIGTERM)}" in res.stdout.split()[-1], res
    else:
        assert res.returncode == 128 + signal.SIGTERM, res
        assert "after" not in res.stdout, res
    assert "Traceback" not in res.stderr, res
    # The tasks sleep 60 s: exit did not wait for them (interpreter start included).
    assert took < 20, (took, res)


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="POSIX signals")
def test_sigint_exit_status(run_py):
    code = """
import os, signal, time
from fastpool import Pool, current_token
with Pool(1) as pool:
    pool.handle_signals(timeout=5)
    # Honours its token: the shutdown ends as soon as it is cancelled... by the signal.
    fut = pool.submit(lambda: current_token().wait(60))
    while pool.stats().running < 1:
        time.sleep(0.001)
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGINT)  # second: do not wait the 5 s
    fut.result()
"""
    res = run_py(code, timeout=50)
    assert res.returncode == 128 + signal.SIGINT, res
    assert "Traceback" not in res.stderr, res


# -- 3. inf is no limit, NaN is refused, the timer thread never dies ---------------------

def test_inf_means_no_limit(make_pool):
    pool = make_pool(2, idle_timeout=math.inf)
    assert pool.schedule(ok, (1,), deadline=math.inf, timeout=math.inf).result(PROMPT) == 1
    assert pool.schedule(ok, (2,), deadline=1e300).result(PROMPT) == 2
    assert not CancelToken(timeout=math.inf).wait(0.01)
    assert not CancelToken(timeout=1e300).cancelled
    forever = pool.schedule(fail, retry=Retry(attempts=2, backoff=math.inf,
                                               max_backoff=math.inf))
    wait_until(lambda: pool.stats().retrying == 1, what="the retry to wait")
    # The pool's timer still runs deadlines and retries; the tokens' timer still fires.
    late = pool.schedule(lambda: current_token().wait(PROMPT), deadline=0.1)
    with pytest.raises(DeadlineExceeded):
        late.result(PROMPT)
    assert CancelToken(timeout=0.05).wait(PROMPT)
    quick = pool.schedule(fail, retry=Retry(attempts=2, backoff=0.01))
    with pytest.raises(ValueError):
        quick.result(PROMPT)
    assert pool.stats().retried == 2
    # A retry waiting for ever is handed back by a timed shutdown, at its timeout.
    report, took = _timed(pool.shutdown, timeout=0.3)
    assert took < 0.3 + SLACK
    assert [t.future for t in report.not_started] == [forever]
    assert forever.cancelled()


@pytest.mark.parametrize("call", [
    lambda p: p.schedule(ok, deadline=math.nan),
    lambda p: p.schedule(ok, timeout=math.nan),
    lambda p: CancelToken(timeout=math.nan),
    lambda p: Retry(backoff=math.nan),
    lambda p: Retry(max_backoff=math.nan),
    lambda p: Pool(1, rate_limit=math.nan),
    lambda p: Pool(1, idle_timeout=math.nan),
    lambda p: p.join(math.nan),
    lambda p: p.shutdown(timeout=math.nan),
])
def test_nan_is_refused_at_the_call(make_pool, call):
    pool = make_pool(1)
    with pytest.raises(ValueError):
        call(pool)
    assert pool.submit(ok, 3).result(PROMPT) == 3  # nothing was broken


def test_timer_thread_survives_an_internal_error(monkeypatch, caplog):
    timer = _timer.Timer("fastpool-test-timer")
    fired = threading.Event()
    real = _timer.monotonic
    calls = [0]

    def flaky():
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("injected")
        return real()

    monkeypatch.setattr(_timer, "monotonic", flaky)
    with caplog.at_level(logging.ERROR, logger="fastpool"):
        timer.call_at(real() + 0.05, lambda _: fired.set(), None)
        assert fired.wait(PROMPT), "the timer thread died"
    assert "injected" in caplog.text
    timer.stop()


# -- 4. a pool's timer thread ends with the pool ----------------------------------------

def test_timer_threads_end_with_their_pools():
    for i in range(200):
        pool = Pool(1, name=f"trust-timer-{i}")
        assert pool.schedule(ok, (i,), deadline=3600).result(PROMPT) == i
        pool.shutdown()

    def timers():
        return [t for t in threading.enumerate() if t.name.startswith("trust-timer-")]

    # Not an hour (the longest deadline), nor the timer's idle exit (5 s).
    wait_until(lambda: not timers(), timeout=2.0, what="the pools' timer threads to end")


# -- 5. refused at the call, or failed: never lost ---------------------------------------

@pytest.mark.parametrize("rate", [1e-12, 1e-300, 5e-324])
def test_rate_limit_that_cannot_be_honoured_is_refused(rate):
    with pytest.raises(ValueError, match="rate_limit"):
        Pool(1, rate_limit=rate)


def test_rate_limit_inf_and_huge(make_pool):
    assert make_pool(1, rate_limit=math.inf).submit(ok, 1).result(PROMPT) == 1
    pool = make_pool(1, rate_limit=(1e300, 10**400))
    assert [f.result(PROMPT) for f in [pool.submit(ok, i) for i in range(5)]] == list(range(5))


@pytest.mark.parametrize("options", [False, True])
def test_internal_error_fails_the_task(make_pool, options, caplog):
    def broken(exc):
        raise RuntimeError("predicate bug")

    pool = make_pool(1, retry=Retry(attempts=3, backoff=0, retry_on=broken))
    with caplog.at_level(logging.ERROR, logger="fastpool"):
        fut = pool.schedule(fail, key="k") if options else pool.submit(fail)
        with pytest.raises(RuntimeError, match="predicate bug"):
            fut.result(PROMPT)
    assert pool.join(PROMPT)
    s = pool.stats()
    assert (s.failed, s.running) == (1, 0), s
    check_invariant(s)
    report, took = _timed(pool.shutdown, timeout=0.5)
    assert took < 0.5 + SLACK and report.completed == 1 and not report.timed_out


# -- 6. handle_signals: all or nothing ----------------------------------------------------

@pytest.mark.parametrize("bad", [signal.SIGKILL, 0, 10**6, "SIGTERM", True])
def test_handle_signals_all_or_nothing(make_pool, bad):
    before = signal.getsignal(signal.SIGINT)
    pool = make_pool(1)
    with pytest.raises((ValueError, TypeError)):
        pool.handle_signals([signal.SIGINT, bad])
    assert signal.getsignal(signal.SIGINT) is before
    pool.shutdown()
    assert signal.getsignal(signal.SIGINT) is before


# -- 7. every report accounts for every task ----------------------------------------------

def test_later_shutdown_reports_every_task(make_pool, gate):
    pool = make_pool(1)
    futs = [pool.submit(gate, i) for i in range(5)]
    first = pool.shutdown(wait=False)
    assert first.completed + len(first.still_running) <= 5
    gate.open()
    second = pool.shutdown(wait=True)
    assert [f.result(PROMPT) for f in futs] == list(range(5))
    assert (second.completed, second.not_started, second.still_running,
            second.timed_out) == (5, [], [], False)


def test_later_shutdown_after_a_timed_out_one(make_pool, gate):
    pool = make_pool(1)
    running = pool.submit(gate, "r")
    gate.wait_started(1)
    queued = [pool.submit(ok, i) for i in range(3)]
    first = pool.shutdown(timeout=0.2)
    # Abandoned: a later call does not wait for it again, and still accounts for all.
    second, took = _timed(pool.shutdown)
    assert took < SLACK
    for report in (first, second):
        assert report.timed_out
        assert [t.future for t in report.not_started] == queued
        assert [t.future for t in report.still_running] == [running]
        assert report.completed + len(report.not_started) + len(report.still_running) == 4


# -- 8. still_running tasks tell their outcome; a report prints short -------------------

def test_still_running_task_future_settles_and_report_prints_a_summary(make_pool, gate):
    pool = make_pool(2)
    running = [pool.submit(gate, i) for i in range(2)]
    gate.wait_started(2)
    for i in range(1000):
        pool.submit(ok, i)
    report = pool.shutdown(timeout=0.1)
    assert len(report.still_running) == 2 and len(report.not_started) == 1000
    assert str(report) == repr(report) == (
        "ShutdownReport(completed=0, not_started=1000, still_running=2, timed_out=True)")
    gate.open()
    # Each still-running task finished after the report: its future says so.
    assert sorted(t.future.result(PROMPT) for t in report.still_running) == [0, 1]
    assert all(t.future.cancelled() for t in report.not_started)
    assert [f.result(PROMPT) for f in running] == [0, 1]


# -- 9. the small limits -------------------------------------------------------------------

def test_dead_letters_maxlen_counts_what_it_drops(make_pool):
    pool = make_pool(1, retry=Retry(attempts=1), dead_letter_maxlen=3)
    for i in range(10):
        with pytest.raises(ValueError):
            pool.schedule(fail, (i,), key=i).result(PROMPT)
    assert [d.key for d in pool.dead_letters] == [7, 8, 9]
    assert pool.dead_letters.dropped == 7
    s = pool.stats()
    assert (s.dead_lettered, s.dead_letters_dropped) == (10, 7)
    with pytest.raises(ValueError):
        Pool(1, dead_letter_maxlen=0)
    with pytest.raises(TypeError):
        Pool(1, dead_letter_maxlen=2.5)


def _watch_stats(pool, stop, seen, bound):
    """Sample stats() until `stop`: record a decrease of `submitted`, or `queued` over
    `bound`, or counters that do not add up."""
    last = 0
    while not stop.is_set():
        s = pool.stats()
        if s.submitted < last:
            seen.append(f"submitted went from {last} to {s.submitted}")
        if bound is not None and s.queued > bound:
            seen.append(f"queued {s.queued} > queue_size {bound}")
        try:
            check_invariant(s)
        except AssertionError as exc:
            seen.append(str(exc))
        last = s.submitted


@pytest.mark.parametrize("rate_limit", [None, 2000.0])
def test_live_stats_hold_while_shutdown_races_submits(rate_limit):
    bound = 10
    pool = Pool(4, queue_size=bound, rate_limit=rate_limit)
    stop = threading.Event()
    seen: list[str] = []
    refused = []

    def producer(i):
        n = 0
        try:
            while True:
                if n % 3 == 0:
                    pool.try_submit(ok, n)
                elif n % 3 == 1:
                    pool.submit(ok, n)
                else:
                    try:
                        pool.schedule(ok, (n,), timeout=0.0005)
                    except QueueFull:
                        pass
                n += 1
        except RuntimeError:
            refused.append(i)  # the pool closed: expected

    watcher = threading.Thread(target=_watch_stats, args=(pool, stop, seen, bound))
    producers = [threading.Thread(target=producer, args=(i,)) for i in range(4)]
    watcher.start()
    for t in producers:
        t.start()
    time.sleep(0.3)
    pool.shutdown(timeout=PROMPT)
    for t in producers:
        t.join(PROMPT)
    stop.set()
    watcher.join(PROMPT)
    assert sorted(refused) == [0, 1, 2, 3]
    assert not seen, seen[:5]
    s = pool.stats()
    check_invariant(s)
    assert s.queued == s.running == s.retrying == 0


def test_producer_blocked_on_full_queue_is_released_when_shutdown_begins(make_pool, gate):
    pool = make_pool(1, queue_size=1)
    running = pool.submit(gate, 1)
    gate.wait_started(1)
    queued = pool.submit(ok, 2)
    outcome = []

    def producer():
        t0 = time.monotonic()
        try:
            pool.submit(ok, 3)  # blocks: the queue is full, the worker busy
            outcome.append("accepted")
        except RuntimeError as exc:
            outcome.append(str(exc))
        outcome.append(time.monotonic() - t0)

    t = threading.Thread(target=producer)
    t.start()
    time.sleep(0.2)  # the producer waits for room
    assert pool.stats().submitted == 2  # the waiting producer's task is not counted
    t0 = time.monotonic()
    pool.shutdown(wait=False)
    t.join(SLACK)
    assert not t.is_alive(), "the producer is still blocked after shutdown began"
    assert outcome[0] == "cannot schedule new futures after shutdown"
    assert time.monotonic() - t0 < SLACK
    gate.open()
    assert (running.result(PROMPT), queued.result(PROMPT)) == (1, 2)
