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


# A runner's claim on its items (see fastpool._core): 2i: items [0, i) done; 2i+1: item
# i running; _CLOSED: its runner publishes it; _SPLIT: shutdown or a deadline took it.
_SPLIT, _CLOSED = -1, -2
# How an item's failure ended (_MapState._item_failed).
_OK, _FAILED, _AGAIN, _LOST = 0, 1, 2, 3


class _Chunk:
    """Items a runner took (a chunk, or one retried item: single); see fastpool._core."""

    __slots__ = ("start", "items", "results", "attempt", "single", "live", "state",
                 "lock", "t_item", "lost", "overdue", "watch", "timer")

    def __init__(self, start: int, items: list[Any], attempt: int, single: bool) -> None:
        self.start = start
        self.items = items
        self.results: list[Any] | None = None
        self.attempt = attempt
        self.single = single
        self.live = False
        self.state = 0
        self.lock = threading.Lock()
        self.t_item = 0.0
        self.lost = -1
        self.overdue: BaseException | None = None
        self.watch: Any = None
        self.timer: Any = None

    def step(self, frm: int, to: int) -> bool:
        with self.lock:
            if self.state != frm:
                return False
            self.state = to
            return True


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
        self.active: set[_Chunk] = set()  # the chunks runners run now
        # hooks.fast_retry: a retry policy the runner applies itself (see _item_failed).
        fast = None if hooks is None else hooks.fast_retry
        self.fast_attempts: int = 0 if fast is None else fast[0]
        self.fast_classes: tuple[type, ...] = () if fast is None else fast[1]
        self.gov: Any = None if hooks is None else hooks.gov
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
            if self.cancelled or self.aborted:
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

    def _item_failed(self, c: _Chunk, i: int, attempt: int,
                     error: BaseException | None) -> tuple[Any, int]:
        """Item i of c raised `error`, or ran past its deadline (None); see
        fastpool._core: (its slot, how: _FAILED, _AGAIN or _LOST)."""
        if self.hooks is None:
            c.step(2 * i + 1, 2 * i + 2)  # (nobody splits without hooks)
            return _Failure(error), _FAILED
        if (error is not None and attempt < self.fast_attempts
                and isinstance(error, self.fast_classes) and not self.gov.cancelled):
            # The pool's policy, decided here (see fastpool._core): run it again now.
            ledger = self.ledger
            assert ledger is not None
            with ledger._lock, c.lock:
                if not ledger._collecting and c.state == 2 * i + 1:
                    ledger._shift(N_RUNNING, N_RUNNING, N_RETRIED, None)
                    return None, _AGAIN
        try:
            out = self.hooks.failed(self, c, c.start + i, c.items[i], error, attempt)
        except BaseException as exc:
            # hooks.failed counts before it can fail; if it fails, the item is failed.
            self._count(_RUN_, _FAIL_, 1)
            c.step(2 * i + 1, 2 * i + 2)
            return _Failure(exc), _FAILED
        if out is True:
            return None, _AGAIN
        if out is False:
            return None, _LOST
        return _Failure(out), _FAILED

    def _call(self, c: _Chunk, i: int) -> tuple[Any, int]:
        """Run item i of c (claimed), again while a retry without backoff asks: (its
        slot, how: _OK (not finished yet), _FAILED (finished) or _LOST)."""
        limit = self.item_deadline
        attempt = c.attempt
        item = c.items[i]
        while True:
            t1 = time.monotonic()
            try:
                result = self.fn(*item) if self.star else self.fn(item)
            except BaseException as exc:
                slot, how = self._item_failed(c, i, attempt, exc)
            else:
                if limit is None or time.monotonic() - t1 <= limit:
                    return result, _OK
                slot, how = self._item_failed(c, i, attempt, None)
            if how != _AGAIN:
                return slot, how
            attempt += 1

    def run_loop(self) -> None:
        """A runner's loop (hooks.run_governed calls it around the call's token)."""
        self._run()

    def _run(self) -> None:
        watched = self.item_deadline is not None and self.hooks is not None
        while True:
            with self.cond:
                if self.cancelled or not (self.pending or self.retries):
                    self.runners -= 1
                    return
                if self.retries:
                    index, item, attempt = self.retries.popleft()  # first, by itself
                    c = _Chunk(index, [item], attempt, True)
                else:
                    take = min(self.min_chunk, len(self.pending))
                    c = _Chunk(self.taken, [self.pending.popleft() for _ in range(take)],
                               1, False)
                    self.taken += take
                c.live = True
                self.active.add(c)
            self._count(_QUE_, _RUN_, len(c.items), False)
            if watched:
                self.hooks.watch_deadline(self, c)  # the pool's timer watches its items
            self._run_chunk(c)
            if watched:
                self.hooks.chunk_done(c)
            del c

    def _run_chunk(self, c: _Chunk) -> None:
        """See fastpool._core: run c's items and publish them, unless c is split off."""
        take = len(c.items)
        results: list[Any] = [None] * take
        c.results = results
        nok = nskip = 0
        split = False
        for i in range(take):
            if self.cancelled:
                # The consumer is gone: the rest never starts (counted cancelled).
                if not c.step(2 * i, _CLOSED):
                    split = True
                    break
                for j in range(i, take):
                    results[j] = _Failure(_base_CancelledError())
                nskip = take - i
                break
            c.t_item = time.monotonic()
            if not c.step(2 * i, 2 * i + 1):
                split = True
                break
            slot, how = self._call(c, i)
            if how == _LOST:
                split = True
                break
            if how == _OK:
                if not c.step(2 * i + 1, 2 * i + 2):
                    self.hooks.lost(self, c, c.start + i, slot)  # split off while it ran
                    split = True
                    break
                nok += 1
            results[i] = slot
            del slot
        else:
            if not c.step(2 * take, _CLOSED):
                split = True
        if not split:
            # Counted before published: whoever sees an outcome finds it in the stats.
            # (Shutdown waits for a _CLOSED chunk to leave `active`: see fastpool._core.)
            self._count(_RUN_, _SUC_, nok)
            self._count(_RUN_, _CANC_, nskip)
            if c.single:
                slot = results[0]
                if type(slot) is not _Failure or slot.error is not None:
                    self.publish_one(c.start, slot, False)  # (else: retried later again)
            else:
                with self.cond:
                    if self.ordered:
                        self.chunks[c.start] = results
                    else:
                        self.done.append(results)
                    self.cond.notify_all()
        with self.cond:
            c.live = False
            self.active.discard(c)
        # Not kept while the next chunk runs: the consumer may have yielded and
        # dropped it already (bpo-14406).
        c.results = None
        del results

    def closing(self) -> int:
        """How many chunks are being published by their runners (see hand_back)."""
        with self.cond:
            return sum(c.state == _CLOSED for c in self.active)

    def publish_one(self, index: int, value: Any, failed: bool) -> None:
        """See fastpool._core: one item's outcome, published by itself."""
        if failed:
            value = _Failure(value)
        with self.cond:
            if self.ordered:
                self.retried[index] = value
            else:
                self.done.append([value])
            self.cond.notify_all()

    def finish(self, c: _Chunk) -> bool:
        """See fastpool._core: the running item of c is finished (False: split off)."""
        with c.lock:
            if c.state >= 0 and c.state % 2 == 1:
                c.state += 1
                return True
            return False

    def owns(self, c: _Chunk) -> bool:
        """Whether c's runner still owns its running item (not split off)."""
        return c.state >= 0

    def take_lost(self, c: _Chunk) -> tuple[BaseException | None, Any]:
        """See fastpool._core: (its DeadlineExceeded or None, its record or None)."""
        with self.cond:
            c.lost = -1
            watch, c.watch = c.watch, None
            return c.overdue, watch

    def split(self, c: _Chunk, overdue: BaseException | None = None) -> Any:
        """See fastpool._core: split c off its runner (shutdown, or its deadline)."""
        limit = self.item_deadline
        with self.cond:
            if not c.live:
                return None if overdue is None else -1.0
            with c.lock:
                s = c.state
                if s < 0:
                    if overdue is None and c.lost >= 0 and c.watch is None:
                        return [], (c.start + c.lost, c.items[c.lost], c.attempt)
                    return None if overdue is None else -1.0
                if overdue is not None:
                    assert limit is not None
                    now = time.monotonic()
                    if s % 2 == 0:
                        return now + limit  # no item runs: the next starts later
                    if now - c.t_item < limit:
                        return c.t_item + limit
                c.state = _SPLIT
            take = len(c.items)
            k, running = s // 2, s % 2 == 1
            results = c.results
            assert results is not None
            copy: list[Any] = []
            left: list[tuple[Any, int]] = []
            requeue: list[tuple[int, Any, int]] = []
            nok = 0
            for j in range(take):
                if j < k:
                    slot = results[j]
                    nok += type(slot) is not _Failure
                elif j == k and running:
                    c.lost = k
                    c.overdue = overdue
                    slot = _Failure(overdue)  # None: its outcome comes by itself
                elif overdue is None:
                    left.append((c.items[j], c.attempt))
                    slot = _Failure(_base_CancelledError())
                else:
                    requeue.append((c.start + j, c.items[j], c.attempt))
                    slot = _Failure(None)
                copy.append(slot)
        if overdue is not None and running:
            self.hooks.overdue(c.items[k], c.attempt, overdue)  # before it is delivered
        # (No idle check: the caller holds the pool's lock, and checks.)
        self._count(_RUN_, _SUC_, nok, False)
        self._count(_RUN_, _NOTS_ if overdue is None else _QUE_, take - k - running, False)
        start = False
        with self.cond:
            if requeue:
                self.retries.extendleft(reversed(requeue))
                self.runners += 1  # its runner is busy: another takes the rest
                start = True
            if c.single:
                slot = copy[0]
                if type(slot) is not _Failure or slot.error is not None:
                    if self.ordered:
                        self.retried[c.start] = slot
                    else:
                        self.done.append(copy)
            elif self.ordered:
                self.chunks[c.start] = copy
            else:
                self.done.append(copy)
            self.cond.notify_all()
        if overdue is not None:
            return start
        return left, (c.start + k, c.items[k], c.attempt) if running else None

    def _take_unstarted(self, stop: bool = True) -> list[tuple[Any, int]]:
        """Under self.cond: take every item not started (queued), and stop (see
        fastpool._core)."""
        left = [(item, 1) for item in self.pending]
        left += [(e[1], e[2]) for e in self.retries]
        self.pending.clear()
        self.retries.clear()
        if stop:
            self.cancelled = True
        return left

    def hand_back(self) -> tuple[list[tuple[Any, int]], list[tuple[Any, ...]]]:
        """See fastpool._core: shutdown takes back the items not started, and finds
        those running."""
        with self.cond:
            # Not stopped yet: see fastpool._core.
            left = self._take_unstarted(False)
            self.aborted = True
            chunks = list(self.active)
            self.cond.notify_all()
        self._count(_QUE_, _NOTS_, len(left), False)  # (the caller checks idleness)
        running = []
        for c in chunks:
            out = self.split(c)
            if out is not None:
                left += out[0]
                if out[1] is not None:
                    running.append((c,) + out[1] + (c.overdue,))
        with self.cond:
            self.cancelled = True
            self.cond.notify_all()
        return left, running

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

    def watch(self, c: _Chunk, record: Any) -> None:
        """See fastpool._core: shutdown reports c's running item."""
        with self.cond:
            c.watch = record


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
