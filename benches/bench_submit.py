"""Per-task overhead: submit + result(), the idle round trip, and the Pool's extras.

Issue 4 targets: submit >= 5x stdlib throughput (aim <= 2 us per task); an idle round trip
no slower than stdlib (aim <= 20 us); the Pool with stats and a retry policy <= 20% slower
than the bare executor.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import pytest

from fastpool import _bench


@pytest.mark.benchmark(group="submit")
def test_submit(run_case: Callable[[str], None], impl: str) -> None:
    run_case(impl)


@pytest.mark.benchmark(group="latency")
def test_latency(benchmark: Any, impl: str, request: pytest.FixtureRequest) -> None:
    # One round = one round trip; the untimed setup sleeps 2 ms so every worker is
    # parked again, which is the case being measured (waking an idle pool).
    if impl == "fastpool-py":
        pytest.skip("a pipe round trip to the helper process would dwarf the latency")
    rounds = max(20, int(200 * request.config.getoption("bench_scale")))
    with _bench.open_pool(impl, 4) as h:
        _bench._warm(h)
        submit, result, noop = h.submit, h.result, _bench.noop
        benchmark.pedantic(lambda: result(submit(noop)), setup=lambda: time.sleep(0.002),
                           rounds=rounds, iterations=1)
    benchmark.extra_info["impl"] = impl


@pytest.mark.benchmark(group="pool-extras")
def test_pool_extras(run_case: Callable[[str], None], impl: str) -> None:
    run_case(impl)
