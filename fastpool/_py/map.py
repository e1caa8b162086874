"""map() without a Future per item: the pure-Python twin of src/core/map.pxi."""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from concurrent.futures import CancelledError as _base_CancelledError
from concurrent.futures import TimeoutError as _FuturesTimeoutError
from typing import TYPE_CHECKING, Any, Callable, Union

from .._states import (N_CANCELLED, N_FAILED, N_NOT_STARTED, N_QUEUED, N_RETRIED, N_RETRYING,
                       N_RUNNING, N_SUCCEEDED)

if TYPE_CHECKING:
    from .ledger import Ledger


# What a map job calls to queue a runner: the callable, or a weak reference to it.
_Enqueue = Union[Callable[[Any], None], "weakref.ref[Callable[[Any], None]]"]


class _Failure:
    """A result slot holding the exception an item raised (None: being retried)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
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
        hooks = self.job.hooks
        if hooks is not None and hooks.governed:
            hooks.run_governed(self.job)  # current_token(): the call's token
        else:
            self.job._run()


# Ledger counters a Pool's map moves its items between (see fastpool._core).
_QUE_, _RUN_, _RET_, _SUC_ = N_QUEUED, N_RUNNING, N_RETRYING, N_SUCCEEDED
_FAIL_, _CANC_, _NOTS_ = N_FAILED, N_CANCELLED, N_NOT_STARTED


class _MapState:
    """See fastpool._core: the same algorithm, in chunks of exactly `chunksize` items
    (the native core grows them while items are fast)."""

    def __init__(self, fn: Callable[..., Any], inputs: Any, enqueue: _Enqueue,
                 max_runners: int, *, star: bool = True, ordered: bool = True,
                 return_exceptions: bool = False, buffersize: int | None = None,
                 chunksize: int = 1, timeout: float | None = None,
                 ledger: Ledger | None = None, hooks: Any = None,
                 deadline: float | None = None) -> None:
        self.fn = fn
        self.source = iter(inputs)
        # A callable, or a weak reference to one (see fastpool._core: then the job does
        # not keep the pool alive, and takes no more inputs once it is gone).
        self.enqueue = enqueue
        self.star = star
        self.ordered = ordered
        self.return_exceptions = return_exceptions
        self.max_runners = max(1, max_runners)
        self.min_chunk = max(1, chunksize)
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
        self.chunks: dict[int, list[Any]] = {}
        self.done: deque[list[Any]] = deque()
        self.cur: list[Any] | None = None
        self.cur_pos = 0
        self.cond = threading.Condition(threading.Lock())
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.ledger = ledger
        self.hooks = hooks
        self.item_deadline = deadline
        self.retries: deque[tuple[int, Any, int]] = deque()
        self.retried: dict[int, Any] = {}
        # hooks.fast_retry: a retry policy the runner applies itself (see _item_failed).
        fast = None if hooks is None else hooks.fast_retry
        self.fast_attempts, self.fast_classes = (0, ()) if fast is None else fast
        self.gov = None if hooks is None else hooks.gov
        self._feed(self.buffersize or -1)

    def _count(self, src: int, dst: int, n: int, notify: bool = True) -> None:
        """Move n items between the Ledger's counters (not under self.cond)."""
        if self.ledger is None or n <= 0:
            return
        if self.ledger.move_n(src, dst, n) and notify:
            self.hooks.check_idle()  # someone waits for the pool to be idle

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
        if self.ledger is not None and not self.ledger._admit_n(len(batch)):
            self.input_done = True
            self.hooks.closed()  # raises the pool's error (shut down, broken)
            return
        with self.cond:
            self.pending.extend(batch)
            self.fed += len(batch)
            want = min(self.max_runners, len(self.pending)) - self.runners
            if want > 0:
                self.runners += want
        self._start_runners(want, enqueue)

    def _start_runners(self, want: int, enqueue: Callable[[Any], None]) -> None:
        for _ in range(max(want, 0)):
            try:
                enqueue(_MapRunner(self))
            except BaseException:
                with self.cond:
                    self.runners -= 1
                    stranded = self.runners <= 0
                if stranded:
                    # Nobody would run what is queued: it never runs.
                    self.abort(None)
                raise

    def requeue(self, index: int, item: Any, attempt: int) -> bool:
        """See fastpool._core: queue a retried item again; True if a runner must start."""
        start = dropped = False
        with self.cond:
            if self.cancelled:
                dropped = True
            else:
                self.retries.append((index, item, attempt))
                if self.runners <= 0:  # else a live runner takes it next
                    self.runners += 1
                    start = True
        if dropped:
            self._count(_RET_, _CANC_, 1)
        else:
            self._count(_RET_, _QUE_, 1)
        return start

    def runner(self) -> _MapRunner:
        """A new runner for this job (see requeue)."""
        return _MapRunner(self)

    def runner_lost(self) -> None:
        """A runner counted by requeue could not be queued."""
        with self.cond:
            self.runners -= 1
            stranded = self.runners <= 0
        if stranded:
            self.abort(None)

    def _item_failed(self, index: int, item: Any, attempt: int,
                     error: BaseException | None) -> _Failure | None:
        """An item raised `error`, or ran past its deadline (None); see fastpool._core:
        its slot, or None to run it again now."""
        if self.hooks is None:
            return _Failure(error)
        if (error is not None and attempt < self.fast_attempts
                and isinstance(error, self.fast_classes) and not self.gov.cancelled):
            # The pool's policy, decided here (see fastpool._core): run it again now.
            ledger = self.ledger
            assert ledger is not None
            with ledger._lock:
                if not ledger._collecting:
                    ledger._shift(N_RUNNING, N_RUNNING, N_RETRIED, None)
                    return None
        try:
            out = self.hooks.failed(self, index, item, error, attempt)
        except BaseException as exc:
            # hooks.failed counts before it can fail; if it fails, the item is failed.
            self._count(_RUN_, _FAIL_, 1)
            return _Failure(exc)
        return None if out is True else _Failure(out)

    def _call(self, index: int, item: Any, attempt: int) -> tuple[Any, bool]:
        """Run one item (again, while a retry without backoff asks): (its slot, whether
        it succeeded)."""
        limit = self.item_deadline
        while True:
            t1 = time.monotonic()
            try:
                result = self.fn(*item) if self.star else self.fn(item)
            except BaseException as exc:
                slot = self._item_failed(index, item, attempt, exc)
            else:
                if limit is None or time.monotonic() - t1 <= limit:
                    return result, True
                slot = self._item_failed(index, item, attempt, None)
            if slot is not None:
                return slot, False
            attempt += 1

    def run_loop(self) -> None:
        """A runner's loop (hooks.run_governed calls it around the call's token)."""
        self._run()

    def _run(self) -> None:
        while True:
            retry = None
            with self.cond:
                if self.cancelled or not (self.pending or self.retries):
                    self.runners -= 1
                    return
                if self.retries:
                    retry = self.retries.popleft()  # a retried item goes first, by itself
                else:
                    n = len(self.pending)
                    take = min(self.min_chunk, n)
                    start = self.taken
                    items = [self.pending.popleft() for _ in range(take)]
                    self.taken += take
            if retry is not None:
                self._run_retry(*retry)
                continue
            self._count(_QUE_, _RUN_, take, False)
            results: list[Any] = []
            nok = nskip = 0
            for i, item in enumerate(items):
                if self.cancelled:
                    # Never started: reported as cancelled if anyone still looks.
                    results.append(_Failure(_base_CancelledError()))
                    nskip += 1
                    continue
                slot, ok = self._call(start + i, item, 1)
                nok += ok
                results.append(slot)
                del slot
            del items
            # Counted before published: whoever sees an outcome finds it in the stats.
            self._count(_RUN_, _SUC_, nok)
            self._count(_RUN_, _CANC_, nskip)
            with self.cond:
                if self.ordered:
                    self.chunks[start] = results
                else:
                    self.done.append(results)
                self.cond.notify_all()
            # Not kept while the next chunk runs: the consumer may have yielded and
            # dropped it already (bpo-14406).
            del results

    def _run_retry(self, index: int, item: Any, attempt: int) -> None:
        """Run a retried item again (counted queued) and publish its outcome."""
        self._count(_QUE_, _RUN_, 1, False)
        slot, ok = self._call(index, item, attempt)
        if ok:
            self._count(_RUN_, _SUC_, 1)
        elif slot.error is None:
            return  # retrying again
        with self.cond:
            if self.ordered:
                self.retried[index] = slot
            else:
                self.done.append([slot])
            self.cond.notify_all()

    def _take_unstarted(self) -> list[tuple[Any, int]]:
        """Under self.cond: stop, and take every item not started (queued)."""
        left = [(item, 1) for item in self.pending]
        left += [(e[1], e[2]) for e in self.retries]
        self.pending.clear()
        self.retries.clear()
        self.cancelled = True
        return left

    def hand_back(self) -> list[tuple[Any, int]]:
        """See fastpool._core: shutdown takes back the items not started."""
        with self.cond:
            left = self._take_unstarted()
            self.aborted = True
            self.cond.notify_all()
        self._count(_QUE_, _NOTS_, len(left))
        return left

    def abort(self, error: BaseException | None = None) -> None:
        """The pool is cancelling its work: inputs not started yet never run, and the
        consumer gets `error` (None: CancelledError) where their results would be."""
        with self.cond:
            self.aborted = True
            if self.abort_error is None:
                self.abort_error = error
            left = self._take_unstarted()
            self.cond.notify_all()
        self._count(_QUE_, _CANC_, len(left))

    def _drop(self, notify: bool) -> None:
        self.cur = None
        with self.cond:
            left = self._take_unstarted()
            self.chunks.clear()
            self.done.clear()
            self.retried.clear()
        self._count(_QUE_, _CANC_, len(left), notify)

    def _next(self) -> Any:
        if self.buffersize and not self.input_done and not self.cancelled:
            if self.hooks is None:
                self._feed(1)  # as the stdlib's lazy map
            elif self.fed - self.yielded <= self.buffersize // 2:
                self._feed(self.buffersize - (self.fed - self.yielded))  # see fastpool._core
        while True:
            cur = self.cur
            if cur is not None:
                if self.cur_pos < len(cur):
                    r = cur[self.cur_pos]
                    if type(r) is _Failure and r.error is None:
                        # Being retried: unordered, its outcome comes later as a chunk
                        # of its own; ordered, it is awaited here.
                        if not self.ordered:
                            self.cur_pos += 1
                            continue
                        error = None
                        with self.cond:
                            found = self.yielded in self.retried
                            if found:
                                r = self.retried.pop(self.yielded)
                            else:
                                error = self._wait()
                        if not found:
                            if error is not None:
                                self.close()
                                raise error
                            continue
                    # Yielded results are not kept (bpo-14406).
                    cur[self.cur_pos] = None
                    self.cur_pos += 1
                    self.yielded += 1
                    if type(r) is _Failure:
                        if not self.return_exceptions:
                            self.close()
                            raise r.error  # type: ignore[misc]
                        return r.error
                    return r
                self.cur = None
            if self.cancelled and not self.aborted:
                raise StopIteration
            error = None
            with self.cond:
                chunk = None
                if self.ordered:
                    chunk = self.chunks.pop(self.yielded, None)
                elif self.done:
                    chunk = self.done.popleft()
                if chunk is None:
                    if self.input_done and self.yielded >= self.fed:
                        raise StopIteration
                    error = self._wait()
            if error is not None:
                self.close()
                raise error
            if chunk is not None:
                self.cur = chunk
                self.cur_pos = 0

    def _wait(self) -> BaseException | None:
        """Under self.cond: wait for a runner to publish. If it never will, the error
        to raise (once the job is closed): the abort error (aborted, and no runner is
        left: busy ones may still publish), or TimeoutError (the timeout)."""
        if self.aborted and self.runners <= 0:
            return self.abort_error if self.abort_error is not None else _base_CancelledError()
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                return _FuturesTimeoutError()
            self.cond.wait(min(remaining, 0.05))
        else:
            self.cond.wait(0.05)
        return None

    def close(self) -> None:
        """Stop: inputs not started yet are never run (counted cancelled)."""
        self._drop(True)


class MapJob:
    """Iterator over fn applied to the inputs, computed by the pool's workers.

    MapJob(fn, inputs, enqueue, max_runners, *, star=True, ordered=True,
           return_exceptions=False, buffersize=None, chunksize=1, timeout=None,
           ledger=None, hooks=None, deadline=None)
    (see fastpool._core.MapJob); dropping it cancels what has not started.
    """

    def __init__(self, fn: Callable[..., Any], inputs: Any, enqueue: _Enqueue,
                 max_runners: int, **options: Any) -> None:
        self._state = _MapState(fn, inputs, enqueue, max_runners, **options)

    def __del__(self) -> None:
        state = getattr(self, "_state", None)
        if state is not None:
            state._drop(False)

    def __iter__(self) -> MapJob:
        return self

    def __next__(self) -> Any:
        return self._state._next()

    @property
    def job(self) -> _MapState:
        """The job's state (runners and the pool's hooks hold it; it holds no MapJob)."""
        return self._state

    def close(self) -> None:
        """Stop: inputs not started yet are never run."""
        self._state.close()

    def abort(self) -> None:
        """Cancel what has not started; the consumer gets CancelledError for it."""
        self._state.abort()
