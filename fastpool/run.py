"""The `fastpool run` engine: records from a file or pipe through a function on a Pool.

`cli.py` parses the command line and owns the process (signals, exit); this module reads,
runs, orders and writes records, and can be embedded by a program of its own.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
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


def cmd_run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
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
