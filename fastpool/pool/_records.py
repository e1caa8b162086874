"""What a Pool hands back (Task, ShutdownReport) and what it keeps per task (TaskOptions)."""

from __future__ import annotations

import contextvars
from concurrent.futures import _base
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

from .._pick_core import core
from ..cancel import CancelToken

Future = core.Future
# A Pool task as the core keeps it: core.PoolTask (fn, args, kwargs, future, pool, opts,
# retry, attempt, state, t_queued). Not to be confused with `Task`, the record of one
# that shutdown hands back.
PoolTask = core.PoolTask

# A Future's states (not a task's: those are TASK_*).
_FUTURE_PENDING = _base.PENDING
_FUTURE_RUNNING = _base.RUNNING


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


class TaskOptions:
    """The rarely used per-task options (PoolTask.opts): None on the fast path."""

    __slots__ = ("key", "token", "deadline", "ctx", "run_token", "deadline_timer",
                 "token_hook", "overdue")

    def __init__(self, key: Any = None, token: CancelToken | None = None,
                 deadline: float | None = None, ctx: contextvars.Context | None = None) -> None:
        self.key = key
        self.token = token  # the caller's token
        self.deadline = deadline
        self.ctx = ctx
        # The token current_token() returns while the task runs: cancelled with the
        # pool's token, the caller's, or the deadline.
        self.run_token: CancelToken | None = None
        self.deadline_timer: list[Any] | None = None  # the timer entry of the deadline
        self.token_hook: int | None = None  # our callback on the caller's token
        self.overdue: BaseException | None = None  # the DeadlineExceeded of a TASK_OVERDUE task


def record(task: PoolTask, running: bool) -> Task:
    """The public record of a task. `running`: said by the caller, not read from
    task.state, which the task's worker may be changing right now (a data race without
    the GIL)."""
    opts = task.opts
    attempts = task.attempt if running else task.attempt - 1
    return Task(task.fn, task.args, task.kwargs, None if opts is None else opts.key,
                task.future, attempts)


# Futures are settled with their public methods (which run the done callbacks, i.e.
# user code) *outside* the pool lock. One liberty is taken: a RUNNING future is written
# by nobody but the pool (cancel() refuses it), so a task that goes back to wait for a
# retry can return its future to PENDING -- and the caller can cancel() it while it waits.
def unstart(fut: Any) -> None:
    if fut._state == _FUTURE_RUNNING:
        fut._state = _FUTURE_PENDING


def cancel_future(fut: Future) -> Callable[[CancelToken], object]:
    """A callback for the caller's token: cancel the task's future."""
    return lambda _token: fut.cancel()
