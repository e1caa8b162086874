# cython: language_level=3, embedsignature=True, freethreading_compatible=True
# distutils: language = c++
"""fastpool._core: the native core.

Read top to bottom, this is the hot path: the queue (a thin owner of fp::Queue from
fp_queue.h), the work item, and the worker loop, which waits for and dequeues work
with the GIL released and takes the GIL only to run Python code -- then keeps it for
as long as more work is queued, so a busy pool pays one GIL hand-off per batch, not
one per task.

fastpool/_core_py.py is the pure-Python twin of this module; both must keep the same
interface (fastpool/_core.pyi), and the whole test suite runs against both.
"""
cimport cython
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_DECREF, Py_XDECREF
from libc.math cimport NAN
from libcpp.atomic cimport atomic
from libcpp.vector cimport vector

from fp_queue cimport Queue, Signal, OK, EMPTY, FULL, TIMEOUT, CLOSED
from fp_queue cimport monotonic as c_monotonic, set_block_hooks

import logging
import sys
import threading
import weakref
from concurrent.futures import _base
from time import monotonic

from fastpool._future import worker_local

cdef extern from "Python.h":
    int PyErr_CheckSignals() except -1
    # Raw C calls for map's inner loop: NULL with an exception set on error, handled there.
    PyObject *PyObject_CallOneArg(object callable, object arg)
    PyObject *PyObject_Call(object callable, object args, PyObject *kwargs)
    void PyErr_Fetch(PyObject **ptype, PyObject **pvalue, PyObject **ptraceback)
    void PyErr_NormalizeException(PyObject **ptype, PyObject **pvalue, PyObject **ptraceback)
    int PyException_SetTraceback(PyObject *ex, PyObject *tb)
    object PyList_New(Py_ssize_t size)
    # Steals the reference: fills a fresh PyList_New slot with a call's new result.
    void PyList_SET_ITEM_STEAL "PyList_SET_ITEM"(object lst, Py_ssize_t i, PyObject *o)
    ctypedef struct PyThreadState
    PyThreadState *PyEval_SaveThread() noexcept nogil
    void PyEval_RestoreThread(PyThreadState *) noexcept nogil


cdef extern from *:
    """
    /* The referent of a weak reference (a new reference), None once it is dead: one C
       call instead of calling the weakref object (submit's hot path reads one). */
    static inline PyObject *fp_weakref_target(PyObject *ref) {
    #if PY_VERSION_HEX >= 0x030D0000
        PyObject *obj = NULL;
        (void)PyWeakref_GetRef(ref, &obj);  /* ref is always a weakref: no error */
        return obj != NULL ? obj : Py_NewRef(Py_None);
    #else
        return Py_NewRef(PyWeakref_GET_OBJECT(ref));
    #endif
    }
    """
    object fp_weakref_target(object ref)


# fp_queue.h never blocks on a mutex while holding the GIL (see BlockHooks there):
# these release the GIL around such a wait when the calling thread holds it.
# It holds it when it has an attached thread state (else NULL) -- not when
# PyGILState_Check() says so: once any subinterpreter was created that answers 1 for
# every thread, and PyEval_SaveThread on a thread without the GIL crashes.
cdef extern from *:
    """
    #if PY_VERSION_HEX >= 0x030D0000
    #define fp_attached_tstate() PyThreadState_GetUnchecked()
    #else
    /* Before 3.12 this is the GIL holder of the whole runtime, maybe another thread's. */
    static inline PyThreadState *fp_attached_tstate(void) {
        PyThreadState *t = _PyThreadState_UncheckedGet();
        return (t != NULL && t == PyGILState_GetThisThreadState()) ? t : NULL;
    }
    #endif
    """
    PyThreadState *fp_attached_tstate() noexcept nogil

cdef void *_release_gil_to_block() noexcept nogil:
    if fp_attached_tstate() != NULL:
        return <void *>PyEval_SaveThread()
    return NULL


cdef void _reacquire_gil(void *state) noexcept nogil:
    if state != NULL:
        PyEval_RestoreThread(<PyThreadState *>state)


set_block_hooks(_release_gil_to_block, _reacquire_gil)

cdef object LOGGER = logging.getLogger("concurrent.futures")

# A blocked put()/get() called from Python wakes this often to let signal handlers
# (KeyboardInterrupt) run: a C wait cannot be interrupted otherwise.
cdef double WAIT_SLICE = 0.05
# How long (ns) one idle worker polls the queue before parking (see fp_queue.h pop()).
# With the GIL, a worker that finds an item parks on the GIL until the submitter blocks
# (in result(), say), so its spin only bridges the submitter's wake-up. Without it
# (free-threaded), nothing parks a worker between tasks: in a submit(...).result() loop
# each task arrives within 50 us, so the worker never parked and kept a core busy-waiting
# for a submitter that was waiting for it. There a spin covers bursts only.
cdef long SPIN_NS = 50000 if getattr(sys, "_is_gil_enabled", lambda: True)() else 5000


def spin_ns():
    """How long (ns) an idle worker polls for work before it parks."""
    return SPIN_NS


class QueueClosed(Exception):
    """The queue was closed: nothing more can be put, and it is empty for getters."""


class QueueEmpty(Exception):
    """get() timed out on an empty queue."""


cdef inline double _seconds(object timeout) except? -2.0:
    """None -> -1 (wait forever); otherwise a non-negative float."""
    if timeout is None:
        return -1.0
    cdef double t = timeout
    if t != t:
        raise ValueError("timeout must be a number, got nan")
    return t if t > 0.0 else 0.0


cdef inline object _steal(void *p):
    """Turn a reference owned by the queue into a Python object (no net refcount change)."""
    obj = <object>p   # +1
    Py_DECREF(obj)    # the queue's reference, taken in put() with Py_INCREF
    return obj


cdef list _steal_all(vector[void *] &items):
    cdef list out = []
    cdef void *p
    for p in items:
        out.append(_steal(p))
    return out


cdef class WorkQueue:
    """Bounded or unbounded MPMC queue of Python objects (maxsize=0: unbounded)."""

    cdef Queue *q
    # A weak reference to the pool's live set of worker threads (only read here), or
    # None. Weak because the executor's registry of workers maps each thread to this
    # queue weakly by thread (as the stdlib's _threads_queues): a queue that held its
    # threads would keep every entry, and every Thread object, alive for ever.
    cdef object _threads
    cdef Py_ssize_t _max_workers  # the pool's maximum

    def __cinit__(self, Py_ssize_t maxsize=0):
        if maxsize < 0:
            raise ValueError(f"maxsize must be >= 0, got {maxsize}")
        self.q = new Queue(<size_t>maxsize)

    def __dealloc__(self):
        cdef vector[void *] left
        if self.q != NULL:
            self.q.drain(left)
            for p in left:
                Py_DECREF(<object>p)  # Was INCREFed in put()
            del self.q
            self.q = NULL

    @property
    def maxsize(self):
        return self.q.maxsize()

    @property
    def closed(self):
        return self.q.closed()

    @property
    def idle_workers(self):
        """Workers currently waiting for work in run_worker()."""
        return self.q.idle()

    def bind_workers(self, threads, Py_ssize_t max_workers):
        """The pool's set of worker threads and its maximum, for submit() (and the
        Pool's Ledger.submit) to tell when a task needs one more worker. The queue
        keeps only a weak reference to the set."""
        ref = weakref.ref(threads)
        with cython.critical_section(self):
            self._threads = ref
            self._max_workers = max_workers

    def set_max_workers(self, Py_ssize_t max_workers):
        with cython.critical_section(self):
            self._max_workers = max_workers

    cdef inline bint _short_of_workers(self, Py_ssize_t waiting) except -1:
        # `waiting` items for fewer idle workers, and room for one more thread.
        cdef Py_ssize_t most
        with cython.critical_section(self):
            ref = self._threads
            most = self._max_workers
        if waiting <= <Py_ssize_t>self.q.idle() or ref is None:
            return False
        threads = fp_weakref_target(ref)
        # A dead reference: the pool is gone, nobody can start a worker.
        return threads is not None and len(threads) < most

    def submit(self, fn, tuple args, dict kwargs):
        """The executor's fast submit: queue a new WorkItem and return its Future.

        None (nothing queued) when the item would need a new worker (the executor
        starts it first, in Python, so that failing to start one raises), or when the
        queue is full or closed: the caller's slow path handles those."""
        cdef WorkItem item
        # As ThreadPoolExecutor._enqueue: size() read before idle().
        if self._short_of_workers(<Py_ssize_t>self.q.size() + 1):
            return None
        item = _new_item(WorkItem.__new__(WorkItem), fn, args, kwargs)
        return item.future if self._try_put(item) == OK else None

    cdef inline int _try_put(self, object item):
        """try_push for Python objects: the queue owns a reference while it holds one."""
        Py_INCREF(item)  # owned by the queue until a worker steals it
        cdef int st = self.q.try_push(<void *>item)
        if st != OK:
            Py_DECREF(item)
        return st

    def request_retire(self, Py_ssize_t n):
        """Ask n workers to leave run_worker() after their current item (replaces any
        earlier request; 0 cancels it)."""
        self.q.request_retire(n)

    @property
    def retire_requested(self):
        """Retire requests not claimed by a worker yet."""
        return self.q.retire_requested()

    def claim_retire(self):
        """Take one retire request if there is one (True)."""
        return self.q.claim_retire()

    def qsize(self):
        return self.q.size()

    def __len__(self):
        return self.q.size()

    def put(self, item, timeout=None):
        """Queue item; block while full. Return False on timeout; raise QueueClosed."""
        cdef double t = _seconds(timeout)
        cdef int st
        Py_INCREF(item)  # owned by the queue until a getter steals it
        st = self.q.try_push(<void *>item)
        if st == FULL:
            if t == 0.0:
                st = TIMEOUT
            else:
                try:
                    st = self._put_wait(<void *>item, t)
                except BaseException:
                    Py_DECREF(item)
                    raise
        if st == OK:
            return True
        Py_DECREF(item)
        if st == CLOSED:
            raise QueueClosed("queue is closed")
        return False

    def put_nowait(self, item):
        """Queue item if there is room; return False if full. Raise QueueClosed."""
        return self.put(item, 0.0)

    cdef int _put_wait(self, void *p, double t) except -1:
        cdef double deadline = monotonic() + t if t > 0 else 0.0
        cdef double step
        cdef int st
        while True:
            step = WAIT_SLICE if t < 0 else min(WAIT_SLICE, deadline - monotonic())
            if step <= 0:
                return TIMEOUT
            with nogil:
                st = self.q.push(p, step)
            if st != TIMEOUT:
                return st
            PyErr_CheckSignals()

    def get(self, timeout=None):
        """Take the oldest item; block while empty.

        Raise QueueEmpty on timeout, QueueClosed when closed and empty."""
        cdef double t = _seconds(timeout)
        cdef double deadline = monotonic() + t if t > 0 else 0.0
        cdef double step
        cdef void *p = NULL
        cdef int st = self.q.try_pop(&p)
        while st == EMPTY and t != 0.0:
            step = WAIT_SLICE if t < 0 else min(WAIT_SLICE, deadline - monotonic())
            if step <= 0:
                break
            with nogil:
                st = self.q.pop(&p, step, 0)
            if st == TIMEOUT:
                st = EMPTY
                PyErr_CheckSignals()
        if st == OK:
            return _steal(p)
        if st == CLOSED:
            raise QueueClosed("queue is closed")
        raise QueueEmpty("queue is empty")

    def get_nowait(self):
        return self.get(0.0)

    def close(self):
        """Refuse further puts and wake every waiter; getters still drain what is queued."""
        with nogil:
            self.q.close()

    def drain(self):
        """Remove and return every queued item, oldest first."""
        cdef vector[void *] items
        self.q.drain(items)
        return _steal_all(items)

    # os.register_at_fork hooks (see fastpool/_forking.py).
    def _before_fork(self):
        # Held until _after_fork_*: nobody blocks on it holding the GIL (fp_queue.h).
        with nogil:
            self.q.lock_for_fork()

    def _after_fork_parent(self):
        self.q.unlock_after_fork()

    def _after_fork_child(self):
        """Reset the queue in a forked child; return the items it held."""
        cdef vector[void *] items
        self.q.reset_after_fork(items)
        return _steal_all(items)


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


cdef class WorkItem:
    """One call to run: fn(*args, **kwargs), its outcome delivered to future.

    run() follows concurrent.futures.thread._WorkItem.run exactly. Subclasses (the
    Pool's tasks) override run(); the worker loop calls plain WorkItems without
    going through Python attribute lookup.
    """

    cdef public object future
    cdef public object fn
    cdef public tuple args
    cdef public dict kwargs

    def __init__(self, future, fn, tuple args, dict kwargs):
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs

    def cancel(self):
        """Called for items removed from the queue unrun (shutdown(cancel_futures=True))."""
        return self.future.cancel()

    def fail(self, error):
        """Called for items removed from the queue unrun because the pool broke."""
        if not self.future.done():
            self.future.set_exception(error)

    cpdef run(self):
        future = self.future
        # Our own Future: transitions inline, no Python method calls.
        cdef bint native = type(future) is Future
        if native:
            if not _set_running(future):
                return
        elif not future.set_running_or_notify_cancel():
            return
        try:
            if self.kwargs:
                result = self.fn(*self.args, **self.kwargs)
            else:
                result = self.fn(*self.args)
        except BaseException as exc:
            if native:
                _finish(future, None, exc)
            else:
                future.set_exception(exc)
        else:
            if native:
                _finish(future, result, None)
            else:
                future.set_result(result)


cdef inline WorkItem _new_item(WorkItem item, fn, tuple args, dict kwargs):
    """Fill a WorkItem (or PoolTask) made with __new__: a new Future, the call."""
    item.future = Future()
    item.fn = fn
    item.args = args
    item.kwargs = kwargs
    return item


# ------------------------------------------------------------------------------- map
# map() without a Future per item. A MapJob holds the inputs; "runner" work items in
# the pool's queue take them in chunks and store the results; the job, which is its
# own iterator, hands them out. A runner sizes its chunks by how long items take:
# it starts with one item and doubles while a chunk finishes in under CHUNK_TARGET
# seconds, so a no-op map costs about one C loop iteration per item while slow
# (I/O-like) items still spread one by one over every worker. Cancellation is
# checked before every item, so closing the iterator stops the work promptly.

cdef class Ledger  # below: a Pool's map counts its items there

cdef double CHUNK_TARGET = 0.0002
cdef Py_ssize_t CHUNK_MAX = 1024


cdef class _Failure:
    """A result slot holding the exception an item raised."""
    cdef readonly object error

    def __cinit__(self, error):
        self.error = error


cdef object _failure_from_error():
    """The exception a raw C call just raised (it is set), as a _Failure; clears it."""
    cdef PyObject *etype = NULL
    cdef PyObject *value = NULL
    cdef PyObject *tb = NULL
    PyErr_Fetch(&etype, &value, &tb)
    PyErr_NormalizeException(&etype, &value, &tb)
    if tb != NULL:
        PyException_SetTraceback(value, tb)
    error = <object>value
    Py_XDECREF(etype)
    Py_XDECREF(value)
    Py_XDECREF(tb)
    return _Failure(error)


cdef class _MapRunner:
    cdef _MapState job

    def __cinit__(self, _MapState job):
        self.job = job

    def cancel(self):
        """Removed from the queue unrun: the job cannot complete any more."""
        self.fail(None)

    def fail(self, error):
        """Removed from the queue unrun because the pool broke: the consumer gets
        `error` (None: CancelledError) where the missing results would be."""
        with cython.critical_section(self.job):
            self.job.runners -= 1
        self.job.abort(error)

    def run(self):
        if self.job.hooks is not None and self.job.hooks.governed:
            self.job.hooks.run_governed(self.job)  # current_token(): the call's token
        else:
            self.job._run()


# A Pool's map counts its items in the pool's Ledger (ledger= and hooks= below), in
# bulk: inputs taken from the source are submitted and queued; a chunk a runner takes
# is running; at the end of the chunk its successes (and the items it skipped,
# cancelled) are counted before the chunk is published, so the consumer never sees an
# outcome the Ledger does not count yet. A failure goes through Python
# (hooks.failed, in fastpool/_pool_map.py), which counts it and decides: a final
# failure (dead-lettered under a retry policy), or a retry: the slot then holds
# _RETRY, the pool's timer calls requeue() after the backoff, and a runner runs the
# item again by itself, publishing its outcome under its index (ordered) or as a
# chunk of one (unordered).
cdef int _QUE_ = 1, _RUN_ = 2, _RET_ = 3, _SUC_ = 4, _FAIL_ = 5, _CANC_ = 6, _NOTS_ = 7


cdef class _MapState:
    """Iterator over fn applied to the inputs, computed by the pool's workers.

    MapJob(fn, inputs, enqueue, max_runners, *, star=True, ordered=True,
           return_exceptions=False, buffersize=None, chunksize=1, timeout=None,
           ledger=None, hooks=None, deadline=None)

    inputs: an iterator of argument tuples (star=True) or of single arguments. With
    buffersize=None every input is taken now, in the caller's thread (the stdlib's
    eager map); otherwise buffersize inputs are taken now and one more each time a
    result is requested, also in the caller's thread. enqueue(item) puts a runner on
    the pool's queue; enqueue may be a weak reference to that callable (a
    weakref.WeakMethod of the pool's), so that the job does not keep the pool alive:
    once it is dead no more inputs are taken (as the stdlib's map, whose iterator
    holds its executor weakly) and the job ends after those already taken. timeout
    counts from construction. Results come in input order
    (ordered=True) or as chunks complete. An item's exception is raised where its
    result would be (then the job is cancelled), or returned with return_exceptions.
    ledger, hooks: a Pool's map (see above); deadline: seconds an item may run, after
    which its outcome is a failure (hooks.failed with error None).
    """

    cdef object fn
    cdef object source
    cdef object enqueue
    cdef bint weak_enqueue    # enqueue is a weak reference to the callable
    cdef bint star, ordered, return_exceptions
    cdef bint input_done      # the source is exhausted
    # Read by runners before every item without a lock: a real atomic, so that it is
    # not a data race on free-threaded builds.
    cdef atomic[bint] cancelled   # consumer gone: runners stop taking items
    cdef bint aborted         # runners were removed unrun: raise abort_error
    cdef object abort_error   # what the consumer gets then (None: CancelledError)
    cdef Py_ssize_t buffersize, min_chunk, max_runners, runners
    cdef list pending         # inputs not yet taken; pending[head:] are live
    cdef Py_ssize_t head
    cdef Py_ssize_t taken     # inputs taken by runners (index of pending[head])
    cdef Py_ssize_t fed       # inputs taken from the source
    cdef Py_ssize_t yielded
    cdef dict chunks          # ordered: first index -> results
    cdef list done            # unordered: completed result lists
    cdef list cur
    cdef Py_ssize_t cur_pos
    cdef double deadline
    cdef Signal *signal
    # A Pool's map (None for the executor's).
    cdef Ledger ledger
    cdef readonly object hooks
    cdef double item_deadline  # seconds an item may run (< 0: no limit)
    cdef list retries         # (index, item, attempt): due to run again, counted queued
    cdef dict retried         # ordered: index -> slot of a retried item

    def __cinit__(self):
        self.signal = new Signal()

    def __dealloc__(self):
        del self.signal

    def __init__(self, fn, inputs, enqueue, Py_ssize_t max_runners, *, bint star=True,
                 bint ordered=True, bint return_exceptions=False, buffersize=None,
                 Py_ssize_t chunksize=1, timeout=None, Ledger ledger=None, hooks=None,
                 deadline=None):
        self.fn = fn
        self.source = iter(inputs)
        self.enqueue = enqueue
        self.weak_enqueue = isinstance(enqueue, weakref.ref)
        self.star = star
        self.ordered = ordered
        self.return_exceptions = return_exceptions
        self.max_runners = max(1, max_runners)
        self.min_chunk = max(1, chunksize)
        self.buffersize = 0 if buffersize is None else buffersize
        self.pending = []
        self.chunks = {}
        self.done = []
        self.retries = []
        self.retried = {}
        self.ledger = ledger
        self.hooks = hooks
        self.item_deadline = -1.0 if deadline is None else deadline
        self.deadline = -1.0 if timeout is None else c_monotonic() + timeout
        if self.buffersize:
            self._feed(self.buffersize)
        else:
            self._feed(-1)

    cdef int _count(self, int src, int dst, Py_ssize_t n, bint notify=True) except -1:
        """Move n items between the Ledger's counters (not under self's section)."""
        cdef bint watch
        cdef Ledger ledger = self.ledger
        if ledger is None or n <= 0:
            return 0
        with cython.critical_section(ledger):
            ledger._bulk(src, dst, n)
            watch = ledger._watch > 0
        if watch and notify:
            self.hooks.check_idle()  # someone waits for the pool to be idle
        return 0

    cdef int _feed(self, Py_ssize_t n) except -1:
        """Take up to n inputs (-1: all) from the source; start runners as needed."""
        cdef Py_ssize_t count = 0, want = 0
        cdef list batch
        if self.input_done or self.cancelled.load():
            return 0
        enqueue = self.enqueue
        if self.weak_enqueue:
            # Checked before an input is taken: none is taken for a pool that is gone.
            enqueue = enqueue()
            if enqueue is None:
                self.input_done = True
                return 0
        if n < 0:
            batch = list(self.source)
            self.input_done = True
        else:
            batch = []
            for item in self.source:
                batch.append(item)
                count += 1
                if count >= n:
                    break
            else:
                self.input_done = True
        if not batch:
            return 0
        if self.ledger is not None and not self.ledger._admit_n(len(batch)):
            self.input_done = True
            self.hooks.closed()  # raises the pool's error (shut down, broken)
            return 0
        with cython.critical_section(self):
            if self.head == len(self.pending):
                self.pending = batch
                self.head = 0
            else:
                self.pending.extend(batch)
            self.fed += len(batch)
            want = min(self.max_runners, len(self.pending) - self.head) - self.runners
            if want > 0:
                self.runners += want
        self._start_runners(want, enqueue)
        return 0

    cdef int _start_runners(self, Py_ssize_t want, enqueue) except -1:
        cdef bint stranded
        for _ in range(want):
            try:
                enqueue(_MapRunner(self))
            except BaseException:
                with cython.critical_section(self):
                    self.runners -= 1
                    stranded = self.runners <= 0
                if stranded:
                    # Nobody would run what is queued: it never runs.
                    self.abort(None)
                raise
        return 0

    def requeue(self, Py_ssize_t index, item, int attempt):
        """The pool's timer: a retry's backoff is over. Queue the item again (counted
        retrying -> queued); return True if a runner must be started for it (counted
        in `runners`: the caller enqueues _MapRunner(self) or calls runner_lost)."""
        cdef bint start = False, dropped = False
        with cython.critical_section(self):
            if self.cancelled.load():
                dropped = True
            else:
                self.retries.append((index, item, attempt))
                if self.runners < self.max_runners:
                    self.runners += 1
                    start = True
        if dropped:
            self._count(_RET_, _CANC_, 1)
        else:
            self._count(_RET_, _QUE_, 1)
        return start

    def runner(self):
        """A new runner for this job (see requeue)."""
        return _MapRunner(self)

    def runner_lost(self):
        """A runner counted by requeue could not be queued."""
        cdef bint stranded
        with cython.critical_section(self):
            self.runners -= 1
            stranded = self.runners <= 0
        if stranded:
            self.abort(None)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef _Failure _item_failed(self, Py_ssize_t index, item, int attempt, bint overdue):
        """The rare path: an item raised (the exception is set), or ran past its
        deadline (overdue). Without hooks the slot holds the error; a Pool's hooks
        count the failure (or the retry) and return the error (None: retrying)."""
        cdef _Failure failure
        if overdue:
            failure = _Failure(None)
        else:
            failure = <_Failure>_failure_from_error()
            if self.hooks is None:
                return failure
        try:
            return _Failure(self.hooks.failed(self, index, item, failure.error, attempt))
        except BaseException as exc:
            # hooks.failed counts before it can fail; if it fails, the item is failed.
            self._count(_RUN_, _FAIL_, 1)
            return _Failure(exc)

    def run_loop(self):
        """A runner's loop (hooks.run_governed calls it around the call's token)."""
        self._run()

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef void _run(self) except *:
        """A runner's loop: take a chunk, compute it, publish it; until nothing is left."""
        cdef Py_ssize_t size = self.min_chunk, take, start, i, n, nok, nskip
        cdef list items, results
        cdef double t0, t1 = 0.0, elapsed
        cdef double limit = self.item_deadline
        cdef bint timed = limit >= 0
        cdef PyObject *r
        cdef object fn, failure, retry
        while True:
            retry = None
            with cython.critical_section(self):
                n = len(self.pending) - self.head
                if self.cancelled.load() or (n <= 0 and not self.retries):
                    self.runners -= 1
                    return
                if self.retries:
                    # A retried item goes first, by itself.
                    retry = self.retries.pop(0)
                else:
                    # At most a fair share of what is left (guided self-scheduling): the
                    # last inputs spread over every runner instead of one runner taking a
                    # grown chunk, where a fast item's result would wait for a slow one
                    # while other workers idle (the stdlib's test_map_timeout).
                    take = min(size, max(self.min_chunk,
                                         (n + self.max_runners - 1) // self.max_runners), n)
                    start = self.taken
                    items = self.pending[self.head:self.head + take]
                    # Drop our references to the inputs; compact now and then.
                    self.head += take
                    self.taken += take
                    if self.head >= 4096 and self.head * 2 >= len(self.pending):
                        del self.pending[:self.head]
                        self.head = 0
            if retry is not None:
                self._run_retry(retry)
                continue
            self._count(_QUE_, _RUN_, take, False)
            # Every slot of this fresh list is filled below before anyone sees it.
            results = PyList_New(take)
            t0 = c_monotonic()
            fn = self.fn
            nok = nskip = 0
            for i in range(take):
                if self.cancelled.load():
                    # Never started: reported as cancelled if anyone still looks.
                    failure = _Failure(CancelledError())
                    Py_INCREF(failure)
                    PyList_SET_ITEM_STEAL(results, i, <PyObject *>failure)
                    nskip += 1
                    continue
                if timed:
                    t1 = c_monotonic()
                # The hot loop: a raw C call (no Python-level try block to set up per
                # item); NULL means it raised, and the exception becomes the slot's value.
                if self.star:
                    r = PyObject_Call(fn, items[i], NULL)
                else:
                    r = PyObject_CallOneArg(fn, items[i])
                if r == NULL:
                    failure = self._item_failed(start + i, items[i], 1, False)
                    Py_INCREF(failure)
                    r = <PyObject *>failure
                elif timed and c_monotonic() - t1 > limit:
                    Py_DECREF(<object>r)  # a late result is not delivered
                    failure = self._item_failed(start + i, items[i], 1, True)
                    Py_INCREF(failure)
                    r = <PyObject *>failure
                else:
                    nok += 1
                PyList_SET_ITEM_STEAL(results, i, r)
            failure = None
            items = None
            elapsed = c_monotonic() - t0
            # Counted before published: whoever sees an outcome finds it in the stats.
            if self.ledger is not None:
                self._count(_RUN_, _SUC_, nok)
                self._count(_RUN_, _CANC_, nskip)
            with cython.critical_section(self):
                if self.ordered:
                    self.chunks[start] = results
                else:
                    self.done.append(results)
            self.signal.notify()
            # Adapt: fast items -> bigger chunks (fewer hand-offs); slow -> one by one.
            if elapsed < CHUNK_TARGET:
                size = min(size * 2, CHUNK_MAX)
            elif elapsed > 4 * CHUNK_TARGET and size > self.min_chunk:
                size = max(size // 2, self.min_chunk)

    cdef int _run_retry(self, tuple entry) except -1:
        """Run a retried item again (counted queued) and publish its outcome."""
        cdef Py_ssize_t index = entry[0]
        cdef int attempt = entry[2]
        cdef double t1
        cdef PyObject *r
        cdef object slot
        item = entry[1]
        self._count(_QUE_, _RUN_, 1, False)
        t1 = c_monotonic()
        if self.star:
            r = PyObject_Call(self.fn, item, NULL)
        else:
            r = PyObject_CallOneArg(self.fn, item)
        if r == NULL:
            slot = self._item_failed(index, item, attempt, False)
            if (<_Failure>slot).error is None:
                return 0  # retrying again
        elif self.item_deadline >= 0 and c_monotonic() - t1 > self.item_deadline:
            Py_DECREF(<object>r)
            slot = self._item_failed(index, item, attempt, True)
        else:
            slot = <object>r
            Py_DECREF(slot)  # <object> took its own reference
            self._count(_RUN_, _SUC_, 1)
        with cython.critical_section(self):
            if self.ordered:
                self.retried[index] = slot
            else:
                self.done.append([slot])
        self.signal.notify()
        return 0

    cdef list _take_unstarted(self):
        """Under self's section: stop, and take every item not started (queued)."""
        cdef list left = [(item, 1) for item in self.pending[self.head:]]
        left += [(e[1], e[2]) for e in self.retries]
        self.pending = []
        self.head = 0
        self.retries = []
        self.cancelled.store(True)
        return left

    def hand_back(self):
        """Shutdown takes back the items not started: counted queued -> not_started,
        returned as (item, attempt) pairs; the consumer gets CancelledError for them."""
        cdef list left
        with cython.critical_section(self):
            left = self._take_unstarted()
            self.aborted = True
        self._count(_QUE_, _NOTS_, len(left))
        self.signal.notify()
        return left

    def abort(self, error=None):
        """The pool is cancelling its work: inputs not started yet never run, and the
        consumer gets `error` (None: CancelledError) where their results would be."""
        cdef list left
        with cython.critical_section(self):
            self.aborted = True
            if self.abort_error is None:
                self.abort_error = error
            left = self._take_unstarted()
        self._count(_QUE_, _CANC_, len(left))
        self.signal.notify()

    cdef int _drop(self, bint notify) except -1:
        cdef list left
        self.cur = None
        with cython.critical_section(self):
            left = self._take_unstarted()
            self.chunks.clear()
            self.done.clear()
            self.retried.clear()
        self._count(_QUE_, _CANC_, len(left), notify)
        return 0

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef object _next(self):
        cdef object r
        cdef object chunk
        cdef bint finished
        cdef unsigned long long seen
        cdef double remaining
        cdef bint ok
        cdef bint aborted, idle
        # As the stdlib's lazy map: each step takes one more input before its result.
        if self.buffersize and not self.input_done and not self.cancelled.load():
            self._feed(1)
        while True:
            seen = self.signal.generation()
            if self.cur is not None:
                if self.cur_pos < len(self.cur):
                    r = self.cur[self.cur_pos]
                    if type(r) is _Failure and (<_Failure>r).error is None:
                        # The item is being retried: unordered, its outcome comes later
                        # as a chunk of its own; ordered, it is awaited here.
                        if not self.ordered:
                            self.cur_pos += 1
                            continue
                        with cython.critical_section(self):
                            r = self.retried.pop(self.yielded, None)
                        if r is None:
                            self._wait(seen)
                            continue
                    # Yielded results are not kept (bpo-14406): only the consumer
                    # holds them from here.
                    self.cur[self.cur_pos] = None
                    self.cur_pos += 1
                    self.yielded += 1
                    if type(r) is _Failure:
                        if not self.return_exceptions:
                            self.close()
                            raise (<_Failure>r).error
                        r = (<_Failure>r).error
                    return r
                self.cur = None
            with cython.critical_section(self):
                aborted = self.aborted
            if self.cancelled.load() and not aborted:
                raise StopIteration
            with cython.critical_section(self):
                if self.ordered:
                    chunk = self.chunks.pop(self.yielded, None)
                elif self.done:
                    chunk = self.done.pop(0)
                else:
                    chunk = None
                finished = self.input_done and self.yielded >= self.fed
            if chunk is not None:
                self.cur = chunk
                self.cur_pos = 0
                continue
            if finished:
                raise StopIteration
            self._wait(seen)

    cdef int _wait(self, unsigned long long seen) except -1:
        """Wait for a runner to publish (after `seen`): 0. If it never will, close
        and raise: the abort error (the job was aborted and no runner is left, as the
        stdlib's running futures complete first), or TimeoutError (the timeout)."""
        cdef bint aborted, idle, ok
        cdef double remaining
        with cython.critical_section(self):
            aborted = self.aborted
            idle = self.runners <= 0
        if aborted and idle:
            self.close()
            if self.abort_error is not None:
                raise self.abort_error
            raise CancelledError()
        if self.deadline >= 0:
            remaining = self.deadline - c_monotonic()
            if remaining <= 0:
                self.close()
                raise FuturesTimeoutError()
            remaining = min(remaining, WAIT_SLICE)
        else:
            remaining = WAIT_SLICE
        with nogil:
            ok = self.signal.wait(seen, remaining)
        if not ok:
            PyErr_CheckSignals()
        return 0

    def close(self):
        """Stop: inputs not started yet are never run (counted cancelled)."""
        self._drop(True)


cdef class MapJob:
    """The consumer's side of a map (see _MapState); dropping it cancels the rest.

    MapJob(fn, inputs, enqueue, max_runners, *, star=True, ordered=True,
           return_exceptions=False, buffersize=None, chunksize=1, timeout=None,
           ledger=None, hooks=None, deadline=None)
    """
    cdef _MapState state
    cdef object __weakref__

    def __init__(self, fn, inputs, enqueue, Py_ssize_t max_runners, **options):
        self.state = _MapState(fn, inputs, enqueue, max_runners, **options)

    def __dealloc__(self):
        # Runners keep the state alive; this is the consumer letting go (as the
        # stdlib's map generator cancels its futures when it is closed or collected).
        # No Python code of the pool runs from here (a join() polls; see Pool).
        if self.state is not None:
            try:
                self.state._drop(False)
            except BaseException:
                self.state.cancelled.store(True)

    def __iter__(self):
        return self

    def __next__(self):
        return self.state._next()

    @property
    def job(self):
        """The job's state (runners and the pool's hooks hold it; it holds no MapJob)."""
        return self.state

    def close(self):
        """Stop: inputs not started yet are never run."""
        self.state.close()

    def abort(self):
        """Cancel what has not started; the consumer gets CancelledError for it."""
        self.state.abort()


cdef inline void _run_one(object item) noexcept:
    # Never let an exception end the worker: run() delivers the task's own errors to
    # its future; what reaches here came from elsewhere (e.g. a done-callback raising
    # a BaseException), and is logged instead of killing the thread.
    try:
        if isinstance(item, WorkItem):
            (<WorkItem>item).run()  # C dispatch (PoolTask included)
        else:
            item.run()
    except BaseException:
        try:
            LOGGER.exception("exception in fastpool worker running %r", item)
        except BaseException:
            pass


def run_worker(WorkQueue queue, idle_timeout=None, on_idle=None):
    """The worker loop: run items from queue until it is closed and empty.

    After idle_timeout seconds without work, call on_idle(): the worker exits if it
    returns true (or if on_idle is None). Return True when the queue closed, False
    when the worker retired (for idleness, or claiming a retire request).
    """
    cdef Queue *q = queue.q
    cdef void *p = NULL
    cdef int st
    cdef double t = _seconds(idle_timeout)
    if t == 0.0:
        t = 1e-6
    # The worker counts as idle from here until it holds an item: the executor's
    # submit() reads this to reuse idle workers before starting new threads.
    q.add_idle(1)
    try:
        while True:
            with nogil:
                # worker=True: leaves the idle count as it takes the item (fp_queue.h).
                st = q.pop(&p, t, SPIN_NS, True)
            if st == OK:
                # Run this item and, without giving up the GIL, whatever else is queued
                # (unless asked to retire: see request_retire).
                while st == OK:
                    _run_one(_steal(p))
                    if q.retire_requested() and q.claim_retire():
                        q.add_idle(1)
                        return False
                    st = q.try_pop(&p)
                # Idle again before the GIL is released: a thread woken by the result
                # just delivered sees this worker as available.
                q.add_idle(1)
                if st == CLOSED:
                    return True
            elif st == CLOSED:
                return True
            elif on_idle is None or on_idle():
                return False
    finally:
        q.add_idle(-1)


# ------------------------------------------------------------------- Pool bookkeeping
# fastpool.Pool's hot path. Every Pool task is in exactly one of the states counted
# below, and every change of state moves its counters in one step (one critical
# section: nothing else runs in between with the GIL, a per-object lock without it),
# so a snapshot always adds up. The common case -- a task with no per-task options --
# is submitted, started and settled here without running Python code of the pool;
# everything unusual (failures, retries, deadlines, shutdown) is Python in pool.py,
# which moves the same counters through Ledger.move(). Doing this in C is not only
# fewer instructions: a Python-level lock held across bytecodes lets the GIL switch
# inside the critical section, and the other workers then queue up on that lock
# (a convoy: ~0.2 context switches per task, measured).

# Counter indexes (the order of Stats' counter fields); OUTSIDE: not (or no longer)
# submitted -- moving from it counts a submission, moving to it un-counts one.
N_SUBMITTED, N_QUEUED, N_RUNNING, N_RETRYING, N_SUCCEEDED, N_FAILED = 0, 1, 2, 3, 4, 5
N_CANCELLED, N_NOT_STARTED, N_RETRIED, N_DEAD_LETTERED, N_REJECTED = 6, 7, 8, 9, 10
OUTSIDE = -1
# Task states (PoolTask.state); see fastpool/pool.py.
# TASK_OVERDUE: its deadline passed (its future failed) while its call still runs;
# it stays counted running until the call returns.
TASK_QUEUED, TASK_RUNNING, TASK_RETRY, TASK_SETTLING, TASK_DONE, TASK_ABANDONED, \
    TASK_OVERDUE = range(7)
# Ledger.admit()'s answers.
PUT_OK, PUT_FULL, PUT_CLOSED = 0, 1, 2
# Latency samples kept: the last SAMPLE_WINDOW sampled tasks; one task in
# SAMPLE_EVERY is sampled (two clock reads).
SAMPLE_WINDOW = 4096
SAMPLE_EVERY = 8

cdef enum:
    _SUB = 0
    _QUE = 1
    _RUN = 2
    _RET = 3
    _SUC = 4
    _NCOUNT = 11
    _OUTSIDE = -1
    _EVERY = 8
    _T_QUEUED = 0
    _T_RUNNING = 1
    _T_DONE = 4
    _WINDOW = 4096
    _PUT_OK = 0
    _PUT_FULL = 1
    _PUT_CLOSED = 2


def clock():
    """Seconds on the clock the latency samples use (task.t_queued)."""
    return c_monotonic()


cdef class Ledger:
    """A Pool's counters, its running tasks and its latency samples (see above)."""

    cdef long long c[_NCOUNT]
    cdef readonly set running        # the tasks in state RUNNING
    cdef readonly WorkQueue queue
    cdef bint _closed                # submit() refuses: the pool is shut down or broken
    cdef bint _collecting            # shutdown hands back what workers take
    cdef readonly bint slow          # every task starts through pool._run_slow
    cdef int _watch                  # > 0: someone waits for the pool to be idle
    cdef int _room                   # > 0: producers wait for room in the queue
    cdef unsigned long long stamps, samples
    cdef double wait_ring[_WINDOW]
    cdef double run_ring[_WINDOW]

    def __cinit__(self, WorkQueue queue, bint slow=False):
        cdef Py_ssize_t i
        self.queue = queue
        self.slow = slow
        self.running = set()
        for i in range(_NCOUNT):
            self.c[i] = 0
        for i in range(_WINDOW):
            self.wait_ring[i] = NAN
            self.run_ring[i] = NAN

    # -- flags (each read and written under the critical section) --

    @property
    def closed(self):
        with cython.critical_section(self):
            return self._closed

    def close(self):
        """submit() returns None from now on (the pool's slow path raises)."""
        with cython.critical_section(self):
            self._closed = True

    @property
    def collecting(self):
        with cython.critical_section(self):
            return self._collecting

    def start_collecting(self):
        """Workers hand back (pool._not_run) every task they take from now on."""
        with cython.critical_section(self):
            self._collecting = True

    @property
    def watch(self):
        with cython.critical_section(self):
            return self._watch

    def add_watch(self, int delta):
        with cython.critical_section(self):
            self._watch += delta

    @property
    def room_waiters(self):
        with cython.critical_section(self):
            return self._room

    def add_room_waiter(self, int delta):
        """A producer starts (+1) or stops (-1) waiting for room: while one waits, a
        worker taking a task calls pool._room_made()."""
        with cython.critical_section(self):
            self._room += delta

    # -- counters --

    cdef inline int _shift(self, int src, int dst, int extra, task) except -1:
        # The one state change, in the caller's critical section on self: counter src -1,
        # dst +1 (OUTSIDE: submitted), extra +1; with `task`, the running set follows.
        if src == _OUTSIDE:
            self.c[_SUB] += 1
        else:
            self.c[src] -= 1
        if dst == _OUTSIDE:
            self.c[_SUB] -= 1
        else:
            self.c[dst] += 1
        if extra >= 0:
            self.c[extra] += 1
        if task is not None:
            if src == _RUN:
                self.running.discard(task)
            elif dst == _RUN:
                self.running.add(task)
        return 0

    def move(self, int src, int dst, int extra=-1, task=None):
        """One task changes state: counter src -1, dst +1 (OUTSIDE: submitted), extra +1.

        With `task`, the running set follows (leaving or entering N_RUNNING).
        Return whether someone watches for idleness (pool._check_idle)."""
        if not (_OUTSIDE <= src < _NCOUNT and _OUTSIDE <= dst < _NCOUNT
                and -1 <= extra < _NCOUNT):
            raise ValueError(f"bad counter index in move({src}, {dst}, {extra})")
        with cython.critical_section(self):
            self._shift(src, dst, extra, task)
            return self._watch > 0

    cdef inline void _bulk(self, int src, int dst, Py_ssize_t n) noexcept:
        # n items change state at once (a map's chunk), in the caller's critical section.
        if src == _OUTSIDE:
            self.c[_SUB] += n
        else:
            self.c[src] -= n
        if dst == _OUTSIDE:
            self.c[_SUB] -= n
        else:
            self.c[dst] += n

    cdef bint _admit_n(self, Py_ssize_t n) except -1:
        # A map's inputs: counted submitted and queued, unless the ledger is closed.
        with cython.critical_section(self):
            if self._closed:
                return False
            self._bulk(_OUTSIDE, _QUE, n)
        return True

    def move_n(self, int src, int dst, Py_ssize_t n):
        """n items (of a map) change state at once, as move() does for one task."""
        if not (_OUTSIDE <= src < _NCOUNT and _OUTSIDE <= dst < _NCOUNT) or n < 0:
            raise ValueError(f"bad counter index in move_n({src}, {dst}, {n})")
        with cython.critical_section(self):
            self._bulk(src, dst, n)
            return self._watch > 0

    cdef inline tuple _counts(self):
        # In the caller's critical section on self.
        return tuple([self.c[i] for i in range(_NCOUNT)])

    def counts(self):
        """The counters, in Stats' order, read at one instant."""
        with cython.critical_section(self):
            return self._counts()

    def snapshot(self):
        """The counters (Stats' order) and the running tasks, read at one instant."""
        with cython.critical_section(self):
            return self._counts(), list(self.running)

    def idle(self):
        """Nothing queued, running or waiting to retry."""
        with cython.critical_section(self):
            return self.c[_QUE] == 0 and self.c[_RUN] == 0 and self.c[_RET] == 0

    def in_transit(self):
        """Tasks counted queued or retrying."""
        with cython.critical_section(self):
            return self.c[_QUE] + self.c[_RET]

    # -- latency samples --

    cdef inline bint _sampled(self) noexcept:
        cdef bint yes
        with cython.critical_section(self):
            yes = self.stamps % _EVERY == 0
            self.stamps += 1
        return yes

    def sampled(self):
        """Whether the task being submitted now records its latencies."""
        return self._sampled()

    cdef inline void _sample(self, double wait, double run) noexcept:
        cdef unsigned long long i
        with cython.critical_section(self):
            i = self.samples % _WINDOW
            self.samples += 1
            self.wait_ring[i] = wait
            self.run_ring[i] = run

    def sample(self, double wait, double run):
        """Record one task's queue wait and run time (seconds)."""
        self._sample(wait, run)

    def latencies(self):
        """(waits, runs) of the last SAMPLE_WINDOW samples (NaN: slot never written)."""
        with cython.critical_section(self):
            return ([self.wait_ring[i] for i in range(_WINDOW)],
                    [self.run_ring[i] for i in range(_WINDOW)])

    # -- tasks --

    cdef PoolTask _new_task(self, pool, fn, tuple args, dict kwargs, opts, retry):
        cdef PoolTask task = <PoolTask>_new_item(PoolTask.__new__(PoolTask), fn, args, kwargs)
        task.pool = pool
        task.ledger = self
        task.opts = opts
        task.retry = retry
        task.attempt = 1
        task.state = _T_QUEUED
        task.t_queued = 0.0
        return task

    def task(self, pool, fn, tuple args, dict kwargs, opts=None, retry=None):
        """A new, uncounted PoolTask (attempt 1, QUEUED) with a new Future."""
        return self._new_task(pool, fn, args, kwargs, opts, retry)

    def admit(self, PoolTask task, int src=_OUTSIDE):
        """Count and queue `task` in one step: PUT_OK, or PUT_FULL / PUT_CLOSED with
        nothing counted. `src`: OUTSIDE for a new task (refused once the ledger is
        closed), N_RETRYING for a retry going back to the queue.

        Counted and queued at once, a task waiting for room is in no counter: live
        `submitted` never goes back, and `queued` never counts what is not queued."""
        if not (src == _OUTSIDE or src == _RET):
            raise ValueError(f"admit() moves a task from OUTSIDE or N_RETRYING, not {src}")
        return self._admit(task, src)

    cdef int _admit(self, PoolTask task, int src) except -1:
        cdef int st
        with cython.critical_section(self):
            if src == _OUTSIDE and self._closed:
                return _PUT_CLOSED
            # Counted first: the worker that takes it may move it on at once. With the
            # GIL (no Python code runs in between, and a bounded queue's try_push never
            # releases it) nobody sees the count undone when the put fails.
            self._shift(src, _QUE, -1, None)
            st = self.queue._try_put(task)
            if st != OK:
                self._shift(_QUE, src, -1, None)
        return _PUT_OK if st == OK else _PUT_FULL if st == FULL else _PUT_CLOSED

    def submit(self, pool, fn, tuple args, dict kwargs, retry):
        """The fast submit: count and queue a task without options (and start a worker
        if it needs one); return its future.

        None (and nothing counted or queued, see admit) if the pool is closed or the
        queue is full or closed: the caller takes the slow path, which waits or raises."""
        cdef PoolTask task
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        task = self._new_task(pool, fn, args, kwargs, None, retry)
        if self._sampled():
            task.t_queued = c_monotonic()
        if self._admit(task, _OUTSIDE) != _PUT_OK:
            return None  # nothing counted
        # Work waiting for more workers than are idle: one more, if allowed (see
        # WorkQueue.bind_workers).
        if self.queue._short_of_workers(<Py_ssize_t>self.queue.q.size()):
            pool._adjust_thread_count()
        return task.future


cdef class PoolTask(WorkItem):
    """A Pool task: a WorkItem with its pool, options, retry policy and state."""

    cdef public object pool
    cdef public object opts           # None, or the pool's per-task options
    cdef public object retry
    cdef public int attempt
    cdef public int state
    cdef public double t_queued       # clock() when queued if sampled, else 0
    cdef readonly Ledger ledger

    def __init__(self):
        raise TypeError("PoolTask objects are made by Ledger.task()")

    cpdef run(self):
        if self.opts is not None or self.ledger.slow:
            self.pool._run_slow(self)
        else:
            self.run_plain()

    cpdef run_plain(self):
        """Run a task without options: start, call, settle, count."""
        cdef Ledger ledger = self.ledger
        cdef bint ok, watch, room
        cdef double t0 = 0.0
        cdef double t_queued = self.t_queued
        future = self.future
        cdef bint started = _set_running(future)
        with cython.critical_section(ledger):
            ok = started and not ledger._collecting
            if ok:
                self.state = _T_RUNNING
                ledger._shift(_QUE, _RUN, -1, self)
            room = ledger._room > 0
        if room:
            self.pool._room_made()  # taking this task made room in the queue
        if not ok:
            self.pool._not_run(self, started)
            return
        if t_queued:
            t0 = c_monotonic()
        try:
            if self.kwargs:
                result = self.fn(*self.args, **self.kwargs)
            else:
                result = self.fn(*self.args)
        except BaseException as exc:
            if t_queued:
                ledger._sample(t0 - t_queued, c_monotonic() - t0)
            self.pool._task_failed(self, exc)
            return
        if t_queued:
            ledger._sample(t0 - t_queued, c_monotonic() - t0)
        try:
            _finish(future, result, None)
        finally:
            with cython.critical_section(ledger):
                self.state = _T_DONE
                ledger._shift(_RUN, _SUC, -1, self)
                watch = ledger._watch > 0
            if watch:
                self.pool._check_idle_locked()
