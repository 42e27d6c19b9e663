"""The servicer under grpcio-testing: status codes per RPC, on the in-memory store.

grpcio-testing's context drops rich details, so this asserts codes; the details
are asserted against a real server in test_error_contract.py.
"""

from __future__ import annotations

from typing import Any

import grpc
import grpc_testing
import pytest

from imageloc.server.domain.policy import LocationPolicy
from imageloc.server.domain.ports import StoreUnavailableError
from imageloc.server.rpc.servicer import ImageServicer
from imageloc.server.service import ImageService
from imageloc.v1 import image_service_pb2 as pb

from fakes import InMemoryStore
from support import location

SERVICE = pb.DESCRIPTOR.services_by_name["ImageService"]


@pytest.fixture
def server() -> Any:
    service = ImageService(InMemoryStore().unit_of_work, policy=LocationPolicy())
    return grpc_testing.server_from_dictionary(
        {SERVICE: ImageServicer(service)}, grpc_testing.strict_real_time()
    )


def invoke(server: Any, method: str, request: Any) -> tuple[Any, grpc.StatusCode]:
    rpc = server.invoke_unary_unary(SERVICE.methods_by_name[method], (), request, None)
    response, _, code, _ = rpc.termination()
    return response, code


def test_location_lifecycle_codes(server: Any) -> None:
    created, code = invoke(
        server,
        "CreateImage",
        pb.CreateImageRequest(name="c", disk_format="raw", container_format="bare"),
    )
    assert code is grpc.StatusCode.OK
    image_id = created.image.id
    _, code = invoke(server, "BeginUpload", pb.BeginUploadRequest(image_id=image_id))
    assert code is grpc.StatusCode.OK
    _, code = invoke(server, "RemoveLocation", pb.RemoveLocationRequest(image_id=image_id, index=0))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    _, code = invoke(
        server,
        "CompleteUpload",
        pb.CompleteUploadRequest(image_id=image_id, location=location("https://s.example/a")),
    )
    assert code is grpc.StatusCode.OK
    added, code = invoke(
        server,
        "AddLocation",
        pb.AddLocationRequest(image_id=image_id, location=location("rbd://f/p/i/s"), index=0),
    )
    assert code is grpc.StatusCode.OK
    assert [loc.url for loc in added.image.locations] == ["rbd://f/p/i/s", "https://s.example/a"]
    _, code = invoke(server, "RemoveLocation", pb.RemoveLocationRequest(image_id=image_id, index=5))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    _, code = invoke(
        server, "ReplaceLocation", pb.ReplaceLocationRequest(image_id=image_id, locations=[])
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("method", "request_message", "expected"),
    [
        ("GetImage", pb.GetImageRequest(image_id="00000000-0000-4000-8000-000000000000"),
         grpc.StatusCode.NOT_FOUND),
        ("GetImage", pb.GetImageRequest(image_id="x"), grpc.StatusCode.INVALID_ARGUMENT),
        ("ListImages", pb.ListImagesRequest(page_size=-5), grpc.StatusCode.INVALID_ARGUMENT),
        ("ListImages", pb.ListImagesRequest(), grpc.StatusCode.OK),
    ],
)  # fmt: skip
def test_reads_answer_documented_codes(
    server: Any, method: str, request_message: Any, expected: grpc.StatusCode
) -> None:
    assert invoke(server, method, request_message)[1] is expected


class BrokenStore:
    """A unit-of-work factory that fails the way a store can."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def unit_of_work(
        self, *, for_write: bool, deadline: float | None = None, one_statement: bool = False
    ) -> Any:
        raise self.error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (StoreUnavailableError("connection refused"), grpc.StatusCode.UNAVAILABLE),
        (RuntimeError("a bug"), grpc.StatusCode.INTERNAL),
    ],
)
def test_store_failures_are_unavailable_and_bugs_internal(
    error: Exception, expected: grpc.StatusCode
) -> None:
    service = ImageService(BrokenStore(error).unit_of_work, policy=LocationPolicy())
    server = grpc_testing.server_from_dictionary(
        {SERVICE: ImageServicer(service)}, grpc_testing.strict_real_time()
    )
    request = pb.GetImageRequest(image_id="00000000-0000-4000-8000-000000000000")
    assert invoke(server, "GetImage", request)[1] is expected
