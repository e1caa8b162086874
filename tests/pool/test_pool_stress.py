"""Stress: several producers, random failures, retries, deadlines, token and future
cancellations, resizes, and a timed shutdown in the middle -- then every task is
accounted for exactly once.

FASTPOOL_STRESS_TASKS (default 20000) sets the size, FASTPOOL_STRESS_RUNS (default 1)
how many independent runs (each with its own seed) pytest collects; e.g.
FASTPOOL_STRESS_RUNS=50 for the "50 in a row" check.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from concurrent.futures import CancelledError

import pytest

from fastpool import CancelToken, DeadlineExceeded, Pool, Retry, current_token

TASKS = int(os.environ.get("FASTPOOL_STRESS_TASKS", "20000"))
RUNS = int(os.environ.get("FASTPOOL_STRESS_RUNS", "1"))
PRODUCERS = 4
PROMPT = 60.0


def work(i: int, fail_rate: float, slow: bool) -> int:
    r = random.random()
    if r < fail_rate:
        raise ValueError(i)  # retried
    if r < fail_rate * 1.2:
        raise KeyError(i)  # not retried: straight to failed + dead letter
    if slow:
        # Long enough to meet a deadline or the shutdown; stops early when told to.
        if current_token().wait(0.05):
            current_token().raise_if_cancelled()
    return 2 * i


def check_invariant(s) -> None:
    counts = {k: v for k, v in s.as_dict().items() if isinstance(v, int)}
    if min(s.queued, s.running, s.retrying) < 0 or s.submitted != (
            s.succeeded + s.failed + s.cancelled + s.not_started
            + s.queued + s.running + s.retrying):
        raise AssertionError(f"stats do not add up: {counts}")


@pytest.mark.stress
@pytest.mark.parametrize("seed", range(RUNS))
def test_stress_every_task_accounted_for_once(seed):
    rng = random.Random(seed)
    pool = Pool(
        4,
        min_workers=1,
        idle_timeout=rng.choice([0.01, 60.0]),
        queue_size=rng.choice([0, 16, 256]),
        retry=Retry(attempts=3, backoff=0.0005, multiplier=2, jitter=0.5, retry_on=ValueError),
    )
    fail_rate = rng.choice([0.05, 0.2])
    tokens = [CancelToken() for _ in range(16)]
    accepted: list[list] = [[] for _ in range(PRODUCERS)]  # (future, i) per producer
    rejected = [0] * PRODUCERS
    stop = threading.Event()
    errors: list[BaseException] = []

    def producer(p: int) -> None:
        prng = random.Random(seed * 100 + p)
        try:
            for n in range(TASKS // PRODUCERS):
                i = p * TASKS + n
                kind = prng.random()
                slow = prng.random() < 0.01
                try:
                    if kind < 0.5:
                        fut = pool.submit(work, i, fail_rate, slow)
                    elif kind < 0.6:
                        fut = pool.try_submit(work, i, fail_rate, slow)
                        if fut is None:
                            rejected[p] += 1
                            continue
                    elif kind < 0.8:
                        fut = pool.schedule(work, (i, fail_rate, slow), key=i,
                                            token=prng.choice(tokens))
                    else:
                        fut = pool.schedule(work, (i, fail_rate, slow), key=i,
                                            deadline=prng.choice([0.01, 5.0]))
                except RuntimeError:
                    return  # the pool shut down under us: expected
                accepted[p].append((fut, i))
                if prng.random() < 0.02:
                    fut.cancel()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def meddler() -> None:
        # Cancels tokens, resizes, and checks that stats always add up.
        mrng = random.Random(seed + 7)
        try:
            while not stop.is_set():
                check_invariant(pool.stats())
                r = mrng.random()
                if r < 0.1:
                    mrng.choice(tokens).cancel("meddler")
                elif r < 0.15:
                    try:
                        pool.resize(mrng.randint(1, 6))
                    except RuntimeError:
                        pass  # shut down already
                time.sleep(0.002)
        except BaseException as exc:  # pragma: no cover - reported below
            print("meddler:", exc, file=sys.stderr)
            errors.append(exc)

    threads = [threading.Thread(target=producer, args=(p,)) for p in range(PRODUCERS)]
    threads.append(threading.Thread(target=meddler))
    for t in threads:
        t.start()
    # Shut down somewhere in the middle of the stream, with a short drain.
    target = rng.randint(TASKS // 4, 3 * TASKS // 4)
    deadline = time.monotonic() + PROMPT
    while sum(len(a) for a in accepted) < target and time.monotonic() < deadline:
        if not any(t.is_alive() for t in threads[:PRODUCERS]):
            break
        time.sleep(0.001)
    report = pool.shutdown(timeout=rng.choice([0.0, 0.01, 0.05]))
    stats_at_report = pool.stats()
    for t in threads[:PRODUCERS]:
        t.join(PROMPT)
    stop.set()
    threads[-1].join(PROMPT)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors

    futures = [f for a in accepted for f, _ in a]
    index = {id(f): i for a in accepted for f, i in a}
    # Still-running tasks finish (they saw the pool token); nothing else is pending.
    end = time.monotonic() + PROMPT
    while not all(f.done() for f in futures):
        assert time.monotonic() < end, "futures left pending after shutdown"
        time.sleep(0.005)
    end = time.monotonic() + PROMPT
    while pool.stats().running:
        assert time.monotonic() < end
        time.sleep(0.005)
    s = pool.stats()
    check_invariant(s)
    assert (s.queued, s.running, s.retrying) == (0, 0, 0)

    # The report adds up at the instant it was taken, and lists each task once.
    assert report.completed + len(report.not_started) + len(report.still_running) == s.submitted
    ns = [id(t.future) for t in report.not_started]
    sr = [id(t.future) for t in report.still_running]
    assert len(set(ns)) == len(ns) and len(set(sr)) == len(sr) and not set(ns) & set(sr)
    assert all(t.future.cancelled() for t in report.not_started)
    assert all(index[id(t.future)] == (t.args[0]) for t in report.not_started)
    assert stats_at_report.submitted == s.submitted  # nothing accepted after shutdown

    # Ground truth from the futures against the counters.
    assert s.submitted == len(futures) == len(index)
    assert s.rejected == sum(rejected)
    ok = [f for f in futures if not f.cancelled() and f.exception() is None]
    failed = [f for f in futures if not f.cancelled() and f.exception() is not None]
    cancelled = [f for f in futures if f.cancelled()]
    assert s.succeeded == len(ok)
    assert s.failed == len(failed)
    assert s.cancelled + s.not_started == len(cancelled)
    assert s.not_started == len(report.not_started)
    assert all(f.result() == 2 * index[id(f)] for f in ok)
    assert all(isinstance(f.exception(), (ValueError, KeyError, DeadlineExceeded,
                                          CancelledError)) for f in failed)
    # Every task had the pool's retry policy: each failure is a dead letter.
    letters = pool.dead_letters.drain()
    assert s.dead_lettered == len(letters) == s.failed
    assert sorted(id(e.error) for e in letters) == sorted(id(f.exception()) for f in failed)
