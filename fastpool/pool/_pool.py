"""The Pool façade: the public methods, each handing over to the part that does it."""

from __future__ import annotations

import logging
import signal
import threading
from typing import (TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Iterable, Iterator,
                    NoReturn, TypeVar)

from .. import _workers
from . import _map
from .._pick_core import core
from .._states import TASK_DONE
from ..cancel import CancelToken, _timeout_seconds
from ..deadletter import DeadLetterQueue
from ..executor import ThreadPoolExecutor
from ..retry import Retry
from ..stats import Stats
from ._config import check_config, check_workers
from ._groups import TaskGroup
from ._outcomes import Outcomes
from ._records import Future, PoolTask, ShutdownReport, TaskOptions, unstart
from ._scaling import Workers, in_worker_of
from ._shutdown import Shutdown
from ._signals import Signals
from ._state import PoolState
from ._submit import Submitter

_T = TypeVar("_T")
LOGGER = logging.getLogger("fastpool")


class _CoreHooks:
    """What the core calls back, by name, on `PoolTask.hooks` (see
    src/core/ledger.pxi and fastpool/_py/ledger.py), each routed to the part that does it.
    Tasks hold it, and it holds the pool: a pool with tasks in flight stays alive."""

    __slots__ = ("pool", "_run_with_options", "_not_run", "_task_failed", "_room_made",
                 "_check_idle", "_start_worker")

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        outcomes = pool._outcomes
        self._run_with_options = outcomes.run_with_options
        self._not_run = outcomes.not_run
        self._task_failed = outcomes.task_failed
        self._room_made = pool._submitter.room_made
        self._check_idle = pool._state.check_idle  # (it takes the lock)
        self._start_worker = pool._workers.start


class Pool(ThreadPoolExecutor):
    """A production worker pool (see the package docstring and README.md).

    Args:
        workers: maximum number of worker threads (default as ThreadPoolExecutor).
        min_workers: workers kept alive when idle (default 0); idle workers above it
            exit after `idle_timeout` seconds (None: never).
        queue_size: bound on queued tasks; `submit` blocks while it is full
            (None or 0: unbounded).
        retry: default Retry policy of every task (None: no retries).
        rate_limit: tasks started per second, or ``(rate, burst)``.
        copy_context: run each task in a copy of the submitter's contextvars context.
        name: prefix of the worker threads' names.
        initializer, initargs: run in each worker thread when it starts.
        backend: None (threads); "processes" or a ProcessBackend: tasks run in worker
            processes (README.md, "Running in worker processes"); or a
            dask.distributed.Client: tasks run on its cluster, `workers` bounds the
            calls in flight there (default: the cluster's threads); `initializer` and
            `copy_context` are refused (see README.md, "Running on a Dask cluster").
        dead_letter_maxlen: bound on `dead_letters` (None: unbounded); when full the
            oldest letter is dropped and counted (dead_letters.dropped, and
            stats().dead_letters_dropped).

    Timeouts and limits take seconds as int or float; inf (or anything longer than
    the OS can time, ~292 years) means no limit, as None does; NaN, negative values,
    bools and other types are refused with ValueError/TypeError at the call.

    Attributes:
        dead_letters: a DeadLetterQueue of the tasks that failed for good under a
            retry policy (see `dead_letter_maxlen`).
        name, workers, min_workers, idle_timeout: as given (resize() changes `workers`).
        token: the pool's CancelToken, cancelled when a timed shutdown gives up.
        signal_received: the signal that started a shutdown (handle_signals()), or None.
    """

    # A ThreadPoolExecutor, so that it is accepted wherever one is (asyncio's
    # set_default_executor requires one), with the attributes code in the wild reads
    # (_threads, _work_queue, _max_workers, _shutdown, _broken). Its own parts do the
    # work: the executor's __init__ is not called.
    _work_queue: Any  # a core.WorkQueue

    def __init__(self, workers: int | None = None, *, min_workers: int | None = None,
                 idle_timeout: float | None = 60.0, queue_size: int | None = None,
                 retry: Retry | None = None, rate_limit: float | tuple[float, int] | None = None,
                 copy_context: bool = False, name: str = "fastpool",
                 initializer: Callable[..., object] | None = None,
                 initargs: tuple[Any, ...] = (), backend: Any = None,
                 dead_letter_maxlen: int | None = None) -> None:
        """Start a pool (no thread yet: workers start as work comes). The parameters
        are described in the class docstring."""
        cfg = check_config(workers, min_workers, idle_timeout, queue_size, retry, rate_limit,
                           copy_context, name, initializer, initargs, backend)
        self.dead_letters = DeadLetterQueue(dead_letter_maxlen)
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        initializer, initargs = cfg.initializer, cfg.initargs  # (threads'; see PoolConfig)
        self._name = name
        self._queue_size = cfg.queue_size
        self._retry = cfg.retry
        self._copy_context = bool(copy_context)
        # As the executor's: an empty name continues the stdlib's numbering.
        self._thread_name_prefix = name or ("ThreadPoolExecutor-%d" % self._counter())  # type: ignore[attr-defined]
        self._initializer, self._initargs = initializer, initargs
        self._work_queue = queue = core.WorkQueue(cfg.queue_size)
        self._state = state = PoolState(queue, cfg.workers,
                                        cfg.pacer is not None or cfg.backend is not None)
        self._threads = state.threads  # the same set (the queue reads it: bind_workers)
        queue.bind_workers(self._threads, cfg.workers)
        # The parts, each with one job (see the package docstring).
        self._workers = Workers(self, state, cfg.min_workers, cfg.idle_timeout,
                                self._thread_name_prefix, initializer, initargs)
        self._submitter = Submitter(self, state, self._workers, self._copy_context, cfg.retry)
        self._outcomes = Outcomes(state, name, self.dead_letters, cfg.pacer, cfg.backend,
                                  self._submitter.room_made, self._workers.start_if_needed)
        self._closer = Shutdown(state, self._workers, self._outcomes)
        self._signals = Signals(state)
        self._hooks = self._submitter.hooks = _CoreHooks(self)
        _workers.register(self)

    # The executor's attributes, read from the pool's state (which owns them).
    @property
    def _max_workers(self) -> int:  # type: ignore[override]
        return self._state.max_workers

    @property
    def _shutdown(self) -> bool:  # type: ignore[override]
        return self._state.shutdown

    @property
    def _broken(self) -> str | bool:  # type: ignore[override]
        return self._state.broken

    @property
    def _shutdown_lock(self) -> threading.Lock:  # type: ignore[override]
        return self._state.lock

    # -- submitting -------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Schedule fn(*args, **kwargs); block while a bounded queue is full."""
        # The hot path: counted and queued by the native core (None: the queue is full
        # or closed, or the pool is; the slow path below waits or raises). With no
        # worker yet, put() starts one first and handles its failures.
        if self._threads and not self._copy_context:
            fut = self._state.ledger.submit(self._hooks, fn, args, kwargs, self._retry)
            if fut is not None:
                return fut  # type: ignore[no-any-return]
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        submitter = self._submitter
        task = submitter.new_task(fn, args, kwargs, None, self._retry)
        submitter.put(task, None)
        return task.future  # type: ignore[no-any-return]

    def try_submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future | None:
        """As submit(), but never block: None (counted in `rejected`) if the queue is full."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        submitter = self._submitter
        task = submitter.new_task(fn, args, kwargs, None, self._retry)
        return task.future if submitter.put(task, 0.0) else None

    def schedule(self, fn: Callable[..., Any], args: Iterable[Any] = (),
                 kwargs: dict[str, Any] | None = None, *, timeout: float | None = None,
                 deadline: float | None = None, retry: Retry | bool | None = None,
                 token: CancelToken | None = None, key: Any = None) -> Future:
        """Submit with per-task options.

        `timeout`: seconds to wait for queue space, then QueueFull. `deadline`: seconds
        the task may run: then its token is cancelled and its future fails with
        DeadlineExceeded. `retry`: a Retry overriding the pool's (False: none). `token`:
        a CancelToken; cancelled before the task starts, the task never runs and its
        future is cancelled. `key`: an id carried into dead letters and shutdown reports.
        """
        return self._submitter.schedule(fn, args, kwargs, timeout, deadline, retry, token, key)

    # (_task, _put, _raise_closed, _default_buffersize: used by _map.)
    def _task(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
              opts: TaskOptions | None, retry: Retry | None) -> PoolTask:
        return self._submitter.new_task(fn, args, kwargs, opts, retry)

    def _put(self, task: PoolTask, timeout: float | None, count_rejected: bool = True) -> bool:
        return self._submitter.put(task, timeout, count_rejected)

    def _raise_closed(self) -> NoReturn:
        self._submitter.raise_closed()

    # -- workers ----------------------------------------------------------------------

    def resize(self, workers: int) -> None:
        """Change the maximum number of workers. Surplus workers exit when idle, or after
        the task they are running if the pool is busy; new ones start as work needs them."""
        check_workers(workers)
        self._workers.resize(workers)

    def _initializer_failed(self) -> None:
        # A worker's initializer raised (see _workers.initialize_worker): the pool breaks.
        self._outcomes.fail_unstarted()

    @property
    def name(self) -> str:
        """The pool's name: its worker threads' prefix, its label in metrics."""
        return self._name

    @property
    def workers(self) -> int:
        """The maximum number of worker threads."""
        return self._state.max_workers

    @property
    def min_workers(self) -> int:
        """Workers kept alive when idle."""
        return self._workers.min_workers

    @property
    def idle_timeout(self) -> float | None:
        """Seconds an idle worker above `min_workers` waits before it exits (None: never)."""
        return self._workers.idle_timeout

    @property
    def token(self) -> CancelToken:
        """The pool's token: cancelled when shutdown stops waiting for running tasks."""
        return self._state.token

    # -- observing and shutting down ------------------------------------------------------

    def stats(self) -> Stats:
        """A consistent snapshot of the counters, with latency percentiles."""
        return self._state.stats(self._queue_size, self.dead_letters.dropped)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until nothing is queued, running or waiting to retry; the pool stays open.

        Return False if `timeout` seconds passed first."""
        timeout = _timeout_seconds("timeout", timeout)
        if in_worker_of(self):
            raise RuntimeError("join() called from a task of this pool would wait for itself")
        return self._state.wait_idle(timeout)

    def shutdown(  # type: ignore[override]  # returns the report (the base: None)
            self, wait: bool = True, *, cancel_futures: bool = False,
            timeout: float | None = None) -> ShutdownReport:
        """Stop accepting work, drain, and report what was left.

        wait=True waits for queued, running and retrying tasks -- for at most `timeout`
        seconds if given, which bounds this call: then the pool token is cancelled
        (running tasks see it through current_token()), tasks not started yet are
        cancelled, and both are returned in the ShutdownReport. The tasks still running
        are abandoned: they keep their threads until their calls return (their futures
        settle then), but interpreter exit no longer waits for them.
        cancel_futures=True hands back the queued tasks at once. wait=False returns at
        once: queued work still runs (unless cancel_futures), and the report lists only
        what was running at that moment.

        It may be called again: a later wait=True call waits for the first one to end,
        then (unless a shutdown timed out: those tasks are abandoned, it only reports)
        for the work left, and its report accounts for every task.
        """
        timeout = _timeout_seconds("timeout", timeout)
        if timeout is not None and not wait:
            raise ValueError("shutdown(timeout=...) needs wait=True")
        report = self._closer.shutdown(wait, cancel_futures, timeout, in_worker_of(self))
        self._signals.after_shutdown()
        return report

    # -- signals ------------------------------------------------------------------------

    def handle_signals(self, signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM),
                       timeout: float | None = 30.0, *, exit: bool = True) -> None:
        """Shut down gracefully on a signal, and bound how long that takes.

        First signal: shutdown(timeout=timeout) starts in the background (no new work;
        queued and running tasks get `timeout` seconds, then the pool token is
        cancelled and what is left is abandoned: interpreter exit does not wait for
        tasks that ignore their token). A second signal cuts the wait short. Once that
        shutdown has returned, with exit=True the main thread gets
        SystemExit(128 + signum) -- wherever it is, blocked in a wait included -- so
        the process exits with the shell's code for that signal (130 for SIGINT, 143
        for SIGTERM). With exit=False nothing is raised: the program carries on and
        decides (see `signal_received`, and shutdown()'s report).

        Must be called from the main thread. All the signals are checked, and all
        handlers installed, or none. The previous handlers come back when shutdown()
        is called from the main thread (leaving a `with` block does that).
        """
        self._signals.install(self, signals, timeout, exit)

    @property
    def signal_received(self) -> int | None:
        """The signal that started a shutdown through handle_signals(), or None."""
        return self._signals.received

    # -- groups, map, asyncio ---------------------------------------------------------

    def group(self, fail_fast: bool = False) -> TaskGroup:
        """A TaskGroup: leaving its `with` block waits for its tasks."""
        return TaskGroup(self, fail_fast)

    def _default_buffersize(self) -> int:
        if self._queue_size:
            return 2 * self._queue_size
        # Unbounded queue: enough calls in flight that the consumer rarely waits on the
        # next one while the workers starve (32 for 4 workers made map 2x slower per call:
        # a wake-up round trip every few items), still small in memory.
        return max(256, 8 * self._state.max_workers)

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any],
            timeout: float | None = None, chunksize: int = 1, buffersize: int | None = None,
            ordered: bool = True, return_exceptions: bool = False,
            progress: bool | Callable[[Stats], object] = False,
            retry: Retry | bool | None = None, deadline: float | None = None,
            token: CancelToken | None = None) -> Iterator[Any]:
        """Lazy, memory-bounded map: at most `buffersize` calls in flight.

        Results in input order (ordered=False: as they finish). return_exceptions=True
        yields a failed call's exception instead of raising it. `chunksize`: at least
        that many calls per hand-off to a worker (more while calls are fast).
        `progress`: a callable receiving Stats about every 0.2 s and at the end, or
        True for a tqdm bar (needs tqdm). Each call is counted in stats() (before its
        outcome is yielded), and is retried, dead-lettered, limited by `deadline` (its
        outcome after that many seconds of running is DeadlineExceeded) and cancelled
        by `token` (calls not started when it is cancelled raise CancelledError at
        their place) as schedule()'s tasks are. `retry`: None for the pool's, False
        for none.
        """
        return _map.map_iter(self, fn, iterables, timeout, chunksize, buffersize, ordered,
                                  return_exceptions, progress, retry, deadline, token)

    def asubmit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Awaitable[_T]:
        """Awaitable submit: waits (without blocking the loop) for queue space, then the result."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        if self._shutdown:
            self._raise_closed()
        return _map.asubmit(self, fn, args, kwargs)

    def amap(self, fn: Callable[..., Any], *iterables: Any, buffersize: int | None = None,
             ordered: bool = True, return_exceptions: bool = False) -> AsyncIterator[Any]:
        """Async-iterable map for asyncio code: lazy, bounded, ordered or not.

        The input may be sync iterables, or one async iterable."""
        return _map.amap(self, fn, iterables, buffersize, ordered, return_exceptions)

    # -- fork ---------------------------------------------------------------------------

    def _after_fork_child(self) -> None:
        # Only the forking thread survives: the child's pool starts empty, each part
        # resetting itself. Whatever the parent had queued, running or waiting to retry
        # is cancelled here (the parent still owns it), so nothing in the child waits
        # for it for ever.
        tasks = self._state.reset_after_fork() + self._outcomes.reset_after_fork()
        self._closer.reset_after_fork()
        self._signals.reset_after_fork()
        for task in tasks:
            core.forget_lock_after_fork(task)  # see _workers.reset_future_after_fork
            fut = task.future
            _workers.reset_future_after_fork(fut)
            task.state = TASK_DONE
            unstart(fut)
            try:
                fut.cancel()
            except BaseException:
                LOGGER.exception("fastpool: cancelling %r after fork", fut)

