"""Relay metrics: a small facade over prometheus-client, absent-safe.

Theory of operation:

* The rest of the relay calls :class:`Metrics` methods (``frame_in("Send")``,
  ``credit_refused("mailbox")``...) and never imports prometheus-client. :func:`create_metrics`
  returns :class:`PrometheusMetrics` when the optional ``metrics`` extra is installed (and
  metrics are enabled), else :class:`NullMetrics`, whose methods do nothing and whose
  :meth:`~Metrics.render` returns None (``GET /metrics`` then answers 501).
* Each app gets its **own** ``CollectorRegistry``, so several relays in one process (tests)
  never share or clash on metric names.
* A :class:`Metrics` is also a :class:`relay.ports.StoreObserver`: pass it as the store's
  ``observer`` and commit batch sizes and per-operation latencies are recorded. Both
  callbacks are thread-safe (the SQLite writer thread calls ``on_commit``).
* Gauges that describe a queue are sampled at scrape time: :meth:`Metrics.add_probe`
  registers a callable, run by :meth:`~Metrics.render`, so nothing polls between scrapes.
* Label values are bounded sets chosen by the relay (frame type names, scopes, results),
  never ids, so the series count stays bounded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = [
    "METRICS_CONTENT_TYPE",
    "Metrics",
    "NullMetrics",
    "PrometheusMetrics",
    "create_metrics",
    "prometheus_available",
]

_log = logging.getLogger("pigeon.relay.metrics")

METRICS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_PREFIX: Final = "pigeon_relay"
# Commit batches: one write at low load, hundreds under a burst (group commit).
_BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Store latency: a FULL commit is ~0.4 ms; anything above 100 ms is an incident.
_LATENCY_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
)

Probe = Callable[[], float]
BusProbe = Callable[[], Mapping[str, int]]


class Metrics(Protocol):
    """What the relay records. Every method is cheap and never raises."""

    @property
    def enabled(self) -> bool: ...

    def frame_in(self, frame_type: str) -> None: ...

    def frame_out(self, frame_type: str) -> None: ...

    def ephemeral_dropped(self, n: int = 1) -> None: ...

    def credit_refused(self, scope: str) -> None: ...

    def misbehaviour_closed(self) -> None: ...

    def connection_opened(self) -> None: ...

    def connection_closed(self) -> None: ...

    def push(self, result: str) -> None:
        """``result``: ``sent``, ``failed``, ``gone``, ``coalesced`` or ``dropped``."""
        ...

    def blob_bytes(self, direction: str, n: int) -> None:
        """``direction``: ``in`` (uploads) or ``out`` (downloads)."""
        ...

    def blob_request(self, op: str, status: int) -> None: ...

    def expired(self, what: str, n: int) -> None:
        """``what``: ``messages`` or ``blobs`` removed by an expiry sweep."""
        ...

    def add_probe(self, queue: str, probe: Probe) -> None:
        """Sample ``queue_depth{queue=...}`` from *probe* at every scrape."""
        ...

    def add_bus_stats(self, stats: BusProbe) -> None:
        """Sample ``bus{stat=...}`` from *stats* (the bus's counters and levels) at every
        scrape."""
        ...

    def on_commit(self, *, ops: int, seconds: float, ok: bool) -> None: ...

    def on_operation(self, *, name: str, seconds: float, ok: bool) -> None: ...

    def render(self) -> bytes | None:
        """The Prometheus text exposition, or None when metrics are unavailable."""
        ...

    @property
    def content_type(self) -> str:
        """The ``Content-Type`` of :meth:`render`'s output."""
        ...


class NullMetrics:
    """Records nothing (prometheus-client not installed, or metrics disabled)."""

    def __init__(self, reason: str = "metrics are disabled") -> None:
        self.reason = reason

    @property
    def enabled(self) -> bool:
        return False

    def frame_in(self, frame_type: str) -> None:
        pass

    def frame_out(self, frame_type: str) -> None:
        pass

    def ephemeral_dropped(self, n: int = 1) -> None:
        pass

    def credit_refused(self, scope: str) -> None:
        pass

    def misbehaviour_closed(self) -> None:
        pass

    def connection_opened(self) -> None:
        pass

    def connection_closed(self) -> None:
        pass

    def push(self, result: str) -> None:
        pass

    def blob_bytes(self, direction: str, n: int) -> None:
        pass

    def blob_request(self, op: str, status: int) -> None:
        pass

    def expired(self, what: str, n: int) -> None:
        pass

    def add_probe(self, queue: str, probe: Probe) -> None:
        pass

    def add_bus_stats(self, stats: BusProbe) -> None:
        pass

    def on_commit(self, *, ops: int, seconds: float, ok: bool) -> None:
        pass

    def on_operation(self, *, name: str, seconds: float, ok: bool) -> None:
        pass

    def render(self) -> bytes | None:
        return None

    @property
    def content_type(self) -> str:
        return METRICS_CONTENT_TYPE


class PrometheusMetrics:
    """Metrics on a private ``CollectorRegistry`` (see the module docstring for names)."""

    def __init__(self, *, version: str = "0") -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            Info,
        )

        self.registry: CollectorRegistry = CollectorRegistry(auto_describe=True)
        r = self.registry
        p = _PREFIX
        self._frames_in = Counter(f"{p}_frames_in", "Frames received, by type.", ["type"],
                                  registry=r)
        self._frames_out = Counter(f"{p}_frames_out", "Frames sent, by type.", ["type"],
                                   registry=r)
        self._dropped = Counter(f"{p}_ephemeral_dropped",
                                "Ephemeral signals dropped (no subscriber or full queue).",
                                registry=r)
        self._refused = Counter(f"{p}_credit_refusals",
                                "Sends refused for lack of credits, by bucket scope.",
                                ["scope"], registry=r)
        self._misbehaviour = Counter(f"{p}_misbehaviour_closes",
                                     "Connections closed for malformed or oversize frames.",
                                     registry=r)
        self._connections = Gauge(f"{p}_connections", "Open WebSocket connections.",
                                  registry=r)
        self._queue = Gauge(f"{p}_queue_depth", "Items waiting in a relay queue.", ["queue"],
                            registry=r)
        self._bus = Gauge(f"{p}_bus", "Notification bus: counts since start (published, "
                          "delivered, dropped, coalesced; with Redis also received, "
                          "publish_failures, reconnects, bad_messages...) and levels "
                          "(subscriptions, channels).", ["stat"], registry=r)
        self._bus_stats: BusProbe | None = None
        self._push = Counter(f"{p}_push_wakeups", "Push wake-ups, by result.", ["result"],
                             registry=r)
        self._blob_bytes = Counter(f"{p}_blob_bytes", "Blob bytes transferred over HTTP.",
                                   ["direction"], registry=r)
        self._blob_requests = Counter(f"{p}_blob_requests", "Blob HTTP requests.",
                                      ["op", "status"], registry=r)
        self._expired = Counter(f"{p}_expired", "Objects removed by expiry sweeps.", ["what"],
                                registry=r)
        self._batch = Histogram(f"{p}_commit_batch_size", "Writes per store transaction.",
                                buckets=_BATCH_BUCKETS, registry=r)
        self._commit_seconds = Histogram(f"{p}_commit_seconds", "Store transaction duration.",
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self._commit_failures = Counter(f"{p}_commit_failures", "Failed store transactions.",
                                        registry=r)
        self._store_seconds = Histogram(f"{p}_store_seconds",
                                        "Store call latency seen by the relay, by operation.",
                                        ["op"], buckets=_LATENCY_BUCKETS, registry=r)
        self._store_errors = Counter(f"{p}_store_errors", "Failed store calls, by operation.",
                                     ["op"], registry=r)
        Info(f"{p}_build", "Relay build information.", registry=r).info({"version": version})
        self._probes: dict[str, Probe] = {}
        self._in_children: dict[str, Counter] = {}
        self._out_children: dict[str, Counter] = {}
        self._op_children: dict[str, Histogram] = {}

    @property
    def enabled(self) -> bool:
        return True

    def frame_in(self, frame_type: str) -> None:
        # Called for every frame: keep the labelled children (labels() costs a dict
        # lookup under a lock per call).
        child = self._in_children.get(frame_type)
        if child is None:
            child = self._in_children[frame_type] = self._frames_in.labels(frame_type)
        child.inc()

    def frame_out(self, frame_type: str) -> None:
        child = self._out_children.get(frame_type)
        if child is None:
            child = self._out_children[frame_type] = self._frames_out.labels(frame_type)
        child.inc()

    def ephemeral_dropped(self, n: int = 1) -> None:
        self._dropped.inc(n)

    def credit_refused(self, scope: str) -> None:
        self._refused.labels(scope).inc()

    def misbehaviour_closed(self) -> None:
        self._misbehaviour.inc()

    def connection_opened(self) -> None:
        self._connections.inc()

    def connection_closed(self) -> None:
        self._connections.dec()

    def push(self, result: str) -> None:
        self._push.labels(result).inc()

    def blob_bytes(self, direction: str, n: int) -> None:
        self._blob_bytes.labels(direction).inc(n)

    def blob_request(self, op: str, status: int) -> None:
        self._blob_requests.labels(op, str(status)).inc()

    def expired(self, what: str, n: int) -> None:
        self._expired.labels(what).inc(n)

    def add_probe(self, queue: str, probe: Probe) -> None:
        self._probes[queue] = probe
        self._queue.labels(queue).set(0)

    def add_bus_stats(self, stats: BusProbe) -> None:
        self._bus_stats = stats

    def on_commit(self, *, ops: int, seconds: float, ok: bool) -> None:
        self._batch.observe(ops)
        self._commit_seconds.observe(seconds)
        if not ok:
            self._commit_failures.inc()

    def on_operation(self, *, name: str, seconds: float, ok: bool) -> None:
        # Called for every store call (thousands per second): keep the labelled child.
        child = self._op_children.get(name)
        if child is None:
            child = self._op_children[name] = self._store_seconds.labels(name)
        child.observe(seconds)
        if not ok:
            self._store_errors.labels(name).inc()

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        for queue, probe in self._probes.items():
            try:
                self._queue.labels(queue).set(probe())
            except Exception:  # a broken probe must not break the scrape
                _log.exception("queue probe failed", extra={"queue": queue})
        if self._bus_stats is not None:
            try:
                for stat, value in self._bus_stats().items():
                    self._bus.labels(stat).set(value)
            except Exception:
                _log.exception("bus stats failed")
        return generate_latest(self.registry)

    @property
    def content_type(self) -> str:
        from prometheus_client import CONTENT_TYPE_LATEST

        return CONTENT_TYPE_LATEST


def prometheus_available() -> bool:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def create_metrics(*, enabled: bool = True, version: str = "0") -> Metrics:
    """:class:`PrometheusMetrics` if *enabled* and prometheus-client is installed, else a
    :class:`NullMetrics` that says why."""
    if not enabled:
        return NullMetrics("metrics are disabled (--metrics 0)")
    if not prometheus_available():
        return NullMetrics(
            "prometheus-client is not installed: pip install 'pigeon-messenger[metrics]'"
        )
    return PrometheusMetrics(version=version)


def _conforms(p: PrometheusMetrics, n: NullMetrics) -> tuple[Metrics, Metrics]:  # pragma: no cover
    return p, n  # checked by mypy: both implement the facade
