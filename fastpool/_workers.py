"""Worker-thread plumbing shared by ThreadPoolExecutor and Pool.

Interpreter exit, as in the stdlib (CPython Lib/concurrent/futures/thread.py): once it
has begun no new work is accepted, queued work still runs, and the worker threads are
joined before threading's own shutdown. threading._register_atexit (not atexit) runs
early enough for that; see bpo-39812 for why the stdlib made the same choice.

Fork: only the forking thread survives in the child. Every owner of worker threads
(an executor or a Pool) registers here; its queue is held across the fork and the
owner resets itself in the child (`_after_fork_child`).

An owner has `_work_queue`, `_after_fork_child()` and `_initializer_failed()`.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from concurrent.futures import _base
from typing import Any, Callable, NoReturn

from ._future import worker_local
from ._pick_core import core

_shutdown = False  # the interpreter is exiting
_global_shutdown_lock = threading.Lock()
# Every live worker and its queue, closed and joined at interpreter exit.
threads_queues: weakref.WeakKeyDictionary[threading.Thread, Any] = weakref.WeakKeyDictionary()
# Every live owner of worker threads, for the fork hooks below.
_owners: weakref.WeakSet[Any] = weakref.WeakSet()


def _python_exit() -> None:
    global _shutdown
    with _global_shutdown_lock:
        _shutdown = True
    items = list(threads_queues.items())
    for _, q in items:
        q.close()
    for t, _ in items:
        t.join()


threading._register_atexit(_python_exit)  # type: ignore[attr-defined]


def interpreter_exiting() -> bool:
    """Whether interpreter exit has begun (no new work, no new workers)."""
    with _global_shutdown_lock:
        return _shutdown


def register(owner: Any) -> None:
    """Have the fork hooks hold `owner`'s queue across a fork and reset it in the child."""
    _owners.add(owner)


def _before_fork() -> None:
    _global_shutdown_lock.acquire()
    for owner in list(_owners):
        owner._work_queue._before_fork()


def _after_fork_parent() -> None:
    for owner in list(_owners):
        owner._work_queue._after_fork_parent()
    _global_shutdown_lock.release()


def _after_fork_child() -> None:
    global _global_shutdown_lock
    _global_shutdown_lock = threading.Lock()
    threads_queues.clear()
    for owner in list(_owners):
        owner._after_fork_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_parent,
                        after_in_child=_after_fork_child)


def default_max_workers() -> int:
    # As the running stdlib: process_cpu_count() (3.13+) honours CPU affinity.
    count = getattr(os, "process_cpu_count", os.cpu_count)()
    return min(32, (count or 1) + 4)


def initialize_worker(owner_reference: weakref.ref[Any],
                      initializer: Callable[..., object] | None,
                      initargs: tuple[Any, ...]) -> bool:
    """Run a new worker's initializer; if it fails, break the owner (as the stdlib
    does) and return False: the worker must then exit."""
    worker_local.active = True
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException:
            _base.LOGGER.critical("Exception in initializer:", exc_info=True)
            owner = owner_reference()
            if owner is not None:
                owner._initializer_failed()
            return False
    return True


def needs_worker(queue: Any, threads: set[threading.Thread], max_workers: Any,
                 pending: int = 0) -> bool:
    """Whether the queued work (plus `pending` items about to be queued) exceeds the idle
    workers, and another worker may start.

    qsize is read before idle_workers: with a core that drops a worker from
    idle_workers before its item leaves qsize, this order can over-count the need
    (harmless), never under-count it (a task queued behind a busy worker that still
    looked idle). `max_workers` compares as the stdlib's (any number it accepts)."""
    return bool(queue.qsize() + pending > queue.idle_workers and len(threads) < max_workers)


def start_worker(threads: set[threading.Thread], queue: Any, name: str,
                 target: Callable[..., object], args: tuple[Any, ...],
                 daemon: bool | None = None, log: logging.Logger = _base.LOGGER) -> bool:
    """Start one worker thread, add it to `threads` (and to those interpreter exit
    joins). The caller holds its owner's lock and has checked that it may. Out of OS
    threads: raise if there is no worker at all (the work could never run: say so now
    rather than hang), else log and return False (the existing workers take the work)."""
    t = threading.Thread(name=name, target=target, args=args, daemon=daemon)
    try:
        t.start()
    except RuntimeError:
        if not threads:
            raise
        log.warning("fastpool: cannot start worker %s", name, exc_info=True)
        return False
    threads.add(t)
    threads_queues[t] = queue
    return True


def raise_closed(broken: BaseException | None, shutdown: bool) -> NoReturn:
    """Raise what the stdlib raises when new work cannot be scheduled: `broken` (the
    owner's broken error, if broken), or the RuntimeError of a shutdown."""
    if broken is not None:
        raise broken
    if not shutdown and _shutdown:
        raise RuntimeError("cannot schedule new futures after interpreter shutdown")
    raise RuntimeError("cannot schedule new futures after shutdown")


def reset_future_after_fork(fut: Any) -> None:
    """A lock held at fork time by a thread that does not exist in the child stays held
    for ever, and waiters (wait()/as_completed() calls) belong to such threads too.
    That includes the future's own lock on free-threaded builds (forget_lock_after_fork)."""
    core.forget_lock_after_fork(fut)
    state = vars(fut)
    if "_lock" in state:  # fastpool._future.Future: its RLock and lazy Condition
        fut._lock = threading.RLock()
        state.pop("_condition", None)
    if "_cond" in state:  # the native Future's lazy Condition
        fut._cond = None
    del fut._waiters[:]
