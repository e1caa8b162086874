"""`fastpool run --processes`: the records' work in worker processes.

What crosses to a worker process is small and picklable: a RemoteBatch (the batch's raw
lines, pickled once per batch, and a FuncRef naming FUNC) or a RemoteRetry (one record's
later attempts). FUNC itself never crosses: each worker imports it by its MODULE:FUNC,
once (a module-level callable object, a function of a path/to/file.py, ... all load as
in the parent), under spawn and forkserver alike.

FUNC's exceptions stay in the worker: they come back as text (as the thread run writes
them) and, where a retry policy applies, with the policy's verdict, so exceptions that
do not pickle, or whose class only the worker can import, are dead-lettered alike. Only
the Pool's own exceptions cross as such: WorkerCrashed (the process died) and
CancelledError (it was stopped), which the runner handles in the parent.
"""

from __future__ import annotations

import os
from typing import Any, Callable, NamedTuple

from ._run_input import Line
from ._run_records import (Backoff, Failed, RemoteFailure, RetryLater, Unserializable,
                           encode_json, encode_line, error_text, run_lines)

__all__ = ["FuncRef", "LoadFunc", "RemoteBatch", "RemoteRetry", "any_exception"]


class FuncRef(NamedTuple):
    """FUNC as a worker process finds it: MODULE:FUNC, with an absolute path for a
    path/to/file.py. (multiprocessing starts each worker in the parent's directory
    with its sys.path, which holds the directory load_function put there.)"""

    target: str

    @classmethod
    def of(cls, target: str) -> FuncRef:
        module, _, func = target.rpartition(":")
        if module.endswith(".py") or os.sep in module:  # as load_function tells them
            return cls(f"{os.path.abspath(module)}:{func}")
        return cls(target)


_loaded: dict[FuncRef, Callable[[Any], Any]] = {}


def resolve(ref: FuncRef) -> Callable[[Any], Any]:
    """FUNC in this worker process, imported on its first batch."""
    func = _loaded.get(ref)
    if func is not None:
        return func
    from .run import UsageError, load_function  # once per process: off the fast path

    try:
        func = load_function(ref.target)
    except UsageError as exc:
        raise RuntimeError(f"a worker process cannot load {ref.target}: {exc}") from None
    _loaded[ref] = func
    return func


class LoadFunc:
    """The run's first task: FUNC loads in a worker process, or the run stops before
    any record (rather than fail or crash each one the same way)."""

    __slots__ = ("ref",)

    def __init__(self, ref: FuncRef) -> None:
        self.ref = ref

    def __getstate__(self) -> FuncRef:
        return self.ref

    def __setstate__(self, ref: FuncRef) -> None:
        self.ref = ref

    def __repr__(self) -> str:
        return f"the import of {self.ref.target}"

    def __call__(self) -> None:
        resolve(self.ref)


def any_exception(exc: BaseException) -> bool:
    """The retry test without --retry-on (picklable, unlike a lambda)."""
    return isinstance(exc, Exception)


class _Never:
    _stopping = False  # a batch in a process runs whole: it is short (_BATCH_SECONDS)


_NEVER = _Never()


class RemoteBatch:
    """One batch as a task of a process pool: run in the worker, it returns
    (results, seconds, clean) for the parent to put in the Batch. `lines` holds None
    for the lines settled when read (over --max-line-bytes): False in results."""

    __slots__ = ("ref", "jsonl", "retry_on", "lines", "first_line")

    def __init__(self, ref: FuncRef, jsonl: bool,
                 retry_on: Callable[[BaseException], bool] | None,
                 lines: list[Line | None], first_line: int) -> None:
        self.ref = ref
        self.jsonl = jsonl
        self.retry_on = retry_on    # None: no retries
        self.lines = lines
        self.first_line = first_line

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.ref, self.jsonl, self.retry_on, self.lines, self.first_line)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.ref, self.jsonl, self.retry_on, self.lines, self.first_line = state

    def __repr__(self) -> str:
        # How WorkerCrashed names what the dead process ran: in the dead letters.
        last = self.first_line + len(self.lines) - 1
        if last == self.first_line:
            return f"line {last}"
        return f"lines {self.first_line}-{last}"

    def __call__(self) -> tuple[list[Any], float, bool]:
        func = resolve(self.ref)
        lines = self.lines
        settled = None in lines
        # A settled line's result is the parent's: a placeholder here, not None (not run).
        results: list[Any] = ([False if line is None else None for line in lines]
                              if settled else [None] * len(lines))
        retry_on = self.retry_on

        def failed(record: Any, exc: BaseException, line_no: int) -> Any:
            if retry_on is not None and retry_on(exc):
                return RetryLater(record)
            return Failed(error_text(exc), record, 1)

        ok, seconds = run_lines(lines, results, func, encode_json if self.jsonl else encode_line,
                                self.jsonl, settled, failed, self.first_line, _NEVER)
        return results, seconds, ok == len(results)


class RemoteRetry:
    """A failed record's later attempts in a worker process (RetryCall's twin).

    Each attempt pickles it anew, so its count cannot live in the worker: the parent's
    copy learns of every failed attempt from the Pool's Retry, whose `retry_on` is
    `should_retry` -- called for every failure but that of the last attempt."""

    __slots__ = ("ref", "record", "jsonl", "retry_on", "line", "waited", "attempts",
                 "seen", "policy")

    def __init__(self, ref: FuncRef, record: Any, jsonl: bool,
                 retry_on: Callable[[BaseException], bool], line: int,
                 policy: Any = None) -> None:
        self.ref = ref
        self.record = record
        self.jsonl = jsonl
        self.retry_on = retry_on    # the worker's test of FUNC's exceptions
        self.line = line
        self.waited = False
        self.attempts = 1           # the first ran in the batch
        self.seen: BaseException | None = None
        self.policy = policy        # the run's Retry (parent side only)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_remote_retry, (self.ref, self.record, self.jsonl, self.retry_on, self.line,
                                self.waited))

    def __repr__(self) -> str:
        return f"line {self.line}"

    def __call__(self) -> bytes:  # in the worker process
        if not self.waited:
            raise Backoff
        func = resolve(self.ref)
        try:
            value = func(self.record)
        except BaseException as exc:
            raise RemoteFailure(error_text(exc), bool(self.retry_on(exc))) from None
        try:
            return (encode_json if self.jsonl else encode_line)(value)
        except Exception as exc:
            raise Unserializable("cannot serialize the result: " + error_text(exc)) from None

    # -- in the parent ----------------------------------------------------------------

    def should_retry(self, exc: BaseException) -> bool:
        if isinstance(exc, Backoff):
            self.waited = True  # the next attempt is a real one
            return True
        self.attempts += 1
        self.seen = exc
        if isinstance(exc, RemoteFailure):
            return exc.retry
        # The Pool's own: WorkerCrashed (the process died), ...
        return bool(self.policy is not None and self.policy.should_retry(exc))

    def final_attempts(self, exc: BaseException) -> int:
        """Attempts made when the task failed with `exc` for good."""
        return self.attempts if exc is self.seen else self.attempts + 1


def _remote_retry(ref: FuncRef, record: Any, jsonl: bool,
                  retry_on: Callable[[BaseException], bool], line: int,
                  waited: bool) -> RemoteRetry:
    call = RemoteRetry(ref, record, jsonl, retry_on, line)
    call.waited = waited
    return call
