"""Task groups (Pool.group())."""

from __future__ import annotations

import threading
from concurrent.futures import _base
from typing import TYPE_CHECKING, Any, Callable

from ..cancel import CancelToken
from ._records import Future

if TYPE_CHECKING:
    from ._pool import Pool


class TaskGroup:
    """Tasks submitted together (Pool.group()): leaving the block waits for all of them.

    With fail_fast=True the first failure cancels the group's token -- queued tasks are
    cancelled, running ones see current_token() cancelled -- and is raised on exit.
    Without it, failures stay in the futures (see `exceptions()`).
    """

    def __init__(self, pool: Pool, fail_fast: bool = False) -> None:
        self._pool = pool
        self._fail_fast = bool(fail_fast)
        self.token = CancelToken()
        self.futures: list[Future] = []
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        fut = self._pool.schedule(fn, args, kwargs, token=self.token)
        with self._lock:
            self.futures.append(fut)
        if self._fail_fast:
            fut.add_done_callback(self._on_done)
        return fut

    def _on_done(self, fut: Future) -> None:
        if fut.cancelled() or fut.exception() is None:
            return
        with self._lock:
            if self._error is not None:
                return
            self._error = fut.exception()
        self.token.cancel("a task of the group failed")

    def exceptions(self) -> list[BaseException]:
        """The errors of the group's failed tasks so far."""
        errors = [f.exception() for f in list(self.futures) if f.done() and not f.cancelled()]
        return [e for e in errors if e is not None]

    def __enter__(self) -> TaskGroup:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.token.cancel("the group's block raised")
        with self._lock:
            futures = list(self.futures)
        _base.wait(futures)
        if exc_type is None and self._fail_fast and self._error is not None:
            raise self._error
