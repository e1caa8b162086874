"""Signals: Pool.handle_signals() -- shut down gracefully on SIGINT/SIGTERM, bounded,
then exit with the shell's code for the signal."""

from __future__ import annotations

import os
import signal
import threading
import weakref
from time import sleep
from typing import TYPE_CHECKING, Any

from ..cancel import _timeout_seconds
from ._state import PoolState

if TYPE_CHECKING:
    from ._pool import Pool

_UNCATCHABLE = {getattr(signal, n) for n in ("SIGKILL", "SIGSTOP") if hasattr(signal, n)}
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _inside_fastpool(frame: Any) -> bool:
    """Whether the main thread was interrupted inside fastpool's own code (waiting on a
    future excepted: that is where a program usually is)."""
    name = frame.f_code.co_filename
    return name.startswith(_PACKAGE_DIR) and not name.endswith("_future.py")


class _Received:
    """What one handle_signals() shares between its handler, its watcher thread and
    the main thread's shutdown()."""

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


def check_signals(signals: Any) -> list[signal.Signals]:
    """The signals handle_signals() was given, checked: all of them, or an error."""
    if isinstance(signals, int):
        raise TypeError(f"`signals` must be an iterable of signal numbers, got {signals!r}")
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
    return sigs


class Signals:
    """A pool's signal handling: installed by handle_signals(), ended by shutdown()."""

    def __init__(self, state: PoolState) -> None:
        self._state = state
        self._received: _Received | None = None

    @property
    def received(self) -> int | None:
        state = self._received
        return None if state is None else state.signum

    def install(self, pool: Pool, signals: Any, timeout: float | None, exit: bool) -> None:
        """Pool.handle_signals: install the handlers (all, or none) and start the
        watcher thread."""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("handle_signals() must be called from the main thread")
        timeout = _timeout_seconds("timeout", timeout)
        sigs = check_signals(signals)
        with self._state.lock:
            if self._state.shutdown:
                raise RuntimeError("cannot handle signals after shutdown")
            if self._received is not None:
                raise RuntimeError("handle_signals() was already called")
        hurry = self._state.hurry
        state = _Received(bool(exit))
        pool_ref = weakref.ref(pool)

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
            for signum, prev in previous.items():
                signal.signal(signum, prev if prev is not None else signal.SIG_DFL)
            raise
        state.handler = handler
        state.previous = previous
        self._received = state
        threading.Thread(target=watcher, name=f"{pool.name}-signals", daemon=True).start()

    def after_shutdown(self) -> None:
        """The main thread restores the signal handlers; after a handled signal it
        exits (unless handle_signals(exit=False)): SystemExit(128 + signum)."""
        state = self._received
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

    def reset_after_fork(self) -> None:
        # The handlers are the parent's (inherited, and restored by nobody here).
        self._received = None
