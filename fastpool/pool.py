"""fastpool.Pool: the production pool.

A ThreadPoolExecutor (so it drops in wherever one is accepted, asyncio's default
executor included) with backpressure, retries, dead letters, cancellation tokens and
deadlines, a timed shutdown that hands back what it did not run, auto-scaling, rate
limiting, task groups, a streaming map and live stats.

How the bookkeeping stays exact: every task is a `core.PoolTask` with a `state`, and
every change of state moves its counters in one step (`core.Ledger.move`, atomic), the
slow paths doing so under the pool's lock. The common task (no per-task options) is
submitted, run and counted by the native core without that lock (see the Ledger in
src/_core.pyx). Futures are settled with their public methods outside that lock (they
run done-callbacks, i.e. user code); a task whose future another thread could also
settle (a deadline) is first claimed under the lock (SETTLING, still counted where it
was) and counted once settled. The queue is the only other owner of a task: whoever
takes it out (a worker, or shutdown draining) moves it on. A task is in exactly one of
queued / running / retrying / succeeded / failed / cancelled / not_started at every
instant, so `stats()` always adds up; shutdown waits for tasks in transit between the
queue and the lock before it reports.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import math
import os
import signal
import sys
import threading
import weakref
from concurrent.futures import CancelledError, _base
from dataclasses import dataclass, field
from time import monotonic, sleep, time
from typing import (Any, AsyncIterator, Awaitable, Callable, Iterable, Iterator, NamedTuple,
                    NoReturn, TypeVar)

from . import executor as _executor
from ._compat import core
from ._dask import DaskBackend  # imports no dask: see fastpool/_dask.py
from ._timer import Timer
from .cancel import CancelToken, _local, _timeout_seconds
from .deadletter import DeadLetter, DeadLetterQueue
from .errors import DeadlineExceeded, QueueFull
from .executor import BrokenThreadPool, ThreadPoolExecutor
from .retry import Retry
from .stats import Stats, percentiles

_T = TypeVar("_T")

__all__ = ["Pool", "Task", "ShutdownReport", "TaskGroup"]

Future = core.Future
InvalidStateError = _base.InvalidStateError

LOGGER = logging.getLogger("fastpool")
QueueClosed = core.QueueClosed

# Task states (see the module docstring).
QUEUED, RUNNING, RETRY, SETTLING, DONE, ABANDONED, OVERDUE = (
    core.TASK_QUEUED, core.TASK_RUNNING, core.TASK_RETRY, core.TASK_SETTLING, core.TASK_DONE,
    core.TASK_ABANDONED, core.TASK_OVERDUE)
# Ledger counters a task moves between (OUTSIDE: not submitted).
OUTSIDE, N_QUEUED, N_RUNNING = core.OUTSIDE, core.N_QUEUED, core.N_RUNNING
N_RETRYING = core.N_RETRYING
N_SUCCEEDED, N_FAILED, N_CANCELLED = core.N_SUCCEEDED, core.N_FAILED, core.N_CANCELLED
N_NOT_STARTED, N_RETRIED = core.N_NOT_STARTED, core.N_RETRIED
N_DEAD_LETTERED, N_REJECTED = core.N_DEAD_LETTERED, core.N_REJECTED
PUT_OK, PUT_FULL, PUT_CLOSED = core.PUT_OK, core.PUT_FULL, core.PUT_CLOSED
clock = core.clock

_PENDING = _base.PENDING
_RUNNING = _base.RUNNING

# A retry that finds the bounded queue full tries again this much later (the timer
# thread never blocks: it also runs deadlines).
_REQUEUE_DELAY = 0.005
# Idle workers look at the pool at least this often (idle retirement, resize down).
_MAX_IDLE_POLL = 1.0
# A bounded queue allocates its slots up front (16 bytes each: 256 MiB at this size);
# larger bounds would fail to allocate, or worse, succeed and exhaust memory later.
MAX_QUEUE_SIZE = 1 << 24
# A producer waiting for room looks again at least this often (it is woken when a
# worker takes a task; this is the backstop).
_ROOM_POLL = 0.1


class _Refused(Exception):
    """_put: the pool closed (raised, then turned into the closed error)."""


# -- futures --------------------------------------------------------------------------
# Futures are settled with their public methods (which run the done callbacks, i.e.
# user code) *outside* the pool lock: under the lock a task is first claimed (state
# SETTLING, still counted where it was), then settled, then committed (counters moved).
# One liberty is taken: a RUNNING future is written by nobody but the pool (cancel()
# refuses it), so a task that goes back to wait for a retry can return its future to
# PENDING -- and the caller can cancel() it while it waits.

def _unstart(fut: Any) -> None:
    if fut._state == _RUNNING:
        fut._state = _PENDING


# -- public records --------------------------------------------------------------------

class Task(NamedTuple):
    """A task handed back by shutdown: enough to persist it or submit it again."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    key: Any
    future: Future
    attempts: int = 0  # attempts already made (0: it never ran)


@dataclass(frozen=True, repr=False)
class ShutdownReport:
    """What shutdown() left: `completed` tasks (succeeded, failed or cancelled), the
    ones it cancelled before they started, and the ones still running when it returned.
    With wait=True, ``completed + len(not_started) + len(still_running)`` equals the
    number of tasks ever submitted.

    A task in `still_running` was running at that instant and may still finish (or has
    finished by the time you look): its `future` settles when it does, so check
    ``task.future.done()`` before running it again. A task whose deadline passed is
    listed there while its call still runs; its future already failed with
    DeadlineExceeded, but the call's effects may still happen."""

    completed: int
    not_started: list[Task] = field(default_factory=list)
    still_running: list[Task] = field(default_factory=list)
    timed_out: bool = False

    def __repr__(self) -> str:
        # A summary: the tasks themselves can be tens of thousands (see the lists).
        return (f"ShutdownReport(completed={self.completed}, "
                f"not_started={len(self.not_started)}, "
                f"still_running={len(self.still_running)}, timed_out={self.timed_out})")


# -- the task --------------------------------------------------------------------------

class _Opts:
    """The rarely used per-task options: absent (None) on the fast path."""

    __slots__ = ("key", "token", "deadline", "ctx", "gov", "dl_entry", "cb_handle", "overdue")

    def __init__(self, key: Any = None, token: CancelToken | None = None,
                 deadline: float | None = None, ctx: contextvars.Context | None = None) -> None:
        self.key = key
        self.token = token
        self.deadline = deadline
        self.ctx = ctx
        self.gov: CancelToken | None = None  # the token current_token() returns
        self.dl_entry: list[Any] | None = None
        self.cb_handle: int | None = None
        self.overdue: BaseException | None = None  # the DeadlineExceeded of an OVERDUE task


def _cancel_future(fut: Future) -> Callable[[CancelToken], object]:
    return lambda _token: fut.cancel()


# A Pool task: core.PoolTask (fn, args, kwargs, future, pool, opts, retry, attempt,
# state, t_queued). Without options its run() is native (PoolTask.run_plain); with
# options or a rate limit it calls Pool._run_slow.
_Task = core.PoolTask


def _record(task: _Task, running: bool) -> Task:
    # `running`: said by the caller, not read from task.state, which the task's worker
    # may be changing right now (a data race without the GIL).
    opts = task.opts
    attempts = task.attempt if running else task.attempt - 1
    return Task(task.fn, task.args, task.kwargs, None if opts is None else opts.key,
                task.future, attempts)


class _Pacer:
    """Token bucket (as GCRA): `burst` starts at once, then one per 1/rate seconds."""

    def __init__(self, rate: float, burst: int) -> None:
        self._interval = 1.0 / rate
        self._slack = (min(burst, 1 << 53) - 1) * self._interval
        self._lock = threading.Lock()
        self._tat = monotonic()  # theoretical arrival time of the next start

    def reserve(self) -> float:
        """Take the next start slot; return how long to wait for it."""
        with self._lock:
            now = monotonic()
            tat = self._tat if self._tat > now else now
            self._tat = tat + self._interval
            return tat - now - self._slack


def _rate_limit(rate_limit: Any) -> _Pacer | None:
    if rate_limit is None:
        return None
    burst: Any = 1
    rate = rate_limit
    if isinstance(rate_limit, tuple):
        if len(rate_limit) != 2:
            raise ValueError(f"`rate_limit` must be a rate or (rate, burst), got {rate_limit!r}")
        rate, burst = rate_limit
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise TypeError(f"`rate_limit` must be a number of tasks per second, got {rate!r}")
    if isinstance(burst, bool) or not isinstance(burst, int):
        raise TypeError(f"rate_limit burst must be an int, got {burst!r}")
    if burst < 1:
        raise ValueError(f"rate_limit burst must be >= 1, got {burst!r}")
    try:
        rate = float(rate)
    except OverflowError:  # an int too big for a float
        rate = math.inf
    if not rate > 0:
        raise ValueError(f"`rate_limit` must be > 0, got {rate!r}")
    if rate == math.inf:
        return None  # no limit
    # The wait between two starts must be one the OS can time (~292 years): a slower
    # rate would overflow the waits, so it is refused here rather than fail a task.
    if 1.0 / rate >= threading.TIMEOUT_MAX:
        raise ValueError(f"`rate_limit` must be >= {1.0 / threading.TIMEOUT_MAX:.3g} tasks "
                         f"per second, got {rate!r}")
    return _Pacer(rate, burst)


class _IdleClock:
    __slots__ = ("since", "last")

    def __init__(self) -> None:
        self.since = 0.0
        self.last: float | None = None


def _pool_worker(pool_ref: weakref.ref[Pool], queue: Any, initializer: Callable[..., object] | None,
                 initargs: tuple[Any, ...], poll: float, token: CancelToken) -> None:
    _local.token = token
    _local.pool_ref = pool_ref
    if not _executor._initialize_worker(pool_ref, initializer, initargs):
        return
    me = threading.current_thread()
    clock = _IdleClock()

    def on_idle() -> bool:
        pool = pool_ref()
        return True if pool is None else pool._retire(me, clock, poll)

    while True:
        if core.run_worker(queue, poll, on_idle):
            return
        # Retired. A submitter may have seen this worker idle and started none: if work
        # is waiting, come back (see Pool._put for the other half of this handshake).
        pool = pool_ref()
        if pool is None or not pool._rejoin(me):
            return
        del pool


def _fresh_event(event: threading.Event) -> threading.Event:
    new = threading.Event()
    if event.is_set():
        new.set()
    return new


def _in_worker_of(pool: Pool) -> bool:
    ref = getattr(_local, "pool_ref", None)
    return ref is not None and ref() is pool


_UNCATCHABLE = {getattr(signal, n) for n in ("SIGKILL", "SIGSTOP") if hasattr(signal, n)}
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _inside_fastpool(frame: Any) -> bool:
    """Whether the main thread was interrupted inside fastpool's own code (waiting on a
    future excepted: that is where a program usually is)."""
    name = frame.f_code.co_filename
    return name.startswith(_PACKAGE_DIR) and not name.endswith("_future.py")


class _Signals:
    """What handle_signals() shares between its handler, its watcher thread and the
    main thread's shutdown()."""

    def __init__(self, exit: bool) -> None:
        self.exit = exit
        self.count = 0
        self.signum: int | None = None  # the first signal received
        self.first = threading.Event()  # a signal came (or shutdown ran without one)
        self.watcher_done = threading.Event()
        self.exit_due = False  # the shutdown is over: the handler raises SystemExit
        self.exit_raised = False
        self.handler: Any = None
        self.previous: dict[int, Any] | None = None

    def deliver_exit(self) -> None:
        """Watcher thread: have the main thread raise SystemExit, through the handler
        (a signal interrupts a blocking wait there; nothing else does)."""
        self.exit_due = True
        kill = getattr(signal, "pthread_kill", None)
        main = threading.main_thread().ident
        while not self.exit_raised and self.previous is not None and main is not None:
            assert self.signum is not None
            if kill is not None:
                kill(main, self.signum)
            else:  # Windows: cannot interrupt a wait, at least not lose the exit
                import _thread
                _thread.interrupt_main(signal.Signals(self.signum))
            sleep(0.05)
            if not threading.main_thread().is_alive():
                return

    def restore(self) -> None:
        previous, self.previous = self.previous, None
        for sig, prev in (previous or {}).items():
            if signal.getsignal(sig) is self.handler:
                signal.signal(sig, prev if prev is not None else signal.SIG_DFL)


# -- the pool ----------------------------------------------------------------------------

class Pool(ThreadPoolExecutor):
    _work_queue: Any  # a core.WorkQueue
    """A production worker pool (see the module docstring and README.md).

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
    """

    def __init__(self, workers: int | None = None, *, min_workers: int | None = None,
                 idle_timeout: float | None = 60.0, queue_size: int | None = None,
                 retry: Retry | None = None, rate_limit: float | tuple[float, int] | None = None,
                 copy_context: bool = False, name: str = "fastpool",
                 initializer: Callable[..., object] | None = None,
                 initargs: tuple[Any, ...] = (), backend: Any = None,
                 dead_letter_maxlen: int | None = None) -> None:
        dask: Any = None  # a DaskBackend or a ProcessBackend: call(), default_workers()
        if isinstance(backend, str) or getattr(backend, "_fastpool_processes", False):
            from ._procbackend import process_backend  # imports multiprocessing
            dask = process_backend(backend, initializer, initargs, copy_context, name)
            initializer, initargs = None, ()  # run in each worker process, not thread
        elif backend is not None:
            dask = DaskBackend(backend)
            # Both would run in the local dispatcher threads, not where the tasks run.
            if initializer is not None:
                raise ValueError("`initializer` cannot run on Dask workers from here: use "
                                 "client.register_plugin() (or register_worker_callbacks)")
            if copy_context:
                raise ValueError("`copy_context=True` cannot carry contextvars to Dask workers")
        if workers is None:
            workers = (_executor._default_max_workers() if dask is None
                       else dask.default_workers())
        if isinstance(workers, bool) or not isinstance(workers, int):
            raise TypeError(f"`workers` must be an int, got {workers!r}")
        if workers < 1:
            raise ValueError(f"`workers` must be >= 1, got {workers}")
        if workers > sys.maxsize:
            raise ValueError(f"`workers` must be <= sys.maxsize, got {workers}")
        if min_workers is None:
            min_workers = 0
        if isinstance(min_workers, bool) or not isinstance(min_workers, int):
            raise TypeError(f"`min_workers` must be an int, got {min_workers!r}")
        if not 0 <= min_workers <= workers:
            raise ValueError(f"`min_workers` must be between 0 and workers ({workers}), "
                             f"got {min_workers}")
        idle_timeout = _timeout_seconds("idle_timeout", idle_timeout)
        if queue_size is None:
            queue_size = 0
        if isinstance(queue_size, bool) or not isinstance(queue_size, int):
            raise TypeError(f"`queue_size` must be an int or None, got {queue_size!r}")
        if queue_size < 0:
            raise ValueError(f"`queue_size` must be >= 0, got {queue_size}")
        if queue_size > MAX_QUEUE_SIZE:
            raise ValueError(f"`queue_size` must be <= {MAX_QUEUE_SIZE} (None: unbounded), "
                             f"got {queue_size}")
        if retry is not None and not isinstance(retry, Retry):
            raise TypeError(f"`retry` must be a Retry or None, got {retry!r}")
        if not isinstance(name, str):
            raise TypeError(f"`name` must be a str, got {name!r}")
        pacer = _rate_limit(rate_limit)
        dead_letters = DeadLetterQueue(dead_letter_maxlen)
        self._queue_size = queue_size
        super().__init__(workers, name, initializer, initargs)
        self._min_workers = min_workers
        self._idle_timeout = idle_timeout
        self._idle_poll = min(idle_timeout or _MAX_IDLE_POLL, _MAX_IDLE_POLL) or 1e-3
        self._retry = retry
        self._pacer = pacer
        self._backend = dask
        self._copy_context = bool(copy_context)
        self._name = name
        self._thread_ids = itertools.count()
        self.dead_letters = dead_letters
        self._token = CancelToken()
        self._stop = threading.Event()  # set when shutdown starts handing work back
        self._hurry = threading.Event()  # a second signal: stop draining now
        self._timer = Timer(f"{name}-timer")
        self._reset_state()

    def _reset_state(self) -> None:
        self._lock = threading.Lock()
        self._shutdown_lock = self._lock  # the base class's name for it
        self._cond = threading.Condition(self._lock)
        self._room = threading.Condition(self._lock)  # producers waiting for queue room
        self._close_when_idle = False
        # The counters, the running tasks, the latency samples, and the flags the
        # native fast path reads (closed, collecting, watch): see core.Ledger.
        # A slow ledger sends every task through _run_slow (never the native run_plain):
        # rate-limited tasks wait for their slot there, and a backend's calls go out there.
        self._ledger = core.Ledger(self._work_queue,
                                   self._pacer is not None or self._backend is not None)
        self._late: list[_Task] = []  # handed back by workers/timer while collecting
        self._handed_back: list[Task] = []  # not_started, over every shutdown() call
        self._gave_up = False  # a shutdown timed out: what still runs is abandoned
        self._shutdown_done: threading.Event | None = None
        self._signals: _Signals | None = None

    def _make_queue(self) -> Any:
        return core.WorkQueue(self._queue_size)

    # -- submitting -------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Schedule fn(*args, **kwargs); block while a bounded queue is full."""
        # The hot path: counted and queued by the native core (None: the queue is full
        # or closed, or the pool is; the slow path below waits or raises). With no
        # worker yet, _put starts one first and handles its failures.
        if self._threads and not self._copy_context:
            fut = self._ledger.submit(self, fn, args, kwargs, self._retry)
            if fut is not None:
                return fut  # type: ignore[no-any-return]
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        task = self._task(fn, args, kwargs, None, self._retry)
        self._put(task, None)
        return task.future  # type: ignore[no-any-return]

    def try_submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future | None:
        """As submit(), but never block: None (counted in `rejected`) if the queue is full."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        task = self._task(fn, args, kwargs, None, self._retry)
        return task.future if self._put(task, 0.0) else None

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
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        args = tuple(args)
        if kwargs is None:
            kwargs = {}
        elif not isinstance(kwargs, dict):
            raise TypeError(f"`kwargs` must be a dict or None, got {kwargs!r}")
        timeout = _timeout_seconds("timeout", timeout)
        deadline = _timeout_seconds("deadline", deadline)
        if retry is None:
            retry = self._retry
        elif retry is False:
            retry = None
        elif not isinstance(retry, Retry):
            raise TypeError(f"`retry` must be a Retry, False or None, got {retry!r}")
        if token is not None and not isinstance(token, CancelToken):
            raise TypeError(f"`token` must be a CancelToken or None, got {token!r}")
        opts = _Opts(key, token, deadline)
        task = self._task(fn, args, kwargs, opts, retry)
        if not self._put(task, timeout):
            raise QueueFull(f"the queue stayed full for {timeout} s")
        return task.future  # type: ignore[no-any-return]

    def _task(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
              opts: _Opts | None, retry: Retry | None) -> _Task:
        if self._copy_context:
            if opts is None:
                opts = _Opts()
            opts.ctx = contextvars.copy_context()
        return self._ledger.task(self, fn, args, kwargs, opts, retry)

    def _put(self, task: _Task, timeout: float | None, count_rejected: bool = True) -> bool:
        """Accept and queue a new task; False if the queue stayed full for `timeout` s.

        The task is counted (submitted, queued) in the step that queues it
        (Ledger.admit): a producer waiting for room is in no counter, so live
        `submitted` never goes back and `queued` never exceeds the queue's bound; and
        it raises the closed error as soon as shutdown begins."""
        started = False
        if not self._threads:
            # Start a worker before the task is accepted, so that failing to start a
            # thread (RuntimeError) leaves no task queued that nobody can run.
            self._adjust_thread_count()
            started = bool(self._threads)
        ledger = self._ledger
        # One task in SAMPLE_EVERY has its latencies recorded (two clock reads each).
        if ledger.sampled():
            task.t_queued = clock()
        opts = task.opts
        st = PUT_CLOSED
        try:
            if opts is not None and opts.token is not None:
                if opts.token.cancelled:
                    # Never runs: counted as submitted and cancelled, never queued.
                    with self._lock:
                        if not ledger.closed:
                            ledger.move(OUTSIDE, N_CANCELLED)
                            task.state = DONE
                            st = PUT_OK
                    if st == PUT_OK:
                        task.future.cancel()
                        return True
                    raise _Refused
                opts.cb_handle = opts.token.add_callback(_cancel_future(task.future))
            st = ledger.admit(task)
            if st == PUT_FULL and timeout != 0.0:
                if timeout is None and _in_worker_of(self):
                    # A task of this pool blocking on its own full queue could wait for
                    # ever (every worker doing the same): run the new task here instead.
                    with self._lock:
                        if not ledger.closed:
                            ledger.move(OUTSIDE, N_QUEUED)
                            st = PUT_OK
                    if st == PUT_OK:
                        task.run()
                        return True
                    raise _Refused
                # Make sure the workers that will make room exist, then wait.
                self._adjust_thread_count()
                st = self._wait_room(task, timeout)
        except _Refused:
            st = PUT_CLOSED
        except BaseException:
            self._unhook(task)
            raise
        if st == PUT_OK:
            # Checked after the put: a worker retiring at this moment either sees this
            # task in the queue (and stays), or has already left the idle count.
            q = self._work_queue
            if q.idle_workers < q.qsize() and len(self._threads) < self._max_workers:
                self._adjust_thread_count()
            return True
        self._unhook(task)
        if st == PUT_FULL:
            if count_rejected:
                ledger.move(OUTSIDE, OUTSIDE, N_REJECTED)
            return False
        if started and self._fail_on_broken_start(task):
            return True
        self._raise_closed()

    def _wait_room(self, task: _Task, timeout: float | None) -> int:
        """Wait for room in the bounded queue and admit the task: PUT_OK, PUT_FULL after
        `timeout` s, PUT_CLOSED as soon as shutdown begins."""
        end = None if timeout is None else monotonic() + timeout
        ledger = self._ledger
        with self._lock:
            # Registered before each try: a worker that takes a task after the try sees
            # a waiter and notifies (_room_made, under this lock, held until we wait).
            ledger.add_room_waiter(1)
            try:
                while True:
                    st = ledger.admit(task)
                    if st != PUT_FULL:
                        return st
                    step = _ROOM_POLL
                    if end is not None:
                        step = min(step, end - monotonic())
                        if step <= 0:
                            return PUT_FULL
                    self._room.wait(step)
            finally:
                ledger.add_room_waiter(-1)

    def _room_made(self) -> None:
        # A worker took a task while producers wait for room (see _wait_room).
        with self._lock:
            self._room.notify_all()

    def _wake_producers(self) -> None:
        with self._lock:
            self._room.notify_all()

    def _unhook(self, task: _Task) -> None:
        # A task that was not accepted: drop its hook on the caller's token.
        task.state = DONE
        opts = task.opts
        if opts is not None and opts.cb_handle is not None:
            opts.token.remove_callback(opts.cb_handle)
            opts.cb_handle = None

    def _fail_on_broken_start(self, task: _Task) -> bool:
        """The worker this call started may have failed its initializer before the task
        was accepted. As in the stdlib (which queues first), the task then fails with
        BrokenThreadPool instead of the call raising. True if that is what happened."""
        with self._lock:
            if not self._broken or self._shutdown or _executor._shutdown:
                return False
            self._ledger.move(OUTSIDE, N_FAILED)
            task.state = DONE
        task.future.set_exception(BrokenThreadPool(self._broken))
        return True

    def _raise_closed(self) -> NoReturn:
        if self._broken:
            raise BrokenThreadPool(self._broken)
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    # -- workers ----------------------------------------------------------------------

    def _adjust_thread_count(self) -> None:
        with self._lock:
            if self._broken or self._work_queue.closed:
                return
            if len(self._threads) >= self._max_workers:
                return
            with _executor._global_shutdown_lock:
                if _executor._shutdown:
                    return
            thread_name = "%s_%d" % (self._thread_name_prefix, next(self._thread_ids))
            q = self._work_queue

            def weakref_cb(_: object, q: Any = q) -> None:
                q.close()

            # Daemon, yet joined at interpreter exit like the stdlib's workers (through
            # executor._threads_queues) -- unless a timed shutdown abandoned them: a
            # task that ignores its token must not hold the process after the timeout
            # (threading joins every non-daemon thread at exit, whatever we say).
            t = threading.Thread(name=thread_name, target=_pool_worker,
                                 args=(weakref.ref(self, weakref_cb), q, self._initializer,
                                       self._initargs, self._idle_poll, self._token),
                                 daemon=True)
            try:
                t.start()
            except RuntimeError:
                if not self._threads:
                    raise
                LOGGER.warning("fastpool: cannot start worker %s", thread_name, exc_info=True)
                return
            self._threads.add(t)
            _executor._threads_queues[t] = q

    def _retire(self, me: threading.Thread, clock: _IdleClock, poll: float) -> bool:
        """Called by an idle worker every `poll` s: True tells it to exit."""
        now = monotonic()
        if clock.last is None or now - clock.last > 2 * poll + 0.1:
            clock.since = now - poll  # a new idle stretch (work ran in between)
        clock.last = now
        with self._lock:
            if me not in self._threads:
                return True
            n = len(self._threads)
            if self._work_queue.qsize():
                return False
            surplus = n > self._max_workers
            if surplus or (self._idle_timeout is not None and n > self._min_workers
                           and now - clock.since >= self._idle_timeout):
                if surplus:
                    self._work_queue.claim_retire()  # one surplus worker fewer to ask
                self._threads.discard(me)
                return True
        return False

    def _rejoin(self, me: threading.Thread) -> bool:
        """A worker left run_worker(): idle (_retire took it out of _threads already) or
        claiming a retire request (resize). True: work is waiting and the pool is below
        its size, so it stays."""
        with self._lock:
            self._threads.discard(me)
            if (self._work_queue.qsize() and not self._broken
                    and len(self._threads) < self._max_workers):
                self._threads.add(me)
                return True
        return False

    def resize(self, workers: int) -> None:
        """Change the maximum number of workers. Surplus workers exit when idle, or after
        the task they are running if the pool is busy; new ones start as work needs them."""
        if isinstance(workers, bool) or not isinstance(workers, int):
            raise TypeError(f"`workers` must be an int, got {workers!r}")
        if workers < 1:
            raise ValueError(f"`workers` must be >= 1, got {workers}")
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot resize a pool after shutdown")
            self._max_workers = workers
            self._work_queue.set_max_workers(workers)
            if self._min_workers > workers:
                self._min_workers = workers
            # A saturated pool never goes idle: ask the surplus to leave after their
            # current task (idle ones leave through _retire, each taking one request).
            self._work_queue.request_retire(len(self._threads) - workers)
            missing = min(workers - len(self._threads), self._work_queue.qsize())
        for _ in range(max(0, missing)):
            self._adjust_thread_count()

    @property
    def name(self) -> str:
        """The pool's name: its worker threads' prefix, its label in metrics."""
        return self._name

    @property
    def workers(self) -> int:
        """The maximum number of worker threads."""
        return self._max_workers

    @property
    def min_workers(self) -> int:
        return self._min_workers

    @property
    def idle_timeout(self) -> float | None:
        return self._idle_timeout

    @property
    def token(self) -> CancelToken:
        """The pool's token: cancelled when shutdown stops waiting for running tasks."""
        return self._token

    # -- outcomes (called by _Task and the timer) ---------------------------------------

    def _run_slow(self, task: _Task) -> None:
        """PoolTask.run() of a task with options, or of any task when rate-limited or
        on a backend."""
        try:
            if self._ledger.room_waiters:
                self._room_made()  # taking this task made room in the queue
            if task.opts is None and self._backend is None:
                if self._pacer is not None:
                    self._pace(task.future)
                task.run_plain()
            else:
                self._run_opts(task)
        except BaseException as exc:
            self._rescue(task, exc, N_RUNNING)

    def _rescue(self, task: _Task, exc: BaseException, settling: int) -> None:
        """An error inside the pool's own handling of `task` (a bug, or user code the
        pool calls there: a retry predicate): fail the task with it rather than lose it.
        `settling`: the counter a task claimed (SETTLING) by the failing code is in."""
        try:
            LOGGER.error("fastpool: internal error handling a task of %s", self._name,
                         exc_info=exc)
        except BaseException:
            pass
        src = {QUEUED: N_QUEUED, RUNNING: N_RUNNING, OVERDUE: N_RUNNING, RETRY: N_RETRYING,
               SETTLING: settling}
        with self._lock:
            where = src.get(task.state)
            if where is not None:
                task.state = DONE
                if self._ledger.move(where, N_FAILED, -1, task):
                    self._check_idle()
        fut = task.future
        if not fut.done():
            try:
                fut.set_exception(exc)
            except InvalidStateError:
                pass

    def _run_opts(self, task: _Task) -> None:
        # Tokens, deadlines, contexts: a deadline may settle the task from the timer
        # thread at any moment, so every step checks the state under the lock.
        # (`opts` is None only for a plain task on a backend.)
        fut = task.future
        opts = task.opts
        ledger = self._ledger
        token = None if opts is None else opts.token
        if token is not None and token.cancelled:
            fut.cancel()
        if self._pacer is not None:
            self._pace(fut)
        with self._lock:
            if task.state != QUEUED:
                return  # settled while it waited (deadline)
            run = not ledger.collecting and fut.set_running_or_notify_cancel()
            if run:
                task.state = RUNNING
                ledger.move(N_QUEUED, N_RUNNING, -1, task)
            else:
                abandoned = self._not_run_count(task, False)
        if not run:
            self._drop(task, abandoned)
            return
        t_queued = task.t_queued
        if t_queued:
            t0 = clock()
        gov = None
        if opts is not None and (token is not None or opts.deadline is not None):
            if opts.cb_handle is not None:
                opts.token.remove_callback(opts.cb_handle)
                opts.cb_handle = None
            gov = opts.gov
            if gov is None:
                gov = opts.gov = CancelToken._any(self._token, token)
            if opts.deadline is not None and opts.dl_entry is None:
                opts.dl_entry = self._timer.call_at(monotonic() + opts.deadline,
                                                    self._deadline_due, task)
        prev = getattr(_local, "current", None)
        if gov is not None:
            _local.current = gov
        try:
            if self._backend is not None:
                # Remote code cannot see current_token(): the backend watches the token
                # that governs the task and cancels the remote call with it.
                result = self._backend.call(task.fn, task.args, task.kwargs,
                                            self._token if gov is None else gov)
            elif opts is not None and opts.ctx is not None:
                result = opts.ctx.run(task.fn, *task.args, **task.kwargs)
            else:
                result = task.fn(*task.args, **task.kwargs)
        except BaseException as exc:
            if gov is not None:
                _local.current = prev
            if t_queued:
                ledger.sample(t0 - t_queued, clock() - t0)
            self._task_failed(task, exc)
            return
        if gov is not None:
            _local.current = prev
        if t_queued:
            ledger.sample(t0 - t_queued, clock() - t0)
        self._task_succeeded(task, result)

    def _not_run(self, task: _Task, started: bool) -> None:
        """A queued task a worker took does not run: its caller cancelled it, or
        shutdown is handing work back (PoolTask.run_plain)."""
        try:
            with self._lock:
                abandoned = self._not_run_count(task, started)
            self._drop(task, abandoned)
        except BaseException as exc:
            self._rescue(task, exc, N_QUEUED)

    def _not_run_count(self, task: _Task, started: bool) -> bool:
        """_not_run's part under the lock: count it; True if handed back."""
        if started:
            _unstart(task.future)
        if self._ledger.collecting:
            abandoned = self._abandon(task, N_QUEUED)
        else:
            task.state = DONE
            self._ledger.move(N_QUEUED, N_CANCELLED)
            abandoned = False
        if self._ledger.watch:
            self._check_idle()
        return abandoned

    def _pace(self, fut: Future) -> None:
        # Rate limit: wait for this start's slot, unless shutdown wakes us first.
        if fut._state == _PENDING:
            delay = self._pacer.reserve()  # type: ignore[union-attr]
            if delay > 0.0:
                self._stop.wait(min(delay, threading.TIMEOUT_MAX))

    def _task_succeeded(self, task: _Task, result: Any) -> None:
        try:
            self._succeeded(task, result)
        except BaseException as exc:
            self._rescue(task, exc, N_RUNNING)

    def _claim_finished(self, task: _Task) -> bool:
        """The task's call returned: claim it (SETTLING) to settle it here; False if
        its deadline settled its future meanwhile (then it is counted failed now)."""
        with self._lock:
            state = task.state
            if state == RUNNING:
                task.state = SETTLING
                return True
        if state == OVERDUE:
            # The deadline failed the future (and wrote the dead letter); the worker is
            # free only now, so only now does the task stop counting as running.
            self._commit(task, RUNNING, error=task.opts.overdue, dead_lettered=True)
        return False

    def _succeeded(self, task: _Task, result: Any) -> None:
        if not self._claim_finished(task):
            return
        try:
            task.future.set_result(result)
        except InvalidStateError:
            pass  # somebody else's code set it: it is done either way
        finally:
            # Before it is counted: once join() returns, no timer entry or token hook
            # of a finished task may still hold on to the pool.
            if task.opts is not None:
                self._cleanup(task)
            with self._lock:
                task.state = DONE
                if self._ledger.move(N_RUNNING, N_SUCCEEDED, -1, task):
                    self._check_idle()

    def _task_failed(self, task: _Task, exc: BaseException) -> None:
        try:
            self._failed(task, exc)
        except BaseException as err:
            self._rescue(task, err, N_RUNNING)

    def _failed(self, task: _Task, exc: BaseException) -> None:
        if not self._claim_finished(task):
            return
        fut = task.future
        opts = task.opts
        gov = self._token if opts is None or opts.gov is None else opts.gov
        if isinstance(exc, CancelledError) and gov.cancelled:
            # The task saw its token cancelled and stopped: that is a cancellation.
            with self._lock:
                _unstart(fut)
            try:
                fut.cancel()
            finally:
                self._commit(task, RUNNING, cancelled=True)
            return
        retry = task.retry
        if (retry is not None and task.attempt < retry.attempts and not gov.cancelled
                and retry.should_retry(exc)):
            delay = retry.delay(task.attempt)
            with self._lock:
                if not self._ledger.collecting:
                    task.state = RETRY
                    _unstart(fut)
                    task.attempt += 1
                    self._ledger.move(N_RUNNING, N_RETRYING, N_RETRIED, task)
                    self._timer.call_at(monotonic() + delay, self._retry_due, task)
                    return
        with self._lock:
            # The dead letter goes in before the future fails: code that reacts to the
            # failure (a done-callback, a wait() returning) must find it already there.
            # (Only the letter: it is counted with the failure, in _commit, so that
            # stats().dead_lettered never exceeds failed.)
            dead = task.retry is not None
            if dead:
                self._put_dead_letter(task, exc)
        try:
            fut.set_exception(exc)
        except InvalidStateError:
            pass
        finally:
            self._commit(task, RUNNING, error=exc, dead_lettered=dead)

    def _commit(self, task: _Task, was: int, error: BaseException | None = None,
                cancelled: bool = False, dead_lettered: bool = False) -> None:
        """Count a settled task: it leaves state `was` for failed or cancelled."""
        if task.opts is not None:
            self._cleanup(task)  # before it is counted (see _task_succeeded)
        src = N_RUNNING if was == RUNNING else N_RETRYING if was == RETRY else N_QUEUED
        with self._lock:
            task.state = DONE
            extra = -1
            if cancelled:
                dst = N_CANCELLED
            else:
                dst = N_FAILED
                if task.retry is not None:
                    extra = N_DEAD_LETTERED
                    if not dead_lettered:
                        self._put_dead_letter(task, error)  # type: ignore[arg-type]
            if self._ledger.move(src, dst, extra, task):
                self._check_idle()

    def _put_dead_letter(self, task: _Task, exc: BaseException) -> None:
        # Under the lock: a join() that returns sees the dead letter already there.
        opts = task.opts
        self.dead_letters.put(DeadLetter(None if opts is None else opts.key, task.fn,
                                         task.args, task.kwargs, exc, task.attempt, time()))

    def _cleanup(self, task: _Task) -> None:
        # A finished task drops its deadline timer and its hook on the caller's token.
        opts = task.opts
        assert opts is not None
        if opts.dl_entry is not None:
            self._timer.cancel(opts.dl_entry)
        if opts.cb_handle is not None and opts.token is not None:
            opts.token.remove_callback(opts.cb_handle)
            opts.cb_handle = None

    def _retry_due(self, task: _Task) -> None:
        """Timer thread: a retry's backoff is over; queue it again."""
        try:
            self._requeue(task)
        except BaseException as exc:
            self._rescue(task, exc, N_RETRYING)

    def _requeue(self, task: _Task) -> None:
        fut = task.future
        ledger = self._ledger
        with self._lock:
            if task.state != RETRY:
                return
            abandoned = requeue = False
            if fut.cancelled():
                task.state = DONE  # its caller cancelled it while it waited
                ledger.move(N_RETRYING, N_CANCELLED)
            elif ledger.collecting:
                abandoned = self._abandon(task, N_RETRYING)
            else:
                # QUEUED before it is in the queue: a worker may take it at once.
                task.state = QUEUED
                task.t_queued = clock()
                st = ledger.admit(task, N_RETRYING)  # counted queued as it is queued
                if st == PUT_OK:
                    requeue = True
                else:
                    task.state = RETRY
                    if st == PUT_FULL:
                        # Try again shortly, without blocking the timer thread.
                        self._timer.call_at(monotonic() + _REQUEUE_DELAY, self._retry_due,
                                            task)
                        return
                    # Closed (interpreter exit, broken pool): hand it back.
                    abandoned = self._abandon(task, N_RETRYING)
            if not requeue and ledger.watch:
                self._check_idle()
        if not requeue:
            self._drop(task, abandoned)
            return
        # Idle workers may all have retired during the backoff.
        q = self._work_queue
        if q.idle_workers < q.qsize() and len(self._threads) < self._max_workers:
            self._adjust_thread_count()

    def _deadline_due(self, task: _Task) -> None:
        """Timer thread: the task's deadline passed."""
        seen: list[int] = []
        try:
            self._overdue(task, seen)
        except BaseException as exc:
            was = seen[0] if seen else RUNNING
            self._rescue(task, exc, {RETRY: N_RETRYING, QUEUED: N_QUEUED}.get(was, N_RUNNING))

    def _overdue(self, task: _Task, seen: list[int]) -> None:
        opts = task.opts
        assert opts is not None
        exc = DeadlineExceeded(f"task ran past its deadline of {opts.deadline} s")
        with self._lock:
            was = task.state
            seen.append(was)
            if was != RUNNING and was != RETRY and was != QUEUED:
                return
            opts.dl_entry = None
            if was == RUNNING:
                # A deadline ends the wait on a task; it cannot stop the thread running
                # it. The future fails now, but the task stays counted (and reported)
                # running, its worker busy, until its call returns (_claim_finished).
                task.state = OVERDUE
                opts.overdue = exc
                if task.retry is not None:
                    self._put_dead_letter(task, exc)  # before the future fails
            else:
                task.state = SETTLING  # a queued retry stays in the queue: workers skip it
        if was == RUNNING:
            try:
                task.future.set_exception(exc)
            except InvalidStateError:
                pass
            finally:
                if opts.gov is not None:
                    opts.gov.cancel("deadline exceeded")
            return
        cancelled = False
        try:
            task.future.set_exception(exc)
        except InvalidStateError:
            cancelled = True  # its caller cancelled it while it waited to retry
        finally:
            self._commit(task, was, error=exc, cancelled=cancelled)
            if opts.gov is not None:
                opts.gov.cancel("deadline exceeded")

    def _abandon(self, task: _Task, src: int) -> bool:
        """Under the lock: shutdown hands back a task that has not started (True), or
        counts it cancelled if its caller cancelled it meanwhile (False). `src`: the
        counter it leaves (queued or retrying). The caller cancels the future once the
        lock is released (see _drop)."""
        if task.future.cancelled():
            task.state = DONE
            self._ledger.move(src, N_CANCELLED)
            return False
        task.state = ABANDONED
        self._ledger.move(src, N_NOT_STARTED)
        self._late.append(task)
        return True

    def _drop(self, task: _Task, abandoned: bool) -> None:
        if abandoned:
            task.future.cancel()
        if task.opts is not None:
            self._cleanup(task)

    def _check_idle(self) -> None:
        # Under the lock, when someone watches: wake join()/shutdown() once idle.
        if self._ledger.idle():
            self._cond.notify_all()
            if self._close_when_idle:
                self._work_queue.close()

    def _check_idle_locked(self) -> None:
        # The native fast path's way to _check_idle (it holds no lock).
        with self._lock:
            self._check_idle()

    def _take_unstarted(self, items: list[_Task]) -> list[tuple[_Task, int]]:
        """Under the lock: of `items` (drained from the queue) and the retries waiting in
        the timer, the tasks not started yet, each with the counter it is in."""
        taken = []
        for task in items + self._timer.drain(self._retry_due):
            if task.state == QUEUED:
                taken.append((task, N_QUEUED))
            elif task.state == RETRY:
                taken.append((task, N_RETRYING))
        return taken

    def _initializer_failed(self) -> None:
        with self._lock:
            self._broken = ("A thread initializer failed, the thread pool "
                            "is not usable anymore")
            self._ledger.close()
            self._work_queue.close()
        items = self._work_queue.drain()
        failed = []
        with self._lock:
            for task, src in self._take_unstarted(items):
                task.state = DONE
                if task.future.cancelled():
                    self._ledger.move(src, N_CANCELLED)
                else:
                    self._ledger.move(src, N_FAILED)
                    failed.append(task)
            if self._ledger.watch:
                self._check_idle()
        for task in failed:
            try:
                task.future.set_exception(BrokenThreadPool(self._broken))
            except InvalidStateError:
                pass  # cancelled meanwhile
            if task.opts is not None:
                self._cleanup(task)

    # -- observing ----------------------------------------------------------------------

    def stats(self) -> Stats:
        """A consistent snapshot of the counters, with latency percentiles."""
        q = self._work_queue
        counts = self._ledger.counts()
        bound = self._queue_size
        if bound and counts[N_QUEUED] > bound:
            # Tasks a worker took from a full queue but has not started (about to, or
            # waiting for its rate-limit slot) are in a worker's hands: shown running.
            extra = counts[N_QUEUED] - bound
            c = list(counts)
            c[N_QUEUED] -= extra
            c[N_RUNNING] += extra
            counts = tuple(c)
        waits, runs = self._ledger.latencies()
        values: tuple[Any, ...] = (len(self._threads), q.idle_workers, *counts,
                                   *percentiles(waits), *percentiles(runs),
                                   self.dead_letters.dropped)
        return Stats(*values)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until nothing is queued, running or waiting to retry; the pool stays open.

        Return False if `timeout` seconds passed first."""
        timeout = _timeout_seconds("timeout", timeout)
        if _in_worker_of(self):
            raise RuntimeError("join() called from a task of this pool would wait for itself")
        return self._wait_idle(timeout)

    def _wait_idle(self, timeout: float | None, hurry: threading.Event | None = None) -> bool:
        end = None if timeout is None else monotonic() + timeout
        ledger = self._ledger
        with self._lock:
            # Watching first, then looking: a task that finishes after the look sees
            # the watch and notifies (it takes this lock, held until we wait).
            ledger.add_watch(1)
            try:
                while not ledger.idle():
                    if hurry is not None and hurry.is_set():
                        return False
                    step = 0.1
                    if end is not None:
                        step = min(step, end - monotonic())
                        if step <= 0:
                            return False
                    self._cond.wait(step)
                return True
            finally:
                ledger.add_watch(-1)

    # -- shutdown -----------------------------------------------------------------------

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
        end = None if timeout is None else monotonic() + timeout
        in_worker = _in_worker_of(self)
        with self._lock:
            first = not self._shutdown
            self._shutdown = True
            self._ledger.close()
            if first:
                self._shutdown_done = threading.Event()
            done = self._shutdown_done
            assert done is not None
        # Whoever waits for producers blocked on a full queue: they raise now.
        self._wake_producers()
        if first:
            try:
                report = self._drain(wait, cancel_futures, timeout, in_worker)
            finally:
                done.set()
        elif wait and not in_worker and not done.wait(
                None if end is None else max(0.0, end - monotonic())):
            # The first call (another thread's, without a timeout or a longer one) is
            # still waiting: this call's timeout bounds it too -- it gives up now (hands
            # back what has not started, cancels the token, abandons what still runs).
            self._hurry.set()
            done.wait()
            report = self._snapshot(True)
        elif self._gave_up:
            report = self._snapshot(True)  # abandoned: nothing more to wait for
        else:
            left = None if end is None else max(0.0, end - monotonic())
            report = self._drain(wait, cancel_futures, left, in_worker)
        self._after_shutdown()
        return report

    def _drain(self, wait: bool, cancel_futures: bool, timeout: float | None,
               in_worker: bool) -> ShutdownReport:
        timed_out = False
        if cancel_futures:
            self._collect()
        if wait and not in_worker:
            if not self._wait_idle(timeout, self._hurry):
                timed_out = True
                self._collect()
        with self._lock:
            if wait and not in_worker or self._ledger.idle():
                self._work_queue.close()
            elif not self._close_when_idle:
                self._close_when_idle = True  # workers finish the queue, then exit
                self._ledger.add_watch(1)
            # The tasks that did not finish in time, before they are told to stop.
            report = self._snapshot(timed_out)
            if timed_out:
                self._gave_up = True
        if timed_out:
            self._token.cancel("shutdown")
            self._abandon_workers()
        elif wait and not in_worker:
            self._join_workers()
        if hasattr(self._backend, "close"):  # worker processes: stopped, or killed
            self._backend.close(timed_out, wait and not in_worker)
        # Its thread exits once no retry or deadline is pending.
        self._timer.stop()
        return report

    def _snapshot(self, timed_out: bool) -> ShutdownReport:
        # Counts and running tasks of one instant: an exact report. (The caller may hold
        # the lock: copying the list is atomic.)
        handed_back = list(self._handed_back)
        counts, running = self._ledger.snapshot()
        completed = counts[N_SUCCEEDED] + counts[N_FAILED] + counts[N_CANCELLED]
        return ShutdownReport(completed, handed_back, [_record(t, True) for t in running],
                              timed_out or self._gave_up)

    def _join_workers(self) -> None:
        me = threading.current_thread()
        for t in list(self._threads):
            if t is not me:
                t.join()

    def _abandon_workers(self) -> None:
        # Interpreter exit joins the workers in executor._threads_queues (as the
        # stdlib does): after a timed-out shutdown it must not wait for ours. They are
        # daemon threads, so nothing else joins them; each still finishes its task.
        for t in list(self._threads):
            _executor._threads_queues.pop(t, None)

    def _collect(self) -> list[Task]:
        """Hand back everything not started: queued, waiting to retry, in transit."""
        ledger = self._ledger
        with self._lock:
            ledger.start_collecting()
        self._stop.set()  # wakes workers waiting on the rate limiter
        q = self._work_queue
        q.close()
        items = q.drain()
        dropped = []
        with self._lock:
            self._room.notify_all()  # (producers: the ledger is closed, they raise)
            for task, src in self._take_unstarted(items):
                self._abandon(task, src)
                dropped.append(task)
            # Tasks in transit are still counted as queued or retrying: taken from the
            # queue by a worker that has not reached the lock yet, a retry the timer
            # thread is putting back, a deadline being settled. They resolve (into
            # _late, or an outcome) in a moment.
            waited = 0.0
            while ledger.in_transit():
                self._cond.wait(0.005)
                waited += 0.005
                if waited > 10.0:
                    LOGGER.warning("fastpool: shutdown still waits for %d tasks in transit",
                                   ledger.in_transit())
                    waited = 0.0
            late, self._late = self._late, []
            if ledger.watch:
                self._check_idle()
        # Every task handed back is cancelled before shutdown returns (cancel() is
        # idempotent: a worker that handed one back cancels it too).
        for task in late:
            task.future.cancel()
        for task in dropped:
            if task.opts is not None:
                self._cleanup(task)
        records = [_record(t, False) for t in late]
        self._handed_back += records  # reported by every later shutdown() too
        return records

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
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("handle_signals() must be called from the main thread")
        timeout = _timeout_seconds("timeout", timeout)
        if isinstance(signals, int):
            raise TypeError("`signals` must be an iterable of signal numbers, "
                            f"got {signals!r}")
        sigs: list[signal.Signals] = []
        for sig in signals:
            if isinstance(sig, bool) or not isinstance(sig, int):
                raise TypeError(f"not a signal number: {sig!r}")
            try:
                sig = signal.Signals(sig)
            except ValueError:
                raise ValueError(f"not a signal number: {sig!r}") from None
            if sig in _UNCATCHABLE:
                raise ValueError(f"{sig.name} cannot be handled")
            if sig not in sigs:
                sigs.append(sig)
        if not sigs:
            raise ValueError("no signals given")
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot handle signals after shutdown")
            if self._signals is not None:
                raise RuntimeError("handle_signals() was already called")
        state = _Signals(bool(exit))
        pool_ref = weakref.ref(self)
        hurry = self._hurry

        # Runs in the main thread between two bytecodes, possibly while that thread
        # holds the pool lock: it takes no lock, and raises SystemExit only outside
        # fastpool's own code (whose locks and counters it would leave half-changed).
        def handler(signum: int, frame: Any) -> None:
            if state.exit_due and not state.exit_raised:
                if frame is not None and _inside_fastpool(frame):
                    return  # the watcher sends it again in a moment
                state.exit_raised = True
                raise SystemExit(128 + (state.signum or signum))
            state.count += 1
            if state.count == 1:
                state.signum = signum
                state.first.set()
            else:
                hurry.set()

        def watcher() -> None:
            try:
                state.first.wait()
                pool = pool_ref()
                if pool is None or state.signum is None:
                    return
                try:
                    pool.shutdown(wait=True, timeout=timeout)
                finally:
                    del pool
                    if state.exit:
                        state.deliver_exit()
            finally:
                state.watcher_done.set()

        previous: dict[int, Any] = {}
        try:
            for sig in sigs:
                previous[sig] = signal.signal(sig, handler)
        except BaseException:
            for sig, prev in previous.items():
                signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
            raise
        state.handler = handler
        state.previous = previous
        self._signals = state
        threading.Thread(target=watcher, name=f"{self._name}-signals", daemon=True).start()

    @property
    def signal_received(self) -> int | None:
        """The signal that started a shutdown through handle_signals(), or None."""
        state = self._signals
        return None if state is None else state.signum

    def _after_shutdown(self) -> None:
        # The main thread restores the signal handlers; after a handled signal it exits
        # (unless handle_signals(exit=False)): SystemExit(128 + signum).
        state = self._signals
        if state is None:
            return
        if threading.current_thread() is not threading.main_thread():
            return
        state.first.set()  # let the watcher end if no signal came
        if state.signum is not None and state.exit:
            # The watcher delivers the exit once the shutdown it ran is over (raised
            # here, by the handler, while we wait).
            state.watcher_done.wait()
            if not state.exit_raised:
                state.exit_raised = True
                state.restore()
                raise SystemExit(128 + state.signum)
        state.restore()

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
        return max(256, 8 * self._max_workers)

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any],
            timeout: float | None = None, chunksize: int = 1, buffersize: int | None = None,
            ordered: bool = True, return_exceptions: bool = False,
            progress: bool | Callable[[Stats], object] = False) -> Iterator[Any]:
        """Lazy, memory-bounded map: at most `buffersize` calls in flight.

        Results in input order (ordered=False: as they finish). return_exceptions=True
        yields a failed call's exception instead of raising it. `chunksize` > 1 runs
        that many calls per task. `progress`: a callable receiving Stats about every
        0.2 s and at the end, or True for a tqdm bar (needs tqdm).
        """
        from ._pool_map import map_iter
        return map_iter(self, fn, iterables, timeout, chunksize, buffersize, ordered,
                        return_exceptions, progress)

    def asubmit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Awaitable[_T]:
        """Awaitable submit: waits (without blocking the loop) for queue space, then the result."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        if self._shutdown:
            self._raise_closed()
        from ._pool_map import asubmit
        return asubmit(self, fn, args, kwargs)

    def amap(self, fn: Callable[..., Any], *iterables: Any, buffersize: int | None = None,
             ordered: bool = True, return_exceptions: bool = False) -> AsyncIterator[Any]:
        """Async-iterable map for asyncio code: lazy, bounded, ordered or not.

        The input may be sync iterables, or one async iterable."""
        from ._pool_map import amap
        return amap(self, fn, iterables, buffersize, ordered, return_exceptions)

    # -- fork ---------------------------------------------------------------------------

    def _after_fork_child(self) -> None:
        # Only the forking thread survives: the child's pool starts empty. Whatever the
        # parent had queued, running or waiting to retry is cancelled here (the parent
        # still owns it), so nothing in the child waits for it for ever.
        tasks = list(self._ledger.running) + list(self._late)
        self._threads.clear()
        tasks += self._work_queue._after_fork_child()
        old, self._timer = self._timer, Timer(f"{self._name}-timer")
        tasks += [e[3] for e in old._heap if e[2] is not None and isinstance(e[3], _Task)]
        old._heap = []
        shutdown = self._shutdown
        self._reset_state()
        self._shutdown = shutdown
        if shutdown or self._broken:
            self._ledger.close()
        # Locks another thread held at fork time would stay locked in the child.
        self._stop = _fresh_event(self._stop)
        self._hurry = _fresh_event(self._hurry)
        self._token._lock = threading.Lock()
        self._token._event = None if self._token._event is None else _fresh_event(
            self._token._event)
        self.dead_letters._cond = threading.Condition(threading.Lock())
        if self._pacer is not None:
            self._pacer._lock = threading.Lock()
        for task in tasks:
            fut = task.future
            # Locks of the future a vanished thread may have held (either core's Future).
            if "_lock" in fut.__dict__:
                fut._lock = threading.RLock()
            for name in ("_condition", "_cond"):
                fut.__dict__.pop(name, None)
            task.state = DONE
            _unstart(fut)
            try:
                fut.cancel()
            except BaseException:
                LOGGER.exception("fastpool: cancelling %r after fork", fut)


class TaskGroup:
    """Tasks submitted together (Pool.group()): leaving the block waits for all of them.

    With fail_fast=True the first failure cancels the group's token -- queued tasks are
    cancelled, running ones see current_token() cancelled -- and is raised on exit.
    Without it, failures stay in the futures (see `exceptions()`).
    """

    def __init__(self, pool: Pool, fail_fast: bool = False) -> None:
        self._pool = pool
        self._fail_fast = bool(fail_fast)
        self.token = CancelToken()
        self.futures: list[Future] = []
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        fut = self._pool.schedule(fn, args, kwargs, token=self.token)
        with self._lock:
            self.futures.append(fut)
        if self._fail_fast:
            fut.add_done_callback(self._on_done)
        return fut

    def _on_done(self, fut: Future) -> None:
        if fut.cancelled() or fut.exception() is None:
            return
        with self._lock:
            if self._error is not None:
                return
            self._error = fut.exception()
        self.token.cancel("a task of the group failed")

    def exceptions(self) -> list[BaseException]:
        """The errors of the group's failed tasks so far."""
        errors = [f.exception() for f in list(self.futures) if f.done() and not f.cancelled()]
        return [e for e in errors if e is not None]

    def __enter__(self) -> TaskGroup:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.token.cancel("the group's block raised")
        with self._lock:
            futures = list(self.futures)
        _base.wait(futures)
        if exc_type is None and self._fail_fast and self._error is not None:
            raise self._error
