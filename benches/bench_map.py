"""map: per-item overhead, GIL-bound work, chunking, and a lazy map over a generator.

Issue 4 targets: map of a no-op >= 150x stdlib and within 2x of a bare loop (no slower
than multiprocessing.pool.ThreadPool.map, which is eager); a ~5 us pure-Python function
on 2 workers >= 90% of the bare loop's throughput; chunksize=64 >= 10x stdlib; a map
over a 1M-item generator with <= 50 MB peak RSS growth and its first result within 50 ms.
"""

from __future__ import annotations

from typing import Callable

import pytest


@pytest.mark.benchmark(group="map")
def test_map_noop(run_case: Callable[[str], None], impl: str) -> None:
    run_case(impl)


@pytest.mark.benchmark(group="map-5us")
def test_map_5us(run_case: Callable[[str], None], impl: str) -> None:
    run_case(impl)


@pytest.mark.benchmark(group="map-chunk64")
def test_map_chunksize_64(run_case: Callable[[str], None], impl: str) -> None:
    run_case(impl)


@pytest.mark.benchmark(group="generator")
def test_map_generator_1m(run_case: Callable[[str], None], impl: str) -> None:
    # Timed: a fresh process per round (its start-up included). What matters is in
    # extra_info: "first (ms to 1st result)" and "rss (MB peak RSS growth)".
    run_case(impl)
