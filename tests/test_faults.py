"""The database going away: calls fail fast UNAVAILABLE, health NOT_SERVING; both recover alone.

PostgreSQL only, reached through a loopback TCP proxy the test cuts and restores; SQLite is
embedded in the server process, so there is no connection to lose.
"""

from __future__ import annotations

import contextlib
import pathlib
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import create_engine, make_url, text

from imageloc.v1 import image_service_pb2 as pb
from imageloc.v1 import image_service_pb2_grpc as pb_grpc

from processes import ServerProcess, start_server
from support import (
    POSTGRES_URL,
    POSTGRESQL_ONLY,
    fresh_database,
    location,
    make_image,
    migrate,
    refusal_of,
)

SERVICE_NAME = "imageloc.v1.ImageService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

#: The server checks the store this often, so health turns within a fraction of a second.
HEALTH_CHECK_SECONDS = 0.2
#: A refusal must come this fast: the engine's connect (3 s) and pool (5 s) timeouts bound it.
FAIL_FAST_SECONDS = 5.0
#: The client's deadline, well above FAIL_FAST_SECONDS: the server must not need it to answer.
CALL_TIMEOUT = 30.0
#: How long health may take to follow the store, either way.
HEALTH_TURN_SECONDS = 5.0

#: How often the proxy's threads look up from a blocking wait.
POLL_SECONDS = 0.05
CHUNK = 65536


class TcpProxy:
    """Forwards connections on a loopback port to upstream, until cut or stalled.

    cut(): every connection is closed and new ones refused, as when the database goes away.
    stall(): connections stay open but no byte gets through, as when the database hangs.
    restore() undoes either on the same port. Every thread ends once close() is called.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self._upstream = upstream
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._stalled = threading.Event()
        self._closed = threading.Event()
        self.port = 0
        self._listen()

    def cut(self) -> None:
        """Close every connection and refuse new ones."""
        self._close_listener()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def stall(self) -> None:
        """Keep connections open, and accept new ones, but forward nothing."""
        self._stalled.set()

    def restore(self) -> None:
        """Forward again, on the same port."""
        self._stalled.clear()
        if self._listener is None:
            self._listen()

    def close(self) -> None:
        """Stop for good: close the port and every connection; the threads end."""
        self._closed.set()
        self._stalled.clear()
        self.cut()

    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # The old listener may linger a moment in the accept thread's poll: retry, bounded.
        for attempt in range(int(1 / POLL_SECONDS), -1, -1):
            try:
                listener.bind(("127.0.0.1", self.port))
                break
            except OSError:
                if not attempt:
                    listener.close()
                    raise
                time.sleep(POLL_SECONDS)
        listener.listen(64)
        listener.settimeout(POLL_SECONDS)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # stops listening now, unlike close alone
            listener.close()

    def _accept(self, listener: socket.socket) -> None:
        while not self._closed.is_set():  # and until the listener is closed
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._upstream, timeout=FAIL_FAST_SECONDS)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._connections |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(client, selectors.EVENT_READ, upstream)
                selector.register(upstream, selectors.EVENT_READ, client)
                while not self._closed.is_set():  # and until either side closes
                    if self._stalled.is_set():
                        self._closed.wait(POLL_SECONDS)
                        continue
                    for key, _ in selector.select(POLL_SECONDS):
                        data = key.fileobj.recv(CHUNK)  # type: ignore[union-attr]
                        if not data:
                            return
                        key.data.sendall(data)
        except OSError:
            return
        finally:
            with self._lock:
                self._connections -= {client, upstream}
            client.close()
            upstream.close()


@pytest.fixture(params=POSTGRESQL_ONLY)
def postgres_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[str]:
    """A migrated PostgreSQL schema of the test's own (SQLite, embedded, has no link to cut)."""
    with fresh_database(request.param, tmp_path) as url:
        migrate(url)
        yield url


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    """A proxy to the PostgreSQL server of IMAGELOC_TEST_POSTGRES_URL."""
    upstream = make_url(POSTGRES_URL)
    started = TcpProxy((upstream.host or "127.0.0.1", upstream.port or 5432))
    yield started
    started.close()


@pytest.fixture
def server(postgres_url: str, proxy: TcpProxy) -> Iterator[ServerProcess]:
    """`imageloc serve` on the test's schema through the proxy, checking the store often."""
    proxied = make_url(postgres_url).set(host="127.0.0.1", port=proxy.port)
    started = start_server(
        proxied.render_as_string(hide_password=False),
        env={"IMAGELOC_HEALTH_CHECK_SECONDS": str(HEALTH_CHECK_SECONDS)},
    )
    yield started
    proxy.restore()
    assert started.stop() == 0, started.stderr()


def health_status(channel: grpc.Channel, service: str = "") -> int:
    """What grpc.health.v1 Check answers for service."""
    health = health_pb2_grpc.HealthStub(channel)
    answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    status: int = answer.status
    return status


def seconds_until_health(channel: grpc.Channel, want: int) -> float:
    """How long until both the server and ImageService report want; fails after a bound."""
    started = time.monotonic()
    while time.monotonic() - started < HEALTH_TURN_SECONDS:
        if all(health_status(channel, name) == want for name in ("", SERVICE_NAME)):
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"health did not turn {want} within {HEALTH_TURN_SECONDS}s")


def every_rpc(stub: pb_grpc.ImageServiceStub, image: pb.Image) -> dict[str, Callable[[], object]]:
    """One call of each kind a client makes, reads and writes, on image."""
    url = "https://store.example/during-the-cut.img"
    return {
        "GetImage": lambda: stub.GetImage(
            pb.GetImageRequest(image_id=image.id), timeout=CALL_TIMEOUT
        ),
        "ListImages": lambda: stub.ListImages(pb.ListImagesRequest(), timeout=CALL_TIMEOUT),
        "CreateImage": lambda: stub.CreateImage(
            pb.CreateImageRequest(name="during-the-cut"), timeout=CALL_TIMEOUT
        ),
        "AddLocation": lambda: stub.AddLocation(
            pb.AddLocationRequest(image_id=image.id, location=location(url)),
            timeout=CALL_TIMEOUT,
        ),
        "RemoveLocation": lambda: stub.RemoveLocation(
            pb.RemoveLocationRequest(image_id=image.id, index=0), timeout=CALL_TIMEOUT
        ),
        "ReplaceLocation": lambda: stub.ReplaceLocation(
            pb.ReplaceLocationRequest(image_id=image.id, locations=list(reversed(image.locations))),
            timeout=CALL_TIMEOUT,
        ),
    }


def assert_store_unavailable(call: Callable[[], object], rpc: str) -> None:
    """call fails within FAIL_FAST_SECONDS with UNAVAILABLE STORE_UNAVAILABLE, httpStatus 503."""
    started = time.monotonic()
    refusal = refusal_of(call)
    elapsed = time.monotonic() - started
    assert refusal.code is grpc.StatusCode.UNAVAILABLE, (rpc, refusal)
    assert refusal.info.reason == "STORE_UNAVAILABLE", rpc
    assert refusal.info.domain == "imageloc", rpc
    assert refusal.info.metadata["httpStatus"] == "503", rpc
    assert elapsed < FAIL_FAST_SECONDS, f"{rpc} took {elapsed:.2f}s to be refused"


def test_calls_fail_fast_while_the_database_is_away_and_recover_without_a_restart(
    server: ServerProcess, proxy: TcpProxy
) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.ImageServiceStub(channel)
        image = make_image(stub, "active")
        before = stub.AddLocation(
            pb.AddLocationRequest(image_id=image.id, location=location("s3://bucket/kept.img")),
            timeout=CALL_TIMEOUT,
        ).image

        proxy.cut()
        for rpc, call in every_rpc(stub, before).items():
            assert_store_unavailable(call, rpc)
        seconds_until_health(channel, NOT_SERVING)
        # Still refused a while later, when the pool holds no connection any more.
        time.sleep(HEALTH_CHECK_SECONDS * 3)
        assert_store_unavailable(every_rpc(stub, before)["GetImage"], "GetImage")

        proxy.restore()
        seconds_until_health(channel, SERVING)
        assert stub.GetImage(pb.GetImageRequest(image_id=image.id), timeout=5).image == before
        added = stub.AddLocation(
            pb.AddLocationRequest(image_id=image.id, location=location("s3://bucket/after.img")),
            timeout=5,
        ).image
        assert [loc.url for loc in added.locations] == [
            *(loc.url for loc in before.locations),
            "s3://bucket/after.img",
        ]
    assert server.process.poll() is None, "the server exited; it must recover while running"


@contextlib.contextmanager
def image_row_locked(postgres_url: str, image_id: str) -> Iterator[int]:
    """Hold image_id's row lock on a direct connection; yields that connection's backend pid."""
    engine = create_engine(postgres_url)
    try:
        with engine.connect() as holder:
            holder.execute(
                text("SELECT id FROM images WHERE id = :id FOR UPDATE"), {"id": image_id}
            )
            backend: int = holder.execute(text("SELECT pg_backend_pid()")).scalar_one()
            try:
                yield backend
            finally:
                holder.rollback()
    finally:
        engine.dispose()


def wait_until_blocked_by(postgres_url: str, holder: int) -> None:
    """Return once another backend waits on a lock that holder has; fails after a bound."""
    engine = create_engine(postgres_url)
    query = text("SELECT count(*) FROM pg_stat_activity WHERE :holder = ANY(pg_blocking_pids(pid))")
    try:
        deadline = time.monotonic() + FAIL_FAST_SECONDS
        with engine.connect() as connection:
            while time.monotonic() < deadline:
                if connection.execute(query, {"holder": holder}).scalar_one():
                    return
                connection.rollback()
                time.sleep(0.02)
    finally:
        engine.dispose()
    raise AssertionError("the call never reached the database")


def test_a_write_waiting_on_the_database_when_it_goes_away_fails_fast_and_applies_nothing(
    server: ServerProcess, proxy: TcpProxy, postgres_url: str
) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.ImageServiceStub(channel)
        image = make_image(stub, "active")
        request = pb.AddLocationRequest(
            image_id=image.id, location=location("s3://bucket/lost.img")
        )
        with image_row_locked(postgres_url, image.id) as holder:
            in_flight = stub.AddLocation.future(request, timeout=CALL_TIMEOUT)
            wait_until_blocked_by(postgres_url, holder)
            proxy.cut()
            assert_store_unavailable(in_flight.result, "AddLocation")
        # The lock is free now: a server transaction that outlived its connection would commit.
        proxy.restore()
        seconds_until_health(channel, SERVING)
        assert stub.GetImage(pb.GetImageRequest(image_id=image.id), timeout=5).image == image


def test_a_database_that_stops_answering_is_not_serving_and_calls_end_at_their_deadline(
    server: ServerProcess, proxy: TcpProxy
) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.ImageServiceStub(channel)
        image = make_image(stub, "active")
        # Several pooled connections, so that health's check takes one and hangs on it too.
        with futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: stub.ListImages(pb.ListImagesRequest(), timeout=5), range(64)))
        proxy.stall()
        try:
            # Health notices within a check timeout, though the connection stays open.
            seconds_until_health(channel, NOT_SERVING)
            # A call cannot be answered faster than the database, but its deadline holds.
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as caught:
                stub.GetImage(pb.GetImageRequest(image_id=image.id), timeout=2)
            assert caught.value.code() in (
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.UNAVAILABLE,
            )
            assert time.monotonic() - started < 4
        finally:
            proxy.restore()
        seconds_until_health(channel, SERVING)
        assert stub.GetImage(pb.GetImageRequest(image_id=image.id), timeout=10).image == image
