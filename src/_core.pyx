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
