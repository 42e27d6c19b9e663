"""The shipped service config: deadlines per method, UNAVAILABLE retried with one request_id."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from imageloc.client import ImageClient
from imageloc.client.channel import KEEPALIVE_TIME_MS, service_config
from imageloc.server.app import SERVER_MIN_PING_INTERVAL_MS
from imageloc.v1 import image_service_pb2 as pb
from imageloc.v1 import image_service_pb2_grpc as pb_grpc

IMAGE_ID = "00000000-0000-4000-8000-000000000001"
READS = {"GetImage", "ListImages", "WatchImages"}


class FlakyService(pb_grpc.ImageServiceServicer):
    """Answers UNAVAILABLE to the first `failures` calls of each method, then succeeds."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: dict[str, int] = {}
        self.request_ids: list[str] = []
        self.lock = threading.Lock()

    def _attempt(self, method: str, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.calls[method] = self.calls.get(method, 0) + 1
            attempt = self.calls[method]
        if attempt <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "try again")

    def GetImage(self, request: Any, context: grpc.ServicerContext) -> pb.GetImageResponse:  # noqa: N802
        self._attempt("GetImage", context)
        return pb.GetImageResponse(image=pb.Image(id=request.image_id))

    def AddLocation(self, request: Any, context: grpc.ServicerContext) -> pb.AddLocationResponse:  # noqa: N802
        self.request_ids.append(request.request_id)
        self._attempt("AddLocation", context)
        return pb.AddLocationResponse(image=pb.Image(id=request.image_id))


@pytest.fixture
def flaky() -> Iterator[tuple[FlakyService, str]]:
    service = FlakyService(failures=2)  # type: ignore[abstract]  # two RPCs are enough here
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_ImageServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield service, f"127.0.0.1:{port}"
    server.stop(None)


def test_safe_reads_are_retried_on_unavailable(flaky: tuple[FlakyService, str]) -> None:
    service, target = flaky
    with ImageClient(target) as client:
        assert client.get_image(IMAGE_ID).id == IMAGE_ID
    assert service.calls["GetImage"] == 3


def test_writes_are_retried_with_the_request_id_of_the_first_attempt(
    flaky: tuple[FlakyService, str],
) -> None:
    service, target = flaky
    with ImageClient(target) as client:
        assert client.add_location(IMAGE_ID, "https://store.example/a.img").id == IMAGE_ID
    assert service.calls["AddLocation"] == 3
    assert len(set(service.request_ids)) == 1
    assert uuid.UUID(service.request_ids[0])


def test_every_mutation_carries_a_request_id_so_every_method_may_be_retried() -> None:
    service = pb.DESCRIPTOR.services_by_name["ImageService"]
    for method in service.methods:
        if method.name not in READS:
            assert "request_id" in method.input_type.fields_by_name, method.name
    config = service_config()["methodConfig"]
    for entry in config:
        if entry["name"] == [{"service": service.full_name, "method": "WatchImages"}]:
            # A stream: no deadline, and the client resumes it (gRPC retries end at the
            # first response).
            assert "timeout" not in entry
            assert "retryPolicy" not in entry
            continue
        assert entry["timeout"].endswith("s")
        assert entry["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
        for name in entry["name"]:
            if "method" in name and name["service"] == service.full_name:
                assert name["method"] in service.methods_by_name
    assert {"service": service.full_name} in [n for e in config for n in e["name"]]


def test_client_keepalive_respects_the_servers_ping_limit() -> None:
    assert KEEPALIVE_TIME_MS >= SERVER_MIN_PING_INTERVAL_MS
