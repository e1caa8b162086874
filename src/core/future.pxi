# The Future. Twin: fastpool/_future.py.
# Included by src/_core.pyx (one module: names are shared across the includes).

# ---------------------------------------------------------------------------- Future
# The native twin of fastpool/_future.py (see its docstring for the contract). Here the
# state machine needs no lock of its own: each transition is one critical section
# (a no-op with the GIL, where compiled code between Python calls cannot be
# interrupted; a per-object lock on free-threaded builds). The Condition (and the lock
# it wraps) that stdlib helpers expect as `_condition` is created only when somebody
# blocks on the future. Class-level defaults mean a new Future stores no attributes.
#
# Why that is safe with stdlib code that holds `_condition` (wait, as_completed):
# a completer stores the new state *then* looks for the Condition; a waiter creates
# the Condition *then* checks the state under it. So either the waiter sees the new
# state, or the completer sees the Condition and notifies its waiters under its lock.

cdef object PENDING = _base.PENDING
cdef object RUNNING = _base.RUNNING
cdef object CANCELLED = _base.CANCELLED
cdef object CANCELLED_AND_NOTIFIED = _base.CANCELLED_AND_NOTIFIED
cdef object FINISHED = _base.FINISHED
cdef object CancelledError = _base.CancelledError
cdef object InvalidStateError = _base.InvalidStateError
# On 3.10 concurrent.futures.TimeoutError is its own class (the builtin from 3.11).
cdef object FuturesTimeoutError = _base.TimeoutError
cdef object _Condition = threading.Condition
cdef object _RLock = threading.RLock


cdef inline bint _is_done(object state):
    return state is FINISHED or state is CANCELLED_AND_NOTIFIED or state is CANCELLED


cdef inline bint _is_cancelled(object state):
    return state is CANCELLED_AND_NOTIFIED or state is CANCELLED


cdef object _get_condition(object fut):
    cond = fut._cond
    if cond is None:
        new = _Condition(_RLock())
        with cython.critical_section(fut):
            cond = fut._cond
            if cond is None:
                fut._cond = cond = new
    return cond


cdef object _get_waiters(object fut):
    waiters = fut._waiter_list
    if waiters is None:
        new = []
        with cython.critical_section(fut):
            waiters = fut._waiter_list
            if waiters is None:
                fut._waiter_list = waiters = new
    return waiters


cdef void _run_callbacks(object fut, object callbacks) except *:
    cdef object error = None
    for callback in callbacks:
        try:
            callback(fut)
        except Exception:
            LOGGER.exception("exception calling callback for %r", fut)
        except BaseException as exc:
            # In a pool worker, log it: the worker must survive. In the caller's thread
            # (cancel(), set_result() called by user code) it propagates, as in the stdlib.
            if getattr(worker_local, "active", False):
                LOGGER.exception("exception calling callback for %r", fut)
            elif error is None:
                error = exc
    if error is not None:
        raise error


cdef bint _set_running(object fut) except -1:
    """PENDING -> RUNNING (True); a cancelled future -> CANCELLED_AND_NOTIFIED (False).

    PENDING -> RUNNING needs no lock even when waiters exist: they only look for the
    done states. The CANCELLED branch (a state only code outside fastpool produces) is
    taken under the Condition when there is one, like every change to a done state."""
    cdef bint notify = False
    with cython.critical_section(fut):
        state = fut._state
        if state is PENDING:
            fut._state = RUNNING
            return True
        if state is CANCELLED_AND_NOTIFIED:
            return False
        cond = fut._cond
    if state is not CANCELLED:
        LOGGER.critical("Future %s in unexpected state: %s", id(fut), state)
        raise RuntimeError("Future in unexpected state")
    if cond is None:
        with cython.critical_section(fut):
            if fut._cond is None and fut._state is CANCELLED:
                fut._state = CANCELLED_AND_NOTIFIED
                return False
            cond = fut._cond
    with cond:
        with cython.critical_section(fut):
            notify = fut._state is CANCELLED
            if notify:
                fut._state = CANCELLED_AND_NOTIFIED
        if notify:
            _notify_locked(fut, cond, "add_cancelled")
    return False


cdef void _notify_locked(object fut, object cond, str event) except *:
    """With cond held: tell stdlib waiters (wait/as_completed) and result() sleepers."""
    waiters = fut._waiter_list
    if waiters:
        for waiter in waiters:
            getattr(waiter, event)(fut)
    cond.notify_all()


cdef inline int _store_outcome(object fut, object result, object exc) except -1:
    # Inside a critical section on fut.
    state = fut._state
    if _is_done(state):
        raise InvalidStateError(f"{state}: {fut!r}")
    if exc is None:
        fut._result = result
    else:
        fut._exception = exc
    fut._state = FINISHED
    return 0


cdef int _finish(object fut, object result, object exc) except -1:
    """Store the outcome; FINISHED; notify; run callbacks. InvalidStateError if done.

    Without a Condition (nobody ever blocked on this future) the transition is one
    critical section. Once a Condition exists -- and it is created in a critical
    section too, so the two cannot interleave -- the transition happens with the
    Condition held: stdlib wait()/as_completed() hold it while they read the states
    and install their waiters, and rely on no state changing under them."""
    with cython.critical_section(fut):
        cond = fut._cond
        if cond is None:
            _store_outcome(fut, result, exc)
            callbacks = fut._callbacks
    if cond is not None:
        with cond:
            with cython.critical_section(fut):
                _store_outcome(fut, result, exc)
                callbacks = fut._callbacks
            _notify_locked(fut, cond, "add_result" if exc is None else "add_exception")
    if callbacks:
        _run_callbacks(fut, callbacks)
    return 0


cdef object _cancel(object fut):
    """PENDING -> CANCELLED_AND_NOTIFIED; True if (now) cancelled. Same locking as _finish."""
    cdef bint changed = False
    with cython.critical_section(fut):
        cond = fut._cond
        if cond is None:
            state = fut._state
            if state is PENDING:
                fut._state = CANCELLED_AND_NOTIFIED
                changed = True
                callbacks = fut._callbacks
    if cond is not None:
        with cond:
            with cython.critical_section(fut):
                state = fut._state
                if state is PENDING:
                    fut._state = CANCELLED_AND_NOTIFIED
                    changed = True
                    callbacks = fut._callbacks
            if changed:
                _notify_locked(fut, cond, "add_cancelled")
    if not changed:
        return _is_cancelled(state)
    if callbacks:
        _run_callbacks(fut, callbacks)
    return True


cdef int _wait_finished(object fut, object timeout) except -1:
    """Return once fut is FINISHED; CancelledError if it is cancelled, TimeoutError if
    timeout passes first. (The Condition is created here, on first need.)"""
    state = fut._state
    if not _is_done(state):
        cond = _get_condition(fut)
        with cond:
            if not _is_done(fut._state):
                cond.wait(timeout)
            state = fut._state
    if _is_cancelled(state):
        raise CancelledError()
    if state is not FINISHED:
        raise FuturesTimeoutError()
    return 0


class Future(_base.Future):
    """Represents the result of an asynchronous computation (see concurrent.futures.Future)."""

    _state = PENDING
    _result = None
    _exception = None
    _cond = None
    _callbacks = None
    _waiter_list = None

    def __init__(self):
        pass

    @property
    def _condition(self):
        return _get_condition(self)

    @property
    def _waiters(self):
        return _get_waiters(self)

    @property
    def _done_callbacks(self):
        callbacks = self._callbacks
        if callbacks is None:
            with cython.critical_section(self):
                callbacks = self._callbacks
                if callbacks is None:
                    self._callbacks = callbacks = []
        return callbacks

    def _invoke_callbacks(self):
        callbacks = self._callbacks
        if callbacks:
            _run_callbacks(self, callbacks)

    def cancel(self):
        return _cancel(self)

    def cancelled(self):
        return _is_cancelled(self._state)

    def running(self):
        return self._state is RUNNING

    def done(self):
        return _is_done(self._state)

    def _get_result(self):
        exc = self._exception
        if exc is not None:
            try:
                raise exc
            finally:
                # Break a reference cycle with the exception
                exc = None
        return self._result

    def add_done_callback(self, fn):
        with cython.critical_section(self):
            if not _is_done(self._state):
                callbacks = self._callbacks
                if callbacks is None:
                    self._callbacks = callbacks = []
                callbacks.append(fn)
                return
        try:
            fn(self)
        except Exception:
            LOGGER.exception("exception calling callback for %r", self)

    def result(self, timeout=None):
        if self._state is not FINISHED:
            _wait_finished(self, timeout)
        return self._get_result()

    def exception(self, timeout=None):
        if self._state is not FINISHED:
            _wait_finished(self, timeout)
        return self._exception

    def set_running_or_notify_cancel(self):
        return _set_running(self)

    def set_result(self, result):
        _finish(self, result, None)

    def set_exception(self, exception):
        _finish(self, None, exception)

    for _name in ("cancel", "cancelled", "running", "done", "add_done_callback", "result",
                  "exception", "set_running_or_notify_cancel", "set_result", "set_exception"):
        locals()[_name].__doc__ = getattr(_base.Future, _name).__doc__
    del _name
