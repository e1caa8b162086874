"""Pool.map on the native map engine: every item counted, retried, dead-lettered,
limited by its deadline and cancelled by tokens as a task is (issue 11)."""

from __future__ import annotations

import itertools
import sys
import threading
import time
from concurrent.futures import CancelledError

import pytest

from fastpool import DeadlineExceeded, Retry, Stats, current_token
from fastpool._pick_core import core
from fastpool.cancel import CancelToken
from pool_support import (PROMPT, check_invariant, gate, make_pool, ok,  # noqa: F401
                          wait_until)


def settled(pool) -> int:
    # The Ledger's counters (stats() without its latency percentiles: cheap enough to
    # read after every item).
    c = pool._state.ledger.counts()
    return sum(c[i] for i in (core.N_SUCCEEDED, core.N_FAILED, core.N_CANCELLED))


@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("chunksize", [1, 4])
def test_outcome_counted_before_it_is_delivered(make_pool, ordered, chunksize):
    # The CI flake of test_map_progress_callable: an item's outcome must be in the
    # stats when the consumer gets it, so the last progress call is exact. Repeated:
    # a race shows only now and then.
    pool = make_pool(4)

    def maybe(x):
        if x % 7 == 3:
            raise ValueError(x)
        return x

    for _ in range(20):
        base = pool.stats()
        done = settled(pool)
        seen: list[Stats] = []
        it = pool.map(maybe, range(300), ordered=ordered, chunksize=chunksize,
                      return_exceptions=True, progress=seen.append)
        for n, _value in enumerate(it, 1):
            assert settled(pool) - done >= n, n
        check_invariant(pool.stats())
        last = seen[-1]
        assert last.succeeded - base.succeeded == 300 - 43
        assert last.failed - base.failed == 43
        assert last.submitted - base.submitted == 300


def test_progress_final_call_is_exact(make_pool):
    pool = make_pool(2)
    for _ in range(50):
        seen: list[Stats] = []
        assert list(pool.map(ok, range(50), progress=seen.append)) == list(range(50))
        assert seen[-1].succeeded % 50 == 0 and seen[-1].queued == seen[-1].running == 0


@pytest.mark.parametrize("ordered", [True, False])
def test_retries_then_success(make_pool, ordered):
    pool = make_pool(3, retry=Retry(attempts=3, backoff=0.01, jitter=0.0))
    tries: dict[int, int] = {}
    lock = threading.Lock()

    def flaky(x):
        with lock:
            tries[x] = tries.get(x, 0) + 1
            n = tries[x]
        if x % 10 == 0 and n < 3:
            raise OSError(x)
        return x * 2

    out = list(pool.map(flaky, range(100), ordered=ordered, chunksize=3))
    assert (out if ordered else sorted(out)) == [x * 2 for x in range(100)]
    assert pool.join(PROMPT)
    s = pool.stats()
    assert (s.submitted, s.succeeded, s.failed, s.retried) == (100, 100, 0, 20)
    assert len(pool.dead_letters) == 0
    check_invariant(s)


def test_per_call_retry_and_dead_letters(make_pool):
    pool = make_pool(2)

    def bad(x):
        if x == 5:
            raise KeyError(x)
        return x

    out = list(pool.map(bad, range(10), retry=Retry(attempts=2, backoff=0.0),
                        return_exceptions=True))
    assert isinstance(out[5], KeyError) and out[:5] == [0, 1, 2, 3, 4]
    assert pool.join(PROMPT)
    s = pool.stats()
    assert (s.succeeded, s.failed, s.retried, s.dead_lettered) == (9, 1, 1, 1)
    letter = pool.dead_letters.get(0)
    assert (letter.fn, letter.args, letter.attempts) == (bad, (5,), 2)
    # retry=False: the pool's policy is not used, no dead letter.
    pool2 = make_pool(2, retry=Retry(attempts=3, backoff=0.0))
    with pytest.raises(KeyError):
        list(pool2.map(bad, range(10), retry=False))
    assert pool2.join(PROMPT)
    assert pool2.stats().retried == 0 and len(pool2.dead_letters) == 0
    check_invariant(pool2.stats())


@pytest.mark.parametrize("ordered", [True, False])
def test_simple_retry_is_decided_by_the_runner(make_pool, monkeypatch, ordered):
    # A policy without backoff, on exception classes: the runner retries the item in
    # place without the Python hook (the cost of "1% fail once" in
    # benches/bench_pool_map.py). What the policy does not retry still goes through it.
    from fastpool.pool import _map
    calls: list[BaseException | None] = []
    failed = _map._MapHooks.failed

    def spy(self, *args):
        calls.append(args[-2])  # (..., exc, attempt)
        return failed(self, *args)

    monkeypatch.setattr(_map._MapHooks, "failed", spy)
    pool = make_pool(2, retry=Retry(attempts=3, backoff=0.0, retry_on=OSError))
    seen: dict[int, int] = {}
    lock = threading.Lock()

    def flaky(x):
        with lock:
            seen[x] = n = seen.get(x, 0) + 1
        if x % 10 == 0 and n < 3:
            raise OSError(x)  # retried twice, then succeeds
        if x == 7:
            raise KeyError(x)  # not retried: dead-lettered
        if x == 9:
            raise OSError(x)  # retried twice, then dead-lettered
        return x

    out = list(pool.map(flaky, range(100), ordered=ordered, return_exceptions=True))
    assert len(out) == 100
    assert pool.join(PROMPT)
    s = pool.stats()
    assert (s.succeeded, s.failed, s.retried, s.dead_lettered) == (98, 2, 22, 2), s
    assert sorted(type(e).__name__ for e in calls) == ["KeyError", "OSError"], calls
    assert {d.args for d in pool.dead_letters} == {(7,), (9,)}
    check_invariant(s)


@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("chunksize", [1, 4])
def test_deadline_fails_the_item_at_once(make_pool, ordered, chunksize):
    # As submit(deadline=): at the deadline the consumer gets DeadlineExceeded (and the
    # dead letter is written) while the call still runs; it counts as running until it
    # returns, and the items after it in its chunk run elsewhere meanwhile.
    pool = make_pool(2, retry=Retry(attempts=3, backoff=0.0))
    release = threading.Event()

    def slow(x):
        if x == 1:
            assert release.wait(PROMPT)  # ignores its token
        return x

    it = pool.map(slow, range(8), deadline=0.2, ordered=ordered, chunksize=chunksize,
                  return_exceptions=True)
    out = [next(it) for _ in range(8)]  # all of them while item 1 still runs
    errors = [e for e in out if isinstance(e, DeadlineExceeded)]
    assert len(errors) == 1 and sorted(x for x in out if x not in errors) == [0, 2, 3, 4, 5, 6, 7]
    if ordered:
        assert out[1] is errors[0]
    assert [d.args for d in pool.dead_letters] == [(1,)]
    s = pool.stats()
    assert (s.succeeded, s.failed, s.running, s.dead_lettered, s.retried) == (7, 0, 1, 0, 0), s
    check_invariant(s)
    release.set()
    assert pool.join(PROMPT)
    s = pool.stats()
    assert (s.succeeded, s.failed, s.running, s.dead_lettered) == (7, 1, 0, 1), s
    assert len(pool.dead_letters) == 1
    check_invariant(s)


def test_deadline_of_an_item_that_returns_late(make_pool):
    # No timer was quicker than the call: the runner sees it came back late.
    pool = make_pool(1)

    def slow(x):
        if x == 1:
            t = time.monotonic() + 0.2
            while time.monotonic() < t:  # holds the GIL most of the time
                pass
        return x

    out = list(pool.map(slow, range(4), deadline=0.05, return_exceptions=True))
    assert out[0] == 0 and out[2:] == [2, 3] and isinstance(out[1], DeadlineExceeded)
    assert pool.join(PROMPT)
    s = pool.stats()
    assert (s.succeeded, s.failed) == (3, 1)
    check_invariant(s)


@pytest.mark.parametrize("ordered", [True, False])
def test_token_cancels_items_not_started(make_pool, gate, ordered):
    pool = make_pool(1)
    token = CancelToken()
    tokens = []

    def item(x):
        tokens.append(current_token())
        if x == 0:
            gate()
        return x

    it = pool.map(item, range(20), token=token, ordered=ordered, buffersize=20)
    gate.wait_started(1)
    assert not tokens[0].cancelled
    token.cancel()
    assert tokens[0].cancelled  # the running item sees its call's token cancelled
    gate.open()
    assert next(it) == 0
    with pytest.raises(CancelledError):
        next(it)
    assert pool.join(PROMPT)
    s = pool.stats()
    assert (s.submitted, s.succeeded, s.cancelled) == (20, 1, 19)
    check_invariant(s)


def test_closing_the_iterator_counts_the_rest_cancelled(make_pool):
    pool = make_pool(2)
    for _ in range(20):
        it = pool.map(ok, range(1000), buffersize=100)
        assert next(it) == 0
        it.close()
        assert pool.join(PROMPT)
        check_invariant(pool.stats())
    s = pool.stats()
    assert s.submitted == s.succeeded + s.cancelled


def test_dropped_iterator_counts_the_rest_cancelled(make_pool):
    pool = make_pool(2)
    it = pool.map(ok, range(1000), buffersize=100)
    next(it)
    del it
    assert pool.join(PROMPT)
    check_invariant(pool.stats())


def test_timed_shutdown_hands_back_items_not_started(make_pool, gate):
    pool = make_pool(1)
    it = pool.map(gate, range(10), buffersize=10)
    gate.wait_started(1)
    report = pool.shutdown(timeout=0.2)
    assert report.timed_out
    assert sorted(t.args for t in report.not_started) == [(i,) for i in range(1, 10)]
    assert all(t.future.cancelled() and t.fn is gate for t in report.not_started)
    s = pool.stats()
    assert (s.submitted, s.not_started) == (10, 9)
    check_invariant(s)
    gate.open()
    assert next(it) == 0
    with pytest.raises(CancelledError):
        next(it)
    wait_until(lambda: pool.stats().running == 0)
    check_invariant(pool.stats())


@pytest.mark.parametrize("chunksize", [1, 4])
def test_timed_shutdown_reports_running_items_and_hands_back_their_chunks(make_pool, gate,
                                                                          chunksize):
    # The items running when a timed shutdown returns are in still_running, as tasks
    # are (their futures settle when they return); the items their runners had taken
    # but not started are handed back with the rest (not cancelled). The report and
    # the stats account for every item.
    pool = make_pool(2)
    it = pool.map(gate, range(10), buffersize=10, chunksize=chunksize)
    gate.wait_started(2)
    report = pool.shutdown(timeout=0.2)
    assert report.timed_out
    first = {(0,), (chunksize,)}  # each runner's first item (chunks of `chunksize`)
    assert {t.args for t in report.still_running} == first
    assert all(t.fn is gate and t.attempts == 1 and not t.future.done()
               for t in report.still_running)
    assert sorted(t.args for t in report.not_started) == sorted(
        {(i,) for i in range(10)} - first)
    assert all(t.future.cancelled() and t.attempts == 0 for t in report.not_started)
    s = pool.stats()
    assert (s.submitted, s.running, s.not_started, s.cancelled) == (10, 2, 8, 0), s
    assert report.completed + len(report.not_started) + len(report.still_running) == 10
    check_invariant(s)
    gate.open()
    assert next(it) == 0
    if chunksize == 1:
        assert next(it) == 1
    with pytest.raises(CancelledError):
        next(it)
    for t in report.still_running:
        assert t.future.result(PROMPT) == t.args[0]
    wait_until(lambda: pool.stats().running == 0)
    s = pool.stats()
    assert (s.succeeded, s.not_started, s.cancelled) == (2, 8, 0), s
    check_invariant(s)
    assert pool.shutdown().completed == 2


def test_overdue_item_still_running_at_shutdown_is_reported(make_pool):
    pool = make_pool(1)
    release = threading.Event()
    it = pool.map(lambda x: release.wait(PROMPT) and x, range(3), deadline=0.1,
                  return_exceptions=True)
    assert isinstance(next(it), DeadlineExceeded)
    report = pool.shutdown(timeout=0.2)
    [t] = report.still_running
    assert t.args == (0,)
    with pytest.raises(DeadlineExceeded):
        t.future.result(0)
    assert sorted(t.args for t in report.not_started) == [(1,), (2,)]
    release.set()
    wait_until(lambda: pool.stats().running == 0)
    s = pool.stats()
    assert (s.failed, s.not_started, s.succeeded) == (1, 2, 0), s
    check_invariant(s)


def test_retry_waiting_at_shutdown_is_handed_back(make_pool):
    pool = make_pool(2, retry=Retry(attempts=2, backoff=60.0, jitter=0.0))

    def fails(x):
        raise OSError(x)

    it = pool.map(fails, range(3))
    wait_until(lambda: pool.stats().retrying == 3)
    report = pool.shutdown(timeout=0.2)
    assert sorted(t.args for t in report.not_started) == [(0,), (1,), (2,)]
    assert all(t.attempts == 1 for t in report.not_started)
    s = pool.stats()
    assert (s.retrying, s.not_started) == (0, 3)
    check_invariant(s)
    with pytest.raises(CancelledError):
        next(it)


def test_join_waits_for_a_map(make_pool):
    pool = make_pool(2)
    it = pool.map(lambda x: time.sleep(0.001) or x, range(200), buffersize=300)
    assert pool.join(PROMPT)
    s = pool.stats()
    assert s.succeeded == 200  # all ran without being consumed
    assert list(it) == list(range(200))


def test_map_after_shutdown_and_bad_options(make_pool):
    pool = make_pool(1)
    with pytest.raises(TypeError):
        pool.map(ok, [1], retry=3)
    with pytest.raises(TypeError):
        pool.map(ok, [1], token="t")
    with pytest.raises(ValueError):
        pool.map(ok, [1], deadline=-1)
    pool.shutdown()
    with pytest.raises(RuntimeError):
        pool.map(ok, [1])


def test_lazy_map_raises_once_the_pool_shuts_down(make_pool):
    pool = make_pool(1)
    it = pool.map(ok, itertools.count(), buffersize=4)
    assert next(it) == 0
    pool.shutdown(wait=False)
    with pytest.raises(RuntimeError):
        for _ in range(100):
            next(it)


def test_mapjob_honours_chunksize(core_impl):
    # A runner takes `chunksize` items at once: while the first runs item 0 (and, in
    # it, the second runner runs to the end), items 1-3 are already taken. (The
    # pure-Python core used to take one item at a time.)
    queue: list = []
    order: list[int] = []

    def fn(x):
        if x == 0:
            queue.pop(0).run()  # the second runner, here
        order.append(x)
        return x

    job = core_impl.MapJob(fn, range(12), queue.append, 2, star=False, chunksize=4)
    queue.pop(0).run()
    assert order == [4, 5, 6, 7, 8, 9, 10, 11, 0, 1, 2, 3]
    assert list(job) == list(range(12))


# Known bug, free-threaded builds only (open in issue 11): once in CI on 3.14t with the
# GIL off, a map item racing a timed shutdown was counted out of `running` twice
# (running=-1, queued=1 left). The runner/shutdown hand-off of a chunk's running item
# is a compare-and-swap there; with the GIL it passes every run.
@pytest.mark.skipif(not getattr(sys, "_is_gil_enabled", lambda: True)(),
                    reason="known counting race of a map chunk at a timed shutdown "
                           "without the GIL (running=-1); open in issue 11")
@pytest.mark.parametrize("deadline", [None, 0.004])
@pytest.mark.parametrize("round_", range(3))
def test_stress_maps_racing_a_timed_shutdown(make_pool, round_, deadline):
    # Maps with failures, retries (and deadlines) from several threads, the stats read
    # all along, then a timed shutdown: every item ends in exactly one state, and the
    # report hands back exactly the items counted not_started.
    pool = make_pool(4, retry=Retry(attempts=2, backoff=0.0005, jitter=0.0))
    bad: list[Stats] = []
    stop = threading.Event()

    def fn(x):
        if x % 13 == 0:
            raise OSError(x)
        if x % 5 == 0:
            time.sleep(0.001)  # busy enough that the shutdown times out
        if deadline and x % 97 == 0:
            time.sleep(0.006)  # overdue
        return x

    def consumer(k):
        try:
            for _ in pool.map(fn, range(3000), ordered=k % 2 == 0, chunksize=1 + k,
                              return_exceptions=True, buffersize=64 if k == 0 else None,
                              deadline=deadline):
                pass
        except (RuntimeError, CancelledError):
            pass  # shut down under it

    def reader():
        while not stop.is_set():
            s = pool.stats()
            try:
                check_invariant(s)
            except AssertionError:
                bad.append(s)
            time.sleep(0.001)

    threads = [threading.Thread(target=consumer, args=(k,)) for k in range(3)]
    threads.append(threading.Thread(target=reader))
    for t in threads:
        t.start()
    wait_until(lambda: pool.stats().succeeded > 0)
    time.sleep(0.01 * round_)
    report = pool.shutdown(timeout=0.05)
    for t in threads[:-1]:
        t.join(PROMPT)
    wait_until(lambda: pool.stats().running == 0)
    stop.set()
    threads[-1].join(PROMPT)
    assert not bad, bad[:3]
    s = pool.stats()
    assert s.queued == s.running == s.retrying == 0, s
    assert s.submitted == s.succeeded + s.failed + s.cancelled + s.not_started, s
    assert len(report.not_started) == s.not_started
    # Every item is in the report once: done, handed back, or still running then.
    assert report.completed + len(report.not_started) + len(report.still_running) == s.submitted
    assert s.dead_lettered == s.failed == len(pool.dead_letters)
