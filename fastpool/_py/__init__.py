"""The pure-Python core: the twin of the native fastpool._core (src/_core.pyx).

Used where the extension cannot be built or imported, and when FASTPOOL_NO_EXTENSIONS=1.
Same interface and semantics as fastpool._core (stubs: fastpool/_core.pyi); the test
suite runs against both, and tests/core/test_core_parity.py compares their names and
signatures. File for file with src/core/*.pxi, so each pair can be diffed side by side:

    queue.py          <-> src/core/queue.pxi    WorkQueue
    ../_future.py     <-> src/core/future.pxi   Future
    worker.py         <-> src/core/worker.pxi   WorkItem, run_worker
    map.py            <-> src/core/map.pxi      MapJob
    ledger.py         <-> src/core/ledger.pxi   Ledger, PoolTask (the Pool's bookkeeping)
    ../_states.py     (both)                    the bookkeeping's numbers
"""

from __future__ import annotations

# queue first: it imports worker at its end (see there).
from .queue import QueueClosed, QueueEmpty, WorkQueue
from .._future import Future
from .worker import WorkItem, run_worker, spin_ns
from .map import MapJob, _Failure, _MapRunner, _MapState
from .ledger import Ledger, PoolTask, clock
from .._states import (N_CANCELLED, N_COUNTERS, N_DEAD_LETTERED, N_FAILED, N_NOT_STARTED,
                       N_QUEUED, N_REJECTED, N_RETRIED, N_RETRYING, N_RUNNING, N_SUBMITTED,
                       N_SUCCEEDED, OUTSIDE, PUT_CLOSED, PUT_FULL, PUT_OK, SAMPLE_EVERY,
                       SAMPLE_WINDOW, TASK_ABANDONED, TASK_DONE, TASK_OVERDUE, TASK_QUEUED,
                       TASK_RETRY, TASK_RUNNING, TASK_SETTLING)

__all__ = [
    "Future", "Ledger", "MapJob", "PoolTask", "QueueClosed", "QueueEmpty", "WorkItem",
    "WorkQueue", "clock", "forget_lock_after_fork", "run_worker", "spin_ns",
    # The numbers, fastpool._states' (re-exported by both cores).
    "N_CANCELLED", "N_COUNTERS", "N_DEAD_LETTERED", "N_FAILED", "N_NOT_STARTED",
    "N_QUEUED", "N_REJECTED", "N_RETRIED", "N_RETRYING", "N_RUNNING", "N_SUBMITTED",
    "N_SUCCEEDED", "OUTSIDE", "PUT_CLOSED", "PUT_FULL", "PUT_OK", "SAMPLE_EVERY",
    "SAMPLE_WINDOW", "TASK_ABANDONED", "TASK_DONE", "TASK_OVERDUE", "TASK_QUEUED",
    "TASK_RETRY", "TASK_RUNNING", "TASK_SETTLING",
]


def forget_lock_after_fork(obj: object) -> None:
    """In a forked child only: the native core marks `obj`'s per-object lock free
    (free-threaded CPython may leave it held by a thread the child does not have). This
    core keeps its state under threading locks, which the child replaces; Python code
    cannot reach an object's own lock."""
