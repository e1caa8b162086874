"""Pool(backend="processes") against the stdlib's ProcessPoolExecutor and a serial loop.

Issue 12 cases for the Pool on processes (the drop-in executor is bench_process.py):
- `pool-proc-submit` (2 workers), `pool-proc-submit-4w` (4): submit + result() of a
  no-op, each task its own call in a worker process (the Pool's features ride along:
  stats, retries, deadlines; quick calls are pipelined to the processes in batches),
  against the stdlib ProcessPoolExecutor (target: >= 10x);
- `pool-proc-cpu`: a CPU-bound pure-Python map (~1 ms per item, fastpool._bench.work_cpu)
  on 2 worker processes against a serial loop (target: >= 1.8x on an idle 2-core box).

Every pool runs on forkserver (spawn where there is none) and is warmed before the first
round. Per-item times go to extra_info (`time (us/item)`); ratios are read
within one run.

    pytest benches/bench_pool_processes.py --bench-scale 0.2 --bench-rounds 3
    python benches/bench_pool_processes.py [scale] [repeat]   # interleaved medians, ratios
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing as mp
import os
import statistics
import sys
import time
from typing import Any, Callable, Iterator

import pytest

import fastpool
from fastpool._bench import noop, work_cpu

WORKERS = 2
CTX = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")

# case -> (base size, implementations); the first implementation is the baseline.
CASES: dict[str, tuple[int, tuple[str, ...]]] = {
    "pool-proc-submit": (10_000, ("stdlib", "fastpool.Pool")),
    "pool-proc-submit-4w": (10_000, ("stdlib", "fastpool.Pool")),
    "pool-proc-cpu": (2_000, ("serial", "stdlib", "fastpool.Pool")),
}


def _workers(case: str) -> int:
    return 4 if case.endswith("-4w") else WORKERS


@contextlib.contextmanager
def _pool(impl: str, workers: int = WORKERS) -> Iterator[Any]:
    if impl == "serial":
        yield None
        return
    if impl == "stdlib":
        ex: Any = cf.ProcessPoolExecutor(workers, mp_context=CTX)
    else:
        ex = fastpool.Pool(workers, backend=fastpool.ProcessBackend(mp_context=CTX))
    try:
        for f in [ex.submit(noop) for _ in range(workers * 50)]:
            f.result()
        yield ex
    finally:
        ex.shutdown()


def _round(case: str, impl: str, pool: Any, n: int) -> Callable[[], float]:
    """One measured repetition of `case` on `impl`: returns seconds."""
    if case.startswith("pool-proc-submit"):
        def run() -> float:
            submit = pool.submit
            t = time.perf_counter()
            for f in [submit(noop) for _ in range(n)]:
                f.result()
            return time.perf_counter() - t
    else:
        def run() -> float:
            t = time.perf_counter()
            if impl == "serial":
                for _ in map(work_cpu, range(n)):
                    pass
            else:
                for _ in pool.map(work_cpu, range(n)):
                    pass
            return time.perf_counter() - t
    return run


def _params() -> list[Any]:
    return [pytest.param(case, impl, id=f"{case}-{impl}", marks=pytest.mark.benchmark(group=case))
            for case, (_, impls) in CASES.items() for impl in impls]


@pytest.mark.parametrize("case, pool_impl", _params())
def test_pool_processes(benchmark: Any, request: pytest.FixtureRequest, case: str,
                        pool_impl: str) -> None:
    scale = request.config.getoption("bench_scale")
    rounds = min(request.config.getoption("bench_rounds"), 5)
    base, _ = CASES[case]
    n = max(50, int(base * scale))
    times: list[float] = []
    with _pool(pool_impl, _workers(case)) as pool:
        run = _round(case, pool_impl, pool, n)
        benchmark.pedantic(lambda: times.append(run()), rounds=rounds, iterations=1,
                           warmup_rounds=0)
    benchmark.extra_info["impl"] = pool_impl
    benchmark.extra_info["items"] = n
    benchmark.extra_info["time (us/item)"] = statistics.median(times) / n * 1e6
    benchmark.extra_info["time runs"] = [t / n * 1e6 for t in times]


def main(scale: float = 0.2, repeat: int = 3) -> None:
    """Interleaved medians: every repetition visits every (case, implementation)."""
    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(repeat):
        for case, (base, impls) in CASES.items():
            for impl in impls:
                n = max(50, int(base * scale))
                with _pool(impl, _workers(case)) as pool:
                    run = _round(case, impl, pool, n)
                    samples.setdefault((case, impl), []).append(run() / n * 1e6)
    for case, (_, impls) in CASES.items():
        base = statistics.median(samples[(case, impls[0])])
        for impl in impls:
            us = statistics.median(samples[(case, impl)])
            print(f"{case:20} {impl:14} {us:10.1f} us/item  {base / us:7.2f}x {impls[0]}")
    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main(*(float(a) for a in sys.argv[1:2]), *(int(a) for a in sys.argv[2:3]))
