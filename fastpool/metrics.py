"""Prometheus metrics for Pools (the `metrics` extra: pip install 'fastpool[metrics]').

    import prometheus_client
    from fastpool import Pool
    from fastpool.metrics import register

    pool = Pool(8, name="ingest")
    register(pool)                       # on prometheus_client.REGISTRY, pool="ingest"
    prometheus_client.start_http_server(9100)

or, with a server of fastpool's own (local by default, one thread, see `MetricsServer`):

    with MetricsServer(9100) as server:  # http://127.0.0.1:9100/metrics
        server.add(pool)
        ...

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

import gzip
import logging
import re
import selectors
import socket
import threading
import time
import weakref
from types import TracebackType
from typing import Callable
from urllib.parse import parse_qs

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.exposition import choose_encoder, gzip_accepted
    from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # the core depends on nothing; this module on the extra
    raise ImportError("fastpool.metrics needs prometheus-client: "
                      "pip install 'fastpool[metrics]'") from exc

from .pool import Pool
from .stats import Stats

__all__ = ["MetricsServer", "PoolCollector", "register", "unregister"]

LOGGER = logging.getLogger("fastpool")

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


# --- MetricsServer -----------------------------------------------------------------------

# The request line and headers a scraper sends fit in a few hundred bytes; more is refused
# (431) rather than buffered without end.
_MAX_REQUEST_HEAD = 16 * 1024
_HEAD_END = re.compile(rb"\r?\n\r?\n")
# Connections accepted per wake-up: a flood of connects cannot starve the ones being served.
_ACCEPT_BURST = 64
# The loop wakes at least this often (seconds): select() refuses huge timeouts, and
# idle_timeout=inf must not become one.
_MAX_WAIT = 3600.0


def _response(status: str, body: bytes = b"", *, content_type: str = "text/plain; charset=utf-8",
              headers: tuple[tuple[str, str], ...] = (), head_only: bool = False) -> bytes:
    """One complete HTTP response; every connection is closed after its response."""
    lines = [f"HTTP/1.1 {status}", f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}", "Connection: close",
             *(f"{name}: {value}" for name, value in headers)]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


_REFUSED = _response("503 Service Unavailable", b"too many connections\n")


class _Connection:
    """One accepted connection: reading its request, writing its response, then draining.

    Draining: the response is sent and our side shut down; what the client still sends is
    read and dropped until it closes. Closing at once could leave its unread bytes in our
    buffer, and the kernel would then reset the connection, which can destroy the
    response before the client reads it (the "lingering close" of HTTP servers).
    """

    __slots__ = ("sock", "deadline", "request", "reply", "draining")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.request = bytearray()
        self.reply: memoryview | None = None  # None while the request is being read
        self.draining = False


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"`{name}` must be an int, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"`{name}` must be {bounds}, got {value!r}")
    return value


class MetricsServer:
    """Serves a registry's metrics on http://HOST:PORT/metrics, from one thread.

    `MetricsServer(port=0, host="127.0.0.1", *, registry=None, max_connections=16,
    idle_timeout=10.0)` binds and starts serving at once; `close()` (or leaving a `with`
    block) frees the port and ends its thread. `add(pool)` exports a pool through it.

    Why not prometheus_client.start_http_server (or http.server): those listen on every
    interface by default, serve metrics on any path, and give each connection a thread
    for as long as the client keeps it open, so idle connections pile up threads without
    bound. Here:

    - `host` defaults to loopback: metrics tell what a process is doing, so exposing them
      is a choice (`host="0.0.0.0"`, `"::"` or `""` for every interface). IPv6 hosts work;
      `port=0` picks a free port. `.host`, `.port` and `.url` report the address bound.
    - Only `GET`/`HEAD /metrics` (a query string is allowed; `name[]=` selects families as
      in prometheus_client) is served; other paths get 404, other methods 405. The body is
      prometheus_client's exposition, negotiated as it does (`Accept` for OpenMetrics,
      `Accept-Encoding: gzip`).
    - One thread serves every connection through a selector: reading a request or writing
      a response never blocks it, so a connection costs a socket, not a thread. At most
      `max_connections` are open: a new one over the bound closes the oldest connection
      still waiting for its request (an idle client cannot lock scrapers out), or, when
      every connection is being answered, is answered 503 at once. A connection whose
      response is sent lingers until the client closes it (or it is needed: it goes first).
    - A connection is closed `idle_timeout` seconds after it was accepted if its exchange
      is not over, idle or slow alike (a scrape takes milliseconds). inf: no limit.
    - Each response closes its connection (Prometheus reconnects for each scrape).

    The metrics are encoded in the serving thread: a collector that blocks delays every
    scrape (the pools' collector only reads `pool.stats()`).

    `registry`: the `CollectorRegistry` to serve (default: a new one of this server's
    own, so it serves only what is added to it). Raises OSError (naming the address) if it
    cannot bind; importing this module raises ImportError naming the `metrics` extra when
    prometheus_client is missing.
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1", *,
                 registry: CollectorRegistry | None = None, max_connections: int = 16,
                 idle_timeout: float = 10.0) -> None:
        _check_int("port", port, 0, 65535)
        if not isinstance(host, str):
            raise TypeError(f"`host` must be a str, got {host!r}")
        self._registry = CollectorRegistry() if registry is None else _check_registry(registry)
        self._max_connections = _check_int("max_connections", max_connections, 1)
        if not isinstance(idle_timeout, (int, float)) or isinstance(idle_timeout, bool):
            raise TypeError(f"`idle_timeout` must be a number of seconds, got {idle_timeout!r}")
        if not idle_timeout > 0:  # also refuses NaN
            raise ValueError(f"`idle_timeout` must be > 0 (inf: no limit), got {idle_timeout!r}")
        self._idle_timeout = float(idle_timeout)
        self._pools: weakref.WeakSet[Pool] = weakref.WeakSet()  # added here, for close()
        self._conns: dict[socket.socket, _Connection] = {}  # in accept order = deadline order
        self._close_lock = threading.Lock()
        self._closing = False

        self._listener = self._bind(host, port)
        try:
            sockname = self._listener.getsockname()
            self._host: str = sockname[0]
            self._port: int = sockname[1]
            self._listener.setblocking(False)
            # close() wakes the loop through this pair, whatever it is waiting for.
            self._wake_recv, self._wake_send = socket.socketpair()
            self._wake_recv.setblocking(False)
            self._selector = selectors.DefaultSelector()
            self._selector.register(self._listener, selectors.EVENT_READ)
            self._selector.register(self._wake_recv, selectors.EVENT_READ)
            self._thread = threading.Thread(target=self._serve, daemon=True,
                                            name=f"fastpool-metrics-{self._port}")
            self._thread.start()
        except BaseException:
            self._listener.close()
            raise

    @staticmethod
    def _bind(host: str, port: int) -> socket.socket:
        try:
            # The first address the host resolves to ("localhost" may give ::1 or 127.0.0.1).
            family, _, _, _, address = socket.getaddrinfo(
                host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
            # "::" alone would leave IPv4 out where the system defaults to IPv6-only.
            dualstack = (family == socket.AF_INET6 and address[0] == "::"
                         and socket.has_dualstack_ipv6())
            return socket.create_server(address, family=family, backlog=128,
                                        dualstack_ipv6=dualstack)
        except OSError as exc:  # the bare errno says neither which address nor what for
            raise OSError(exc.errno, f"cannot serve metrics on host {host!r} port {port}: "
                                     f"{exc.strerror or exc}") from exc

    # -- public API ------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The address bound (e.g. "127.0.0.1", "::1"; "localhost" resolved)."""
        return self._host

    @property
    def port(self) -> int:
        """The port bound (the one picked when `port=0`)."""
        return self._port

    @property
    def url(self) -> str:
        """`http://HOST:PORT/metrics`, an IPv6 host in brackets."""
        host = self._host
        if ":" in host:
            host = "[" + host.replace("%", "%25") + "]"  # a scope id's % is escaped in URLs
        return f"http://{host}:{self._port}/metrics"

    @property
    def registry(self) -> CollectorRegistry:
        """The registry served."""
        return self._registry

    def add(self, pool: Pool, name: str | None = None) -> None:
        """Export `pool` here, labelled pool=`name` (default: its name), as `register` does
        on this server's registry; `close()` takes it out again."""
        register(pool, self._registry, name)
        self._pools.add(pool)

    def remove(self, pool: Pool) -> None:
        """Stop exporting `pool` here (ValueError if `add` did not add it)."""
        unregister(pool, self._registry)
        self._pools.discard(pool)

    def close(self) -> None:
        """Stop serving: close every connection, free the port, end the thread (idempotent).

        The pools added are taken out of the registry, so that a registry given to the
        server (prometheus_client.REGISTRY, say) can serve them again through another."""
        with self._close_lock:
            if self._closing:
                return
            self._closing = True
        try:
            self._wake_send.send(b"\0")
        except OSError:  # the pipe is full: a wake-up is pending anyway
            pass
        if threading.current_thread() is not self._thread:
            self._thread.join()
        self._wake_send.close()
        self._wake_recv.close()
        for pool in list(self._pools):
            try:
                unregister(pool, self._registry)
            except ValueError:  # taken out by hand meanwhile
                pass
        self._pools.clear()

    @property
    def closed(self) -> bool:
        return self._closing

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<MetricsServer {self.url}{' closed' if self._closing else ''}>"

    # -- the serving thread ----------------------------------------------------------

    def _serve(self) -> None:
        try:
            while not self._closing:
                wait = _MAX_WAIT
                if self._conns:  # until the oldest connection's deadline
                    oldest = next(iter(self._conns.values()))
                    wait = min(max(oldest.deadline - time.monotonic(), 0.0), _MAX_WAIT)
                for key, _ in self._selector.select(wait):
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj is self._wake_recv:
                        pass  # the loop condition says why
                    else:
                        self._ready(key.data)
                self._expire()
        finally:
            for conn in list(self._conns.values()):
                self._drop(conn)
            self._selector.close()
            self._listener.close()

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BURST):
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError:
                # Out of file descriptors, say: the listener stays readable, so pause
                # rather than spin; expiring connections will free some.
                LOGGER.warning("fastpool metrics server: accept failed", exc_info=True)
                time.sleep(0.05)
                return
            sock.setblocking(False)
            if len(self._conns) >= self._max_connections and not self._make_room():
                # Every connection is being answered: refuse this one without a thread,
                # with a 503 if its buffer takes it, after reading what it already sent
                # (unread bytes would turn the close into a reset that can lose the 503).
                try:
                    sock.recv(65536)
                except OSError:
                    pass
                try:
                    sock.send(_REFUSED)
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                sock.close()
                continue
            conn = _Connection(sock, time.monotonic() + self._idle_timeout)
            self._conns[sock] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _make_room(self) -> bool:
        """Close one connection for a new one: the oldest that has had its response, else
        the oldest still waiting for its request (an idle client must not lock scrapers
        out). False if every connection is being answered."""
        conns = self._conns.values()
        victim = (next((c for c in conns if c.draining), None)
                  or next((c for c in conns if c.reply is None), None))
        if victim is None:
            return False
        self._drop(victim)
        return True

    def _expire(self) -> None:
        now = time.monotonic()
        while self._conns:
            oldest = next(iter(self._conns.values()))
            if oldest.deadline > now:
                return
            self._drop(oldest)

    def _drop(self, conn: _Connection) -> None:
        if self._conns.pop(conn.sock, None) is None:
            return
        self._selector.unregister(conn.sock)
        conn.sock.close()

    def _ready(self, conn: _Connection) -> None:
        # An earlier event of the same round may have dropped it (to make room, say).
        if self._conns.get(conn.sock) is not conn:
            return
        try:
            self._step(conn)
        except Exception:  # a bug here must cost one connection, not the server
            LOGGER.exception("fastpool metrics server: connection failed")
            self._drop(conn)

    def _step(self, conn: _Connection) -> None:
        """Read from or write to a ready connection; never blocks."""
        try:
            if conn.draining:
                if not conn.sock.recv(65536):  # the client closed: the exchange is over
                    self._drop(conn)
                return
            if conn.reply is None:
                data = conn.sock.recv(65536)
                if not data:  # the client went away before asking
                    self._drop(conn)
                    return
                conn.request += data
                end = _HEAD_END.search(conn.request)
                if end is not None:
                    reply = self._answer(bytes(conn.request[:end.start()]))
                elif len(conn.request) > _MAX_REQUEST_HEAD:
                    reply = _response("431 Request Header Fields Too Large")
                else:
                    return
                conn.request = bytearray()
                conn.reply = memoryview(reply)
                self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
            # Written at once, usually: a response is smaller than a socket's buffer.
            sent = conn.sock.send(conn.reply)
            conn.reply = conn.reply[sent:]
            if not conn.reply:
                conn.draining = True
                conn.sock.shutdown(socket.SHUT_WR)
                self._selector.modify(conn.sock, selectors.EVENT_READ, conn)
        except (BlockingIOError, InterruptedError):
            pass  # not ready after all: the selector says when
        except OSError:  # reset by the client, say
            self._drop(conn)

    def _answer(self, head: bytes) -> bytes:
        """The response to a request's line and headers (its body, if any, is ignored)."""
        lines = head.decode("latin-1").split("\n")
        parts = lines[0].rstrip("\r").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _response("400 Bad Request", b"bad request line\n")
        method, target, _ = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.rstrip("\r").partition(":")
            if not colon or not name or name != name.strip():
                return _response("400 Bad Request", b"bad header line\n")
            key = name.lower()
            headers[key] = f"{headers[key]},{value.strip()}" if key in headers else value.strip()
        if method not in ("GET", "HEAD"):
            return _response("405 Method Not Allowed", b"GET or HEAD only\n",
                             headers=(("Allow", "GET, HEAD"),))
        path, _, query = target.partition("?")
        if path != "/metrics":
            return _response("404 Not Found", b"metrics are on /metrics\n")
        try:
            encoder, content_type = choose_encoder(headers.get("accept", ""))
            names = parse_qs(query).get("name[]")
            body = encoder(self._registry.restricted_registry(names) if names
                           else self._registry)
        except Exception:  # a failing collector: that scrape fails, the server serves on
            LOGGER.exception("fastpool metrics server: collecting the metrics failed")
            return _response("500 Internal Server Error", b"collecting the metrics failed\n")
        extra: tuple[tuple[str, str], ...] = ()
        if gzip_accepted(headers.get("accept-encoding", "")):
            body = gzip.compress(body)
            extra = (("Content-Encoding", "gzip"),)
        return _response("200 OK", body, content_type=content_type, headers=extra,
                         head_only=method == "HEAD")
