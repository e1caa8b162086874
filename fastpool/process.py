"""fastpool.ProcessPoolExecutor: a drop-in for concurrent.futures.ProcessPoolExecutor.

The stdlib moves every task through a feeder thread, a call queue, the worker, a
result queue and a management thread: each task is pickled on its own and hops
threads several times (~120 us per submit + result here). This executor keeps the
stdlib's API, defaults, errors and futures, and changes only the transport:

- one duplex pipe per worker; the parent sends a worker a *batch* of tasks (pickled
  together, so the function is pickled once per batch), and the worker answers with
  its results batched the same way;
- no feeder thread: the submitting thread sends to an idle worker itself, and one
  reader thread waits (one `select.poll` object; `multiprocessing.connection.wait` on
  Windows) on every worker's pipe and process sentinel at once, sets the futures, and
  hands the worker the next batch from the queue; a worker that dies is seen at once
  through its sentinel.

A worker holds at most two batches: the one it runs, and the next one, waiting in
its pipe (pipelining: the worker does not wait for the parent between two batches).
Only the reader thread sends a worker its second batch, and only if it fits in the
pipe's buffer; a bigger one waits in the parent until the worker answers its current
batch. So the reader never blocks writing to a worker that is itself blocked writing
results the reader is not reading (the duplex-pipe deadlock): a worker reads its pipe
whenever it has answered all it ran. A second batch is only sent to a worker whose
last batch took under _PIPELINE_UNDER, and while more tasks are queued than there are
workers, so a long task does not hold short ones back while another worker idles.
Tasks queue up in the parent while all workers are busy, which sizes the batches by
themselves. Pipes, not a shared-memory ring: measured in benches/README.md.
"""

from __future__ import annotations

import importlib
import itertools
import multiprocessing as mp
import os
import select
import socket
import sys
import threading
import time
import traceback
import weakref
from collections import deque
from concurrent.futures import _base
from concurrent.futures import process as _stdlib
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as _wait
from multiprocessing.context import BaseContext
from multiprocessing.reduction import ForkingPickler
from pickle import PicklingError
from pickle import loads as _loads
from types import FunctionType
from typing import Any, Callable, Iterable, Iterator

from ._pick_core import core

__all__ = ["BrokenProcessPool", "ProcessPoolExecutor"]

# The stdlib's own wrappers: an exception crosses back with its formatted traceback
# as __cause__ (a _RemoteTraceback), exactly as with the stdlib executor.
_ExceptionWithTraceback: Callable[..., Any] = _stdlib._ExceptionWithTraceback
_RemoteTraceback: Callable[[str], BaseException] = _stdlib._RemoteTraceback  # type: ignore[assignment]

# Most calls sent to a worker in one message (a map chunk counts its items), and most
# items in one map chunk: large batches amortise the round trip, but a worker without
# a second batch waits for the parent between two, so finer ones keep both sides
# busy (measured: 1024/256 ran a no-op map in about half the time of unbounded chunks
# and batches).
_MAX_BATCH = 1024
_MAX_CHUNK = 256
# A worker whose last batch took less than this (seconds) is sent its next batch
# while it runs the current one: below it, the wait between two batches counts; above
# it, a second batch could keep short tasks behind a long one while a worker idles.
_PIPELINE_UNDER = 0.05
# A worker that ran this long without answering sends what it has (as_completed()).
_FLUSH_AFTER = 0.005
_SHUTDOWN = b""  # sent to an idle worker: exit

_BROKEN_POOL = ("A child process terminated abruptly, the process pool is not "
                "usable anymore")
_BROKEN_FUTURE = ("A process in the process pool was terminated abruptly while "
                  "the future was running or pending.")

# fastpool's Future (a concurrent.futures.Future subclass): no Condition per future
# unless someone blocks on it, which is most of the parent's cost per task here.
_Future = core.Future

_cloudpickle: Any
try:  # the cloudpickle extra: functions and classes pickle does not find by name
    _cloudpickle = importlib.import_module("cloudpickle")  # no stubs: typed Any
except ImportError:
    _cloudpickle = None

_EXTRA = "pip install 'fastpool[cloudpickle]'"


def _main_importable() -> bool:
    # A spawn or forkserver worker re-imports the parent's main module from its file
    # (as __mp_main__); with `python -c`, stdin, a REPL or a notebook there is none.
    return getattr(sys.modules.get("__main__"), "__file__", None) is not None


class _Pickler(ForkingPickler):
    """The stdlib's pickler, plus: what pickle would send by a name the worker cannot
    look up (a lambda, a local function or class, and under spawn/forkserver one of a
    __main__ without a file) goes by value through cloudpickle when it is installed, or
    fails here, naming the extra, rather than breaking the worker that cannot load it.

    Everything else pickles as with the stdlib: a __main__ function of a script stays
    a reference, so it sees the globals its worker's initializer set.
    """

    fork = False  # a fork worker has the parent's __main__

    def reducer_override(self, obj: Any) -> Any:
        # Called once per object not in the memo (never for ints, strs, tuples...):
        # a function or class costs one check per batch.
        if not _by_value(obj, not self.fork):
            return NotImplemented
        if _cloudpickle is not None:
            return _cloudpickle.loads, (_cloudpickle.dumps(obj),)
        where = ("a lambda or local" if "<" in obj.__qualname__
                 else "defined in a __main__ with no file")
        raise PicklingError(
            f"Can't pickle {obj!r}: it is {where}, and pickle sends functions and "
            f"classes by name, which the worker process cannot look up; "
            f"{_EXTRA} sends them by value (cloudpickle), or define it at the "
            f"top level of an importable module")


def _by_value(obj: Any, spawned: bool) -> bool:
    """Would _Pickler send obj by value (a lambda, a local, a file-less __main__'s)?"""
    if not isinstance(obj, (FunctionType, type)):
        return False  # builtins, methods, partials...: their parts are checked in turn
    return ("<" in getattr(obj, "__qualname__", "") or
            (spawned and obj.__module__ == "__main__" and not _main_importable()))


class _InitializerByValue:
    """An initializer that multiprocessing's own pickling (of the worker's arguments)
    would send by a name the worker cannot look up: sent pickled by _Pickler."""

    def __init__(self, data: Any) -> None:
        self.data = bytes(data)

    def __call__(self, *args: Any) -> object:
        return _loads(self.data)(*args)


class _ForkPickler(_Pickler):
    fork = True


def _pickler_for(ctx: BaseContext) -> type[_Pickler]:
    return _ForkPickler if ctx.get_start_method(allow_none=False) == "fork" else _Pickler


# --------------------------------------------------------------------------- worker

def _send_results(send: Callable[[Any], None], dumps: Callable[[Any], Any], done: bool,
                  exiting: bool, results: list[Any]) -> None:
    try:
        data = dumps((done, exiting, results))
    except BaseException:
        # One result does not pickle: it fails its own future, as in the stdlib
        # (which catches BaseException there too), the rest go through.
        fixed = []
        for tid, ok, value in results:
            try:
                dumps(value)
            except BaseException as e:
                ok, value = False, _ExceptionWithTraceback(e, e.__traceback__)
            fixed.append((tid, ok, value))
        data = dumps((done, exiting, fixed))
    send(data)


def _exit_with_parent() -> None:
    """Exit this worker as soon as the parent process is gone, even mid-task.

    An idle worker sees the parent die (EOF on its pipe), a busy one would run its
    batch to the end first, and a task stuck for hours would keep an orphan alive. So a
    daemon thread waits on multiprocessing's parent sentinel: a pipe end whose other
    end only the parent holds (spawn, forkserver, fork; a process handle on Windows),
    portable, unlike Linux's prctl(PR_SET_PDEATHSIG), which moreover fires when the
    *thread* that started the worker ends. Blocked in the OS, it costs no GIL time.
    (With fork, a sibling forked later also holds that end: the last-forked worker
    exits first, then the others, each freeing its elders' ends.)
    """
    parent = mp.parent_process()
    if parent is None or parent.sentinel is None:
        return

    def watch(sentinel: Any) -> None:
        _wait([sentinel])
        os._exit(1)

    threading.Thread(target=watch, args=(parent.sentinel,), daemon=True,
                     name="fastpool-parent-watch").start()


def _worker(conn: Connection, initializer: Callable[..., object] | None,
            initargs: tuple[Any, ...], max_tasks: int | None,
            pickler: type[_Pickler] = _Pickler) -> None:
    _exit_with_parent()
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException:
            _base.LOGGER.critical("Exception in initializer:", exc_info=True)
            # The parent sees this worker die and breaks the pool, as the stdlib.
            return
    global _conn
    _conn = conn
    recv, send, clock = conn.recv_bytes, conn.send_bytes, time.monotonic
    # Results pickle as tasks do: an instance of a class sent by value returns by value.
    dumps = pickler.dumps
    ran = 0
    while True:
        try:
            data = recv()
        except (EOFError, OSError):
            return
        if data == _SHUTDOWN:
            return
        # A task that fails to unpickle kills the worker (and breaks the pool), as in
        # the stdlib: it cannot be told which future it belonged to.
        batch = _loads(data)
        del data
        out: list[Any] = []
        flush_at = clock() + _FLUSH_AFTER
        ran += len(batch)
        for tid, fn, args, kwargs in batch:
            try:
                out.append((tid, True, fn(*args, **kwargs)))
            except BaseException as e:
                out.append((tid, False, _ExceptionWithTraceback(e, e.__traceback__)))
            if clock() > flush_at:
                _send_results(send, dumps, False, False, out)
                out = []
                flush_at = clock() + _FLUSH_AFTER
        # Drop the references before waiting for the next batch (as the stdlib does).
        batch = fn = args = kwargs = None
        exiting = max_tasks is not None and ran >= max_tasks
        _send_results(send, dumps, True, exiting, out)
        del out
        if exiting:
            return


_conn: Connection | None = None  # a worker's pipe to the parent


def _wait_for_next_batch(timeout: float) -> bool:
    """In a worker, as a task: True once the worker's next batch is in its pipe
    (sent while this one runs), False after timeout seconds without. For tests."""
    return _conn is not None and _conn.poll(timeout)


def _run_chunk(fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> tuple[list[Any], Any]:
    """Run fn over a map chunk: the results up to the first error, and that error."""
    results: list[Any] = []
    try:
        # The loop in C; list.extend() keeps the items it got before an error.
        results.extend(itertools.starmap(fn, chunk))
    except BaseException as e:
        return results, _ExceptionWithTraceback(e, e.__traceback__)
    return results, None


def _run_items(fn: Callable[..., Any], chunk: list[Any]) -> tuple[list[Any], Any]:
    """_run_chunk for a map over one iterable: its items go as they are, not in
    1-tuples (less to pickle on both sides)."""
    results: list[Any] = []
    try:
        results.extend(map(fn, chunk))
    except BaseException as e:
        return results, _ExceptionWithTraceback(e, e.__traceback__)
    return results, None


_RUNNERS = (_run_items, _run_chunk)

# --------------------------------------------------------------------------- parent

class _Worker:
    __slots__ = ("process", "conn", "batches", "fast", "started", "sending", "room",
                 "deferred", "quota", "eof")

    def __init__(self, process: Any, conn: Connection, quota: int | None) -> None:
        self.process = process
        self.conn = conn
        # The batches sent and not answered yet (at most 2), in the order sent, kept
        # as the stdlib keeps its work items: an argument must outlive its pickle
        # until the worker has loaded it (a Manager proxy's referent is freed when
        # the parent's last proxy goes).
        self.batches: deque[list[Any]] = deque()
        self.fast = False  # its last batch took under _PIPELINE_UNDER: may hold 2
        self.started = 0.0  # when it started its oldest batch (as far as we know)
        # Another thread than the reader sends it its first batch: the reader must
        # not top it up before that is written (the two writes would interleave).
        self.sending = False
        self.room = _pipe_room(conn)  # a second batch up to this size is sent at once
        self.deferred: Any = None  # a bigger one, pickled: sent when it answers
        self.quota = quota  # tasks it may still be sent (max_tasks_per_child)
        self.eof = False


def _pipe_room(conn: Connection) -> int:
    """Bytes the parent can surely write to the worker's pipe while the worker does
    not read it: a quarter of the socket's send buffer (Linux: 52 KiB; macOS: 2 KiB)."""
    try:
        with socket.socket(fileno=os.dup(conn.fileno())) as sock:
            return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)) // 4
    except (OSError, ValueError):
        return 2048  # Windows' pipes: a quarter of multiprocessing's 8 KiB buffer


class _Wakeup:
    """Wakes the reader thread (a new worker to watch, a shutdown)."""

    def __init__(self) -> None:
        self.reader, self.writer = mp.Pipe(duplex=False)
        self.lock = threading.Lock()
        self.closed = False

    def wakeup(self) -> None:
        with self.lock:
            if not self.closed:
                self.writer.send_bytes(b"")

    def clear(self) -> None:
        while self.reader.poll():
            self.reader.recv_bytes()

    def close(self) -> None:
        with self.lock:
            if not self.closed:
                self.closed = True
                self.writer.close()
                self.reader.close()


_global_shutdown = False
_readers: weakref.WeakKeyDictionary[threading.Thread, _Wakeup] = weakref.WeakKeyDictionary()


def _python_exit() -> None:
    # As the stdlib: at interpreter exit the queued work still runs, then the readers
    # stop their workers; joined before the non-daemon threads are.
    global _global_shutdown
    _global_shutdown = True
    items = list(_readers.items())
    for _, wakeup in items:
        wakeup.wakeup()
    for t, _ in items:
        t.join()


threading._register_atexit(_python_exit)  # type: ignore[attr-defined]


def _set_exception(f: _base.Future[Any], exc: BaseException) -> None:
    try:
        f.set_exception(exc)
    except _base.InvalidStateError:  # cancelled while queued
        pass


class _State:
    """What the executor and its reader thread share (the reader never holds the executor)."""

    def __init__(self, ctx: BaseContext, max_workers: int,
                 initializer: Callable[..., object] | None, initargs: tuple[Any, ...],
                 max_tasks: int | None) -> None:
        self.ctx = ctx
        self.max_workers = max_workers
        self.initializer = initializer
        self.initargs = initargs
        self.max_tasks = max_tasks
        self.dynamic = ctx.get_start_method(allow_none=False) != "fork"
        self.pickler = _pickler_for(ctx)
        self.dumps = self.pickler.dumps
        if _cloudpickle is not None and _by_value(initializer, self.dynamic):
            self.initializer = _InitializerByValue(self.dumps(initializer))
        self.lock = threading.Lock()
        self.ids = itertools.count()
        self.pending: dict[int, _base.Future[Any]] = {}
        self.queue: deque[tuple[int, Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = deque()
        self.workers: dict[int, _Worker] = {}  # pid -> worker (alive, not retiring)
        self.processes: dict[int, Any] = {}  # pid -> Process: the stdlib's `_processes`
        self.retiring: list[_Worker] = []  # exited at max_tasks_per_child, to join
        self.idle: list[_Worker] = []  # alive workers with no batch
        # Some fast worker holds a single batch while the queue is empty: a submit
        # wakes the reader to send it a second one (only the reader tops up a busy
        # worker, so that its batches are sent one at a time, in order).
        self.room = False
        self.version = 0  # bumped when the set of pipes to watch changes
        self.shutdown = False
        self.cancel_futures = False
        self.force = False
        self.broken: str | bool = False
        self.wakeup = _Wakeup()
        self.feeds: weakref.WeakSet[_Feed] = weakref.WeakSet()  # lazy map() inputs

    # All methods named *_locked run with self.lock held.

    def spawn_locked(self) -> _Worker:
        parent_conn, child_conn = self.ctx.Pipe(duplex=True)
        p = self.ctx.Process(  # type: ignore[attr-defined]
            target=_worker,
            args=(child_conn, self.initializer, self.initargs, self.max_tasks, self.pickler))
        p.start()
        child_conn.close()
        w = _Worker(p, parent_conn, self.max_tasks)
        self.workers[p.pid] = w
        self.processes[p.pid] = p
        self.version += 1
        return w

    def take_locked(self, w: _Worker) -> list[Any]:
        """Move the next batch of the queue to worker w (counted as sent, if any)."""
        q = self.queue
        n = min(_MAX_BATCH, max(1, len(q) // max(1, len(self.workers))))
        if w.quota is not None:
            n = min(n, w.quota)
        batch: list[Any] = []
        pending = self.pending
        weight = 0  # items: a map chunk counts its inputs
        while q and len(batch) < n and weight < _MAX_BATCH:
            item = q.popleft()
            f = pending[item[0]]
            if f.set_running_or_notify_cancel():
                batch.append(item)
                weight += len(item[2][1]) if item[1] in _RUNNERS else 1
            else:
                del pending[item[0]]
        if batch:
            if not w.batches:
                w.started = time.monotonic()
            w.batches.append(batch)
            if w.quota is not None:
                w.quota -= len(batch)
        return batch

    def fill_locked(self, w: _Worker) -> list[tuple[_Worker, list[Any]]]:
        """The batches to send w, a worker the reader answered or woke for (sent by
        the reader, in this order): one if it has none, and a second one if it is
        fast and more tasks are queued than there are workers (then no worker can
        idle while another holds a task back)."""
        sends = []
        while self.queue and (not w.batches or (
                len(w.batches) == 1 and w.fast and len(self.queue) > len(self.workers))):
            batch = self.take_locked(w)
            if not batch:
                break
            sends.append((w, batch))
        if w.fast and len(w.batches) == 1:
            self.room = True
        return sends

    def dispatch_locked(self) -> list[tuple[_Worker, list[Any]]]:
        """Give queued work to idle workers, starting workers if none is idle."""
        sends = []
        took_none = []  # put back after the loop (one with no quota left takes none)
        while self.queue and self.idle:
            w = self.idle.pop()
            batch = self.take_locked(w)
            if batch:
                sends.append((w, batch))
            else:
                took_none.append(w)
        self.idle.extend(took_none)
        if self.queue and self.dynamic and not self.force and not self.broken:
            while self.queue and len(self.workers) < self.max_workers:
                w = self.spawn_locked()
                batch = self.take_locked(w)
                if batch:
                    sends.append((w, batch))
                else:
                    self.idle.append(w)
                self.wakeup.wakeup()
        return sends

    def send(self, w: _Worker, batch: list[Any]) -> None:
        """Pickle and send a batch to w (idle until now, or answered to the reader,
        which is the thread calling: only this thread writes to it now)."""
        while True:
            try:
                data = self.dumps(batch)
            except Exception:
                data = None  # salvaged below: out of this handler, so the tasks' own
                # errors do not chain to this one (its frames hold the pickler's buffer)
            if data is None:
                data, dropped = self._salvage(batch)
                if w.quota is not None:
                    with self.lock:
                        # Those never reach the worker: they do not count towards
                        # its max_tasks_per_child (it counts what it runs).
                        w.quota += dropped
            if data is not None:
                if w.batches[0] is not batch and len(data) > w.room:
                    # Its second batch, but it might not fit in the pipe until the
                    # worker reads it, which it may not do before we read its results:
                    # the reader sends it when the worker answers its current batch.
                    w.deferred = data
                    return
                self.write(w, data)
                return
            # Nothing in the batch pickled: w may take more in its place.
            with self.lock:
                w.batches.remove(batch)
                batch = self.take_locked(w)
                if not batch:
                    if not w.batches:
                        self.idle.append(w)
                    return

    @staticmethod
    def write(w: _Worker, data: Any) -> None:
        try:
            w.conn.send_bytes(data)
        except (OSError, ValueError, TypeError):
            # w died (its sentinel tells the reader, which fails the batch), or
            # the pool broke meanwhile and its reader closed the pipe under us.
            pass

    def _salvage(self, batch: list[Any]) -> tuple[Any, int]:
        # As the stdlib: a task that does not pickle fails its own future with the
        # pickling error (its traceback as __cause__); the rest of the batch is sent.
        # Returns the rest pickled (None if nothing is left), and how many were dropped.
        good = []
        for item in batch:
            try:
                self.dumps(item)
            except Exception as e:
                tb = traceback.format_exception(type(e), e, e.__traceback__)
                e.__cause__ = _RemoteTraceback('\n"""\n{}"""'.format("".join(tb)))
                # Its text is kept above; its frames are not: the pickler's frame
                # holds a BytesIO whose buffer the pickler still exports, and once in a
                # reference cycle (this frame holds the pool's state) its collection
                # raised "BufferError: Existing exports of data" (3.14).
                e.__traceback__ = None
                f = self.pending.pop(item[0], None)
                if f is not None:
                    _set_exception(f, e)
            else:
                good.append(item)
        return (self.dumps(good) if good else None), len(batch) - len(good)

    def break_pool(self, cause: str | None, message: str = _BROKEN_FUTURE) -> None:
        with self.lock:
            self.broken = _BROKEN_POOL
            self.shutdown = True
            pending = list(self.pending.values())
            self.pending.clear()
            self.queue.clear()
            self.idle.clear()
            workers = list(self.workers.values()) + self.retiring
        remote = None if cause is None else _RemoteTraceback(f"\n'''\n{cause}'''")
        for f in pending:
            # One exception per future: a shared one would pile up a traceback
            # frame per result() call (CPython's test_broken_process_pool_traceback).
            bpe = BrokenProcessPool(message)
            bpe.__cause__ = remote
            _set_exception(f, bpe)
        for w in workers:
            w.process.terminate()

    def finished_locked(self) -> bool:
        if not (self.shutdown or _global_shutdown):
            return False
        if self.cancel_futures:
            self.cancel_queued_locked()
        return not self.queue and not any(w.batches for w in self.workers.values())

    def cancel_queued_locked(self) -> None:
        while self.queue:
            tid = self.queue.popleft()[0]
            f = self.pending.pop(tid, None)
            if f is not None:
                f.cancel()


def _reader(s: _State, executor_ref: Any) -> None:
    """The parent's only background thread: results, worker exits, next batches."""
    version = -1
    wait: Callable[[], list[Any]] = list
    by_obj: dict[Any, _Worker] = {}
    while True:
        with s.lock:
            if s.finished_locked() or s.broken:
                break
            if version != s.version:
                version = s.version
                by_obj = {}
                for w in itertools.chain(s.workers.values(), s.retiring):
                    by_obj[w.process.sentinel] = w
                    if not w.eof:
                        by_obj[w.conn] = w
                wait = _waiter([s.wakeup.reader, *by_obj])
        ready = wait()
        # Pipes first: a worker's last results are read before its exit is seen.
        sentinels = []
        for obj in ready:
            owner = by_obj.get(obj)
            if owner is None:
                s.wakeup.clear()
                _top_up(s)
            elif obj is owner.conn:
                _read(s, owner)
            else:
                sentinels.append(owner)
        for w in sentinels:
            while not w.eof and w.conn.poll():
                _read(s, w)
            with s.lock:
                s.version += 1
                if w in s.retiring:
                    s.retiring.remove(w)
                    w.process.join()
                    w.conn.close()
                    continue
            # Workers only exit on their own at max_tasks_per_child: any other exit
            # is a crash (or terminate_workers()), which breaks the pool as in the stdlib.
            if not s.broken:
                s.break_pool(f"The process {w.process.pid} exited with code "
                             f"{w.process.exitcode}\n")
        if s.broken:
            break
    # Stop the workers: idle ones read the shutdown message; broken pools were
    # terminated already.
    with s.lock:
        workers = list(s.workers.values()) + s.retiring
        s.workers.clear()
        s.idle.clear()
    for w in workers:
        try:
            w.conn.send_bytes(_SHUTDOWN)
        except (OSError, ValueError):
            pass
    for w in workers:
        w.process.join()
        w.conn.close()
    s.wakeup.close()


def _waiter(objs: list[Any]) -> Callable[[], list[Any]]:
    """multiprocessing.connection.wait(objs), with one poll object made now for every
    call (wait() builds a selector and registers each object every time: more than
    the rest of the reader's turn for a one-task batch)."""
    if not hasattr(select, "poll"):  # Windows
        return lambda: _wait(objs)
    poller = select.poll()
    by_fd = {}
    for obj in objs:
        fd = obj if isinstance(obj, int) else obj.fileno()
        by_fd[fd] = obj
        poller.register(fd, select.POLLIN)
    poll = poller.poll

    def wait() -> list[Any]:
        # Any event counts (a hang-up, an error): the caller's read tells which.
        return [by_fd[fd] for fd, _ in poll()]
    return wait


def _read(s: _State, w: _Worker) -> None:
    try:
        data = w.conn.recv_bytes()
    except (EOFError, OSError):
        w.eof = True  # the process is ending; its sentinel says how
        with s.lock:
            s.version += 1
        return
    try:
        done, exiting, results = _loads(data)
    except BaseException:
        # As the stdlib: a result that fails to unpickle breaks the pool.
        s.break_pool(traceback.format_exc())
        return
    pending = s.pending
    for tid, ok, value in results:
        f = pending.pop(tid, None)
        if f is not None:
            if ok:
                f.set_result(value)
            else:
                _set_exception(f, value)
    results = value = f = None
    if not done:
        return
    with s.lock:
        w.batches.popleft()
        now = time.monotonic()
        w.fast = now - w.started < _PIPELINE_UNDER
        w.started = now  # it goes on with its next batch at once, if it has one
        deferred, w.deferred = w.deferred, None
        if exiting:
            # It reached max_tasks_per_child and exits: stop counting it now (the
            # stdlib's _processes drops it at once), join it when its sentinel fires.
            s.workers.pop(w.process.pid, None)
            s.processes.pop(w.process.pid, None)
            s.retiring.append(w)
            s.version += 1
            sends, failure = _replace_locked(s)
        else:
            failure = None
            sends = s.fill_locked(w) if not s.broken else []
            if not w.batches:
                s.idle.append(w)
    if failure is not None:
        s.break_pool(*failure)
    if deferred is not None and not s.broken:
        s.write(w, deferred)  # now its only batch: it reads it once it has answered
    for w2, batch in sends:
        s.send(w2, batch)


def _top_up(s: _State) -> None:
    """Woken by a submit: send a second batch to the fast workers that hold one."""
    with s.lock:
        s.room = False
        sends = []
        if not s.broken:
            for w in s.workers.values():
                if w.batches and not w.sending:
                    sends += s.fill_locked(w)
    for w, batch in sends:
        s.send(w, batch)


def _replace_locked(s: _State) -> tuple[list[tuple[_Worker, list[Any]]], tuple[str | None, str] | None]:
    """A worker left at max_tasks_per_child: start its successor if there is work.

    Returns the batches to send, and (cause, message) if the queued work can never
    run (the stdlib's texts, 3.14).
    """
    if s.broken:
        return [], None
    cause = message = None
    sends: list[tuple[_Worker, list[Any]]] = []
    if s.force:
        # terminate_workers()/kill_workers(): a successor would escape the kill.
        message = ("A worker process exited while the pool was being "
                   "forcefully shut down; work that was still enqueued "
                   "will not be run.")
    else:
        try:
            sends = s.dispatch_locked()
        except Exception:
            cause = traceback.format_exc()
            message = ("A replacement worker process could not be "
                       "started, leaving the pool without workers "
                       "to run the remaining work.")
    if message is not None and not s.workers and (s.queue or cause is not None):
        return sends, (cause, message)
    return sends, None


class _CallQueueShim:
    # CPython's tests join `executor._call_queue`'s feeder thread; there is none here.
    def join_thread(self) -> None:
        pass

    def close(self) -> None:
        pass


def _default_context(max_tasks_per_child: int | None) -> BaseContext:
    if max_tasks_per_child is not None:
        return mp.get_context("spawn")  # as the stdlib
    if mp.get_start_method(allow_none=True) is not None:
        return mp.get_context()  # the program chose a start method: respected
    # The platform's default, read without fixing it (the stdlib's mp.get_context()
    # does, and a later set_start_method() then fails): get_all_start_methods()[0].
    # Before 3.14 that is fork on Linux, and forking a parent that runs threads (ours,
    # the caller's) can deadlock the child: take 3.14's choice, forkserver, instead.
    method = mp.get_all_start_methods()[0]
    if method == "fork" and "forkserver" in mp.get_all_start_methods():
        method = "forkserver"
    return mp.get_context(method)


class ProcessPoolExecutor(_stdlib.ProcessPoolExecutor):
    def __init__(self, max_workers: int | None = None, mp_context: BaseContext | None = None,
                 initializer: Callable[..., object] | None = None, initargs: tuple[Any, ...] = (),
                 *, max_tasks_per_child: int | None = None) -> None:
        """Initializes a new ProcessPoolExecutor instance.

        Args:
            max_workers: The maximum number of processes that can be used to
                execute the given calls.  If None or not given then as many
                worker processes will be created as the machine has
                processors.
            mp_context: A multiprocessing context to launch the workers
                created using the multiprocessing.get_context('start method')
                API.  If None: the stdlib's default, except that where that is
                'fork' (Linux before Python 3.14) 'forkserver' is used, as
                Python 3.14 does.
            initializer: A callable used to initialize worker processes.
            initargs: A tuple of arguments to pass to the initializer.
            max_tasks_per_child: The maximum number of tasks a worker
                process can complete before it will exit and be replaced
                with a fresh worker process.  The default of None means
                worker process will live as long as the executor.  Requires
                a non-'fork' mp_context start method.  When given, we
                default to using 'spawn' if no mp_context is supplied.
        """
        _stdlib._check_system_limits()
        if max_workers is None:
            cpus = getattr(os, "process_cpu_count", os.cpu_count)
            self._max_workers = cpus() or 1
            if sys.platform == "win32":
                self._max_workers = min(_stdlib._MAX_WINDOWS_WORKERS, self._max_workers)
        else:
            if max_workers <= 0:
                raise ValueError("max_workers must be greater than 0")
            elif sys.platform == "win32" and max_workers > _stdlib._MAX_WINDOWS_WORKERS:
                raise ValueError(f"max_workers must be <= {_stdlib._MAX_WINDOWS_WORKERS}")
            self._max_workers = max_workers
        if mp_context is None:
            mp_context = _default_context(max_tasks_per_child)
        self._mp_context = mp_context
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._initializer = initializer  # type: ignore[assignment]
        self._initargs = initargs
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            elif max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
            if mp_context.get_start_method(allow_none=False) == "fork":
                raise ValueError("max_tasks_per_child is incompatible with"
                                 " the 'fork' multiprocessing start method;"
                                 " supply a different mp_context.")
        self._max_tasks_per_child = max_tasks_per_child
        self._state = _State(mp_context, self._max_workers, initializer, initargs,
                             max_tasks_per_child)
        self._processes = self._state.processes
        self._executor_manager_thread: threading.Thread | None = None  # type: ignore[assignment]
        self._call_queue = _CallQueueShim()

    # The stdlib's attribute names, read by CPython's tests and by some callers.
    @property
    def _broken(self) -> str | bool:  # type: ignore[override]
        return self._state.broken

    @property
    def _shutdown_thread(self) -> bool:  # type: ignore[override]
        return self._state.shutdown

    @property
    def _shutdown_lock(self) -> Any:  # type: ignore[override]
        return self._state.lock

    @property
    def _force_shutting_down(self) -> bool:
        return self._state.force

    @_force_shutting_down.setter
    def _force_shutting_down(self, value: bool) -> None:
        self._state.force = value

    def _start_reader_locked(self) -> None:
        if self._executor_manager_thread is None:
            s = self._state
            if not s.dynamic:
                # fork: every worker is forked now, before our thread exists.
                while len(s.workers) < s.max_workers:
                    s.idle.append(s.spawn_locked())
            ref = weakref.ref(self, lambda _, s=s: _on_collect(s))  # type: ignore[misc]
            t = threading.Thread(target=_reader, args=(s, ref),
                                 name=f"fastpool-process-reader-{id(self):x}")
            t.start()
            self._executor_manager_thread = t
            _readers[t] = s.wakeup

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> _base.Future[Any]:
        s = self._state
        with s.lock:
            if s.broken:
                raise BrokenProcessPool(s.broken)
            if s.shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _global_shutdown:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            f: _base.Future[Any] = _Future()
            tid = next(s.ids)
            s.pending[tid] = f
            s.queue.append((tid, fn, args, kwargs))
            if self._executor_manager_thread is None:
                self._start_reader_locked()
            sends = s.dispatch_locked()  # to an idle worker, or one it starts
            # Only worth a wake-up when the reader would send a second batch then.
            nudge = s.room and not sends and len(s.queue) > len(s.workers)
            if nudge:
                s.room = False
            for w, _ in sends:
                w.sending = True
        if nudge:
            s.wakeup.wakeup()  # the reader sends a fast worker its second batch
        elif sends:
            for w, batch in sends:
                s.send(w, batch)
            with s.lock:
                for w, _ in sends:
                    w.sending = False
                    if w.fast and len(w.batches) == 1:
                        s.room = True
        return f
    submit.__doc__ = _base.Executor.submit.__doc__

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1, buffersize: int | None = None) -> Iterator[Any]:
        """Returns an iterator equivalent to map(fn, iter).

        As the stdlib's, with two changes that do not change what the iterator
        yields or raises (results in order; the first failing call's exception,
        raised when the iterator reaches it):

        - with the default `chunksize=1` the inputs are sent in chunks (about 4
          per worker, at most 256 items);
        - the input is read lazily past its first window (4 chunks per worker,
          the first ones sized by it): a second window is submitted, then one
          more chunk as the iterator moves past one, so a huge or endless
          input is never held in memory. An input that fits in the window is submitted at once, as
          with the stdlib; `shutdown()` (except with cancel_futures) submits
          what is left of every unfinished map first, so that all of it still
          runs. An exception raised by the input is raised by the iterator
          after the results of the inputs before it.

        `buffersize` (the Python 3.14 argument, offered on every version) bounds
        the chunks in flight instead, as the stdlib's: at most `buffersize` chunks
        of `chunksize` items, none submitted after shutdown().
        """
        if buffersize is not None and not isinstance(buffersize, int):
            raise TypeError("buffersize must be an integer or None")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end_time = None if timeout is None else timeout + time.monotonic()
        args: Iterator[Any]
        if len(iterables) == 1:
            args, run = iter(iterables[0]), _run_items
        else:
            args, run = zip(*iterables), _run_chunk
        chunks: Iterator[list[Any]]
        if buffersize is not None:
            chunks = iter(lambda: list(itertools.islice(args, chunksize)), [])
            fs = deque(self.submit(run, fn, c) for c in itertools.islice(chunks, buffersize))
            return _results(fs, end_time, (self, run, fn, chunks))
        window = self._max_workers * 4
        first = list(itertools.islice(args, window * (_MAX_CHUNK if chunksize == 1 else chunksize)))
        lazy = len(first) == window * (_MAX_CHUNK if chunksize == 1 else chunksize)
        if chunksize == 1:
            chunksize = min(_MAX_CHUNK, max(1, -(-len(first) // window)))
        fs = deque(self.submit(run, fn, first[i:i + chunksize])
                   for i in range(0, len(first), chunksize))
        del first
        if not lazy:
            # All of it submitted: the iterator holds no reference to the executor,
            # so `del executor` shuts it down, as with the stdlib.
            return _results(fs, end_time, None)
        feed = _Feed(self, run, fn, _chunked(args, chunksize), fs)
        self._state.feeds.add(feed)
        # A second window in flight: a worker back for more finds chunks queued
        # while the consumer catches up (measured: 0.75-0.94x Pool.imap(256) for a
        # no-op, against 0.66-0.74x with one window).
        feed.more(window)
        return _results(fs, end_time, feed)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        s = self._state
        for feed in list(s.feeds):
            # The rest of each lazy map's input: submitted now, as the stdlib's map
            # would have at once (or dropped with the queue).
            feed.close() if cancel_futures else feed.drain()
        with s.lock:
            s.shutdown = True
            if cancel_futures:
                s.cancel_futures = True
                s.cancel_queued_locked()
        s.wakeup.wakeup()
        t = self._executor_manager_thread
        if t is None:
            s.wakeup.close()
        elif wait:
            t.join()
    shutdown.__doc__ = _base.Executor.shutdown.__doc__

    def _force_shutdown(self, operation: str) -> None:
        if operation not in ("terminate", "kill"):
            raise ValueError(f"Unsupported operation: {operation!r}")
        s = self._state
        with s.lock:
            s.force = True
            procs = list(s.processes.values())
        self.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            try:
                if p.is_alive():
                    p.terminate() if operation == "terminate" else p.kill()
            except (ValueError, ProcessLookupError):
                continue

    def terminate_workers(self) -> None:
        """Attempts to terminate the executor's workers.
        Iterates through all of the current worker processes and terminates
        each one that is still alive.

        After terminating workers, the pool will be in a broken state
        and no longer usable (for instance, new tasks should not be
        submitted).
        """
        return self._force_shutdown(operation="terminate")

    def kill_workers(self) -> None:
        """Attempts to kill the executor's workers.
        Iterates through all of the current worker processes and kills
        each one that is still alive.

        After killing workers, the pool will be in a broken state
        and no longer usable (for instance, new tasks should not be
        submitted).
        """
        return self._force_shutdown(operation="kill")


def _on_collect(s: _State) -> None:
    # The executor was garbage-collected: as shutdown(wait=False).
    s.shutdown = True
    try:
        s.wakeup.wakeup()
    except OSError:
        pass


def _chunked(args: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while True:
        chunk: list[Any] = []
        try:
            chunk.extend(itertools.islice(args, size))
        except BaseException:
            if chunk:  # the inputs read before the input failed still run
                yield chunk
            raise
        if not chunk:
            return
        yield chunk


class _Feed:
    """The rest of a lazy map()'s input: chunks submitted as the iterator moves on,
    or all at once by shutdown(). The lock keeps the futures in input order when
    both happen at the same time."""

    __slots__ = ("lock", "executor", "run", "fn", "chunks", "fs", "error", "__weakref__")

    def __init__(self, executor: ProcessPoolExecutor, run: Callable[..., Any],
                 fn: Callable[..., Any], chunks: Iterator[list[Any]],
                 fs: deque[_base.Future[Any]]) -> None:
        self.lock = threading.Lock()
        self.executor: ProcessPoolExecutor | None = executor
        self.run = run
        self.fn = fn
        self.chunks = chunks
        self.fs = fs
        self.error: BaseException | None = None  # raised by the input, or by submit()

    def more(self, n: int) -> None:
        with self.lock:
            ex, chunks = self.executor, self.chunks
            if ex is None:
                return
            try:
                for _ in range(n):
                    c = next(chunks, None)
                    if c is None:
                        self.close()
                        return
                    self.fs.append(ex.submit(self.run, self.fn, c))
            except BaseException as e:
                # The input failed (or the pool broke): raised after the results
                # of everything before it.
                self.error = e
                self.close()

    def drain(self) -> None:
        self.more(sys.maxsize)

    def close(self) -> None:
        # Lock-free (more() calls it holding the lock, and works on its own copies).
        self.executor = self.chunks = None  # type: ignore[assignment]


def _results(fs: deque[_base.Future[Any]], end_time: float | None, more: Any) -> Iterator[Any]:
    # A generator of its own (not a method) so it holds no reference to the executor
    # when the input is all submitted: `del executor` then shuts it down, as with the stdlib.
    feed = more if isinstance(more, _Feed) else None
    try:
        while fs:
            f = fs.popleft()
            try:
                if end_time is None:
                    results, err = f.result()
                else:
                    results, err = f.result(end_time - time.monotonic())
            finally:
                f.cancel()
                del f
            if feed is not None:
                feed.more(1)
            elif more is not None:
                executor, run, fn, chunks = more
                for c in itertools.islice(chunks, 1):
                    fs.append(executor.submit(run, fn, c))
            # Popped as yielded: the iterator keeps no reference to a result the
            # caller has dropped (bpo-14406, tested by CPython).
            results.reverse()
            while results:
                yield results.pop()
            if err is not None:
                try:
                    raise err
                finally:
                    err = None
        if feed is not None and feed.error is not None:
            try:
                raise feed.error
            finally:
                feed.error = None
    finally:
        if feed is not None:
            feed.close()
        for f in fs:
            f.cancel()
