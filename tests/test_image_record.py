"""The image record's Glance fields and UpdateImage, through a real server on both databases."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf import field_mask_pb2

from imageloc.v1 import image_service_pb2 as pb
from imageloc.v1 import image_service_pb2_grpc as pb_grpc

from support import filled, location, make_image, refusal_of, status_name


def get(stub: pb_grpc.ImageServiceStub, image_id: str) -> pb.Image:
    return stub.GetImage(pb.GetImageRequest(image_id=image_id)).image


def update(stub: pb_grpc.ImageServiceStub, image: pb.Image, *paths: str, **kwargs: str) -> pb.Image:
    request = pb.UpdateImageRequest(
        image=image, update_mask=field_mask_pb2.FieldMask(paths=list(paths)), **kwargs
    )
    return stub.UpdateImage(request).image


def created(stub: pb_grpc.ImageServiceStub, **fields: object) -> pb.Image:
    request = pb.CreateImageRequest(name="rec", disk_format="raw", container_format="bare")
    return stub.CreateImage(filled(request, **fields)).image


def test_create_image_keeps_every_glance_field_and_reads_them_back(
    stub: pb_grpc.ImageServiceStub,
) -> None:
    properties = {"hw_disk_bus": "scsi", "owner_specified.openstack.md5": "", "os_distro": "x'; --"}
    image = created(
        stub,
        min_disk=20,
        min_ram=512,
        tags=["t1", "t2", "t1"],
        os_hidden=True,
        virtual_size=10 * 2**30,
        properties=properties,
    )
    assert (image.min_disk, image.min_ram, image.os_hidden) == (20, 512, True)
    assert list(image.tags) == ["t1", "t2"]  # in the order first given, each once
    assert image.HasField("virtual_size")
    assert image.virtual_size == 10 * 2**30
    assert dict(image.properties) == properties
    assert get(stub, image.id) == image


def test_an_image_created_without_them_has_glances_defaults(
    stub: pb_grpc.ImageServiceStub,
) -> None:
    image = get(stub, created(stub).id)
    assert (image.min_disk, image.min_ram, image.os_hidden) == (0, 0, False)
    assert list(image.tags) == []
    assert dict(image.properties) == {}
    assert not image.HasField("virtual_size")


@pytest.mark.parametrize(
    ("fields", "reason", "field"),
    [
        ({"min_disk": -1}, "INVALID_REQUEST", "min_disk"),
        ({"min_ram": -5}, "INVALID_REQUEST", "min_ram"),
        ({"virtual_size": -1}, "INVALID_REQUEST", "virtual_size"),
        ({"tags": ["x" * 256]}, "INVALID_REQUEST", "tags"),
        ({"tags": [""]}, "INVALID_REQUEST", "tags"),
        ({"properties": {"status": "active"}}, "RESERVED_PROPERTY", "properties.status"),
        ({"properties": {"os_glance_import_task": "t"}}, "RESERVED_PROPERTY", None),
        ({"properties": {"k" * 256: "v"}}, "INVALID_REQUEST", None),
        ({"properties": {"k": "v" * 65536}}, "INVALID_REQUEST", "properties.k"),
    ],
)
def test_create_image_refuses_a_bad_record_value_naming_the_field(
    stub: pb_grpc.ImageServiceStub, fields: dict[str, object], reason: str, field: str | None
) -> None:
    refusal = refusal_of(lambda: created(stub, **fields))
    assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refusal.info.reason == reason
    violation = refusal.details[1].field_violations[0]
    assert violation.field == field if field else violation.field.startswith("properties.")


def test_more_properties_or_tags_than_glances_quota_of_128_are_refused(
    stub: pb_grpc.ImageServiceStub,
) -> None:
    for field, reason in (
        ("properties", "PROPERTY_QUOTA_EXCEEDED"),
        ("tags", "TAG_QUOTA_EXCEEDED"),
    ):
        values = {f"k{i}": "v" for i in range(129)} if field == "properties" else None
        value = values if values is not None else [f"t{i}" for i in range(129)]
        refusal = refusal_of(lambda: created(stub, **{field: value}))  # noqa: B023
        assert refusal.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refusal.info.reason == reason
        assert refusal.info.metadata["httpStatus"] == "413"
        assert (refusal.info.metadata["attempted"], refusal.info.metadata["maximum"]) == (
            "129",
            "128",
        )
    at_quota = created(stub, properties={f"k{i}": "v" for i in range(128)})
    assert len(get(stub, at_quota.id).properties) == 128


def test_update_image_sets_only_the_fields_its_mask_names(stub: pb_grpc.ImageServiceStub) -> None:
    image = created(stub, min_disk=1, tags=["a"], properties={"keep": "1", "drop": "2"})
    wanted = pb.Image(
        id=image.id,
        name="renamed",
        min_disk=40,
        min_ram=2048,  # not in the mask: unchanged
        tags=["b", "c"],
        protected=True,
        os_hidden=True,
        properties={"new": "n", "keep": "ignored"},
    )
    changed = update(
        stub, wanted, "name", "min_disk", "tags", "protected", "os_hidden", "properties.new",
        "properties.drop",
    )  # fmt: skip
    assert (changed.name, changed.min_disk, changed.min_ram) == ("renamed", 40, 0)
    assert list(changed.tags) == ["b", "c"]
    assert changed.protected
    assert changed.os_hidden
    assert dict(changed.properties) == {"keep": "1", "new": "n"}  # drop removed, keep kept
    assert changed.etag != image.etag
    assert changed.revision > image.revision
    assert get(stub, image.id) == changed


def test_update_image_replaces_every_property_with_the_properties_path(
    stub: pb_grpc.ImageServiceStub,
) -> None:
    image = created(stub, properties={"a": "1", "b": "2"})
    changed = update(stub, pb.Image(id=image.id, properties={"c": "3"}), "properties")
    assert dict(changed.properties) == {"c": "3"}
    quoted = update(stub, pb.Image(id=image.id, properties={"x.y": "z"}), "properties.`x.y`")
    assert dict(quoted.properties) == {"c": "3", "x.y": "z"}


def test_update_image_clears_the_virtual_size_when_the_mask_names_it_and_image_has_none(
    stub: pb_grpc.ImageServiceStub,
) -> None:
    image = created(stub, virtual_size=5)
    cleared = update(stub, pb.Image(id=image.id), "virtual_size")
    assert not cleared.HasField("virtual_size")
    assert update(stub, pb.Image(id=image.id, virtual_size=7), "virtual_size").virtual_size == 7


@pytest.mark.parametrize(
    "path",
    ["status", "locations", "size", "checksum", "os_hash_algo", "os_hash_value", "owner", "id"],
)
def test_update_image_refuses_a_read_only_field_as_glance_does(
    stub: pb_grpc.ImageServiceStub, path: str
) -> None:
    image = created(stub)
    refusal = refusal_of(lambda: update(stub, pb.Image(id=image.id, owner="other"), path))
    assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refusal.info.reason == "READ_ONLY_FIELD"
    assert refusal.info.metadata["field"] == path
    assert refusal.info.metadata["httpStatus"] == "403"
    assert refusal.message == f"Attribute '{path}' is read-only."
    assert get(stub, image.id) == image


@pytest.mark.parametrize(
    ("image_fields", "paths", "field"),
    [
        ({}, [], "update_mask"),
        ({}, ["bogus"], "update_mask"),
        ({}, ["visibility"], "image.visibility"),
        ({"min_ram": -1}, ["min_ram"], "min_ram"),
        ({"disk_format": "floppy"}, ["disk_format"], "disk_format"),
        ({"name": "n" * 256}, ["name"], "name"),
    ],
)
def test_update_image_refuses_an_empty_mask_an_unknown_path_and_bad_values(
    stub: pb_grpc.ImageServiceStub, image_fields: dict[str, object], paths: list[str], field: str
) -> None:
    image = created(stub)
    message = pb.Image(id=image.id, **image_fields)  # type: ignore[arg-type]
    refusal = refusal_of(lambda: update(stub, message, *paths))
    assert (refusal.code, refusal.info.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    )
    assert refusal.details[1].field_violations[0].field == field
    assert get(stub, image.id) == image


def test_update_image_changes_formats_only_while_the_image_is_queued(
    stub: pb_grpc.ImageServiceStub,
) -> None:
    queued = created(stub)
    changed = update(stub, pb.Image(id=queued.id, disk_format="qcow2"), "disk_format")
    assert changed.disk_format == "qcow2"
    active = make_image(stub, "active")
    refusal = refusal_of(
        lambda: update(stub, pb.Image(id=active.id, container_format="ovf"), "container_format")
    )
    assert refusal.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refusal.info.reason == "IMAGE_STATUS_CONFLICT"
    assert refusal.info.metadata["httpStatus"] == "403"
    same = update(stub, pb.Image(id=active.id, disk_format=active.disk_format), "disk_format")
    assert same.etag == active.etag  # an unchanged value is no change at all
    renamed = update(stub, pb.Image(id=active.id, name="still fine"), "name")
    assert status_name(renamed.status) == "active"
    assert renamed.name == "still fine"


def test_update_image_with_a_stale_etag_or_of_an_unknown_image_is_refused(
    stub: pb_grpc.ImageServiceStub,
) -> None:
    image = created(stub)
    update(stub, pb.Image(id=image.id, name="v2"), "name")
    stale = refusal_of(
        lambda: update(stub, pb.Image(id=image.id, name="v3"), "name", etag=image.etag)
    )
    assert stale.info.reason == "ETAG_MISMATCH"
    unknown = str(uuid.uuid4())
    missing = refusal_of(lambda: update(stub, pb.Image(id=unknown, name="x"), "name"))
    assert (missing.code, missing.info.reason) == (grpc.StatusCode.NOT_FOUND, "IMAGE_NOT_FOUND")
    assert missing.info.metadata["imageId"] == unknown


def test_update_image_with_a_request_id_is_applied_once(stub: pb_grpc.ImageServiceStub) -> None:
    image = created(stub, tags=["a"])
    request_id = str(uuid.uuid4())
    first = update(stub, pb.Image(id=image.id, tags=["b"]), "tags", request_id=request_id)
    again = update(stub, pb.Image(id=image.id, tags=["b"]), "tags", request_id=request_id)
    assert again == first
    reused = refusal_of(
        lambda: update(stub, pb.Image(id=image.id, tags=["c"]), "tags", request_id=request_id)
    )
    assert reused.info.reason == "REQUEST_ID_REUSED"
    assert list(get(stub, image.id).tags) == ["b"]


def test_the_record_fields_survive_location_writes_and_show_in_lists(
    stub: pb_grpc.ImageServiceStub,
) -> None:
    image = created(stub, tags=["keep"], properties={"hw_disk_bus": "virtio"}, min_ram=64)
    stub.AddLocation(pb.AddLocationRequest(image_id=image.id, location=location("rbd://a/b/c/d")))
    stored = get(stub, image.id)
    assert (list(stored.tags), dict(stored.properties), stored.min_ram) == (
        ["keep"],
        {"hw_disk_bus": "virtio"},
        64,
    )
    listed = {i.id: i for i in stub.ListImages(pb.ListImagesRequest(page_size=1000)).images}
    assert listed[image.id] == stored
