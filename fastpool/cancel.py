"""CancelToken and current_token(): cooperative cancellation for pool tasks."""

from __future__ import annotations

import itertools
import logging
import math
import threading
import weakref
from concurrent.futures import CancelledError
from time import monotonic
from typing import Any, Callable

from ._timer import Timer

__all__ = ["CancelToken", "current_token"]

LOGGER = logging.getLogger("fastpool")

# Token timeouts of every pool share one timer thread.
_timer = Timer("fastpool-token-timer")
_handles = itertools.count(1)
# Set by pool workers: `token` (the pool's token, once per thread) and `current` (a
# task's own token, only while a task that has one runs).
_local = threading.local()


def _timeout_seconds(name: str, timeout: Any) -> float | None:
    """A validated timeout: None for no limit -- None, inf, or anything too long for the
    OS's timed waits (threading.TIMEOUT_MAX, ~292 years: inf by any other name)."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"`{name}` must be a number or None, got {timeout!r}")
    try:
        seconds = float(timeout)
    except OverflowError:  # an int too big for a float: no limit either
        seconds = math.inf
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"`{name}` must be >= 0, got {timeout!r}")
    return None if seconds >= threading.TIMEOUT_MAX else seconds


def _expire(ref: weakref.ref[CancelToken]) -> None:
    token = ref()
    if token is not None:
        token.cancel("timeout")


class _Propagate:
    """A parent's callback that cancels a child; weak, so it keeps no child alive."""

    __slots__ = ("ref",)

    def __init__(self, child: CancelToken) -> None:
        self.ref = weakref.ref(child)

    def __call__(self, parent: CancelToken) -> None:
        child = self.ref()
        if child is not None:
            child.cancel(parent.reason)


class CancelToken:
    """A flag that tasks check to stop early; cancelled once, never reset.

    `timeout` cancels it (reason "timeout") after that many seconds; a token with a
    `parent` counts as cancelled as soon as the parent is. Checking `cancelled` is a
    plain attribute read: children link to their parents only when someone waits on
    them or adds a callback.
    """

    __slots__ = ("_parents", "_cancelled", "_reason", "_lock", "_event", "_callbacks",
                 "_linked", "_sweep_at", "_timer_entry", "__weakref__")

    def __init__(self, timeout: float | None = None, parent: CancelToken | None = None) -> None:
        if parent is not None and not isinstance(parent, CancelToken):
            raise TypeError(f"`parent` must be a CancelToken or None, got {parent!r}")
        seconds = _timeout_seconds("timeout", timeout)
        self._parents: tuple[CancelToken, ...] = () if parent is None else (parent,)
        self._cancelled = False
        self._reason: Any = None
        self._lock = threading.Lock()
        self._event: threading.Event | None = None
        self._callbacks: dict[int, Callable[[CancelToken], object]] | None = {}
        self._linked = False
        self._sweep_at = 64
        self._timer_entry = None
        if seconds is not None:
            self._timer_entry = _timer.call_at(monotonic() + seconds, _expire,
                                               weakref.ref(self))

    def _reset_after_fork(self) -> None:
        # In a forked child: a lock another thread held at fork time would stay locked,
        # and that thread's waits are gone with it.
        self._lock = threading.Lock()
        event = self._event
        if event is not None:
            self._event = threading.Event()
            if event.is_set():
                self._event.set()

    @classmethod
    def _any(cls, *parents: CancelToken | None) -> CancelToken:
        """A token cancelled when any of `parents` is (the pool's and a caller's)."""
        token = cls()
        token._parents = tuple(p for p in parents if p is not None)
        return token

    @property
    def cancelled(self) -> bool:
        if self._cancelled:
            return True
        for parent in self._parents:
            if parent.cancelled:
                return True
        return False

    @property
    def reason(self) -> Any:
        """What cancel() was given, or the cancelled parent's reason; None otherwise."""
        if self._cancelled:
            return self._reason
        for parent in self._parents:
            if parent.cancelled:
                return parent.reason
        return None

    def cancel(self, reason: Any = None) -> bool:
        """Cancel; return False if it already was. Callbacks run in this thread."""
        with self._lock:
            if self._cancelled:
                return False
            self._cancelled = True
            self._reason = reason
            callbacks, self._callbacks = self._callbacks, None
            event = self._event
            entry, self._timer_entry = self._timer_entry, None
        if event is not None:
            event.set()
        if entry is not None:
            _timer.cancel(entry)
        for callback in (callbacks or {}).values():
            try:
                callback(self)
            except Exception:
                LOGGER.exception("fastpool: exception in cancel callback %r", callback)
        return True

    def raise_if_cancelled(self) -> None:
        """Raise concurrent.futures.CancelledError(reason) if cancelled."""
        if self.cancelled:
            reason = self.reason
            raise CancelledError() if reason is None else CancelledError(reason)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until cancelled or `timeout` s passed; return `cancelled`."""
        timeout = _timeout_seconds("timeout", timeout)
        if self.cancelled:
            return True
        self._link()
        with self._lock:
            if self._cancelled:
                return True
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        return event.wait(timeout)

    def add_callback(self, fn: Callable[[CancelToken], object]) -> int | None:
        """Call fn(token) when cancelled (at once if it is); return a handle or None."""
        if not callable(fn):
            raise TypeError(f"callback must be callable, got {fn!r}")
        self._link()
        with self._lock:
            callbacks = self._callbacks
            if callbacks is not None:
                handle = next(_handles)
                callbacks[handle] = fn
                if len(callbacks) >= self._sweep_at:
                    self._sweep(callbacks)
                return handle
        fn(self)
        return None

    def remove_callback(self, handle: int | None) -> None:
        if handle is None:
            return
        with self._lock:
            if self._callbacks is not None:
                self._callbacks.pop(handle, None)

    def _sweep(self, callbacks: dict[int, Callable[[CancelToken], object]]) -> None:
        # Children that were linked and then dropped leave dead propagators behind.
        for handle, cb in list(callbacks.items()):
            if isinstance(cb, _Propagate) and cb.ref() is None:
                del callbacks[handle]
        self._sweep_at = max(64, 2 * len(callbacks))

    def _link(self) -> None:
        if self._linked or not self._parents:
            return
        self._linked = True
        propagate = _Propagate(self)
        for parent in self._parents:
            parent.add_callback(propagate)

    def child(self, timeout: float | None = None) -> CancelToken:
        """A token cancelled with this one, or on its own (cancel(), `timeout`)."""
        return CancelToken(timeout, parent=self)

    def __repr__(self) -> str:
        state = f"cancelled reason={self.reason!r}" if self.cancelled else "active"
        return f"<CancelToken {state}>"


def current_token() -> CancelToken:
    """The token governing the running pool task.

    Inside a task: its own token (cancelled by its caller's token, its deadline or
    the pool's shutdown) or else the pool's token. Elsewhere: a fresh token nobody
    cancels, so code can call ``current_token().raise_if_cancelled()`` anywhere.
    """
    token: CancelToken | None = getattr(_local, "current", None)
    if token is None:
        token = getattr(_local, "token", None)
        if token is None:
            return CancelToken()
    return token
