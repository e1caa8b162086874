"""Pool(backend="processes"): the Pool's tasks run in worker processes.

The Pool stays local, as with the Dask backend (fastpool/_dask.py): the queue and its
backpressure, retries and their timer, dead letters, tokens and deadlines, stats,
shutdown reports and signals. Its worker threads become dispatchers, and each one owns
one worker process (started on its first call, by the platform's safe start method):
`serve` sends the pickled call down that process's pipe and waits for the answer or for
the task's governing token. Quick calls are pipelined: the dispatcher takes more queued
tasks and sends them in batches (one pickle, one write) before the answers of those ahead
come back (read in bulk), keeping about _PIPELINE_BUDGET s of calls in its process; the
worker sends each answer before it starts the next call, so the parent always knows
which call a dead process was running and that those behind it never started.
What only a process allows:

- a cancelled token (a deadline, a timed-out shutdown, the caller's token) *stops* the
  call: the dispatcher terminates its process (SIGTERM, SIGKILL after `grace` s) and the
  next call starts a fresh one;
- a process that dies (killed, segfault, os._exit) fails only the call it ran, with
  WorkerCrashed (which a Retry policy retries), and the next call starts a fresh one;
- `max_tasks_per_child` recycles a process after that many calls.

A process ends with its dispatcher thread (retired for idleness, or at shutdown: the
thread-local that holds it is released and closes its pipes), with the pool
(shutdown() reaps them all; a timed-out one kills them) and with the parent: each
process has a watchdog thread reading a pipe only the parent writes to, whose EOF (the
parent exited or was killed) ends the process at once, even in the middle of a call.

multiprocessing is imported by this module only, which the Pool imports only for
backend="processes".
"""

from __future__ import annotations

import atexit
import importlib
import itertools
import multiprocessing as mp
import os
import pickle
import signal
import struct
import sys
import threading
import weakref
from collections import deque
from concurrent.futures import CancelledError
from concurrent.futures import process as _stdlib
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from time import perf_counter
from typing import Any, Callable

from .cancel import CancelToken

__all__ = ["ProcessBackend", "WorkerCrashed"]

EXTRA_HINT = "pip install 'fastpool[cloudpickle]'"

_cloudpickle: Any
try:
    # Through importlib: an optional extra, without type stubs.
    _cloudpickle = importlib.import_module("cloudpickle")
except ImportError:
    _cloudpickle = None

_PROTOCOL = pickle.HIGHEST_PROTOCOL
_STOP = b""  # sent to an idle process: exit (closing its pipes does the same)
_SIGKILL = getattr(signal, "SIGKILL", signal.SIGTERM)  # Windows: TerminateProcess both

# Pipelining (ProcessBackend.serve): a dispatcher keeps up to this many calls in its
# process, fewer as calls take longer: about this many seconds of calls (a queued call
# waits behind them while another process may be idle).
_MAX_DEPTH = 256
_PIPELINE_BUDGET = 0.005

# Answers of a worker process: (kind, value).
# _UNLOADABLE: a batch pickled as one could not be unpickled (a function or an
# argument the worker cannot import): none of its calls started; the parent sends them
# again each pickled on its own, so that only those that cannot be loaded fail.
_OK, _RAISED, _INIT_FAILED, _UNLOADABLE = 0, 1, 2, 3

# The stdlib's own wrappers: an exception crosses back with its formatted remote
# traceback as __cause__, exactly as with concurrent.futures.ProcessPoolExecutor.
_ExceptionWithTraceback: Callable[..., Any] = _stdlib._ExceptionWithTraceback


class WorkerCrashed(BrokenProcessPool):
    """The worker process running this task died (killed, segfault, os._exit).

    Only this task fails: the pool starts a fresh process for the next one, so a Retry
    policy retries it (and dead-letters it after its last attempt). A subclass of the
    stdlib's BrokenProcessPool -- what a dead worker raises there, so existing handlers
    keep catching it -- and so of RuntimeError."""


# --------------------------------------------------------------------------- pickling

def _dumps(obj: Any, what: str) -> bytes:
    """pickle, or cloudpickle for what pickle cannot carry by reference (lambdas,
    closures, functions defined in __main__, which a worker may not be able to
    import: `python -c`, a notebook, stdin)."""
    if _cloudpickle is not None and _by_value(obj):
        return _cloudpickle.dumps(obj, _PROTOCOL)  # type: ignore[no-any-return]
    try:
        return pickle.dumps(obj, _PROTOCOL)
    except Exception as exc:
        if _cloudpickle is None:
            raise TypeError(f"cannot pickle {what} for a worker process ({exc}); lambdas, "
                            f"closures and functions defined in __main__ need cloudpickle: "
                            f"{EXTRA_HINT}") from exc
        return _cloudpickle.dumps(obj, _PROTOCOL)  # type: ignore[no-any-return]


def _by_value(obj: Any) -> bool:
    # The call tuple (fn, args, kwargs), or a list of them: a __main__ function goes by
    # value.
    if isinstance(obj, list):
        return any(_by_value(call) for call in obj)
    fn = obj[0] if isinstance(obj, tuple) and obj else obj
    return getattr(fn, "__module__", None) == "__main__"


# --------------------------------------------------------------------------- worker

def _watch_parent(alive: Connection) -> None:
    # Only the parent holds the other end: EOF means it closed it (the pool is done
    # with this process) or it died, even SIGKILLed. Either way: exit now, whatever
    # the main thread is running.
    try:
        alive.poll(None)
    except BaseException:
        pass
    os._exit(0)


def _worker_main(conn: Connection, alive: Connection, init: bytes) -> None:
    # Ctrl-C in a terminal signals the whole process group: the parent decides what
    # happens to running tasks (handle_signals drains them), not the interrupt.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(alive,), daemon=True,
                     name="fastpool-parent-watch").start()
    init_error = None
    try:
        initializer, initargs = pickle.loads(init)
        if initializer is not None:
            initializer(*initargs)
    except BaseException as exc:
        init_error = _ExceptionWithTraceback(exc, exc.__traceback__)
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if data == _STOP:
            return
        if init_error is not None:
            _send(conn, (_INIT_FAILED, init_error))
            return
        # A batch of calls, each pickled on its own. Each call's answer is sent before
        # the next call starts: should this process die (killed by a deadline, a
        # crash), the parent has the answers of the calls that finished, knows which
        # one was running, and that the rest never started.
        # The batch is a list of calls (pickled as one) or of pickled calls (each on
        # its own).
        try:
            calls = pickle.loads(data)
        except BaseException as exc:
            _send(conn, (_UNLOADABLE, repr(exc)))
            continue
        data = None  # type: ignore[assignment]
        calls.reverse()
        while calls:
            try:
                call = calls.pop()
                fn, args, kwargs = pickle.loads(call) if type(call) is bytes else call
                call = None
                answer = (_OK, fn(*args, **kwargs))
            except BaseException as exc:
                if isinstance(exc, AttributeError) and "__main__" in str(exc):
                    exc = RuntimeError(f"a worker process cannot import the function "
                                       f"({exc}): functions defined in __main__ need "
                                       f"cloudpickle, {EXTRA_HINT}")
                answer = (_RAISED, _ExceptionWithTraceback(exc, exc.__traceback__))
            fn = args = kwargs = call = None
            _send(conn, answer)
            answer = None  # type: ignore[assignment]


def _send(conn: Connection, answer: tuple[int, Any]) -> None:
    try:
        try:
            data = pickle.dumps(answer, _PROTOCOL)
        except BaseException:
            data = _dumps(answer, "the result")  # cloudpickle, if there is
    except BaseException as exc:
        # The result (or the exception) does not pickle: the task fails with why.
        err = RuntimeError(f"cannot send the task's {'result' if answer[0] == _OK else 'exception'}"
                           f" back from the worker process: {exc!r}")
        data = pickle.dumps((_RAISED, _ExceptionWithTraceback(err, exc.__traceback__)))
    if _BULK and len(data) <= 65536:
        # Connection.send_bytes's framing in one write, without its checks and copies
        # (one answer per call: this is most of a no-op's cost here).
        frame = memoryview(_HEADER.pack(len(data)) + data)
        fd = conn.fileno()
        while frame:
            frame = frame[os.write(fd, frame):]
    else:
        conn.send_bytes(data)


# --------------------------------------------------------------------------- parent

def default_context() -> BaseContext:
    """The platform's safe start method: the one the program set, else the platform's
    default -- but never fork of this (threaded) parent, which can deadlock the child:
    forkserver then, as Python 3.14 chose. (A fixed "fork" is no proof that the program
    chose it: multiprocessing fixes its default the first time it starts a process.)"""
    method = mp.get_start_method(allow_none=True)
    if method is None:
        # Read without fixing it (mp.get_context() would, and a later
        # set_start_method() would then fail).
        method = mp.get_all_start_methods()[0]
    if method == "fork" and "forkserver" in mp.get_all_start_methods():
        method = "forkserver"
    return mp.get_context(method)


def _preload_in_forkserver() -> None:
    # A worker forked by the forkserver imports fastpool before it can run (~0.1-0.2 s
    # here, most of a process start): let the forkserver import it once, for all its
    # children, besides what the program asked for. Only before the forkserver starts.
    from multiprocessing import forkserver
    mods = getattr(forkserver._forkserver, "_preload_modules", None)
    if isinstance(mods, list) and __name__ not in mods:
        forkserver.set_forkserver_preload([*mods, __name__])


_HEADER = struct.Struct("!i")
_LONG_HEADER = struct.Struct("!Q")
# Read answers in bulk from the pipe's file descriptor (a Windows pipe is a handle:
# Connection.recv_bytes there).
_BULK = sys.platform != "win32"


def _frame_size(buf: bytes | bytearray, pos: int = 0) -> int:
    """The size of the frame (header and answer) at `pos`, as Connection.send_bytes
    wrote it: a 4-byte length, or -1 and an 8-byte length; 12 if that is not read yet."""
    n = _HEADER.unpack_from(buf, pos)[0]
    if n != -1:
        return 4 + n  # type: ignore[no-any-return]
    if len(buf) - pos < 12:
        return 12
    return 12 + _LONG_HEADER.unpack_from(buf, pos + 4)[0]  # type: ignore[no-any-return]


def _describe(exitcode: int | None) -> str:
    if exitcode is None:
        return "unknown exit code"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


class _Proc:
    """One worker process and the parent's ends of its pipes."""

    __slots__ = ("process", "conn", "alive", "calls", "sent", "lock", "current", "doomed",
                 "grace", "buf", "answers", "__weakref__")

    def __init__(self, process: Any, conn: Connection, alive: Connection,
                 grace: float) -> None:
        self.process = process
        self.grace = grace
        self.conn = conn
        self.alive = alive
        self.calls = 0  # calls answered
        self.sent = 0  # calls sent
        self.lock = threading.Lock()
        self.current = 0  # id of the call(s) in flight now (0: none)
        self.doomed = False  # terminated by a token: never reused
        self.buf = bytearray()  # answers read, not complete yet
        self.answers: deque[bytes | bytearray] = deque()  # answers read, not taken yet

    def read_answers(self) -> bool:
        """Read what the process has sent, in one read (it blocks till something
        comes), and split it into answers (multiprocessing.Connection's framing): one
        system call for every answer that arrived meanwhile, where recv_bytes makes two
        per answer, each a GIL hand-off. False at EOF (the process died or exited)."""
        buf = self.buf
        want = 65536
        if len(buf) >= 4:
            # Part of a large answer: read the rest of it at once.
            want = max(want, _frame_size(buf) - len(buf))
        try:
            chunk = os.read(self.conn.fileno(), want)
        except OSError:
            return False
        if not chunk:
            return False
        data: bytes | bytearray = chunk
        if buf:
            buf += chunk
            data = buf
        pos, end = 0, len(data)
        unpack, append = _HEADER.unpack_from, self.answers.append
        while end - pos >= 4:
            n = unpack(data, pos)[0]
            if n >= 0:
                stop = pos + 4 + n
                if stop > end:
                    break
                append(data[pos + 4:stop])
            else:
                stop = pos + _frame_size(data, pos)
                if stop > end:
                    break
                append(data[pos + 12:stop])
            pos = stop
        if data is buf:
            del buf[:pos]
        elif pos < end:
            buf += data[pos:]
        return True

    def interrupt(self, call_id: int) -> None:
        # A token's callback, in whichever thread cancelled it: only if that call still
        # runs here (a late callback must not kill the next call's process).
        with self.lock:
            if self.current != call_id or self.doomed:
                return
            self.doomed = True
        self._signal(signal.SIGTERM)
        # SIGKILL after the grace, should it ignore SIGTERM (a handler the initializer
        # installed): the dispatcher is blocked reading its pipe till it dies.
        killer = threading.Timer(self.grace, self._signal, (_SIGKILL,))
        killer.daemon = True
        killer.start()

    def _signal(self, sig: int) -> None:
        pid = self.process.pid
        if pid is not None and self.process.exitcode is None:
            try:
                os.kill(pid, sig)
            except OSError:
                pass  # gone already

    def close(self) -> None:
        """Tell the process to exit (non-blocking): its watchdog sees the EOF."""
        for c in (self.alive, self.conn):
            try:
                c.close()
            except OSError:
                pass

    def reap(self, grace: float) -> None:
        """Wait `grace` s for the process to exit, then SIGKILL it and wait."""
        self.close()
        self.process.join(grace)
        if self.process.exitcode is None:
            self._signal(_SIGKILL)
            self.process.join(5.0)


class _Slot:
    """Held by a dispatcher thread (threading.local): released with the thread, which
    closes the process it owns. (Its finalizer holds `cell`, not the slot.)"""

    __slots__ = ("cell", "depth", "per_call", "last", "fn", "__weakref__")

    def __init__(self) -> None:
        self.cell: list[_Proc | None] = [None]
        # Pipelining: how many calls this dispatcher keeps in its process (1: one at a
        # time, till a call's time is known), from the time a call takes (s, a moving
        # average), measured between answers (`last`: when the last one came).
        self.depth = 1
        self.per_call = 0.0
        self.last = 0.0
        # The function those calls ran: a call of another one is not queued behind them
        # (nor others behind it) till its own time is known.
        self.fn: Any = None


def _barrier(e: _Entry, slot: _Slot) -> bool:
    """True if `e` must not be queued behind the calls in flight, nor others behind it:
    it has its own token, or is a call of another function than theirs."""
    return e.own or e.task.fn != slot.fn


class _Entry:
    """A started task in a dispatcher's hands: waiting to be sent, or sent and not
    answered yet."""

    __slots__ = ("task", "token", "own", "t0", "sent_at", "hook", "batch", "solo")

    def __init__(self, task: Any, token: CancelToken, own: bool, t0: float) -> None:
        self.task = task
        self.token = token  # the token that governs its call
        self.own = own  # its own token or deadline (not only the pool's): sent alone
        self.t0 = t0
        self.sent_at = 0.0
        self.hook: int | None = None  # its callback on `token` (own only)
        self.batch = 0  # first of a batch pickled as one: the number of calls in it
        self.solo = False  # pickled on its own (its batch could not be unpickled)


class ProcessBackend:
    """Worker processes for `Pool(backend=...)`; ``backend="processes"`` is
    ``ProcessBackend()``.

    Args:
        max_tasks_per_child: a process exits after this many calls and the next call
            starts a fresh one (None: never).
        mp_context: a multiprocessing context (its start method); default: the
            platform's safe one (forkserver where the default is fork, as on Linux
            before Python 3.14; spawn on macOS and Windows).
        grace: seconds a process stopped by a token (deadline, shutdown timeout) gets
            after SIGTERM before SIGKILL.

    One ProcessBackend serves one Pool.
    """

    _fastpool_processes = True  # how the Pool tells it from a Dask Client (no import)

    def __init__(self, *, max_tasks_per_child: int | None = None,
                 mp_context: BaseContext | None = None, grace: float = 0.5) -> None:
        if max_tasks_per_child is not None:
            if isinstance(max_tasks_per_child, bool) or not isinstance(max_tasks_per_child, int):
                raise TypeError(f"`max_tasks_per_child` must be an int or None, "
                                f"got {max_tasks_per_child!r}")
            if max_tasks_per_child < 1:
                raise ValueError(f"`max_tasks_per_child` must be >= 1, got {max_tasks_per_child}")
        if mp_context is None:
            mp_context = default_context()
        elif not isinstance(mp_context, BaseContext):
            raise TypeError(f"`mp_context` must be a multiprocessing context, got {mp_context!r}")
        if mp_context.get_start_method() == "fork":
            raise ValueError("the fork start method is refused: forking a parent that runs "
                             "threads (the pool's) can deadlock the child; use forkserver or "
                             "spawn")
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not grace >= 0:
            raise ValueError(f"`grace` must be a number >= 0, got {grace!r}")
        if mp_context.get_start_method() == "forkserver":
            _preload_in_forkserver()
        self.max_tasks_per_child = max_tasks_per_child
        self.mp_context = mp_context
        self.grace = float(grace)
        self._init = b""
        self._name = "fastpool"
        self._bound = False
        self._lock = threading.Lock()
        self._procs: dict[_Proc, None] = {}  # every live process (insertion-ordered set)
        self._local = threading.local()
        self._ids = itertools.count(1)
        self._closed = False  # a timed-out shutdown killed them all: start no more
        self.broken: str | None = None

    # -- set up by the Pool ---------------------------------------------------------

    def bind(self, initializer: Callable[..., object] | None, initargs: tuple[Any, ...],
             copy_context: bool, name: str) -> None:
        if self._bound:
            raise ValueError("a ProcessBackend serves one Pool: make one per Pool")
        if copy_context:
            raise ValueError("`copy_context=True` cannot carry contextvars into worker "
                             "processes")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        # Pickled now: a failure is the constructor's error, not every task's.
        self._init = _dumps((initializer, tuple(initargs)), "the initializer")
        self._name = name
        self._bound = True
        _live.add(self)

    def default_workers(self) -> int:
        """One process per CPU this process may run on."""
        n: int | None
        if hasattr(os, "process_cpu_count"):
            n = os.process_cpu_count()
        elif hasattr(os, "sched_getaffinity"):
            n = len(os.sched_getaffinity(0))
        else:
            n = os.cpu_count()
        return max(1, n or 1)

    # -- processes ------------------------------------------------------------------

    def _start(self) -> _Proc:
        ctx: Any = self.mp_context  # typeshed's BaseContext lacks Process
        conn, child_conn = ctx.Pipe(duplex=True)
        alive_r, alive_w = ctx.Pipe(duplex=False)
        process = ctx.Process(target=_worker_main, args=(child_conn, alive_r, self._init),
                              name=f"{self._name}-process")
        with self._lock:
            if self._closed:
                for c in (conn, child_conn, alive_r, alive_w):
                    c.close()
                raise CancelledError("the pool was shut down")
            # Reap the processes of retired dispatchers (exited, or exiting: closed).
            for old in [p for p in self._procs if p.process.exitcode is not None]:
                del self._procs[old]
            process.start()
            proc = _Proc(process, conn, alive_w, self.grace)
            self._procs[proc] = None
        # The child has its own copies: ours must go, or its EOF never comes.
        child_conn.close()
        alive_r.close()
        return proc

    def _mine(self) -> _Slot:
        slot: _Slot | None = getattr(self._local, "slot", None)
        if slot is None:
            slot = self._local.slot = _Slot()
            # The slot dies with this thread's locals (the thread exits: idle retire,
            # shutdown): its process is told to exit then.
            weakref.finalize(slot, _release, slot.cell)
        return slot

    def _drop(self, slot: _Slot, proc: _Proc, grace: float) -> None:
        slot.cell[0] = None
        proc.reap(grace)
        with self._lock:
            self._procs.pop(proc, None)

    def serve(self, first: Any, run_token: CancelToken | None, t0: float, hooks: Any) -> None:
        """Run the Pool task `first` (started by hooks.start: `run_token` and `t0` are
        what it returned) in this thread's worker process and, while calls are quick,
        more queued tasks (hooks.take_next) pipelined behind it: sent before the
        answers of the calls ahead of them come back. Every task it takes ends settled
        (hooks.finish), exactly once.

        A task with its own token or deadline is sent alone: nothing is queued behind it
        in its process (a token that stops it kills that process) and it is not queued
        behind others (it runs when it is sent). The other tasks are governed by the
        pool's token (hooks.pool_token) alone. A call of another function than the last
        ones waits for them, and goes first (the pipeline depth is measured anew): a slow
        function's calls are not taken in numbers on a quick one's measure. A process that dies fails the call it
        was running; the calls sent behind it never started: they go to a fresh one."""
        slot = self._mine()
        pool_token: CancelToken = hooks.pool_token
        waiting: deque[_Entry] = deque([_Entry(first, pool_token if run_token is None
                                               else run_token, run_token is not None, t0)])
        sent: deque[_Entry] = deque()
        # The pool's token stops the process while plain calls are in flight in it.
        plain_id = next(self._ids)
        plain_hook: list[int | None] = []
        try:
            while waiting or sent:
                depth = slot.depth
                if (depth > 1 and len(waiting) + len(sent) <= depth // 2
                        and not (waiting and _barrier(waiting[-1], slot))
                        and not (sent and sent[-1].own)):
                    self._take(slot, hooks, pool_token, waiting,
                               depth - len(waiting) - len(sent))
                if waiting:
                    self._send_ready(slot, waiting, sent, hooks, plain_id, plain_hook,
                                     pool_token)
                if sent:
                    self._receive(slot, waiting, sent, hooks)
        except BaseException as exc:
            # A bug of ours: what is left fails with it, and this process (its pipe in
            # an unknown state) goes.
            proc = slot.cell[0]
            if proc is not None:
                self._drop(slot, proc, 0.0)
            for e in (*sent, *waiting):
                if e.hook is not None:
                    e.token.remove_callback(e.hook)
                hooks.finish(e.task, e.t0, False, exc)
            raise
        finally:
            if plain_hook:
                pool_token.remove_callback(plain_hook[0])

    def _take(self, slot: _Slot, hooks: Any, pool_token: CancelToken,
              waiting: deque[_Entry], n: int) -> None:
        # Up to n more queued tasks for this process; stop after one that must go alone
        # or first (_barrier).
        for _ in range(n):
            task = hooks.take_next()
            if task is None:
                return
            try:
                started = hooks.start(task)
            except BaseException as exc:
                hooks.rescue(task, exc)  # as the worker loop would (run_with_options)
                continue
            if started is None:
                continue  # not to run (cancelled, settled by its deadline, handed back)
            run_token, t0 = started
            e = _Entry(task, pool_token if run_token is None else run_token,
                       run_token is not None, t0)
            waiting.append(e)
            if _barrier(e, slot):
                return

    def _send_ready(self, slot: _Slot, waiting: deque[_Entry], sent: deque[_Entry],
                    hooks: Any, plain_id: int, plain_hook: list[int | None],
                    pool_token: CancelToken) -> None:
        """Send, in one message, the waiting calls that may go now."""
        # Those that will not run: the pool broke, or their token was cancelled first.
        while waiting:
            e = waiting[0]
            if self.broken is not None:
                err: BaseException = BrokenProcessPool(self.broken)
            elif e.token.cancelled:
                reason = e.token.reason
                err = CancelledError() if reason is None else CancelledError(reason)
            else:
                break
            waiting.popleft()
            hooks.finish(e.task, e.t0, False, err)
        if not waiting or (sent and (sent[-1].own or _barrier(waiting[0], slot))):
            return
        proc = slot.cell[0]
        limit = self.max_tasks_per_child
        if proc is not None and limit is not None and proc.sent >= limit:
            if sent:
                return  # its last calls are still running
            self._drop(slot, proc, 5.0)
            proc = None
        if proc is None:
            try:
                proc = slot.cell[0] = self._start()
            except CancelledError as exc:  # the pool was shut down: start no more
                while waiting:
                    e = waiting.popleft()
                    hooks.finish(e.task, e.t0, False, exc)
                return
        batch: list[_Entry] = []
        room = _MAX_DEPTH if limit is None else limit - proc.sent
        solo = waiting[0].solo
        while waiting and len(batch) < room:
            e = waiting[0]
            if batch and (e.own or batch[-1].own or e.solo != solo
                          or e.task.fn != batch[0].task.fn):
                break
            batch.append(waiting.popleft())
        payload = None
        if not solo:
            # The batch in one pickle: the function, pickled by reference, goes once
            # (later calls refer to it): ~0.1 us per call instead of ~4 us on its own.
            calls = [(e.task.fn, e.task.args, e.task.kwargs) for e in batch]
            try:
                payload = _dumps(calls, "a batch of calls")
                batch[0].batch = len(batch)
            except BaseException:
                solo = True  # one of them does not pickle: find it, send the others
            calls = None  # type: ignore[assignment]
        if solo:
            # Each call pickled on its own: one that cannot be fails alone.
            data: list[bytes] = []
            ok: list[_Entry] = []
            for e in batch:
                task = e.task
                try:
                    data.append(_dumps((task.fn, task.args, task.kwargs),
                                       f"the call of {task.fn!r}"))
                except BaseException as exc:
                    hooks.finish(task, e.t0, False, exc)
                    continue
                ok.append(e)
            batch = ok
            if not batch:
                return
            payload = pickle.dumps(data, _PROTOCOL)
        assert payload is not None
        try:
            proc.conn.send_bytes(payload)
        except OSError:
            if not sent and proc.sent:
                # It died while idle (killed): these calls never started there.
                self._drop(slot, proc, 0.0)
                waiting.extendleft(reversed(batch))
                return
            # Died at once (its initializer called os._exit...), or while running the
            # calls ahead: seen as EOF when reading their answers.
        now = perf_counter()
        for e in batch:
            e.sent_at = now
        fn = batch[0].task.fn
        if fn != slot.fn:
            # Another function: its time per call is not known yet.
            slot.fn = fn
            slot.depth = 1
            slot.per_call = 0.0
        proc.sent += len(batch)
        sent.extend(batch)
        head = batch[0]
        if head.own:
            call_id = next(self._ids)
            with proc.lock:
                proc.current = call_id
            # Called at once if already cancelled.
            head.hook = head.token.add_callback(lambda _t: proc.interrupt(call_id))
        else:
            with proc.lock:
                proc.current = plain_id
            if not plain_hook:
                plain_hook.append(pool_token.add_callback(
                    lambda _t: self._interrupt(slot, plain_id)))

    @staticmethod
    def _interrupt(slot: _Slot, call_id: int) -> None:
        proc = slot.cell[0]
        if proc is not None:
            proc.interrupt(call_id)

    def _receive(self, slot: _Slot, waiting: deque[_Entry], sent: deque[_Entry],
                 hooks: Any) -> None:
        """Wait for the answer of the oldest call sent, and settle it."""
        proc = slot.cell[0]
        assert proc is not None
        answer = self._wait(proc)
        e = sent.popleft()
        if e.hook is not None:
            e.token.remove_callback(e.hook)
            e.hook = None
        if answer is None:
            self._died(slot, proc, e, waiting, sent, hooks)
            return
        if answer[0] == _UNLOADABLE:
            # None of its batch started: again, each call pickled on its own.
            back = [e] + [sent.popleft() for _ in range(e.batch - 1)]
            proc.sent -= len(back)
            for b in back:
                b.solo = True
                b.batch = 0
            waiting.extendleft(reversed(back))
            if not sent:
                with proc.lock:
                    proc.current = 0
            return
        now = perf_counter()
        if proc.calls:  # (not a fresh process's first call: its start-up)
            took = now - max(slot.last, e.sent_at)
            per_call = slot.per_call = took if not slot.per_call else (
                slot.per_call + (took - slot.per_call) * 0.25)
            slot.depth = max(1, min(_MAX_DEPTH, int(_PIPELINE_BUDGET / max(per_call, 1e-6))))
        slot.last = now
        proc.calls += 1
        if not sent:
            with proc.lock:
                proc.current = 0
            limit = self.max_tasks_per_child
            if proc.doomed or (limit is not None and proc.calls >= limit):
                self._drop(slot, proc, self.grace if proc.doomed else 5.0)
        kind, value = answer
        if kind == _OK:
            hooks.finish(e.task, e.t0, True, value)
            return
        if kind == _INIT_FAILED:
            self.broken = ("A process initializer failed, the process pool is not "
                           "usable anymore")
            err = BrokenProcessPool(self.broken)
            err.__cause__ = value
            value = err
        hooks.finish(e.task, e.t0, False, value)

    def _died(self, slot: _Slot, proc: _Proc, e: _Entry, waiting: deque[_Entry],
              sent: deque[_Entry], hooks: Any) -> None:
        # No answer: stopped by a token, or dead. `e` was running; the calls sent
        # behind it never started: they wait for a fresh process (or end as cancelled
        # there, if their token was cancelled meanwhile).
        exitcode = proc.process.exitcode
        doomed = proc.doomed
        self._drop(slot, proc, self.grace if doomed else 1.0)
        waiting.extendleft(reversed(sent))
        sent.clear()
        if doomed or e.token.cancelled:
            reason = e.token.reason
            hooks.finish(e.task, e.t0, False,
                         CancelledError() if reason is None else CancelledError(reason))
            return
        if exitcode is None:
            exitcode = proc.process.exitcode
        hint = ""
        if proc.calls == 0 and exitcode == 1:
            # Died starting: most often a main module without the guard (spawn and
            # forkserver import it in the child), the traceback is on its stderr.
            hint = (" while starting (see its traceback on stderr; the main module "
                    "needs an `if __name__ == '__main__':` guard)")
        fn = e.task.fn
        hooks.finish(e.task, e.t0, False, WorkerCrashed(
            f"the worker process (pid {proc.process.pid}) running {fn!r} died{hint}: "
            f"{_describe(exitcode)}"))

    def _wait(self, proc: _Proc) -> tuple[int, Any] | None:
        # A blocking read, no select() per call: a cancelled token terminates the
        # process (_Proc.interrupt), whose death ends the read with EOF (after the
        # answers it sent before).
        answers = proc.answers
        if _BULK:
            while not answers:
                if not proc.read_answers():
                    return None
        elif not answers:
            try:
                answers.append(proc.conn.recv_bytes())
            except (EOFError, OSError):
                return None
        return pickle.loads(answers.popleft())  # type: ignore[no-any-return]

    # -- ending ---------------------------------------------------------------------

    def close(self, abandon: bool, joined: bool) -> None:
        """The Pool's shutdown hook. abandon: a timed-out shutdown (the calls still
        running were cancelled): kill every process now. joined: every dispatcher has
        exited: stop the (idle) processes. Otherwise (wait=False) the processes end
        with their dispatcher threads."""
        if not (abandon or joined):
            return
        with self._lock:
            if abandon:
                self._closed = True
            procs = list(self._procs)
        for proc in procs:
            if abandon:
                proc._signal(_SIGKILL)
            else:
                proc.close()
        for proc in procs:
            if abandon:
                # The dispatcher still owns the pipes: only wait for the process.
                proc.process.join(5.0)
            else:
                proc.reap(self.grace + 1.0)
            with self._lock:
                self._procs.pop(proc, None)

    def _at_exit(self) -> None:
        # Interpreter exit, after threading joined the pool's dispatchers (those not
        # abandoned): stop what is left before multiprocessing's own exit handler
        # joins its children (it would wait for ever for one that has our pipes open).
        with self._lock:
            self._closed = True
            procs = list(self._procs)
            self._procs.clear()
        for proc in procs:
            proc.close()
        for proc in procs:
            proc.reap(1.0)


def _release(cell: list[_Proc | None]) -> None:
    # A dispatcher thread ended: its process exits (EOF on its pipes). Nothing blocks
    # here (thread teardown): the next start, close() or interpreter exit reaps it.
    proc = cell[0]
    cell[0] = None
    if proc is not None:
        proc.close()


_live: weakref.WeakSet[ProcessBackend] = weakref.WeakSet()


def _exit_all() -> None:
    for backend in list(_live):
        backend._at_exit()


# Registered after multiprocessing's own handler (imported above), so it runs before it.
atexit.register(_exit_all)


def process_backend(backend: Any, initializer: Callable[..., object] | None,
                    initargs: tuple[Any, ...], copy_context: bool, name: str) -> ProcessBackend:
    """The Pool's constructor: "processes" or a ProcessBackend, bound to the pool."""
    if isinstance(backend, str):
        if backend != "processes":
            raise ValueError(f"`backend` must be None, 'processes', a ProcessBackend or a "
                             f"dask.distributed.Client, got {backend!r}")
        backend = ProcessBackend()
    backend.bind(initializer, initargs, copy_context, name)
    return backend  # type: ignore[no-any-return]
