"""Pool.map, Pool.amap and Pool.asubmit: streaming over a Pool with bounded memory."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures as cf
import itertools
import logging
import queue
import weakref
from concurrent.futures import CancelledError
from time import monotonic, time
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterable, Iterator

from .._pick_core import core
from ..cancel import CancelToken, _local, _timeout_seconds
from ..deadletter import DeadLetter
from ..errors import DeadlineExceeded
from .._states import (N_CANCELLED, N_DEAD_LETTERED, N_FAILED, N_NOT_STARTED, N_RETRIED,
                       N_RETRYING, N_RUNNING, N_SUCCEEDED)
from ..retry import Retry
from ._records import Task, unstart
from ._submit import check_retry_and_token

if TYPE_CHECKING:
    from .._timer import Timer
    from ._pool import Pool
    from ._state import PoolState
    from ..stats import Stats

LOGGER = logging.getLogger("fastpool")

# A callable `progress` gets Stats at most this often (and once at the end).
PROGRESS_INTERVAL = 0.2
# A retried item that finds the bounded queue full tries again this much later.
_REQUEUE_DELAY = 0.005


# Pool.map's default window with an unbounded queue. Items in flight cost the native
# engine a few list slots each (no Future, no task): 4096 of them keep the runners
# busy between two top-ups (256 made a no-op map 3x slower: the runners emptied the
# window, left, and were queued and woken again at every top-up), in ~100 KB.
MAP_WINDOW = 4096


def _check_buffersize(pool: Pool, buffersize: Any, native: bool = False) -> int:
    if buffersize is None:
        if native and not pool._queue_size:
            return max(MAP_WINDOW, pool._default_buffersize())
        return pool._default_buffersize()
    if isinstance(buffersize, bool) or not isinstance(buffersize, int):
        raise TypeError(f"`buffersize` must be an int or None, got {buffersize!r}")
    if buffersize < 1:
        raise ValueError(f"`buffersize` must be >= 1, got {buffersize}")
    return buffersize


def _run_chunk(fn: Callable[..., Any], chunk: list[tuple[Any, ...]],
               return_exceptions: bool) -> list[Any]:
    if not return_exceptions:
        return [fn(*args) for args in chunk]
    out = []
    for args in chunk:
        try:
            out.append(fn(*args))
        except Exception as exc:
            out.append(exc)
    return out


class _StatsProgress:
    def __init__(self, pool: Pool, callback: Callable[[Stats], object]) -> None:
        self._pool = pool
        self._callback = callback
        self._last = monotonic()

    def tick(self, n: int) -> None:
        now = monotonic()
        if now - self._last >= PROGRESS_INTERVAL:
            self._last = now
            self._callback(self._pool.stats())

    def close(self) -> None:
        self._callback(self._pool.stats())


class _BarProgress:
    def __init__(self, bar: Any) -> None:
        self._bar = bar

    def tick(self, n: int) -> None:
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()


def _progress(pool: Pool, progress: Any, iterables: tuple[Iterable[Any], ...]) -> Any:
    if progress is None or progress is False:
        return None
    if progress is True:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            raise ImportError("map(progress=True) shows a tqdm bar and needs tqdm "
                              "(pip install tqdm); or pass a callable receiving Stats") from None
        try:
            total = min(len(it) for it in iterables)  # type: ignore[arg-type]
        except TypeError:
            total = None
        return _BarProgress(tqdm(total=total, desc=pool.name))
    if callable(progress):
        return _StatsProgress(pool, progress)
    raise TypeError(f"`progress` must be a bool or a callable receiving Stats, got {progress!r}")


def map_iter(pool: Pool, fn: Callable[..., Any], iterables: tuple[Iterable[Any], ...],
             timeout: float | None, chunksize: int, buffersize: int | None, ordered: bool,
             return_exceptions: bool, progress: Any, retry: Any = None,
             deadline: float | None = None, token: CancelToken | None = None) -> Iterator[Any]:
    # Everything is checked here, at the call; the iterator only runs the work.
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {fn!r}")
    if isinstance(chunksize, bool) or not isinstance(chunksize, int):
        raise TypeError(f"`chunksize` must be an int, got {chunksize!r}")
    if chunksize < 1:
        raise ValueError("chunksize must be >= 1.")
    native = not (pool._state.ledger.slow or pool._copy_context)
    size = _check_buffersize(pool, buffersize, native)
    timeout = _timeout_seconds("timeout", timeout)
    deadline = _timeout_seconds("deadline", deadline)
    retry = check_retry_and_token(pool._retry, retry, token)
    if pool._shutdown:
        pool._raise_closed()
    if not native:
        # Rate-limited, on a backend, or copying contexts: every call is a task of its
        # own (each waits for its slot, goes out, or runs in its context).
        if deadline is not None or token is not None or retry is not pool._retry:
            raise ValueError("map(retry=, deadline=, token=) needs a pool without "
                             "rate_limit, backend or copy_context (use schedule())")
        end = None if timeout is None else monotonic() + timeout
        bar = _progress(pool, progress, iterables)
        return _map_tasks(pool, fn, iterables, end, chunksize, size, ordered,
                          return_exceptions, bar)
    bar = _progress(pool, progress, iterables)
    if len(iterables) == 1:
        inputs, star = iterables[0], False
    else:
        inputs, star = zip(*iterables), True
    hooks = _MapHooks(pool, fn, star, retry, deadline, token)
    # The workers a map will use start now, while they are quick to start: once
    # runners hold the GIL, each thread start waits for it (a no-op map over a 1M-item
    # generator took 160 ms to its first result that way, on a loaded machine).
    for _ in range(pool._max_workers - len(pool._threads)):
        pool._workers.start()
    job = core.MapJob(fn, inputs, hooks.enqueue, pool._max_workers, star=star,
                      ordered=ordered, return_exceptions=return_exceptions,
                      buffersize=size, chunksize=chunksize, timeout=timeout,
                      ledger=pool._state.ledger, hooks=hooks, deadline=deadline)
    pool._state.maps.add(job)
    if token is not None:
        ref = weakref.ref(job)
        token.add_callback(lambda _: _abort(ref))  # at once if it is cancelled
    if bar is None:
        return job
    return _observed(job, bar)


def _abort(ref: weakref.ref[Any]) -> None:
    job = ref()
    if job is not None:
        job.abort()


def _observed(job: Any, bar: Any) -> Iterator[Any]:
    # Each outcome is counted before the job hands it out: the last progress call sees
    # every item in the stats.
    try:
        for value in job:
            yield value
            bar.tick(1)
    finally:
        job.close()
        bar.close()


class _MapHooks:
    """A Pool's side of a native map (core.MapJob with ledger= and hooks=): everything
    but the common path -- queueing runners, failures, retries, dead letters, the
    call's token. The job counts its items in the Ledger; these count the rest."""

    __slots__ = ("pool", "fn", "star", "retry", "deadline", "gov", "governed", "fast_retry")

    def __init__(self, pool: Pool, fn: Callable[..., Any], star: bool, retry: Retry | None,
                 deadline: float | None, token: CancelToken | None) -> None:
        self.pool = pool
        self.fn = fn
        self.star = star
        self.retry = retry
        self.deadline = deadline
        # Without a token of the call the items see the pool's (the worker's default).
        self.governed = token is not None
        self.gov = pool._state.token if token is None else CancelToken._any(pool._state.token, token)
        # A policy the runner applies by itself, without calling failed(): no backoff
        # (the item runs again at once, staying counted running) and exception classes
        # (an isinstance test). (attempts, classes), or None.
        self.fast_retry: tuple[int, tuple[type, ...]] | None = None
        if retry is not None and retry.backoff == 0.0 and retry._classes is not None:
            self.fast_retry = (retry.attempts, retry._classes)

    def enqueue(self, runner: Any) -> None:
        # The consumer's thread (it may wait for room in a bounded queue).
        pool = self.pool
        q = pool._work_queue
        if q.idle_workers <= q.qsize() and len(pool._threads) < pool._max_workers:
            pool._workers.start()
        try:
            q.put(runner)
        except core.QueueClosed:
            pool._raise_closed()

    def start_runner(self, job: Any) -> None:
        # The timer thread: never waits. A full queue: try again shortly.
        pool = self.pool
        q = pool._work_queue
        try:
            if not q.put_nowait(job.runner()):
                pool._outcomes.timer.call_at(monotonic() + _REQUEUE_DELAY, _map_kick, (job, self))
                return
        except core.QueueClosed:
            job.runner_lost()
            return
        if q.idle_workers < q.qsize() and len(pool._threads) < pool._max_workers:
            pool._workers.start()

    def closed(self) -> None:
        self.pool._raise_closed()

    def check_idle(self) -> None:
        self.pool._state.check_idle()

    def run_governed(self, job: Any) -> None:
        prev = getattr(_local, "current", None)
        _local.current = self.gov
        try:
            job.run_loop()
        finally:
            _local.current = prev

    def args(self, item: Any) -> tuple[Any, ...]:
        return item if self.star else (item,)

    def failed(self, job: Any, chunk: Any, index: int, item: Any, exc: BaseException | None,
               attempt: int) -> BaseException | bool | None:
        """An item (counted running) failed, or ran past its deadline (exc None).
        Count it; return the error to deliver, None if it is retried after its
        backoff, True if it is to run again at once (no backoff: it stays running),
        False if it was split off its runner while it ran (settled here: see lost())."""
        pool = self.pool
        st = pool._state
        ledger = st.ledger
        if exc is None:
            exc = DeadlineExceeded(f"task ran past its deadline of {self.deadline} s")
            retryable = False
        else:
            retryable = True
        gov = self.gov
        # The item saw its token cancelled and stopped: that is a cancellation.
        cancelled = isinstance(exc, CancelledError) and gov.cancelled
        retry = self.retry
        # (should_retry may run user code: not under the lock.)
        again = (retryable and not cancelled and retry is not None
                 and attempt < retry.attempts and not gov.cancelled and retry.should_retry(exc))
        delay = retry.delay(attempt) if again else 0.0  # type: ignore[union-attr]
        with st.lock:
            if not job.owns(chunk):
                return self._lost_failure(job, chunk, index, item, exc, attempt, cancelled)
            if cancelled:
                job.finish(chunk)
                if ledger.move(N_RUNNING, N_CANCELLED):
                    st.check_idle_locked()
                return exc
            if again and not ledger.collecting:
                if delay <= 0.0:
                    # No backoff: the runner calls it again now (it stays running).
                    ledger.move(N_RUNNING, N_RUNNING, N_RETRIED)
                    return True
                job.finish(chunk)
                ledger.move(N_RUNNING, N_RETRYING, N_RETRIED)
                pool._outcomes.timer.call_at(monotonic() + delay, _map_retry_due,
                                             (job, self, index, item, attempt + 1))
                return None
            job.finish(chunk)
            # The dead letter goes in before the failure is counted and delivered.
            extra = -1
            if retry is not None:
                extra = N_DEAD_LETTERED
                self._letter(item, attempt, exc)
            if ledger.move(N_RUNNING, N_FAILED, extra):
                st.check_idle_locked()
        return exc

    def _lost_failure(self, job: Any, chunk: Any, index: int, item: Any, exc: BaseException,
                      attempt: int, cancelled: bool) -> bool:
        # Under the lock: the item failed after it was split off its runner (failed()).
        st = self.pool._state
        overdue, watch = job.take_lost(chunk)
        if overdue is not None:
            # Its deadline failed it already (and wrote its dead letter).
            dst, extra = N_FAILED, -1 if self.retry is None else N_DEAD_LETTERED
        elif cancelled:
            dst, extra = N_CANCELLED, -1
        else:
            dst, extra = N_FAILED, -1
            if self.retry is not None:  # (shutdown is collecting: no retry)
                extra = N_DEAD_LETTERED
                self._letter(item, attempt, exc)
        if st.ledger.move(N_RUNNING, dst, extra, watch):
            st.check_idle_locked()
        if overdue is None:
            # (No user code runs here: a done-callback on the record's future is ours.)
            if watch is not None:
                _settle(watch.future, exc, cancelled)
            job.publish_one(index, exc, True)
        return False

    def lost(self, job: Any, chunk: Any, index: int, value: Any) -> None:
        """An item split off its runner while it ran (by its deadline, or shutdown)
        returned `value`: count it (the runner publishes nothing of it)."""
        st = self.pool._state
        with st.lock:
            overdue, watch = job.take_lost(chunk)
            if overdue is not None:
                dst, extra = N_FAILED, -1 if self.retry is None else N_DEAD_LETTERED
            else:
                dst, extra = N_SUCCEEDED, -1
            if st.ledger.move(N_RUNNING, dst, extra, watch):
                st.check_idle_locked()
        if overdue is None:
            if watch is not None:
                _settle(watch.future, value, False)
            job.publish_one(index, value, False)

    def overdue(self, item: Any, attempt: int, exc: BaseException) -> None:
        """An item's deadline passed while it runs (job.split; the pool's lock is held)."""
        if self.retry is not None:
            self._letter(item, attempt, exc)

    def _letter(self, item: Any, attempt: int, exc: BaseException) -> None:
        self.pool.dead_letters.put(DeadLetter(None, self.fn, self.args(item), {}, exc,
                                              attempt, time()))

    def watch_deadline(self, job: Any, chunk: Any) -> None:
        """A runner starts a chunk: the pool's timer looks at its running item's
        deadline (one timer entry per chunk, moved along as its items run)."""
        st = self.pool._state
        assert self.deadline is not None
        with st.lock:
            chunk.timer = self.pool._outcomes.timer.call_at(
                monotonic() + self.deadline, _map_deadline_due, (job, self, chunk))

    def chunk_done(self, chunk: Any) -> None:
        with self.pool._state.lock:
            entry, chunk.timer = chunk.timer, None
            if entry is not None:
                self.pool._outcomes.timer.cancel(entry)

    def record(self, item: Any, attempts: int) -> Any:
        fut = core.Future()
        fut.cancel()
        return Task(self.fn, self.args(item), {}, None, fut, attempts)

    def running(self, item: Any, attempt: int, overdue: BaseException | None) -> _MapItem:
        """The Ledger's record of a map item running at shutdown (its future settles
        when it returns, or failed already if its deadline passed)."""
        fut = core.Future()
        fut.set_running_or_notify_cancel()
        if overdue is not None:
            fut.set_exception(overdue)
        return _MapItem(self.fn, self.args(item), fut, attempt)


class _MapItem:
    """A map item in the Ledger's running set (a PoolTask there is another): what
    fastpool.pool._records.record() reads."""

    __slots__ = ("fn", "args", "kwargs", "opts", "future", "attempt")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], future: Any,
                 attempt: int) -> None:
        self.fn = fn
        self.args = args
        self.kwargs: dict[str, Any] = {}
        self.opts = None
        self.future = future
        self.attempt = attempt


def _settle(fut: Any, outcome: Any, cancelled: bool) -> None:
    try:
        if cancelled:
            unstart(fut)
            fut.cancel()
        elif isinstance(outcome, BaseException):
            fut.set_exception(outcome)
        else:
            fut.set_result(outcome)
    except cf.InvalidStateError:
        pass


def _map_deadline_due(entry: tuple[Any, Any, Any]) -> None:
    """The pool's timer: look at the running item of a chunk (see job.split)."""
    job, hooks, chunk = entry
    pool = hooks.pool
    st = pool._state
    exc = DeadlineExceeded(f"task ran past its deadline of {hooks.deadline} s")
    with st.lock:
        out = job.split(chunk, exc)
        if out is True or out is False:
            chunk.timer = None
            if st.ledger.watch:
                st.check_idle_locked()
        elif out >= 0.0:
            chunk.timer = pool._outcomes.timer.call_at(out, _map_deadline_due, entry)
        else:
            chunk.timer = None
    if out is True:
        hooks.start_runner(job)


def _map_retry_due(entry: tuple[Any, ...]) -> None:
    """The pool's timer: an item's backoff is over (see _MapHooks.failed)."""
    job, hooks, index, item, attempt = entry
    try:
        if job.requeue(index, item, attempt):
            hooks.start_runner(job)
    except BaseException:
        LOGGER.exception("fastpool: internal error requeueing a map item")


def _map_kick(entry: tuple[Any, Any]) -> None:
    job, hooks = entry
    hooks.start_runner(job)


def collect(state: PoolState, timer: Timer, items: list[Any]) -> list[Any]:
    """Pool shutdown (under its lock): hand back the maps' items not started (queued,
    or waiting to retry), counted not_started; `items`: what was drained from the
    queue (the maps' runners among them are dropped)."""
    records: list[Any] = []
    for job in list(state.maps):
        _hand_back(state, job.job, records)
    for entry in timer.drain(_map_retry_due):
        job_state, hooks, _, item, attempt = entry
        _hand_back(state, job_state, records)  # (a job no longer in maps: done here)
        state.ledger.move(N_RETRYING, N_NOT_STARTED)
        records.append(hooks.record(item, attempt - 1))
    for runner in items:
        if not isinstance(runner, core.PoolTask):
            runner.cancel()
    return records


def closing(state: PoolState) -> bool:
    """Whether a map's runner is counting and publishing a chunk it finished (shutdown
    waits for it, with the lock released, as for tasks in transit)."""
    return any(job.job.closing() for job in list(state.maps))


def _hand_back(state: PoolState, job_state: Any, records: list[Any]) -> None:
    hooks = job_state.hooks
    left, running = job_state.hand_back()
    for item, attempt in left:
        records.append(hooks.record(item, attempt - 1))
    # Its items still running are reported as tasks are: in the Ledger's running set
    # until they are counted (hooks.lost, hooks.failed).
    for chunk, _, item, attempt, overdue in running:
        rec = hooks.running(item, attempt, overdue)
        job_state.watch(chunk, rec)
        state.ledger.add_running(rec)


def fail(state: PoolState, timer: Timer, items: list[Any], error: BaseException) -> None:
    """The pool broke: the maps' consumers get `error`; what did not start is cancelled."""
    for runner in items:
        if not isinstance(runner, core.PoolTask):
            runner.fail(error)
    for job in list(state.maps):
        job.job.abort(error)
    for entry in timer.drain(_map_retry_due):
        entry[0].abort(error)
        state.ledger.move(N_RETRYING, N_CANCELLED)


# -- a map of tasks (rate-limited or backend pools) ------------------------------------

def _map_tasks(pool: Pool, fn: Callable[..., Any], iterables: tuple[Iterable[Any], ...],
               end: float | None, chunksize: int, size: int, ordered: bool,
               return_exceptions: bool, bar: Any) -> Iterator[Any]:
    args_iter: Iterator[Any] = zip(*iterables)
    submit = pool.submit
    # `pending` submits one call (or chunk) each time it is advanced. In flight: plain
    # futures, or (future, n) for a chunk of n calls.
    pending: Iterator[Any]
    if chunksize > 1:
        chunks = iter(lambda: list(itertools.islice(args_iter, chunksize)), [])
        pending = ((submit(_run_chunk, fn, chunk, return_exceptions), len(chunk))
                   for chunk in chunks)
    else:
        pending = (submit(fn, *args) for args in args_iter)
    # As the stdlib's map(buffersize=...): the first `buffersize` calls go in now.
    first = list(itertools.islice(pending, size))
    if ordered:
        return _ordered(first, pending, chunksize > 1, end, return_exceptions, bar)
    return _unordered(first, pending, chunksize > 1, end, return_exceptions, bar)


def _outcome(fut: Any, end: float | None, return_exceptions: bool) -> Any:
    try:
        return fut.result(None if end is None else max(0.0, end - monotonic()))
    except Exception as exc:
        if not fut.done() or not return_exceptions:
            raise  # map's own timeout, or the call's error
        return exc


def _chunk_values(value: Any, n: int) -> list[Any]:
    # A chunk's list of results, or one error (the chunk never ran) for all its calls.
    return value if isinstance(value, list) else [value] * n


def _ordered(first: list[Any], pending: Iterator[Any], chunked: bool, end: float | None,
             return_exceptions: bool, bar: Any) -> Iterator[Any]:
    fs = collections.deque(first)
    del first
    popleft, append = fs.popleft, fs.append
    try:
        while fs:
            entry = popleft()
            fut, n = entry if chunked else (entry, 0)
            del entry
            try:  # _outcome(), inlined: this loop is the per-call cost of map
                value = fut.result(None if end is None else max(0.0, end - monotonic()))
            except Exception as exc:
                if not fut.done() or not return_exceptions:
                    raise
                value = exc
            del fut
            for nxt in pending:  # the next call goes in as this one comes out
                append(nxt)
                break
            values = _chunk_values(value, n) if n else (value,)
            del value
            yield from values
            if bar is not None:
                bar.tick(len(values))
    finally:
        for entry in fs:
            (entry[0] if chunked else entry).cancel()
        if bar is not None:
            bar.close()


def _unordered(first: list[Any], pending: Iterator[Any], chunked: bool, end: float | None,
               return_exceptions: bool, bar: Any) -> Iterator[Any]:
    done: queue.SimpleQueue[Any] = queue.SimpleQueue()
    sizes: dict[Any, int] = {}  # future -> calls in it (0: one plain call)

    def track(entry: Any) -> None:
        fut, n = entry if chunked else (entry, 0)
        sizes[fut] = n
        fut.add_done_callback(done.put)

    for entry in first:
        track(entry)
    del first
    try:
        while sizes:
            try:
                fut = done.get(timeout=None if end is None else max(0.0, end - monotonic()))
            except queue.Empty:
                raise cf.TimeoutError() from None  # as the stdlib (3.10: not the builtin)
            n = sizes.pop(fut)
            for nxt in pending:
                track(nxt)
                break
            value = _outcome(fut, None, return_exceptions)
            del fut
            values = _chunk_values(value, n) if n else (value,)
            del value
            yield from values
            if bar is not None:
                bar.tick(len(values))
    finally:
        for fut in sizes:
            fut.cancel()
        if bar is not None:
            bar.close()


# -- asyncio ---------------------------------------------------------------------------

async def _aput(pool: Pool, fn: Callable[..., Any], args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Any:
    """Queue a task without blocking the event loop: poll while the queue is full."""
    delay = 0.001
    while True:
        task = pool._task(fn, args, kwargs, None, pool._retry)
        if pool._put(task, 0.0, count_rejected=False):
            return task.future
        await asyncio.sleep(delay)
        delay = min(2 * delay, 0.05)


async def asubmit(pool: Pool, fn: Callable[..., Any], args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> Any:
    fut = await _aput(pool, fn, args, kwargs)
    return await asyncio.wrap_future(fut)


def amap(pool: Pool, fn: Callable[..., Any], iterables: tuple[Any, ...], buffersize: int | None,
         ordered: bool, return_exceptions: bool) -> AsyncIterator[Any]:
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {fn!r}")
    size = _check_buffersize(pool, buffersize)
    if pool._shutdown:
        pool._raise_closed()
    if len(iterables) == 1 and hasattr(iterables[0], "__aiter__"):
        source: Any = iterables[0]
        is_async = True
    else:
        if any(hasattr(it, "__aiter__") for it in iterables):
            raise TypeError("amap() takes sync iterables, or a single async iterable")
        source = zip(*iterables)
        is_async = False
    return _amap(pool, fn, source, is_async, size, ordered, return_exceptions)


async def _amap(pool: Pool, fn: Callable[..., Any], source: Any, is_async: bool, size: int,
                ordered: bool, return_exceptions: bool) -> AsyncIterator[Any]:
    it = source.__aiter__() if is_async else iter(source)
    inflight: collections.deque[asyncio.Future[Any]] = collections.deque()
    exhausted = False
    try:
        while True:
            while not exhausted and len(inflight) < size:
                try:
                    args = (await it.__anext__(),) if is_async else next(it)
                except (StopIteration, StopAsyncIteration):
                    exhausted = True
                    break
                fut = await _aput(pool, fn, args, {})
                inflight.append(asyncio.wrap_future(fut))
            if not inflight:
                return
            if ordered:
                af = inflight[0]
                await asyncio.wait([af])
                inflight.popleft()
            else:
                done, _ = await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                af = done.pop()
                inflight.remove(af)
            if af.cancelled():
                error: BaseException | None = cf.CancelledError()
            else:
                error = af.exception()
            if error is None:
                yield af.result()
            elif return_exceptions and isinstance(error, Exception):
                yield error
            else:
                raise error
    finally:
        for af in inflight:
            af.cancel()
