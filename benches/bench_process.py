"""Process pools: fastpool.ProcessPoolExecutor against the stdlib's and multiprocessing.Pool.

Issue 12 targets: submit + result() of a no-op >= 10x the stdlib ProcessPoolExecutor;
`map` of a no-op with the default chunking >= multiprocessing.Pool.imap(chunksize=256);
a CPU-bound pure-Python map on 2 workers >= 1.8x a serial loop.

Every pool has 2 workers started with forkserver (the stdlib's default before 3.14 is
fork; one start method for all keeps the comparison fair) and is warmed before the
first round. The tasks come from fastpool._bench, which the workers can import.
Per-item times go to extra_info (`time (us/item)`); ratios are read within one run.
The 2-worker CPU speed-up needs two idle cores: report `uptime`'s load with it.

    pytest benches/bench_process.py --bench-scale 0.2 --bench-rounds 3
    python benches/bench_process.py [scale] [repeat]   # interleaved medians, ratios
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
from fastpool._bench import identity, noop, work_cpu

WORKERS = 2
CTX = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")

# case -> (base size, implementations); the first implementation is the baseline.
CASES: dict[str, tuple[int, tuple[str, ...]]] = {
    "process-submit": (20_000, ("stdlib", "fastpool")),
    "process-map": (200_000, ("mp.Pool.imap-256", "stdlib-chunk256", "fastpool")),
    # ~1 ms of pure Python per item (work_cpu): the parallel speed-up, not the
    # per-item overhead (process-map measures that); 2 s serial at scale 1.
    "process-cpu": (2_000, ("serial", "stdlib", "mp.Pool.map", "fastpool")),
}


@contextlib.contextmanager
def _pool(impl: str) -> Iterator[Any]:
    if impl == "serial":
        yield None
        return
    if impl.startswith("mp.Pool"):
        pool = CTX.Pool(WORKERS)
        try:
            pool.map(noop, range(WORKERS * 4), chunksize=1)
            yield pool
        finally:
            pool.terminate()
            pool.join()
        return
    cls = fastpool.ProcessPoolExecutor if impl == "fastpool" else cf.ProcessPoolExecutor
    ex = cls(WORKERS, mp_context=CTX)
    try:
        for f in [ex.submit(noop) for _ in range(WORKERS * 50)]:
            f.result()
        yield ex
    finally:
        ex.shutdown()


def _round(case: str, impl: str, pool: Any, n: int) -> Callable[[], float]:
    """One measured repetition of `case` on `impl`: returns seconds."""
    if case == "process-submit":
        def run() -> float:
            submit = pool.submit
            t = time.perf_counter()
            for f in [submit(noop) for _ in range(n)]:
                f.result()
            return time.perf_counter() - t
    elif case == "process-map":
        def run() -> float:
            t = time.perf_counter()
            if impl == "mp.Pool.imap-256":
                for _ in pool.imap(identity, range(n), chunksize=256):
                    pass
            elif impl == "stdlib-chunk256":
                for _ in pool.map(identity, range(n), chunksize=256):
                    pass
            else:  # the default chunking
                for _ in pool.map(identity, range(n)):
                    pass
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


@pytest.mark.parametrize("case, process_impl", _params())
def test_process(benchmark: Any, request: pytest.FixtureRequest, case: str,
                 process_impl: str) -> None:
    scale = request.config.getoption("bench_scale")
    rounds = min(request.config.getoption("bench_rounds"), 5)
    base, _ = CASES[case]
    n = max(20, int(base * scale))
    times: list[float] = []
    with _pool(process_impl) as pool:
        run = _round(case, process_impl, pool, n)
        benchmark.pedantic(lambda: times.append(run()), rounds=rounds, iterations=1,
                           warmup_rounds=0)
    benchmark.extra_info["impl"] = process_impl
    benchmark.extra_info["items"] = n
    benchmark.extra_info["time (us/item)"] = statistics.median(times) / n * 1e6
    benchmark.extra_info["time runs"] = [t / n * 1e6 for t in times]


def main(scale: float = 0.2, repeat: int = 3) -> None:
    """Interleaved medians: every repetition visits every (case, implementation)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(repeat):
        for case, (base, impls) in CASES.items():
            for impl in impls:
                n = max(20, int(base * scale))
                with _pool(impl) as pool:
                    run = _round(case, impl, pool, n)
                    samples.setdefault((case, impl), []).append(run() / n * 1e6)
    for case, (_, impls) in CASES.items():
        base = statistics.median(samples[(case, impls[0])])
        for impl in impls:
            us = statistics.median(samples[(case, impl)])
            print(f"{case:15} {impl:18} {us:10.3f} us/item  {base / us:7.2f}x {impls[0]}")
    if load is not None:
        end = os.getloadavg()
        print(f"load average (1 min) before: {load[0]:.2f}, after: {end[0]:.2f} "
              f"on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main(*(float(a) for a in sys.argv[1:2]), *(int(a) for a in sys.argv[2:3]))
