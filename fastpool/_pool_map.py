"""Pool.map, Pool.amap and Pool.asubmit: streaming over a Pool with bounded memory."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures as cf
import itertools
import queue
from time import monotonic
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterable, Iterator

from .cancel import _timeout_seconds

if TYPE_CHECKING:
    from .pool import Pool
    from .stats import Stats

# A callable `progress` gets Stats at most this often (and once at the end).
PROGRESS_INTERVAL = 0.2


def _check_buffersize(pool: Pool, buffersize: Any) -> int:
    if buffersize is None:
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
             return_exceptions: bool, progress: Any) -> Iterator[Any]:
    # Everything is checked here, at the call; the generator only runs the work.
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {fn!r}")
    if isinstance(chunksize, bool) or not isinstance(chunksize, int):
        raise TypeError(f"`chunksize` must be an int, got {chunksize!r}")
    if chunksize < 1:
        raise ValueError("chunksize must be >= 1.")
    size = _check_buffersize(pool, buffersize)
    timeout = _timeout_seconds("timeout", timeout)
    end = None if timeout is None else monotonic() + timeout
    if pool._shutdown:
        pool._raise_closed()
    bar = _progress(pool, progress, iterables)
    args_iter: Iterator[Any] = zip(*iterables)
    submit = pool.submit
    # `pending` submits one call (or chunk) each time it is advanced. In flight: plain
    # futures, or (future, n) for a chunk of n calls. Per call the loops below do one
    # submit, one result() and little else: they are the whole per-item overhead.
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
