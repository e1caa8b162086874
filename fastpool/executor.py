"""fastpool.ThreadPoolExecutor: a drop-in for concurrent.futures.ThreadPoolExecutor.

Same signature, defaults, names, messages and semantics as the stdlib of the running
Python (CPython Lib/concurrent/futures/thread.py), on fastpool's native queue and worker
loop. The only intended differences are two stdlib bugs it fixes (see _future.py).
"""

from __future__ import annotations

import collections
import itertools
import math
import sys
import threading
import time
import weakref
from concurrent.futures import _base
from concurrent.futures import thread as _thread
from typing import Any, Callable, Iterable, Iterator, NoReturn

from . import _workers
from ._pick_core import core
from ._future import worker_local

__all__ = ["ThreadPoolExecutor", "BrokenThreadPool"]

BrokenThreadPool = _thread.BrokenThreadPool
Future = core.Future
WorkItem = core.WorkItem
QueueClosed = core.QueueClosed

# Interpreter exit, fork hooks, default sizes, initializer: shared with Pool.
# (`_threads_queues`: the name tests and tools know, the same dict.)
_threads_queues = _workers.threads_queues
_default_max_workers = _workers.default_max_workers
_initialize_worker = _workers.initialize_worker


def _worker_limit(max_workers: Any) -> int:
    """The worker count the native queue compares with, for any `max_workers` the
    stdlib accepts (it only checks `<= 0`; 1.5, 2**63, inf, nan, Fraction pass).

    Never below the real limit -- the number of threads n for which
    `n < max_workers` holds -- since the queue's fast submit queues work without
    starting a worker once that many run. Above it only sends submits down the
    Python path, which compares with max_workers itself (sys.maxsize for what has no
    integer ceiling: inf, nan, types without __ceil__)."""
    if type(max_workers) is int:
        return min(max_workers, sys.maxsize)
    try:
        return min(int(math.ceil(max_workers)), sys.maxsize)
    except (TypeError, ValueError, OverflowError):
        return sys.maxsize


def _submit_overridden(executor: Any) -> bool:
    """True when `executor.submit` is not ThreadPoolExecutor.submit: redefined by a
    subclass, or set on the instance. map() must then go through it, as the stdlib's
    does (tqdm's thread_map counts its progress there, subclasses carry context)."""
    return type(executor).submit is not ThreadPoolExecutor.submit or "submit" in vars(executor)


# Python 3.14's Executor.map takes buffersize; before, only fastpool's own map does.
_STDLIB_BUFFERSIZE = "buffersize" in _base.Executor.map.__code__.co_varnames


def _map_via_submit(executor: Any, fn: Callable[..., Any], iterables: tuple[Iterable[Any], ...],
                    timeout: float | None, chunksize: int,
                    buffersize: int | None) -> Iterator[Any]:
    """The running stdlib's Executor.map, which calls executor.submit per item; with a
    buffersize on a stdlib that has none, the same as Python 3.14's."""
    if buffersize is None:
        return _base.Executor.map(executor, fn, *iterables, timeout=timeout,
                                  chunksize=chunksize)
    if _STDLIB_BUFFERSIZE:
        return _base.Executor.map(executor, fn, *iterables, timeout=timeout,  # type: ignore[call-arg, unused-ignore]  # 3.14+ only
                                  chunksize=chunksize, buffersize=buffersize)
    if timeout is not None:
        end_time = timeout + time.monotonic()
    args_iter = zip(*iterables)
    fs = collections.deque(executor.submit(fn, *args)
                           for args in itertools.islice(args_iter, buffersize))
    # Weak, so that the executor can be collected while the iterator lives.
    executor_ref = weakref.ref(executor)
    del executor

    def result_iterator() -> Iterator[Any]:
        try:
            fs.reverse()
            while fs:
                owner = executor_ref()
                if owner is not None:
                    args = next(args_iter, None)
                    if args is not None:
                        fs.appendleft(owner.submit(fn, *args))
                    del owner
                # Careful not to keep a reference to the popped future.
                if timeout is None:
                    yield _result_or_cancel(fs.pop())
                else:
                    yield _result_or_cancel(fs.pop(), end_time - time.monotonic())
        finally:
            for future in fs:
                future.cancel()

    return result_iterator()


def _result_or_cancel(fut: Any, timeout: float | None = None) -> Any:
    # As the stdlib's (3.12+): cancel on error, and drop the future before returning.
    try:
        try:
            return fut.result(timeout)
        finally:
            fut.cancel()
    finally:
        del fut


def _worker(executor_reference: weakref.ref[ThreadPoolExecutor], work_queue: Any,
            initializer: Callable[..., object] | None, initargs: tuple[Any, ...],
            context: Any = None) -> None:
    if context is None:
        if _workers.initialize_worker(executor_reference, initializer, initargs):
            core.run_worker(work_queue)
        return
    # A worker context from 3.14's prepare_context hook (InterpreterPoolExecutor's runs
    # each task in the worker's own interpreter): set up, used and finalized as the stdlib.
    if not _workers.initialize_worker(executor_reference, context.initialize, ()):
        return
    worker_local.context = context
    try:
        core.run_worker(work_queue)
    finally:
        context.finalize()


def _run_in_worker_context(task: Any) -> Any:
    # What a task submitted to an executor with its own prepare_context runs: the task,
    # as resolved at submit time, by the context of the worker that took it.
    return worker_local.context.run(task)


# 3.14's default prepare_context: while a class keeps it, tasks run as they are.
_STDLIB_PREPARE_CONTEXT = getattr(getattr(_thread.ThreadPoolExecutor, "prepare_context", None),
                                  "__func__", None)


class ThreadPoolExecutor(_thread.ThreadPoolExecutor):
    """Drop-in replacement for concurrent.futures.ThreadPoolExecutor.

    Args:
        max_workers: The maximum number of threads that can be used to
            execute the given calls (default as the running stdlib).
        thread_name_prefix: An optional name prefix to give our threads.
        initializer: A callable used to initialize worker threads.
        initargs: A tuple of arguments to pass to the initializer.
    """

    # Same names as the stdlib's attributes (code in the wild reads them), other types:
    # the queue is fastpool's, and _broken holds the reason string once broken.
    _work_queue: Any
    _broken: str | bool  # type: ignore[assignment]
    # 3.14's typeshed no longer declares _initializer on the base class.
    _initializer: Callable[..., object] | None  # type: ignore[assignment, unused-ignore]
    # The worker-context factory when a subclass overrides 3.14's prepare_context hook
    # (InterpreterPoolExecutor); None on the fast path, where tasks run as they are.
    _worker_context: Callable[[], Any] | None = None

    # The running Python's signature: 3.14 added **ctxkwargs (for prepare_context).
    if sys.version_info >= (3, 14):
        def __init__(self, max_workers: int | None = None, thread_name_prefix: str = "",
                     initializer: Callable[..., object] | None = None,
                     initargs: tuple[Any, ...] = (), **ctxkwargs: Any) -> None:
            self._setup(max_workers, thread_name_prefix, initializer, initargs, ctxkwargs)
    else:
        def __init__(self, max_workers: int | None = None, thread_name_prefix: str = "",
                     initializer: Callable[..., object] | None = None,
                     initargs: tuple[Any, ...] = ()) -> None:
            self._setup(max_workers, thread_name_prefix, initializer, initargs, None)

    def _setup(self, max_workers: int | None, thread_name_prefix: str,
               initializer: Callable[..., object] | None, initargs: tuple[Any, ...],
               ctxkwargs: dict[str, Any] | None) -> None:
        if max_workers is None:
            max_workers = _workers.default_max_workers()
        if max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if ctxkwargs is None:
            if initializer is not None and not callable(initializer):
                raise TypeError("initializer must be a callable")
        else:
            # As the 3.14 stdlib: the class's prepare_context (which also checks the
            # initializer) gives the worker-context factory and the task resolver.
            (self._create_worker_context,
             self._resolve_work_item_task,
             ) = type(self).prepare_context(initializer, initargs, **ctxkwargs)  # type: ignore[attr-defined, arg-type, unused-ignore]
            if type(self).prepare_context.__func__ is not _STDLIB_PREPARE_CONTEXT:  # type: ignore[attr-defined, unused-ignore]
                self._worker_context = self._create_worker_context
                initializer, initargs = None, ()  # the worker context runs it
        self._max_workers = max_workers
        self._work_queue = self._make_queue()
        self._threads: set[threading.Thread] = set()
        # The queue reads the live thread set: its submit() knows when to ask for more.
        self._work_queue.bind_workers(self._threads, _worker_limit(max_workers))
        self._broken = False
        self._shutdown = False
        self._shutdown_lock = threading.Lock()
        # Shares the stdlib's counter, so default names continue its numbering.
        self._thread_name_prefix = thread_name_prefix or ("ThreadPoolExecutor-%d" % self._counter())  # type: ignore[attr-defined]
        self._initializer = initializer
        self._initargs = initargs
        # Live map() jobs, so shutdown(cancel_futures=True) can cancel their unstarted items.
        self._map_jobs: weakref.WeakSet[Any] = weakref.WeakSet()
        _workers.register(self)

    __init__.__doc__ = _thread.ThreadPoolExecutor.__init__.__doc__

    def _broken_error(self) -> BaseException:
        # 3.14: the class's BROKEN (BrokenInterpreterPool for InterpreterPoolExecutor).
        broken: type[BrokenThreadPool] = getattr(self, "BROKEN", BrokenThreadPool)
        return broken(self._broken)

    def _make_queue(self) -> Any:
        return core.WorkQueue()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        # The common case in one native call; None when a worker must start first or
        # the queue is closed: _enqueue does that, and raises what the stdlib raises.
        if self._worker_context is not None:
            task = self._resolve_work_item_task(fn, args, kwargs)  # type: ignore[attr-defined, unused-ignore]
            fn, args, kwargs = _run_in_worker_context, (task,), {}
        f = self._work_queue.submit(fn, args, kwargs)
        if f is None:
            f = Future()
            self._enqueue(WorkItem(f, fn, args, kwargs))
        return f  # type: ignore[no-any-return]

    submit.__doc__ = _base.Executor.submit.__doc__

    def _enqueue(self, item: Any) -> None:
        # No lock on this path: shutdown closes the queue after setting the flags, so a
        # put that fails tells us which error to raise, and one that succeeds is run.
        q = self._work_queue
        # Start a worker unless an idle one is left for this item -- before the item is
        # queued, so that when none can start at all (out of OS threads) submit raises
        # instead of queueing work nobody will run.
        started = False
        n = len(self._threads)
        if _workers.needs_worker(q, self._threads, self._max_workers, pending=1):
            self._adjust_thread_count()
            started = len(self._threads) > n
        try:
            q.put(item)
        except QueueClosed:
            if started and self._broken and not self._shutdown:
                # The worker this call started failed its initializer before the item
                # was queued. The stdlib queues first, so there this task's future fails
                # with BrokenThreadPool rather than submit raising: keep that.
                item.fail(self._broken_error())
                return
            self._raise_closed()

    def _raise_closed(self) -> NoReturn:
        _workers.raise_closed(self._broken_error() if self._broken else None, self._shutdown)

    def _adjust_thread_count(self) -> None:
        with self._shutdown_lock:
            if self._shutdown or self._broken:
                return
            num_threads = len(self._threads)
            # The stdlib's comparison, so that every max_workers it accepts (nan
            # included) starts the same number of threads.
            if not num_threads < self._max_workers:
                return
            if _workers.interpreter_exiting():
                self._raise_closed()
            q = self._work_queue

            # When the executor gets garbage collected, the weakref callback closes the
            # queue: workers finish what is queued, then exit.
            def weakref_cb(_: object, q: Any = q) -> None:
                q.close()

            _workers.start_worker(
                self._threads, q, "%s_%d" % (self._thread_name_prefix or self, num_threads),
                _worker,
                (weakref.ref(self, weakref_cb), q, self._initializer, self._initargs,
                 self._worker_context and self._worker_context()))

    def _initializer_failed(self) -> None:
        with self._shutdown_lock:
            self._broken = ("A thread initializer failed, the thread pool "
                            "is not usable anymore")
            self._work_queue.close()
            # Drain work queue and mark pending futures failed
            for item in self._work_queue.drain():
                item.fail(self._broken_error())

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1, buffersize: int | None = None) -> Iterator[Any]:
        """Returns an iterator equivalent to map(fn, iter).

        As the stdlib: the inputs are all taken now, in the calling thread, unless
        `buffersize` is given, in which case at most about `buffersize` calls are in
        flight and the input is consumed lazily (the Python 3.14 behaviour, offered on
        every version). Results come in input order; `timeout` counts from this call;
        what has not started is cancelled when the iterator is closed, dropped or
        raises. Unlike the stdlib there is no Future per item: workers take the inputs
        in chunks sized to how long each call takes (`chunksize` is the smallest).
        Where `submit` is overridden (by a subclass or on the instance), map goes
        through it, one call per item, exactly as the stdlib's.

        The iterator does not keep the executor alive: if the executor is collected,
        the calls already submitted still run and are yielded; with `buffersize`, no
        further inputs are taken then and the iterator ends (as the stdlib's).
        """
        if self._worker_context is not None:
            # Tasks go through submit, resolved by the class's prepare_context (3.14).
            return super().map(fn, *iterables, timeout=timeout, chunksize=chunksize,
                               buffersize=buffersize)  # type: ignore[call-arg, unused-ignore]
        if buffersize is not None and not isinstance(buffersize, int):
            raise TypeError("buffersize must be an integer or None")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
        if _submit_overridden(self):
            return _map_via_submit(self, fn, iterables, timeout, chunksize, buffersize)
        if len(iterables) == 1:
            inputs, star = iterables[0], False
        else:
            inputs, star = zip(*iterables), True
        # A weak reference to _enqueue: the job must not keep the executor alive.
        job = core.MapJob(fn, inputs, weakref.WeakMethod(self._enqueue),
                          _worker_limit(self._max_workers), star=star, buffersize=buffersize,
                          chunksize=max(1, chunksize), timeout=timeout)
        self._map_jobs.add(job)
        return job

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._shutdown_lock:
            self._shutdown = True
            self._work_queue.close()
            if cancel_futures:
                # Workers may still take some of what is queued; the rest never runs.
                for item in self._work_queue.drain():
                    item.cancel()
                for job in list(self._map_jobs):
                    job.abort()
        if wait:
            me = threading.current_thread()
            for t in list(self._threads):
                # A task shutting down its own pool must not join itself.
                if t is not me:
                    t.join()

    shutdown.__doc__ = _base.Executor.shutdown.__doc__

    def _after_fork_child(self) -> None:
        # Only the forking thread exists in the child: the workers are gone. What was
        # queued belongs to the parent (which still runs it); here it is cancelled so
        # nothing in the child waits for it forever. The executor stays usable.
        self._shutdown_lock = threading.Lock()
        self._threads.clear()
        for item in self._work_queue._after_fork_child():
            core.forget_lock_after_fork(item)  # see _workers.reset_future_after_fork
            fut = getattr(item, "future", None)
            if fut is not None:
                _workers.reset_future_after_fork(fut)
                fut.cancel()
