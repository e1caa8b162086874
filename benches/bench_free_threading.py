"""Free-threaded CPython (3.14t, the GIL off): what scales, and what an idle pool costs.

Run on a free-threaded build, e.g.
``PYTHON_GIL=0 python -m pytest benches/bench_free_threading.py benches/bench_io.py -k "cpu"``.
Issue 10 targets: a CPU-bound pure-Python map on 2 workers ~2x serial (the `loop`
reference) and >= stdlib; a submit(...).result() loop ~100% of one core (no worker
busy-waiting beside it); an idle 64-worker pool ~0% CPU (`idle-cpu` in bench_io.py).
On a GIL build the same cases show what the GIL allows (map-cpu ~1x the loop).
"""

from __future__ import annotations

from typing import Callable

import pytest


@pytest.mark.benchmark(group="map-cpu")
def test_map_cpu_bound_2_workers(run_case: Callable[[str], None], impl: str) -> None:
    # us/item; loop / fastpool is the speed-up over serial.
    run_case(impl)


@pytest.mark.benchmark(group="seq-cpu")
def test_sequential_submit_result_cpu(run_case: Callable[[str], None], impl: str) -> None:
    # extra_info "cpu": process CPU over the loop, in % of one core.
    run_case(impl)
