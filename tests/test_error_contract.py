"""Every row of the error table, through a real server, with its rich details decoded."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import grpc
import pytest
from google.rpc import error_details_pb2

from imageloc.v1 import image_service_pb2 as pb
from imageloc.v1 import image_service_pb2_grpc as pb_grpc

from conftest import ServerFactory
from support import MD5, SHA512, VISIBLE_STATUSES, Refusal, location, make_image, refusal_of

Code = grpc.StatusCode
NEW_URL = "https://store.example/new.img"


def assert_refusal(
    refusal: Refusal,
    code: grpc.StatusCode,
    reason: str,
    http_status: int,
    *,
    image: pb.Image | None = None,
    image_status: str | None = None,
) -> None:
    assert (refusal.code, refusal.info.reason, refusal.info.metadata["httpStatus"]) == (
        code,
        reason,
        str(http_status),
    )
    assert refusal.info.domain == "imageloc"
    if image is not None:
        assert refusal.info.metadata["imageId"] == image.id
    if image_status is not None:
        assert refusal.info.metadata["imageStatus"] == image_status
    if code is Code.FAILED_PRECONDITION:
        violation = refusal.detail(error_details_pb2.PreconditionFailure).violations[0]
        assert violation.type == reason
    if code is Code.INVALID_ARGUMENT:
        assert refusal.detail(error_details_pb2.BadRequest).field_violations[0].field
    assert refusal.message


def stub_for(server_factory: ServerFactory, **settings: object) -> pb_grpc.ImageServiceStub:
    return pb_grpc.ImageServiceStub(grpc.insecure_channel(server_factory(**settings)))


# NOT_FOUND IMAGE_NOT_FOUND 404


def test_unknown_image_is_not_found(stub: pb_grpc.ImageServiceStub) -> None:
    missing = str(uuid.uuid4())
    refusal = refusal_of(lambda: stub.GetImage(pb.GetImageRequest(image_id=missing)))
    assert_refusal(refusal, Code.NOT_FOUND, "IMAGE_NOT_FOUND", 404)
    assert refusal.info.metadata["imageId"] == missing


@pytest.mark.parametrize("delayed_delete", [False, True])
def test_deleted_and_pending_delete_images_are_not_found_by_every_rpc(
    server_factory: ServerFactory, delayed_delete: bool
) -> None:
    stub = stub_for(server_factory, delayed_delete=delayed_delete)
    image = make_image(stub, "active")
    deleted = stub.DeleteImage(pb.DeleteImageRequest(image_id=image.id)).image
    assert pb.ImageStatus.Name(deleted.status) == (
        "IMAGE_STATUS_PENDING_DELETE" if delayed_delete else "IMAGE_STATUS_DELETED"
    )
    image_id = image.id
    calls: list[Callable[[], object]] = [
        lambda: stub.GetImage(pb.GetImageRequest(image_id=image_id)),
        lambda: stub.DeleteImage(pb.DeleteImageRequest(image_id=image_id)),
        lambda: stub.BeginUpload(pb.BeginUploadRequest(image_id=image_id)),
        lambda: stub.CompleteUpload(
            pb.CompleteUploadRequest(image_id=image_id, location=location(NEW_URL))
        ),
        lambda: stub.FailUpload(pb.FailUploadRequest(image_id=image_id)),
        lambda: stub.StageImage(pb.StageImageRequest(image_id=image_id)),
        lambda: stub.BeginImport(pb.BeginImportRequest(image_id=image_id)),
        lambda: stub.DeactivateImage(pb.DeactivateImageRequest(image_id=image_id)),
        lambda: stub.ReactivateImage(pb.ReactivateImageRequest(image_id=image_id)),
        lambda: stub.AddLocation(
            pb.AddLocationRequest(image_id=image_id, location=location(NEW_URL))
        ),
        lambda: stub.RemoveLocation(pb.RemoveLocationRequest(image_id=image_id, index=0)),
        lambda: stub.ReplaceLocation(
            pb.ReplaceLocationRequest(image_id=image_id, locations=[location(NEW_URL)])
        ),
    ]
    for call in calls:
        assert_refusal(refusal_of(call), Code.NOT_FOUND, "IMAGE_NOT_FOUND", 404)
    listed = stub.ListImages(pb.ListImagesRequest()).images
    assert image_id not in [i.id for i in listed]


# FAILED_PRECONDITION IMAGE_STATUS_CONFLICT 409


@pytest.mark.parametrize("status", [s for s in VISIBLE_STATUSES if s != "active"])
def test_remove_location_is_refused_unless_active(
    stub: pb_grpc.ImageServiceStub, status: str
) -> None:
    image = make_image(stub, status)
    refusal = refusal_of(
        lambda: stub.RemoveLocation(pb.RemoveLocationRequest(image_id=image.id, index=0))
    )
    assert_refusal(
        refusal,
        Code.FAILED_PRECONDITION,
        "IMAGE_STATUS_CONFLICT",
        409,
        image=image,
        image_status=status,
    )
    assert stub.GetImage(pb.GetImageRequest(image_id=image.id)).image == image


@pytest.mark.parametrize("status", [s for s in VISIBLE_STATUSES if s not in ("active", "queued")])
def test_add_and_replace_are_refused_unless_active_or_queued(
    stub: pb_grpc.ImageServiceStub, status: str
) -> None:
    image = make_image(stub, status)
    add = refusal_of(
        lambda: stub.AddLocation(
            pb.AddLocationRequest(image_id=image.id, location=location(NEW_URL))
        )
    )
    assert_refusal(
        add,
        Code.FAILED_PRECONDITION,
        "IMAGE_STATUS_CONFLICT",
        409,
        image=image,
        image_status=status,
    )
    replace = refusal_of(
        lambda: stub.ReplaceLocation(
            pb.ReplaceLocationRequest(image_id=image.id, locations=[location(NEW_URL)])
        )
    )
    assert_refusal(
        replace,
        Code.FAILED_PRECONDITION,
        "IMAGE_STATUS_CONFLICT",
        409,
        image=image,
        image_status=status,
    )
    assert stub.GetImage(pb.GetImageRequest(image_id=image.id)).image == image


# FAILED_PRECONDITION LAST_LOCATION 403


def test_remove_refuses_last_location_of_active_image(stub: pb_grpc.ImageServiceStub) -> None:
    image = make_image(stub, "active", urls=("https://store.example/only.img",))
    refusal = refusal_of(
        lambda: stub.RemoveLocation(pb.RemoveLocationRequest(image_id=image.id, index=0))
    )
    assert_refusal(
        refusal, Code.FAILED_PRECONDITION, "LAST_LOCATION", 403, image=image, image_status="active"
    )


# INVALID_ARGUMENT EMPTY_LOCATIONS 403, before the status


@pytest.mark.parametrize("status", VISIBLE_STATUSES)
def test_replace_with_empty_list_is_refused_in_every_status(
    stub: pb_grpc.ImageServiceStub, status: str
) -> None:
    image = make_image(stub, status)
    refusal = refusal_of(
        lambda: stub.ReplaceLocation(pb.ReplaceLocationRequest(image_id=image.id, locations=[]))
    )
    assert_refusal(
        refusal, Code.INVALID_ARGUMENT, "EMPTY_LOCATIONS", 403, image=image, image_status=status
    )


# FAILED_PRECONDITION LOCATIONS_NOT_EMPTY 400


def test_replace_that_changes_the_url_set_is_refused(stub: pb_grpc.ImageServiceStub) -> None:
    image = make_image(stub, "active")
    refusal = refusal_of(
        lambda: stub.ReplaceLocation(
            pb.ReplaceLocationRequest(
                image_id=image.id, locations=[image.locations[0], location(NEW_URL)]
            )
        )
    )
    assert_refusal(refusal, Code.FAILED_PRECONDITION, "LOCATIONS_NOT_EMPTY", 400, image=image)


# ALREADY_EXISTS DUPLICATE_LOCATION 400


def test_duplicate_locations_are_refused(stub: pb_grpc.ImageServiceStub) -> None:
    image = make_image(stub, "active")
    add = refusal_of(
        lambda: stub.AddLocation(
            pb.AddLocationRequest(image_id=image.id, location=image.locations[0])
        )
    )
    assert_refusal(add, Code.ALREADY_EXISTS, "DUPLICATE_LOCATION", 400, image=image)
    queued = make_image(stub, "queued")
    twice = refusal_of(
        lambda: stub.ReplaceLocation(
            pb.ReplaceLocationRequest(
                image_id=queued.id, locations=[location(NEW_URL), location(NEW_URL)]
            )
        )
    )
    assert_refusal(twice, Code.ALREADY_EXISTS, "DUPLICATE_LOCATION", 400, image=queued)


# INVALID_ARGUMENT INVALID_LOCATION 400


@pytest.mark.parametrize(
    "bad",
    [
        location(""),
        location("::not a url"),
        location("https://store.example/" + "x" * 250),
        location("gopher://store.example/a"),
        location("file:///var/lib/glance/images/x"),
        location("filesystem:///x"),
        location("swift+config://ref1/container/obj"),
        location("https://store.example/m.img", size=1),
        location("https://store.example/m.img", nested={"ok": "x", "bad": True}),
    ],
    ids=[
        "empty",
        "unparsable",
        "too-long",
        "unknown-scheme",
        "file",
        "filesystem",
        "swift-config",
        "number-leaf",
        "bool-leaf",
    ],
)
def test_bad_locations_are_refused(stub: pb_grpc.ImageServiceStub, bad: pb.Location) -> None:
    image = make_image(stub, "active")
    refusal = refusal_of(
        lambda: stub.AddLocation(pb.AddLocationRequest(image_id=image.id, location=bad))
    )
    assert_refusal(refusal, Code.INVALID_ARGUMENT, "INVALID_LOCATION", 400, image=image)
    assert (
        refusal.detail(error_details_pb2.BadRequest)
        .field_violations[0]
        .field.startswith("location.")
    )


def test_configured_schemes_replace_the_defaults(server_factory: ServerFactory) -> None:
    stub = stub_for(server_factory, location_schemes=frozenset({"rbd", "file"}))
    image = make_image(stub, "active", urls=("rbd://fsid/pool/img/snap",))
    for url in ("https://store.example/a.img", "file:///tmp/x"):
        refusal = refusal_of(
            lambda url=url: stub.AddLocation(  # type: ignore[misc]
                pb.AddLocationRequest(image_id=image.id, location=location(url))
            )
        )
        assert_refusal(refusal, Code.INVALID_ARGUMENT, "INVALID_LOCATION", 400)


# INVALID_ARGUMENT INVALID_POSITION 400


@pytest.mark.parametrize("index", [-1, 2, 1000])
def test_remove_index_out_of_range_is_invalid_position(
    stub: pb_grpc.ImageServiceStub, index: int
) -> None:
    image = make_image(stub, "active")
    refusal = refusal_of(
        lambda: stub.RemoveLocation(pb.RemoveLocationRequest(image_id=image.id, index=index))
    )
    assert_refusal(refusal, Code.INVALID_ARGUMENT, "INVALID_POSITION", 400, image=image)


@pytest.mark.parametrize("index", [-1, 3])
def test_add_index_out_of_range_is_invalid_position(
    stub: pb_grpc.ImageServiceStub, index: int
) -> None:
    image = make_image(stub, "active")
    refusal = refusal_of(
        lambda: stub.AddLocation(
            pb.AddLocationRequest(image_id=image.id, location=location(NEW_URL), index=index)
        )
    )
    assert_refusal(refusal, Code.INVALID_ARGUMENT, "INVALID_POSITION", 400, image=image)


# NOT_FOUND LOCATION_NOT_FOUND 400


def test_remove_by_unknown_url_is_location_not_found(stub: pb_grpc.ImageServiceStub) -> None:
    image = make_image(stub, "active")
    refusal = refusal_of(
        lambda: stub.RemoveLocation(pb.RemoveLocationRequest(image_id=image.id, url=NEW_URL))
    )
    assert_refusal(refusal, Code.NOT_FOUND, "LOCATION_NOT_FOUND", 400, image=image)
    assert refusal.detail(error_details_pb2.ResourceInfo).resource_name == NEW_URL


# RESOURCE_EXHAUSTED LOCATION_QUOTA_EXCEEDED 413


def test_location_quota_is_enforced(server_factory: ServerFactory) -> None:
    stub = stub_for(server_factory, location_quota=2)
    image = make_image(stub, "active")
    refusal = refusal_of(
        lambda: stub.AddLocation(
            pb.AddLocationRequest(image_id=image.id, location=location(NEW_URL))
        )
    )
    assert_refusal(refusal, Code.RESOURCE_EXHAUSTED, "LOCATION_QUOTA_EXCEEDED", 413, image=image)
    refusal.detail(error_details_pb2.QuotaFailure)
    queued = make_image(stub, "queued")
    urls = [f"https://store.example/{i}.img" for i in range(3)]
    refusal = refusal_of(
        lambda: stub.ReplaceLocation(
            pb.ReplaceLocationRequest(image_id=queued.id, locations=[location(u) for u in urls])
        )
    )
    assert_refusal(refusal, Code.RESOURCE_EXHAUSTED, "LOCATION_QUOTA_EXCEEDED", 413)


def test_default_quota_is_ten(stub: pb_grpc.ImageServiceStub) -> None:
    image = make_image(stub, "queued")
    urls = [f"https://store.example/{i}.img" for i in range(10)]
    stub.ReplaceLocation(
        pb.ReplaceLocationRequest(image_id=image.id, locations=[location(u) for u in urls])
    )
    refusal = refusal_of(
        lambda: stub.AddLocation(
            pb.AddLocationRequest(image_id=image.id, location=location(NEW_URL))
        )
    )
    assert_refusal(refusal, Code.RESOURCE_EXHAUSTED, "LOCATION_QUOTA_EXCEEDED", 413)


# validation_data: FAILED_PRECONDITION VALIDATION_DATA_CONFLICT 409, INVALID_VALIDATION_DATA 400


def test_new_validation_data_on_active_image_is_a_conflict(stub: pb_grpc.ImageServiceStub) -> None:
    image = make_image(stub, "active")
    data = pb.ValidationData(checksum=MD5, os_hash_algo="sha512", os_hash_value=SHA512)
    refusal = refusal_of(
        lambda: stub.AddLocation(
            pb.AddLocationRequest(
                image_id=image.id, location=location(NEW_URL), validation_data=data
            )
        )
    )
    assert_refusal(refusal, Code.FAILED_PRECONDITION, "VALIDATION_DATA_CONFLICT", 409, image=image)


def test_validation_data_differing_from_the_images_is_a_conflict(
    stub: pb_grpc.ImageServiceStub,
) -> None:
    queued = make_image(stub, "queued")
    data = pb.ValidationData(checksum=MD5, os_hash_algo="sha512", os_hash_value=SHA512)
    active = stub.AddLocation(
        pb.AddLocationRequest(image_id=queued.id, location=location(NEW_URL), validation_data=data)
    ).image
    assert (active.checksum, active.os_hash_value) == (MD5, SHA512)
    same = stub.AddLocation(
        pb.AddLocationRequest(
            image_id=queued.id, location=location("rbd://f/p/i/s"), validation_data=data
        )
    ).image
    assert len(same.locations) == 2
    other = pb.ValidationData(checksum="ef" * 16, os_hash_algo="sha512", os_hash_value=SHA512)
    refusal = refusal_of(
        lambda: stub.AddLocation(
            pb.AddLocationRequest(
                image_id=queued.id, location=location("rbd://f/p/i/t"), validation_data=other
            )
        )
    )
    assert_refusal(refusal, Code.FAILED_PRECONDITION, "VALIDATION_DATA_CONFLICT", 409)


@pytest.mark.parametrize(
    "data",
    [
        pb.ValidationData(checksum="zz" * 16, os_hash_algo="sha512", os_hash_value=SHA512),
        pb.ValidationData(checksum="ab", os_hash_algo="sha512", os_hash_value=SHA512),
        pb.ValidationData(checksum=MD5, os_hash_algo="sha256", os_hash_value="ab" * 32),
        pb.ValidationData(checksum=MD5, os_hash_algo="sha512", os_hash_value="ab" * 10),
        pb.ValidationData(checksum=MD5, os_hash_algo="sha512", os_hash_value="xy" * 64),
        pb.ValidationData(checksum=MD5),
    ],
    ids=["checksum-not-hex", "checksum-size", "algo", "hash-size", "hash-not-hex", "no-hash"],
)
def test_malformed_validation_data_is_refused(
    stub: pb_grpc.ImageServiceStub, data: pb.ValidationData
) -> None:
    image = make_image(stub, "queued")
    refusal = refusal_of(
        lambda: stub.ReplaceLocation(
            pb.ReplaceLocationRequest(
                image_id=image.id, locations=[location(NEW_URL)], validation_data=data
            )
        )
    )
    assert_refusal(refusal, Code.INVALID_ARGUMENT, "INVALID_VALIDATION_DATA", 400)
    after = stub.GetImage(pb.GetImageRequest(image_id=image.id)).image
    assert pb.ImageStatus.Name(after.status) == "IMAGE_STATUS_QUEUED"


# FAILED_PRECONDITION MISSING_FORMAT 400


def test_leaving_queued_without_formats_is_refused(stub: pb_grpc.ImageServiceStub) -> None:
    image = stub.CreateImage(pb.CreateImageRequest(name="bare")).image
    calls: list[Callable[[], object]] = [
        lambda: stub.AddLocation(
            pb.AddLocationRequest(image_id=image.id, location=location(NEW_URL))
        ),
        lambda: stub.ReplaceLocation(
            pb.ReplaceLocationRequest(image_id=image.id, locations=[location(NEW_URL)])
        ),
        lambda: stub.BeginUpload(pb.BeginUploadRequest(image_id=image.id)),
        lambda: stub.BeginImport(pb.BeginImportRequest(image_id=image.id)),
    ]
    for call in calls:
        assert_refusal(
            refusal_of(call),
            Code.FAILED_PRECONDITION,
            "MISSING_FORMAT",
            400,
            image=image,
            image_status="queued",
        )
    assert stub.GetImage(pb.GetImageRequest(image_id=image.id)).image == image


# FAILED_PRECONDITION IMAGE_PROTECTED 403


def test_protected_image_cannot_be_deleted(stub: pb_grpc.ImageServiceStub) -> None:
    image = make_image(stub, "active", protected=True)
    refusal = refusal_of(lambda: stub.DeleteImage(pb.DeleteImageRequest(image_id=image.id)))
    assert_refusal(refusal, Code.FAILED_PRECONDITION, "IMAGE_PROTECTED", 403, image=image)
    assert stub.GetImage(pb.GetImageRequest(image_id=image.id)).image.id == image.id


# ALREADY_EXISTS IMAGE_EXISTS 409


def test_create_with_a_taken_id_is_refused_even_after_delete(
    stub: pb_grpc.ImageServiceStub,
) -> None:
    image_id = str(uuid.uuid4())
    stub.CreateImage(pb.CreateImageRequest(name="a", id=image_id))
    refusal = refusal_of(lambda: stub.CreateImage(pb.CreateImageRequest(name="b", id=image_id)))
    assert_refusal(refusal, Code.ALREADY_EXISTS, "IMAGE_EXISTS", 409)
    stub.DeleteImage(pb.DeleteImageRequest(image_id=image_id))
    refusal = refusal_of(lambda: stub.CreateImage(pb.CreateImageRequest(name="c", id=image_id)))
    assert_refusal(refusal, Code.ALREADY_EXISTS, "IMAGE_EXISTS", 409)


# FAILED_PRECONDITION INVALID_TRANSITION, Glance's HTTP status per action


@pytest.mark.parametrize(
    ("rpc", "request_type", "allowed", "http_status"),
    [
        ("BeginUpload", pb.BeginUploadRequest, {"queued"}, 409),
        ("FailUpload", pb.FailUploadRequest, {"saving"}, 409),
        ("StageImage", pb.StageImageRequest, {"queued"}, 409),
        ("BeginImport", pb.BeginImportRequest, {"queued", "uploading"}, 409),
        ("DeactivateImage", pb.DeactivateImageRequest, {"active", "deactivated"}, 403),
        ("ReactivateImage", pb.ReactivateImageRequest, {"active", "deactivated"}, 403),
    ],
)
def test_lifecycle_rpcs_refuse_other_statuses(
    stub: pb_grpc.ImageServiceStub,
    rpc: str,
    request_type: type,
    allowed: set[str],
    http_status: int,
) -> None:
    for status in VISIBLE_STATUSES:
        image = make_image(stub, status)
        call = getattr(stub, rpc)
        if status in allowed:
            call(request_type(image_id=image.id))
            continue
        refusal = refusal_of(lambda call=call, image=image: call(request_type(image_id=image.id)))  # type: ignore[misc]
        assert_refusal(
            refusal,
            Code.FAILED_PRECONDITION,
            "INVALID_TRANSITION",
            http_status,
            image=image,
            image_status=status,
        )


def test_complete_upload_is_refused_unless_saving_or_importing(
    stub: pb_grpc.ImageServiceStub,
) -> None:
    image = make_image(stub, "queued")
    refusal = refusal_of(
        lambda: stub.CompleteUpload(
            pb.CompleteUploadRequest(image_id=image.id, location=location(NEW_URL), size=1)
        )
    )
    assert_refusal(refusal, Code.FAILED_PRECONDITION, "INVALID_TRANSITION", 409, image=image)


def test_delayed_delete_of_deactivated_image_with_locations_is_refused(
    server_factory: ServerFactory,
) -> None:
    stub = stub_for(server_factory, delayed_delete=True)
    image = make_image(stub, "deactivated")
    refusal = refusal_of(lambda: stub.DeleteImage(pb.DeleteImageRequest(image_id=image.id)))
    assert_refusal(refusal, Code.FAILED_PRECONDITION, "INVALID_TRANSITION", 400, image=image)


# ABORTED ETAG_MISMATCH 412


def test_stale_etag_is_aborted_and_current_etag_succeeds(stub: pb_grpc.ImageServiceStub) -> None:
    image = make_image(stub, "active")
    changed = stub.AddLocation(
        pb.AddLocationRequest(image_id=image.id, location=location(NEW_URL), etag=image.etag)
    ).image
    assert changed.etag != image.etag
    refusal = refusal_of(
        lambda: stub.RemoveLocation(
            pb.RemoveLocationRequest(image_id=image.id, index=0, etag=image.etag)
        )
    )
    assert_refusal(refusal, Code.ABORTED, "ETAG_MISMATCH", 412, image=image)
    removed = stub.RemoveLocation(
        pb.RemoveLocationRequest(image_id=image.id, index=0, etag=changed.etag)
    ).image
    assert len(removed.locations) == 2


# INVALID_ARGUMENT INVALID_REQUEST 400


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.GetImage(pb.GetImageRequest(image_id="not-a-uuid")),
        lambda s: s.GetImage(pb.GetImageRequest()),
        lambda s: s.CreateImage(pb.CreateImageRequest(name="x", id="nope")),
        lambda s: s.CreateImage(pb.CreateImageRequest(name="x" * 256)),
        lambda s: s.CreateImage(pb.CreateImageRequest(name="x", disk_format="floppy")),
        lambda s: s.CreateImage(pb.CreateImageRequest(name="x", container_format="crate")),
        lambda s: s.CreateImage(pb.CreateImageRequest(name="x", visibility=42)),  # type: ignore[arg-type]
        lambda s: s.ListImages(pb.ListImagesRequest(page_size=-1)),
        lambda s: s.ListImages(pb.ListImagesRequest(page_token="garbage!")),
        lambda s: s.ListImages(pb.ListImagesRequest(status=pb.IMAGE_STATUS_UNSPECIFIED)),
        lambda s: s.ListImages(pb.ListImagesRequest(status=77)),  # type: ignore[arg-type]
        lambda s: s.AddLocation(pb.AddLocationRequest(image_id=str(uuid.uuid4()))),
        lambda s: s.RemoveLocation(pb.RemoveLocationRequest(image_id=str(uuid.uuid4()))),
        lambda s: s.CompleteUpload(pb.CompleteUploadRequest(image_id=str(uuid.uuid4()))),
    ],
    ids=[
        "bad-uuid",
        "no-id",
        "bad-create-id",
        "long-name",
        "disk-format",
        "container-format",
        "visibility",
        "page-size",
        "page-token",
        "unspecified-status",
        "unknown-status",
        "add-no-location",
        "remove-no-target",
        "complete-no-location",
    ],
)
def test_malformed_requests_are_invalid_request(
    stub: pb_grpc.ImageServiceStub, call: Callable[[pb_grpc.ImageServiceStub], object]
) -> None:
    assert_refusal(refusal_of(lambda: call(stub)), Code.INVALID_ARGUMENT, "INVALID_REQUEST", 400)
