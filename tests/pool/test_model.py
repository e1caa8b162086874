"""Model-based test of fastpool.Pool (issue 5): hypothesis drives a pool with random
operations -- submit, try_submit, schedule with a cancel token, cancelling tokens and
futures, resize, join, shutdown with a timeout -- and checks the invariants below
after every step. Runs on the native core and (FASTPOOL_NO_EXTENSIONS=1) the
fallback, like the rest of the suite.

Invariants checked:
  * stats add up at every instant: submitted == succeeded + failed + cancelled +
    not_started + queued + running + retrying, and submitted == the tasks the model saw
    accepted; rejected == the model's refused try_submits;
  * every future that is done is in exactly one state, with the right value for what its
    task did (result / the task's exception / cancelled);
  * after join(): nothing pending, every future done;
  * shutdown(timeout=...) returns a report in which every accepted task is accounted for:
    completed + not_started + still_running == submitted, not_started futures are
    cancelled, and afterwards the pool refuses work with RuntimeError;
  * bad input gets TypeError/ValueError at the call, and the pool keeps working.
"""

from __future__ import annotations

import concurrent.futures as cf
import time

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import (  # noqa: E402
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import fastpool  # noqa: E402
from fastpool import CancelToken, Pool, Retry  # noqa: E402

PROMPT = 30.0


class Boom(Exception):
    pass


def work(kind: str, i: int, delay: float) -> int:
    if delay:
        time.sleep(delay)
    if kind == "fail":
        raise Boom(i)
    return i


KINDS = st.sampled_from(["ok", "ok", "fail", "slow"])


class PoolModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.pool: Pool | None = None
        self.records: list[tuple[cf.Future, str, int]] = []  # accepted tasks
        self.n = 0
        self.rejected = 0
        self.closed = False
        self.retry = False

    @initialize(workers=st.integers(1, 3), queue_size=st.sampled_from([0, 2, 5]),
                min_workers=st.integers(0, 1), retry=st.booleans())
    def make_pool(self, workers: int, queue_size: int, min_workers: int, retry: bool) -> None:
        self.retry = retry
        self.queue_size = queue_size
        self.pool = Pool(workers, min_workers=min(min_workers, workers), idle_timeout=0.05,
                         queue_size=queue_size or None,
                         retry=Retry(attempts=2, backoff=0.001, jitter=0) if retry else None)

    def teardown(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            for f, _, _ in self.records:
                assert f.done()
            self._check_states()

    # -- helpers -------------------------------------------------------------------------

    def _next(self, kind: str) -> tuple[str, int, float]:
        self.n += 1
        return kind, self.n, 0.005 if kind == "slow" else 0.0

    def _check_states(self) -> None:
        for f, kind, i in self.records:
            if not f.done():
                continue
            cancelled = f.cancelled()
            exc = None if cancelled else f.exception(0)
            assert [cancelled, exc is not None, not cancelled and exc is None].count(True) == 1
            if cancelled:
                continue
            if kind == "fail":
                assert isinstance(exc, Boom) and exc.args == (i,), (kind, i, exc)
            elif exc is None:
                assert f.result(0) == i
            else:
                raise AssertionError(f"{kind} task {i} failed: {exc!r}")

    # -- operations ----------------------------------------------------------------------

    @precondition(lambda self: not self.closed)
    @rule(kind=KINDS)
    def submit(self, kind: str) -> None:
        k, i, delay = self._next(kind)
        # submit blocks while a bounded queue is full: tasks finish on their own, so it
        # returns after a few milliseconds at most.
        f = self.pool.submit(work, k, i, delay)
        self.records.append((f, k, i))

    @precondition(lambda self: not self.closed)
    @rule(kind=KINDS)
    def try_submit(self, kind: str) -> None:
        k, i, delay = self._next(kind)
        f = self.pool.try_submit(work, k, i, delay)
        if f is None:
            assert self.queue_size, "an unbounded pool refused a task"
            self.rejected += 1
        else:
            self.records.append((f, k, i))

    @precondition(lambda self: not self.closed)
    @rule(kind=KINDS, cancel_now=st.booleans())
    def schedule_with_token(self, kind: str, cancel_now: bool) -> None:
        k, i, delay = self._next(kind)
        token = CancelToken()
        if cancel_now:
            token.cancel("before")
        try:
            f = self.pool.schedule(work, (k, i, delay), token=token, key=i)
        except (ValueError, RuntimeError):
            # A cancelled token may be refused at the call (as bad input); then nothing
            # was accepted.
            assert cancel_now
            return
        self.records.append((f, k, i))
        if cancel_now:
            # A task whose token is cancelled before it starts never runs.
            cf.wait([f], timeout=PROMPT)
            assert f.cancelled(), f"task {i} with a cancelled token ran"
        else:
            token.cancel("after")  # racing the worker: either outcome, never both

    @precondition(lambda self: not self.closed and self.records)
    @rule(pick=st.integers(0, 1 << 16))
    def cancel_a_future(self, pick: int) -> None:
        # An index drawn independently of the state: try_submit's outcome depends on
        # timing, and hypothesis needs the same draws when it replays a failure.
        f, _, _ = self.records[pick % len(self.records)]
        was_done = f.done()
        ok = f.cancel()
        if was_done and not f.cancelled():
            assert not ok

    @precondition(lambda self: not self.closed)
    @rule(workers=st.integers(1, 4))
    def resize(self, workers: int) -> None:
        self.pool.resize(workers)
        assert self.pool.workers == workers

    @precondition(lambda self: not self.closed)
    @rule(bad=st.sampled_from([0, -1, "2", None, 1.5]))
    def bad_input(self, bad: object) -> None:
        with pytest.raises((TypeError, ValueError)):
            self.pool.resize(bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            self.pool.submit(bad)  # not callable

    @precondition(lambda self: not self.closed)
    @rule()
    def join(self) -> None:
        assert self.pool.join(timeout=PROMPT), "join() timed out"
        for f, _, i in self.records:
            assert f.done(), f"task {i} not done after join()"
        s = self.pool.stats()
        assert s.queued == s.running == s.retrying == 0, s

    @precondition(lambda self: not self.closed)
    @rule(timeout=st.sampled_from([0.0, 0.01, None]), cancel_futures=st.booleans())
    def shutdown(self, timeout: float | None, cancel_futures: bool) -> None:
        report = self.pool.shutdown(wait=True, cancel_futures=cancel_futures, timeout=timeout)
        self.closed = True
        s = self.pool.stats()
        accepted = len(self.records)
        assert report.completed + len(report.not_started) + len(report.still_running) == accepted, (
            report, s)
        for t in report.not_started:
            assert t.future.cancelled()
        running = {id(t.future) for t in report.still_running}
        for f, _, i in self.records:
            assert f.done() or id(f) in running, f"task {i} neither done nor reported running"
        if timeout is None and not cancel_futures:
            assert not report.timed_out and not report.not_started and not report.still_running
        with pytest.raises(RuntimeError):
            self.pool.submit(work, "ok", 0, 0)
        with pytest.raises(RuntimeError):
            self.pool.try_submit(work, "ok", 0, 0)

    @precondition(lambda self: self.closed)
    @rule()
    def after_shutdown(self) -> None:
        # A second shutdown returns (a report) without hanging; work is still refused.
        report = self.pool.shutdown(wait=True)
        assert report.completed <= len(self.records)
        with pytest.raises(RuntimeError):
            self.pool.submit(work, "ok", 0, 0)
        for f, _, i in self.records:
            assert cf.wait([f], timeout=PROMPT).done, f"task {i} never finished after shutdown"

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def stats_add_up(self) -> None:
        if self.pool is None:
            return
        s = self.pool.stats()
        assert s.submitted == (s.succeeded + s.failed + s.cancelled + s.not_started
                               + s.queued + s.running + s.retrying), s
        assert s.submitted == len(self.records), (s, len(self.records))
        assert s.rejected == self.rejected, s
        assert min(s.queued, s.running, s.retrying, s.succeeded, s.failed, s.cancelled,
                   s.not_started) >= 0, s
        if self.retry:
            assert s.dead_lettered <= s.failed, s
        else:
            assert s.dead_lettered == 0, s

    @invariant()
    def futures_in_one_state(self) -> None:
        self._check_states()


PoolModel.TestCase.settings = settings(
    max_examples=int(__import__("os").environ.get("FASTPOOL_MODEL_EXAMPLES", "25")),
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_pool_model = PoolModel.TestCase
