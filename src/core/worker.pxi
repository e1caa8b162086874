# The work item and the worker loop. Twin: fastpool/_py/worker.py.
# Included by src/_core.pyx (one module: names are shared across the includes).

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
