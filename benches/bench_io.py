"""Blocking and GIL-releasing work, and what an idle pool costs.

Issue 4 targets: 10k x time.sleep(0.001) on 64 workers >= 85% of the ideal 64k tasks/s
(64 bare threads, "threads", show what the OS timer allows); hashlib.sha256 of 256 KiB on
2 workers never slower than stdlib; an idle pool of 64 workers ~0% CPU.
"""

from __future__ import annotations

from typing import Callable

import pytest


@pytest.mark.benchmark(group="sleep")
def test_sleep_1ms_64_workers(run_case: Callable[[str], None], impl: str) -> None:
    # The % of ideal throughput of every round is in extra_info ("ideal").
    run_case(impl)


@pytest.mark.benchmark(group="sha256")
def test_sha256_2_workers(run_case: Callable[[str], None], impl: str) -> None:
    run_case(impl)


@pytest.mark.benchmark(group="idle-cpu")
def test_idle_pool_cpu(run_case: Callable[[str], None], impl: str) -> None:
    # Each round sleeps ~1 s beside an idle 64-worker pool: extra_info "cpu" is the
    # process CPU time over that window, in % of one core.
    run_case(impl)
