"""The `fastpool` command line: `run`, `bench`, `demo` and `--version`.

`main(argv)` returns the exit code: 0 success, 1 some records dead-lettered (`run`),
2 bad usage (argparse's convention; never a traceback for a user's mistake), 3 internal
error of `run` (every unfinished record saved), 128+signal for an interrupted `run`.
This module parses, dispatches and owns the exit (only `entry()` ends the process); the
`run` engine is fastpool.run, whose Pool handles SIGINT and SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from typing import Any, Callable, NoReturn

import fastpool

__all__ = ["main"]

_RUN_EPILOG = """\
records:
  --format jsonl (default): one JSON value per line, passed to FUNC as the parsed value;
  results are written as JSON lines. Blank lines are skipped. --format lines: each line
  (without its newline) is passed as a str; results are written with str().
  INPUT and -o may be - for stdin/stdout. FUNC must accept one positional argument.

where every record ends up (exactly one place):
  OUT          the result, in input order
  DEAD_LETTER  records that failed after their last attempt (or are not valid JSON, or
               longer than --max-line-bytes), one JSON object per line:
               {"line": N, "record": ..., "error": "...", "attempts": K}
               (default OUT.dead-letter.jsonl, or fastpool.dead-letter.jsonl with -o -)
  UNPROCESSED  only after an interruption or internal error: the raw input lines of
               every record that did not finish, in input order (default
               OUT.unprocessed, or fastpool.unprocessed)
  Every path is checked before the first record; none may name INPUT or another.

resuming (INPUT and OUT regular files): the run keeps OUT.journal, a checkpoint per
  second (input offset, OUT and DEAD_LETTER sizes, fsync'd). After any interruption
  (Ctrl-C, SIGTERM, SIGKILL, power loss) rerun the same command with --resume: OUT and
  DEAD_LETTER are cut back to the last checkpoint and the run carries on from there,
  ending byte for byte as an uninterrupted run (FUNC deterministic). Records after the
  checkpoint run again: delivery is at-least-once. Input from a pipe cannot be resumed.

interruption (SIGINT/Ctrl-C or SIGTERM): no new record is started; records already
  running (or waiting for a retry) get --grace seconds to finish and are written to OUT
  or DEAD_LETTER; everything else, including the rest of a regular INPUT file, goes to
  UNPROCESSED (or use --resume). A second signal stops waiting at once. With INPUT
  from a pipe, lines not yet read stay in the pipe; the summary says how many were read.

retries: --retries K runs a failed record up to K more times, after --backoff S,
  doubling; a record waiting for its retry holds no worker and does not hold back the
  records after it. --retry-on NAME[,NAME] retries only exceptions one of whose classes
  (along the MRO) is called NAME, or has the dotted path NAME (module.QualName).

processes: --processes runs FUNC in worker processes (for CPU-bound functions; one per
  CPU unless --workers), by the platform's safe start method (forkserver on Linux, spawn
  on macOS and Windows). Each worker imports MODULE:FUNC itself, before the first record
  (if it cannot: exit 3, INPUT whole in UNPROCESSED); module-level state is per process. A
  batch of records crosses as one task. Every guarantee above holds. A worker that
  crashes (segfault, os._exit, killed) costs only its batch: each of its records is
  retried per --retries (WorkerCrashed is an Exception), or dead-lettered with the
  reason; a fresh worker takes its place.

exit status: 0 all records succeeded; 1 some failed (all in DEAD_LETTER); 2 bad
  arguments; 3 internal error (every unfinished record in UNPROCESSED); 128+N
  interrupted by signal N (130 SIGINT, 143 SIGTERM).
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


def _retry_on(text: str) -> Any:
    from .run import retry_on_names

    try:
        return retry_on_names(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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


class _Parser(argparse.ArgumentParser):
    """A command's usage error is one line (the top level still shows its usage)."""

    def error(self, message: str) -> NoReturn:
        if self.prog == "fastpool":
            super().error(message)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastpool", description="A fast worker pool for Python.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser(
        "run", help="stream records through a function on a worker pool",
        description="Stream records (JSON lines or text lines) through MODULE:FUNC on a "
                    "pool of worker\nthreads (or processes) and write the results in input "
                    "order.",
        epilog=_RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("target", metavar="MODULE:FUNC",
                     help="the function to call per record: an importable module (the "
                          "current directory is on the path) or a path/to/file.py")
    run.add_argument("input", metavar="INPUT", help="input file, or - for stdin")
    run.add_argument("-o", "--output", default="-", metavar="OUT",
                     help="output file, or - for stdout (default)")
    run.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                     help="worker threads (default: as ThreadPoolExecutor, min(32, cpus + "
                          "4)); with --processes, worker processes (default: one per CPU)")
    run.add_argument("--processes", action="store_true",
                     help="run FUNC in worker processes, for CPU-bound functions (see "
                          "below)")
    run.add_argument("--retries", type=_non_negative_int, default=0, metavar="K",
                     help="retries after a failed first attempt (default 0)")
    run.add_argument("--retry-on", type=_retry_on, default=None, metavar="NAME[,NAME]",
                     help="retry only these exception types, by class name or dotted "
                          "path, subclasses included (default: any Exception)")
    run.add_argument("--backoff", type=_non_negative_float, default=0.1, metavar="S",
                     help="seconds before the first retry, doubling each time, +-10%% "
                          "jitter (default 0.1)")
    run.add_argument("--rate", type=_positive_float, default=None, metavar="R",
                     help="start at most R records per second")
    run.add_argument("--dead-letter", default=None, metavar="FILE",
                     help="where failed records go (see below)")
    run.add_argument("--unprocessed", default=None, metavar="FILE",
                     help="where an interrupted run leaves unfinished records (see below)")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="show progress on stderr (default: when stderr is a terminal; "
                          "uses tqdm if installed: pip install 'fastpool[progress]')")
    run.add_argument("--format", choices=("jsonl", "lines"), default="jsonl",
                     help="record format of INPUT and OUT (default jsonl)")
    run.add_argument("--in-flight", type=_positive_int, default=None, metavar="N",
                     help="tasks queued or running at most (default 4 x workers); a task "
                          "is a batch of records when FUNC is fast")
    run.add_argument("--max-line-bytes", type=_positive_int, default=None, metavar="N",
                     help="dead-letter input lines longer than N bytes without keeping "
                          "them in memory (default: no limit)")
    run.add_argument("--resume", action="store_true",
                     help="carry on an interrupted run of the same command from its "
                          "journal (see below)")
    run.add_argument("--grace", type=_non_negative_float, default=30.0, metavar="S",
                     help="seconds running records get to finish after an interruption "
                          "(default 30)")
    run.add_argument("--metrics-port", type=_port, default=None, metavar="PORT",
                     help="serve Prometheus metrics on http://HOST:PORT/metrics while "
                          "running (0: a free port; the URL is printed on stderr): the "
                          "pool's and fastpool_run_records_total{outcome}; needs "
                          "pip install 'fastpool[metrics]'")
    run.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                     help="address the metrics are served on (default 127.0.0.1; "
                          "0.0.0.0 or :: for every interface)")
    run.set_defaults(handler=_cmd_run, subparser=run)

    bench = sub.add_parser(
        "bench", help="compare fastpool with concurrent.futures on this machine",
        description="Run fastpool's benchmark cases (submit, map, sleep, latency, ...) on "
                    "fastpool and on concurrent.futures (and peers: multiprocessing's "
                    "ThreadPool, a bare loop) interleaved, and print a table of the "
                    "medians and the ratio per case (> 1: fastpool is better). Takes a few "
                    "minutes; --quick runs tiny sizes in seconds.")
    bench.add_argument("--quick", action="store_true", help="tiny sizes (seconds, noisy)")
    bench.add_argument("--json", action="store_true", help="print JSON instead of a table")
    bench.add_argument("--plot", metavar="FILE.png", help="also save a chart (needs matplotlib)")
    bench.add_argument("--repeat", type=_positive_int, default=None, metavar="K",
                       help="interleaved repetitions; the median is reported (default 5, "
                            "3 with --quick)")
    bench.add_argument("--scale", type=_positive_float, default=None,
                       help="problem size factor (default 1 = the full sizes; 0.02 "
                            "with --quick)")
    bench.add_argument("--case", action="append", metavar="NAME",
                       help="run only this case (repeatable)")
    bench.add_argument("--fallback", action="store_true",
                       help="also run the pure-Python fallback core (fastpool-py)")
    bench.add_argument("-v", "--verbose", action="store_true",
                       help="print every run's metrics on stderr as it ends (default: a "
                            "progress line on a terminal)")
    bench.set_defaults(handler=_cmd_bench, subparser=bench)

    demo = sub.add_parser("demo", help="a tour of the main features in a few seconds")
    demo.set_defaults(handler=_cmd_demo)
    return parser


def entry() -> None:
    """The `fastpool` program: main(), then exit with its code. (A record still running
    past `run`'s grace period does not hold the exit: the pool abandoned its worker.)"""
    sys.exit(main())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, a usage error: the code, as promised
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return int(args.handler(parser, args))
    except SystemExit as exc:  # a usage error found by a command
        return exc.code if isinstance(exc.code, int) else 2
    except KeyboardInterrupt:
        # Outside a run's Pool (which handles SIGINT itself): quiet, like Python.
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
    from . import _bench, _bench_report

    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            args.subparser.error("--plot needs matplotlib, which is not installed "
                                 "(pip install 'fastpool[plot]')")
    try:
        cases = _bench.available_cases(args.case)
    except ValueError as exc:
        args.subparser.error(str(exc))
    repeat = args.repeat or (3 if args.quick else 5)
    scale = args.scale or (0.02 if args.quick else 1.0)
    runs = repeat * sum(len(_bench.implementations(c, args.fallback)) for c in cases)
    # Progress goes to stderr: stdout is the table (first thing printed) or pure JSON.
    progress = _bench_report.Progress(runs, args.verbose)
    if args.verbose:
        print(f"{_version()}; {repeat} interleaved runs, scale {scale:g}", file=sys.stderr)
    try:
        results = _bench.run_interleaved(cases, repeat, scale, fallback=args.fallback,
                                         on_run=progress)
    finally:
        progress.close()
    report = _bench.to_json(results, repeat, scale)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_bench_report.format_table(report))
    if args.plot:
        _bench_report.plot(report, args.plot)
        if not args.json:
            print(f"chart saved to {args.plot}")
    return 0


# -- demo ------------------------------------------------------------------------------


def _cmd_demo(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from . import _demo

    return _demo.main()


def _cmd_run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from . import run

    args.metrics = None
    runner = None
    try:
        func = run.load_function(args.target)
        run.check_signature(func, args.target)
        if args.metrics_port is not None:
            args.metrics = _metrics_server(args.metrics_port, args.metrics_host)
        runner = run.Runner(args, func)
        runner.prepare()
    except run.UsageError as exc:
        if args.metrics is not None:
            args.metrics.close()
        args.subparser.error(str(exc))
    assert runner is not None
    if args.metrics is not None:
        args.metrics.registry.register(run.RecordCollector(runner))
    try:
        return runner.run()  # SIGINT and SIGTERM: the run's Pool handles them
    finally:
        if args.metrics is not None:
            args.metrics.close()


def _metrics_server(port: int, host: str) -> Any:
    from .run import UsageError

    try:
        from .metrics import MetricsServer
    except ImportError as exc:  # names the extra to install
        raise UsageError(f"--metrics-port: {exc}") from None
    try:
        server = MetricsServer(port, host)
    except (OSError, ValueError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise UsageError(f"cannot serve metrics on port {port} of {host}: {detail}") from None
    print(f"fastpool run: metrics on {server.url}", file=sys.stderr, flush=True)
    return server
