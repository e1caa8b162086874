"""Shutdown and its report: stop accepting work, drain (for at most a timeout), hand
back what did not start, abandon what still runs, and account for every task."""

from __future__ import annotations

import logging
import threading
from time import monotonic

from .._states import N_CANCELLED, N_FAILED, N_SUCCEEDED
from . import _map
from ._outcomes import Outcomes
from ._records import ShutdownReport, Task, record
from ._scaling import Workers
from ._state import PoolState

LOGGER = logging.getLogger("fastpool")


class Shutdown:
    """Runs shutdown() (once, or again: later calls wait for the first, then report)."""

    def __init__(self, state: PoolState, workers: Workers, outcomes: Outcomes) -> None:
        self._state = state
        self._workers = workers
        self._outcomes = outcomes
        self._reset()

    def _reset(self) -> None:
        self._handed_back: list[Task] = []  # not_started, over every shutdown() call
        self._gave_up = False  # a shutdown timed out: what still runs is abandoned
        self._done: threading.Event | None = None  # set when the first call is over

    def reset_after_fork(self) -> None:
        self._reset()

    def shutdown(self, wait: bool, cancel_futures: bool, timeout: float | None,
                 in_worker: bool) -> ShutdownReport:
        """Pool.shutdown (its arguments checked; `in_worker`: called by one of the
        pool's own tasks, which must not wait for itself)."""
        st = self._state
        end = None if timeout is None else monotonic() + timeout
        with st.lock:
            first = not st.shutdown
            st.shutdown = True
            st.ledger.close()
            if first:
                self._done = threading.Event()
            done = self._done
            assert done is not None
        # Whoever waits for producers blocked on a full queue: they raise now.
        st.wake_producers()
        if first:
            try:
                return self._drain(wait, cancel_futures, timeout, in_worker)
            finally:
                done.set()
        if wait and not in_worker and not done.wait(
                None if end is None else max(0.0, end - monotonic())):
            # The first call (another thread's, without a timeout or a longer one) is
            # still waiting: this call's timeout bounds it too -- it gives up now (hands
            # back what has not started, cancels the token, abandons what still runs).
            st.hurry.set()
            done.wait()
            return self._snapshot(True)
        if self._gave_up:
            return self._snapshot(True)  # abandoned: nothing more to wait for
        left = None if end is None else max(0.0, end - monotonic())
        return self._drain(wait, cancel_futures, left, in_worker)

    def _drain(self, wait: bool, cancel_futures: bool, timeout: float | None,
               in_worker: bool) -> ShutdownReport:
        st = self._state
        timed_out = False
        if cancel_futures:
            self._collect()
        if wait and not in_worker:
            if not st.wait_idle(timeout, st.hurry):
                timed_out = True
                self._collect()
        with st.lock:
            if wait and not in_worker or st.ledger.idle():
                st.queue.close()
            elif not st.close_when_idle:
                st.close_when_idle = True  # workers finish the queue, then exit
                st.ledger.add_watch(1)
            # The tasks that did not finish in time, before they are told to stop.
            report = self._snapshot(timed_out)
            if timed_out:
                self._gave_up = True
        if timed_out:
            st.token.cancel("shutdown")
            self._workers.abandon()
        elif wait and not in_worker:
            self._workers.join()
        backend = self._outcomes.backend
        if hasattr(backend, "close"):  # worker processes: stopped, or killed
            backend.close(timed_out, wait and not in_worker)
        # Its thread exits once no retry or deadline is pending.
        self._outcomes.timer.stop()
        return report

    def _snapshot(self, timed_out: bool) -> ShutdownReport:
        # Counts and running tasks of one instant: an exact report. (The caller may hold
        # the lock: copying the list is atomic.)
        handed_back = list(self._handed_back)
        counts, running = self._state.ledger.snapshot()
        completed = counts[N_SUCCEEDED] + counts[N_FAILED] + counts[N_CANCELLED]
        return ShutdownReport(completed, handed_back, [record(t, True) for t in running],
                              timed_out or self._gave_up)

    def _collect(self) -> list[Task]:
        """Hand back everything not started: queued, waiting to retry, in transit."""
        st = self._state
        ledger = st.ledger
        outcomes = self._outcomes
        with st.lock:
            ledger.start_collecting()
        st.stop.set()  # wakes workers waiting on the rate limiter
        q = st.queue
        q.close()
        items = q.drain()
        dropped = []
        with st.lock:
            st.room.notify_all()  # (producers: the ledger is closed, they raise)
            for task, src in outcomes.take_unstarted_locked(items):
                outcomes.abandon_locked(task, src)
                dropped.append(task)
            maps = _map.collect(st, outcomes.timer, items)  # the maps' items not started
            # Tasks in transit are still counted as queued or retrying: taken from the
            # queue by a worker that has not reached the lock yet, a retry the timer
            # thread is putting back, a deadline being settled -- or a map's chunk its
            # runner is counting. They resolve (into `late`, or an outcome) in a moment.
            waited = 0.0
            while ledger.in_transit() or _map.closing(st):
                st.idle.wait(0.005)
                waited += 0.005
                if waited > 10.0:
                    LOGGER.warning("fastpool: shutdown still waits for %d tasks in transit",
                                   ledger.in_transit())
                    waited = 0.0
            late, st.late = st.late, []
            if ledger.watch:
                st.check_idle_locked()
        # Every task handed back is cancelled before shutdown returns (cancel() is
        # idempotent: a worker that handed one back cancels it too).
        for task in late:
            task.future.cancel()
        outcomes.drop_all(dropped)
        records = [record(t, False) for t in late] + maps
        self._handed_back += records  # reported by every later shutdown() too
        return records
