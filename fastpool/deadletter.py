"""Dead letters: tasks that failed for good, kept so a job can report or replay them."""

from __future__ import annotations

import queue
import threading
from collections import deque
from typing import Any, Callable, Iterator, NamedTuple

__all__ = ["DeadLetter", "DeadLetterQueue"]


class DeadLetter(NamedTuple):
    """A task that failed after its last attempt (or with an error it does not retry)."""

    key: Any
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    error: BaseException
    attempts: int
    failed_at: float  # time.time() of the final failure


class DeadLetterQueue:
    """Thread-safe FIFO of DeadLetter records (Pool.dead_letters).

    Iterating or `len()` looks without removing; `get()` and `drain()` remove. With
    `maxlen` the oldest records are dropped when full (counted in `dropped`).
    """

    def __init__(self, maxlen: int | None = None) -> None:
        if maxlen is not None:
            if isinstance(maxlen, bool) or not isinstance(maxlen, int):
                raise TypeError(f"`maxlen` must be an int or None, got {maxlen!r}")
            if maxlen < 1:
                raise ValueError(f"`maxlen` must be None or >= 1, got {maxlen}")
        self._items: deque[DeadLetter] = deque()
        self._maxlen = maxlen
        self._cond = threading.Condition(threading.Lock())
        self.dropped = 0

    def _reset_after_fork(self) -> None:
        # In a forked child: a lock another thread held at fork time would stay locked.
        self._cond = threading.Condition(threading.Lock())

    def put(self, letter: DeadLetter) -> None:
        with self._cond:
            if self._maxlen is not None and len(self._items) >= self._maxlen:
                self._items.popleft()
                self.dropped += 1
            self._items.append(letter)
            self._cond.notify()

    def get(self, timeout: float | None = None) -> DeadLetter:
        """Remove and return the oldest record; wait up to `timeout` s (raise queue.Empty)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items, timeout):
                raise queue.Empty("no dead letter")
            return self._items.popleft()

    def drain(self) -> list[DeadLetter]:
        """Remove and return every record, oldest first."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            return items

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __iter__(self) -> Iterator[DeadLetter]:
        with self._cond:
            return iter(list(self._items))

    def __repr__(self) -> str:
        return f"<DeadLetterQueue len={len(self._items)} dropped={self.dropped}>"
