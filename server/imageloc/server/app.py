"""Builds and runs the server: store, servicer, health, reflection, graceful stop.

Imports everything else; nothing imports it but the CLI and the tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import functools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from imageloc.server.auth import redact
from imageloc.server.auth.security import Security
from imageloc.server.config import Settings
from imageloc.server.event_loop import LoopThread
from imageloc.server.glance.gateway import GlanceGateway
from imageloc.server.maintenance import Maintenance
from imageloc.server.observability import logs
from imageloc.server.observability.metrics import Metrics, MetricsEndpoint, ScrapeSources
from imageloc.server.observability.tracing import Tracing
from imageloc.server.rpc.drain import Admission
from imageloc.server.rpc.health import DrainingHealth
from imageloc.server.rpc.servicer import ImageServicer, add_to_server
from imageloc.server.rpc.store_calls import InlineCalls, LoopCalls, StoreCalls
from imageloc.server.rpc.watch import watch_handler
from imageloc.server.service import ImageService
from imageloc.server.store import SqlStore, is_embedded
from imageloc.server.store.engine import SQLITE_BUSY_TIMEOUT_MS
from imageloc.server.store.notifications import wake_on_notify
from imageloc.server.watch.feed import ChangeFeed
from imageloc.v1 import image_service_pb2 as pb

log = logging.getLogger("imageloc.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ImageService"].full_name

#: The server accepts client keepalive pings this often at most; the client libraries
#: ping every 30 s (imageloc.client.channel), well above it.
SERVER_MIN_PING_INTERVAL_MS = 10_000

#: The most request metadata (headers) the server reads; gRPC's default is 8 KiB. Raised so
#: that a token over the 8 KiB that authentication takes is refused UNAUTHENTICATED with a
#: cause, not RESOURCE_EXHAUSTED by gRPC before any of our code runs.
MAX_METADATA_BYTES = 16 * 1024

#: The largest request the server reads. gRPC refuses a larger one itself, before any of
#: our code runs: RESOURCE_EXHAUSTED without an ErrorInfo.
MAX_REQUEST_BYTES = 4 * 1024 * 1024

#: How long after gRPC's stop starts the calls held during the drain are answered: by
#: then its GOAWAY is on every connection ahead of their answers, so their clients read
#: it first and send their next calls elsewhere instead of into the closing server.
GOAWAY_SECONDS = 0.1
#: The part of the grace period kept for gRPC's stop and the process's end.
STOP_RESERVE_SECONDS = 0.5

#: How often the change feed reads the log without a wake-up (docs/api.md: WatchImages).
SQLITE_FEED_POLL_SECONDS = 0.02
POSTGRES_FEED_POLL_SECONDS = 0.25

SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
    ("grpc.max_metadata_size", MAX_METADATA_BYTES),
    ("grpc.absolute_max_metadata_size", 2 * MAX_METADATA_BYTES),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", SERVER_MIN_PING_INTERVAL_MS),
    ("grpc.http2.min_ping_interval_without_data_ms", SERVER_MIN_PING_INTERVAL_MS),
    ("grpc.http2.max_ping_strikes", 2),
]


@dataclasses.dataclass
class Server:
    """A built server and what it owns; `stop` releases all of it.

    The gRPC server is a grpc.aio one, running on an event loop thread of its own.
    """

    grpc_server: grpc.aio.Server
    port: int
    store: SqlStore
    health: DrainingHealth
    admission: Admission
    maintenance: Maintenance
    loop: LoopThread
    feed: ChangeFeed
    #: Glance's Image API v2 over HTTP, when settings.glance_listen asks for it.
    glance: GlanceGateway | None = None
    glance_listen: str = ""
    metrics: Metrics = dataclasses.field(default_factory=Metrics.disabled)
    #: Prometheus /metrics, once started, when settings.metrics_listen asks for it.
    metrics_endpoint: MetricsEndpoint | None = None
    metrics_listen: str = ""
    tracing: Tracing = dataclasses.field(default_factory=Tracing)

    def start(self) -> None:
        """Accept calls; health follows the store from now on, the feed the change log."""
        if self.metrics_listen:
            self.metrics_endpoint = self.metrics.serve(self.metrics_listen)
        self.loop.run(self._start())
        self.maintenance.start()

    async def _start(self) -> None:
        self.feed.start()
        await self.grpc_server.start()
        if self.glance is not None:
            await self.glance.start(self.glance_listen)

    def stop(self, grace: float | None, *, drain: float = 0.0) -> None:
        """Stop within grace seconds (None: at once, cancelling calls), then close the store.

        Health turns NOT_SERVING; calls are still served for `drain` seconds (within grace),
        so that balancers route away. Then new calls are held unanswered while the admitted
        ones finish; gRPC's stop starts once nothing is in flight or arriving (it cancels
        any call that reaches it unanswered), and the held calls are answered UNAVAILABLE
        once its GOAWAY is out, so that their clients send their next calls elsewhere.
        """
        deadline = time.monotonic() + (grace or 0.0)
        self.loop.run(self.health.enter_graceful_shutdown())
        self.maintenance.stop()
        if grace is None:
            if self.glance is not None:
                self.loop.run(self.glance.stop())
            self.loop.run(self.grpc_server.stop(None))
        else:
            time.sleep(max(0.0, min(drain, deadline - time.monotonic())))
            if self.glance is not None:  # its calls in flight are answered first
                self.loop.run(self.glance.stop())
            self.loop.run(self._drain(deadline))
        self.loop.run(self.feed.stop())
        self.loop.run(self.store.close_loop_connections())
        self.store.dispose()
        self.loop.close()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.stop()
            self.metrics_endpoint = None
        self.tracing.shutdown()

    async def _drain(self, deadline: float) -> None:
        self.admission.close()
        ending = asyncio.ensure_future(self._end_streams())
        # Calls still running near the end are cancelled a little before it, so that the
        # process is gone within the grace period even on a loaded machine.
        settle_by = deadline - min(STOP_RESERVE_SECONDS, (deadline - time.monotonic()) / 2)
        if not await self.admission.settle(deadline=settle_by):
            log.warning("calls still in flight at the end of the grace period are cancelled")
        stopping = asyncio.ensure_future(
            self.grpc_server.stop(max(0.0, deadline - time.monotonic()))
        )
        await asyncio.sleep(GOAWAY_SECONDS)
        self.admission.release()
        await stopping
        ending.cancel()

    async def _end_streams(self) -> None:
        """Once the calls in flight are answered, end the WatchImages streams UNAVAILABLE."""
        await self.admission.drained()
        self.feed.close_streams()


def build_server(settings: Settings) -> Server:
    """A server bound to settings.listen (port 0 picks a free one), not yet started.

    On SQLite every call runs on the event loop (InlineCalls): the store never blocks it,
    a writer's lock is waited for by retrying, and the writes of one loop turn commit
    together. On PostgreSQL every call runs in a greenlet on the loop (LoopCalls), over
    psycopg's AsyncConnection.
    """
    security = Security.from_settings(settings)
    metrics = Metrics(enabled=bool(settings.metrics_listen))
    tracing = Tracing.from_environment()
    store = SqlStore(
        settings.database_url,
        event_loop=True,
        loop_pool_size=settings.max_workers,
        on_commit_batch=metrics.commit_batch,
    )
    try:
        if store.is_embedded:
            store.upgrade()
        else:
            store.require_current_schema()
    except BaseException:
        store.dispose()
        raise
    service = ImageService(
        store.unit_of_work,
        policy=settings.location_policy,
        delayed_delete=settings.delayed_delete,
        limits=settings.record_limits,
        observer=tracing.work_observer(on_retry=metrics.unit_of_work_retried),
    )
    calls: StoreCalls = (
        InlineCalls(
            max_wait_seconds=SQLITE_BUSY_TIMEOUT_MS / 1000,
            durable=store.durable,
            on_wait=metrics.lock_waited,
        )
        if store.is_embedded
        else LoopCalls()
    )
    loop = LoopThread("imageloc-server")
    try:
        server, health_servicer, admission, port, feed = loop.run(
            _grpc_server(
                settings,
                ImageServicer(
                    service, security.authority, security.audit, metrics=metrics, tracing=tracing
                ),
                calls,
                security.credentials,
                loop.idle_seconds,
            )
        )
    except BaseException:
        loop.close()
        store.dispose()
        raise
    glance = (
        GlanceGateway(
            service,
            security.authority,
            calls,
            audit=security.audit,
            on_write=feed.wake,
            metrics=metrics,
        )
        if settings.glance_listen
        else None
    )
    maintenance = Maintenance(
        store=store,
        # Waits, so that health is set when start() returns (bounded: the loop may be busy).
        set_health=lambda name, status: loop.settle(health_servicer.set(name, status), 1.0),
        services=("", SERVICE_NAME),
        check_seconds=settings.health_check_seconds,
        prune_seconds=3600.0,
        retention=datetime.timedelta(seconds=settings.request_retention_seconds),
        change_retention=datetime.timedelta(seconds=settings.watch_retention_seconds),
    )
    verifier = security.verifier
    metrics.read_on_scrape(
        ScrapeSources(
            token_cache=None
            if verifier is None
            else lambda: (verifier.cache_hits, verifier.cache_misses),
            watch=lambda: (feed.streams, feed.lag()),
            health=health_servicer.serving,
        )
    )
    return Server(
        grpc_server=server,
        port=port,
        store=store,
        health=health_servicer,
        admission=admission,
        maintenance=maintenance,
        loop=loop,
        feed=feed,
        glance=glance,
        glance_listen=settings.glance_listen,
        metrics=metrics,
        metrics_listen=settings.metrics_listen,
        tracing=tracing,
    )


async def _grpc_server(
    settings: Settings,
    servicer: ImageServicer,
    calls: StoreCalls,
    credentials: grpc.ServerCredentials | None,
    loop_idle: Callable[[], float],
) -> tuple[grpc.aio.Server, DrainingHealth, Admission, int, ChangeFeed]:
    """The grpc.aio server, built on the loop that will run it (loop_idle: how long that
    loop has waited for work, all told); TLS with credentials."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    admission = Admission()

    async def read_changes(after: int, limit: int) -> tuple[Any, Any]:
        return await calls.run(lambda: servicer.service.changes_after(after, limit))

    embedded = is_embedded(settings.database_url)
    feed = ChangeFeed(
        read_changes,
        # SQLite's other processes are polled; PostgreSQL's replicas NOTIFY, the poll is a net.
        poll_seconds=SQLITE_FEED_POLL_SECONDS if embedded else POSTGRES_FEED_POLL_SECONDS,
        # Idle streams look at the clock four times a progress interval.
        tick_seconds=settings.watch_progress_seconds / 4,
        wakeups=None if embedded else functools.partial(wake_on_notify, settings.database_url),
        loop_idle=loop_idle,
    )
    watch = watch_handler(
        servicer, feed, read_changes, admission, progress_seconds=settings.watch_progress_seconds
    )
    add_to_server(
        servicer, server, calls, admission, streams={"WatchImages": watch}, on_write=feed.wake
    )
    health_servicer = DrainingHealth(admission)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        port = (
            server.add_insecure_port(settings.listen)
            if credentials is None
            else server.add_secure_port(settings.listen, credentials)
        )
    except RuntimeError:  # grpc's "Failed to bind": a port in use, a host not of this machine
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {settings.listen}: in use, or not an address here")
    return server, health_servicer, admission, port, feed


def serve(settings: Settings) -> NoReturn:
    """Serve until SIGTERM or SIGINT, drain in-flight calls, then end the process (status 0).

    A handler still blocked on the database when the grace period ends must neither keep
    the process alive nor commit after its caller was told UNAVAILABLE, so the process
    ends at once, its open transactions rolled back by the database, instead of waiting
    for the worker threads as a normal interpreter exit would.
    """
    logs.configure(settings.log_format)
    redact.install()  # no URL credentials nor tokens in any line of the log
    server = build_server(settings)
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info(
            "received %s: health NOT_SERVING, serving %ss more, stopped within %ss",
            signal.Signals(signum).name,
            min(settings.drain_seconds, settings.grace_seconds),
            settings.grace_seconds,
        )
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    store = _safe_url(settings.database_url)
    log.info("imageloc serving on %s, store %s", _bound(settings.listen, server.port), store)
    if server.glance is not None:
        glance = _bound(settings.glance_listen, server.glance.port)
        log.info("Glance Image API v2 on http://%s", glance)
    if server.metrics_endpoint is not None:
        metrics = _bound(settings.metrics_listen, server.metrics_endpoint.port)
        log.info("Prometheus metrics on http://%s/metrics", metrics)
    stopping.wait()
    server.stop(settings.grace_seconds, drain=settings.drain_seconds)
    log.info("imageloc stopped")
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _bound(listen: str, port: int) -> str:
    """listen's host with the port it is bound to (the one picked for port 0)."""
    return f"{listen.rsplit(':', 1)[0]}:{port}"


def _safe_url(url: str) -> str:
    """The database URL without a password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
