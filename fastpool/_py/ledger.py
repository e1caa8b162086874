"""Pool bookkeeping (the Ledger and PoolTask): the pure-Python twin of
src/core/ledger.pxi.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from .._future import Future
from .._states import (N_COUNTERS, N_QUEUED, N_RETRYING, N_RUNNING, N_SUBMITTED,
                       N_SUCCEEDED, OUTSIDE, PUT_CLOSED, PUT_FULL, PUT_OK, SAMPLE_EVERY,
                       SAMPLE_WINDOW, TASK_DONE, TASK_QUEUED, TASK_RUNNING)
from .queue import QueueClosed, WorkQueue
from .worker import WorkItem


def clock() -> float:
    """Seconds on the clock the latency samples use (task.t_queued)."""
    return time.monotonic()


class Ledger:
    """A Pool's counters, its running tasks and its latency samples."""

    def __init__(self, queue: WorkQueue, slow: bool = False) -> None:
        self.queue = queue
        self.slow = bool(slow)  # every task starts through hooks._run_with_options
        self.running: set[Any] = set()
        self._lock = threading.Lock()
        self._c = [0] * N_COUNTERS
        self._closed = self._collecting = False
        self._watch = 0
        self._room = 0
        self._stamps = self._samples = 0
        self._wait_ring = [float("nan")] * SAMPLE_WINDOW
        self._run_ring = [float("nan")] * SAMPLE_WINDOW

    def _after_fork_child(self) -> list[Any]:
        """In a forked child: the running tasks (the parent's); the lock may have been
        held at fork by a thread that does not exist here."""
        self._lock = threading.Lock()
        return list(self.running)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._lock:
            self._closed = True

    @property
    def collecting(self) -> bool:
        return self._collecting

    def start_collecting(self) -> None:
        with self._lock:
            self._collecting = True

    @property
    def watch(self) -> int:
        return self._watch

    def add_watch(self, delta: int) -> None:
        with self._lock:
            self._watch += delta

    @property
    def room_waiters(self) -> int:
        return self._room

    def add_room_waiter(self, delta: int) -> None:
        with self._lock:
            self._room += delta

    def admit(self, task: PoolTask, src: int = OUTSIDE) -> int:
        # See the Ledger in src/_core.pyx. Here the queue is put to under this lock, so
        # a worker moves the task on only after it is counted, and a failed put is
        # undone before anyone can look.
        if src != OUTSIDE and src != N_RETRYING:
            raise ValueError(f"admit() moves a task from OUTSIDE or N_RETRYING, not {src}")
        with self._lock:
            if src == OUTSIDE and self._closed:
                return PUT_CLOSED
            try:
                st = PUT_OK if self.queue.put_nowait(task) else PUT_FULL
            except QueueClosed:
                st = PUT_CLOSED
            if st == PUT_OK:
                self._shift(src, N_QUEUED, -1, None)
            return st

    def _shift(self, src: int, dst: int, extra: int, task: Any) -> None:
        # The one state change, under self._lock (see the Ledger in src/_core.pyx).
        c = self._c
        if src == OUTSIDE:
            c[N_SUBMITTED] += 1
        else:
            c[src] -= 1
        if dst == OUTSIDE:
            c[N_SUBMITTED] -= 1
        else:
            c[dst] += 1
        if extra >= 0:
            c[extra] += 1
        if task is not None:
            if src == N_RUNNING:
                self.running.discard(task)
            elif dst == N_RUNNING:
                self.running.add(task)

    def add_running(self, task: Any) -> None:
        # See fastpool._core: a map item shutdown found running.
        with self._lock:
            self.running.add(task)

    def _bulk(self, src: int, dst: int, n: int) -> None:
        # n items (of a map) change state at once, under self._lock.
        c = self._c
        if src == OUTSIDE:
            c[N_SUBMITTED] += n
        else:
            c[src] -= n
        if dst == OUTSIDE:
            c[N_SUBMITTED] -= n
        else:
            c[dst] += n

    def _admit_n(self, n: int) -> bool:
        # A map's inputs: counted submitted and queued, unless the ledger is closed.
        with self._lock:
            if self._closed:
                return False
            self._bulk(OUTSIDE, N_QUEUED, n)
        return True

    def move_n(self, src: int, dst: int, n: int) -> bool:
        if not (OUTSIDE <= src < N_COUNTERS and OUTSIDE <= dst < N_COUNTERS) or n < 0:
            raise ValueError(f"bad counter index in move_n({src}, {dst}, {n})")
        with self._lock:
            self._bulk(src, dst, n)
            return self._watch > 0

    def move(self, src: int, dst: int, extra: int = -1, task: Any = None) -> bool:
        if not (OUTSIDE <= src < N_COUNTERS and OUTSIDE <= dst < N_COUNTERS
                and -1 <= extra < N_COUNTERS):
            raise ValueError(f"bad counter index in move({src}, {dst}, {extra})")
        with self._lock:
            self._shift(src, dst, extra, task)
            return self._watch > 0

    def counts(self) -> tuple[int, ...]:
        with self._lock:
            return tuple(self._c)

    def snapshot(self) -> tuple[tuple[int, ...], list[Any]]:
        with self._lock:
            return tuple(self._c), list(self.running)

    def idle(self) -> bool:
        c = self._c
        with self._lock:
            return not (c[N_QUEUED] or c[N_RUNNING] or c[N_RETRYING])

    def in_transit(self) -> int:
        with self._lock:
            return self._c[N_QUEUED] + self._c[N_RETRYING]

    def sampled(self) -> bool:
        with self._lock:
            n = self._stamps
            self._stamps = n + 1
        return n % SAMPLE_EVERY == 0

    def sample(self, wait: float, run: float) -> None:
        with self._lock:
            i = self._samples % SAMPLE_WINDOW
            self._samples += 1
            self._wait_ring[i] = wait
            self._run_ring[i] = run

    def latencies(self) -> tuple[list[float], list[float]]:
        with self._lock:
            return list(self._wait_ring), list(self._run_ring)

    def task(self, hooks: Any, fn: Callable[..., Any], args: tuple[Any, ...],
             kwargs: dict[str, Any], opts: Any = None, retry: Any = None) -> PoolTask:
        task = PoolTask.__new__(PoolTask)
        WorkItem.__init__(task, Future(), fn, args, kwargs)
        task.hooks = hooks
        task.ledger = self
        task.opts = opts
        task.retry = retry
        task.attempt = 1
        task.state = TASK_QUEUED
        task.t_queued = 0.0
        return task

    def submit(self, hooks: Any, fn: Callable[..., Any], args: tuple[Any, ...],
               kwargs: dict[str, Any], retry: Any) -> Any:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        task = self.task(hooks, fn, args, kwargs, None, retry)
        if self.sampled():
            task.t_queued = clock()
        if self.admit(task) != PUT_OK:
            return None
        q = self.queue
        if q._short_of_workers(q.qsize()):
            hooks._start_worker()
        return task.future


class PoolTask(WorkItem):
    """A Pool task: a WorkItem with its pool, options, retry policy and state."""

    __slots__ = ("hooks", "opts", "retry", "attempt", "state", "t_queued", "ledger")
    hooks: Any
    opts: Any
    retry: Any
    attempt: int
    state: int
    t_queued: float
    ledger: Ledger

    def __init__(self) -> None:
        raise TypeError("PoolTask objects are made by Ledger.task()")

    def run(self) -> None:
        if self.opts is not None or self.ledger.slow:
            self.hooks._run_with_options(self)
        else:
            self.run_plain()

    def run_plain(self) -> None:
        ledger = self.ledger
        future = self.future
        started = future.set_running_or_notify_cancel()
        with ledger._lock:
            ok = started and not ledger._collecting
            if ok:
                self.state = TASK_RUNNING
                ledger._shift(N_QUEUED, N_RUNNING, -1, self)
            room = ledger._room > 0
        if room:
            self.hooks._room_made()
        if not ok:
            self.hooks._not_run(self, started)
            return
        t_queued = self.t_queued
        if t_queued:
            t0 = clock()
        try:
            result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:
            if t_queued:
                ledger.sample(t0 - t_queued, clock() - t0)
            self.hooks._task_failed(self, exc)
            return
        if t_queued:
            ledger.sample(t0 - t_queued, clock() - t0)
        try:
            future.set_result(result)
        finally:
            with ledger._lock:
                self.state = TASK_DONE
                ledger._shift(N_RUNNING, N_SUCCEEDED, -1, self)
                watch = ledger._watch > 0
            if watch:
                                self.hooks._check_idle()
