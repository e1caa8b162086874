"""The `fastpool run` engine: records from a file or pipe through a function on a Pool.

`cli.py` parses the command line and owns the exit; this module checks the command's
function and paths, then reads, runs, orders and writes the records. SIGINT and SIGTERM
are handled by the run's Pool (`handle_signals`). Every input line ends in exactly one
place: OUT (its result), the dead-letter file (it failed for good), the unprocessed file
(the run stopped first), or nowhere if it is blank in `jsonl`.

Its parts, a module each: `_run_input` (LineReader: the input in batches of whole
lines), `_run_records` (Batch, and each record's outcome and its encoding), `_run_output`
(Sink: an output file), `_run_journal` (the checkpoints `--resume` reads) and
`_run_progress` (the progress line). The Runner below puts them together.

How the work flows:

- The reader cuts the input into batches of lines. A batch is one Pool task: its worker
  parses each line, calls FUNC and encodes the result. The batch size adapts so a batch
  takes ~2 ms (one record when FUNC is slow, up to 512 when it is fast): the per-task cost
  is paid per batch, not per record.
- A record that fails and may be retried leaves its batch: it becomes a task of its own
  whose retries wait in the Pool's timer (holding no worker), and the batch completes.
  Only the *writer* waits for it; reading and running go on. `--in-flight` bounds the
  batches running or queued; the window of finished-but-unwritten batches behind a
  waiting retry is bounded by memory (`_WINDOW_RECORDS`, `_WINDOW_BYTES`), not by it.
- The writer (the main thread) writes batches in input order, one write() per file and
  batch, so a failed write knows exactly which records did not land. Every second it
  checkpoints to the journal (see `Journal`), which `--resume` reads.
- With --processes (`_run_remote`) a batch runs in a worker process (~20 ms there, as
  its round trip costs more): its raw lines go out, its encoded results come back, and
  the parent settles them (schedules retries) in the dispatcher thread before the
  batch's future is done. A worker that dies costs its batch: each of its records is
  retried as a task of its own, or dead-lettered (`_crashed`).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import os
import signal
import stat
import sys
import threading
import time
from collections import deque
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Any, Callable

import fastpool

from ._run_input import Line, LineReader, LongLine, Stop
from ._run_journal import Journal, input_identity
from ._run_output import Sink
from ._run_progress import Progress
from ._run_records import (SKIP, Backoff, Batch, Failed, RemoteFailure, RetryCall, RetryLater,
                           Retrying, Unserializable, encode_dead, encode_json, encode_line,
                           error_text, pending, run_lines, safe_str)

__all__ = ["EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_INTERNAL", "UsageError",
           "Runner", "RecordCollector", "load_function", "check_signature", "retry_on_names"]

EXIT_OK = 0          # every record succeeded
EXIT_FAILED = 1      # some records failed; every one of them is in the dead-letter file
EXIT_USAGE = 2       # bad arguments (one line on stderr)
EXIT_INTERNAL = 3    # the runner itself failed; every unfinished record is in UNPROCESSED
# interrupted: 128 + the signal (130 SIGINT, 143 SIGTERM)

_BATCH_SECONDS = 0.002         # target run time of one batch (adaptive batch size)
_MAX_BATCH = 512               # records per batch at most
# --processes: a batch crosses to a worker process and back (two pickles, two pipe
# writes, thread hand-offs: ~0.1-0.2 ms of the parent's CPU here), so batches are made
# longer there, for the parent's share to stay small.
_PROCESS_BATCH_SECONDS = 0.02
_PROCESS_MAX_BATCH = 4096
_WINDOW_RECORDS = 1 << 16      # records read but not yet written, at most ...
_WINDOW_BYTES = 128 << 20      # ... and their input bytes (past one in-flight window)
_CHECKPOINT_SECONDS = 1.0      # journal cadence


class UsageError(Exception):
    """A user mistake found after parsing (bad MODULE:FUNC, unusable path): exit 2."""


# -- the function ----------------------------------------------------------------------


def load_function(target: str) -> Callable[[Any], Any]:
    """Resolve MODULE:FUNC (dotted FUNC allowed; MODULE may be a path to a .py file)."""
    module_name, sep, func_name = target.rpartition(":")
    if not sep or not module_name or not func_name:
        raise UsageError(f"expected MODULE:FUNC, got {target!r}")
    if module_name.endswith(".py") or os.sep in module_name:
        if not os.path.isfile(module_name):
            raise UsageError(f"no such file: {module_name!r}")
        spec = importlib.util.spec_from_file_location(
            os.path.splitext(os.path.basename(module_name))[0], module_name)
        if spec is None or spec.loader is None:
            raise UsageError(f"cannot load {module_name!r} as a Python module")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise UsageError(f"error importing {module_name!r}: "
                             f"{type(exc).__name__}: {safe_str(exc)}") from None
    else:
        # As `python -m`: modules in the current directory are importable.
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                raise UsageError(f"no module named {module_name!r}") from None
            raise UsageError(f"error importing {module_name!r}: {exc}") from None
        except Exception as exc:
            raise UsageError(f"error importing {module_name!r}: "
                             f"{type(exc).__name__}: {safe_str(exc)}") from None
    obj: Any = module
    for part in func_name.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {func_name!r}") from None
    if not callable(obj):
        raise UsageError(f"{target!r} is not callable (got {type(obj).__name__})")
    return obj  # type: ignore[no-any-return]


def check_signature(func: Callable[..., Any], target: str) -> None:
    """UsageError unless `func` accepts one positional argument (when that can be told)."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):  # builtins without a signature: find out per record
        return
    try:
        sig.bind(None)
    except TypeError as exc:
        raise UsageError(f"{target} must accept one positional argument (the record), "
                         f"its signature is {target.rpartition(':')[2]}{sig}: {exc}") from None


def retry_on_names(text: str) -> Callable[[BaseException], bool]:
    """`--retry-on A,B`: an exception matches when a class of its MRO is named A or B,
    by name (`ConnectionError`) or dotted path (`requests.exceptions.Timeout`)."""
    names = frozenset(n.strip() for n in text.split(","))
    if not names or "" in names:
        raise ValueError(f"expected NAME[,NAME...], got {text!r}")
    return _RetryOnNames(names)


class _RetryOnNames:
    """retry_on_names's test: a class, so that it pickles (--processes: the worker
    processes test FUNC's exceptions)."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def __call__(self, exc: BaseException) -> bool:
        names = self.names
        return any(cls.__name__ in names or f"{cls.__module__}.{cls.__qualname__}" in names
                   for cls in type(exc).__mro__)


# -- the output paths --------------------------------------------------------------------


def _check_output_path(what: str, path: str, taken: dict[tuple[int, int], str]) -> None:
    """UsageError unless `path` can be written and names no input nor other output."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if not os.path.isdir(directory):
            raise UsageError(f"cannot write {what}: no such directory: {directory!r}") from None
        if not os.access(directory, os.W_OK):
            raise UsageError(f"cannot write {what}: permission denied: {path!r}") from None
        return
    except OSError as exc:
        raise UsageError(f"cannot write {what}: {exc.strerror}: {path!r}") from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"cannot write {what}: is a directory: {path!r}")
    other = taken.get((st.st_dev, st.st_ino))
    if other is not None:
        raise UsageError(f"{what} {path!r} is the same file as {other}")
    if not os.access(path, os.W_OK):
        raise UsageError(f"cannot write {what}: permission denied: {path!r}")
    if stat.S_ISREG(st.st_mode):
        taken[(st.st_dev, st.st_ino)] = f"{what} {path!r}"


# -- the runner ------------------------------------------------------------------------


class Runner:
    """One `fastpool run`: `prepare()` checks and opens everything (UsageError), `run()`
    processes the input and returns the exit code. `interrupt(signum)` (from a signal
    handler) stops it gracefully; a second call stops waiting for running records.

    The arguments are `fastpool run`'s (an argparse.Namespace or alike).
    """

    def __init__(self, args: argparse.Namespace, func: Callable[[Any], Any]) -> None:
        self.args = args
        self.func = func
        self.jsonl = args.format == "jsonl"
        self.stop = threading.Event()    # first interruption: start nothing new
        self.abort = threading.Event()   # second: stop waiting for running records
        self.signum = 0
        self.ok = self.failed = self.blank = self.unprocessed_count = 0
        self.internal_error: str | None = None
        self.abandoned = False           # records still running when run() returned
        self._stopping = False           # read by the batches: start no new record
        self.pool: fastpool.Pool | None = None
        # --processes: FUNC runs in worker processes (fastpool._run_remote).
        self.processes = bool(getattr(args, "processes", False))
        self._files: list[Any] = []
        self.started = time.monotonic()

    # -- setup ---------------------------------------------------------------------

    def prepare(self) -> None:
        """Open the input, check every output path, open OUT and the journal."""
        try:
            self._prepare()
        except BaseException:
            self.close()
            raise

    def _prepare(self) -> None:
        args = self.args
        self.journal: Journal | None = None
        if args.input == "-":
            self.in_f = sys.stdin.buffer
        else:
            try:
                self.in_f = open(args.input, "rb")
            except OSError as exc:
                raise UsageError(f"cannot open INPUT: {exc.strerror}: {args.input!r}") from None
            self._files.append(self.in_f)
        st = os.fstat(self.in_f.fileno())
        regular_in = stat.S_ISREG(st.st_mode)
        taken = {(st.st_dev, st.st_ino): "INPUT"}
        to_stdout = args.output == "-"
        base = "fastpool" if to_stdout else args.output
        self.dead_path = args.dead_letter or base + ".dead-letter.jsonl"
        self.unprocessed_path = args.unprocessed or base + ".unprocessed"
        if not to_stdout:
            _check_output_path("OUT", args.output, taken)
        _check_output_path("--dead-letter", self.dead_path, taken)
        _check_output_path("--unprocessed", self.unprocessed_path, taken)
        resumable = regular_in and not to_stdout
        journal_path = None if to_stdout else args.output + ".journal"
        if resumable:
            assert journal_path is not None
            _check_output_path("the journal", journal_path, taken)
            out_st = os.stat(args.output) if os.path.exists(args.output) else None
            if out_st is not None and not stat.S_ISREG(out_st.st_mode):
                resumable = False
        if args.resume:
            if not regular_in:
                raise UsageError("--resume needs INPUT to be a regular file: input from a "
                                 "pipe cannot be resumed")
            if not resumable:
                raise UsageError("--resume needs OUT to be a regular file (-o FILE)")
        names = {n for p in (self.dead_path, self.unprocessed_path, journal_path) if p
                 for n in [os.path.abspath(p)]}
        if len(names) < 2 + (journal_path is not None) or (
                not to_stdout and os.path.abspath(args.output) in names):
            raise UsageError("OUT, --dead-letter, --unprocessed and the journal must be "
                             "different files")

        self.header = {"fastpool-run-journal": 1, "input": input_identity(self.in_f.fileno()),
                       "target": args.target, "format": args.format,
                       "dead_letter": os.path.abspath(self.dead_path),
                       "max_line_bytes": args.max_line_bytes}
        offset = line = out_size = dead_size = 0
        keep: int | None = None
        self.done_before: dict[str, Any] | None = None
        if args.resume:
            assert journal_path is not None
            offset, line, out_size, dead_size, keep = self._read_journal(journal_path)
        self.reader = LineReader(self.in_f, args.max_line_bytes, offset, line)
        self.total_bytes = st.st_size if regular_in else None
        try:
            if resumable:
                assert journal_path is not None
                self.journal = Journal(journal_path)
                # The journal first: a fresh run's header is on disk before OUT is cut.
                self.journal.start(self.header, keep)
                self._files.append(self.journal)
            self.out = Sink(args.output, lazy=False, stdout=to_stdout,
                            append_at=out_size if args.resume else None)
            self._files.append(self.out)
            # A previous run's files would be taken for this run's: a run without
            # failures (so far, when resuming) has no dead-letter file, and the
            # unprocessed records of an interrupted run are the ones being resumed.
            for path, kept in ((self.dead_path, dead_size), (self.unprocessed_path, 0)):
                if not kept and os.path.isfile(path):
                    os.unlink(path)
            self.dead = Sink(self.dead_path, lazy=True,
                             append_at=dead_size if dead_size else None)
            self._files.append(self.dead)
            self.unprocessed = Sink(self.unprocessed_path, lazy=True)
            self._files.append(self.unprocessed)
        except OSError as exc:
            raise UsageError(f"cannot open {exc.filename!r}: {exc.strerror}") from None
        except ValueError as exc:  # a file to resume is not as its checkpoint left it
            raise UsageError(str(exc)) from None

    def _read_journal(self, path: str) -> tuple[int, int, int, int, int | None]:
        try:
            header, last, good = Journal.read(path)
        except FileNotFoundError:
            # Interrupted before it wrote its journal: nothing was committed yet.
            print(f"fastpool run: no journal {path!r}: starting from the beginning",
                  file=sys.stderr)
            return 0, 0, 0, 0, None
        except OSError as exc:
            raise UsageError(f"cannot resume: {exc.strerror}: {path!r}") from None
        if header is None:  # killed before the header was on disk: nothing was written
            return 0, 0, 0, 0, None
        if header != self.header:
            changed = sorted(k for k in set(header) | set(self.header)
                             if header.get(k) != self.header.get(k))
            raise UsageError(f"cannot resume: {', '.join(changed)} changed since the "
                             f"interrupted run (journal {path!r})")
        if last is None:
            return 0, 0, 0, 0, good
        self.ok, self.failed, self.blank = last["ok"], last["failed"], last["blank"]
        if last.get("done"):
            self.done_before = last
        return last["offset"], last["line"], last["out"], last["dead"], good

    def close(self) -> None:
        for f in reversed(self._files):
            try:
                f.close()
            except OSError:
                pass
        self._files.clear()

    def interrupt(self, signum: int = signal.SIGINT) -> None:
        """Stop gracefully (first call) or stop waiting (second). Signal-handler safe:
        only sets flags; the main thread acts on them between short waits."""
        if self.stop.is_set():
            self.abort.set()
        else:
            self.signum = signum
            self._stopping = True
            self.stop.set()

    def _check_signal(self) -> None:
        """A signal the pool received (handle_signals) interrupts the run. The pool's
        shutdown starts at once, so the run may have stopped already, on its effect (a
        refused submit): then the signal only names the interruption."""
        signum = None if self.pool is None else self.pool.signal_received
        if signum is None or self.signum:
            return
        if self.stop.is_set():
            if self.internal_error is None:
                self.signum = signum
        else:
            self.interrupt(signum)

    # -- running ---------------------------------------------------------------------

    def run(self) -> int:
        """Process the input; the exit code. Call prepare() first; closes the files."""
        args = self.args
        if self.done_before is not None:
            self.close()
            self._summary(already=True)
            return EXIT_FAILED if self.failed else EXIT_OK
        policy = None
        if args.retries:
            matches = args.retry_on if args.retry_on is not None else (
                lambda exc: isinstance(exc, Exception))

            def retry_on(exc: BaseException) -> bool:
                return isinstance(exc, Backoff) or (
                    not isinstance(exc, Unserializable) and matches(exc))
            policy = fastpool.Retry(attempts=args.retries + 1, backoff=args.backoff,
                                    retry_on=retry_on)
        # No default retry: a batch never fails (it catches per record); only a failed
        # record's own task carries the policy.
        self.pool = pool = fastpool.Pool(args.workers, rate_limit=args.rate,
                                         name="fastpool-run",
                                         backend="processes" if self.processes else None)
        if self.processes:
            from ._run_remote import FuncRef, any_exception

            self._ref = FuncRef.of(args.target)
            # What the worker processes test FUNC's exceptions with (None: no retries).
            self._remote_retry_on = None if policy is None else (
                args.retry_on if args.retry_on is not None else any_exception)
        if threading.current_thread() is threading.main_thread():
            # SIGINT and SIGTERM are the pool's: the first starts its shutdown, which
            # gives running records --grace seconds; a second cuts that short. The
            # runner sees them through signal_received (polled between short waits)
            # and decides the exit itself. The pool's shutdown in _finish() restores
            # the previous handlers.
            pool.handle_signals(timeout=args.grace, exit=False)
        if args.metrics is not None:
            args.metrics.add(pool)
        self._policy = policy
        self._encode = encode_json if self.jsonl else encode_line
        self.in_flight = args.in_flight or 4 * pool.workers
        self._per_record = 0.0
        self._submitted = 0
        self._finished = 0  # batches settled (callbacks in workers: under _count_lock)
        self._count_lock = threading.Lock()
        self._wake = threading.Event()
        self.window: deque[Batch] = deque()
        self._window_records = self._window_bytes = 0
        self._last_checkpoint = time.monotonic()
        self.started = time.monotonic()
        show = args.progress if args.progress is not None else sys.stderr.isatty()
        self.progress = Progress(self.total_bytes, self.reader.offset) if show else None
        try:
            self._loop()
        except BaseException as exc:  # a bug of ours, or a file we cannot write
            if isinstance(exc, KeyboardInterrupt):
                self.interrupt(signal.SIGINT)
            else:
                self.internal_error = f"{type(exc).__name__}: {safe_str(exc)}"
            self._stopping = True
            self.stop.set()
        finally:
            self._finish()
        return self._exit_code()

    def _loop(self) -> None:
        if self.processes and not self._load_remote():
            return
        reader, window = self.reader, self.window
        wake = self._wake
        while True:
            self._check_signal()
            if self.stop.is_set():
                break
            # Cleared before looking: a callback setting it from now on ends the wait.
            wake.clear()
            self._write_done()
            if (self._submitted - self._finished >= self.in_flight
                    or (self._window_records >= _WINDOW_RECORDS
                        or self._window_bytes >= _WINDOW_BYTES) and window):
                wake.wait(0.1)
                continue
            start = reader.offset
            try:
                got = reader.read_batch(self._batch_size(), self.stop, self._idle)
            except Stop:
                break
            if got is None:
                break
            batch = Batch(reader.lines - len(got) + 1, start, got, reader.offset)
            if self.args.max_line_bytes is not None:
                self._too_long(batch)
            window.append(batch)
            self._window_records += len(got)
            self._window_bytes += batch.nbytes
            if self.stop.is_set():
                break  # read but not started: saved with the window
            self._submit(batch)
        # End of input, or interrupted: write what finishes, in order.
        deadline = None
        while window and not self.abort.is_set():
            wake.clear()
            self._check_signal()
            if deadline is None and self.stop.is_set():
                self._stop_pool()
                # A little over the pool's own grace, so its hand-back lands first.
                deadline = time.monotonic() + self.args.grace + 0.5
            if self._write_done():
                continue
            if deadline is not None and (time.monotonic() >= deadline
                                         or not any(map(pending, window))):
                break  # past the grace period, or nothing left that may still finish
            wake.wait(0.1)

    def _load_remote(self) -> bool:
        """--processes: FUNC loads in a worker process; else the run stops (exit 3:
        every record in UNPROCESSED) rather than fail or crash on each one alike."""
        from ._run_remote import LoadFunc

        assert self.pool is not None
        try:
            fut = self.pool.submit(LoadFunc(self._ref))
        except RuntimeError:  # shut down by a signal already
            return False
        while True:
            self._check_signal()
            if self.stop.is_set():
                return False
            try:
                fut.result(timeout=0.1)
                return True
            except FuturesTimeout:
                continue
            except CancelledError:
                return False
            except BaseException as exc:
                self._internal(f"cannot run {self.args.target} in a worker process: "
                               + error_text(exc))
                return False

    def _too_long(self, batch: Batch) -> None:
        # Dead-lettered as they are read: their text is not kept to be run or saved.
        for i, line in enumerate(batch.lines):
            if type(line) is LongLine:
                batch.results[i] = Failed(
                    f"line of {line.size} bytes exceeds --max-line-bytes "
                    f"{self.args.max_line_bytes}", line.decode("utf-8", "replace"), 0)

    def _batch_size(self) -> int:
        per = self._per_record
        if per <= 0 or self.args.rate:  # unknown yet; or the rate limit counts records
            return 1
        if self.processes:
            return max(1, min(_PROCESS_MAX_BATCH, int(_PROCESS_BATCH_SECONDS / per)))
        return max(1, min(_MAX_BATCH, int(_BATCH_SECONDS / per)))

    def _submit(self, batch: Batch) -> None:
        assert self.pool is not None
        try:
            if self.processes:
                fut = self._submit_remote(batch)
            else:
                fut = self.pool.submit(self._run_batch, batch)
        except RuntimeError:  # the pool is shut down: a signal raced us
            self._check_signal()
            self._stopping = True
            self.stop.set()
            return
        self._submitted += 1
        batch.future = fut
        fut.add_done_callback(self._on_batch_done)

    def _submit_remote(self, batch: Batch) -> Future[Any]:
        """`batch` as a task of the worker processes. Its future (batch.future) is the
        runner's own, settled once the batch's outcomes are in place: the writer then
        finds it as after a thread's _run_batch."""
        from ._run_remote import RemoteBatch

        assert self.pool is not None
        lines: list[Any] = batch.lines
        if self.args.max_line_bytes is not None:  # settled when read: not sent
            lines = [None if r is not None else line
                     for line, r in zip(lines, batch.results)]
        task = self.pool.submit(RemoteBatch(self._ref, self.jsonl, self._remote_retry_on,
                                            lines, batch.first_line))
        outer: Future[Any] = Future()
        task.add_done_callback(lambda task: self._remote_done(batch, outer, task))
        return outer

    def _remote_done(self, batch: Batch, outer: Future[Any], task: Future[Any]) -> None:
        """A batch's task in a worker process ended (in the pool's dispatcher thread)."""
        from ._procbackend import WorkerCrashed

        try:
            if task.cancelled():  # handed back by an interrupted run's shutdown
                outer.cancel()
                return
            exc = task.exception()
            if exc is None:
                remote, batch.seconds, clean = task.result()
                if clean:  # the common case: every record's result line, nothing to do
                    batch.results = remote
                    batch.clean = True
                else:
                    results, first = batch.results, batch.first_line
                    for i, r in enumerate(remote):
                        if results[i] is None:  # (else settled when read)
                            results[i] = (self._retry_remote(r.record, first + i)
                                          if type(r) is RetryLater else r)
            elif isinstance(exc, WorkerCrashed):
                self._crashed(batch, exc)
            elif isinstance(exc, CancelledError):  # its process was stopped
                outer.cancel()
                return
            else:  # a bug of ours, or FUNC cannot be loaded in a worker
                outer.set_exception(exc)
                return
        except BaseException as exc:
            outer.set_exception(exc)
            return
        outer.set_result(None)

    def _crashed(self, batch: Batch, exc: BaseException) -> None:
        """The worker process running `batch` died. Which record killed it cannot be
        told: each one not settled is retried as a task of its own (per the policy:
        WorkerCrashed is an Exception), or dead-lettered with the reason. After an
        interruption they are unfinished: UNPROCESSED."""
        policy = self._policy
        retry = policy is not None and policy.should_retry(exc)
        text = error_text(exc)

        def crash(record: Any) -> Any:
            raise exc

        def failed(record: Any, _exc: BaseException, line_no: int) -> Any:
            assert self.pool is not None
            if self.pool.signal_received is not None:
                # The signal may have hit the process group: its death is no failure.
                return None
            return self._retry_remote(record, line_no) if retry else Failed(text, record, 1)

        # The same parsing as in the worker: bad and blank lines end as they would have.
        run_lines(batch.lines, batch.results, crash, self._encode, self.jsonl,
                  self.args.max_line_bytes is not None, failed, batch.first_line, self)

    def _retry_remote(self, record: Any, line_no: int) -> Retrying | None:
        """A record that failed in a worker process: its retries, as a task of its own."""
        from ._run_remote import RemoteRetry

        policy = self._policy
        assert self.pool is not None and policy is not None and self._remote_retry_on
        call = RemoteRetry(self._ref, record, self.jsonl, self._remote_retry_on, line_no,
                           policy)
        # The call learns of its failed attempts through the Retry's test (see RemoteRetry).
        retry = fastpool.Retry(attempts=policy.attempts, backoff=policy.backoff,
                               multiplier=policy.multiplier, max_backoff=policy.max_backoff,
                               jitter=policy.jitter, retry_on=call.should_retry)
        try:
            fut = self.pool.schedule(call, retry=retry, key=line_no)
        except RuntimeError:  # shut down by an interruption: the record is unfinished
            return None
        fut.add_done_callback(self._on_retry_done)
        return Retrying(fut, call)

    def _on_batch_done(self, fut: Future[Any]) -> None:
        with self._count_lock:
            self._finished += 1
        self._wake.set()

    def _on_retry_done(self, fut: Future[Any]) -> None:
        self._wake.set()

    def _idle(self) -> None:
        # The reader waits for a pipe: write what finished meanwhile.
        self._check_signal()
        self._write_done()

    # -- in a worker -----------------------------------------------------------------

    def _run_batch(self, batch: Batch) -> None:
        """Parse, call and encode each line of `batch` (in a worker thread)."""
        ok, batch.seconds = run_lines(batch.lines, batch.results, self.func, self._encode,
                                      self.jsonl, self.args.max_line_bytes is not None,
                                      self._failed, batch.first_line, self)
        batch.clean = ok == len(batch.results)

    def _failed(self, record: Any, exc: BaseException, line_no: int) -> Any:
        if self._policy is None or not self._policy.should_retry(exc):
            return Failed(error_text(exc), record, 1)
        assert self.pool is not None
        call = RetryCall(self.func, record, self._encode)
        try:
            fut = self.pool.schedule(call, retry=self._policy, key=line_no)
        except RuntimeError:  # shut down by an interruption: the record is unfinished
            return None
        fut.add_done_callback(self._on_retry_done)
        return Retrying(fut, call)

    # -- writing (main thread) -------------------------------------------------------

    def _write_done(self) -> bool:
        """Write the finished batches at the head of the window; True if any progress."""
        window = self.window
        progressed = False
        while window:
            batch = window[0]
            fut = batch.future
            if fut is None or not fut.done():
                break
            if fut.cancelled() or fut.exception() is not None:
                if not fut.cancelled():  # _run_batch raised: a bug of ours
                    self._internal(error_text(fut.exception()))  # type: ignore[arg-type]
                break
            if batch.seconds and len(batch.lines):
                per = batch.seconds / len(batch.lines)
                self._per_record = per if not self._per_record else (
                    0.7 * self._per_record + 0.3 * per)
            before = batch.pos
            complete = self._write_batch(batch)
            progressed |= batch.pos > before
            if not complete:
                break
            window.popleft()
            self._window_records -= len(batch.lines)
            self._window_bytes -= batch.nbytes
            if time.monotonic() - self._last_checkpoint >= _CHECKPOINT_SECONDS:
                self._checkpoint()
        self._show()
        return progressed

    def _settle(self, r: Retrying) -> Any:
        """A finished retry as an outcome."""
        fut = r.future
        if fut.cancelled():  # handed back by the shutdown of an interrupted run
            return None
        exc = fut.exception()
        if exc is None:
            return fut.result()
        # The pool keeps failures after retries as dead letters too; ours are written to
        # the dead-letter file, so the pool's copies are dropped as they come.
        assert self.pool is not None
        self.pool.dead_letters.drain()
        text = (safe_str(exc) if isinstance(exc, (Unserializable, RemoteFailure))
                else error_text(exc))
        return Failed(text, r.call.record, r.call.final_attempts(exc))

    def _write_batch(self, batch: Batch) -> bool:
        """Write batch.results[pos:] up to the first unsettled one; True if all written."""
        results, lines = batch.results, batch.lines
        if batch.clean and not batch.pos:  # the common case: one write, no record loop
            try:
                self.out.write(b"".join(results), len(results))
                self.ok += len(results)
            except Exception as exc:
                self._save_lines(lines)
                self._internal(f"cannot write {self.out.path!r}: " + error_text(exc))
            batch.pos = len(results)
            return True
        out: list[bytes] = []
        dead: list[bytes] = []
        ok = failed = blank = 0
        i = start = batch.pos
        n = len(lines)
        complete = True
        while i < n:
            r = results[i]
            if type(r) is bytes:
                out.append(r)
                ok += 1
            elif r is SKIP:
                blank += 1
            elif type(r) is Failed:
                try:
                    dead.append(encode_dead(batch.first_line + i, r))
                    failed += 1
                except Exception as exc:  # cannot happen, but never lose the record
                    self._save_lines([lines[i]])
                    self._internal("cannot encode a dead letter: " + error_text(exc))
            elif type(r) is Retrying:
                if not r.future.done():
                    complete = False
                    break
                results[i] = self._settle(r)
                continue
            else:  # None: not run (interrupted)
                complete = False
                break
            i += 1
        if i == start:
            return complete
        try:
            self.out.write(b"".join(out), ok)
        except Exception as exc:
            self._save_lines([lines[j] for j in range(start, i)
                              if type(results[j]) is bytes])
            self._internal(f"cannot write {self.out.path!r}: " + error_text(exc))
            ok = 0
        try:
            self.dead.write(b"".join(dead), len(dead))
        except Exception as exc:
            self._save_lines([lines[j] for j in range(start, i)
                              if type(results[j]) is Failed])
            self._internal(f"cannot write {self.dead.path!r}: " + error_text(exc))
            failed = 0
        self.ok += ok
        self.failed += failed
        self.blank += blank
        batch.pos = i
        return complete

    def _internal(self, error: str) -> None:
        """The runner cannot go on: stop as if interrupted, remembering why. No more
        checkpoints: the last one stays valid (the files only grew past it)."""
        if self.internal_error is None:
            self.internal_error = error
        self._stopping = True
        self.stop.set()

    def _save_lines(self, lines: list[Line]) -> None:
        """Raw input lines to UNPROCESSED, so the file can be fed back as INPUT."""
        data = b"".join(line + b"\n" for line in lines)
        self.unprocessed.write(data, len(lines))
        self.unprocessed_count += len(lines)

    def _checkpoint(self, done: bool = False) -> None:
        self._last_checkpoint = time.monotonic()
        if self.journal is None or self.internal_error is not None:
            return
        head = self.window[0] if self.window else None
        if head is not None and head.pos:
            offset, line = head.end_of(head.pos), head.first_line + head.pos - 1
        elif head is not None:
            offset, line = head.start, head.first_line - 1
        else:
            offset, line = self.reader.offset, self.reader.lines
        self.out.sync()
        self.dead.sync()
        entry = {"offset": offset, "line": line, "out": self.out.size,
                 "dead": self.dead.size, "ok": self.ok, "failed": self.failed,
                 "blank": self.blank}
        if done:
            entry["done"] = True
        self.journal.append(entry)

    def _stop_pool(self) -> None:
        pool = self.pool
        assert pool is not None

        # Queued batches are handed back at once; running ones (and waiting retries) get
        # --grace seconds. In a thread, so the main thread keeps writing results. After
        # a signal the pool's own shutdown is under way: this one waits for it, and
        # ends early with it on a second signal. Timed out: what still runs is
        # abandoned, so the writer stops waiting for it.
        def stop() -> None:
            if pool.shutdown(wait=True, cancel_futures=True,
                             timeout=self.args.grace).timed_out:
                self.abort.set()
            self._wake.set()
        threading.Thread(target=stop, name="fastpool-run-shutdown", daemon=True).start()

    def _finish(self) -> None:
        """After the loop: checkpoint, save what did not finish, close everything."""
        try:
            self._check_signal()  # one that came while the run was ending
            interrupted = self.stop.is_set()
            # Everything before the first unfinished record is written: the last
            # checkpoint (the final one if nothing is left).
            self._checkpoint(done=not interrupted and not self.window)
            leftovers: list[Line] = []
            for batch in self.window:
                self._write_late(batch, leftovers)
            self.window.clear()
            if leftovers:
                self._save_lines(leftovers)
            if interrupted:
                self._save_rest()
        except BaseException as exc:
            if self.internal_error is None:
                self.internal_error = error_text(exc)
        finally:
            still = False
            if self.pool is not None:
                # Records still running past the grace period are abandoned (timeout
                # 0): interpreter exit does not wait for them. From the main thread,
                # this also gives back the signal handlers.
                still = self.pool.stats().running > 0
                self.pool.shutdown(wait=True, cancel_futures=True,
                                   timeout=0.0 if still else None)
            self.abandoned = still
            if self.progress is not None:
                self.progress.update(self.reader.offset, self.ok, self.failed, 0, final=True)
                self.progress.close()
            self.close()
        self._summary()

    def _write_late(self, batch: Batch, leftovers: list[Line]) -> None:
        """An interrupted run's records past the first unfinished one: what finished is
        written (past the checkpoint: a resume redoes it), the rest saved, in order."""
        results = batch.results
        for i in range(batch.pos, len(batch.lines)):
            r = results[i]
            if type(r) is Retrying:
                r = self._settle(r) if r.future.done() else None
            if r is None:
                leftovers.append(batch.lines[i])
                continue
            if leftovers:
                self._save_lines(leftovers)
                leftovers.clear()
            if type(r) is bytes:
                self.out.write(r, 1)
                self.ok += 1
            elif type(r) is Failed:
                self.dead.write(encode_dead(batch.first_line + i, r), 1)
                self.failed += 1
            else:
                self.blank += 1

    def _save_rest(self) -> None:
        """The input not read yet, to UNPROCESSED (from a pipe: up to a whole line)."""
        deadline = time.monotonic() + min(self.args.grace, 2.0)
        reader = self.reader
        last = b""
        for piece in reader.rest(deadline, self.abort):
            if piece:
                lines = piece.count(b"\n")
                self.unprocessed.write(piece, lines)
                self.unprocessed_count += lines
                reader.lines += lines
                last = piece
        if last and not last.endswith(b"\n"):
            if not reader.torn:
                self.unprocessed.write(b"\n", 1)  # the input's last line had none
            self.unprocessed_count += 1
            reader.lines += 1

    def _show(self) -> None:
        if self.progress is not None:
            self.progress.update(self.reader.offset, self.ok, self.failed,
                                 self._window_records)

    def _exit_code(self) -> int:
        if self.internal_error is not None:
            return EXIT_INTERNAL
        if self.stop.is_set():
            return 128 + (self.signum or signal.SIGINT)
        return EXIT_FAILED if self.failed else EXIT_OK

    def _summary(self, already: bool = False) -> None:
        took = time.monotonic() - self.started
        parts = [f"{self.ok} succeeded"]
        if self.failed:
            parts.append(f"{self.failed} failed -> {self.dead_path}")
        if self.internal_error is not None:
            parts.append(f"internal error ({self.internal_error}): {self.unprocessed_count} "
                         f"unprocessed -> {self.unprocessed_path}")
        elif self.stop.is_set():
            sig = signal.Signals(self.signum).name if self.signum else "signal"
            parts.append(f"interrupted by {sig}: {self.unprocessed_count} unprocessed -> "
                         f"{self.unprocessed_path}")
            if not self.reader.regular:
                parts.append(f"{self.reader.lines} lines were read from the input")
                if self.reader.torn:
                    parts.append("the last of them is incomplete (no newline came)")
        if self.blank:
            parts.append(f"{self.blank} blank lines skipped")
        if already:
            print(f"fastpool run: already complete: {', '.join(parts)}", file=sys.stderr)
            return
        print(f"fastpool run: {', '.join(parts)} in {took:.2f} s", file=sys.stderr)


class RecordCollector:
    """fastpool_run_records_total{outcome}: the run's records, counted where they end
    (the pool's own metrics count its tasks, batches of records)."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    def collect(self) -> Any:
        from prometheus_client.metrics_core import CounterMetricFamily

        r = self._runner
        family = CounterMetricFamily("fastpool_run_records",
                                     "fastpool run: input records by where they ended",
                                     labels=["outcome"])
        for outcome, value in (("succeeded", r.ok), ("failed", r.failed),
                               ("unprocessed", r.unprocessed_count), ("blank", r.blank)):
            family.add_metric([outcome], value)
        yield family
