"""fastpool's benchmark cases, shared by `benches/` (pytest-benchmark) and `fastpool bench`.

Every case runs the same workload on several implementations, named in IMPLEMENTATIONS
(plus a few references such as a bare loop), so one run yields ratios on one machine.
A case is a context manager factory: ``with case.prepare(impl, scale) as run:`` builds
and warms the pool (not measured), then each ``run()`` does one measured repetition and
returns its metrics, e.g. ``{"time": 2.1}`` in the case's units. Sizes are the full
sizes times ``scale``, so the tests can run tiny versions. (How `fastpool bench` shows
the results: fastpool._bench_report.)

Measurement notes:
  * Every metric is measured inside ``run()`` with ``time.perf_counter`` around the hot
    part only; pool creation, thread start-up and shutdown are left out, as a long-lived
    pool in a service would not pay them per batch.
  * The generator case runs in a fresh subprocess (``python -m fastpool._bench generator``)
    so its peak RSS starts clean; a watchdog stops it after ``cap`` seconds, because the
    eager stdlib `map` would otherwise spend half a minute and a gigabyte materialising
    a million futures. A stopped run reports ``stopped=1`` and its numbers are lower bounds.
  * ``fastpool-py`` (the pure-Python fallback core) cannot share a process with the native
    core (the core is chosen at import), so it runs in a helper subprocess started with
    FASTPOOL_NO_EXTENSIONS=1 (`Remote`); only the pipe round trip (~0.1 ms) is added.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import multiprocessing.pool
import operator
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterable, Iterator, Mapping

import fastpool

__all__ = [
    "CASES",
    "IMPLEMENTATIONS",
    "Case",
    "Metric",
    "Remote",
    "available_cases",
    "implementations",
    "machine_info",
    "open_pool",
    "prepare",
    "run_interleaved",
    "to_json",
]

Metrics = Mapping[str, float]
Runner = Callable[[], Metrics]

# The executors compared, by the name used in tables, JSON and pytest ids. A factory
# takes the number of workers. The pseudo-implementations "loop" and "threads" are
# references computed by the cases that have them.
IMPLEMENTATIONS: dict[str, Callable[[int], Any]] = {
    "stdlib": concurrent.futures.ThreadPoolExecutor,
    "fastpool": fastpool.ThreadPoolExecutor,
    "fastpool.Pool": fastpool.Pool,
    "mp.ThreadPool": multiprocessing.pool.ThreadPool,
}


def noop(*args: Any) -> None:
    return None


def identity(x: Any) -> Any:
    return x


def work_5us(x: int) -> int:
    """Pure-Python work of about 5 us on a 2020s x86 core (holds the GIL throughout)."""
    s = x
    for i in range(180):
        s += i
    return s


def work_cpu(x: int) -> int:
    """Pure-Python CPU-bound work of about 1 ms: parallel only without the GIL."""
    s = x
    for i in range(30_000):
        s ^= i * 3
    return s


_BLOB = bytes(256 * 1024)


def sha256_256k(_: Any) -> bytes:
    # hashlib releases the GIL for buffers above 2 KiB: this is "real" parallel work.
    return hashlib.sha256(_BLOB).digest()


def _n(base: int, scale: float, minimum: int = 1) -> int:
    return max(minimum, int(base * scale))


# -- a uniform face over executors and multiprocessing.pool.ThreadPool -----------------


@dataclass
class PoolHandle:
    """What the cases need from one implementation, bound once so the hot loops pay
    almost no adapter cost (``submit`` *is* ``executor.submit``)."""

    impl: str
    workers: int
    pool: Any
    submit: Callable[..., Any]
    result: Callable[[Any], Any]
    map: Callable[..., Iterator[Any]]  # map(fn, iterable, chunksize=None)
    lazy_map: Callable[[Callable[[Any], Any], Iterable[Any]], Iterator[Any]]
    close: Callable[[], None]


def _executor_handle(impl: str, ex: Any, workers: int, buffersize: int) -> PoolHandle:
    def map_(fn: Callable[..., Any], it: Iterable[Any], chunksize: int | None = None) -> Any:
        return ex.map(fn, it, chunksize=chunksize or 1)

    # The lazy, bounded form where the implementation has one: fastpool always, the
    # stdlib from 3.14 (buffersize); older stdlib maps submit everything first.
    if impl.startswith("fastpool") or sys.version_info >= (3, 14):
        def lazy(fn: Callable[[Any], Any], it: Iterable[Any]) -> Any:
            return ex.map(fn, it, buffersize=buffersize)
    else:
        def lazy(fn: Callable[[Any], Any], it: Iterable[Any]) -> Any:
            return ex.map(fn, it)

    def close() -> None:
        ex.shutdown(wait=True, cancel_futures=True)

    # methodcaller, not Future.result: fastpool's Future overrides result() (its cheaper
    # lazy-Condition path), so the unbound base method would measure the wrong code.
    return PoolHandle(impl, workers, ex, ex.submit, operator.methodcaller("result"),
                      map_, lazy, close)


def _mp_handle(impl: str, pool: Any, workers: int) -> PoolHandle:
    apply_async = pool.apply_async

    def submit(fn: Callable[..., Any], *args: Any) -> Any:
        return apply_async(fn, args)

    def map_(fn: Callable[..., Any], it: Iterable[Any], chunksize: int | None = None) -> Any:
        # chunksize=None is ThreadPool's own heuristic (len/4/workers): its natural map.
        return pool.map(fn, it, chunksize)

    def lazy(fn: Callable[[Any], Any], it: Iterable[Any]) -> Any:
        return pool.imap(fn, it)

    def close() -> None:
        pool.terminate()
        pool.join()

    return PoolHandle(impl, workers, pool, submit, multiprocessing.pool.ApplyResult.get,
                      map_, lazy, close)


@contextlib.contextmanager
def open_pool(impl: str, workers: int, buffersize: int = 256) -> Iterator[PoolHandle]:
    """Open implementation `impl` with `workers` threads; shut it down on exit."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {impl!r}, expected one of "
                         f"{', '.join(IMPLEMENTATIONS)}")
    pool = IMPLEMENTATIONS[impl](workers)
    if impl == "mp.ThreadPool":
        handle = _mp_handle(impl, pool, workers)
    else:
        handle = _executor_handle(impl, pool, workers, buffersize)
    try:
        yield handle
    finally:
        handle.close()


def _warm(h: PoolHandle, n: int = 200) -> None:
    """Start the workers and touch the hot paths before measuring."""
    for f in [h.submit(noop) for _ in range(n)]:
        h.result(f)


# -- the case table --------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    key: str
    unit: str
    higher_is_better: bool = False


@dataclass(frozen=True)
class Case:
    """One workload compared across implementations.

    `ratio` compares `baseline` with `subject` so that > 1 always means the subject is
    better: baseline/subject for times, subject/baseline for throughputs.
    """

    name: str
    title: str
    impls: tuple[str, ...]
    prepare: Callable[[str, float], ContextManager[Runner]]
    metrics: tuple[Metric, ...]
    target: str  # what the project aims for (benches/README.md); not in the report
    baseline: str = "stdlib"
    subject: str = "fastpool"
    in_subprocess: bool = False  # prepare() already starts its own process

    def ratio(self, metric: Metric, values: Mapping[str, float]) -> float | None:
        base, subj = values.get(self.baseline), values.get(self.subject)
        if base is None or subj is None:
            return None
        num, den = (subj, base) if metric.higher_is_better else (base, subj)
        return num / den if den > 0 else None


CASES: dict[str, Case] = {}

_EXECUTORS = ("stdlib", "fastpool", "mp.ThreadPool")
# The Pool joins the map cases: its map is the lazy, bounded one users should reach for.
_POOL = ("fastpool.Pool",)


def _case(name: str, title: str, impls: tuple[str, ...], target: str,
          metrics: tuple[Metric, ...] = (Metric("time", "us/item"),),
          **kw: Any) -> Callable[[Callable[[str, float], Iterator[Runner]]],
                                 Callable[[str, float], ContextManager[Runner]]]:
    def register(gen: Callable[[str, float], Iterator[Runner]]
                 ) -> Callable[[str, float], ContextManager[Runner]]:
        prepare = contextlib.contextmanager(gen)
        CASES[name] = Case(name, title, impls, prepare, metrics, target, **kw)
        return prepare
    return register


def _per_item_us(seconds: float, n: int) -> Metrics:
    return {"time": seconds / n * 1e6}


@_case("submit", "submit + result() of a no-op, 4 workers", _EXECUTORS,
       ">= 5x stdlib", (Metric("time", "us/task"),))
def _submit(impl: str, scale: float) -> Iterator[Runner]:
    n = _n(100_000, scale, 100)
    with open_pool(impl, 4) as h:
        _warm(h)
        submit, result = h.submit, h.result

        def run() -> Metrics:
            t0 = time.perf_counter()
            fs = [submit(noop) for _ in range(n)]
            for f in fs:
                result(f)
            return _per_item_us(time.perf_counter() - t0, n)
        yield run


def _map_case(impl: str, scale: float, fn: Callable[[Any], Any], base: int, workers: int,
              chunksize: int | None = None) -> Iterator[Runner]:
    n = _n(base, scale, 100)
    xs = list(range(n))
    if impl == "loop":
        # The floor under the GIL: a bare Python loop calling the same function.
        def run_loop() -> Metrics:
            t0 = time.perf_counter()
            for x in xs:
                fn(x)
            return _per_item_us(time.perf_counter() - t0, n)
        yield run_loop
        return
    with open_pool(impl, workers) as h:
        _warm(h)
        # ThreadPool's default chunking is its natural (eager, batched) map; the
        # stdlib's thread executor ignores chunksize (it is for processes only).
        cs = chunksize if chunksize is not None else (None if impl == "mp.ThreadPool" else 1)
        map_ = h.map

        def run() -> Metrics:
            t0 = time.perf_counter()
            for _ in map_(fn, xs, cs):
                pass
            return _per_item_us(time.perf_counter() - t0, n)
        yield run


@_case("map", "map of a no-op over 300k items, 4 workers", _EXECUTORS + _POOL + ("loop",),
       ">= 150x stdlib; within 2x of the loop; <= mp.ThreadPool")
def _map(impl: str, scale: float) -> Iterator[Runner]:
    yield from _map_case(impl, scale, identity, 300_000, 4)


@_case("map-5us", "map of a ~5 us pure-Python function, 2 workers", _EXECUTORS + ("loop",),
       ">= 90% of the loop's throughput")
def _map_5us(impl: str, scale: float) -> Iterator[Runner]:
    yield from _map_case(impl, scale, work_5us, 40_000, 2)


@_case("map-cpu", "map of a ~1 ms pure-Python function, 2 workers (scales without the GIL)",
       _EXECUTORS + ("loop",), "free-threaded: ~2x the loop (serial), >= stdlib")
def _map_cpu(impl: str, scale: float) -> Iterator[Runner]:
    yield from _map_case(impl, scale, work_cpu, 400, 2)


@_case("seq-cpu", "CPU used by a submit(...).result() loop of no-ops, 2 workers",
       _EXECUTORS, "~100% of one core (the submitting thread); no busy-waiting worker",
       (Metric("cpu", "% of one core"),))
def _seq_cpu(impl: str, scale: float) -> Iterator[Runner]:
    n = _n(20_000, scale, 100)
    with open_pool(impl, 2) as h:
        _warm(h)
        submit, result = h.submit, h.result

        def run() -> Metrics:
            # process_time counts every thread: the loop's own thread is ~100%; a worker
            # that polls instead of parking between tasks adds up to another 100%.
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(n):
                result(submit(noop))
            cpu, wall = time.process_time() - c0, time.perf_counter() - t0
            return {"cpu": cpu / wall * 100.0}
        yield run


@_case("map-chunk64", "map(chunksize=64) of a no-op over 300k items, 4 workers",
       _EXECUTORS + _POOL, ">= 10x stdlib")
def _map_chunk64(impl: str, scale: float) -> Iterator[Runner]:
    yield from _map_case(impl, scale, identity, 300_000, 4, chunksize=64)


@_case("sleep", "10k x time.sleep(0.001) on 64 workers", _EXECUTORS + ("threads",),
       ">= 85% of ideal (64k tasks/s)", (Metric("ideal", "% of ideal", True),))
def _sleep(impl: str, scale: float) -> Iterator[Runner]:
    n = _n(10_000, scale, 256)
    workers, delay = 64, 0.001
    ideal = n * delay / workers

    def pct(seconds: float) -> Metrics:
        return {"ideal": ideal / seconds * 100.0}

    if impl == "threads":
        # 64 bare threads sleeping n/64 times each: what the OS timer allows.
        def sleeper(count: int) -> None:
            for _ in range(count):
                time.sleep(delay)

        def run_threads() -> Metrics:
            per = n // workers
            ts = [threading.Thread(target=sleeper, args=(per,)) for _ in range(workers)]
            t0 = time.perf_counter()
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            return {"ideal": per * delay / (time.perf_counter() - t0) * 100.0}
        yield run_threads
        return
    with open_pool(impl, workers) as h:
        # Start all 64 workers (blocking tasks force each pool to grow to its maximum).
        _warm_all(h, workers)
        submit, result, sleep = h.submit, h.result, time.sleep

        def run() -> Metrics:
            t0 = time.perf_counter()
            for f in [submit(sleep, delay) for _ in range(n)]:
                result(f)
            return pct(time.perf_counter() - t0)
        yield run


def _warm_all(h: PoolHandle, workers: int) -> None:
    go = threading.Event()
    fs = [h.submit(go.wait, 10.0) for _ in range(workers)]
    time.sleep(0.05)
    go.set()
    for f in fs:
        h.result(f)


@_case("latency", "round trip submit -> result on an idle pool (median)", _EXECUTORS,
       "<= stdlib (aim <= 20 us)", (Metric("time", "us"),))
def _latency(impl: str, scale: float) -> Iterator[Runner]:
    m = _n(200, scale, 10)
    with open_pool(impl, 4) as h:
        _warm(h)
        submit, result = h.submit, h.result

        def run() -> Metrics:
            samples = []
            for _ in range(m):
                # Long enough for every worker to stop spinning and park.
                time.sleep(0.002)
                t0 = time.perf_counter()
                result(submit(noop))
                samples.append(time.perf_counter() - t0)
            return {"time": statistics.median(samples) * 1e6}
        yield run


@_case("generator", "map over a 1M-item generator (fresh process)", _EXECUTORS + _POOL,
       "peak RSS growth <= 50 MB, first result <= 50 ms",
       (Metric("first", "ms to 1st result"), Metric("rss", "MB peak RSS growth")),
       in_subprocess=True)
def _generator(impl: str, scale: float) -> Iterator[Runner]:
    n = _n(1_000_000, scale, 1000)
    cap = 10.0 if scale >= 0.5 else 2.0
    env = dict(os.environ)
    if impl == "fastpool-py":
        env["FASTPOOL_NO_EXTENSIONS"] = "1"
        impl = "fastpool"

    def run() -> Metrics:
        out = subprocess.run(
            _child_command("generator", impl, str(n), str(cap)),
            env=env, capture_output=True, text=True, timeout=cap + 60, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"generator case failed for {impl}: {out.stderr.strip()}")
        metrics: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
        return metrics
    yield run


def _child_command(*args: str) -> list[str]:
    """`python -m fastpool._bench ARGS` on the very package this process imported.

    -I keeps the current directory (maybe a source checkout without the compiled core)
    from shadowing it; the package's own directory is put back on sys.path instead.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastpool.__file__)))
    boot = (f"import runpy, sys; sys.path.insert(0, {root!r}); "
            "runpy.run_module('fastpool._bench', run_name='__main__', alter_sys=True)")
    return [sys.executable, "-I", "-c", boot, *args]


def _rss_now_and_peak() -> tuple[float, float]:
    """Current and peak resident set size in MB (Linux /proc; ru_maxrss elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f)
        return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)
    except (OSError, KeyError, ValueError):
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_mb = peak / 1024 / (1024 if sys.platform == "darwin" else 1)
        return peak_mb, peak_mb


def _generator_child(impl: str, n: int, cap: float) -> None:
    """Body of the subprocess: consume map over a generator of `n` items, report JSON."""
    out: dict[str, float] = {"first": float("nan"), "rss": 0.0, "items": 0, "stopped": 0}
    lock = threading.Lock()
    with open_pool(impl, 4) as h:
        _warm(h)
        rss0, _ = _rss_now_and_peak()

        def report(stopped: bool) -> None:
            with lock:
                _, peak = _rss_now_and_peak()
                out["rss"] = max(0.0, peak - rss0)
                out["stopped"] = int(stopped)
                if out["first"] != out["first"]:  # nan: no result yet
                    out["first"] = cap * 1000
                print(json.dumps(out), flush=True)
            if stopped:
                # The eager stdlib map is still submitting in the main thread: leave now.
                os._exit(0)

        watchdog = threading.Timer(cap, report, (True,))
        watchdog.daemon = True
        watchdog.start()
        t0 = time.perf_counter()
        it = h.lazy_map(identity, (i for i in range(n)))
        count = 0
        for _ in it:
            if count == 0:
                out["first"] = (time.perf_counter() - t0) * 1000
            count += 1
            out["items"] = count
        watchdog.cancel()
        report(False)


@_case("sha256", "hashlib.sha256 of 256 KiB (releases the GIL), 2 workers",
       _EXECUTORS + ("loop",), ">= stdlib; scales with cores")
def _sha256(impl: str, scale: float) -> Iterator[Runner]:
    yield from _map_case(impl, scale, sha256_256k, 2_000, 2)


@_case("idle-cpu", "CPU of an idle 64-worker pool over ~1 s", _EXECUTORS,
       "~0% CPU", (Metric("cpu", "% of one core"),))
def _idle_cpu(impl: str, scale: float) -> Iterator[Runner]:
    window = 1.0 if scale >= 0.5 else 0.2
    with open_pool(impl, 64) as h:
        _warm_all(h, 64)
        time.sleep(0.05)  # let every worker finish spinning and park

        def run() -> Metrics:
            # process_time counts every thread of the process; the main thread sleeps.
            c0, t0 = time.process_time(), time.perf_counter()
            time.sleep(window)
            cpu, wall = time.process_time() - c0, time.perf_counter() - t0
            return {"cpu": cpu / wall * 100.0}
        yield run


@_case("pool-extras", "fastpool.Pool with stats + retry policy vs the bare executor: "
       "submit + result() of a no-op, 4 workers", ("stdlib", "fastpool", "fastpool.Pool"),
       "<= 20% slower than the bare executor (ratio >= 0.83)",
       (Metric("time", "us/task"),), baseline="fastpool", subject="fastpool.Pool")
def _pool_extras(impl: str, scale: float) -> Iterator[Runner]:
    n = _n(100_000, scale, 100)
    if impl == "fastpool.Pool":
        retry = fastpool.Retry(attempts=3)
        ctx: ContextManager[Any] = fastpool.Pool(4, retry=retry)
    else:
        ctx = IMPLEMENTATIONS[impl](4)
    with ctx as pool:
        for f in [pool.submit(noop) for _ in range(200)]:
            f.result()

        def run() -> Metrics:
            t0 = time.perf_counter()
            fs = [pool.submit(noop) for _ in range(n)]
            for f in fs:
                f.result()
            return _per_item_us(time.perf_counter() - t0, n)
        yield run


def available_cases(names: Iterable[str] | None = None) -> list[Case]:
    """The registered cases, in table order, optionally only those named."""
    if names is None:
        return list(CASES.values())
    wanted = list(names)
    unknown = [n for n in wanted if n not in CASES]
    if unknown:
        raise ValueError(f"unknown case {unknown[0]!r}, expected one of {', '.join(CASES)}")
    return [CASES[n] for n in wanted]


# -- the fallback core in a helper process ------------------------------------------------


class Remote:
    """A helper process running cases on the pure-Python fallback core.

    Protocol, one JSON line each way: ``{"open": case, "impl": impl, "scale": s}`` ->
    ``{"ok": true}``; ``{"run": true}`` -> ``{"metrics": {...}}``; ``{"close": true}``
    -> ``{"ok": true}``. Errors come back as ``{"error": "..."}``.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        full_env = dict(os.environ, FASTPOOL_NO_EXTENSIONS="1")
        full_env.update(env or {})
        self._proc = subprocess.Popen(
            _child_command("serve"), env=full_env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def _call(self, **msg: Any) -> Any:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps(msg) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the fastpool-py helper process died")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"fastpool-py: {reply['error']}")
        return reply

    @contextlib.contextmanager
    def prepare(self, case: str, scale: float) -> Iterator[Runner]:
        self._call(open=case, impl="fastpool", scale=scale)
        try:
            yield lambda: self._call(run=True)["metrics"]
        finally:
            self._call(close=True)

    def close(self) -> None:
        proc = self._proc
        if proc.stdin is not None and not proc.stdin.closed:
            proc.stdin.close()  # end of input: the helper's loop ends, it exits
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve() -> None:
    stack: contextlib.ExitStack | None = None
    run: Runner | None = None
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            if "open" in msg:
                stack = contextlib.ExitStack()
                run = stack.enter_context(CASES[msg["open"]].prepare(msg["impl"], msg["scale"]))
                reply: dict[str, Any] = {"ok": True, "native": fastpool.NATIVE}
            elif "run" in msg:
                assert run is not None, "run before open"
                reply = {"metrics": dict(run())}
            else:
                if stack is not None:
                    stack.close()
                stack = run = None
                reply = {"ok": True}
        except Exception as exc:  # sent back to the parent, which raises it
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)


# -- interleaved runs (the `fastpool bench` driver) ---------------------------------------


@dataclass
class Result:
    case: Case
    runs: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    def medians(self, key: str) -> dict[str, float]:
        return {impl: statistics.median(r[key] for r in runs)
                for impl, runs in self.runs.items() if runs}

    def stopped(self, impl: str) -> bool:
        return any(r.get("stopped") for r in self.runs.get(impl, []))


def run_interleaved(cases: list[Case], repeat: int, scale: float, fallback: bool = False,
                    on_run: Callable[[Case, str, Metrics], None] | None = None) -> list[Result]:
    """Run every (case, implementation) `repeat` times, interleaved.

    Each repetition visits every case and, within it, every implementation in a rotated
    order, so slow drifts of a shared machine (other jobs, frequency scaling) spread over
    all implementations instead of biasing the one measured last.
    """
    results = [Result(c, {i: [] for i in implementations(c, fallback)}) for c in cases]
    remote = Remote() if fallback else None
    try:
        for rep in range(repeat):
            for res in results:
                impls = list(res.runs)
                k = rep % len(impls)
                for impl in impls[k:] + impls[:k]:
                    with prepare(res.case, impl, scale, remote) as run:
                        metrics = run()
                    res.runs[impl].append(dict(metrics))
                    if on_run is not None:
                        on_run(res.case, impl, metrics)
    finally:
        if remote is not None:
            remote.close()
    return results


def implementations(case: Case, fallback: bool) -> list[str]:
    """The case's implementations, plus "fastpool-py" after "fastpool" if `fallback`."""
    impls = list(case.impls)
    if fallback and "fastpool" in impls:
        impls.insert(impls.index("fastpool") + 1, "fastpool-py")
    return impls


def prepare(case: Case, impl: str, scale: float,
            remote: Remote | None = None) -> ContextManager[Runner]:
    """`case.prepare(impl, scale)`; for "fastpool-py", through the helper process
    `remote` (cases that start their own process take the switch themselves)."""
    if impl == "fastpool-py" and not case.in_subprocess:
        if remote is None:
            raise ValueError("fastpool-py needs a Remote helper process")
        return remote.prepare(case.name, scale)
    return case.prepare(impl, scale)


def machine_info() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "fastpool": fastpool.__version__,
        "native": fastpool.NATIVE,
    }


def to_json(results: list[Result], repeat: int, scale: float) -> dict[str, Any]:
    """Machine-readable results: medians, every run, and the ratio per case and metric."""
    rows = []
    for res in results:
        for metric in res.case.metrics:
            med = res.medians(metric.key)
            rows.append({
                "case": res.case.name,
                "title": res.case.title,
                "metric": metric.key,
                "unit": metric.unit,
                "higher_is_better": metric.higher_is_better,
                "baseline": res.case.baseline,
                "subject": res.case.subject,
                "median": med,
                "runs": {impl: [r[metric.key] for r in runs] for impl, runs in res.runs.items()},
                "stopped": sorted(i for i in res.runs if res.stopped(i)),
                "ratio": res.case.ratio(metric, med),
            })
    return {"machine": machine_info(), "repeat": repeat, "scale": scale, "cases": rows}


def _once(case: str, impl: str, scale: float) -> None:
    """One run of one case on one implementation: a target for profilers."""
    with CASES[case].prepare(impl, scale) as run:
        print(json.dumps(dict(run())))


if __name__ == "__main__":
    # `once CASE IMPL SCALE` is for profiling (see benches/README.md); `serve` and
    # `generator` are the helper processes started above.
    if sys.argv[1:2] == ["once"] and len(sys.argv) == 5:
        _once(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    elif sys.argv[1:2] == ["serve"]:
        _serve()
    elif sys.argv[1:2] == ["generator"]:
        _generator_child(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    else:
        sys.exit("usage: python -m fastpool._bench once CASE IMPL SCALE | serve | "
                 "generator IMPL N CAP")
