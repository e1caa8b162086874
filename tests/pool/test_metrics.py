"""fastpool.metrics: Pools scraped through prometheus_client (the `metrics` extra).

Every value is checked against pool.stats() of the same pool, after runs that make each
counter non-zero, and the exposition text is parsed back (it must be valid: one family
per name, whatever the number of pools).
"""

from __future__ import annotations

import gc
import gzip
import http.client
import math
import socket
import threading
import time
import weakref

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from fastpool import Pool, Retry, Stats
from fastpool.metrics import MetricsServer, PoolCollector, register, unregister
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
    return parse(generate_latest(registry))


def parse(exposition: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = exposition.decode()
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
    # The gate opens only once shutdown has taken the queued task back: opened before,
    # the worker could start that task first.
    reports = []
    stopper = threading.Thread(target=lambda: reports.append(pool.shutdown(cancel_futures=True)))
    stopper.start()
    wait_until(lambda: pool.stats().not_started == 1, what="the queued task handed back")
    gate.open()
    stopper.join()
    report, = reports
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
    stats = settled(pool)  # before the scrape: a worker may not be idle again yet
    assert scrape(registry) == expected("mine", stats)
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
                  "from fastpool.metrics import MetricsServer")
    assert proc.returncode != 0
    assert "pip install 'fastpool[metrics]'" in proc.stderr, proc


# --- MetricsServer: /metrics over HTTP ---------------------------------------------------
# Loopback only; every wait is bounded (client sockets time out after TIMEOUT s).

TIMEOUT = 10.0


@pytest.fixture
def serve():
    """serve(...) -> MetricsServer, closed at the end of the test."""
    servers: list[MetricsServer] = []

    def make(*args, **kwargs) -> MetricsServer:
        server = MetricsServer(*args, **kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def request(server, path="/metrics", method="GET", headers=None):
    """(status, {lowercase header: value}, body) of one request to `server`."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=TIMEOUT)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def connect(server) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=TIMEOUT)


def read_to_eof(sock: socket.socket) -> bytes:
    """What the server sends until it closes (a reset counts as a close)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def raw(server, data: bytes) -> bytes:
    with connect(server) as sock:
        sock.sendall(data)
        return read_to_eof(sock)


def closed_by_server(sock: socket.socket) -> bool:
    """Has the server closed this connection (without sending anything)? Does not wait."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.settimeout(TIMEOUT)


def test_server_binds_loopback_by_default(serve):
    server = serve()
    # The old `fastpool run --metrics-port` server bound 0.0.0.0 (every interface).
    assert server.host == "127.0.0.1"
    assert 0 < server.port < 65536  # port=0: a free one, reported
    assert server.url == f"http://127.0.0.1:{server.port}/metrics"
    assert repr(server) == f"<MetricsServer {server.url}>"
    assert request(server)[0] == 200


def test_server_ipv6(serve):
    try:
        server = serve(host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    assert server.host == "::1"
    assert server.url == f"http://[::1]:{server.port}/metrics"
    assert request(server)[0] == 200


def test_server_resolves_its_host(serve):
    server = serve(host="localhost")
    assert server.host in ("127.0.0.1", "::1")  # the address bound, not the name
    assert request(server)[0] == 200


def test_server_serves_the_pools_added(make_pool, serve):
    server = serve()
    pool = make_pool(2, name="served")
    server.add(pool)
    for f in [pool.submit(ok, i) for i in range(3)]:
        f.result(15)
    s = settled(pool)
    status, headers, body = request(server)
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert int(headers["content-length"]) == len(body)
    assert headers["connection"] == "close"
    assert parse(body) == expected("served", s)
    # HEAD: the same headers, no body.
    status, head_headers, head_body = request(server, method="HEAD")
    assert (status, head_body) == (200, b"")
    assert head_headers["content-length"] == headers["content-length"]
    # A query string is allowed; name[] selects families as prometheus_client does.
    status, _, body = request(server, "/metrics?x=1&name[]=fastpool_workers")
    assert status == 200
    assert parse(body) == {("fastpool_workers", (("pool", "served"),)): s.workers}
    server.remove(pool)
    assert b"fastpool_" not in request(server)[2]
    with pytest.raises(ValueError, match="not registered"):
        server.remove(pool)


def test_server_serves_metrics_path_only(serve):
    server = serve()
    # The old server answered any path (and any HEAD with 501).
    for path in ("/", "/metricsx", "/metrics/", "/other/metrics", "//metrics", "/favicon.ico"):
        status, _, body = request(server, path)
        assert (status, body) == (404, b"metrics are on /metrics\n"), path
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        status, headers, _ = request(server, method=method)
        assert (status, headers["allow"]) == (405, "GET, HEAD"), method


def test_server_content_negotiation(make_pool, serve):
    server = serve()
    server.add(make_pool(1, name="neg"))
    status, headers, body = request(
        server, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200
    assert headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")
    status, headers, body = request(server, headers={"Accept-Encoding": "gzip"})
    assert (status, headers["content-encoding"]) == (200, "gzip")
    assert parse(gzip.decompress(body)) == parse(request(server)[2])


def test_server_bad_requests(serve):
    server = serve()
    assert raw(server, b"nonsense\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw(server, b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n").startswith(
        b"HTTP/1.1 400 ")
    # A head that never ends is refused once too long, not buffered without end; the
    # response is not lost although the server stopped reading.
    assert raw(server, b"GET /metrics HTTP/1.1\r\nX: " + b"y" * 40000).startswith(
        b"HTTP/1.1 431 ")
    assert raw(server, b"GET /metrics HTTP/1.0\n\n").startswith(b"HTTP/1.1 200 OK\r\n")
    assert request(server)[0] == 200


def test_idle_connections_hold_no_thread(serve):
    server = serve(max_connections=16)
    assert request(server)[0] == 200
    threads = threading.active_count()
    idle = []
    try:
        for i in range(200):
            sock = connect(server)
            if i % 2:
                sock.sendall(b"GET /metrics HTTP/1.1\r\n")  # half a request
            idle.append(sock)
        # The old server: a thread per open connection (204 threads for 200).
        assert threading.active_count() == threads
        # Scrapes are served while they are open (each takes an idle one's place)...
        for _ in range(3):
            assert request(server)[0] == 200
        # ... and at most max_connections of them are kept open.
        wait_until(lambda: sum(closed_by_server(sock) for sock in idle) >= 200 - 16,
                   what="connections over the bound to be closed")
        assert threading.active_count() == threads
    finally:
        for sock in idle:
            sock.close()


class Big:
    """A collector whose exposition is far larger than the sockets' buffers."""

    def collect(self):
        yield GaugeMetricFamily("big", "x" * (16 << 20), value=1)


def test_server_refuses_promptly_when_every_connection_is_answered(serve):
    registry = CollectorRegistry()
    registry.register(Big())
    server = serve(registry=registry, max_connections=1, idle_timeout=2.0)
    threads = threading.active_count()
    # A client that reads nothing: its 16 MB response keeps the only connection busy.
    slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.settimeout(TIMEOUT)
    with slow:
        slow.connect((server.host, server.port))
        slow.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        slow.recv(1)  # the response has started
        with connect(server) as refused:
            # The old server started a thread and answered 200.
            assert read_to_eof(refused).startswith(b"HTTP/1.1 503 ")
        assert threading.active_count() == threads
        # The slow reader is cut off at idle_timeout: the connection is free again.
        wait_until(lambda: closed_by_server(slow) or raw(server, b"GET /x HTTP/1.1\r\n\r\n")
                   .startswith(b"HTTP/1.1 404 "), what="the slow reader to be cut off")


def test_idle_and_slow_connections_time_out(serve):
    server = serve(idle_timeout=0.5)
    start = time.monotonic()
    with connect(server) as idle, connect(server) as slow:
        # The slow client keeps sending, one byte at a time: it is cut off all the same.
        # (The old server kept both open, and their threads, for as long as they liked.)
        for byte in b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"y" * 200:
            try:
                slow.send(bytes([byte]))
            except OSError:
                break
            if closed_by_server(slow):
                break
            time.sleep(0.05)
        assert closed_by_server(slow)
        assert read_to_eof(idle) == b""  # closed without a word
    assert time.monotonic() - start < 0.5 + 5
    assert request(server)[0] == 200


def test_no_idle_limit(serve):
    server = serve(idle_timeout=math.inf)
    with connect(server) as idle:
        assert request(server)[0] == 200
        time.sleep(0.2)
        assert not closed_by_server(idle)


def test_server_close_frees_port_and_thread(make_pool, serve):
    registry = CollectorRegistry()
    server = MetricsServer(registry=registry)
    port = server.port
    name = f"fastpool-metrics-{port}"
    assert [t.name for t in threading.enumerate()].count(name) == 1
    pool = make_pool(1, name="closing")
    server.add(pool)
    assert registry.get_sample_value("fastpool_workers", {"pool": "closing"}) == 0
    with server, connect(server) as pending:
        assert request(server)[0] == 200
        with server:  # the context manager closes; close() again does nothing
            pass
        server.close()
        assert server.closed and repr(server).endswith(" closed>")
        assert name not in [t.name for t in threading.enumerate()]
        assert read_to_eof(pending) == b""  # open connections are closed with it
    with pytest.raises(ConnectionRefusedError):
        connect(server)
    # Its pools leave the registry with it; the port and the registry are free again.
    assert registry.get_sample_value("fastpool_workers", {"pool": "closing"}) is None
    again = serve(port, registry=registry)
    again.add(pool)
    assert again.port == port
    assert parse(request(again)[2]) == expected("closing", settled(pool))


def test_server_cannot_bind(serve):
    server = serve()
    threads = threading.active_count()
    with pytest.raises(OSError, match=f"cannot serve metrics on host '127.0.0.1' port "
                                      f"{server.port}: "):
        MetricsServer(server.port)
    with pytest.raises(OSError, match="cannot serve metrics on host '192.0.2.1'"):
        MetricsServer(host="192.0.2.1")  # TEST-NET: no interface has it
    assert threading.active_count() == threads


class Broken:
    def collect(self):
        raise RuntimeError("boom")


def test_server_survives_a_failing_collector(serve, caplog):
    registry = CollectorRegistry()
    broken = Broken()
    registry.register(broken)
    server = serve(registry=registry)
    status, _, body = request(server)
    assert (status, body) == (500, b"collecting the metrics failed\n")
    assert "collecting the metrics failed" in caplog.text and "boom" in caplog.text
    registry.unregister(broken)
    assert request(server)[0] == 200


class Witness:
    """A collector that notes which thread each scrape is collected on."""

    def __init__(self) -> None:
        self.threads: set[str] = set()

    def collect(self):
        self.threads.add(threading.current_thread().name)
        return []


def test_concurrent_scrapes(make_pool, serve):
    # Every scrape is answered, and all on the server's one thread: a server giving each
    # connection a thread would collect on many. (Not a count of live threads: other
    # threads of the process come and go meanwhile.)
    registry = CollectorRegistry()
    witness = Witness()
    registry.register(witness)
    server = serve(registry=registry, max_connections=16)
    pool = make_pool(1, name="busy")
    server.add(pool)
    results: list[int] = []

    def scrapes() -> None:
        for _ in range(25):
            status, _, body = request(server)
            results.append(status if b'fastpool_workers{pool="busy"}' in body else -status)

    clients = [threading.Thread(target=scrapes) for _ in range(8)]
    for t in clients:
        t.start()
    for t in clients:
        t.join(60)
    assert results == [200] * 200
    assert witness.threads == {f"fastpool-metrics-{server.port}"}


@pytest.mark.parametrize("kwargs, error", [
    ({"port": -1}, ValueError), ({"port": 65536}, ValueError), ({"port": True}, TypeError),
    ({"port": "9100"}, TypeError), ({"port": 9100.0}, TypeError),
    ({"host": None}, TypeError), ({"host": b"127.0.0.1"}, TypeError),
    ({"registry": object()}, TypeError),
    ({"max_connections": 0}, ValueError), ({"max_connections": 1.5}, TypeError),
    ({"max_connections": True}, TypeError),
    ({"idle_timeout": 0}, ValueError), ({"idle_timeout": -1.0}, ValueError),
    ({"idle_timeout": math.nan}, ValueError), ({"idle_timeout": True}, TypeError),
    ({"idle_timeout": "1"}, TypeError), ({"idle_timeout": None}, TypeError),
])
def test_server_bad_arguments(kwargs, error):
    threads = threading.active_count()
    with pytest.raises(error):
        MetricsServer(**kwargs)
    assert threading.active_count() == threads
