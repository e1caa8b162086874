"""fastpool.Pool: construction, backpressure, retries, dead letters, tokens, deadlines,
timed shutdown and stats. Runs on whichever core is selected (the suite runs twice:
native, then FASTPOOL_NO_EXTENSIONS=1).

Timing rule: nothing asserts that something is fast; "promptly" means within PROMPT
seconds, which a loaded 2-core machine always meets, and a hang fails the test.
"""

from __future__ import annotations

import concurrent.futures as cf
import queue
import threading
import time
import traceback

import pytest

import fastpool
from fastpool import (CancelToken, DeadlineExceeded, DeadLetter, Pool, QueueFull, Retry,
                      ShutdownReport, Stats, Task, current_token)
from pool_support import (PROMPT, Gate, check_invariant, fail, gate, make_pool, ok,  # noqa: F401
                          wait_until)

class Flaky:
    """Fails the first `failures` calls per argument, then returns the argument."""

    def __init__(self, failures: int, exc: type[BaseException] = ValueError) -> None:
        self.failures = failures
        self.exc = exc
        self.calls: dict[object, int] = {}
        self.lock = threading.Lock()

    def __call__(self, x=None):
        with self.lock:
            n = self.calls[x] = self.calls.get(x, 0) + 1
        if n <= self.failures:
            raise self.exc(f"attempt {n} of {x}")
        return x


# -- construction and bad input --------------------------------------------------------

def test_is_a_thread_pool_executor(make_pool):
    pool = make_pool(2)
    assert isinstance(pool, cf.ThreadPoolExecutor)
    assert isinstance(pool, fastpool.ThreadPoolExecutor)
    assert pool.submit(pow, 2, 10).result(PROMPT) == 1024
    assert pool.workers == 2


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"workers": 0}, ValueError, r"`workers` must be >= 1, got 0"),
    ({"workers": -3}, ValueError, r"`workers` must be >= 1, got -3"),
    ({"workers": "4"}, TypeError, r"`workers` must be an int"),
    ({"workers": 2, "min_workers": 3}, ValueError, r"`min_workers` must be between 0 and"),
    ({"workers": 2, "min_workers": -1}, ValueError, r"`min_workers`"),
    ({"queue_size": -1}, ValueError, r"`queue_size` must be >= 0, got -1"),
    ({"queue_size": 2.5}, TypeError, r"`queue_size` must be an int"),
    ({"idle_timeout": -1}, ValueError, r"`idle_timeout` must be >= 0"),
    ({"retry": 3}, TypeError, r"`retry` must be a Retry"),
    ({"rate_limit": 0}, ValueError, r"`rate_limit` must be > 0"),
    ({"rate_limit": "fast"}, TypeError, r"`rate_limit` must be a number"),
    ({"rate_limit": (5, 0)}, ValueError, r"burst"),
    ({"backend": object()}, TypeError, r"`backend` must be None or a dask.distributed.Client"),
])
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Pool(**kwargs)


def test_backend_check_imports_no_dask(run_py):
    # Only a real Client is one (tests/pool/test_dask.py runs it), and telling imports
    # nothing: without distributed loaded, no object can be a Client.
    code = ("import sys, fastpool\n"
            "Client = type('Client', (), {'__module__': 'distributed.client'})\n"
            "for obj in (object(), Client()):\n"
            "    try:\n"
            "        fastpool.Pool(backend=obj)\n"
            "    except TypeError as exc:\n"
            "        print(exc)\n"
            "print('distributed' in sys.modules)\n")
    proc = run_py(code)
    assert proc.returncode == 0, proc
    lines = proc.stdout.splitlines()
    assert len(lines) == 3 and lines[2] == "False", proc
    for line in lines[:2]:
        assert line.startswith("`backend` must be None or a dask.distributed.Client")
        assert "pip install 'fastpool[dask]'" in line


def test_bad_calls(make_pool):
    pool = make_pool(1)
    with pytest.raises(TypeError, match="fn must be callable"):
        pool.submit(42)
    with pytest.raises(TypeError, match="fn must be callable"):
        pool.try_submit("nope")
    with pytest.raises(TypeError, match="fn must be callable"):
        pool.schedule(None)
    with pytest.raises(TypeError, match="`kwargs` must be a dict"):
        pool.schedule(ok, (), [1])
    with pytest.raises(TypeError, match="`retry` must be a Retry"):
        pool.schedule(ok, retry=3)
    with pytest.raises(TypeError, match="`token` must be a CancelToken"):
        pool.schedule(ok, token=threading.Event())
    with pytest.raises(ValueError, match="`deadline` must be >= 0"):
        pool.schedule(ok, deadline=-1)
    with pytest.raises(ValueError, match="`timeout` must be >= 0"):
        pool.schedule(ok, timeout=float("nan"))
    with pytest.raises(ValueError, match="`workers` must be >= 1, got 0"):
        pool.resize(0)
    # None of that was counted as submitted, and the pool still works.
    assert pool.submit(ok, 7).result(PROMPT) == 7
    assert pool.stats().submitted == 1


@pytest.mark.parametrize("kwargs, exc", [
    ({"attempts": 0}, ValueError), ({"attempts": 1.5}, TypeError),
    ({"backoff": -0.1}, ValueError), ({"multiplier": 0.5}, ValueError),
    ({"max_backoff": -1}, ValueError), ({"jitter": 1.5}, ValueError),
    ({"jitter": float("nan")}, ValueError), ({"backoff": "1"}, TypeError),
    ({"retry_on": "ValueError"}, TypeError), ({"retry_on": (ValueError, 3)}, TypeError),
])
def test_bad_retry(kwargs, exc):
    with pytest.raises(exc):
        Retry(**kwargs)


def test_submit_after_shutdown_raises(make_pool):
    pool = make_pool(1)
    pool.shutdown()
    for call in (lambda: pool.submit(ok), lambda: pool.try_submit(ok),
                 lambda: pool.schedule(ok), lambda: pool.map(ok, [1])):
        with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
            call()
    assert pool.stats().submitted == 0


# -- backpressure ------------------------------------------------------------------------

def test_backpressure(make_pool, gate):
    pool = make_pool(1, queue_size=2)
    running = pool.submit(gate, "first")
    gate.wait_started(1)  # the worker holds it: the queue is empty again
    queued = [pool.submit(ok, i) for i in range(2)]
    assert pool.try_submit(ok, "x") is None
    with pytest.raises(QueueFull):
        pool.schedule(ok, ("y",), timeout=0.05)
    s = pool.stats()
    assert (s.rejected, s.submitted, s.queued, s.running) == (2, 3, 2, 1)
    check_invariant(s)

    blocked_result = []
    t = threading.Thread(target=lambda: blocked_result.append(pool.submit(ok, "late")))
    t.start()
    time.sleep(0.2)
    assert t.is_alive() and not blocked_result, "submit() did not block on a full queue"
    gate.open()
    t.join(PROMPT)
    assert not t.is_alive()
    assert blocked_result[0].result(PROMPT) == "late"
    assert running.result(PROMPT) == "first"
    assert [f.result(PROMPT) for f in queued] == [0, 1]
    assert pool.join(PROMPT)
    s = pool.stats()
    assert (s.submitted, s.succeeded, s.rejected) == (4, 4, 2)


def test_schedule_timeout_waits_for_room(make_pool, gate):
    pool = make_pool(1, queue_size=1)
    pool.submit(gate)
    gate.wait_started(1)
    pool.submit(ok, 1)
    threading.Timer(0.1, gate.open).start()
    # Room appears once the gate opens: the call waits for it instead of failing.
    assert pool.schedule(ok, (2,), timeout=PROMPT).result(PROMPT) == 2


def test_task_submitting_to_its_own_full_pool_does_not_deadlock(make_pool):
    pool = make_pool(1, queue_size=1)

    # Its one worker runs `parent`, which fills the queue: a blocking put would wait
    # for ever for that very worker. The overflow runs in the submitting task instead.
    def parent(n):
        return [pool.submit(ok, i) for i in range(n)]

    children = pool.submit(parent, 5).result(PROMPT)
    assert [f.result(PROMPT) for f in children] == [0, 1, 2, 3, 4]
    assert pool.join(PROMPT)
    s = pool.stats()
    assert (s.submitted, s.succeeded) == (6, 6)


# -- retries and dead letters ---------------------------------------------------------------

def test_retry_until_success(make_pool):
    flaky = Flaky(2)
    pool = make_pool(2, retry=Retry(attempts=3, backoff=0.001, jitter=0))
    assert [f.result(PROMPT) for f in [pool.submit(flaky, i) for i in range(5)]] == list(range(5))
    assert flaky.calls == {i: 3 for i in range(5)}
    assert pool.join(PROMPT)
    s = pool.stats()
    assert (s.succeeded, s.failed, s.retried, s.dead_lettered) == (5, 0, 10, 0)
    assert len(pool.dead_letters) == 0


def test_last_error_reaches_future_with_traceback_and_dead_letters(make_pool):
    flaky = Flaky(10)
    pool = make_pool(1, retry=Retry(attempts=3, backoff=0.001))
    fut = pool.schedule(flaky, ("rec",), {}, key="record-17")
    with pytest.raises(ValueError, match="attempt 3 of rec") as info:
        fut.result(PROMPT)
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert "__call__" in frames  # the task's own frame, not just the pool's
    assert pool.join(PROMPT)
    assert len(pool.dead_letters) == 1
    letter = list(pool.dead_letters)[0]
    assert isinstance(letter, DeadLetter)
    assert (letter.key, letter.fn, letter.args, letter.kwargs, letter.attempts) == (
        "record-17", flaky, ("rec",), {}, 3)
    assert letter.error is info.value
    assert abs(letter.failed_at - time.time()) < 3600
    assert len(pool.dead_letters) == 1  # iterating does not consume
    assert pool.dead_letters.get(timeout=1) == letter
    assert len(pool.dead_letters) == 0
    with pytest.raises(queue.Empty):
        pool.dead_letters.get(timeout=0.01)
    s = pool.stats()
    assert (s.failed, s.retried, s.dead_lettered) == (1, 2, 1)


def test_dead_letters_drain(make_pool):
    pool = make_pool(2, retry=Retry(attempts=1))
    futs = [pool.schedule(fail, (i,), key=i) for i in range(4)]
    cf.wait(futs, PROMPT)
    assert pool.join(PROMPT)
    letters = pool.dead_letters.drain()
    assert sorted(d.key for d in letters) == [0, 1, 2, 3]
    assert all(d.attempts == 1 for d in letters)
    assert pool.dead_letters.drain() == [] and not pool.dead_letters


def test_no_retry_policy_means_no_dead_letter(make_pool):
    pool = make_pool(1)
    with pytest.raises(ValueError):
        pool.submit(fail).result(PROMPT)
    assert pool.join(PROMPT)
    assert len(pool.dead_letters) == 0
    assert pool.stats().failed == 1


def test_retry_on_filters_errors(make_pool):
    pool = make_pool(1, retry=Retry(attempts=5, backoff=0.001, retry_on=KeyError))
    flaky = Flaky(1, exc=ValueError)
    with pytest.raises(ValueError):
        pool.submit(flaky, 1).result(PROMPT)
    assert flaky.calls == {1: 1}
    by_predicate = Flaky(2, exc=KeyError)
    pred = Retry(attempts=5, backoff=0.001, retry_on=lambda e: isinstance(e, KeyError))
    assert pool.schedule(by_predicate, (2,), retry=pred).result(PROMPT) == 2
    assert by_predicate.calls == {2: 3}


def test_per_task_retry_overrides_pool(make_pool):
    pool = make_pool(1, retry=Retry(attempts=4, backoff=0.001))
    never = Flaky(1)
    with pytest.raises(ValueError):
        pool.schedule(never, (1,), retry=False).result(PROMPT)
    assert never.calls == {1: 1}
    more = Flaky(5)
    assert pool.schedule(more, (2,), retry=Retry(attempts=6, backoff=0.001)).result(PROMPT) == 2


def test_waiting_retry_holds_no_worker_and_delays_nothing(make_pool):
    # One worker. Task A fails once and waits a long backoff; task B fails once with a
    # short backoff; new work must run meanwhile, and B's retry must not wait for A's.
    pool = make_pool(1)
    slow, fast = Flaky(1), Flaky(1)
    a = pool.schedule(slow, ("a",), retry=Retry(attempts=2, backoff=60, jitter=0))
    wait_until(lambda: pool.stats().retrying == 1, what="A to wait for its retry")
    b = pool.schedule(fast, ("b",), retry=Retry(attempts=2, backoff=0.01, jitter=0))
    assert pool.submit(ok, "new").result(PROMPT) == "new"
    assert b.result(PROMPT) == "b"
    assert not a.done() and not a.running()  # waiting, holding no worker
    s = pool.stats()
    assert (s.retrying, s.running, s.retried) == (1, 0, 2)
    check_invariant(s)
    # Shutdown hands the waiting retry back, counted as not started.
    report = pool.shutdown(timeout=0.1)
    assert [t.args for t in report.not_started] == [("a",)]
    assert report.not_started[0].attempts == 1
    assert a.cancelled()


def test_retry_waiting_can_be_cancelled(make_pool):
    pool = make_pool(1)
    flaky = Flaky(1)
    fut = pool.schedule(flaky, (1,), retry=Retry(attempts=2, backoff=0.2, jitter=0))
    wait_until(lambda: pool.stats().retrying == 1, what="the retry to wait")
    assert fut.cancel()
    assert pool.join(PROMPT)
    assert flaky.calls == {1: 1}  # the retry never ran
    s = pool.stats()
    assert (s.cancelled, s.failed, s.succeeded) == (1, 0, 0)
    check_invariant(s)


def test_retry_delay_schedule():
    r = Retry(attempts=10, backoff=0.5, multiplier=3, max_backoff=10, jitter=0)
    assert [r.delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.5, 4.5, 10]
    j = Retry(backoff=1.0, multiplier=2, jitter=0.25)
    samples = [j.delay(2) for _ in range(2000)]
    assert all(1.5 <= d <= 2.5 for d in samples)
    assert max(samples) - min(samples) > 0.5  # it does spread
    assert Retry(backoff=1e308, multiplier=1e308, jitter=0).delay(50) == 30.0  # no overflow


# -- cancellation ------------------------------------------------------------------------

def test_cancel_token_basics():
    t = CancelToken()
    assert not t.cancelled and t.reason is None
    t.raise_if_cancelled()
    assert t.wait(0.01) is False
    seen = []
    t.add_callback(lambda tok: seen.append(tok.reason))
    threading.Timer(0.05, t.cancel, args=("stop",)).start()
    assert t.wait(PROMPT) is True
    assert t.cancelled and t.reason == "stop" and seen == ["stop"]
    assert t.cancel("again") is False and t.reason == "stop"
    with pytest.raises(cf.CancelledError, match="stop"):
        t.raise_if_cancelled()
    late = []
    t.add_callback(late.append)  # already cancelled: called at once
    assert late == [t]


def test_cancel_token_children_and_timeout():
    parent = CancelToken()
    child = parent.child()
    grandchild = child.child()
    other = parent.child()
    other.cancel("own")
    assert not parent.cancelled and not child.cancelled
    threading.Timer(0.05, parent.cancel, args=("up",)).start()
    assert grandchild.wait(PROMPT)  # wakes through two levels
    assert child.cancelled and child.reason == "up" and grandchild.reason == "up"
    assert other.reason == "own"
    timed = CancelToken(timeout=0.05)
    assert not timed.cancelled
    assert timed.wait(PROMPT) and timed.reason == "timeout"
    with pytest.raises(TypeError):
        CancelToken(parent="x")
    with pytest.raises(ValueError):
        CancelToken(timeout=-1)


def test_current_token(make_pool):
    pool = make_pool(1)
    outside = current_token()
    assert isinstance(outside, CancelToken) and not outside.cancelled
    assert pool.submit(current_token).result(PROMPT) is pool.token
    mine = CancelToken()
    inner = pool.schedule(current_token, token=mine).result(PROMPT)
    assert inner is not pool.token and not inner.cancelled
    mine.cancel("caller")
    assert inner.cancelled and inner.reason == "caller"


def test_token_cancelled_before_start_never_runs(make_pool, gate):
    pool = make_pool(1)
    pool.submit(gate)
    gate.wait_started(1)
    ran = []
    token = CancelToken()
    futs = [pool.schedule(ran.append, (i,), token=token) for i in range(3)]
    token.cancel()
    wait_until(lambda: all(f.cancelled() for f in futs), what="futures cancelled promptly")
    gate.open()
    assert pool.join(PROMPT)
    assert ran == []
    s = pool.stats()
    assert (s.cancelled, s.succeeded) == (3, 1)
    # Already cancelled at the call: the future comes back cancelled, nothing runs.
    f = pool.schedule(ran.append, (9,), token=token)
    assert f.cancelled()
    assert pool.join(PROMPT) and ran == []
    check_invariant(pool.stats())


def test_running_task_sees_its_token(make_pool):
    pool = make_pool(1)
    token = CancelToken()
    started = threading.Event()

    def worker():
        started.set()
        assert current_token().wait(PROMPT)
        return current_token().reason

    fut = pool.schedule(worker, token=token)
    assert started.wait(PROMPT)
    token.cancel("enough")
    assert fut.result(PROMPT) == "enough"


def test_cooperative_cancellation_cancels_the_future(make_pool):
    pool = make_pool(1)
    token = CancelToken()
    started = threading.Event()

    def worker():
        started.set()
        current_token().wait(PROMPT)
        current_token().raise_if_cancelled()

    fut = pool.schedule(worker, token=token)
    assert started.wait(PROMPT)
    token.cancel()
    wait_until(fut.done)
    assert fut.cancelled()
    assert pool.join(PROMPT)
    s = pool.stats()
    assert (s.cancelled, s.failed) == (1, 0)


def test_deadline(make_pool):
    pool = make_pool(2, retry=Retry(attempts=3, backoff=0.001))
    seen = []

    def stubborn():
        tok = current_token()
        seen.append(tok.wait(PROMPT))
        return "too late"

    fut = pool.schedule(stubborn, deadline=0.1, key="slow")
    with pytest.raises(DeadlineExceeded) as info:
        fut.result(PROMPT)
    assert isinstance(info.value, TimeoutError)
    wait_until(lambda: seen == [True], what="the task to see its token cancelled")
    assert pool.join(PROMPT)
    s = pool.stats()
    assert (s.failed, s.succeeded, s.retried, s.running) == (1, 0, 0, 0)
    assert [d.key for d in pool.dead_letters] == ["slow"]
    # A task that finishes in time is not affected.
    assert pool.schedule(ok, (5,), deadline=PROMPT).result(PROMPT) == 5
    check_invariant(pool.stats())


# -- shutdown ----------------------------------------------------------------------------

def test_graceful_shutdown_runs_everything(make_pool):
    pool = make_pool(2, retry=Retry(attempts=2, backoff=0.01))
    flaky = Flaky(1)
    futs = [pool.submit(flaky, i) for i in range(20)]
    report = pool.shutdown()
    assert isinstance(report, ShutdownReport)
    assert report == ShutdownReport(completed=20, not_started=[], still_running=[],
                                    timed_out=False)
    assert [f.result(0) for f in futs] == list(range(20))


def test_timed_shutdown_hands_back_what_did_not_run(make_pool):
    pool = make_pool(1)
    saw_cancel = threading.Event()

    def stuck():
        if current_token().wait(PROMPT):
            saw_cancel.set()
        return "stopped"

    running = pool.submit(stuck)
    wait_until(lambda: pool.stats().running == 1)
    queued = [pool.schedule(ok, (i,), {"k": i}, key=f"r{i}") for i in range(5)]
    report = pool.shutdown(timeout=0.1)
    assert report.timed_out
    assert [(t.fn, t.args, t.kwargs, t.key, t.attempts) for t in report.not_started] == [
        (ok, (i,), {"k": i}, f"r{i}", 0) for i in range(5)]
    assert [t.future for t in report.not_started] == queued
    assert all(f.cancelled() for f in queued)
    assert [t.future for t in report.still_running] == [running]
    assert all(isinstance(t, Task) for t in report.still_running + report.not_started)
    assert saw_cancel.wait(PROMPT)  # the pool token reached the running task
    assert running.result(PROMPT) == "stopped"
    s = pool.stats()
    assert report.completed + len(report.not_started) + len(report.still_running) == s.submitted
    wait_until(lambda: pool.stats().running == 0)
    s = pool.stats()
    assert (s.not_started, s.succeeded, s.cancelled) == (5, 1, 0)
    check_invariant(s)


def test_shutdown_cancel_futures(make_pool, gate):
    pool = make_pool(1)
    first = pool.submit(gate, 0)
    gate.wait_started(1)
    rest = [pool.submit(ok, i) for i in range(1, 4)]
    threading.Timer(0.1, gate.open).start()
    report = pool.shutdown(cancel_futures=True)
    assert [t.args for t in report.not_started] == [(1,), (2,), (3,)]
    assert all(f.cancelled() for f in rest)
    assert first.result(0) == 0
    assert report.still_running == [] and not report.timed_out
    assert report.completed == 1


def test_shutdown_is_idempotent_and_wait_false_reports(make_pool, gate):
    pool = make_pool(1)
    fut = pool.submit(gate, 1)
    gate.wait_started(1)
    report = pool.shutdown(wait=False)
    assert [t.future for t in report.still_running] == [fut]
    gate.open()
    again = pool.shutdown()
    assert again is report or again.completed >= report.completed
    assert fut.result(PROMPT) == 1
    with pytest.raises(ValueError, match="needs wait=True"):
        pool.shutdown(wait=False, timeout=1)


def test_shutdown_from_inside_a_task(make_pool):
    pool = make_pool(2)
    report = pool.submit(lambda: pool.shutdown()).result(PROMPT)
    assert isinstance(report, ShutdownReport)
    with pytest.raises(RuntimeError):
        pool.submit(ok)


def test_second_shutdown_waits_for_first(make_pool, gate):
    pool = make_pool(1)
    pool.submit(gate)
    gate.wait_started(1)
    reports = []
    t = threading.Thread(target=lambda: reports.append(pool.shutdown()))
    t.start()
    wait_until(lambda: pool._shutdown)
    threading.Timer(0.1, gate.open).start()
    second = pool.shutdown()
    t.join(PROMPT)
    assert reports == [second] and second.completed == 1


# -- faults ------------------------------------------------------------------------------

@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_base_exception_in_task(make_pool, exc):
    pool = make_pool(1, retry=Retry(attempts=3, backoff=0.001))

    def boom():
        raise exc("boom")

    fut = pool.submit(boom)
    wait_until(fut.done)
    assert isinstance(fut.exception(), exc)
    # The single worker survived and still runs work; not retried (not an Exception).
    assert pool.submit(ok, 3).result(PROMPT) == 3
    assert pool.stats().retried == 0
    assert not pool.shutdown(timeout=PROMPT).timed_out


def test_raising_callbacks_do_not_break_the_pool(make_pool, caplog):
    pool = make_pool(1)
    futs = []
    for i in range(5):
        f = pool.submit(ok, i)
        f.add_done_callback(lambda _f: 1 / 0)
        futs.append(f)
    assert [f.result(PROMPT) for f in futs] == list(range(5))
    assert pool.join(PROMPT)
    check_invariant(pool.stats())


def test_join(make_pool, gate):
    pool = make_pool(2)
    pool.submit(gate)
    gate.wait_started(1)
    assert pool.join(timeout=0.05) is False
    gate.open()
    assert pool.join(PROMPT) is True
    assert pool.submit(ok, 1).result(PROMPT) == 1  # still open

    def inner():
        return pool.join(1)

    with pytest.raises(RuntimeError, match="wait for itself"):
        pool.submit(inner).result(PROMPT)


# -- stats -------------------------------------------------------------------------------

def test_stats(make_pool):
    pool = make_pool(2, retry=Retry(attempts=2, backoff=0.001))
    futs = [pool.submit(ok, i) for i in range(100)] + [pool.submit(fail, i) for i in range(3)]
    cf.wait(futs, PROMPT)
    assert pool.join(PROMPT)
    s = pool.stats()
    assert isinstance(s, Stats)
    assert (s.submitted, s.succeeded, s.failed, s.retried, s.dead_lettered) == (103, 100, 3, 3, 3)
    assert (s.queued, s.running, s.retrying, s.pending) == (0, 0, 0, 0)
    assert 1 <= s.workers <= 2
    for name in ("wait_p50", "wait_p90", "wait_p99", "run_p50", "run_p90", "run_p99"):
        assert getattr(s, name) is not None and getattr(s, name) >= 0
    assert s.wait_p50 <= s.wait_p90 <= s.wait_p99
    assert "submitted" in s.format() and s.as_dict()["failed"] == 3
    check_invariant(s)


def test_initializer_failure_breaks_the_pool(make_pool, caplog):
    def bad_init():
        raise OSError("no database")

    pool = make_pool(1, initializer=bad_init)
    fut = pool.submit(ok, 1)
    with pytest.raises(cf.BrokenExecutor):
        fut.result(PROMPT)
    with pytest.raises(cf.BrokenExecutor):
        pool.submit(ok, 2)
    s = pool.stats()
    assert (s.submitted, s.failed, s.queued) == (1, 1, 0)
    check_invariant(s)


def test_initializer_and_thread_names(make_pool):
    seen = []
    pool = make_pool(2, name="ingest", initializer=seen.append, initargs=("init",))
    assert pool.submit(lambda: threading.current_thread().name).result(PROMPT).startswith(
        "ingest_")
    assert seen and set(seen) == {"init"}


def test_unreferenced_pool_is_collected_and_its_workers_exit():
    import gc
    import weakref

    pool = Pool(3, retry=Retry(attempts=2, backoff=0.001))
    futs = [pool.submit(pow, i, 2) for i in range(50)]
    futs.append(pool.schedule(pow, (2, 3), key="k", deadline=60))
    assert [f.result(PROMPT) for f in futs][-1] == 8
    assert pool.join(PROMPT)
    ref = weakref.ref(pool)
    del pool, futs
    # A worker may still be returning from the last task (a local reference) for a
    # moment; after that nothing -- timer entry, token hook, worker -- keeps it alive.
    wait_until(lambda: gc.collect() is not None and ref() is None, what="the pool to be freed")
    # (the autouse fixture fails the test if its worker threads do not exit)


def test_dead_letter_is_recorded_before_the_future_fails():
    # Code that reacts to a failure (a done-callback here) must find its dead letter.
    missing = []

    def boom(i):
        raise ValueError(i)

    with Pool(4, retry=Retry(attempts=1)) as pool:
        def check(f, pool=pool):
            keys = {letter.args for letter in pool.dead_letters}
            if (f.index,) not in keys:
                missing.append(f.index)

        for i in range(300):
            f = pool.submit(boom, i)
            f.index = i
            f.add_done_callback(check)
        pool.join()
    assert missing == []
