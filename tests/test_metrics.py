"""fastpool.metrics: Pools scraped through prometheus_client (the `metrics` extra).

Every value is checked against pool.stats() of the same pool, after runs that make each
counter non-zero, and the exposition text is parsed back (it must be valid: one family
per name, whatever the number of pools).
"""

from __future__ import annotations

import gc
import weakref

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fastpool import Pool, Retry, Stats
from fastpool.metrics import PoolCollector, register, unregister
from pool_support import fail, gate, make_pool, ok, wait_until  # noqa: F401  (fixtures)

COUNTERS = ("submitted", "succeeded", "failed", "cancelled", "not_started", "retried",
            "dead_lettered", "rejected")
GAUGES = {"fastpool_tasks_queued": "queued", "fastpool_tasks_running": "running",
          "fastpool_tasks_retrying": "retrying", "fastpool_workers": "workers",
          "fastpool_idle_workers": "idle_workers"}
QUANTILES = {"0.5": "p50", "0.9": "p90", "0.99": "p99"}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)  # as prometheus_client.REGISTRY


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the text exposition, parsed back: {(name, labels): value}."""
    text = generate_latest(registry).decode()
    names = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(names) == len(set(names)), text  # one family per name, or Prometheus rejects it
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def expected(label: str, s: Stats) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples a pool with these stats must export."""
    out = {}
    for field in COUNTERS:
        out[(f"fastpool_tasks_{field}_total", (("pool", label),))] = getattr(s, field)
    for name, field in GAUGES.items():
        out[(name, (("pool", label),))] = getattr(s, field)
    for kind in ("wait", "run"):
        for q, suffix in QUANTILES.items():
            value = getattr(s, f"{kind}_{suffix}")
            if value is not None:
                out[(f"fastpool_task_{kind}_seconds", (("pool", label), ("quantile", q)))] = value
    return out


def settled(pool: Pool) -> Stats:
    """pool.stats() once every worker is back to idle (so a scrape sees the same)."""
    assert pool.join(15)
    wait_until(lambda: pool.stats().idle_workers == pool.stats().workers, what="idle workers")
    return pool.stats()


def test_scrape_equals_stats_with_every_outcome(make_pool, gate, registry):
    pool = make_pool(1, queue_size=1, retry=Retry(attempts=2, backoff=0, jitter=0),
                     name="jobs")
    collector = register(pool, registry)
    assert collector.pools == {"jobs": pool}
    # No task sampled yet: counters at zero, no latency series (not NaN).
    assert scrape(registry) == expected("jobs", pool.stats())
    assert registry.get_sample_value("fastpool_task_run_seconds",
                                     {"pool": "jobs", "quantile": "0.5"}) is None

    # Live gauges: one task running on the only worker, one queued, the next rejected.
    blocked = pool.submit(gate, "gated")
    gate.wait_started(1)
    queued = pool.submit(ok, "queued")
    assert pool.try_submit(ok) is None
    live = scrape(registry)
    assert live[("fastpool_tasks_running", (("pool", "jobs"),))] == 1
    assert live[("fastpool_tasks_queued", (("pool", "jobs"),))] == 1
    assert live[("fastpool_tasks_rejected_total", (("pool", "jobs"),))] == 1
    gate.open()
    assert (blocked.result(15), queued.result(15)) == ("gated", "queued")

    failures = [pool.submit(fail, i) for i in range(2)]  # retried once, then dead-lettered
    successes = [pool.submit(ok, i) for i in range(3)]
    assert [f.result(15) for f in successes] == [0, 1, 2]
    for f in failures:
        with pytest.raises(ValueError):
            f.result(15)
    s = settled(pool)
    assert (s.submitted, s.succeeded, s.failed, s.retried, s.dead_lettered, s.rejected) == \
        (7, 5, 2, 2, 2, 1)
    assert s.run_p50 is not None and s.wait_p99 is not None
    assert scrape(registry) == expected("jobs", s)
    assert registry.get_sample_value("fastpool_tasks_dead_lettered_total",
                                     {"pool": "jobs"}) == 2
    assert registry.get_sample_value("fastpool_task_run_seconds",
                                     {"pool": "jobs", "quantile": "0.99"}) == s.run_p99


def test_shutdown_counts_not_started(make_pool, gate, registry):
    pool = make_pool(1, name="stopping")
    register(pool, registry)
    pool.submit(gate)
    gate.wait_started(1)
    pool.submit(ok)
    gate.open()
    report = pool.shutdown(cancel_futures=True)
    assert len(report.not_started) == 1
    s = pool.stats()
    assert s.not_started == 1
    samples = scrape(registry)  # a shut-down pool is still exported until collected
    for key, value in expected("stopping", s).items():
        if key[0].endswith("_total"):
            assert samples[key] == value, key


def test_two_pools_share_the_registry_with_their_labels(make_pool, registry):
    a = make_pool(1, name="a")
    b = make_pool(1, name="a")  # the same pool name: told apart by name=
    collector = register(a, registry)
    with pytest.raises(ValueError, match="already collected"):
        register(b, registry)
    assert register(b, registry, name="b") is collector  # one collector per registry
    assert collector.pools == {"a": a, "b": b}
    with pytest.raises(ValueError, match="already collected"):
        register(a, registry, name="again")
    for f in [a.submit(ok) for _ in range(2)] + [b.submit(ok) for _ in range(3)]:
        f.result(15)
    sa, sb = settled(a), settled(b)
    assert scrape(registry) == {**expected("a", sa), **expected("b", sb)}
    assert registry.get_sample_value("fastpool_tasks_submitted_total", {"pool": "a"}) == 2
    assert registry.get_sample_value("fastpool_tasks_submitted_total", {"pool": "b"}) == 3
    # Why register() shares: a second collector emitting the same names is refused.
    with pytest.raises(ValueError, match="Duplicated"):
        registry.register(PoolCollector(make_pool(1), name="c"))


def test_collected_pool_disappears(make_pool, registry):
    keep = make_pool(1, name="kept")
    pool = Pool(1, name="gone")  # not make_pool's: that would keep it alive
    try:
        collector = register(pool, registry)
        register(keep, registry)
        pool.submit(ok).result(15)
        assert registry.get_sample_value("fastpool_tasks_submitted_total", {"pool": "gone"}) == 1
    finally:
        pool.shutdown()
    ref = weakref.ref(pool)
    del pool
    gc.collect()
    assert ref() is None  # the collector did not keep it alive
    assert list(collector.pools) == ["kept"]
    assert registry.get_sample_value("fastpool_tasks_submitted_total", {"pool": "gone"}) is None
    assert b'pool="gone"' not in generate_latest(registry)
    assert registry.get_sample_value("fastpool_workers", {"pool": "kept"}) == 0
    # Its label is free again.
    register(make_pool(1, name="gone"), registry)
    assert registry.get_sample_value("fastpool_tasks_submitted_total", {"pool": "gone"}) == 0


def test_unregister(make_pool, registry):
    a, b = make_pool(1, name="a"), make_pool(1, name="b")
    register(a, registry)
    register(b, registry)
    unregister(a, registry)
    assert registry.get_sample_value("fastpool_tasks_submitted_total", {"pool": "a"}) is None
    assert registry.get_sample_value("fastpool_tasks_submitted_total", {"pool": "b"}) == 0
    with pytest.raises(ValueError, match="not collected"):
        unregister(a, registry)
    unregister(b, registry)  # the last pool: the collector leaves the registry
    assert b"fastpool_" not in generate_latest(registry)
    with pytest.raises(ValueError, match="not registered"):
        unregister(b, registry)
    register(a, registry)  # and a new one can be registered
    assert registry.get_sample_value("fastpool_tasks_submitted_total", {"pool": "a"}) == 0
    unregister(a, registry)


def test_default_registry(make_pool):
    from prometheus_client import REGISTRY

    pool = make_pool(1, name="fastpool-test-default-registry")
    register(pool)
    try:
        assert REGISTRY.get_sample_value("fastpool_workers", {"pool": pool._name}) == 0
    finally:
        unregister(pool)
    assert REGISTRY.get_sample_value("fastpool_workers", {"pool": pool._name}) is None


def test_collector_used_directly(make_pool, registry):
    pool = make_pool(2, name="direct")
    collector = PoolCollector(pool, name="mine")
    registry.register(collector)
    pool.submit(ok).result(15)
    assert scrape(registry) == expected("mine", settled(pool))
    collector.remove(pool)
    assert b"fastpool_" not in generate_latest(registry)
    with pytest.raises(ValueError, match="not collected"):
        collector.remove(pool)
    collector.add(pool)
    assert collector.pools == {"direct": pool}
    registry.unregister(collector)


@pytest.mark.parametrize("call, error, match", [
    (lambda reg, pool: register(object(), reg), TypeError, "`pool` must be a fastpool.Pool"),
    (lambda reg, pool: register(None, reg), TypeError, "`pool` must be a fastpool.Pool"),
    (lambda reg, pool: register(pool, object()), TypeError, "`registry` must be"),
    (lambda reg, pool: register(pool, reg, name=3), TypeError, "`name` must be a str"),
    (lambda reg, pool: register(pool, reg, name=""), ValueError, "must not be empty"),
    (lambda reg, pool: unregister("pool", reg), TypeError, "`pool` must be a fastpool.Pool"),
    (lambda reg, pool: unregister(pool, None), TypeError, "`registry` must be"),
    (lambda reg, pool: PoolCollector("pool"), TypeError, "`pool` must be a fastpool.Pool"),
    (lambda reg, pool: PoolCollector(name="x"), TypeError, "without a pool"),
    (lambda reg, pool: PoolCollector().remove(1), TypeError, "`pool` must be a fastpool.Pool"),
])
def test_bad_arguments(make_pool, registry, call, error, match):
    pool = make_pool(1)
    with pytest.raises(error, match=match):
        call(registry, pool)
    # Nothing was registered by the failed call.
    assert b"fastpool_" not in generate_latest(registry)
    register(pool, registry)
    assert registry.get_sample_value("fastpool_workers", {"pool": "fastpool"}) == 0


def test_import_fastpool_does_not_import_prometheus(run_py):
    proc = run_py("import sys, fastpool; assert 'prometheus_client' not in sys.modules")
    assert proc.returncode == 0, proc


def test_missing_extra_names_it(run_py):
    proc = run_py("import sys; sys.modules['prometheus_client'] = None\n"
                  "import fastpool.metrics")
    assert proc.returncode != 0
    assert "pip install 'fastpool[metrics]'" in proc.stderr, proc
