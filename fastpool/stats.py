"""Stats: a consistent snapshot of a Pool's counters and latency percentiles."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["Stats"]

# Latency samples (one task in core.SAMPLE_EVERY, the last core.SAMPLE_WINDOW of them)
# live in the pool's core.Ledger: a fixed ring, no allocation per task; percentiles are
# computed only when stats() is called.


@dataclass(frozen=True)
class Stats:
    """Counters of one Pool, all read at the same instant (they always add up).

    Every accepted task is in exactly one of: `queued` (waiting for a worker),
    `running`, `retrying` (waiting out a retry backoff, holding no worker),
    `succeeded`, `failed`, `cancelled`, `not_started` (handed back by shutdown), so
    ``submitted == succeeded + failed + cancelled + not_started + queued + running +
    retrying`` (see `pending`). `running` counts the tasks holding a worker, including
    one whose deadline passed (its future failed) while its call has not returned yet.
    `retried` counts retry attempts, `dead_lettered` tasks sent to dead_letters,
    `rejected` submissions refused because the queue was full, `dead_letters_dropped`
    the oldest dead letters dropped by a bounded `dead_letters` (its `maxlen`).
    Latencies are seconds over the most recent tasks (None before any sample):
    `wait_*` from being queued to starting, `run_*` the time the call took.
    """

    workers: int
    idle_workers: int
    submitted: int
    queued: int
    running: int
    retrying: int
    succeeded: int
    failed: int
    cancelled: int
    not_started: int
    retried: int
    dead_lettered: int
    rejected: int
    wait_p50: float | None = None
    wait_p90: float | None = None
    wait_p99: float | None = None
    run_p50: float | None = None
    run_p90: float | None = None
    run_p99: float | None = None
    dead_letters_dropped: int = 0

    @property
    def pending(self) -> int:
        """Tasks accepted and not finished: queued + running + retrying."""
        return self.queued + self.running + self.retrying

    @property
    def still_running(self) -> int:
        return self.running

    @property
    def completed(self) -> int:
        """Tasks that reached an outcome: succeeded + failed + cancelled."""
        return self.succeeded + self.failed + self.cancelled

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def format(self) -> str:
        """A small two-column table, for logs and the end of a job."""
        rows = []
        for name, value in self.as_dict().items():
            if isinstance(value, float):
                value = f"{value * 1000:.3f} ms"
            elif value is None:
                value = "-"
            rows.append(f"{name:>14}  {value}")
        return "\n".join(rows)


def percentiles(samples: list[float], qs: tuple[float, ...] = (0.5, 0.9, 0.99)
                ) -> tuple[float | None, ...]:
    """Nearest-rank percentiles of the samples that are not NaN (unwritten ring slots)."""
    data = sorted(x for x in samples if x == x)
    if not data:
        return tuple(None for _ in qs)
    n = len(data)
    return tuple(data[min(n - 1, max(0, math.ceil(q * n) - 1))] for q in qs)

