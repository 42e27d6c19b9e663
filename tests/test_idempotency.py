"""request_id (AIP-155): a retry answers the first outcome, across replicas and restarts."""

from __future__ import annotations

import uuid

import grpc
import pytest

from imageloc.v1 import image_service_pb2 as pb
from imageloc.v1 import image_service_pb2_grpc as pb_grpc

from conftest import ServerFactory
from support import location, make_image, refusal_of

URL = "https://store.example/retry.img"


def stub_at(target: str) -> pb_grpc.ImageServiceStub:
    return pb_grpc.ImageServiceStub(grpc.insecure_channel(target))


def test_a_retried_create_makes_one_image(stub: pb_grpc.ImageServiceStub) -> None:
    request = pb.CreateImageRequest(name="once", request_id=str(uuid.uuid4()))
    first = stub.CreateImage(request).image
    again = stub.CreateImage(request).image
    assert again == first
    names = [image.name for image in stub.ListImages(pb.ListImagesRequest()).images]
    assert names == ["once"]


def test_a_retried_add_applies_once_and_answers_the_first_outcome(
    stub: pb_grpc.ImageServiceStub,
) -> None:
    image = make_image(stub, "active")
    request = pb.AddLocationRequest(
        image_id=image.id, location=location(URL), request_id=str(uuid.uuid4())
    )
    first = stub.AddLocation(request).image
    stub.DeactivateImage(pb.DeactivateImageRequest(image_id=image.id))
    again = stub.AddLocation(request).image
    assert again == first  # the first answer, though the image has moved on since
    stored = stub.GetImage(pb.GetImageRequest(image_id=image.id)).image
    assert [loc.url for loc in stored.locations].count(URL) == 1


def test_a_retried_remove_of_index_0_removes_one_location(stub: pb_grpc.ImageServiceStub) -> None:
    image = make_image(stub, "active", urls=("https://s/1", "https://s/2", "https://s/3"))
    request = pb.RemoveLocationRequest(image_id=image.id, index=0, request_id=str(uuid.uuid4()))
    first = stub.RemoveLocation(request).image
    assert stub.RemoveLocation(request).image == first
    stored = stub.GetImage(pb.GetImageRequest(image_id=image.id)).image
    assert [loc.url for loc in stored.locations] == ["https://s/2", "https://s/3"]


def test_the_same_id_for_another_request_is_refused(stub: pb_grpc.ImageServiceStub) -> None:
    image = make_image(stub, "active")
    request_id = str(uuid.uuid4())
    stub.AddLocation(
        pb.AddLocationRequest(image_id=image.id, location=location(URL), request_id=request_id)
    )
    refusal = refusal_of(
        lambda: stub.AddLocation(
            pb.AddLocationRequest(
                image_id=image.id, location=location(URL + "2"), request_id=request_id
            )
        )
    )
    assert (refusal.code, refusal.info.reason, refusal.info.metadata["httpStatus"]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_ID_REUSED",
        "422",
    )
    other_rpc = refusal_of(
        lambda: stub.DeactivateImage(
            pb.DeactivateImageRequest(image_id=image.id, request_id=request_id)
        )
    )
    assert other_rpc.info.reason == "REQUEST_ID_REUSED"


def test_a_request_id_must_be_a_uuid(stub: pb_grpc.ImageServiceStub) -> None:
    refusal = refusal_of(
        lambda: stub.CreateImage(pb.CreateImageRequest(name="x", request_id="retry-1"))
    )
    assert (refusal.code, refusal.info.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    )


def test_a_refused_request_is_decided_again_when_retried(stub: pb_grpc.ImageServiceStub) -> None:
    image = make_image(stub, "saving")
    request = pb.BeginUploadRequest(image_id=image.id, request_id=str(uuid.uuid4()))
    refusal = refusal_of(lambda: stub.BeginUpload(request))
    assert refusal.info.reason == "INVALID_TRANSITION"
    # A refusal applied nothing and is not recorded: the retry is decided on the state then.
    assert refusal_of(lambda: stub.BeginUpload(request)).info.reason == "INVALID_TRANSITION"


def test_a_retry_sent_to_another_replica_answers_the_first_outcome(
    server_factory: ServerFactory,
) -> None:
    first_replica, second_replica = stub_at(server_factory()), stub_at(server_factory())
    image = make_image(first_replica, "active")
    request = pb.RemoveLocationRequest(image_id=image.id, index=0, request_id=str(uuid.uuid4()))
    answered = first_replica.RemoveLocation(request).image
    assert second_replica.RemoveLocation(request).image == answered
    assert len(second_replica.GetImage(pb.GetImageRequest(image_id=image.id)).image.locations) == 1


@pytest.mark.parametrize("rpc", ["DeleteImage", "DeactivateImage"])
def test_retries_survive_a_restart(server_factory: ServerFactory, rpc: str) -> None:
    before = stub_at(server_factory())
    image = make_image(before, "active")
    request_type = getattr(pb, f"{rpc}Request")
    request = request_type(image_id=image.id, request_id=str(uuid.uuid4()))
    answered = getattr(before, rpc)(request).image
    after = stub_at(server_factory())  # a new process on the same database
    assert getattr(after, rpc)(request).image == answered
