# cython: language_level=3, embedsignature=True, freethreading_compatible=True
# distutils: language = c++
"""fastpool._core: the native core.

Read top to bottom, this is the hot path: the queue (a thin owner of fp::Queue from
fp_queue.h), the work item, and the worker loop, which waits for and dequeues work
with the GIL released and takes the GIL only to run Python code -- then keeps it for
as long as more work is queued, so a busy pool pays one GIL hand-off per batch, not
one per task.

The parts live in src/core/ and are included in that order: queue.pxi (WorkQueue),
future.pxi (Future), worker.pxi (WorkItem, run_worker), map.pxi (MapJob: the map
engine), then ledger.pxi (the Pool's Ledger and PoolTask). `include` pastes
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
# (tests/core/test_core_parity.py compares them).
__all__ = [
    "Future", "Ledger", "MapJob", "PoolTask", "QueueClosed", "QueueEmpty", "WorkItem",
    "WorkQueue", "clock", "forget_lock_after_fork", "run_worker", "spin_ns",
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


cdef extern from *:
    """
    /* Forked child only (no other thread exists): mark an object's lock free.
     * Free-threaded CPython hands a contended per-object lock (the one critical
     * sections take) straight to a waiter that has waited > 1 ms, even when that waiter
     * is parked for fork's stop-the-world and has not run yet: the lock is then held at
     * fork by a thread that does not exist in the child, for ever. Every other thread
     * was stopped outside its critical sections, so what the lock guards is consistent
     * and only the lock word is stale. A PyMutex may be reset after fork (CPython
     * clears the parking lot's waiters then). CPython gh-144513 stops critical
     * sections from waiting during the pause itself, not in the child: the at-fork hooks
     * run after it. With the GIL there are no such locks. */
    static inline void fp_forget_object_lock(PyObject *o) {
    #ifdef Py_GIL_DISABLED
        memset(&o->ob_mutex, 0, sizeof(o->ob_mutex));
    #else
        (void)o;
    #endif
    }
    """
    void fp_forget_object_lock(PyObject *o) noexcept


def forget_lock_after_fork(obj):
    """In a forked child only: mark `obj`'s per-object lock free (free-threaded builds;
    nothing to do with the GIL). Called on the parent's objects the child's reset
    touches (the Ledger, tasks, futures): see fp_forget_object_lock."""
    fp_forget_object_lock(<PyObject *>obj)


cdef object LOGGER = logging.getLogger("concurrent.futures")

# A blocked put()/get() called from Python wakes this often to let signal handlers
# (KeyboardInterrupt) run: a C wait cannot be interrupted otherwise.
cdef double WAIT_SLICE = 0.05

# The bookkeeping's numbers have one definition, shared with the pure-Python core and
# the Pool (this module re-exports them); the map and the Ledger copy the ones their
# hot paths compare into C ints.
from fastpool._states import (
    N_CANCELLED, N_COUNTERS, N_DEAD_LETTERED, N_FAILED, N_NOT_STARTED, N_QUEUED,
    N_REJECTED, N_RETRIED, N_RETRYING, N_RUNNING, N_SUBMITTED, N_SUCCEEDED, OUTSIDE,
    PUT_CLOSED, PUT_FULL, PUT_OK, SAMPLE_EVERY, SAMPLE_WINDOW, TASK_ABANDONED, TASK_DONE,
    TASK_OVERDUE, TASK_QUEUED, TASK_RETRY, TASK_RUNNING, TASK_SETTLING)


include "core/queue.pxi"
include "core/future.pxi"
include "core/worker.pxi"


include "core/map.pxi"


include "core/ledger.pxi"
