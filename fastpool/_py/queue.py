"""The queue: the pure-Python twin of src/core/queue.pxi."""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from typing import Any, Callable

from .._future import Future


class QueueClosed(Exception):
    """The queue was closed: nothing more can be put, and it is empty for getters."""


class QueueEmpty(Exception):
    """get() timed out on an empty queue."""


def _seconds(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    t = float(timeout)
    if t != t:
        raise ValueError("timeout must be a number, got nan")
    return max(t, 0.0)


class WorkQueue:
    """Bounded or unbounded MPMC queue of Python objects (maxsize=0: unbounded)."""

    def __init__(self, maxsize: int = 0) -> None:
        maxsize = int(maxsize)
        if maxsize < 0:
            raise ValueError(f"maxsize must be >= 0, got {maxsize}")
        self._maxsize = maxsize
        self._items: deque[Any] = deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._closed = False
        self._idle = 0
        self._retire = 0
        # Weak: see fastpool._core.WorkQueue (a queue holding its threads would keep
        # the executor's registry of workers, and every Thread object, alive).
        self._threads: weakref.ref[Any] | None = None
        self._max_workers = 0

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def idle_workers(self) -> int:
        """Workers currently waiting for work in run_worker()."""
        return self._idle

    def bind_workers(self, threads: Any, max_workers: int) -> None:
        """The pool's set of worker threads and its maximum (see submit); the queue
        keeps only a weak reference to the set."""
        ref = weakref.ref(threads)
        with self._lock:
            self._threads = ref
            self._max_workers = max_workers

    def set_max_workers(self, max_workers: int) -> None:
        with self._lock:
            self._max_workers = max_workers

    def _short_of_workers(self, waiting: int) -> bool:
        ref = self._threads
        if waiting <= self._idle or ref is None:
            return False
        threads = ref()
        # A dead reference: the pool is gone, nobody can start a worker.
        return threads is not None and len(threads) < self._max_workers

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> Any:
        """The executor's fast submit: queue a new WorkItem and return its Future; None
        (nothing queued) if it would need a new worker or the queue is full or closed."""
        if self._short_of_workers(len(self._items) + 1):
            return None
        fut = Future()
        try:
            if self.put_nowait(WorkItem(fut, fn, args, kwargs)):
                return fut
        except QueueClosed:
            pass
        return None

    def request_retire(self, n: int) -> None:
        """Ask n workers to leave run_worker() after their current item (replaces any
        earlier request; 0 cancels it)."""
        with self._lock:
            self._retire = max(0, int(n))

    @property
    def retire_requested(self) -> int:
        return self._retire

    def claim_retire(self) -> bool:
        """Take one retire request if there is one (True)."""
        if not self._retire:
            return False
        with self._lock:
            if self._retire:
                self._retire -= 1
                return True
        return False

    def qsize(self) -> int:
        return len(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Any, timeout: float | None = None) -> bool:
        """Queue item; block while full. Return False on timeout; raise QueueClosed."""
        t = _seconds(timeout)
        with self._lock:
            if self._maxsize:
                deadline = None if t is None else time.monotonic() + t
                while not self._closed and len(self._items) >= self._maxsize:
                    if deadline is None:
                        self._not_full.wait()
                    else:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            return False
                        self._not_full.wait(remaining)
            if self._closed:
                raise QueueClosed("queue is closed")
            self._items.append(item)
            self._not_empty.notify()
            return True

    def put_nowait(self, item: Any) -> bool:
        """Queue item if there is room; return False if full. Raise QueueClosed."""
        return self.put(item, 0.0)

    def get(self, timeout: float | None = None) -> Any:
        """Take the oldest item; block while empty.

        Raise QueueEmpty on timeout, QueueClosed when closed and empty."""
        return self._get(timeout, False)

    def _get(self, timeout: float | None, worker: bool) -> Any:
        # worker: the caller (run_worker) counts in _idle and stops being idle with this
        # item; it leaves _idle before the item leaves qsize() (see fp_queue.h pop_impl).
        t = _seconds(timeout)
        with self._lock:
            deadline = None if t is None else time.monotonic() + t
            while not self._items:
                if self._closed:
                    raise QueueClosed("queue is closed")
                if deadline is None:
                    self._not_empty.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise QueueEmpty("queue is empty")
                    self._not_empty.wait(remaining)
            if worker:
                self._idle -= 1
            item = self._items.popleft()
            if self._maxsize:
                self._not_full.notify()
            return item

    def get_nowait(self) -> Any:
        return self.get(0.0)

    def close(self) -> None:
        """Refuse further puts and wake every waiter; getters still drain what is queued."""
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()

    def drain(self) -> list[Any]:
        """Remove and return every queued item, oldest first."""
        with self._lock:
            items = list(self._items)
            self._items.clear()
            self._not_full.notify_all()
            return items

    # os.register_at_fork hooks (see fastpool/_forking.py).
    def _before_fork(self) -> None:
        self._lock.acquire()

    def _after_fork_parent(self) -> None:
        self._lock.release()

    def _after_fork_child(self) -> list[Any]:
        """Reset the queue in a forked child; return the items it held."""
        items = list(self._items)
        self._items.clear()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._idle = 0
        self._retire = 0
        return items

    # Idle accounting for run_worker, under the lock: += is not atomic without the GIL.
    def _add_idle(self, n: int) -> None:
        with self._lock:
            self._idle += n


# Last: worker.py (WorkItem, run_worker) imports this module's names; the native
# core is one module, where the order does not matter.
from .worker import WorkItem  # noqa: E402
