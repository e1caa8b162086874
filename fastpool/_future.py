"""fastpool's Future: a concurrent.futures.Future that is cheaper and fixes two stdlib bugs.

It is a real subclass, and keeps every attribute the stdlib helpers reach into
(`_condition`, `_state`, `_waiters`, `_done_callbacks`, `_result`, `_exception`), so
`concurrent.futures.wait`/`as_completed`, `asyncio.wrap_future` and
`loop.run_in_executor` work unchanged.

What differs, and why:
  * Cost. The stdlib builds a `threading.Condition` (pure-Python, ~1.5 us) per Future.
    Here state changes take a C-level `RLock`, and the Condition wrapping that same lock
    is built only when somebody actually blocks on the future (`result()` before it is
    done, `wait`, `as_completed`). Most futures in a busy pool never need it.
  * cancel() tells waiters at once (stdlib gh-92001/gh-109934): a stdlib future that is
    cancelled before a worker picks it up stays in the CANCELLED state, which `wait()`
    and `as_completed()` do not count as done, so they hang until the work item reaches
    a worker, and for ever after `shutdown(cancel_futures=True)` drops it. Ours moves
    straight to CANCELLED_AND_NOTIFIED and notifies the waiters.
  * A done-callback raising a BaseException (SystemExit, KeyboardInterrupt) in a pool
    worker is logged like any other callback error instead of killing the worker
    (which hangs a one-worker stdlib pool).

Why the lock-free fast paths are safe: `_state` only ever moves forward, and the result
is stored before the state becomes FINISHED, under the lock; once a reader sees FINISHED
it may read `_result`/`_exception` without the lock. A waiter creates the Condition
*before* it checks the state; a completer stores the state *before* it looks for the
Condition; so either the waiter sees the new state or the completer sees the Condition
and notifies it under the lock.
"""

from __future__ import annotations

import threading
from concurrent.futures import _base
from typing import Any, Callable

__all__ = ["Future", "worker_local"]

PENDING = _base.PENDING
RUNNING = _base.RUNNING
CANCELLED = _base.CANCELLED
CANCELLED_AND_NOTIFIED = _base.CANCELLED_AND_NOTIFIED
FINISHED = _base.FINISHED
_CANCELLED_STATES = (CANCELLED, CANCELLED_AND_NOTIFIED)
_DONE_STATES = (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED)
LOGGER = _base.LOGGER
CancelledError = _base.CancelledError
InvalidStateError = _base.InvalidStateError
# On 3.10 concurrent.futures.TimeoutError is its own class (the builtin from 3.11).
FuturesTimeoutError = _base.TimeoutError

_RLock = threading.RLock
_Condition = threading.Condition

# Set in pool worker threads: callback errors there are logged, never propagated.
worker_local = threading.local()


class Future(_base.Future):  # type: ignore[type-arg]
    """Represents the result of an asynchronous computation (see concurrent.futures.Future)."""

    def __init__(self) -> None:
        self._lock = _RLock()
        self._state = PENDING
        self._result = None
        self._exception: BaseException | None = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Callable[[Any], object]] = []

    def __getattr__(self, name: str) -> Any:
        # Only reached while `_condition` has not been created yet (see module docstring).
        if name == "_condition":
            return self.__dict__.setdefault("_condition", _Condition(self._lock))
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _notify_all(self) -> None:
        # Called with self._lock held, after a state change.
        cond = self.__dict__.get("_condition")
        if cond is not None:
            cond.notify_all()

    def _invoke_callbacks(self) -> None:
        for callback in self._done_callbacks:
            try:
                callback(self)
            except Exception:
                LOGGER.exception("exception calling callback for %r", self)
            except BaseException:
                if not getattr(worker_local, "active", False):
                    raise
                LOGGER.exception("exception calling callback for %r", self)

    def cancel(self) -> bool:
        """Cancel the future if possible; True if it is (now) cancelled."""
        with self._lock:
            state = self._state
            if state == RUNNING or state == FINISHED:
                return False
            if state in _CANCELLED_STATES:
                return True
            self._state = CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._notify_all()
        self._invoke_callbacks()
        return True

    def cancelled(self) -> bool:
        return self._state in _CANCELLED_STATES

    def running(self) -> bool:
        return self._state == RUNNING

    def done(self) -> bool:
        return self._state in _DONE_STATES

    def _get_result(self) -> Any:
        if self._exception is not None:
            try:
                raise self._exception
            finally:
                # Break a reference cycle with the exception in self._exception
                self = None  # type: ignore[assignment]
        return self._result

    def add_done_callback(self, fn: Callable[[Any], object]) -> None:
        with self._lock:
            if self._state not in _DONE_STATES:
                self._done_callbacks.append(fn)
                return
        try:
            fn(self)
        except Exception:
            LOGGER.exception("exception calling callback for %r", self)

    def _wait_finished(self, timeout: float | None) -> None:
        """Return once FINISHED; CancelledError if cancelled, TimeoutError if timeout
        passes first. (The Condition is created here, on first need.)"""
        state = self._state
        if state not in _DONE_STATES:
            with self._condition:
                if self._state not in _DONE_STATES:
                    self._condition.wait(timeout)
                state = self._state
        if state in _CANCELLED_STATES:
            raise CancelledError()
        if state != FINISHED:
            raise FuturesTimeoutError()

    def result(self, timeout: float | None = None) -> Any:
        if self._state != FINISHED:
            self._wait_finished(timeout)
        try:
            return self._get_result()
        finally:
            # Break a reference cycle with the exception in self._exception
            self = None  # type: ignore[assignment]

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state != FINISHED:
            self._wait_finished(timeout)
        return self._exception

    def set_running_or_notify_cancel(self) -> bool:
        with self._lock:
            state = self._state
            if state == PENDING:
                self._state = RUNNING
                return True
            if state == CANCELLED:
                self._state = CANCELLED_AND_NOTIFIED
                for waiter in self._waiters:
                    waiter.add_cancelled(self)
                return False
            if state == CANCELLED_AND_NOTIFIED:
                return False
            LOGGER.critical("Future %s in unexpected state: %s", id(self), state)
            raise RuntimeError("Future in unexpected state")

    def set_result(self, result: Any) -> None:
        with self._lock:
            if self._state in _DONE_STATES:
                raise InvalidStateError(f"{self._state}: {self!r}")
            self._result = result
            self._state = FINISHED
            for waiter in self._waiters:
                waiter.add_result(self)
            self._notify_all()
        self._invoke_callbacks()

    def set_exception(self, exception: BaseException | None) -> None:
        with self._lock:
            if self._state in _DONE_STATES:
                raise InvalidStateError(f"{self._state}: {self!r}")
            self._exception = exception
            self._state = FINISHED
            for waiter in self._waiters:
                waiter.add_exception(self)
            self._notify_all()
        self._invoke_callbacks()

    for _name in ("cancel", "cancelled", "running", "done", "add_done_callback", "result",
                  "exception", "set_running_or_notify_cancel", "set_result", "set_exception"):
        locals()[_name].__doc__ = getattr(_base.Future, _name).__doc__
    del _name
