"""Helpers shared by the Pool test modules (tests/ is put on sys.path by conftest.py)."""

from __future__ import annotations

import threading
import time

import pytest

from fastpool import Pool, Stats

PROMPT = 15.0


def wait_until(pred, timeout: float = PROMPT, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.002)


def check_invariant(s: Stats) -> None:
    assert min(s.queued, s.running, s.retrying) >= 0, s
    assert s.submitted == (s.succeeded + s.failed + s.cancelled + s.not_started
                           + s.queued + s.running + s.retrying), s


class Gate:
    """Tasks that block until opened; `started` counts the ones that got going."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.lock = threading.Lock()
        self.started = 0

    def __call__(self, value=None):
        with self.lock:
            self.started += 1
        assert self.event.wait(PROMPT * 2), "gate never opened"
        return value

    def wait_started(self, n: int) -> None:
        wait_until(lambda: self.started >= n, what=f"{n} gated tasks to start")

    def open(self) -> None:
        self.event.set()


@pytest.fixture
def make_pool():
    """make_pool(...) -> Pool, shut down (without hanging) at the end of the test."""
    pools: list[Pool] = []
    gates: list[Gate] = []

    def make(*args, **kwargs) -> Pool:
        pool = Pool(*args, **kwargs)
        pools.append(pool)
        return pool

    make.gates = gates  # type: ignore[attr-defined]
    yield make
    for gate in gates:
        gate.open()
    for pool in pools:
        pool.shutdown(wait=True, timeout=PROMPT)


@pytest.fixture
def gate(make_pool) -> Gate:
    g = Gate()
    make_pool.gates.append(g)
    return g


def ok(x=None):
    return x


def fail(x=None):
    raise ValueError(f"bad {x}")
