"""The shipped service config: retries UNAVAILABLE only for safe calls, deadlines per method."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from imageloc.client import ImageClient, ImagelocError
from imageloc.client.channel import KEEPALIVE_TIME_MS, service_config
from imageloc.server.app import SERVER_MIN_PING_INTERVAL_MS
from imageloc.v1 import image_service_pb2 as pb
from imageloc.v1 import image_service_pb2_grpc as pb_grpc

IMAGE_ID = "00000000-0000-4000-8000-000000000001"
SAFE_TO_RETRY = {"GetImage", "ListImages", "DeactivateImage", "ReactivateImage"}


class FlakyService(pb_grpc.ImageServiceServicer):
    """Answers UNAVAILABLE to the first `failures` calls of each method, then succeeds."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: dict[str, int] = {}
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


def test_writes_that_could_apply_twice_are_not_retried(flaky: tuple[FlakyService, str]) -> None:
    service, target = flaky
    with ImageClient(target) as client, pytest.raises(ImagelocError) as caught:
        client.add_location(IMAGE_ID, "https://store.example/a.img")
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert service.calls["AddLocation"] == 1


def test_the_config_names_real_methods_and_retries_only_safe_ones() -> None:
    methods = set(pb.DESCRIPTOR.services_by_name["ImageService"].methods_by_name)
    retried = set()
    for entry in service_config()["methodConfig"]:
        assert entry["timeout"].endswith("s")
        for name in entry["name"]:
            if name["service"] == "imageloc.v1.ImageService" and "method" in name:
                assert name["method"] in methods
                if "retryPolicy" in entry:
                    retried.add(name["method"])
        if "retryPolicy" in entry:
            assert entry["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert retried == SAFE_TO_RETRY


def test_client_keepalive_respects_the_servers_ping_limit() -> None:
    assert KEEPALIVE_TIME_MS >= SERVER_MIN_PING_INTERVAL_MS
