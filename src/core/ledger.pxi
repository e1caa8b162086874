# Pool bookkeeping: the Ledger and PoolTask. Twin: fastpool/_py/ledger.py.
# Included by src/_core.pyx (one module: names are shared across the includes).

# ------------------------------------------------------------------- Pool bookkeeping
# fastpool.Pool's hot path. Every Pool task is in exactly one of the states counted
# below, and every change of state moves its counters in one step (one critical
# section: nothing else runs in between with the GIL, a per-object lock without it),
# so a snapshot always adds up. The common case -- a task with no per-task options --
# is submitted, started and settled here without running Python code of the pool;
# everything unusual (failures, retries, deadlines, shutdown) is Python in fastpool/pool/,
# which moves the same counters through Ledger.move(). Doing this in C is not only
# fewer instructions: a Python-level lock held across bytecodes lets the GIL switch
# inside the critical section, and the other workers then queue up on that lock
# (a convoy: ~0.2 context switches per task, measured).

# The numbers (counter indexes, task states, admit()'s answers, sample sizes) have one
# definition, fastpool/_states.py, shared with the pure-Python core and the Pool; this
# module re-exports them. The hot path compares C ints: the same numbers, read once
# here at import (c_ + the Python name).

cdef int c_N_SUBMITTED = N_SUBMITTED
cdef int c_N_QUEUED = N_QUEUED
cdef int c_N_RUNNING = N_RUNNING
cdef int c_N_RETRYING = N_RETRYING
cdef int c_N_SUCCEEDED = N_SUCCEEDED
cdef int c_N_COUNTERS = N_COUNTERS
cdef int c_OUTSIDE = OUTSIDE
cdef int c_TASK_QUEUED = TASK_QUEUED
cdef int c_TASK_RUNNING = TASK_RUNNING
cdef int c_TASK_DONE = TASK_DONE
cdef int c_PUT_OK = PUT_OK
cdef int c_PUT_FULL = PUT_FULL
cdef int c_PUT_CLOSED = PUT_CLOSED
cdef unsigned long long c_SAMPLE_WINDOW = SAMPLE_WINDOW
cdef unsigned long long c_SAMPLE_EVERY = SAMPLE_EVERY


def clock():
    """Seconds on the clock the latency samples use (task.t_queued)."""
    return c_monotonic()


cdef class Ledger:
    """A Pool's counters, its running tasks and its latency samples (see above)."""

    cdef vector[long long] c         # the counters, indexed by N_*
    cdef readonly set running        # the tasks in state RUNNING
    cdef readonly WorkQueue queue
    cdef bint _closed                # submit() refuses: the pool is shut down or broken
    cdef bint _collecting            # shutdown hands back what workers take
    cdef readonly bint slow          # every task starts through hooks._run_with_options
    cdef int _watch                  # > 0: someone waits for the pool to be idle
    cdef int _room                   # > 0: producers wait for room in the queue
    cdef unsigned long long stamps, samples
    cdef vector[double] wait_ring    # SAMPLE_WINDOW slots each
    cdef vector[double] run_ring

    def __cinit__(self, WorkQueue queue, bint slow=False):
        self.queue = queue
        self.slow = slow
        self.running = set()
        # resize (declared `except +`), not assign (which is not): out of memory must
        # be a MemoryError here, not an uncaught std::bad_alloc that aborts the process.
        self.c.resize(c_N_COUNTERS, 0)
        self.wait_ring.resize(c_SAMPLE_WINDOW, NAN)
        self.run_ring.resize(c_SAMPLE_WINDOW, NAN)

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
        """Workers hand back (hooks._not_run) every task they take from now on."""
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
        worker taking a task calls hooks._room_made()."""
        with cython.critical_section(self):
            self._room += delta

    def _after_fork_child(self):
        """In a forked child: the running tasks (the parent's), read without waiting
        for a lock a vanished thread held at fork (see fp_forget_object_lock)."""
        fp_forget_object_lock(<PyObject *>self)
        fp_forget_object_lock(<PyObject *>self.running)
        with cython.critical_section(self):
            return list(self.running)

    # -- counters --

    cdef inline int _shift(self, int src, int dst, int extra, task) except -1:
        # The one state change, in the caller's critical section on self: counter src -1,
        # dst +1 (OUTSIDE: submitted), extra +1; with `task`, the running set follows.
        if src == c_OUTSIDE:
            self.c[c_N_SUBMITTED] += 1
        else:
            self.c[src] -= 1
        if dst == c_OUTSIDE:
            self.c[c_N_SUBMITTED] -= 1
        else:
            self.c[dst] += 1
        if extra >= 0:
            self.c[extra] += 1
        if task is not None:
            if src == c_N_RUNNING:
                self.running.discard(task)
            elif dst == c_N_RUNNING:
                self.running.add(task)
        return 0

    def move(self, int src, int dst, int extra=-1, task=None):
        """One task changes state: counter src -1, dst +1 (OUTSIDE: submitted), extra +1.

        With `task`, the running set follows (leaving or entering N_RUNNING).
        Return whether someone watches for idleness (hooks._check_idle)."""
        if not (c_OUTSIDE <= src < c_N_COUNTERS and c_OUTSIDE <= dst < c_N_COUNTERS
                and -1 <= extra < c_N_COUNTERS):
            raise ValueError(f"bad counter index in move({src}, {dst}, {extra})")
        with cython.critical_section(self):
            self._shift(src, dst, extra, task)
            return self._watch > 0

    def add_running(self, task):
        """A map item shutdown found running joins the running set (no counter
        moves: it is counted running already); move(..., task) takes it out."""
        with cython.critical_section(self):
            self.running.add(task)

    cdef inline void _bulk(self, int src, int dst, Py_ssize_t n) noexcept:
        # n items change state at once (a map's chunk), in the caller's critical section.
        if src == c_OUTSIDE:
            self.c[c_N_SUBMITTED] += n
        else:
            self.c[src] -= n
        if dst == c_OUTSIDE:
            self.c[c_N_SUBMITTED] -= n
        else:
            self.c[dst] += n

    cdef bint _admit_n(self, Py_ssize_t n) except -1:
        # A map's inputs: counted submitted and queued, unless the ledger is closed.
        with cython.critical_section(self):
            if self._closed:
                return False
            self._bulk(c_OUTSIDE, c_N_QUEUED, n)
        return True

    def move_n(self, int src, int dst, Py_ssize_t n):
        """n items (of a map) change state at once, as move() does for one task."""
        if not (c_OUTSIDE <= src < c_N_COUNTERS and c_OUTSIDE <= dst < c_N_COUNTERS) or n < 0:
            raise ValueError(f"bad counter index in move_n({src}, {dst}, {n})")
        with cython.critical_section(self):
            self._bulk(src, dst, n)
            return self._watch > 0

    cdef inline tuple _counts(self):
        # In the caller's critical section on self.
        return tuple([self.c[i] for i in range(c_N_COUNTERS)])

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
            return (self.c[c_N_QUEUED] == 0 and self.c[c_N_RUNNING] == 0
                    and self.c[c_N_RETRYING] == 0)

    def in_transit(self):
        """Tasks counted queued or retrying."""
        with cython.critical_section(self):
            return self.c[c_N_QUEUED] + self.c[c_N_RETRYING]

    # -- latency samples --

    cdef inline bint _sampled(self) noexcept:
        cdef bint yes
        with cython.critical_section(self):
            yes = self.stamps % c_SAMPLE_EVERY == 0
            self.stamps += 1
        return yes

    def sampled(self):
        """Whether the task being submitted now records its latencies."""
        return self._sampled()

    cdef inline void _sample(self, double wait, double run) noexcept:
        cdef unsigned long long i
        with cython.critical_section(self):
            i = self.samples % c_SAMPLE_WINDOW
            self.samples += 1
            self.wait_ring[i] = wait
            self.run_ring[i] = run

    def sample(self, double wait, double run):
        """Record one task's queue wait and run time (seconds)."""
        self._sample(wait, run)

    def latencies(self):
        """(waits, runs) of the last SAMPLE_WINDOW samples (NaN: slot never written)."""
        with cython.critical_section(self):
            return ([self.wait_ring[i] for i in range(c_SAMPLE_WINDOW)],
                    [self.run_ring[i] for i in range(c_SAMPLE_WINDOW)])

    # -- tasks --

    cdef PoolTask _new_task(self, hooks, fn, tuple args, dict kwargs, opts, retry):
        cdef PoolTask task = <PoolTask>_new_item(PoolTask.__new__(PoolTask), fn, args, kwargs)
        task.hooks = hooks
        task.ledger = self
        task.opts = opts
        task.retry = retry
        task.attempt = 1
        task.state = c_TASK_QUEUED
        task.t_queued = 0.0
        return task

    def task(self, hooks, fn, tuple args, dict kwargs, opts=None, retry=None):
        """A new, uncounted PoolTask (attempt 1, QUEUED) with a new Future."""
        return self._new_task(hooks, fn, args, kwargs, opts, retry)

    def admit(self, PoolTask task, int src=OUTSIDE):
        """Count and queue `task` in one step: PUT_OK, or PUT_FULL / PUT_CLOSED with
        nothing counted. `src`: OUTSIDE for a new task (refused once the ledger is
        closed), N_RETRYING for a retry going back to the queue.

        Counted and queued at once, a task waiting for room is in no counter: live
        `submitted` never goes back, and `queued` never counts what is not queued."""
        if not (src == c_OUTSIDE or src == c_N_RETRYING):
            raise ValueError(f"admit() moves a task from OUTSIDE or N_RETRYING, not {src}")
        return self._admit(task, src)

    cdef int _admit(self, PoolTask task, int src) except -1:
        cdef int st
        with cython.critical_section(self):
            if src == c_OUTSIDE and self._closed:
                return c_PUT_CLOSED
            # Counted first: the worker that takes it may move it on at once. With the
            # GIL (no Python code runs in between, and a bounded queue's try_push never
            # releases it) nobody sees the count undone when the put fails.
            self._shift(src, c_N_QUEUED, -1, None)
            st = self.queue._try_put(task)
            if st != OK:
                self._shift(c_N_QUEUED, src, -1, None)
        return c_PUT_OK if st == OK else c_PUT_FULL if st == FULL else c_PUT_CLOSED

    def submit(self, hooks, fn, tuple args, dict kwargs, retry):
        """The fast submit: count and queue a task without options (and start a worker
        if it needs one); return its future.

        None (and nothing counted or queued, see admit) if the pool is closed or the
        queue is full or closed: the caller takes the slow path, which waits or raises."""
        cdef PoolTask task
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        task = self._new_task(hooks, fn, args, kwargs, None, retry)
        if self._sampled():
            task.t_queued = c_monotonic()
        if self._admit(task, c_OUTSIDE) != c_PUT_OK:
            return None  # nothing counted
        # Work waiting for more workers than are idle: one more, if allowed (see
        # WorkQueue.bind_workers).
        if self.queue._short_of_workers(<Py_ssize_t>self.queue.q.size()):
            hooks._start_worker()
        return task.future


cdef class PoolTask(WorkItem):
    """A Pool task: a WorkItem with its pool, options, retry policy and state."""

    cdef public object hooks
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
            self.hooks._run_with_options(self)
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
                self.state = c_TASK_RUNNING
                ledger._shift(c_N_QUEUED, c_N_RUNNING, -1, self)
            room = ledger._room > 0
        if room:
            self.hooks._room_made()  # taking this task made room in the queue
        if not ok:
            self.hooks._not_run(self, started)
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
            self.hooks._task_failed(self, exc)
            return
        if t_queued:
            ledger._sample(t0 - t_queued, c_monotonic() - t0)
        try:
            _finish(future, result, None)
        finally:
            with cython.critical_section(ledger):
                self.state = c_TASK_DONE
                ledger._shift(c_N_RUNNING, c_N_SUCCEEDED, -1, self)
                watch = ledger._watch > 0
            if watch:
                                self.hooks._check_idle()
