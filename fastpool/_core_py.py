"""Pure-Python twin of the native core (src/_core.pyx).

Used where the extension cannot be built or imported, and when FASTPOOL_NO_EXTENSIONS=1.
Same interface and semantics as fastpool._core; the test suite runs against both.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Callable

from ._future import Future

__all__ = ["Future", "QueueClosed", "QueueEmpty", "WorkItem", "WorkQueue", "run_worker"]

LOGGER = logging.getLogger("concurrent.futures")


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
        return items

    # Idle accounting for run_worker, under the lock: += is not atomic without the GIL.
    def _add_idle(self, n: int) -> None:
        with self._lock:
            self._idle += n


class WorkItem:
    """One call to run: fn(*args, **kwargs), its outcome delivered to future."""

    __slots__ = ("future", "fn", "args", "kwargs")

    def __init__(self, future: Any, fn: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> None:
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs

    def run(self) -> None:
        future = self.future
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:
            future.set_exception(exc)
            # Break a reference cycle with the exception 'exc' (as the stdlib does).
            self = None  # type: ignore[assignment]
        else:
            future.set_result(result)


def _run_one(item: Any) -> None:
    try:
        item.run()
    except BaseException:
        try:
            LOGGER.exception("exception in fastpool worker running %r", item)
        except BaseException:
            pass


def run_worker(queue: WorkQueue, idle_timeout: float | None = None,
               on_idle: Callable[[], bool] | None = None) -> bool:
    """The worker loop: run items from queue until it is closed and empty.

    After idle_timeout seconds without work, call on_idle(): the worker exits if it
    returns true (or if on_idle is None). Return True when the queue closed, False
    when the worker retired for idleness.
    """
    t = _seconds(idle_timeout)
    if t == 0.0:
        t = 1e-6
    queue._add_idle(1)
    try:
        while True:
            try:
                item = queue.get(t)
            except QueueClosed:
                return True
            except QueueEmpty:
                if on_idle is None or on_idle():
                    return False
                continue
            queue._add_idle(-1)
            _run_one(item)
            del item
            queue._add_idle(1)
    finally:
        queue._add_idle(-1)
