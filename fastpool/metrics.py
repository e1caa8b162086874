"""Prometheus metrics for Pools (the `metrics` extra: pip install 'fastpool[metrics]').

    import prometheus_client
    from fastpool import Pool
    from fastpool.metrics import register

    pool = Pool(8, name="ingest")
    register(pool)                       # on prometheus_client.REGISTRY, pool="ingest"
    prometheus_client.start_http_server(9100)

A `PoolCollector` is a custom collector: it calls `pool.stats()` for each of its pools
when scraped, so there is no background thread and no cost per task, and every scrape
shows one consistent snapshot per pool (its counters add up, see `fastpool.Stats`).
Pools are held weakly: a pool that is garbage-collected drops out of the next scrape.

A registry refuses two collectors emitting the same metric names, so all the pools
exported through one registry share one collector: `register` adds the pool to the
registry's fastpool collector (creating it on first use) and `unregister` takes it out.

Metrics, each labelled `pool` (the pool's `name=`, or the `name` given here):

- counters `fastpool_tasks_{submitted,succeeded,failed,cancelled,not_started,retried,
  dead_lettered,rejected}_total`;
- gauges `fastpool_tasks_{queued,running,retrying}`, `fastpool_workers` (live worker
  threads), `fastpool_idle_workers`;
- gauges `fastpool_task_{wait,run}_seconds{quantile="0.5"|"0.9"|"0.99"}`: percentiles
  over the pool's most recent tasks (a window, not a time-decayed summary), absent until
  a task has been sampled.
"""

from __future__ import annotations

import threading
import weakref
from typing import Callable

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # the core depends on nothing; this module on the extra
    raise ImportError("fastpool.metrics needs prometheus-client: "
                      "pip install 'fastpool[metrics]'") from exc

from .pool import Pool
from .stats import Stats

__all__ = ["PoolCollector", "register", "unregister"]

_COUNTERS = (
    # (Stats field, help)
    ("submitted", "Tasks accepted by the pool."),
    ("succeeded", "Tasks that returned a result."),
    ("failed", "Tasks that raised after their last attempt."),
    ("cancelled", "Tasks cancelled before they finished."),
    ("not_started", "Tasks handed back unstarted by shutdown."),
    ("retried", "Retry attempts."),
    ("dead_lettered", "Tasks sent to the pool's dead letters."),
    ("rejected", "Submissions refused because the queue was full."),
)
_GAUGES = (
    # (metric name, Stats field, help)
    ("fastpool_tasks_queued", "queued", "Tasks waiting for a worker."),
    ("fastpool_tasks_running", "running", "Tasks running now."),
    ("fastpool_tasks_retrying", "retrying", "Tasks waiting out a retry backoff."),
    ("fastpool_workers", "workers", "Live worker threads."),
    ("fastpool_idle_workers", "idle_workers", "Worker threads waiting for a task."),
)
_LATENCIES = (
    # (metric name, Stats field prefix, help)
    ("fastpool_task_wait_seconds", "wait",
     "Time from being queued to starting, percentiles over the most recent tasks."),
    ("fastpool_task_run_seconds", "run",
     "Time a task's call took, percentiles over the most recent tasks."),
)
_QUANTILES = (("0.5", "p50"), ("0.9", "p90"), ("0.99", "p99"))


def _families() -> tuple[list[Metric], Callable[[str, Stats], None]]:
    """Empty metric families, and a function adding one pool's samples to them."""
    counters = [CounterMetricFamily(f"fastpool_tasks_{field}", doc, labels=["pool"])
                for field, doc in _COUNTERS]
    gauges = [GaugeMetricFamily(name, doc, labels=["pool"]) for name, _, doc in _GAUGES]
    latencies = [GaugeMetricFamily(name, doc, labels=["pool", "quantile"])
                 for name, _, doc in _LATENCIES]

    def add(label: str, s: Stats) -> None:
        for counter, (field, _) in zip(counters, _COUNTERS):
            counter.add_metric([label], getattr(s, field))
        for gauge, (_, field, _) in zip(gauges, _GAUGES):
            gauge.add_metric([label], getattr(s, field))
        for latency, (_, prefix, _) in zip(latencies, _LATENCIES):
            for quantile, suffix in _QUANTILES:
                value = getattr(s, f"{prefix}_{suffix}")
                # None = no sample yet: no series, rather than a NaN alerts would trip on.
                if value is not None:
                    latency.add_metric([label, quantile], value)

    families: list[Metric] = [*counters, *gauges, *latencies]
    return families, add


def _check_pool(pool: object) -> Pool:
    if not isinstance(pool, Pool):
        raise TypeError(f"`pool` must be a fastpool.Pool, got {pool!r}")
    return pool


# Collector is an ABC in older prometheus_client and a Protocol in newer ones: subclassing
# it type-checks against both.
class PoolCollector(Collector):
    """A prometheus_client collector of one or more Pools (see the module docstring).

    `PoolCollector(pool, name=None)` collects `pool` (if given) labelled `name` (default:
    the pool's own name); `add` and `remove` change the pools later. Register it yourself
    (`registry.register(collector)`), or use `register()`, which shares one collector
    per registry.
    """

    def __init__(self, pool: Pool | None = None, name: str | None = None) -> None:
        self._lock = threading.Lock()
        # Weak keys: the collector never keeps a pool alive.
        self._pools: weakref.WeakKeyDictionary[Pool, str] = weakref.WeakKeyDictionary()
        if pool is not None:
            self.add(pool, name)
        elif name is not None:
            raise TypeError("`name` is given without a pool")

    def add(self, pool: Pool, name: str | None = None) -> None:
        """Collect `pool`, labelled pool=`name` (default: the pool's name).

        Two live pools cannot share a label (their series would collide): ValueError."""
        _check_pool(pool)
        if name is None:
            name = pool.name
        elif not isinstance(name, str):
            raise TypeError(f"`name` must be a str or None, got {name!r}")
        if not name:
            raise ValueError("the pool label must not be empty (pass name=)")
        with self._lock:
            if pool in self._pools:
                raise ValueError(f"this pool is already collected, as {self._pools[pool]!r}")
            if name in self._pools.values():
                raise ValueError(f"a pool labelled {name!r} is already collected: give "
                                 f"each pool its own name (Pool(name=...) or name=)")
            self._pools[pool] = name

    def remove(self, pool: Pool) -> None:
        """Stop collecting `pool` (ValueError if it is not collected here)."""
        _check_pool(pool)
        with self._lock:
            if self._pools.pop(pool, None) is None:
                raise ValueError("this pool is not collected here")

    @property
    def pools(self) -> dict[str, Pool]:
        """The live pools collected, by label."""
        with self._lock:
            return {label: pool for pool, label in self._pools.items()}

    def describe(self) -> list[Metric]:
        # The names only: what the registry checks for clashes when registering.
        return _families()[0]

    def collect(self) -> list[Metric]:
        with self._lock:
            pools = sorted(self._pools.items(), key=lambda item: item[1])
        if not pools:
            return []
        families, add = _families()
        for pool, label in pools:
            add(label, pool.stats())
        return families


_shared_lock = threading.Lock()
_shared: weakref.WeakKeyDictionary[CollectorRegistry, PoolCollector] = (
    weakref.WeakKeyDictionary())


def _check_registry(registry: object) -> CollectorRegistry:
    if not isinstance(registry, CollectorRegistry):
        raise TypeError(f"`registry` must be a prometheus_client.CollectorRegistry, "
                        f"got {registry!r}")
    return registry


def register(pool: Pool, registry: CollectorRegistry = REGISTRY,
             name: str | None = None) -> PoolCollector:
    """Export `pool`'s stats through `registry`, labelled pool=`name` (default: its name).

    Returns the registry's fastpool collector (shared by the pools registered there).
    Undo with `unregister(pool, registry)`, not `registry.unregister(collector)`: that
    would drop every pool of the registry, and later `register` calls would add pools
    to a collector no longer scraped."""
    _check_pool(pool)
    _check_registry(registry)
    with _shared_lock:
        collector = _shared.get(registry)
        if collector is None:
            collector = PoolCollector()
            collector.add(pool, name)  # bad arguments fail before the registry is touched
            registry.register(collector)
            _shared[registry] = collector
        else:
            collector.add(pool, name)
        return collector


def unregister(pool: Pool, registry: CollectorRegistry = REGISTRY) -> None:
    """Stop exporting `pool` through `registry` (ValueError if `register` did not add it).

    The registry's fastpool collector is unregistered with its last pool."""
    _check_pool(pool)
    _check_registry(registry)
    with _shared_lock:
        collector = _shared.get(registry)
        if collector is None:
            raise ValueError("this pool is not registered with this registry")
        collector.remove(pool)
        if not collector.pools:
            registry.unregister(collector)
            del _shared[registry]
