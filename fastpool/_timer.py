"""A timer thread: runs callbacks at given times, from a heap (no thread per timer).

Used for retries and deadlines (one Timer per Pool) and for CancelToken timeouts (one
shared Timer). The thread starts on the first call_at() and exits after a few idle
seconds (at once once stop()ped: a pool's timer ends with the pool), so a forgotten
Timer leaves no thread behind. Cancelled calls count as gone: a heap of them does not
keep the thread alive. `when` may be inf (never due). Nothing may end the thread but
idleness: an error in its own bookkeeping is logged and it carries on, since every retry
and deadline of its pool depends on it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import threading
import time
import weakref
from time import monotonic
from typing import Any, Callable

LOGGER = logging.getLogger("fastpool")

# An idle timer thread exits after this many seconds; the next call_at() restarts it.
IDLE_EXIT = 5.0

_timers: weakref.WeakSet[Timer] = weakref.WeakSet()


class Timer:
    """Run ``fn(arg)`` at monotonic time ``when``, in one daemon thread."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._reset()
        _timers.add(self)

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[list[Any]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._cancelled = 0
        self._stopped = False

    def call_at(self, when: float, fn: Callable[[Any], object], arg: Any) -> list[Any]:
        """Schedule fn(arg); return a handle for cancel()."""
        if math.isnan(when):
            raise ValueError("a timer cannot be set to nan")
        entry = [when, next(self._seq), fn, arg]
        with self._cond:
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name,
                                                daemon=True)
                self._thread.start()
            elif self._heap[0] is entry:
                self._cond.notify()
        return entry

    def cancel(self, entry: list[Any]) -> None:
        """Forget a scheduled call (a no-op if it already ran)."""
        with self._cond:
            if entry[2] is None:
                return
            entry[2] = entry[3] = None
            self._cancelled += 1
            if self._cancelled == len(self._heap):
                # Only cancelled calls left: forget them now, and let the thread see
                # it has nothing to do (a stopped timer's thread exits at once).
                self._heap = []
                self._cancelled = 0
                self._cond.notify()
                return
            # Cancelled entries stay in the heap until due; rebuild it when they
            # dominate, so a stream of short tasks with long deadlines stays small.
            if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
                self._heap = [e for e in self._heap if e[2] is not None]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def drain(self, fn: Callable[[Any], object]) -> list[Any]:
        """Remove every pending call of `fn`; return their args in due order."""
        with self._cond:
            # == not `is`: a bound method is a new object at every attribute access.
            taken = sorted((e for e in self._heap if e[2] is not None and e[2] == fn),
                           key=lambda e: e[:2])
            if taken:
                self._heap = [e for e in self._heap if e[2] is None or e[2] != fn]
                heapq.heapify(self._heap)
            return [e[3] for e in taken]

    def forget_after_fork(self) -> list[Any]:
        """In a forked child: forget every pending call (they belong to the parent's
        threads); return their args."""
        heap, self._heap = self._heap, []
        self._cancelled = 0
        return [e[3] for e in heap if e[2] is not None]

    def stop(self) -> None:
        """Let the thread exit as soon as no call is pending (a later call_at() still
        works: it starts a thread again)."""
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def __len__(self) -> int:
        return len(self._heap) - self._cancelled

    def _run(self) -> None:
        while True:
            try:
                due = self._next_due()
            except BaseException:
                # Our own bug (or a MemoryError): log it and carry on -- a dead timer
                # thread would silently stop every retry and deadline.
                LOGGER.exception("fastpool: error in timer thread %s", self._name)
                time.sleep(0.01)
                continue
            if due is None:
                return
            for fn, arg in due:
                try:
                    fn(arg)
                except BaseException:
                    LOGGER.exception("fastpool: exception in timer callback %r", fn)
            due = fn = arg = None  # type: ignore[assignment]  # drop refs before sleeping

    def _next_due(self) -> list[tuple[Callable[[Any], object], Any]] | None:
        """Wait for the calls due next and take them; None: the thread is to exit."""
        cond = self._cond
        with cond:
            while True:
                heap = self._heap  # rebound by cancel()/drain(): read it afresh
                if heap and self._cancelled == len(heap):
                    self._heap = heap = []  # only cancelled calls (left by drain())
                    self._cancelled = 0
                now = monotonic()
                if heap:
                    if heap[0][0] <= now:
                        break
                    # (inf or far away: timed waits have a maximum)
                    cond.wait(min(heap[0][0] - now, threading.TIMEOUT_MAX))
                elif self._stopped or (not cond.wait(IDLE_EXIT) and not self._heap):
                    self._thread = None
                    return None
            due = []
            while heap and heap[0][0] <= now:
                entry = heapq.heappop(heap)
                if entry[2] is None:
                    self._cancelled -= 1
                else:
                    due.append((entry[2], entry[3]))
                    entry[2] = entry[3] = None
            return due


def _after_fork_child() -> None:
    # The timer threads did not survive the fork: reset, and restart where calls wait.
    for timer in list(_timers):
        heap = [e for e in timer._heap if e[2] is not None]
        timer._reset()
        for when, _, fn, arg in heap:
            timer.call_at(when, fn, arg)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_child)
