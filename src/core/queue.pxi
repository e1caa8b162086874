# The queue: a thin owner of fp::Queue (fp_queue.h). Twin: fastpool/_py/queue.py.
# Included by src/_core.pyx (one module: names are shared across the includes).

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
