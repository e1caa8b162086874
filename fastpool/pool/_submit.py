"""Submitting to a Pool: the slow path (options, a full queue, the first worker, a
closed pool) and backpressure. The fast path is one native call (Pool.submit)."""

from __future__ import annotations

import contextvars
from time import monotonic
from typing import TYPE_CHECKING, Any, Callable, Iterable, NoReturn

from .. import _workers
from .._states import (N_CANCELLED, N_FAILED, N_QUEUED, N_REJECTED, OUTSIDE, PUT_CLOSED,
                       PUT_FULL, PUT_OK, TASK_DONE)
from ..cancel import CancelToken, _timeout_seconds
from ..errors import QueueFull
from ..executor import BrokenThreadPool
from ..retry import Retry
from ._records import Future, PoolTask, TaskOptions, cancel_future
from ._scaling import Workers, in_worker_of
from ._state import PoolState, clock

if TYPE_CHECKING:
    from ._pool import Pool

# A producer waiting for room looks again at least this often (it is woken when a
# worker takes a task; this is the backstop).
_ROOM_POLL = 0.1


def check_retry_and_token(default: Retry | None, retry: Any, token: Any) -> Retry | None:
    """schedule()'s and map()'s `retry` (None: the pool's `default`, False: none) and
    `token`, checked; the policy to use."""
    if retry is None:
        retry = default
    elif retry is False:
        retry = None
    elif not isinstance(retry, Retry):
        raise TypeError(f"`retry` must be a Retry, False or None, got {retry!r}")
    if token is not None and not isinstance(token, CancelToken):
        raise TypeError(f"`token` must be a CancelToken or None, got {token!r}")
    return retry  # type: ignore[no-any-return]


class _Refused(Exception):
    """put(): the pool closed (raised, then turned into the closed error)."""


class Submitter:
    """Turns calls into counted, queued tasks; makes producers wait for room in a
    bounded queue."""

    def __init__(self, pool: Pool, state: PoolState, workers: Workers,
                 copy_context: bool, retry: Retry | None) -> None:
        self._pool = pool
        self._state = state
        self._workers = workers
        self.hooks: Any = None  # what the core calls back (PoolTask.hooks): set by Pool
        self._copy_context = copy_context
        self._retry = retry  # the pool's default policy

    def schedule(self, fn: Callable[..., Any], args: Iterable[Any], kwargs: dict[str, Any] | None,
                 timeout: float | None, deadline: float | None, retry: Retry | bool | None,
                 token: CancelToken | None, key: Any) -> Future:
        """Pool.schedule: a task with options."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        args = tuple(args)
        if kwargs is None:
            kwargs = {}
        elif not isinstance(kwargs, dict):
            raise TypeError(f"`kwargs` must be a dict or None, got {kwargs!r}")
        timeout = _timeout_seconds("timeout", timeout)
        deadline = _timeout_seconds("deadline", deadline)
        retry = check_retry_and_token(self._retry, retry, token)
        task = self.new_task(fn, args, kwargs, TaskOptions(key, token, deadline), retry)
        if not self.put(task, timeout):
            raise QueueFull(f"the queue stayed full for {timeout} s")
        return task.future  # type: ignore[no-any-return]

    def new_task(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                 opts: TaskOptions | None, retry: Retry | None) -> PoolTask:
        if self._copy_context:
            if opts is None:
                opts = TaskOptions()
            opts.ctx = contextvars.copy_context()
        return self._state.ledger.task(self.hooks, fn, args, kwargs, opts, retry)

    def put(self, task: PoolTask, timeout: float | None, count_rejected: bool = True) -> bool:
        """Accept and queue a new task; False if the queue stayed full for `timeout` s.

        The task is counted (submitted, queued) in the step that queues it
        (Ledger.admit): a producer waiting for room is in no counter, so live
        `submitted` never goes back and `queued` never exceeds the queue's bound; and
        it raises the closed error as soon as shutdown begins."""
        st = self._state
        started = False
        if not st.threads:
            # Start a worker before the task is accepted, so that failing to start a
            # thread (RuntimeError) leaves no task queued that nobody can run.
            self._workers.start()
            started = bool(st.threads)
        ledger = st.ledger
        # One task in SAMPLE_EVERY has its latencies recorded (two clock reads each).
        if ledger.sampled():
            task.t_queued = clock()
        opts = task.opts
        put = PUT_CLOSED
        try:
            if opts is not None and opts.token is not None:
                if opts.token.cancelled:
                    # Never runs: counted as submitted and cancelled, never queued.
                    with st.lock:
                        if not ledger.closed:
                            ledger.move(OUTSIDE, N_CANCELLED)
                            task.state = TASK_DONE
                            put = PUT_OK
                    if put == PUT_OK:
                        task.future.cancel()
                        return True
                    raise _Refused
                opts.token_hook = opts.token.add_callback(cancel_future(task.future))
            put = ledger.admit(task)
            if put == PUT_FULL and timeout != 0.0:
                if timeout is None and in_worker_of(self._pool):
                    # A task of this pool blocking on its own full queue could wait for
                    # ever (every worker doing the same): run the new task here instead.
                    with st.lock:
                        if not ledger.closed:
                            ledger.move(OUTSIDE, N_QUEUED)
                            put = PUT_OK
                    if put == PUT_OK:
                        task.run()
                        return True
                    raise _Refused
                # Make sure the workers that will make room exist, then wait.
                self._workers.start()
                put = self._wait_room(task, timeout)
        except _Refused:
            put = PUT_CLOSED
        except BaseException:
            self.unhook(task)
            raise
        if put == PUT_OK:
            self._workers.start_if_needed()
            return True
        self.unhook(task)
        if put == PUT_FULL:
            if count_rejected:
                ledger.move(OUTSIDE, OUTSIDE, N_REJECTED)
            return False
        if started and self._fail_on_broken_start(task):
            return True
        self.raise_closed()

    def _wait_room(self, task: PoolTask, timeout: float | None) -> int:
        """Wait for room in the bounded queue and admit the task: PUT_OK, PUT_FULL after
        `timeout` s, PUT_CLOSED as soon as shutdown begins."""
        end = None if timeout is None else monotonic() + timeout
        st = self._state
        ledger = st.ledger
        with st.lock:
            # Registered before each try: a worker that takes a task after the try sees
            # a waiter and notifies (room_made, under this lock, held until we wait).
            ledger.add_room_waiter(1)
            try:
                while True:
                    put = ledger.admit(task)
                    if put != PUT_FULL:
                        return put
                    step = _ROOM_POLL
                    if end is not None:
                        step = min(step, end - monotonic())
                        if step <= 0:
                            return PUT_FULL
                    st.room.wait(step)
            finally:
                ledger.add_room_waiter(-1)

    def room_made(self) -> None:
        """A worker took a task while producers wait for room (see _wait_room)."""
        st = self._state
        with st.lock:
            st.room.notify_all()

    @staticmethod
    def unhook(task: PoolTask) -> None:
        # A task that was not accepted: drop its hook on the caller's token.
        task.state = TASK_DONE
        opts = task.opts
        if opts is not None and opts.token_hook is not None:
            opts.token.remove_callback(opts.token_hook)
            opts.token_hook = None

    def _fail_on_broken_start(self, task: PoolTask) -> bool:
        """The worker this call started may have failed its initializer before the task
        was accepted. As in the stdlib (which queues first), the task then fails with
        BrokenThreadPool instead of the call raising. True if that is what happened."""
        st = self._state
        with st.lock:
            if not st.broken or st.shutdown or _workers._shutdown:
                return False
            st.ledger.move(OUTSIDE, N_FAILED)
            task.state = TASK_DONE
        task.future.set_exception(BrokenThreadPool(st.broken))
        return True

    def raise_closed(self) -> NoReturn:
        st = self._state
        _workers.raise_closed(BrokenThreadPool(st.broken) if st.broken else None, st.shutdown)
