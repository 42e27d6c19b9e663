"""SIGTERM drains: the server stops accepting, finishes what it acknowledged, and exits 0.

SQLite only: the test holds the database's write lock to keep a call in flight.
"""

from __future__ import annotations

import contextlib
import pathlib
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imageloc.v1 import image_service_pb2 as pb
from imageloc.v1 import image_service_pb2_grpc as pb_grpc

from processes import ServerProcess, start_server
from support import location, make_image, refusal_of

GRACE_SECONDS = 5
#: How long after the grace period the process may take to end (interpreter teardown).
EXIT_MARGIN_SECONDS = 2
SERVICE_NAME = "imageloc.v1.ImageService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def start(database: pathlib.Path, *, grace: float = GRACE_SECONDS) -> ServerProcess:
    """`imageloc serve` on the SQLite file database, draining for grace seconds."""
    return start_server(f"sqlite:///{database}", env={"IMAGELOC_GRACE_SECONDS": str(grace)})


def stored_image(database: pathlib.Path, image_id: str) -> pb.Image:
    """The image as a restarted server reads it from database."""
    restarted = start(database)
    try:
        with grpc.insecure_channel(restarted.target) as channel:
            stub = pb_grpc.ImageServiceStub(channel)
            return stub.GetImage(pb.GetImageRequest(image_id=image_id), timeout=5).image
    finally:
        assert restarted.stop() == 0, restarted.stderr()


@contextlib.contextmanager
def write_lock(database: pathlib.Path) -> Iterator[sqlite3.Connection]:
    """Hold SQLite's write lock, so every server write waits; rolled back on exit if still held."""
    holder = sqlite3.connect(database, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        yield holder
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()


def in_flight_add(
    stub: pb_grpc.ImageServiceStub, image_id: str, url: str
) -> grpc.Future[pb.AddLocationResponse]:
    """Send AddLocation and return once the server has it (it waits for the write lock)."""
    request = pb.AddLocationRequest(image_id=image_id, location=location(url))
    call: grpc.Future[pb.AddLocationResponse] = stub.AddLocation.future(request, timeout=60)
    # A later call on the same connection has been answered, so the server has the first.
    stub.GetImage(pb.GetImageRequest(image_id=image_id), timeout=5)
    assert not call.done(), "AddLocation did not wait for the write lock"
    return call


def next_health_change(watch: Iterator[health_pb2.HealthCheckResponse]) -> int:
    """The first status a health Watch reports other than SERVING (bounded by its deadline)."""
    for answer in watch:
        if answer.status != SERVING:
            status: int = answer.status
            return status
    raise AssertionError("the health watch ended without a change")


def wait_until_new_calls_are_refused(target: str, image_id: str) -> None:
    """Return once a call on a fresh channel fails UNAVAILABLE; fails after a bound."""
    deadline = time.monotonic() + GRACE_SECONDS
    while time.monotonic() < deadline:
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.ImageServiceStub(channel)
            try:
                stub.GetImage(pb.GetImageRequest(image_id=image_id), timeout=1)
                code = grpc.StatusCode.OK
            except grpc.RpcError as error:
                code = error.code()
        if code is grpc.StatusCode.UNAVAILABLE:
            return
        # Never CANCELLED: the server stops taking calls before gRPC's stop could cancel one.
        assert code is grpc.StatusCode.OK, code
        time.sleep(0.02)  # answered: still within the drain delay
    raise AssertionError("new calls were not refused UNAVAILABLE during the drain")


def test_sigterm_finishes_acknowledged_writes_and_exits_cleanly(tmp_path: pathlib.Path) -> None:
    database = tmp_path / "shutdown.db"
    server = start(database)
    acknowledged: list[pb.Image] = []
    stop = threading.Event()
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.ImageServiceStub(channel)
        image = make_image(stub, "active")

        def writer() -> None:
            for i in range(2000):  # bounded: at most 2000 writes, or until refused
                if stop.is_set():
                    return
                url = f"https://store.example/{i}.img"
                try:
                    added = stub.AddLocation(
                        pb.AddLocationRequest(image_id=image.id, location=location(url)), timeout=5
                    )
                    acknowledged.append(added.image)
                    removed = stub.RemoveLocation(
                        pb.RemoveLocationRequest(image_id=image.id, url=url), timeout=5
                    )
                    acknowledged.append(removed.image)
                except grpc.RpcError:
                    return

        thread = threading.Thread(target=writer)
        thread.start()
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        thread.join(timeout=30)
        stop.set()
    assert server.process.wait(timeout=GRACE_SECONDS + 10) == 0
    assert acknowledged, "no write was acknowledged before SIGTERM"

    stored = stored_image(database, image.id)
    last = acknowledged[-1]
    # The call after the last acknowledged one may have committed as the server
    # stopped; it then added one more location. Nothing acknowledged may be lost.
    stored_urls = [loc.url for loc in stored.locations]
    last_urls = [loc.url for loc in last.locations]
    assert stored_urls[: len(last_urls)] == last_urls
    assert len(stored_urls) - len(last_urls) in (0, 1)


def test_sigterm_lets_the_call_in_flight_finish_while_new_calls_are_refused(
    tmp_path: pathlib.Path,
) -> None:
    database = tmp_path / "drain.db"
    server = start(database)
    url = "https://store.example/in-flight.img"
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.ImageServiceStub(channel)
            image = make_image(stub, "active")
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=30
            )
            with write_lock(database) as holder:
                call = in_flight_add(stub, image.id, url)
                signalled = time.monotonic()
                server.process.send_signal(signal.SIGTERM)

                assert next_health_change(watch) == NOT_SERVING
                watch.cancel()  # a watch is a call in flight too; it would hold the drain
                wait_until_new_calls_are_refused(server.target, image.id)
                assert not call.done()
                assert server.process.poll() is None, "exited before its call in flight ended"
                holder.execute("ROLLBACK")

            added = call.result(timeout=GRACE_SECONDS).image
        assert [loc.url for loc in added.locations][-1] == url
        status = server.process.wait(timeout=GRACE_SECONDS + EXIT_MARGIN_SECONDS)
        exited_after = time.monotonic() - signalled
    finally:
        server.kill()
    assert status == 0, server.stderr()
    assert exited_after < GRACE_SECONDS + EXIT_MARGIN_SECONDS
    assert stored_image(database, image.id) == added


def test_sigterm_exits_within_the_grace_period_when_a_call_in_flight_cannot_finish(
    tmp_path: pathlib.Path,
) -> None:
    database = tmp_path / "stuck.db"
    grace = 1.0
    server = start(database, grace=grace)
    status: int | None = None
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.ImageServiceStub(channel)
            image = make_image(stub, "active")
            with write_lock(database):
                in_flight_add(stub, image.id, "https://store.example/stuck.img")
                signalled = time.monotonic()
                server.process.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    status = server.process.wait(timeout=grace + EXIT_MARGIN_SECONDS)
                waited = time.monotonic() - signalled
    finally:
        server.kill()
    assert status == 0, f"still running {waited:.1f}s after SIGTERM with a {grace}s grace period"


def test_sigterm_serves_through_the_drain_delay_then_refuses_and_ends_watches(
    tmp_path: pathlib.Path,
) -> None:
    database = tmp_path / "delay.db"
    drain = 1.5
    server = start_server(
        f"sqlite:///{database}",
        env={"IMAGELOC_DRAIN_SECONDS": str(drain), "IMAGELOC_GRACE_SECONDS": str(GRACE_SECONDS)},
    )
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.ImageServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            image = make_image(stub, "active")
            watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=30)
            assert next(watch).status == SERVING
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)

            # At once: health says NOT_SERVING, and calls are still served.
            assert next(watch).status == NOT_SERVING
            check = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
            assert check.status == NOT_SERVING
            served = 0
            while time.monotonic() - signalled < drain - 0.5:
                stub.GetImage(pb.GetImageRequest(image_id=image.id), timeout=5)
                served += 1
            assert served > 0

            # At the end of the drain the open stream ends UNAVAILABLE, and new calls too.
            with pytest.raises(grpc.RpcError) as ended:
                next(watch)
            assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - signalled >= drain - 0.1
        refusal = None
        for _ in range(50):  # bounded: the listener closes within moments of the drain's end
            with grpc.insecure_channel(server.target) as channel:
                try:
                    pb_grpc.ImageServiceStub(channel).GetImage(
                        pb.GetImageRequest(image_id=image.id), timeout=1
                    )
                except grpc.RpcError as error:
                    refusal = error
                    break
            time.sleep(0.02)
        assert refusal is not None
        assert refusal.code() is grpc.StatusCode.UNAVAILABLE, refusal
        status = server.process.wait(timeout=GRACE_SECONDS + EXIT_MARGIN_SECONDS)
    finally:
        server.kill()
    assert status == 0, server.stderr()
    assert time.monotonic() - signalled < GRACE_SECONDS + EXIT_MARGIN_SECONDS


def test_a_call_arriving_after_the_drain_is_refused_with_an_error_info(
    tmp_path: pathlib.Path,
) -> None:
    database = tmp_path / "refused.db"
    server = start(database)
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.ImageServiceStub(channel)
            image = make_image(stub, "active")
            with write_lock(database) as holder:
                call = in_flight_add(stub, image.id, "https://store.example/held.img")
                server.process.send_signal(signal.SIGTERM)
                time.sleep(0.3)  # the drain delay is 0 here: the server now refuses new calls
                refusal = refusal_of(
                    lambda: stub.GetImage(pb.GetImageRequest(image_id=image.id), timeout=5)
                )
                holder.execute("ROLLBACK")
            assert call.result(timeout=GRACE_SECONDS).image.locations[-1].url.endswith("held.img")
        assert server.process.wait(timeout=GRACE_SECONDS) == 0
    finally:
        server.kill()
    assert refusal.code is grpc.StatusCode.UNAVAILABLE
    assert refusal.info.reason == "SERVER_SHUTTING_DOWN"
    assert refusal.info.metadata["httpStatus"] == "503"
