"""Workers and scaling: a Pool's worker threads start as work needs them, retire when
idle (down to `min_workers`), and follow resize()."""

from __future__ import annotations

import itertools
import logging
import threading
import weakref
from time import monotonic
from typing import TYPE_CHECKING, Any, Callable

from .. import _workers
from .._pick_core import core
from ..cancel import CancelToken, _local
from ._state import PoolState

if TYPE_CHECKING:
    from ._pool import Pool

LOGGER = logging.getLogger("fastpool")

# Idle workers look at the pool at least this often (idle retirement, resize down).
_MAX_IDLE_POLL = 1.0


class _IdleClock:
    __slots__ = ("since", "last")

    def __init__(self) -> None:
        self.since = 0.0
        self.last: float | None = None


def _pool_worker(pool_ref: weakref.ref[Pool], queue: Any, initializer: Callable[..., object] | None,
                 initargs: tuple[Any, ...], poll: float, token: CancelToken) -> None:
    _local.token = token
    _local.pool_ref = pool_ref
    if not _workers.initialize_worker(pool_ref, initializer, initargs):
        return
    me = threading.current_thread()
    clock = _IdleClock()

    def on_idle() -> bool:
        pool = pool_ref()
        return True if pool is None else pool._workers.retire(me, clock, poll)

    while True:
        if core.run_worker(queue, poll, on_idle):
            return
        # Retired. A submitter may have seen this worker idle and started none: if work
        # is waiting, come back (see Workers.start_if_needed for the other half).
        pool = pool_ref()
        if pool is None or not pool._workers.rejoin(me):
            return
        del pool


def in_worker_of(pool: Pool) -> bool:
    """Whether the calling thread is one of `pool`'s workers."""
    ref = getattr(_local, "pool_ref", None)
    return ref is not None and ref() is pool


class Workers:
    """Starts, retires and counts a pool's worker threads (the threads are
    `state.threads`, the maximum `state.max_workers`)."""

    def __init__(self, pool: Pool, state: PoolState, min_workers: int,
                 idle_timeout: float | None, name: str,
                 initializer: Callable[..., object] | None, initargs: tuple[Any, ...]) -> None:
        self._pool_ref = weakref.ref(pool, self._pool_collected)
        self._state = state
        self.min_workers = min_workers
        self.idle_timeout = idle_timeout
        self._idle_poll = min(idle_timeout or _MAX_IDLE_POLL, _MAX_IDLE_POLL) or 1e-3
        self._name = name
        self._ids = itertools.count()
        self._initializer = initializer
        self._initargs = initargs

    def _pool_collected(self, _: object) -> None:
        # The pool was garbage collected: workers finish what is queued, then exit.
        self._state.queue.close()

    def start(self) -> None:
        """Start a worker if the pool may have one more (the core calls this as
        pool._start_worker)."""
        st = self._state
        with st.lock:
            if st.broken or st.queue.closed:
                return
            if len(st.threads) >= st.max_workers:
                return
            if _workers.interpreter_exiting():
                return
            # Daemon, yet joined at interpreter exit like the stdlib's workers (through
            # _workers.threads_queues) -- unless a timed shutdown abandoned them: a task
            # that ignores its token must not hold the process after the timeout
            # (threading joins every non-daemon thread at exit, whatever we say).
            _workers.start_worker(
                st.threads, st.queue, "%s_%d" % (self._name, next(self._ids)), _pool_worker,
                (self._pool_ref, st.queue, self._initializer, self._initargs,
                 self._idle_poll, st.token), daemon=True, log=LOGGER)

    def start_if_needed(self) -> None:
        """After a put: start a worker if the queued work exceeds the idle workers.
        A worker retiring at this moment either sees the new task in the queue (and
        stays), or has already left the idle count."""
        st = self._state
        if _workers.needs_worker(st.queue, st.threads, st.max_workers):
            self.start()

    def retire(self, me: threading.Thread, clock: _IdleClock, poll: float) -> bool:
        """Called by an idle worker every `poll` s: True tells it to exit."""
        now = monotonic()
        if clock.last is None or now - clock.last > 2 * poll + 0.1:
            clock.since = now - poll  # a new idle stretch (work ran in between)
        clock.last = now
        st = self._state
        with st.lock:
            if me not in st.threads:
                return True
            n = len(st.threads)
            if st.queue.qsize():
                return False
            surplus = n > st.max_workers
            if surplus or (self.idle_timeout is not None and n > self.min_workers
                           and now - clock.since >= self.idle_timeout):
                if surplus:
                    st.queue.claim_retire()  # one surplus worker fewer to ask
                st.threads.discard(me)
                return True
        return False

    def rejoin(self, me: threading.Thread) -> bool:
        """A worker left run_worker(): idle (retire() took it out of the threads
        already) or claiming a retire request (resize). True: work is waiting and the
        pool is below its size, so it stays."""
        st = self._state
        with st.lock:
            st.threads.discard(me)
            if (st.queue.qsize() and not st.broken
                    and len(st.threads) < st.max_workers):
                st.threads.add(me)
                return True
        return False

    def resize(self, workers: int) -> None:
        st = self._state
        with st.lock:
            if st.shutdown:
                raise RuntimeError("cannot resize a pool after shutdown")
            st.max_workers = workers
            st.queue.set_max_workers(workers)
            if self.min_workers > workers:
                self.min_workers = workers
            # A saturated pool never goes idle: ask the surplus to leave after their
            # current task (idle ones leave through retire(), each taking one request).
            st.queue.request_retire(len(st.threads) - workers)
            missing = min(workers - len(st.threads), st.queue.qsize())
        for _ in range(max(0, missing)):
            self.start()

    def join(self) -> None:
        me = threading.current_thread()
        for t in list(self._state.threads):
            if t is not me:
                t.join()

    def abandon(self) -> None:
        # Interpreter exit joins the workers in _workers.threads_queues (as the stdlib
        # does): after a timed-out shutdown it must not wait for ours. They are daemon
        # threads, so nothing else joins them; each still finishes its task.
        for t in list(self._state.threads):
            _workers.threads_queues.pop(t, None)
