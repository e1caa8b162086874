"""Pure-Python twin of the native core (src/_core.pyx).

Used where the extension cannot be built or imported, and when FASTPOOL_NO_EXTENSIONS=1.
Same interface and semantics as fastpool._core; the test suite runs against both.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from concurrent.futures import CancelledError as _base_CancelledError
from concurrent.futures import TimeoutError as _FuturesTimeoutError
from typing import Any, Callable, Union

from ._future import Future

__all__ = ["Future", "MapJob", "QueueClosed", "QueueEmpty", "WorkItem", "WorkQueue",
           "run_worker"]

LOGGER = logging.getLogger("concurrent.futures")

# What a map job calls to queue a runner: the callable, or a weak reference to it.
_Enqueue = Union[Callable[[Any], None], "weakref.ref[Callable[[Any], None]]"]


class QueueClosed(Exception):
    """The queue was closed: nothing more can be put, and it is empty for getters."""


class QueueEmpty(Exception):
    """get() timed out on an empty queue."""


def _seconds(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    t = float(timeout)
    if t != t:
        raise ValueError("timeout must be a number, got nan")
    return max(t, 0.0)


class WorkQueue:
    """Bounded or unbounded MPMC queue of Python objects (maxsize=0: unbounded)."""

    def __init__(self, maxsize: int = 0) -> None:
        maxsize = int(maxsize)
        if maxsize < 0:
            raise ValueError(f"maxsize must be >= 0, got {maxsize}")
        self._maxsize = maxsize
        self._items: deque[Any] = deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._closed = False
        self._idle = 0
        self._retire = 0
        # Weak: see fastpool._core.WorkQueue (a queue holding its threads would keep
        # the executor's registry of workers, and every Thread object, alive).
        self._threads: weakref.ref[Any] | None = None
        self._max_workers = 0

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def idle_workers(self) -> int:
        """Workers currently waiting for work in run_worker()."""
        return self._idle

    def bind_workers(self, threads: Any, max_workers: int) -> None:
        """The pool's set of worker threads and its maximum (see submit); the queue
        keeps only a weak reference to the set."""
        ref = weakref.ref(threads)
        with self._lock:
            self._threads = ref
            self._max_workers = max_workers

    def set_max_workers(self, max_workers: int) -> None:
        with self._lock:
            self._max_workers = max_workers

    def _short_of_workers(self, waiting: int) -> bool:
        ref = self._threads
        if waiting <= self._idle or ref is None:
            return False
        threads = ref()
        # A dead reference: the pool is gone, nobody can start a worker.
        return threads is not None and len(threads) < self._max_workers

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> Any:
        """The executor's fast submit: queue a new WorkItem and return its Future; None
        (nothing queued) if it would need a new worker or the queue is full or closed."""
        if self._short_of_workers(len(self._items) + 1):
            return None
        fut = Future()
        try:
            if self.put_nowait(WorkItem(fut, fn, args, kwargs)):
                return fut
        except QueueClosed:
            pass
        return None

    def request_retire(self, n: int) -> None:
        """Ask n workers to leave run_worker() after their current item (replaces any
        earlier request; 0 cancels it)."""
        with self._lock:
            self._retire = max(0, int(n))

    @property
    def retire_requested(self) -> int:
        return self._retire

    def claim_retire(self) -> bool:
        """Take one retire request if there is one (True)."""
        if not self._retire:
            return False
        with self._lock:
            if self._retire:
                self._retire -= 1
                return True
        return False

    def qsize(self) -> int:
        return len(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Any, timeout: float | None = None) -> bool:
        """Queue item; block while full. Return False on timeout; raise QueueClosed."""
        t = _seconds(timeout)
        with self._lock:
            if self._maxsize:
                deadline = None if t is None else time.monotonic() + t
                while not self._closed and len(self._items) >= self._maxsize:
                    if deadline is None:
                        self._not_full.wait()
                    else:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            return False
                        self._not_full.wait(remaining)
            if self._closed:
                raise QueueClosed("queue is closed")
            self._items.append(item)
            self._not_empty.notify()
            return True

    def put_nowait(self, item: Any) -> bool:
        """Queue item if there is room; return False if full. Raise QueueClosed."""
        return self.put(item, 0.0)

    def get(self, timeout: float | None = None) -> Any:
        """Take the oldest item; block while empty.

        Raise QueueEmpty on timeout, QueueClosed when closed and empty."""
        return self._get(timeout, False)

    def _get(self, timeout: float | None, worker: bool) -> Any:
        # worker: the caller (run_worker) counts in _idle and stops being idle with this
        # item; it leaves _idle before the item leaves qsize() (see fp_queue.h pop_impl).
        t = _seconds(timeout)
        with self._lock:
            deadline = None if t is None else time.monotonic() + t
            while not self._items:
                if self._closed:
                    raise QueueClosed("queue is closed")
                if deadline is None:
                    self._not_empty.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise QueueEmpty("queue is empty")
                    self._not_empty.wait(remaining)
            if worker:
                self._idle -= 1
            item = self._items.popleft()
            if self._maxsize:
                self._not_full.notify()
            return item

    def get_nowait(self) -> Any:
        return self.get(0.0)

    def close(self) -> None:
        """Refuse further puts and wake every waiter; getters still drain what is queued."""
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()

    def drain(self) -> list[Any]:
        """Remove and return every queued item, oldest first."""
        with self._lock:
            items = list(self._items)
            self._items.clear()
            self._not_full.notify_all()
            return items

    # os.register_at_fork hooks (see fastpool/_forking.py).
    def _before_fork(self) -> None:
        self._lock.acquire()

    def _after_fork_parent(self) -> None:
        self._lock.release()

    def _after_fork_child(self) -> list[Any]:
        """Reset the queue in a forked child; return the items it held."""
        items = list(self._items)
        self._items.clear()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._idle = 0
        self._retire = 0
        return items

    # Idle accounting for run_worker, under the lock: += is not atomic without the GIL.
    def _add_idle(self, n: int) -> None:
        with self._lock:
            self._idle += n


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
_QUE_, _RUN_, _RET_, _SUC_, _FAIL_, _CANC_, _NOTS_ = 1, 2, 3, 4, 5, 6, 7


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
                if self.runners < self.max_runners:
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
                     error: BaseException | None) -> _Failure:
        """The rare path: an item raised `error`, or ran past its deadline (None)."""
        if self.hooks is None:
            return _Failure(error)
        try:
            return _Failure(self.hooks.failed(self, index, item, error, attempt))
        except BaseException as exc:
            # hooks.failed counts before it can fail; if it fails, the item is failed.
            self._count(_RUN_, _FAIL_, 1)
            return _Failure(exc)

    def _call(self, index: int, item: Any, attempt: int) -> tuple[Any, bool]:
        """Run one item: (its slot, whether it succeeded)."""
        t1 = time.monotonic()
        try:
            result = self.fn(*item) if self.star else self.fn(item)
        except BaseException as exc:
            return self._item_failed(index, item, attempt, exc), False
        limit = self.item_deadline
        if limit is not None and time.monotonic() - t1 > limit:
            return self._item_failed(index, item, attempt, None), False
        return result, True

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
            self._feed(1)
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


# -- Pool bookkeeping (the twin of the Ledger and PoolTask in src/_core.pyx) ----------

N_SUBMITTED, N_QUEUED, N_RUNNING, N_RETRYING, N_SUCCEEDED, N_FAILED = 0, 1, 2, 3, 4, 5
N_CANCELLED, N_NOT_STARTED, N_RETRIED, N_DEAD_LETTERED, N_REJECTED = 6, 7, 8, 9, 10
OUTSIDE = -1
# TASK_OVERDUE: its deadline passed (its future failed) while its call still runs;
# it stays counted running until the call returns.
TASK_QUEUED, TASK_RUNNING, TASK_RETRY, TASK_SETTLING, TASK_DONE, TASK_ABANDONED, \
    TASK_OVERDUE = range(7)
PUT_OK, PUT_FULL, PUT_CLOSED = 0, 1, 2
SAMPLE_WINDOW = 4096
SAMPLE_EVERY = 8
_NCOUNT = 11

clock = time.monotonic


class Ledger:
    """A Pool's counters, its running tasks and its latency samples."""

    def __init__(self, queue: WorkQueue, slow: bool = False) -> None:
        self.queue = queue
        self.slow = bool(slow)  # every task starts through pool._run_slow
        self.running: set[Any] = set()
        self._lock = threading.Lock()
        self._c = [0] * _NCOUNT
        self._closed = self._collecting = False
        self._watch = 0
        self._room = 0
        self._stamps = self._samples = 0
        self._wait_ring = [float("nan")] * SAMPLE_WINDOW
        self._run_ring = [float("nan")] * SAMPLE_WINDOW

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._lock:
            self._closed = True

    @property
    def collecting(self) -> bool:
        return self._collecting

    def start_collecting(self) -> None:
        with self._lock:
            self._collecting = True

    @property
    def watch(self) -> int:
        return self._watch

    def add_watch(self, delta: int) -> None:
        with self._lock:
            self._watch += delta

    @property
    def room_waiters(self) -> int:
        return self._room

    def add_room_waiter(self, delta: int) -> None:
        with self._lock:
            self._room += delta

    def admit(self, task: PoolTask, src: int = OUTSIDE) -> int:
        # See the Ledger in src/_core.pyx. Here the queue is put to under this lock, so
        # a worker moves the task on only after it is counted, and a failed put is
        # undone before anyone can look.
        if src != OUTSIDE and src != N_RETRYING:
            raise ValueError(f"admit() moves a task from OUTSIDE or N_RETRYING, not {src}")
        with self._lock:
            if src == OUTSIDE and self._closed:
                return PUT_CLOSED
            try:
                st = PUT_OK if self.queue.put_nowait(task) else PUT_FULL
            except QueueClosed:
                st = PUT_CLOSED
            if st == PUT_OK:
                self._shift(src, N_QUEUED, -1, None)
            return st

    def _shift(self, src: int, dst: int, extra: int, task: Any) -> None:
        # The one state change, under self._lock (see the Ledger in src/_core.pyx).
        c = self._c
        if src == OUTSIDE:
            c[N_SUBMITTED] += 1
        else:
            c[src] -= 1
        if dst == OUTSIDE:
            c[N_SUBMITTED] -= 1
        else:
            c[dst] += 1
        if extra >= 0:
            c[extra] += 1
        if task is not None:
            if src == N_RUNNING:
                self.running.discard(task)
            elif dst == N_RUNNING:
                self.running.add(task)

    def _bulk(self, src: int, dst: int, n: int) -> None:
        # n items (of a map) change state at once, under self._lock.
        c = self._c
        if src == OUTSIDE:
            c[N_SUBMITTED] += n
        else:
            c[src] -= n
        if dst == OUTSIDE:
            c[N_SUBMITTED] -= n
        else:
            c[dst] += n

    def _admit_n(self, n: int) -> bool:
        # A map's inputs: counted submitted and queued, unless the ledger is closed.
        with self._lock:
            if self._closed:
                return False
            self._bulk(OUTSIDE, N_QUEUED, n)
        return True

    def move_n(self, src: int, dst: int, n: int) -> bool:
        if not (OUTSIDE <= src < _NCOUNT and OUTSIDE <= dst < _NCOUNT) or n < 0:
            raise ValueError(f"bad counter index in move_n({src}, {dst}, {n})")
        with self._lock:
            self._bulk(src, dst, n)
            return self._watch > 0

    def move(self, src: int, dst: int, extra: int = -1, task: Any = None) -> bool:
        if not (OUTSIDE <= src < _NCOUNT and OUTSIDE <= dst < _NCOUNT
                and -1 <= extra < _NCOUNT):
            raise ValueError(f"bad counter index in move({src}, {dst}, {extra})")
        with self._lock:
            self._shift(src, dst, extra, task)
            return self._watch > 0

    def counts(self) -> tuple[int, ...]:
        with self._lock:
            return tuple(self._c)

    def snapshot(self) -> tuple[tuple[int, ...], list[Any]]:
        with self._lock:
            return tuple(self._c), list(self.running)

    def idle(self) -> bool:
        c = self._c
        with self._lock:
            return not (c[N_QUEUED] or c[N_RUNNING] or c[N_RETRYING])

    def in_transit(self) -> int:
        with self._lock:
            return self._c[N_QUEUED] + self._c[N_RETRYING]

    def sampled(self) -> bool:
        with self._lock:
            n = self._stamps
            self._stamps = n + 1
        return n % SAMPLE_EVERY == 0

    def sample(self, wait: float, run: float) -> None:
        with self._lock:
            i = self._samples % SAMPLE_WINDOW
            self._samples += 1
            self._wait_ring[i] = wait
            self._run_ring[i] = run

    def latencies(self) -> tuple[list[float], list[float]]:
        with self._lock:
            return list(self._wait_ring), list(self._run_ring)

    def task(self, pool: Any, fn: Callable[..., Any], args: tuple[Any, ...],
             kwargs: dict[str, Any], opts: Any = None, retry: Any = None) -> PoolTask:
        task = PoolTask.__new__(PoolTask)
        WorkItem.__init__(task, Future(), fn, args, kwargs)
        task.pool = pool
        task.ledger = self
        task.opts = opts
        task.retry = retry
        task.attempt = 1
        task.state = TASK_QUEUED
        task.t_queued = 0.0
        return task

    def submit(self, pool: Any, fn: Callable[..., Any], args: tuple[Any, ...],
               kwargs: dict[str, Any], retry: Any) -> Any:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        task = self.task(pool, fn, args, kwargs, None, retry)
        if self.sampled():
            task.t_queued = clock()
        if self.admit(task) != PUT_OK:
            return None
        q = self.queue
        if q._short_of_workers(q.qsize()):
            pool._adjust_thread_count()
        return task.future


class PoolTask(WorkItem):
    """A Pool task: a WorkItem with its pool, options, retry policy and state."""

    __slots__ = ("pool", "opts", "retry", "attempt", "state", "t_queued", "ledger")
    pool: Any
    opts: Any
    retry: Any
    attempt: int
    state: int
    t_queued: float
    ledger: Ledger

    def __init__(self) -> None:
        raise TypeError("PoolTask objects are made by Ledger.task()")

    def run(self) -> None:
        if self.opts is not None or self.ledger.slow:
            self.pool._run_slow(self)
        else:
            self.run_plain()

    def run_plain(self) -> None:
        ledger = self.ledger
        future = self.future
        started = future.set_running_or_notify_cancel()
        with ledger._lock:
            ok = started and not ledger._collecting
            if ok:
                self.state = TASK_RUNNING
                ledger._shift(N_QUEUED, N_RUNNING, -1, self)
            room = ledger._room > 0
        if room:
            self.pool._room_made()
        if not ok:
            self.pool._not_run(self, started)
            return
        t_queued = self.t_queued
        if t_queued:
            t0 = clock()
        try:
            result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:
            if t_queued:
                ledger.sample(t0 - t_queued, clock() - t0)
            self.pool._task_failed(self, exc)
            return
        if t_queued:
            ledger.sample(t0 - t_queued, clock() - t0)
        try:
            future.set_result(result)
        finally:
            with ledger._lock:
                self.state = TASK_DONE
                ledger._shift(N_RUNNING, N_SUCCEEDED, -1, self)
                watch = ledger._watch > 0
            if watch:
                self.pool._check_idle_locked()
