"""The pool's shared state and lifecycle: its lock, its Ledger, its phase flags.

Every other part of the pool (submit, scaling, outcomes, shutdown) holds this object
and changes the counters through `ledger` (a core.Ledger), the slow paths under `lock`.
Methods named *_locked run with `lock` held by the caller.
"""

from __future__ import annotations

import threading
import weakref
from time import monotonic
from typing import Any

from .._pick_core import core
from .._states import N_QUEUED, N_RUNNING
from ..cancel import CancelToken
from ..stats import Stats, percentiles

clock = core.clock  # the clock of the latency samples (PoolTask.t_queued)


def _fresh_event(event: threading.Event) -> threading.Event:
    new = threading.Event()
    if event.is_set():
        new.set()
    return new


class PoolState:
    """What every part of a pool shares.

    queue, threads: the work queue and the live workers (the executor's `_work_queue`
    and `_threads`). max_workers, shutdown, broken: the executor's `_max_workers`,
    `_shutdown` and `_broken` (the reason string once broken). token: the pool's
    CancelToken. stop: set when shutdown starts handing work back (wakes paced
    workers); hurry: a second signal, stop draining now. late: tasks handed back by
    workers or the timer while shutdown collects (see Shutdown.collect).
    """

    def __init__(self, queue: Any, max_workers: int, slow: bool) -> None:
        self.queue = queue
        self.threads: set[threading.Thread] = set()
        self.max_workers = max_workers
        self.shutdown = False
        self.broken: str | bool = False
        self.token = CancelToken()
        self.stop = threading.Event()
        self.hurry = threading.Event()
        # A slow ledger sends every task through _run_with_options (never the native run_plain):
        # rate-limited tasks wait for their slot there, and a backend's calls go out there.
        self._slow = slow
        self._reset()

    def _reset(self) -> None:
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)  # join()/shutdown() waiting for idle
        self.room = threading.Condition(self.lock)  # producers waiting for queue room
        self.close_when_idle = False
        # The counters, the running tasks, the latency samples, and the flags the
        # native fast path reads (closed, collecting, watch): see core.Ledger.
        self.ledger = core.Ledger(self.queue, self._slow)
        self.late: list[Any] = []
        # The native maps under way (core.MapJob): shutdown hands back their items not
        # started, a broken pool aborts them (_map.py: collect, fail).
        self.maps: weakref.WeakSet[Any] = weakref.WeakSet()

    def stats(self, bound: int, dead_letters_dropped: int) -> Stats:
        """Pool.stats(): `bound` is the queue's (0: none)."""
        ledger = self.ledger
        counts = ledger.counts()
        if bound and counts[N_QUEUED] > bound:
            # Tasks a worker took from a full queue but has not started (about to, or
            # waiting for its rate-limit slot) are in a worker's hands: shown running.
            extra = counts[N_QUEUED] - bound
            c = list(counts)
            c[N_QUEUED] -= extra
            c[N_RUNNING] += extra
            counts = tuple(c)
        waits, runs = ledger.latencies()
        values: tuple[Any, ...] = (len(self.threads), self.queue.idle_workers, *counts,
                                   *percentiles(waits), *percentiles(runs),
                                   dead_letters_dropped)
        return Stats(*values)

    def check_idle_locked(self) -> None:
        # When someone watches: wake join()/shutdown() once idle.
        if self.ledger.idle():
            self.idle.notify_all()
            if self.close_when_idle:
                self.queue.close()

    def check_idle(self) -> None:
        with self.lock:
            self.check_idle_locked()

    def wake_producers(self) -> None:
        with self.lock:
            self.room.notify_all()

    def wait_idle(self, timeout: float | None, hurry: threading.Event | None = None) -> bool:
        """Wait until nothing is queued, running or retrying; False after `timeout` s
        (or once `hurry` is set)."""
        end = None if timeout is None else monotonic() + timeout
        ledger = self.ledger
        with self.lock:
            # Watching first, then looking: a task that finishes after the look sees
            # the watch and notifies (it takes this lock, held until we wait).
            ledger.add_watch(1)
            try:
                while not ledger.idle():
                    if hurry is not None and hurry.is_set():
                        return False
                    step = 0.1
                    if end is not None:
                        step = min(step, end - monotonic())
                        if step <= 0:
                            return False
                    self.idle.wait(step)
                return True
            finally:
                ledger.add_watch(-1)

    def reset_after_fork(self) -> list[Any]:
        """In a forked child: fresh locks and ledger (closed if the pool was); return the
        parent's tasks this state knew (queued, running, handed back) for cancelling."""
        tasks = self.ledger._after_fork_child() + list(self.late)
        self.threads.clear()
        tasks += self.queue._after_fork_child()
        self._reset()
        if self.shutdown or self.broken:
            self.ledger.close()
        self.stop = _fresh_event(self.stop)
        self.hurry = _fresh_event(self.hurry)
        self.token._reset_after_fork()
        return tasks
