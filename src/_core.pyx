# cython: language_level=3, embedsignature=True, freethreading_compatible=True
# distutils: language = c++
"""fastpool._core: the native core.

Read top to bottom, this is the hot path: the queue (a thin owner of fp::Queue from
fp_queue.h), the work item, and the worker loop, which waits for and dequeues work
with the GIL released and takes the GIL only to run Python code -- then keeps it for
as long as more work is queued, so a busy pool pays one GIL hand-off per batch, not
one per task.

The parts live in src/core/ and are included in that order: queue.pxi (WorkQueue),
future.pxi (Future), worker.pxi (WorkItem, run_worker), then the map engine (MapJob,
below in this file), then ledger.pxi (the Pool's Ledger and PoolTask). `include` pastes
them into this one module: cdef functions and classes are shared across them.

fastpool/_py/ is the pure-Python twin of this module, file for file (queue.py,
worker.py, map.py, ledger.py; the Future's twin is fastpool/_future.py); both must keep
the same interface (fastpool/_core.pyi), and the whole test suite runs against both.
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

# What this module exports: the same as its twin, fastpool/_py/__init__.py
# (tests/test_core_parity.py compares them).
__all__ = [
    "Future", "Ledger", "MapJob", "PoolTask", "QueueClosed", "QueueEmpty", "WorkItem",
    "WorkQueue", "clock", "run_worker", "spin_ns",
    # The numbers, fastpool._states' (imported in core/ledger.pxi).
    "N_CANCELLED", "N_COUNTERS", "N_DEAD_LETTERED", "N_FAILED", "N_NOT_STARTED",
    "N_QUEUED", "N_REJECTED", "N_RETRIED", "N_RETRYING", "N_RUNNING", "N_SUBMITTED",
    "N_SUCCEEDED", "OUTSIDE", "PUT_CLOSED", "PUT_FULL", "PUT_OK", "SAMPLE_EVERY",
    "SAMPLE_WINDOW", "TASK_ABANDONED", "TASK_DONE", "TASK_OVERDUE", "TASK_QUEUED",
    "TASK_RETRY", "TASK_RUNNING", "TASK_SETTLING",
]

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


cdef object LOGGER = logging.getLogger("concurrent.futures")

# A blocked put()/get() called from Python wakes this often to let signal handlers
# (KeyboardInterrupt) run: a C wait cannot be interrupted otherwise.
cdef double WAIT_SLICE = 0.05


include "core/queue.pxi"
include "core/future.pxi"
include "core/worker.pxi"


# ------------------------------------------------------------------------------- map
# map() without a Future per item. A MapJob holds the inputs; "runner" work items in
# the pool's queue take them in chunks and store the results; the job, which is its
# own iterator, hands them out. A runner sizes its chunks by how long items take:
# it starts with one item and doubles while a chunk finishes in under CHUNK_TARGET
# seconds, so a no-op map costs about one C loop iteration per item while slow
# (I/O-like) items still spread one by one over every worker. Cancellation is
# checked before every item, so closing the iterator stops the work promptly.

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
        self.job._run()


cdef class _MapState:
    """Iterator over fn applied to the inputs, computed by the pool's workers.

    MapJob(fn, inputs, enqueue, max_runners, *, star=True, ordered=True,
           return_exceptions=False, buffersize=None, chunksize=1, timeout=None)

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

    def __cinit__(self):
        self.signal = new Signal()

    def __dealloc__(self):
        del self.signal

    def __init__(self, fn, inputs, enqueue, Py_ssize_t max_runners, *, bint star=True,
                 bint ordered=True, bint return_exceptions=False, buffersize=None,
                 Py_ssize_t chunksize=1, timeout=None):
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
        self.deadline = -1.0 if timeout is None else c_monotonic() + timeout
        if self.buffersize:
            self._feed(self.buffersize)
        else:
            self._feed(-1)

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
        for _ in range(want):
            try:
                enqueue(_MapRunner(self))
            except BaseException:
                with cython.critical_section(self):
                    self.runners -= 1
                raise
        return 0

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef void _run(self) except *:
        """A runner's loop: take a chunk, compute it, publish it; until nothing is left."""
        cdef Py_ssize_t size = self.min_chunk, take, start, i, n
        cdef list items, results
        cdef double t0, elapsed
        cdef PyObject *r
        cdef object fn, failure
        while True:
            with cython.critical_section(self):
                n = len(self.pending) - self.head
                if self.cancelled.load() or n <= 0:
                    self.runners -= 1
                    return
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
            # Every slot of this fresh list is filled below before anyone sees it.
            results = PyList_New(take)
            t0 = c_monotonic()
            fn = self.fn
            for i in range(take):
                if self.cancelled.load():
                    # Never started: reported as cancelled if anyone still looks.
                    failure = _Failure(CancelledError())
                    Py_INCREF(failure)
                    PyList_SET_ITEM_STEAL(results, i, <PyObject *>failure)
                    continue
                # The hot loop: a raw C call (no Python-level try block to set up per
                # item); NULL means it raised, and the exception becomes the slot's value.
                if self.star:
                    r = PyObject_Call(fn, items[i], NULL)
                else:
                    r = PyObject_CallOneArg(fn, items[i])
                if r == NULL:
                    failure = _failure_from_error()
                    Py_INCREF(failure)
                    r = <PyObject *>failure
                PyList_SET_ITEM_STEAL(results, i, r)
            failure = None
            items = None
            elapsed = c_monotonic() - t0
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

    def abort(self, error=None):
        """The pool is cancelling its work: inputs not started yet never run, and the
        consumer gets `error` (None: CancelledError) where their results would be."""
        with cython.critical_section(self):
            self.aborted = True
            if self.abort_error is None:
                self.abort_error = error
            self.cancelled.store(True)
        self.signal.notify()

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
            if self.cur is not None:
                if self.cur_pos < len(self.cur):
                    r = self.cur[self.cur_pos]
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
            seen = self.signal.generation()
            with cython.critical_section(self):
                if self.ordered:
                    chunk = self.chunks.pop(self.yielded, None)
                elif self.done:
                    chunk = self.done.pop(0)
                else:
                    chunk = None
                finished = self.input_done and self.yielded >= self.fed
                aborted = self.aborted
                idle = self.runners <= 0
            if chunk is not None:
                self.cur = chunk
                self.cur_pos = 0
                continue
            if finished:
                raise StopIteration
            # Aborted: runners still busy may yet publish the result we want (as the
            # stdlib's running futures complete); once none is left, it never comes.
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

    def close(self):
        """Stop: inputs not started yet are never run."""
        self.cancelled.store(True)
        self.cur = None
        with cython.critical_section(self):
            self.chunks.clear()
            self.done.clear()


cdef class MapJob:
    """The consumer's side of a map (see _MapState); dropping it cancels the rest.

    MapJob(fn, inputs, enqueue, max_runners, *, star=True, ordered=True,
           return_exceptions=False, buffersize=None, chunksize=1, timeout=None)
    """
    cdef _MapState state
    cdef object __weakref__

    def __init__(self, fn, inputs, enqueue, Py_ssize_t max_runners, **options):
        self.state = _MapState(fn, inputs, enqueue, max_runners, **options)

    def __dealloc__(self):
        # Runners keep the state alive; this is the consumer letting go (as the
        # stdlib's map generator cancels its futures when it is closed or collected).
        if self.state is not None:
            self.state.cancelled.store(True)

    def __iter__(self):
        return self

    def __next__(self):
        return self.state._next()

    def close(self):
        """Stop: inputs not started yet are never run."""
        self.state.close()

    def abort(self):
        """Cancel what has not started; the consumer gets CancelledError for it."""
        self.state.abort()


include "core/ledger.pxi"
