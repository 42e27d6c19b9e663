"""One server's Prometheus metrics: the instruments, what is read at each scrape, and /metrics.

Imports prometheus_client and the standard library. The adapters call its methods; the
domain and the service never see it. Labels are bounded: methods, codes, reasons, causes,
kinds; never an image id, a URL, a principal or a request id.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# No `_created` series beside every counter: dashboards do not read them, scrapes carry less.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: The labels of the gRPC server metrics, as go-grpc-prometheus and py-grpc-prometheus name
#: them, so that their dashboards read these.
GRPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")

#: Call durations: imageloc's calls take well under a millisecond to seconds.
SECONDS_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

#: Units of work one SQLite group commit makes durable.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclasses.dataclass(frozen=True)
class ScrapeSources:
    """What the metrics read when scraped rather than on every call (no cost until then).

    token_cache: the token cache's (hits, misses) so far; watch: the change feed's open
    streams and how many revisions the slowest is behind the newest; health: each health
    service name and whether it is SERVING.
    """

    token_cache: Callable[[], tuple[int, int]] | None = None
    watch: Callable[[], tuple[int, int]] | None = None
    health: Callable[[], Mapping[str, bool]] | None = None


class RpcMetrics:
    """One RPC's instruments, bound to its labels once (a call pays only the updates)."""

    def __init__(self, metrics: Metrics, service: str, method: str, grpc_type: str) -> None:
        labels = (grpc_type, service, method)
        self._handled = metrics._handled
        self._labels = labels
        self._started = metrics._started.labels(*labels)
        self._seconds = metrics._seconds.labels(*labels)
        self._sent = metrics._sent.labels(*labels)
        self._received = metrics._received.labels(*labels)
        self._by_code: dict[str, Any] = {}

    def started(self) -> None:
        """A call of this RPC began."""
        self._started.inc()

    def handled(self, code: str, seconds: float) -> None:
        """A call ended with code (a grpc.StatusCode name such as OK) after seconds."""
        counter = self._by_code.get(code)
        if counter is None:
            counter = self._by_code[code] = self._handled.labels(*self._labels, code)
        counter.inc()
        self._seconds.observe(seconds)

    def received(self) -> None:
        """The call read a request message."""
        self._received.inc()

    def sent(self) -> None:
        """The call wrote a response message."""
        self._sent.inc()


class _NoRpcMetrics(RpcMetrics):
    """RpcMetrics of a server without metrics: every update is a no-op."""

    def __init__(self) -> None:
        pass

    def started(self) -> None:
        pass

    def handled(self, code: str, seconds: float) -> None:
        pass

    def received(self) -> None:
        pass

    def sent(self) -> None:
        pass


class Metrics:
    """Every instrument of one server, in a registry of its own (servers in one process,
    as in the tests, do not add up). Metrics(enabled=False) records nothing and costs a
    method call per update."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.registry = CollectorRegistry()
        registry = self.registry
        self._rpcs: dict[tuple[str, str], RpcMetrics] = {}
        self._sources = ScrapeSources()
        self._started = Counter(
            "grpc_server_started_total", "RPCs started on the server.", GRPC_LABELS,
            registry=registry,
        )  # fmt: skip
        self._handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, whatever their outcome (grpc_code).",
            (*GRPC_LABELS, "grpc_code"),
            registry=registry,
        )
        self._seconds = Histogram(
            "grpc_server_handling_seconds",
            "How long the server took to answer an RPC (a stream: until it ended).",
            GRPC_LABELS,
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self._received = Counter(
            "grpc_server_msg_received_total", "RPC messages received by the server.",
            GRPC_LABELS, registry=registry,
        )  # fmt: skip
        self._sent = Counter(
            "grpc_server_msg_sent_total", "RPC messages sent by the server.",
            GRPC_LABELS, registry=registry,
        )  # fmt: skip
        self._refusals = Counter(
            "imageloc_refusals_total",
            "Calls refused, gRPC and HTTP alike, by ErrorInfo reason (docs/errors.md).",
            ("reason",),
            registry=registry,
        )
        self._store_errors = Counter(
            "imageloc_store_errors_total",
            "Calls the store failed: unavailable, deadline, contention (writes kept losing"
            " races) or internal.",
            ("kind",),
            registry=registry,
        )
        self._retries = Counter(
            "imageloc_unit_of_work_retries_total",
            "Units of work run again after losing a race to another writer.",
            registry=registry,
        )
        self._lock_waits = Histogram(
            "imageloc_store_lock_wait_seconds",
            "How long a call waited for SQLite's write lock, held by another process.",
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self._batch = Histogram(
            "imageloc_store_commit_batch_size",
            "Units of work one SQLite group commit made durable.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self._auth_failures = Counter(
            "imageloc_auth_failures_total",
            "Calls refused UNAUTHENTICATED, by cause (missing, expired, bad_signature...).",
            ("cause",),
            registry=registry,
        )
        self._events = Counter(
            "imageloc_watch_events_sent_total",
            "Image events WatchImages streams sent.",
            registry=registry,
        )
        self._too_slow = Counter(
            "imageloc_watch_slow_disconnects_total",
            "WatchImages streams ended WATCHER_TOO_SLOW: they fell behind the feed's memory.",
            registry=registry,
        )
        self._http = Counter(
            "imageloc_http_requests_total",
            "Requests to the Glance Image API endpoint, by route template and status.",
            ("method", "route", "code"),
            registry=registry,
        )
        self._http_seconds = Histogram(
            "imageloc_http_request_seconds",
            "How long the Glance Image API endpoint took to answer, by route template.",
            ("method", "route"),
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        registry.register(_Scraped(lambda: self._sources))

    @classmethod
    def disabled(cls) -> Metrics:
        """Metrics that record nothing: a server without --metrics-listen."""
        return cls(enabled=False)

    def read_on_scrape(self, sources: ScrapeSources) -> None:
        """Read these at every scrape (each once the part it reads exists)."""
        self._sources = sources

    def rpc(self, service: str, method: str, *, streaming: bool = False) -> RpcMetrics:
        """The instruments of one RPC of service (bind them once, where the handler is made)."""
        if not self.enabled:
            return _NO_RPC_METRICS
        grpc_type = "server_stream" if streaming else "unary"
        key = (service, method)
        if key not in self._rpcs:
            self._rpcs[key] = RpcMetrics(self, service, method, grpc_type)
        return self._rpcs[key]

    def refused(self, reason: str) -> None:
        """A call was refused with this ErrorInfo reason."""
        if self.enabled:
            self._refusals.labels(reason).inc()

    def store_error(self, kind: str) -> None:
        """A call failed in the store: unavailable, deadline, contention or internal."""
        if self.enabled:
            self._store_errors.labels(kind).inc()

    def auth_failed(self, cause: str) -> None:
        """A call's credentials did not authenticate it, for cause."""
        if self.enabled:
            self._auth_failures.labels(cause).inc()

    def unit_of_work_retried(self) -> None:
        """A unit of work lost a race and runs again."""
        if self.enabled:
            self._retries.inc()

    def lock_waited(self, seconds: float) -> None:
        """A call waited this long for SQLite's write lock."""
        if self.enabled:
            self._lock_waits.observe(seconds)

    def commit_batch(self, size: int) -> None:
        """A group commit made size units of work durable."""
        if self.enabled:
            self._batch.observe(size)

    def watch_sent(self, events: int) -> None:
        """A WatchImages stream sent a response of this many events."""
        if self.enabled and events:
            self._events.inc(events)

    def watch_too_slow(self) -> None:
        """A WatchImages stream was ended WATCHER_TOO_SLOW."""
        if self.enabled:
            self._too_slow.inc()

    def http_request(self, *, method: str, route: str, code: int, seconds: float) -> None:
        """The Glance endpoint answered a request to route (its template) with code."""
        if self.enabled:
            self._http.labels(method, route, str(code)).inc()
            self._http_seconds.labels(method, route).observe(seconds)

    def serve(self, listen: str) -> MetricsEndpoint:
        """Serve /metrics on host:port (port 0: a free one), in a thread of its own."""
        host, _, port = listen.rpartition(":")
        try:
            server, thread = start_http_server(
                int(port), addr=host.strip("[]") or "127.0.0.1", registry=self.registry
            )
        except (OSError, ValueError) as error:
            raise OSError(f"cannot listen on {listen} (--metrics-listen): {error}") from error
        return MetricsEndpoint(server, thread)


_NO_RPC_METRICS = _NoRpcMetrics()


class MetricsEndpoint:
    """The running /metrics server; stop() closes it."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.port: int = server.server_port

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _Scraped(Collector):
    """The metrics read at scrape time, from the sources the server registered."""

    def __init__(self, sources: Callable[[], ScrapeSources]) -> None:
        self._sources = sources

    def describe(self) -> list[Metric]:
        return []  # unchecked names: they are ours, and fixed

    def collect(self) -> Iterator[Metric]:
        sources = self._sources()
        if sources.token_cache is not None:
            hits, misses = sources.token_cache()
            yield _counter("imageloc_token_cache_hits", "Tokens verified from the cache.", hits)
            yield _counter(
                "imageloc_token_cache_misses", "Tokens verified by their signature.", misses
            )
        if sources.watch is not None:
            streams, lag = sources.watch()
            yield GaugeMetricFamily(
                "imageloc_watch_streams", "WatchImages streams open.", value=streams
            )
            yield GaugeMetricFamily(
                "imageloc_watch_lag_revisions",
                "How many revisions the slowest open WatchImages stream is behind the newest"
                " this process has read (0 with no stream open).",
                value=lag,
            )
        if sources.health is not None:
            serving = GaugeMetricFamily(
                "imageloc_health_serving",
                "1 while the health service reports SERVING, 0 otherwise (NOT_SERVING).",
                labels=("service",),
            )
            for name, up in sorted(sources.health().items()):
                serving.add_metric((name or "(server)",), 1.0 if up else 0.0)
            yield serving


def _counter(name: str, documentation: str, value: int) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)
