"""Pacing: the rate limit (`rate_limit=`) of a Pool's task starts."""

from __future__ import annotations

import math
import threading
from concurrent.futures import _base
from time import monotonic
from typing import Any

_FUTURE_PENDING = _base.PENDING


class Pacer:
    """Token bucket (as GCRA): `burst` starts at once, then one per 1/rate seconds."""

    def __init__(self, rate: float, burst: int) -> None:
        self._interval = 1.0 / rate
        self._slack = (min(burst, 1 << 53) - 1) * self._interval
        self._lock = threading.Lock()
        self._tat = monotonic()  # theoretical arrival time of the next start

    def reserve(self) -> float:
        """Take the next start slot; return how long to wait for it."""
        with self._lock:
            now = monotonic()
            tat = self._tat if self._tat > now else now
            self._tat = tat + self._interval
            return tat - now - self._slack

    def wait_turn(self, fut: Any, stop: threading.Event) -> None:
        """Wait for the slot of this start (of `fut`'s task), unless `stop` is set first
        (shutdown). A future cancelled meanwhile takes no slot."""
        if fut._state == _FUTURE_PENDING:
            delay = self.reserve()
            if delay > 0.0:
                stop.wait(min(delay, threading.TIMEOUT_MAX))

    def reset_after_fork(self) -> None:
        # A lock another thread held at fork time would stay locked in the child.
        self._lock = threading.Lock()


def pacer(rate_limit: Any) -> Pacer | None:
    """The Pacer of `rate_limit` (a rate, or (rate, burst)); None: no limit."""
    if rate_limit is None:
        return None
    burst: Any = 1
    rate = rate_limit
    if isinstance(rate_limit, tuple):
        if len(rate_limit) != 2:
            raise ValueError(f"`rate_limit` must be a rate or (rate, burst), got {rate_limit!r}")
        rate, burst = rate_limit
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise TypeError(f"`rate_limit` must be a number of tasks per second, got {rate!r}")
    if isinstance(burst, bool) or not isinstance(burst, int):
        raise TypeError(f"rate_limit burst must be an int, got {burst!r}")
    if burst < 1:
        raise ValueError(f"rate_limit burst must be >= 1, got {burst!r}")
    try:
        rate = float(rate)
    except OverflowError:  # an int too big for a float
        rate = math.inf
    if not rate > 0:
        raise ValueError(f"`rate_limit` must be > 0, got {rate!r}")
    if rate == math.inf:
        return None  # no limit
    # The wait between two starts must be one the OS can time (~292 years): a slower
    # rate would overflow the waits, so it is refused here rather than fail a task.
    if 1.0 / rate >= threading.TIMEOUT_MAX:
        raise ValueError(f"`rate_limit` must be >= {1.0 / threading.TIMEOUT_MAX:.3g} tasks "
                         f"per second, got {rate!r}")
    return Pacer(rate, burst)
