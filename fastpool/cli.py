"""The `fastpool` command line: `run`, `bench`, `demo` and `--version`.

`main(argv)` returns the exit code: 0 success, 1 some records dead-lettered (`run`),
2 bad usage (argparse's convention; never a traceback for a user's mistake), 128+signal
for an interrupted `run`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import select
import signal
import stat
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from types import FrameType
from typing import IO, Any, Callable, Iterator, NamedTuple

import fastpool

__all__ = ["main"]

_RUN_EPILOG = """\
records:
  --format jsonl (default): one JSON value per line, passed to FUNC as the parsed value;
  results are written as JSON lines. Blank lines are skipped. --format lines: each line
  (without its newline) is passed as a str; results are written with str().
  INPUT and -o may be - for stdin/stdout.

where every record ends up (exactly one place):
  OUT          the result, in input order
  DEAD_LETTER  records that failed after their last attempt (or are not valid JSON), one
               JSON object per line: {"line": N, "record": ..., "error": "...", "attempts": K}
               (default OUT.dead-letter.jsonl, or fastpool.dead-letter.jsonl with -o -)
  UNPROCESSED  only after an interruption: the raw input lines of every record that did
               not finish, in input order (default OUT.unprocessed, or fastpool.unprocessed)

interruption (SIGINT/Ctrl-C or SIGTERM): no new record is started; records already
  running (or waiting for a retry) get --grace seconds to finish and are written to OUT
  or DEAD_LETTER; everything else, including the rest of a regular INPUT file, goes to
  UNPROCESSED. To resume, run the same command on UNPROCESSED with a new -o and append
  that output to OUT. A second signal stops waiting at once (records still running then
  go to UNPROCESSED too and may have had side effects: delivery is at-least-once). With
  INPUT from a pipe, lines not yet read stay in the pipe; the summary on stderr says how
  many lines were read.

exit status: 0 all records succeeded, 1 some were dead-lettered, 2 bad arguments,
  128+N interrupted by signal N (130 for SIGINT, 143 for SIGTERM).
"""


def _number(convert: Callable[[str], float], low: float, strict: bool
            ) -> Callable[[str], Any]:
    """An argparse type: a finite number >= low (> low if strict), with a clear message."""
    kind = "an integer" if convert is int else "a number"

    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if not (value > low if strict else value >= low):
            raise argparse.ArgumentTypeError(
                f"must be {'>' if strict else '>='} {low:g}, got {text}")
        return value
    return parse


_positive_int = _number(int, 1, strict=False)
_non_negative_int = _number(int, 0, strict=False)
_positive_float = _number(float, 0, strict=True)
_non_negative_float = _number(float, 0, strict=False)


def _port(text: str) -> int:
    port = int(_non_negative_int(text))
    if port > 65535:
        raise argparse.ArgumentTypeError(f"must be <= 65535, got {text}")
    return port


def _version() -> str:
    # What a bug report needs: the version, the core in use and, for the fallback, why
    # (forced by the environment, or no compiled core in this install). Short: argparse
    # wraps a version line longer than the terminal.
    if fastpool.NATIVE:
        core = "native core"
    elif os.environ.get("FASTPOOL_NO_EXTENSIONS"):
        core = "pure-Python core: FASTPOOL_NO_EXTENSIONS"
    elif sys.implementation.name != "cpython":
        core = "pure-Python core: not CPython"
    else:
        core = "pure-Python core: no compiled core"
    impl = sys.implementation.name
    return f"fastpool {fastpool.__version__} ({core}; {impl} {sys.version.split()[0]})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastpool",
                                     description="A fast worker pool for Python.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser(
        "run", help="stream records through a function on a worker pool",
        description="Stream records (JSON lines or text lines) through MODULE:FUNC on a "
                    "pool of worker\nthreads and write the results in input order.",
        epilog=_RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("target", metavar="MODULE:FUNC",
                     help="the function to call per record: an importable module (the "
                          "current directory is on the path) or a path/to/file.py")
    run.add_argument("input", metavar="INPUT", help="input file, or - for stdin")
    run.add_argument("-o", "--output", default="-", metavar="OUT",
                     help="output file, or - for stdout (default)")
    run.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                     help="worker threads (default: as ThreadPoolExecutor, min(32, cpus + 4))")
    run.add_argument("--retries", type=_non_negative_int, default=0, metavar="K",
                     help="retries after a failed first attempt (default 0)")
    run.add_argument("--backoff", type=_non_negative_float, default=0.1, metavar="S",
                     help="seconds before the first retry, doubling each time, +-10%% "
                          "jitter (default 0.1)")
    run.add_argument("--rate", type=_positive_float, default=None, metavar="R",
                     help="start at most R records per second")
    run.add_argument("--dead-letter", default=None, metavar="FILE",
                     help="where failed records go (see below)")
    run.add_argument("--unprocessed", default=None, metavar="FILE",
                     help="where an interrupted run leaves unfinished records (see below)")
    run.add_argument("--progress", action="store_true", help="show progress on stderr")
    run.add_argument("--format", choices=("jsonl", "lines"), default="jsonl",
                     help="record format of INPUT and OUT (default jsonl)")
    run.add_argument("--in-flight", type=_positive_int, default=None, metavar="N",
                     help="records read ahead and in flight at most (default 4 x workers)")
    run.add_argument("--grace", type=_non_negative_float, default=30.0, metavar="S",
                     help="seconds running records get to finish after an interruption "
                          "(default 30)")
    run.add_argument("--metrics-port", type=_port, default=None, metavar="PORT",
                     help="serve Prometheus metrics of the pool on http://HOST:PORT/metrics "
                          "while running (0: a free port, printed on stderr); needs "
                          "pip install 'fastpool[metrics]'")
    run.set_defaults(handler=_cmd_run, subparser=run)

    bench = sub.add_parser(
        "bench", help="compare fastpool with concurrent.futures on this machine",
        description="Run the benchmark cases of fastpool's issue 4 interleaved, and print "
                    "the median of each implementation and the ratio (> 1: fastpool is "
                    "better). Takes a few minutes; --quick runs tiny sizes in seconds.")
    bench.add_argument("--quick", action="store_true", help="tiny sizes (seconds, noisy)")
    bench.add_argument("--json", action="store_true", help="print JSON instead of a table")
    bench.add_argument("--plot", metavar="FILE.png", help="also save a chart (needs matplotlib)")
    bench.add_argument("--repeat", type=_positive_int, default=None, metavar="K",
                       help="interleaved repetitions; the median is reported (default 5, "
                            "3 with --quick)")
    bench.add_argument("--scale", type=_positive_float, default=None,
                       help="problem size factor (default 1 = the issue's sizes; 0.02 "
                            "with --quick)")
    bench.add_argument("--case", action="append", metavar="NAME",
                       help="run only this case (repeatable)")
    bench.add_argument("--fallback", action="store_true",
                       help="also run the pure-Python fallback core (fastpool-py)")
    bench.set_defaults(handler=_cmd_bench, subparser=bench)

    demo = sub.add_parser("demo", help="a tour of the main features in a few seconds")
    demo.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(parser, args))
    except KeyboardInterrupt:
        # Only reached outside `run` (which handles its own signals): quiet, like Python.
        print(file=sys.stderr)
        return 128 + signal.SIGINT
    except BrokenPipeError:
        # `fastpool ... | head`: the reader left. Exit as a program killed by SIGPIPE
        # would, without a traceback (and without a second error when Python flushes
        # stdout at exit).
        sys.stdout = open(os.devnull, "w")
        return 128 + 13


# -- bench -----------------------------------------------------------------------------


def _cmd_bench(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from . import _bench

    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            args.subparser.error("--plot needs matplotlib, which is not installed "
                         "(pip install matplotlib)")
    try:
        cases = _bench.available_cases(args.case)
    except ValueError as exc:
        args.subparser.error(str(exc))
    repeat = args.repeat or (3 if args.quick else 5)
    scale = args.scale or (0.02 if args.quick else 1.0)

    def on_run(case: Any, impl: str, metrics: Any) -> None:
        # Progress goes to stderr in both modes: stdout stays the table or pure JSON.
        print(f"  {case.name:<12} {impl:<14} "
              + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()),
              file=sys.stderr, flush=True)

    print(f"{_version()}; {repeat} interleaved runs, scale {scale:g}", file=sys.stderr)
    results = _bench.run_interleaved(cases, repeat, scale, fallback=args.fallback,
                                     on_run=on_run)
    report = _bench.to_json(results, repeat, scale)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report))
    if args.plot:
        _plot(report, args.plot)
        if not args.json:
            print(f"chart saved to {args.plot}")
    return 0


def _fmt(value: float | None, stopped: bool = False) -> str:
    if value is None or value != value:
        return "-"
    text = f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return (">" if stopped else "") + text


def _fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    return f"{ratio:.0f}x" if ratio >= 100 else f"{ratio:.2f}x"


def format_table(report: dict[str, Any]) -> str:
    """The `fastpool bench` table: one row per case and metric, medians and the ratio."""
    header = ("case", "metric", "stdlib", "fastpool", "ratio", "target", "others")
    rows = [header]
    for row in report["cases"]:
        med, stopped = row["median"], set(row["stopped"])
        # For cases measured against another baseline (the Pool vs the bare executor)
        # the columns still hold stdlib and fastpool; the row names its comparison.
        name = row["case"]
        if row["baseline"] != "stdlib" or row["subject"] != "fastpool":
            name += f" ({row['subject']} vs {row['baseline']})"
        others = [f"{impl}={_fmt(v, impl in stopped)}" for impl, v in med.items()
                  if impl not in ("stdlib", "fastpool")]
        ratio = row["ratio"]
        rows.append((name, row["unit"], _fmt(med.get("stdlib"), "stdlib" in stopped),
                     _fmt(med.get("fastpool"), "fastpool" in stopped),
                     _fmt_ratio(ratio) + ("+" if stopped & {row["baseline"]} else ""),
                     row["target"], " ".join(others)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]
    m = report["machine"]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("")
    lines.append(f"ratio > 1: fastpool better (baseline/fastpool for times); '>' and '+': "
                 "the run was stopped at its cap, the true value is larger. "
                 f"Medians of {report['repeat']} interleaved runs, scale {report['scale']:g}; "
                 f"{m['platform']}, {m['cpus']} CPUs, {m['implementation']} {m['python']}, "
                 f"fastpool {m['fastpool']} ({'native' if m['native'] else 'pure-Python'} core).")
    return "\n".join(lines)


def _plot(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["cases"] if r["ratio"]]
    labels = [f"{r['case']}\n{r['metric']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows)), 4))
    ax.bar(labels, [r["ratio"] for r in rows],
           color=["tab:green" if r["ratio"] >= 1 else "tab:red" for r in rows])
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("ratio (> 1: fastpool better)")
    m = report["machine"]
    ax.set_title(f"fastpool {m['fastpool']} vs baseline, {m['implementation']} {m['python']}, "
                 f"{m['cpus']} CPUs")
    plt.setp(ax.get_xticklabels(), fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- demo ------------------------------------------------------------------------------


def _cmd_demo(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from . import _demo

    return _demo.main()


# -- run -------------------------------------------------------------------------------


class _UsageError(Exception):
    """A user mistake found after parsing (bad MODULE:FUNC, unreadable file): exit 2."""


def load_function(target: str) -> Callable[[Any], Any]:
    """Resolve MODULE:FUNC (dotted FUNC allowed; MODULE may be a path to a .py file)."""
    module_name, sep, func_name = target.rpartition(":")
    if not sep or not module_name or not func_name:
        raise _UsageError(f"expected MODULE:FUNC, got {target!r}")
    if module_name.endswith(".py") or os.sep in module_name:
        if not os.path.isfile(module_name):
            raise _UsageError(f"no such file: {module_name!r}")
        spec = importlib.util.spec_from_file_location(
            os.path.splitext(os.path.basename(module_name))[0], module_name)
        if spec is None or spec.loader is None:
            raise _UsageError(f"cannot load {module_name!r} as a Python module")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise _UsageError(f"error importing {module_name!r}: "
                              f"{type(exc).__name__}: {exc}") from None
    else:
        # As `python -m`: modules in the current directory are importable.
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                raise _UsageError(f"no module named {module_name!r}") from None
            raise _UsageError(f"error importing {module_name!r}: {exc}") from None
        except Exception as exc:
            raise _UsageError(f"error importing {module_name!r}: "
                              f"{type(exc).__name__}: {exc}") from None
    obj: Any = module
    for part in func_name.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise _UsageError(f"module {module_name!r} has no attribute {func_name!r}") from None
    if not callable(obj):
        raise _UsageError(f"{target!r} is not callable (got {type(obj).__name__})")
    return obj  # type: ignore[no-any-return]


class _Stop(Exception):
    """Raised inside the reader when an interruption arrives while it waits for input."""


class _LineReader:
    """Reads lines from a binary file descriptor without ever losing one to a signal.

    It keeps its own buffer (so a partial line read before an interruption is still
    there to be saved), and on a pipe or terminal it waits with select() in short steps,
    so an interruption or finished results are handled while no input arrives.
    """

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self._fd = f.fileno()
        self._buf = bytearray()
        self._eof = False
        mode = os.fstat(self._fd).st_mode
        self.regular = stat.S_ISREG(mode)
        self._pollable = not self.regular and sys.platform != "win32"
        self.lines_read = 0

    def readline(self, stop: threading.Event, idle: Callable[[], None]) -> bytes | None:
        """The next line (with its newline, if any), None at end of input."""
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl + 1])
                del self._buf[:nl + 1]
                self.lines_read += 1
                return line
            if self._eof:
                if self._buf:
                    line = bytes(self._buf)
                    self._buf.clear()
                    self.lines_read += 1
                    return line
                return None
            if self._pollable:
                while not select.select([self._fd], [], [], 0.1)[0]:
                    if stop.is_set():
                        raise _Stop
                    idle()
            if stop.is_set():
                raise _Stop
            chunk = os.read(self._fd, 1 << 16)
            if chunk:
                self._buf += chunk
            else:
                self._eof = True

    def rest(self) -> Iterator[bytes]:
        """What is left: the buffered lines, then (regular files only) the unread rest."""
        if self._buf:
            yield bytes(self._buf)
            self._buf.clear()
        if self.regular and not self._eof:
            while chunk := os.read(self._fd, 1 << 16):
                yield chunk


class _LazyFile:
    """A text file opened on first write, so no empty dead-letter files are left behind.

    `count` is the number of lines written. With raw=True the text holds input bytes
    decoded with surrogateescape and is written back byte for byte.
    """

    def __init__(self, path: str, raw: bool = False) -> None:
        self.path = path
        self._raw = raw
        self._f: IO[str] | None = None
        self.count = 0

    def write(self, text: str) -> None:
        if self._f is None:
            if self._raw:
                self._f = open(self.path, "w", encoding="utf-8", errors="surrogateescape",
                               newline="")
            else:
                self._f = open(self.path, "w", encoding="utf-8")
        self._f.write(text)
        self.count += text.count("\n")

    def write_line(self, text: str) -> None:
        self.write(text + "\n")

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


class _Outcome(NamedTuple):
    ok: bool | None   # True succeeded, False failed for good, None did not finish
    value: Any        # the result, or the error text
    attempts: int


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class _Call:
    """One record's call: the Pool runs it again on a retry, so it counts attempts."""

    __slots__ = ("func", "record", "attempts")

    def __init__(self, func: Callable[[Any], Any], record: Any) -> None:
        self.func = func
        self.record = record
        self.attempts = 0

    def __call__(self) -> Any:
        self.attempts += 1
        return self.func(self.record)


class _Engine:
    """Records on a fastpool.Pool: its Retry (a waiting retry holds no worker), rate
    limit and timed shutdown on interruption."""

    def __init__(self, args: argparse.Namespace, func: Callable[[Any], Any]) -> None:
        retry = (fastpool.Retry(attempts=args.retries + 1, backoff=args.backoff)
                 if args.retries else None)
        # workers=None: the Pool's default, as ThreadPoolExecutor's.
        self.pool = fastpool.Pool(args.workers, retry=retry, rate_limit=args.rate,
                                  name="fastpool-run")
        self._func = func

    def submit(self, record: Any, line_no: int) -> tuple[_Call, Future[Any]]:
        call = _Call(self._func, record)
        return call, self.pool.schedule(call, key=line_no)

    def outcome(self, call: _Call, fut: Future[Any]) -> _Outcome:
        if fut.cancelled():  # handed back by the shutdown of an interrupted run
            return _Outcome(None, "not finished", call.attempts)
        exc = fut.exception()
        if exc is None:
            return _Outcome(True, fut.result(), call.attempts)
        # The pool keeps failures after retries as dead letters too; ours are written
        # to the dead-letter file, so the pool's copies are dropped as they come.
        self.pool.dead_letters.drain()
        return _Outcome(False, _error_text(exc), call.attempts)

    def stop(self, grace: float) -> None:
        # Queued records are handed back at once; running (and retrying) ones get
        # `grace` seconds. In a thread, so the main thread keeps writing results.
        threading.Thread(target=self.pool.shutdown, name="fastpool-run-shutdown", daemon=True,
                         kwargs={"wait": True, "cancel_futures": True, "timeout": grace}).start()

    def close(self, still_running: bool) -> None:
        self.pool.shutdown(wait=not still_running)


# One encoder for every record: json.dumps(..., ensure_ascii=False) would build a new
# JSONEncoder per call, a visible cost at tens of thousands of records per second.
_to_json = json.JSONEncoder(ensure_ascii=False).encode


class _BadRecord(NamedTuple):
    """An input line that is not a record: dead-lettered in its place in the order."""

    error: str
    text: str


_SKIP = object()
# line number, raw line, the record's _Call (or _BadRecord), its future
_Item = tuple[int, bytes, "_Call | _BadRecord", "Future[Any]"]


class _Runner:
    """The `fastpool run` loop: a reader, an ordered window of futures, three sinks."""

    def __init__(self, args: argparse.Namespace, func: Callable[[Any], Any]) -> None:
        self.args = args
        self.jsonl = args.format == "jsonl"
        self.engine = _Engine(args, func)
        self.in_flight = args.in_flight or 4 * self.engine.pool.workers
        self.stop = threading.Event()     # first signal: start nothing new
        self.abort = threading.Event()    # second signal: stop waiting for running records
        self.signum = 0
        base = args.output if args.output != "-" else "fastpool"
        self.dead = _LazyFile(args.dead_letter or base + ".dead-letter.jsonl")
        self.unprocessed = _LazyFile(args.unprocessed or base + ".unprocessed", raw=True)
        self.ok = 0
        self.started = time.monotonic()
        self._last_progress = 0.0

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only sets flags: the main thread acts on them between two short waits.
        if self.stop.is_set():
            self.abort.set()
        else:
            self.signum = signum
            self.stop.set()

    def _write(self, item: _Item, out: IO[str]) -> None:
        line_no, raw, call, fut = item
        if isinstance(call, _BadRecord):
            outcome = _Outcome(False, call.error, 0)
            record = call.text
        else:
            outcome = self.engine.outcome(call, fut)
            record = call.record
        if outcome.ok:
            try:
                text = (_to_json(outcome.value) if self.jsonl
                        else ("" if outcome.value is None else str(outcome.value)))
            except Exception as exc:
                outcome = _Outcome(False, "cannot serialize the result: " + _error_text(exc),
                                   outcome.attempts)
            else:
                out.write(text + "\n")
                self.ok += 1
                return
        if outcome.ok is None:
            self._save_unprocessed(raw)
        else:
            self.dead.write_line(json.dumps(
                {"line": line_no, "record": record, "error": outcome.value,
                 "attempts": outcome.attempts}, ensure_ascii=False, default=repr))

    def run(self, reader: _LineReader, out: IO[str]) -> int:
        window: deque[_Item] = deque()  # in input order
        args = self.args

        def flush_done() -> None:
            while window and window[0][3].done():
                self._write(window.popleft(), out)
            if args.progress:
                self._progress(reader, len(window))

        try:
            while not self.stop.is_set():
                if len(window) >= self.in_flight:
                    # Wait for the oldest record, waking up for signals.
                    _wait_briefly(window[0][3], 0.1)
                    flush_done()
                    continue
                try:
                    raw = reader.readline(self.stop, flush_done)
                except _Stop:
                    break
                if raw is None:
                    break
                record = self._parse(raw)
                if record is _SKIP:
                    continue
                line_no = reader.lines_read
                if isinstance(record, _BadRecord):
                    fut: Future[Any] = Future()
                    fut.set_result(None)
                    window.append((line_no, raw, record, fut))
                else:
                    window.append((line_no, raw, *self.engine.submit(record, line_no)))
                flush_done()
            # End of input, or interrupted: finish the window in order.
            deadline = None
            while window and not self.abort.is_set():
                if deadline is None and self.stop.is_set():
                    self.engine.stop(args.grace)
                    # A little over the engine's own grace, so its hand-back lands first.
                    deadline = time.monotonic() + args.grace + 0.5
                fut = window[0][3]
                if not fut.done():
                    if deadline is not None and time.monotonic() >= deadline:
                        break
                    _wait_briefly(fut, 0.1)
                    if args.progress:
                        self._progress(reader, len(window))
                    continue
                self._write(window.popleft(), out)
            if window or self.stop.is_set():
                # Past the grace period: what finished is written, the rest saved, then
                # the unread input, all in input order.
                for item in window:
                    if item[3].done():
                        self._write(item, out)
                    else:
                        self._save_unprocessed(item[1])
                for chunk in reader.rest():
                    self.unprocessed.write(chunk.decode("utf-8", "surrogateescape"))
        finally:
            still_running = any(not item[3].done() for item in window)
            self.engine.close(still_running)
            self.dead.close()
            self.unprocessed.close()
            out.flush()
            if args.progress:
                self._progress(reader, len(window), final=True)
                if sys.stderr.isatty():
                    print(file=sys.stderr)
        self._summary(reader)
        if self.stop.is_set():
            code = 128 + (self.signum or signal.SIGINT)
            if still_running:
                # A record still running past the grace period would block interpreter
                # exit (worker threads are joined); it is saved, so leave now.
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
            return code
        return 1 if self.dead.count else 0

    def _parse(self, raw: bytes) -> Any:
        if not self.jsonl:
            return raw.decode("utf-8", "surrogateescape").rstrip("\r\n")
        try:
            stripped = raw.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            return _BadRecord(f"invalid UTF-8: {exc}", raw.decode("utf-8", "replace").rstrip("\r\n"))
        if not stripped:
            return _SKIP
        try:
            return json.loads(stripped)
        except ValueError as exc:
            return _BadRecord(f"invalid JSON: {exc}", stripped)

    def _save_unprocessed(self, raw: bytes) -> None:
        # The raw input line, so the file can be fed back as INPUT unchanged.
        text = raw.decode("utf-8", "surrogateescape")
        self.unprocessed.write(text if text.endswith("\n") else text + "\n")

    def _progress(self, reader: _LineReader, pending: int, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last_progress < 0.5:
            return
        self._last_progress = now
        rate = self.ok / max(now - self.started, 1e-9)
        end = "\r" if sys.stderr.isatty() else "\n"
        print(f"fastpool run: {reader.lines_read} read, {self.ok} done, "
              f"{self.dead.count} failed, {pending} in flight, {rate:.1f} records/s",
              end=end, file=sys.stderr, flush=True)

    def _summary(self, reader: _LineReader) -> None:
        took = time.monotonic() - self.started
        parts = [f"{self.ok} succeeded"]
        if self.dead.count:
            parts.append(f"{self.dead.count} failed -> {self.dead.path}")
        if self.stop.is_set():
            sig = signal.Signals(self.signum).name if self.signum else "signal"
            parts.append(f"interrupted by {sig}: {self.unprocessed.count} unprocessed -> "
                         f"{self.unprocessed.path}")
            if not reader.regular:
                parts.append(f"{reader.lines_read} lines were read from the input")
        print(f"fastpool run: {', '.join(parts)} in {took:.2f} s", file=sys.stderr)


class _MetricsServer:
    """--metrics-port: the run's pool exported on http://HOST:PORT/metrics until the end.

    A registry of its own (the pool's metrics only), served by a ThreadingHTTPServer of
    ours rather than prometheus_client.start_http_server, so that it can be stopped
    whatever prometheus_client's version: the port is freed when the run ends."""

    def __init__(self, port: int) -> None:
        try:
            from fastpool.metrics import PoolCollector
            from prometheus_client import CollectorRegistry
            from prometheus_client.exposition import MetricsHandler
        except ImportError as exc:  # names the extra to install
            raise _UsageError(f"--metrics-port: {exc}") from None
        from http.server import ThreadingHTTPServer

        self._collector = PoolCollector()
        registry = CollectorRegistry()
        registry.register(self._collector)
        try:
            # All interfaces, as Prometheus exporters (and start_http_server) do.
            self._server = ThreadingHTTPServer(("", port), MetricsHandler.factory(registry))
        except OSError as exc:
            raise _UsageError(f"cannot serve metrics on port {port}: "
                              f"{exc.strerror or exc}") from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                         name="fastpool-run-metrics", daemon=True)
        self._thread.start()
        print(f"fastpool run: metrics on http://localhost:{self._server.server_port}/metrics",
              file=sys.stderr, flush=True)

    def add(self, pool: fastpool.Pool) -> None:
        self._collector.add(pool)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def _wait_briefly(fut: Future[Any], timeout: float) -> None:
    """Wait for `fut` at most `timeout` s (short, so the main thread sees signals)."""
    try:
        fut.exception(timeout)
    except Exception:  # TimeoutError or CancelledError: the caller looks again
        pass


def _cmd_run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    metrics = None
    try:
        func = load_function(args.target)
        # Before the files are opened: a usage error then leaves nothing open.
        if args.metrics_port is not None:
            metrics = _MetricsServer(args.metrics_port)
        if args.input == "-":
            in_f = sys.stdin.buffer
        else:
            try:
                in_f = open(args.input, "rb")
            except OSError as exc:
                raise _UsageError(f"cannot open INPUT: {exc.strerror}: {args.input!r}") from None
        if args.output == "-":
            out: IO[str] = sys.stdout
        else:
            try:
                # surrogateescape: undecodable input bytes passed through in `lines`
                # mode are written back as they came.
                out = open(args.output, "w", encoding="utf-8", errors="surrogateescape")
            except OSError as exc:
                if in_f is not sys.stdin.buffer:
                    in_f.close()
                raise _UsageError(
                    f"cannot open OUT: {exc.strerror}: {args.output!r}") from None
    except _UsageError as exc:
        if metrics is not None:
            metrics.close()
        args.subparser.error(str(exc))
    runner = _Runner(args, func)
    if metrics is not None:
        metrics.add(runner.engine.pool)
    old = {}
    if threading.current_thread() is threading.main_thread():  # main() may run elsewhere
        for signame in ("SIGINT", "SIGTERM"):
            if hasattr(signal, signame):
                sig = getattr(signal, signame)
                old[sig] = signal.signal(sig, runner.on_signal)
    try:
        return runner.run(_LineReader(in_f), out)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if out is not sys.stdout:
            out.close()
        if in_f is not sys.stdin.buffer:
            in_f.close()
        if metrics is not None:
            metrics.close()
