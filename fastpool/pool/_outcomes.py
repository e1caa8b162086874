"""Outcomes: how a Pool task ends -- run (the slow path: options, pacing, a backend),
succeed, fail, retry after a backoff, miss its deadline, go to the dead letters, or be
handed back by shutdown. Methods named *_locked run with the pool lock held.

Futures are settled with their public methods (which run the done callbacks, i.e. user
code) *outside* the pool lock: under the lock a task is first claimed (state TASK_SETTLING,
still counted where it was), then settled, then committed (counters moved).
"""

from __future__ import annotations

import logging
from concurrent.futures import CancelledError, _base
from time import monotonic, time
from typing import Any, Callable

from .._pick_core import core
from .._states import (N_CANCELLED, N_DEAD_LETTERED, N_FAILED, N_NOT_STARTED, N_QUEUED,
                       N_RETRIED, N_RETRYING, N_RUNNING, N_SUCCEEDED, PUT_FULL, PUT_OK,
                       TASK_ABANDONED, TASK_DONE, TASK_OVERDUE, TASK_QUEUED, TASK_RETRY,
                       TASK_RUNNING, TASK_SETTLING)
from .._timer import Timer
from ..cancel import CancelToken, _local
from ..deadletter import DeadLetter, DeadLetterQueue
from ..errors import DeadlineExceeded
from ..executor import BrokenThreadPool
from . import _map
from ._pacing import Pacer
from ._records import PoolTask, unstart
from ._state import PoolState, clock

InvalidStateError = _base.InvalidStateError
LOGGER = logging.getLogger("fastpool")

# A retry that finds the bounded queue full tries again this much later (the timer
# thread never blocks: it also runs deadlines).
_REQUEUE_DELAY = 0.005


class Outcomes:
    """Runs the tasks the native fast path does not, and settles and counts every
    task that does not simply succeed. Owns the timer (retries, deadlines) and the dead
    letters."""

    def __init__(self, state: PoolState, name: str, dead_letters: DeadLetterQueue,
                 pacer: Pacer | None, backend: Any,
                 room_made: Callable[[], None], start_if_needed: Callable[[], None]) -> None:
        self._state = state
        self._name = name
        self.dead_letters = dead_letters
        self.pacer = pacer
        self.backend = backend  # None, a DaskBackend or a ProcessBackend
        self._room_made = room_made
        self._start_if_needed = start_if_needed
        self.timer = Timer(f"{name}-timer")

    # -- running (PoolTask.run of a task the native run_plain does not take) ----------

    def run_with_options(self, task: PoolTask) -> None:
        """A task with options, or any task when rate-limited or on a backend."""
        try:
            if self._state.ledger.room_waiters:
                self._room_made()  # taking this task made room in the queue
            if task.opts is None and self.backend is None:
                if self.pacer is not None:
                    self.pacer.wait_turn(task.future, self._state.stop)
                task.run_plain()
            else:
                self._run_options(task)
        except BaseException as exc:
            self._rescue(task, exc, N_RUNNING)

    def _run_options(self, task: PoolTask) -> None:
        started = self.start(task)
        if started is None:
            return
        run_token, t0 = started
        backend = self.backend
        if backend is not None and hasattr(backend, "serve"):
            # Worker processes: the backend runs it, and more queued tasks pipelined
            # behind it while calls are quick (start, finish, take_next).
            backend.serve(task, run_token, t0, self)
            return
        prev = getattr(_local, "current", None)
        if run_token is not None:
            _local.current = run_token
        try:
            if backend is not None:
                # Remote code cannot see current_token(): the backend watches the token
                # that governs the task and cancels the remote call with it.
                result = backend.call(task.fn, task.args, task.kwargs,
                                      self._state.token if run_token is None else run_token)
            elif task.opts is not None and task.opts.ctx is not None:
                result = task.opts.ctx.run(task.fn, *task.args, **task.kwargs)
            else:
                result = task.fn(*task.args, **task.kwargs)
        except BaseException as exc:
            if run_token is not None:
                _local.current = prev
            self.finish(task, t0, False, exc)
            return
        if run_token is not None:
            _local.current = prev
        self.finish(task, t0, True, result)

    def start(self, task: PoolTask) -> tuple[CancelToken | None, float] | None:
        """Start a task a worker took: None if it is not to run (settled meanwhile,
        cancelled, handed back), else its own run token (None: only the pool's token
        governs it) and its start time for the latency samples (0: not sampled).
        Tokens, deadlines, contexts: a deadline may settle the task from the timer
        thread at any moment, so every step checks the state under the lock.
        (`opts` is None only for a plain task on a backend.)"""
        st = self._state
        fut = task.future
        opts = task.opts
        ledger = st.ledger
        token = None if opts is None else opts.token
        if token is not None and token.cancelled:
            fut.cancel()
        if self.pacer is not None:
            self.pacer.wait_turn(fut, st.stop)
        with st.lock:
            if task.state != TASK_QUEUED:
                return None  # settled while it waited (deadline)
            run = not ledger.collecting and fut.set_running_or_notify_cancel()
            if run:
                task.state = TASK_RUNNING
                ledger.move(N_QUEUED, N_RUNNING, -1, task)
            else:
                abandoned = self._count_not_run_locked(task, False)
        if not run:
            self._drop(task, abandoned)
            return None
        t0 = clock() if task.t_queued else 0.0
        run_token = None
        if opts is not None and (token is not None or opts.deadline is not None):
            if opts.token_hook is not None:
                opts.token.remove_callback(opts.token_hook)
                opts.token_hook = None
            run_token = opts.run_token
            if run_token is None:
                run_token = opts.run_token = CancelToken._any(st.token, token)
            if opts.deadline is not None and opts.deadline_timer is None:
                opts.deadline_timer = self.timer.call_at(monotonic() + opts.deadline,
                                                         self.deadline_due, task)
        return run_token, t0

    def finish(self, task: PoolTask, t0: float, ok: bool, value: Any) -> None:
        """A started task's call is over: it returned `value` (ok) or raised it."""
        if t0:
            self._state.ledger.sample(t0 - task.t_queued, clock() - t0)
        if ok:
            self._task_succeeded(task, value)
        else:
            self.task_failed(task, value)

    def rescue(self, task: PoolTask, exc: BaseException) -> None:
        """start() raised for a task a backend took (take_next): fail it, as
        run_with_options does."""
        self._rescue(task, exc, N_RUNNING)

    @property
    def pool_token(self) -> CancelToken:
        """The pool's token: it governs every task that has no token of its own."""
        return self._state.token

    def take_next(self) -> PoolTask | None:
        """A queued task for a worker that already runs one (a process backend's
        dispatcher pipelining calls), or None: none queued beyond what the idle
        workers will take, or the pool is rate-limited."""
        st = self._state
        q = st.queue
        if self.pacer is not None or len(q) <= q.idle_workers:
            return None
        try:
            task = q.get_nowait()
        except (core.QueueEmpty, core.QueueClosed):
            return None
        if st.ledger.room_waiters:
            self._room_made()  # taking this task made room in the queue
        return task  # type: ignore[no-any-return]

    def not_run(self, task: PoolTask, started: bool) -> None:
        """A queued task a worker took does not run: its caller cancelled it, or
        shutdown is handing work back (PoolTask.run_plain)."""
        try:
            with self._state.lock:
                abandoned = self._count_not_run_locked(task, started)
            self._drop(task, abandoned)
        except BaseException as exc:
            self._rescue(task, exc, N_QUEUED)

    def _count_not_run_locked(self, task: PoolTask, started: bool) -> bool:
        """not_run's part under the lock: count it; True if handed back."""
        st = self._state
        if started:
            unstart(task.future)
        if st.ledger.collecting:
            abandoned = self.abandon_locked(task, N_QUEUED)
        else:
            task.state = TASK_DONE
            st.ledger.move(N_QUEUED, N_CANCELLED)
            abandoned = False
        if st.ledger.watch:
            st.check_idle_locked()
        return abandoned

    # -- settling -----------------------------------------------------------------------

    def _rescue(self, task: PoolTask, exc: BaseException, settling: int) -> None:
        """An error inside the pool's own handling of `task` (a bug, or user code the
        pool calls there: a retry predicate): fail the task with it rather than lose it.
        `settling`: the counter a task claimed (TASK_SETTLING) by the failing code is in."""
        try:
            LOGGER.error("fastpool: internal error handling a task of %s", self._name,
                         exc_info=exc)
        except BaseException:
            pass
        src = {TASK_QUEUED: N_QUEUED, TASK_RUNNING: N_RUNNING, TASK_OVERDUE: N_RUNNING, TASK_RETRY: N_RETRYING,
               TASK_SETTLING: settling}
        st = self._state
        with st.lock:
            where = src.get(task.state)
            if where is not None:
                task.state = TASK_DONE
                if st.ledger.move(where, N_FAILED, -1, task):
                    st.check_idle_locked()
        fut = task.future
        if not fut.done():
            try:
                fut.set_exception(exc)
            except InvalidStateError:
                pass

    def _claim_finished(self, task: PoolTask) -> bool:
        """The task's call returned: claim it (TASK_SETTLING) to settle it here; False if
        its deadline settled its future meanwhile (then it is counted failed now)."""
        with self._state.lock:
            state = task.state
            if state == TASK_RUNNING:
                task.state = TASK_SETTLING
                return True
        if state == TASK_OVERDUE:
            # The deadline failed the future (and wrote the dead letter); the worker is
            # free only now, so only now does the task stop counting as running.
            self._commit(task, TASK_RUNNING, error=task.opts.overdue, dead_lettered=True)
        return False

    def _task_succeeded(self, task: PoolTask, result: Any) -> None:
        try:
            if not self._claim_finished(task):
                return
            try:
                task.future.set_result(result)
            except InvalidStateError:
                pass  # somebody else's code set it: it is done either way
            finally:
                # Before it is counted: once join() returns, no timer entry or token
                # hook of a finished task may still hold on to the pool.
                if task.opts is not None:
                    self._cleanup(task)
                st = self._state
                with st.lock:
                    task.state = TASK_DONE
                    if st.ledger.move(N_RUNNING, N_SUCCEEDED, -1, task):
                        st.check_idle_locked()
        except BaseException as exc:
            self._rescue(task, exc, N_RUNNING)

    def task_failed(self, task: PoolTask, exc: BaseException) -> None:
        """The task's call raised `exc` (PoolTask.run_plain, or _run_options)."""
        try:
            self._failed(task, exc)
        except BaseException as err:
            self._rescue(task, err, N_RUNNING)

    def _failed(self, task: PoolTask, exc: BaseException) -> None:
        if not self._claim_finished(task):
            return
        st = self._state
        fut = task.future
        opts = task.opts
        run_token = st.token if opts is None or opts.run_token is None else opts.run_token
        if isinstance(exc, CancelledError) and run_token.cancelled:
            # The task saw its token cancelled and stopped: that is a cancellation.
            with st.lock:
                unstart(fut)
            try:
                fut.cancel()
            finally:
                self._commit(task, TASK_RUNNING, cancelled=True)
            return
        retry = task.retry
        if (retry is not None and task.attempt < retry.attempts and not run_token.cancelled
                and retry.should_retry(exc)):
            delay = retry.delay(task.attempt)
            with st.lock:
                if not st.ledger.collecting:
                    task.state = TASK_RETRY
                    unstart(fut)
                    task.attempt += 1
                    st.ledger.move(N_RUNNING, N_RETRYING, N_RETRIED, task)
                    self.timer.call_at(monotonic() + delay, self.retry_due, task)
                    return
        with st.lock:
            # The dead letter goes in before the future fails: code that reacts to the
            # failure (a done-callback, a wait() returning) must find it already there.
            # (Only the letter: it is counted with the failure, in _commit, so that
            # stats().dead_lettered never exceeds failed.)
            dead = task.retry is not None
            if dead:
                self._dead_letter_locked(task, exc)
        try:
            fut.set_exception(exc)
        except InvalidStateError:
            pass
        finally:
            self._commit(task, TASK_RUNNING, error=exc, dead_lettered=dead)

    def _commit(self, task: PoolTask, was: int, error: BaseException | None = None,
                cancelled: bool = False, dead_lettered: bool = False) -> None:
        """Count a settled task: it leaves state `was` for failed or cancelled."""
        if task.opts is not None:
            self._cleanup(task)  # before it is counted (see _task_succeeded)
        src = N_RUNNING if was == TASK_RUNNING else N_RETRYING if was == TASK_RETRY else N_QUEUED
        st = self._state
        with st.lock:
            task.state = TASK_DONE
            extra = -1
            if cancelled:
                dst = N_CANCELLED
            else:
                dst = N_FAILED
                if task.retry is not None:
                    extra = N_DEAD_LETTERED
                    if not dead_lettered:
                        self._dead_letter_locked(task, error)  # type: ignore[arg-type]
            if st.ledger.move(src, dst, extra, task):
                st.check_idle_locked()

    def _dead_letter_locked(self, task: PoolTask, exc: BaseException) -> None:
        # Under the lock: a join() that returns sees the dead letter already there.
        opts = task.opts
        self.dead_letters.put(DeadLetter(None if opts is None else opts.key, task.fn,
                                         task.args, task.kwargs, exc, task.attempt, time()))

    def _cleanup(self, task: PoolTask) -> None:
        # A finished task drops its deadline timer and its hook on the caller's token.
        opts = task.opts
        assert opts is not None
        if opts.deadline_timer is not None:
            self.timer.cancel(opts.deadline_timer)
        if opts.token_hook is not None and opts.token is not None:
            opts.token.remove_callback(opts.token_hook)
            opts.token_hook = None

    # -- retries and deadlines (the timer thread) ----------------------------------------

    def retry_due(self, task: PoolTask) -> None:
        """Timer thread: a retry's backoff is over; queue it again."""
        try:
            self._requeue(task)
        except BaseException as exc:
            self._rescue(task, exc, N_RETRYING)

    def _requeue(self, task: PoolTask) -> None:
        st = self._state
        fut = task.future
        ledger = st.ledger
        with st.lock:
            if task.state != TASK_RETRY:
                return
            abandoned = requeue = False
            if fut.cancelled():
                task.state = TASK_DONE  # its caller cancelled it while it waited
                ledger.move(N_RETRYING, N_CANCELLED)
            elif ledger.collecting:
                abandoned = self.abandon_locked(task, N_RETRYING)
            else:
                # TASK_QUEUED before it is in the queue: a worker may take it at once.
                task.state = TASK_QUEUED
                task.t_queued = clock()
                put = ledger.admit(task, N_RETRYING)  # counted queued as it is queued
                if put == PUT_OK:
                    requeue = True
                else:
                    task.state = TASK_RETRY
                    if put == PUT_FULL:
                        # Try again shortly, without blocking the timer thread.
                        self.timer.call_at(monotonic() + _REQUEUE_DELAY, self.retry_due,
                                           task)
                        return
                    # Closed (interpreter exit, broken pool): hand it back.
                    abandoned = self.abandon_locked(task, N_RETRYING)
            if not requeue and ledger.watch:
                st.check_idle_locked()
        if not requeue:
            self._drop(task, abandoned)
            return
        # Idle workers may all have retired during the backoff.
        self._start_if_needed()

    def deadline_due(self, task: PoolTask) -> None:
        """Timer thread: the task's deadline passed."""
        seen: list[int] = []
        try:
            self._overdue(task, seen)
        except BaseException as exc:
            was = seen[0] if seen else TASK_RUNNING
            self._rescue(task, exc, {TASK_RETRY: N_RETRYING, TASK_QUEUED: N_QUEUED}.get(was, N_RUNNING))

    def _overdue(self, task: PoolTask, seen: list[int]) -> None:
        opts = task.opts
        assert opts is not None
        exc = DeadlineExceeded(f"task ran past its deadline of {opts.deadline} s")
        with self._state.lock:
            was = task.state
            seen.append(was)
            if was != TASK_RUNNING and was != TASK_RETRY and was != TASK_QUEUED:
                return
            opts.deadline_timer = None
            if was == TASK_RUNNING:
                # A deadline ends the wait on a task; it cannot stop the thread running
                # it. The future fails now, but the task stays counted (and reported)
                # running, its worker busy, until its call returns (_claim_finished).
                task.state = TASK_OVERDUE
                opts.overdue = exc
                if task.retry is not None:
                    self._dead_letter_locked(task, exc)  # before the future fails
            else:
                task.state = TASK_SETTLING  # a queued retry stays in the queue: workers skip it
        if was == TASK_RUNNING:
            try:
                task.future.set_exception(exc)
            except InvalidStateError:
                pass
            finally:
                if opts.run_token is not None:
                    opts.run_token.cancel("deadline exceeded")
            return
        cancelled = False
        try:
            task.future.set_exception(exc)
        except InvalidStateError:
            cancelled = True  # its caller cancelled it while it waited to retry
        finally:
            self._commit(task, was, error=exc, cancelled=cancelled)
            if opts.run_token is not None:
                opts.run_token.cancel("deadline exceeded")

    # -- handing back (shutdown) and breaking -------------------------------------------

    def abandon_locked(self, task: PoolTask, src: int) -> bool:
        """Shutdown hands back a task that has not started (True), or counts it
        cancelled if its caller cancelled it meanwhile (False). `src`: the counter it
        leaves (queued or retrying). The caller cancels the future once the lock is
        released (see _drop)."""
        ledger = self._state.ledger
        if task.future.cancelled():
            task.state = TASK_DONE
            ledger.move(src, N_CANCELLED)
            return False
        task.state = TASK_ABANDONED
        ledger.move(src, N_NOT_STARTED)
        self._state.late.append(task)
        return True

    def _drop(self, task: PoolTask, abandoned: bool) -> None:
        if abandoned:
            task.future.cancel()
        if task.opts is not None:
            self._cleanup(task)

    def drop_all(self, tasks: list[PoolTask]) -> None:
        """Tasks handed back (abandon_locked) by shutdown: drop their timers and hooks."""
        for task in tasks:
            if task.opts is not None:
                self._cleanup(task)

    def take_unstarted_locked(self, items: list[PoolTask]) -> list[tuple[PoolTask, int]]:
        """Of `items` (drained from the queue) and the retries waiting in the timer,
        the tasks not started yet, each with the counter it is in."""
        taken = []
        for task in items + self.timer.drain(self.retry_due):
            if not isinstance(task, PoolTask):
                continue  # a map's runner: see _map.collect and fail
            if task.state == TASK_QUEUED:
                taken.append((task, N_QUEUED))
            elif task.state == TASK_RETRY:
                taken.append((task, N_RETRYING))
        return taken

    def fail_unstarted(self) -> None:
        """The pool broke (an initializer failed): every task not started yet fails
        with BrokenThreadPool."""
        st = self._state
        with st.lock:
            st.broken = ("A thread initializer failed, the thread pool "
                         "is not usable anymore")
            st.ledger.close()
            st.queue.close()
        items = st.queue.drain()
        failed = []
        _map.fail(st, self.timer, items, BrokenThreadPool(st.broken))  # the maps
        with st.lock:
            for task, src in self.take_unstarted_locked(items):
                task.state = TASK_DONE
                if task.future.cancelled():
                    st.ledger.move(src, N_CANCELLED)
                else:
                    st.ledger.move(src, N_FAILED)
                    failed.append(task)
            if st.ledger.watch:
                st.check_idle_locked()
        for task in failed:
            try:
                task.future.set_exception(BrokenThreadPool(st.broken))
            except InvalidStateError:
                pass  # cancelled meanwhile
            if task.opts is not None:
                self._cleanup(task)

    def reset_after_fork(self) -> list[PoolTask]:
        """In a forked child: a fresh timer, dead letters and pacer lock; return the
        parent's tasks the timer held (retries, deadlines) for cancelling."""
        old, self.timer = self.timer, Timer(f"{self._name}-timer")
        tasks = [t for t in old.forget_after_fork() if isinstance(t, PoolTask)]
        self.dead_letters._reset_after_fork()
        if self.pacer is not None:
            self.pacer.reset_after_fork()
        return tasks
