"""The work item and the worker loop: the pure-Python twin of src/core/worker.pxi."""

from __future__ import annotations

import logging
from typing import Any, Callable

from .queue import QueueClosed, QueueEmpty, WorkQueue, _seconds

LOGGER = logging.getLogger("concurrent.futures")


def spin_ns() -> int:
    """How long (ns) an idle worker polls for work before it parks: never, here (a
    worker waits on the queue's Condition at once)."""
    return 0


class WorkItem:
    """One call to run: fn(*args, **kwargs), its outcome delivered to future."""

    __slots__ = ("future", "fn", "args", "kwargs")

    def __init__(self, future: Any, fn: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> None:
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs

    def cancel(self) -> bool:
        """Called for items removed from the queue unrun (shutdown(cancel_futures=True))."""
        return bool(self.future.cancel())

    def fail(self, error: BaseException) -> None:
        """Called for items removed from the queue unrun because the pool broke."""
        if not self.future.done():
            self.future.set_exception(error)

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
    when the worker retired (for idleness, or claiming a retire request).
    """
    t = _seconds(idle_timeout)
    if t == 0.0:
        t = 1e-6
    queue._add_idle(1)
    try:
        while True:
            try:
                item = queue._get(t, True)
            except QueueClosed:
                return True
            except QueueEmpty:
                if on_idle is None or on_idle():
                    return False
                continue
            _run_one(item)
            del item
            queue._add_idle(1)
            if queue.claim_retire():
                return False
    finally:
        queue._add_idle(-1)
