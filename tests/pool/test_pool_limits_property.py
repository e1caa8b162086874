"""Property (issue 9): every timeout and limit of Pool, schedule, Retry, CancelToken and
rate_limit, given 0, tiny, huge, inf, NaN, negative, bool or a wrong type, is either
refused at the call (TypeError/ValueError) or works -- and then a following
shutdown(timeout=t) returns within t plus a small bound, whatever the value did to the
tasks (a retry or a rate-limit slot that never comes, a deadline that never fires).
"""

from __future__ import annotations

import math
import threading
import time

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fastpool import CancelToken, Pool, Retry, current_token  # noqa: E402

VALUES = [0, 0.0, 1e-9, 5e-324, 0.05, 1, 3, 1e300, 10**400, math.inf, -math.inf, math.nan,
          -1, -0.5, True, False, None, "1", [1], object()]

# Where each limit goes: (name, kind) -- kind says what a following workload needs.
LIMITS = [
    "Pool.workers", "Pool.min_workers", "Pool.idle_timeout", "Pool.queue_size",
    "Pool.rate_limit", "Pool.rate_burst", "Pool.dead_letter_maxlen",
    "schedule.timeout", "schedule.deadline",
    "Retry.attempts", "Retry.backoff", "Retry.multiplier", "Retry.max_backoff",
    "Retry.jitter",
    "CancelToken.timeout", "CancelToken.wait",
    "join.timeout", "shutdown.timeout",
]

SHUTDOWN_TIMEOUT = 0.3
# A shutdown returns within its timeout plus this (a busy, shared machine).
BOUND = 3.0
# The workload's tasks end by themselves within about this.
TASKS_END = 0.5


def _flaky():
    # Fails its first attempt (the retry policy decides what follows), then waits a
    # little, stopping early when its token is cancelled.
    state = _flaky.state  # type: ignore[attr-defined]
    with state["lock"]:
        state["calls"] += 1
        first = state["calls"] == 1
    if first:
        raise ValueError("first attempt")
    current_token().wait(0.05)
    return "ok"


def _build(limit: str, value):
    """Make the call that takes `value`; return (pool, retry, schedule kwargs, token) or
    raise what the call raises."""
    pool_kw: dict = {}
    sched_kw: dict = {}
    retry_kw: dict = {"backoff": 0.01}
    token = None
    owner, _, name = limit.partition(".")
    if owner == "Pool":
        if name == "rate_limit":
            pool_kw["rate_limit"] = value
        elif name == "rate_burst":
            pool_kw["rate_limit"] = (100.0, value)
        else:
            pool_kw[name] = value
        if name == "min_workers":
            pool_kw["workers"] = 4
    elif owner == "schedule":
        sched_kw[name] = value
    elif owner == "Retry":
        retry_kw[name] = value
    elif owner == "CancelToken":
        if name == "timeout":
            token = CancelToken(timeout=value)
        else:
            # Its own timeout ends the wait, whatever the accepted value (inf included).
            token = CancelToken(timeout=0.05)
            token.wait(value)
    retry = Retry(**retry_kw)
    pool = Pool(**pool_kw)
    return pool, retry, sched_kw, token


CASES = [(limit, value) for limit in LIMITS for value in VALUES]


def test_every_limit_with_every_edge_value():
    """The whole table, deterministically: every limit with every edge value."""
    for limit, value in CASES:
        _check(limit, value)


@settings(max_examples=120, deadline=None, derandomize=True)
@given(case=st.tuples(st.sampled_from(LIMITS),
                      st.one_of(st.floats(), st.integers(min_value=-10, max_value=10**30),
                                st.sampled_from(VALUES))))
def test_limits_refused_at_the_call_or_shutdown_stays_bounded(case):
    """Any float (subnormals, huge, inf, NaN, -0.0) or int, at any limit."""
    _check(*case)


def _check(limit, value):
    try:
        pool, retry, sched_kw, token = _build(limit, value)
    except (TypeError, ValueError):
        return  # refused at the call: fine
    try:
        _flaky.state = {"lock": threading.Lock(), "calls": 0}  # type: ignore[attr-defined]
        futs = []
        for _ in range(3):
            try:
                futs.append(pool.schedule(_flaky, retry=retry, token=token, **sched_kw))
            except (TypeError, ValueError):
                assert limit.startswith("schedule."), (limit, value)
                break
        if limit == "join.timeout":
            try:
                pool.join(value)
            except (TypeError, ValueError):
                pass
        shutdown_timeout: object = SHUTDOWN_TIMEOUT
        if limit == "shutdown.timeout":
            shutdown_timeout = value
        t0 = time.monotonic()
        try:
            report = pool.shutdown(timeout=shutdown_timeout)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            assert limit == "shutdown.timeout", (limit, value)
            report = pool.shutdown(timeout=SHUTDOWN_TIMEOUT)
            shutdown_timeout = SHUTDOWN_TIMEOUT
        took = time.monotonic() - t0
        limit_s = shutdown_timeout if isinstance(shutdown_timeout, (int, float)) and \
            shutdown_timeout is not None and shutdown_timeout < 1e9 else TASKS_END
        assert took < float(limit_s) + BOUND, (limit, value, took, report)
        # Every task is accounted for, and each future is settled or still running.
        assert report.completed + len(report.not_started) + len(report.still_running) \
            == len(futs), (limit, value, report)
    finally:
        pool.shutdown(timeout=BOUND)
