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
# (hooks.failed, in fastpool/pool/_map.py), which counts it and decides: a final
# failure (dead-lettered under a retry policy), or a retry: the slot then holds
# _RETRY, the pool's timer calls requeue() after the backoff, and a runner runs the
# item again by itself, publishing its outcome under its index (ordered) or as a
# chunk of one (unordered).
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
            if self.cancelled.load():
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
    cdef _Failure _item_failed(self, Py_ssize_t index, item, int attempt, bint overdue):
        """An item raised (the exception is set), or ran past its deadline (overdue).
        Without hooks the slot holds the error; a Pool's hooks count the failure (or
        the retry) and return the error, None (retried later: _Failure(None)) or True
        (run it again now: None here)."""
        cdef _Failure failure
        cdef bint again = False
        if overdue:
            failure = _Failure(None)
        else:
            failure = <_Failure>_failure_from_error()
            if self.hooks is None:
                return failure
            if (attempt < self.fast_attempts and isinstance(failure.error, self.fast_classes)
                    and not self.gov.cancelled):
                # The pool's policy, decided here (hooks.failed, without its Python
                # call): no backoff, so the item runs again at once and stays running.
                with cython.critical_section(self.ledger):
                    if not self.ledger._collecting:
                        self.ledger._shift(_RUN_, _RUN_, _RETD_, None)
                        again = True
                if again:
                    return None
        try:
            out = self.hooks.failed(self, index, item, failure.error, attempt)
        except BaseException as exc:
            # hooks.failed counts before it can fail; if it fails, the item is failed.
            self._count(_RUN_, _FAIL_, 1)
            return _Failure(exc)
        if out is True:
            return None
        return _Failure(out)

    cdef object _failed_call(self, Py_ssize_t index, item, int attempt, bint overdue,
                             bint *ok):
        """The rare path, after an item's call failed (see _item_failed): its slot -- a
        _Failure, or the value of a retry run at once (no backoff) that succeeded
        (then *ok is set)."""
        cdef _Failure failure
        cdef PyObject *r
        cdef double t1
        while True:
            failure = self._item_failed(index, item, attempt, overdue)
            if failure is not None:
                return failure
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
                ok[0] = True
                value = <object>r  # a new reference: the call's is dropped
                Py_XDECREF(r)
                return value

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
        cdef bint ok, overdue
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
                if r == NULL or (timed and c_monotonic() - t1 > limit):
                    overdue = r != NULL
                    Py_XDECREF(r)  # a late result is not delivered
                    ok = False
                    failure = self._failed_call(start + i, items[i], 1, overdue, &ok)
                    nok += ok
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
        cdef bint ok = False, overdue
        item = entry[1]
        self._count(_QUE_, _RUN_, 1, False)
        t1 = c_monotonic()
        if self.star:
            r = PyObject_Call(self.fn, item, NULL)
        else:
            r = PyObject_CallOneArg(self.fn, item)
        if r == NULL or (self.item_deadline >= 0 and c_monotonic() - t1 > self.item_deadline):
            overdue = r != NULL
            Py_XDECREF(r)  # a late result is not delivered
            slot = self._failed_call(index, item, attempt, overdue, &ok)
            if type(slot) is _Failure and (<_Failure>slot).error is None:
                return 0  # retried later again
        else:
            slot = <object>r  # a new reference: the call's is dropped
            Py_XDECREF(r)
            ok = True
        if ok:
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
