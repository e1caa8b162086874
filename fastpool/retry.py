"""Retry: how often and how patiently a failed task is tried again."""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Union

__all__ = ["Retry"]

RetryOn = Union[type, "tuple[type, ...]", Callable[[BaseException], bool]]


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an int too big for a float
        number = math.inf if value > 0 else -math.inf
    if math.isnan(number):
        raise ValueError(f"`{name}` must be a number, got nan")
    return number


class Retry:
    """Exponential backoff with jitter.

    A task is run at most `attempts` times in all. After attempt ``n`` fails with an
    exception matching `retry_on` it waits
    ``min(max_backoff, backoff * multiplier ** (n - 1))``, spread by +/- `jitter`
    (a fraction: 0.1 = up to 10% shorter or longer), then runs again. `inf` (or a wait
    longer than the OS can time) means no limit: such a retry waits until shutdown
    hands it back. `retry_on` is an
    exception class, a tuple of them, or a predicate ``exc -> bool``.

    A waiting retry holds no worker: the pool's timer puts it back in the queue.
    """

    __slots__ = ("attempts", "backoff", "multiplier", "max_backoff", "jitter", "retry_on",
                 "_classes", "_predicate")

    def __init__(self, attempts: int = 3, backoff: float = 0.1, multiplier: float = 2.0,
                 max_backoff: float = 30.0, jitter: float = 0.1,
                 retry_on: RetryOn = (Exception,)) -> None:
        if isinstance(attempts, bool) or not isinstance(attempts, int):
            raise TypeError(f"`attempts` must be an int, got {attempts!r}")
        if attempts < 1:
            raise ValueError(f"`attempts` must be >= 1, got {attempts}")
        backoff = _number("backoff", backoff)
        multiplier = _number("multiplier", multiplier)
        max_backoff = _number("max_backoff", max_backoff)
        jitter = _number("jitter", jitter)
        if backoff < 0:
            raise ValueError(f"`backoff` must be >= 0, got {backoff}")
        if multiplier < 1:
            raise ValueError(f"`multiplier` must be >= 1, got {multiplier}")
        if max_backoff < 0:
            raise ValueError(f"`max_backoff` must be >= 0, got {max_backoff}")
        if not 0 <= jitter <= 1:
            raise ValueError(f"`jitter` must be between 0 and 1, got {jitter}")
        classes: tuple[type, ...] | None = None
        predicate = None
        if isinstance(retry_on, type) and issubclass(retry_on, BaseException):
            classes = (retry_on,)
        elif isinstance(retry_on, tuple):
            if not all(isinstance(c, type) and issubclass(c, BaseException) for c in retry_on):
                raise TypeError(f"`retry_on` must hold exception classes, got {retry_on!r}")
            classes = retry_on
        elif callable(retry_on):
            predicate = retry_on
        else:
            raise TypeError("`retry_on` must be an exception class, a tuple of them or a "
                            f"callable, got {retry_on!r}")
        self.attempts = attempts
        self.backoff = backoff
        self.multiplier = multiplier
        self.max_backoff = max_backoff
        self.jitter = jitter
        self.retry_on = retry_on
        self._classes = classes
        self._predicate = predicate

    def should_retry(self, exc: BaseException) -> bool:
        """Whether `exc` is one this policy retries (the attempt count aside)."""
        if self._classes is not None:
            return isinstance(exc, self._classes)
        predicate: Callable[[BaseException], bool] = self._predicate  # type: ignore[assignment]
        return bool(predicate(exc))

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if not self.backoff:
            base = 0.0  # (0 * inf would be nan)
        else:
            try:
                base = self.backoff * self.multiplier ** (attempt - 1)
            except OverflowError:
                base = math.inf
        base = min(self.max_backoff, base)
        if self.jitter and base != math.inf:
            base *= 1.0 + self.jitter * (2.0 * random.random() - 1.0)
        return max(0.0, base)

    def __repr__(self) -> str:
        return (f"Retry(attempts={self.attempts}, backoff={self.backoff}, "
                f"multiplier={self.multiplier}, max_backoff={self.max_backoff}, "
                f"jitter={self.jitter}, retry_on={self.retry_on!r})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Retry):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in
                   ("attempts", "backoff", "multiplier", "max_backoff", "jitter", "retry_on"))

    __hash__ = None  # type: ignore[assignment]
