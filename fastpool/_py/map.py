"""map() without a Future per item: the pure-Python twin of the map section of
src/_core.pyx.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from concurrent.futures import CancelledError as _base_CancelledError
from concurrent.futures import TimeoutError as _FuturesTimeoutError
from typing import Any, Callable, Union


# What a map job calls to queue a runner: the callable, or a weak reference to it.
_Enqueue = Union[Callable[[Any], None], "weakref.ref[Callable[[Any], None]]"]


class _Failure:
    """A result slot holding the exception an item raised."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _MapRunner:
    __slots__ = ("job",)

    def __init__(self, job: _MapState) -> None:
        self.job = job

    def cancel(self) -> None:
        """Removed from the queue unrun: the job cannot complete any more."""
        self.fail(None)

    def fail(self, error: BaseException | None) -> None:
        """Removed from the queue unrun because the pool broke: the consumer gets
        `error` (None: CancelledError) where the missing results would be."""
        with self.job.cond:
            self.job.runners -= 1
        self.job.abort(error)

    def run(self) -> None:
        self.job._run()


class _MapState:
    """See fastpool._core: the same algorithm, one item per step (no chunking)."""

    def __init__(self, fn: Callable[..., Any], inputs: Any, enqueue: _Enqueue,
                 max_runners: int, *, star: bool = True, ordered: bool = True,
                 return_exceptions: bool = False, buffersize: int | None = None,
                 chunksize: int = 1, timeout: float | None = None) -> None:
        self.fn = fn
        self.source = iter(inputs)
        # A callable, or a weak reference to one (see fastpool._core: then the job does
        # not keep the pool alive, and takes no more inputs once it is gone).
        self.enqueue = enqueue
        self.star = star
        self.ordered = ordered
        self.return_exceptions = return_exceptions
        self.max_runners = max(1, max_runners)
        self.buffersize = buffersize or 0
        self.input_done = False
        self.cancelled = False
        self.aborted = False
        self.abort_error: BaseException | None = None
        self.runners = 0
        self.pending: deque[Any] = deque()
        self.taken = 0
        self.fed = 0
        self.yielded = 0
        self.results: dict[int, Any] = {}
        self.done: deque[Any] = deque()
        self.cond = threading.Condition(threading.Lock())
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self._feed(self.buffersize or -1)

    def _feed(self, n: int) -> None:
        if self.input_done or self.cancelled:
            return
        enqueue: Callable[[Any], None] | None
        if isinstance(self.enqueue, weakref.ref):
            # Checked before an input is taken: none is taken for a pool that is gone.
            enqueue = self.enqueue()
            if enqueue is None:
                self.input_done = True
                return
        else:
            enqueue = self.enqueue
        if n < 0:
            batch = list(self.source)
            self.input_done = True
        else:
            batch = []
            for item in self.source:
                batch.append(item)
                if len(batch) >= n:
                    break
            else:
                self.input_done = True
        if not batch:
            return
        with self.cond:
            self.pending.extend(batch)
            self.fed += len(batch)
            want = min(self.max_runners, len(self.pending)) - self.runners
            if want > 0:
                self.runners += want
        for _ in range(max(want, 0)):
            try:
                enqueue(_MapRunner(self))
            except BaseException:
                with self.cond:
                    self.runners -= 1
                raise

    def _run(self) -> None:
        while True:
            with self.cond:
                if self.cancelled or not self.pending:
                    self.runners -= 1
                    return
                index = self.taken
                item = self.pending.popleft()
                self.taken += 1
            try:
                result = self.fn(*item) if self.star else self.fn(item)
            except BaseException as exc:
                result = _Failure(exc)
            del item
            with self.cond:
                if self.ordered:
                    self.results[index] = result
                else:
                    self.done.append(result)
                self.cond.notify_all()
            # Not kept while the next call runs: the consumer may have yielded and
            # dropped it already (bpo-14406).
            del result

    def abort(self, error: BaseException | None = None) -> None:
        """The pool is cancelling its work: inputs not started yet never run, and the
        consumer gets `error` (None: CancelledError) where their results would be."""
        with self.cond:
            self.aborted = True
            if self.abort_error is None:
                self.abort_error = error
            self.cancelled = True
            self.cond.notify_all()

    def _next(self) -> Any:
        if self.buffersize and not self.input_done and not self.cancelled:
            self._feed(1)
        while True:
            if self.cancelled and not self.aborted:
                raise StopIteration
            with self.cond:
                found = False
                if self.ordered:
                    if self.yielded in self.results:
                        result = self.results.pop(self.yielded)
                        found = True
                elif self.done:
                    result = self.done.popleft()
                    found = True
                if found:
                    self.yielded += 1
                else:
                    if self.input_done and self.yielded >= self.fed:
                        raise StopIteration
                    # Aborted: busy runners may still publish it; once none is left,
                    # it never comes.
                    if self.aborted and self.runners <= 0:
                        self.cancelled = True
                        if self.abort_error is not None:
                            raise self.abort_error
                        raise _base_CancelledError()
                    if self.deadline is not None:
                        remaining = self.deadline - time.monotonic()
                        if remaining <= 0:
                            self.cancelled = True
                            raise _FuturesTimeoutError()
                        self.cond.wait(min(remaining, 0.05))
                    else:
                        self.cond.wait(0.05)
                    continue
            if type(result) is _Failure:
                if not self.return_exceptions:
                    self.close()
                    raise result.error
                return result.error
            return result

    def close(self) -> None:
        with self.cond:
            self.cancelled = True
            self.results.clear()
            self.done.clear()
            self.pending.clear()


class MapJob:
    """Iterator over fn applied to the inputs, computed by the pool's workers.

    MapJob(fn, inputs, enqueue, max_runners, *, star=True, ordered=True,
           return_exceptions=False, buffersize=None, chunksize=1, timeout=None)
    (see fastpool._core.MapJob); dropping it cancels what has not started.
    """

    def __init__(self, fn: Callable[..., Any], inputs: Any, enqueue: _Enqueue,
                 max_runners: int, **options: Any) -> None:
        self._state = _MapState(fn, inputs, enqueue, max_runners, **options)

    def __del__(self) -> None:
        state = getattr(self, "_state", None)
        if state is not None:
            state.cancelled = True

    def __iter__(self) -> MapJob:
        return self

    def __next__(self) -> Any:
        return self._state._next()

    def close(self) -> None:
        """Stop: inputs not started yet are never run."""
        self._state.close()

    def abort(self) -> None:
        """Cancel what has not started; the consumer gets CancelledError for it."""
        self._state.abort()
