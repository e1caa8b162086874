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


# A runner's claim on its items. A runner moves a chunk's state along 0, 1, 2, ...:
# 2i: items [0, i) done, 2i+1: item i running; then _CLOSED (the runner publishes it).
# Shutdown and the pool's timer (an item's deadline) may instead move it to _SPLIT,
# taking what the runner has not started (see _MapState.split). Every move is one
# fp_step, so the two never both win an item: the runner's per-item cost is two
# steps, plain loads and stores under the GIL.
cdef Py_ssize_t _SPLIT = -1, _CLOSED = -2

cdef extern from *:
    """
    #include <atomic>
    static inline int fp_step(std::atomic<Py_ssize_t> *a, Py_ssize_t from, Py_ssize_t to) {
    #ifdef Py_GIL_DISABLED
        return a->compare_exchange_strong(from, to);
    #else
        /* Every caller holds the GIL and runs no Python code in here: nobody moves
           the state between this load and this store. */
        if (a->load(std::memory_order_relaxed) != from) return 0;
        a->store(to, std::memory_order_relaxed);
        return 1;
    #endif
    }
    """
    bint fp_step(atomic[Py_ssize_t] *a, Py_ssize_t frm, Py_ssize_t to) noexcept nogil

# How an item's failure ended (_MapState._item_failed).
cdef int _OK = 0, _FAILED = 1, _AGAIN = 2, _LOST = 3, _LATE = 4


cdef class _Chunk:
    """Items a runner took (a chunk, or one retried item: single), shared with whoever
    may split it off the runner (see above)."""
    cdef Py_ssize_t start     # the index of items[0]
    cdef list items
    cdef list results         # the runner's slots (those of items done are filled)
    cdef int attempt          # the items' attempt (1, or a retried item's)
    cdef bint single
    cdef bint live            # in the job's `active` (under its section)
    cdef atomic[Py_ssize_t] state
    cdef atomic[double] t_item  # when the running item started (deadline=)
    # Set by a splitter while an item ran: the runner settles it through the hooks.
    cdef Py_ssize_t lost      # its position (-1: none)
    cdef object overdue       # its DeadlineExceeded, delivered (None: split by shutdown)
    cdef object watch         # its record in the Ledger's running set (shutdown)
    cdef public object timer  # the deadline's timer entry (hooks)


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
# (hooks.failed, in fastpool/pool/_map.py), which counts it and decides: a final
# failure (dead-lettered under a retry policy), or a retry: the slot then holds
# _Failure(None), the pool's timer calls requeue() after the backoff, and a runner
# runs the item again by itself, publishing its outcome under its index (ordered) or
# as a chunk of one (unordered) -- except a retry without backoff on exception classes
# (hooks.fast_retry), which the runner decides and runs at once by itself.
# Shutdown and an item's deadline split a chunk off its runner (see _Chunk, split()):
# the item running is reported running (shutdown) or fails with DeadlineExceeded at
# once, and is counted when its call returns.
# (The Ledger's counters, fastpool/_states.py, as C ints.)
cdef int _QUE_ = N_QUEUED, _RUN_ = N_RUNNING, _RET_ = N_RETRYING, _SUC_ = N_SUCCEEDED
cdef int _FAIL_ = N_FAILED, _CANC_ = N_CANCELLED, _NOTS_ = N_NOT_STARTED, _RETD_ = N_RETRIED


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
    which its outcome is DeadlineExceeded (the pool's timer splits it off: see split(),
    or hooks.failed with error None if it came back late before the timer looked).
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
    cdef set active           # the _Chunks runners run now
    # hooks.fast_retry: a retry policy the runner applies itself (see _item_failed).
    cdef int fast_attempts    # 0: none
    cdef object fast_classes
    cdef object gov           # the items' token (hooks.gov)

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
        self.active = set()
        self.ledger = ledger
        self.hooks = hooks
        self.item_deadline = -1.0 if deadline is None else deadline
        fast = None if hooks is None else hooks.fast_retry
        if fast is not None:
            self.fast_attempts, self.fast_classes = fast
            self.gov = hooks.gov
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
            if self.cancelled.load() or self.aborted:
                dropped = True
            else:
                self.retries.append((index, item, attempt))
                # A live runner takes it next (it looks at `retries` under this section
                # before it leaves); only without one is a runner queued (and a worker
                # woken: a retry costs no wake-up while the map is busy).
                if self.runners <= 0:
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
    cdef object _item_failed(self, _Chunk c, Py_ssize_t i, int attempt, bint overdue,
                             int *how):
        """Item i of c raised (the exception is set), or ran past its deadline
        (overdue). Return its slot and set *how: _FAILED (a _Failure; the item is
        finished, counted by the Pool's hooks: a failure, or a retry after a backoff,
        _Failure(None)), _AGAIN (run it again now: None), or _LOST (split off the runner
        while it ran: the hooks settled it; None)."""
        cdef _Failure failure
        cdef bint again = False
        if overdue:
            failure = _Failure(None)
        else:
            failure = <_Failure>_failure_from_error()
            if self.hooks is None:
                fp_step(&c.state, 2 * i + 1, 2 * i + 2)  # (nobody splits without hooks)
                how[0] = _FAILED
                return failure
            if (attempt < self.fast_attempts and isinstance(failure.error, self.fast_classes)
                    and not self.gov.cancelled):
                # The pool's policy, decided here (hooks.failed, without its Python
                # call): no backoff, so the item runs again at once and stays running
                # -- unless it was split off the runner meanwhile (then the hooks decide).
                with cython.critical_section(self.ledger):
                    if not self.ledger._collecting and c.state.load() == 2 * i + 1:
                        self.ledger._shift(_RUN_, _RUN_, _RETD_, None)
                        again = True
                if again:
                    how[0] = _AGAIN
                    return None
        try:
            out = self.hooks.failed(self, c, c.start + i, c.items[i], failure.error, attempt)
        except BaseException as exc:
            # hooks.failed counts before it can fail; if it fails, the item is failed.
            self._count(_RUN_, _FAIL_, 1)
            fp_step(&c.state, 2 * i + 1, 2 * i + 2)
            how[0] = _FAILED
            return _Failure(exc)
        if out is True:
            how[0] = _AGAIN
            return None
        if out is False:
            how[0] = _LOST
            return None
        how[0] = _FAILED
        return _Failure(out)

    cdef object _call_item(self, _Chunk c, Py_ssize_t i, int *how):
        """The rare path, after item i's call failed or came back late (c.state says
        it runs; see _item_failed): its slot, and *how: _FAILED, _LOST, or _OK (a retry
        run at once, without backoff, succeeded: its value; not finished yet)."""
        cdef PyObject *r
        cdef double t1
        cdef int attempt = c.attempt
        cdef bint overdue = how[0] == _LATE
        item = c.items[i]
        while True:
            slot = self._item_failed(c, i, attempt, overdue, how)
            if how[0] != _AGAIN:
                return slot
            attempt += 1
            t1 = c_monotonic()
            if self.star:
                r = PyObject_Call(self.fn, item, NULL)
            else:
                r = PyObject_CallOneArg(self.fn, item)
            if r == NULL:
                overdue = False
            elif self.item_deadline >= 0 and c_monotonic() - t1 > self.item_deadline:
                Py_XDECREF(r)  # a late result is not delivered
                overdue = True
            else:
                how[0] = _OK
                value = <object>r  # a new reference: the call's is dropped
                Py_XDECREF(r)
                return value

    def run_loop(self):
        """A runner's loop (hooks.run_governed calls it around the call's token)."""
        self._run()

    cdef void _run(self) except *:
        """A runner's loop: take a chunk (or a retried item), run it, publish it; until
        nothing is left."""
        cdef Py_ssize_t size = self.min_chunk, take, n
        cdef double t0, elapsed
        cdef bint watched = self.item_deadline >= 0 and self.hooks is not None
        cdef _Chunk c
        while True:
            c = _Chunk.__new__(_Chunk)
            c.state.store(0)
            with cython.critical_section(self):
                n = len(self.pending) - self.head
                if self.cancelled.load() or (n <= 0 and not self.retries):
                    self.runners -= 1
                    return
                if self.retries:
                    # A retried item goes first, by itself.
                    entry = self.retries.pop(0)
                    c.start = entry[0]
                    c.items = [entry[1]]
                    c.attempt = entry[2]
                    c.single = True
                    take = 1
                else:
                    # At most a fair share of what is left (guided self-scheduling): the
                    # last inputs spread over every runner instead of one runner taking a
                    # grown chunk, where a fast item's result would wait for a slow one
                    # while other workers idle (the stdlib's test_map_timeout).
                    take = min(size, max(self.min_chunk,
                                         (n + self.max_runners - 1) // self.max_runners), n)
                    c.start = self.taken
                    c.items = self.pending[self.head:self.head + take]
                    c.attempt = 1
                    # Drop our references to the inputs; compact now and then.
                    self.head += take
                    self.taken += take
                    if self.head >= 4096 and self.head * 2 >= len(self.pending):
                        del self.pending[:self.head]
                        self.head = 0
                c.lost = -1
                c.live = True
                self.active.add(c)
            self._count(_QUE_, _RUN_, take, False)
            if watched:
                self.hooks.watch_deadline(self, c)  # the pool's timer watches its items
            t0 = c_monotonic()
            self._run_chunk(c, take)
            elapsed = c_monotonic() - t0
            if watched:
                self.hooks.chunk_done(c)
            if not c.single:
                # Adapt: fast items -> bigger chunks (fewer hand-offs); slow -> one by one.
                if elapsed < CHUNK_TARGET:
                    size = min(size * 2, CHUNK_MAX)
                elif elapsed > 4 * CHUNK_TARGET and size > self.min_chunk:
                    size = max(size // 2, self.min_chunk)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int _run_chunk(self, _Chunk c, Py_ssize_t take) except -1:
        """Run the items of c (counted running) and publish their outcomes -- unless c
        is split off (see split): then the splitter publishes what is done, and the
        item that was running is settled by itself (hooks.lost, hooks.failed)."""
        cdef Py_ssize_t i, j, nok = 0, nskip = 0
        cdef list items = c.items
        cdef double t1 = 0.0, limit = self.item_deadline
        cdef bint timed = limit >= 0, split = False, closed = False
        cdef PyObject *r
        cdef int how
        cdef object fn = self.fn, failure
        # Every slot of this fresh list is filled below before anyone sees it.
        cdef list results = PyList_New(take)
        c.results = results
        for i in range(take):
            if self.cancelled.load():
                # The consumer is gone: the rest never starts (counted cancelled), unless
                # shutdown split the chunk off first (then it handed them back).
                if not fp_step(&c.state, 2 * i, _CLOSED):
                    split = True
                    break
                for j in range(i, take):
                    failure = _Failure(CancelledError())
                    Py_INCREF(failure)
                    PyList_SET_ITEM_STEAL(results, j, <PyObject *>failure)
                nskip = take - i
                closed = True
                break
            if timed:
                t1 = c_monotonic()
                c.t_item.store(t1)
            # Claimed: item i runs (a splitter finds it running, or never started).
            if not fp_step(&c.state, 2 * i, 2 * i + 1):
                split = True
                break
            # The hot loop: a raw C call (no Python-level try block to set up per
            # item); NULL means it raised, and the exception becomes the slot's value.
            if self.star:
                r = PyObject_Call(fn, items[i], NULL)
            else:
                r = PyObject_CallOneArg(fn, items[i])
            if r != NULL and not (timed and c_monotonic() - t1 > limit):
                if fp_step(&c.state, 2 * i + 1, 2 * i + 2):
                    nok += 1
                    PyList_SET_ITEM_STEAL(results, i, r)
                    continue
                value = <object>r
                Py_XDECREF(r)
                self.hooks.lost(self, c, c.start + i, value)  # split off while it ran
                split = True
                break
            how = _LATE if r != NULL else _FAILED
            Py_XDECREF(r)  # a late result is not delivered
            slot = self._call_item(c, i, &how)
            if how == _LOST:
                split = True
                break
            if how == _OK:
                if not fp_step(&c.state, 2 * i + 1, 2 * i + 2):
                    self.hooks.lost(self, c, c.start + i, slot)
                    split = True
                    break
                nok += 1
            Py_INCREF(slot)
            PyList_SET_ITEM_STEAL(results, i, <PyObject *>slot)
            slot = None
        else:
            if not fp_step(&c.state, 2 * take, _CLOSED):
                split = True
        if not split:
            # Counted before published: whoever sees an outcome finds it in the stats.
            # (Shutdown waits for a _CLOSED chunk to leave `active`: its report counts
            # every item.)
            if self.ledger is not None:
                self._count(_RUN_, _SUC_, nok)
                self._count(_RUN_, _CANC_, nskip)
            if c.single:
                slot = results[0]
                if type(slot) is not _Failure or (<_Failure>slot).error is not None:
                    self.publish_one(c.start, slot, False)  # (else: retried later again)
            else:
                with cython.critical_section(self):
                    if self.ordered:
                        self.chunks[c.start] = results
                    else:
                        self.done.append(results)
                self.signal.notify()
        with cython.critical_section(self):
            c.live = False
            self.active.discard(c)
        return 0

    def closing(self):
        """How many chunks are being published by their runners (see hand_back)."""
        with cython.critical_section(self):
            return sum([(<_Chunk>c).state.load() == _CLOSED for c in self.active])

    def publish_one(self, Py_ssize_t index, value, bint failed):
        """The outcome of one item, published by itself (a retried item, or one split
        off its chunk): the consumer finds a _Failure(None) at its index, and waits for
        it (ordered) or skips it (unordered). `failed`: value is its exception."""
        if failed:
            value = _Failure(value)
        with cython.critical_section(self):
            if self.ordered:
                self.retried[index] = value
            else:
                self.done.append([value])
        self.signal.notify()

    def finish(self, _Chunk c):
        """hooks.failed, under the pool's lock: the item c's runner runs is finished
        (its failure counted); False if it was split off the runner (see lost())."""
        cdef Py_ssize_t s = c.state.load()
        return s >= 0 and s % 2 == 1 and fp_step(&c.state, s, s + 1)

    def owns(self, _Chunk c):
        """Whether c's runner still owns its running item (not split off)."""
        return c.state.load() >= 0

    def take_lost(self, _Chunk c):
        """The hooks, under the pool's lock, settle the item split off while it ran:
        (its DeadlineExceeded if its deadline split it, else None; its record in the
        Ledger's running set, or None)."""
        with cython.critical_section(self):
            c.lost = -1
            watch, c.watch = c.watch, None
            return c.overdue, watch

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def split(self, _Chunk c, overdue=None):
        """Split c off its runner, under the pool's lock: the items done are published
        now (their successes counted), the one running is settled when its call returns
        (hooks.lost or hooks.failed), and the rest go elsewhere.

        overdue None: shutdown. The rest is handed back (counted not_started); returns
        (handed back [(item, attempt)], running (index, item, attempt) or None), or
        None if c has no items left with its runner.
        overdue a DeadlineExceeded: the pool's timer. If the running item ran past the
        deadline, it fails with `overdue` now (it stays counted running until its call
        returns) and the rest is queued again (as retried items, run by themselves);
        returns whether a runner must be started for it (hooks.start_runner, once the
        lock is released). Otherwise returns when to look again (-1.0: never)."""
        cdef Py_ssize_t s, k, j, take, nok = 0
        cdef bint running
        cdef double now, t
        cdef list results, copy, left = [], requeue = []
        with cython.critical_section(self):
            while True:
                if not c.live:
                    return None if overdue is None else -1.0
                s = c.state.load()
                if s < 0:
                    if overdue is None and c.lost >= 0 and c.watch is None:
                        # Split by its deadline earlier and still running: shutdown
                        # reports it running.
                        return [], (c.start + c.lost, c.items[c.lost], c.attempt)
                    return None if overdue is None else -1.0
                if overdue is not None:
                    now = c_monotonic()
                    if s % 2 == 0:
                        return now + self.item_deadline  # no item runs: the next starts later
                    t = c.t_item.load()
                    if now - t < self.item_deadline:
                        return t + self.item_deadline
                if fp_step(&c.state, s, _SPLIT):
                    break
            take = len(c.items)
            k = s // 2
            running = s % 2 == 1
            results = c.results
            copy = PyList_New(take)
            for j in range(take):
                if j < k:
                    slot = results[j]
                    if type(slot) is not _Failure:
                        nok += 1
                elif j == k and running:
                    c.lost = k
                    c.overdue = overdue
                    slot = _Failure(overdue)  # None: its outcome comes by itself
                elif overdue is None:
                    left.append((c.items[j], c.attempt))
                    slot = _Failure(CancelledError())
                else:
                    requeue.append((c.start + j, c.items[j], c.attempt))
                    slot = _Failure(None)
                Py_INCREF(slot)
                PyList_SET_ITEM_STEAL(copy, j, <PyObject *>slot)
            slot = None
        if overdue is not None and running:
            # The dead letter goes in before the failure is delivered.
            self.hooks.overdue(c.items[k], c.attempt, overdue)
        # (No idle check: the caller holds the pool's lock, and checks.)
        self._count(_RUN_, _SUC_, nok, False)
        self._count(_RUN_, _NOTS_ if overdue is None else _QUE_, take - k - running, False)
        start = False
        with cython.critical_section(self):
            if requeue:
                self.retries[0:0] = requeue
                self.runners += 1  # its runner is busy: another takes the rest
                start = True
            if c.single:
                # A retried item: its outcome (done, or failed by its deadline) goes by
                # itself; _Failure(None) means it comes later.
                slot = copy[0]
                if type(slot) is not _Failure or (<_Failure>slot).error is not None:
                    if self.ordered:
                        self.retried[c.start] = slot
                    else:
                        self.done.append(copy)
                slot = None
            elif self.ordered:
                self.chunks[c.start] = copy
            else:
                self.done.append(copy)
        self.signal.notify()
        if overdue is not None:
            return start
        return left, (c.start + k, c.items[k], c.attempt) if running else None

    cdef list _take_unstarted(self, bint stop=True):
        """Under self's section: take every item not started (queued), and stop
        (runners start no more items; hand_back stops them later)."""
        cdef list left = [(item, 1) for item in self.pending[self.head:]]
        left += [(e[1], e[2]) for e in self.retries]
        self.pending = []
        self.head = 0
        self.retries = []
        if stop:
            self.cancelled.store(True)
        return left

    def hand_back(self):
        """Shutdown (under the pool's lock) takes back the items not started: queued,
        or taken by a runner that has not started them (its chunk is split off it);
        counted not_started and returned as (item, attempt) pairs; the consumer gets
        CancelledError for them. Also returns the items running, as (chunk, index,
        item, attempt, DeadlineExceeded or None): see watch()."""
        cdef list left, running = []
        with cython.critical_section(self):
            # Not stopped yet: a runner that saw it would count the rest of its chunk
            # cancelled; its chunk is split off it first. (Nothing is left for a runner
            # to take meanwhile, and `aborted` keeps retries out: see requeue.)
            left = self._take_unstarted(False)
            self.aborted = True
            chunks = list(self.active)
        self._count(_QUE_, _NOTS_, len(left), False)  # (the caller checks idleness)
        for c in chunks:
            out = self.split(c)
            if out is not None:
                left += out[0]
                if out[1] is not None:
                    running.append((c,) + out[1] + ((<_Chunk>c).overdue,))
        self.cancelled.store(True)
        self.signal.notify()
        return left, running

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

    def watch(self, _Chunk c, record):
        """Shutdown reports c's running item: `record` is in the Ledger's running set
        until the item is counted (take_lost hands it to the hooks)."""
        with cython.critical_section(self):
            c.watch = record


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
        if self.buffersize and not self.input_done and not self.cancelled.load():
            if self.hooks is None:
                # As the stdlib's lazy map: each step takes one more input first.
                self._feed(1)
            elif self.fed - self.yielded <= self.buffersize // 2:
                # A Pool's map tops up in batches (bounded all the same): a step costs
                # no trip to the source and the Ledger.
                self._feed(self.buffersize - (self.fed - self.yielded))
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
