"""One record's way through `fastpool run`: its outcome and how it is written.

A Batch is consecutive input lines run as one Pool task; each line's outcome lands in
`Batch.results`: the encoded result line (bytes), SKIP (a blank line of jsonl), a Failed
(its dead letter, before encoding), a Retrying (its later attempts are a task of their
own) or None (not run: the run stopped first). The runner (fastpool.run) fills and
writes them.
"""

from __future__ import annotations

import itertools
import json
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

from ._run_input import Line, line_size

if TYPE_CHECKING:
    from ._run_remote import RemoteRetry

__all__ = ["SKIP", "Backoff", "Batch", "Failed", "RemoteFailure", "RetryCall", "RetryLater",
           "Retrying", "Unserializable", "encode_dead", "encode_json", "encode_line",
           "error_text", "pending", "run_lines", "safe_str"]


# -- error texts: user code (an exception's __str__, a record's __repr__) may raise ----


def safe_str(exc: BaseException) -> str:
    # An exception's __str__ is user code: it may raise. Never let that lose a record.
    try:
        return str(exc)
    except Exception as err:
        try:
            return f"<str() failed: {type(err).__name__}>"
        except Exception:
            return "<str() failed>"


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {safe_str(exc)}"


def safe_repr(obj: object) -> str:
    try:
        return repr(obj)
    except Exception as err:
        return f"<{type(obj).__name__}: repr() failed: {type(err).__name__}>"


# -- outcomes and their encoding -------------------------------------------------------


class Failed(NamedTuple):
    """A record's dead letter, before encoding."""

    error: str
    record: Any
    attempts: int


class _Skip:
    """SKIP's type: it stays the one SKIP when pickled (results of a worker process)."""

    __slots__ = ()

    def __reduce__(self) -> str:
        return "SKIP"

    def __repr__(self) -> str:
        return "SKIP"


SKIP = _Skip()  # a blank line in jsonl: no record
# The outcome of each line of a batch, in `Batch.results`: bytes (the encoded result
# line), SKIP, a Failed, a Retrying, or None (not run: the run stopped first). (From a
# worker process, RetryLater until the parent schedules the retries.)

_json_encode = json.JSONEncoder(ensure_ascii=False).encode
_json_encode_ascii = json.JSONEncoder().encode


def _fast_json_encoder() -> Callable[[Any, int], Any] | None:
    """json.dumps(value, ensure_ascii=False)'s C encoder, built once rather than per call
    as JSONEncoder.encode() does (that building is a third of the encoding time of a
    small record). Without its circular-reference check (check_circular=False): shared
    by the worker threads, it keeps no state. None where json has no C accelerator."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    e = json.JSONEncoder(ensure_ascii=False, check_circular=False)
    encoder: Callable[[Any, int], Any] = make(
        None, e.default, json.encoder.encode_basestring, None, e.key_separator,
        e.item_separator, False, False, True)
    return encoder


_json_encode_fast = _fast_json_encoder()


def encode_json(value: Any) -> bytes:
    try:
        if _json_encode_fast is None:
            raise ValueError
        text = "".join(_json_encode_fast(value, 0))
    except (ValueError, TypeError, RecursionError):
        # Not encodable (or a cycle): JSONEncoder's own error message (or its result).
        text = _json_encode(value)
    try:
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: \u-escaped instead, still valid JSON
        return (_json_encode_ascii(value) + "\n").encode("ascii")


def encode_line(value: Any) -> bytes:
    # surrogateescape: undecodable input bytes passed through are written back as they came.
    return ("" if value is None else str(value)).encode("utf-8", "surrogateescape") + b"\n"


def encode_dead(line_no: int, failed: Failed) -> bytes:
    letter = {"line": line_no, "record": failed.record, "error": failed.error,
              "attempts": failed.attempts}
    try:
        return (json.dumps(letter, ensure_ascii=False, default=safe_repr) + "\n").encode()
    except UnicodeEncodeError:  # a non-UTF-8 line of --format lines: \u-escaped
        return (json.dumps(letter, default=safe_repr) + "\n").encode()


_json_decode = json.JSONDecoder().decode  # json.loads(str) but its BOM check (_json_error)


def json_error(text: str) -> str:
    """json.loads's message for a line it cannot parse (a leading BOM included)."""
    try:
        json.loads(text)
    except ValueError as exc:
        return str(exc)
    return "not JSON"  # cannot happen: the decoder refused it


def run_lines(lines: Sequence[Line | None], results: list[Any], func: Callable[[Any], Any],
              encode: Callable[[Any], bytes], jsonl: bool, settled: bool,
              failed: Callable[[Any, BaseException, int], Any], first_line: int,
              flags: Any) -> tuple[int, float]:
    """A batch's work, in a worker thread or process: parse, call and encode each line
    into `results`. `settled`: skip the lines whose result is set already (over
    --max-line-bytes). `failed(record, exc, line_no)`: the outcome of a call that
    raised. Once `flags._stopping` is true no record starts (the rest stays None).
    Returns (records that succeeded, seconds taken)."""
    decode = _json_decode
    ok = 0
    started = time.perf_counter()
    for i, raw in enumerate(lines):
        if flags._stopping:
            break  # interrupted: start no new record; the rest stays None
        if settled and results[i] is not None:
            continue
        assert raw is not None
        if jsonl:
            try:
                # json.loads(text) without its wrapper, and decoded here rather than
                # by json.loads(bytes), whose guess of the encoding costs as much as
                # parsing a small record.
                text = raw.decode("utf-8")
                record = decode(text)
            except UnicodeDecodeError as exc:
                results[i] = Failed(f"invalid UTF-8: {exc}",
                                    raw.decode("utf-8", "replace").rstrip("\r\n"), 0)
                continue
            except ValueError:
                # Blank lines are no record; looked for only here, as they do not parse.
                results[i] = SKIP if not raw or raw.isspace() else Failed(
                    "invalid JSON: " + json_error(text), text.strip(), 0)
                continue
        else:
            record = raw.decode("utf-8", "surrogateescape").rstrip("\r\n")
        try:
            value = func(record)
        except BaseException as exc:  # SystemExit too: the record's failure
            results[i] = failed(record, exc, first_line + i)
            continue
        try:
            results[i] = encode(value)
            ok += 1
        except BaseException as exc:
            results[i] = Failed("cannot serialize the result: " + error_text(exc), record, 1)
    return ok, time.perf_counter() - started


class Retrying(NamedTuple):
    """A record whose retries are under way, as a task of its own."""

    future: Future[Any]
    call: RetryCall | RemoteRetry


class Unserializable(Exception):
    """FUNC's result cannot be written: a failure of the record, never retried."""


class Backoff(Exception):
    """The first 'attempt' of a retry task: it fails at once so that the Pool's Retry
    waits the backoff before the real second attempt, holding no worker meanwhile."""


class RemoteFailure(Exception):
    """A later attempt of a record failed in a worker process (--processes): FUNC's
    exception as text (it may not pickle) and whether the run retries it."""

    def __init__(self, text: str, retry: bool) -> None:
        super().__init__(text, retry)
        self.text = text
        self.retry = retry

    def __str__(self) -> str:
        return self.text


class RetryLater(NamedTuple):
    """A record that failed in a worker process and is to be retried: the parent
    schedules its retries (a batch's outcome, before the parent settles it)."""

    record: Any


class RetryCall:
    """A failed record's later attempts, as a task of its own."""

    __slots__ = ("func", "record", "encode", "attempts", "waited")

    def __init__(self, func: Callable[[Any], Any], record: Any,
                 encode: Callable[[Any], bytes]) -> None:
        self.func = func
        self.record = record
        self.encode = encode
        self.attempts = 1  # the first ran in the batch
        self.waited = False

    def final_attempts(self, exc: BaseException) -> int:
        """Attempts made when the task failed with `exc` for good."""
        return self.attempts

    def __call__(self) -> bytes:
        if not self.waited:
            self.waited = True
            raise Backoff
        self.attempts += 1
        value = self.func(self.record)
        try:
            return self.encode(value)
        except Exception as exc:
            raise Unserializable("cannot serialize the result: " + error_text(exc)) from None


class Batch:
    """Consecutive input lines run as one Pool task; written when all are settled."""

    __slots__ = ("first_line", "start", "lines", "end", "results", "nbytes", "future",
                 "pos", "seconds", "clean")

    def __init__(self, first_line: int, start: int, lines: list[Line],
                 end: int) -> None:
        self.first_line = first_line   # input line number of lines[0] (1-based)
        self.start = start             # input offset of lines[0]
        self.lines = lines             # raw lines, without their newline
        self.end = end                 # input offset just past the last line
        self.results: list[Any] = [None] * len(lines)
        self.nbytes = end - start
        self.future: Future[Any] | None = None
        self.pos = 0                   # lines[:pos] are written
        self.seconds = 0.0             # time the batch ran, for the adaptive size
        self.clean = False             # every record succeeded: results are all bytes

    def end_of(self, k: int) -> int:
        """The input offset just past lines[:k] (a checkpoint inside the batch)."""
        if k == len(self.lines):
            return self.end  # the input's last line may have no newline
        return self.start + sum(map(line_size, self.lines[:k]))


def pending(batch: Batch) -> bool:
    """Whether some record of `batch` not written yet is running or waiting to."""
    fut = batch.future
    if fut is None:
        return False
    if not fut.done():
        return True
    return any(type(r) is Retrying and not r.future.done()
               for r in itertools.islice(batch.results, batch.pos, None))
