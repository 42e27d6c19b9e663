"""ListImages' Glance filters and sort orders, paged, through a real server on both databases."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from imageloc.v1 import image_service_pb2 as pb
from imageloc.v1 import image_service_pb2_grpc as pb_grpc

from support import MD5, SHA512, filled, location, refusal_of


def create(stub: pb_grpc.ImageServiceStub, name: str, **fields: Any) -> pb.Image:
    request = pb.CreateImageRequest(name=name, disk_format="raw", container_format="bare")
    return stub.CreateImage(filled(request, **fields)).image


def uploaded(stub: pb_grpc.ImageServiceStub, name: str, size: int, **fields: Any) -> pb.Image:
    """An active image of this size (through an upload)."""
    image = create(stub, name, **fields)
    stub.BeginUpload(pb.BeginUploadRequest(image_id=image.id))
    return stub.CompleteUpload(
        pb.CompleteUploadRequest(
            image_id=image.id,
            location=location(f"https://store.example/{image.id}"),
            size=size,
            checksum=MD5,
            os_hash_algo="sha512",
            os_hash_value=SHA512,
        )
    ).image


def listed(stub: pb_grpc.ImageServiceStub, page_size: int = 1000, **filters: Any) -> list[str]:
    """The names of every image the listing returns, page after page."""
    names: list[str] = []
    token = ""
    while True:
        request = filled(pb.ListImagesRequest(page_size=page_size, page_token=token), **filters)
        response = stub.ListImages(request)
        names += [image.name for image in response.images]
        token = response.next_page_token
        if not token:
            return names


def test_each_glance_filter_keeps_only_the_images_that_pass_it(
    stub: pb_grpc.ImageServiceStub,
) -> None:
    create(stub, "plain")
    create(stub, "tagged", tags=["gold", "x86"])
    create(stub, "gold-only", tags=["gold"])
    create(stub, "scsi", properties={"hw_disk_bus": "scsi", "os_distro": "ubuntu"})
    create(stub, "virtio", properties={"hw_disk_bus": "virtio"})
    create(stub, "hidden", os_hidden=True)
    create(stub, "theirs", owner="p2")
    assert sorted(listed(stub, tags=["gold"])) == ["gold-only", "tagged"]
    assert listed(stub, tags=["gold", "x86"]) == ["tagged"]  # every tag must match
    assert listed(stub, properties={"hw_disk_bus": "scsi"}) == ["scsi"]
    assert listed(stub, properties={"hw_disk_bus": "scsi", "os_distro": "debian"}) == []
    assert listed(stub, name="virtio") == ["virtio"]
    assert listed(stub, owner="p2") == ["theirs"]
    assert "hidden" not in listed(stub)  # Glance's default leaves hidden images out
    assert listed(stub, os_hidden=True) == ["hidden"]
    assert "hidden" not in listed(stub, os_hidden=False)


def test_size_min_and_size_max_bound_the_size(stub: pb_grpc.ImageServiceStub) -> None:
    for size in (10, 100, 1000):
        uploaded(stub, f"s{size}", size)
    assert sorted(listed(stub, size_min=100)) == ["s100", "s1000"]
    assert listed(stub, size_max=99) == ["s10"]
    assert listed(stub, size_min=11, size_max=999) == ["s100"]


ORDERS: dict[str, Callable[[pb.Image], Any]] = {
    "name": lambda i: i.name,
    "size": lambda i: i.size,
    "disk_format": lambda i: i.disk_format,
    "status": lambda i: pb.ImageStatus.Name(i.status),
}


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("field", ["name", "size", "disk_format", "created_at", "updated_at"])
def test_every_sort_key_orders_the_pages_and_ties_break_by_id(
    stub: pb_grpc.ImageServiceStub, field: str, descending: bool
) -> None:
    images = [
        uploaded(stub, name, size, disk_format=disk)
        for name, size, disk in [
            ("delta", 30, "raw"), ("alpha", 10, "qcow2"), ("charlie", 30, "raw"),
            ("bravo", 20, "qcow2"), ("echo", 10, "raw"), ("alpha", 20, "raw"),
        ]
    ]  # fmt: skip
    # The last one changed is the newest by updated_at, whatever its creation order.
    touched = stub.DeactivateImage(pb.DeactivateImageRequest(image_id=images[1].id)).image
    images[1] = touched
    keys: dict[str, Callable[[pb.Image], Any]] = {
        **ORDERS,
        "created_at": lambda i: (i.create_time.seconds, i.create_time.nanos),
        "updated_at": lambda i: (i.update_time.seconds, i.update_time.nanos),
    }
    expected = sorted(images, key=lambda i: (keys[field](i), i.id), reverse=descending)
    order = f"{field} {'desc' if descending else 'asc'}"
    ids: list[str] = []
    token = ""
    while True:
        response = stub.ListImages(
            pb.ListImagesRequest(page_size=2, page_token=token, order_by=order)
        )
        ids += [image.id for image in response.images]
        token = response.next_page_token
        if not token:
            break
    assert ids == [image.id for image in expected]


def test_an_order_of_mixed_directions_pages_without_a_gap_or_a_repeat(
    stub: pb_grpc.ImageServiceStub,
) -> None:
    images = [uploaded(stub, name, size) for name, size in [("b", 1), ("a", 2), ("b", 3), ("a", 4)]]
    images += [uploaded(stub, "a", 2)]
    expected = sorted(images, key=lambda i: i.id, reverse=True)
    expected = sorted(expected, key=lambda i: -i.size)
    expected = sorted(expected, key=lambda i: i.name)
    for page_size in (1, 2, 3):
        assert listed(stub, page_size=page_size, order_by="name, size desc") == [
            i.name for i in expected
        ]
        ids: list[str] = []
        token = ""
        while True:
            response = stub.ListImages(
                pb.ListImagesRequest(
                    page_size=page_size, page_token=token, order_by="name asc, size desc"
                )
            )
            ids += [image.id for image in response.images]
            token = response.next_page_token
            if not token:
                break
        assert ids == [i.id for i in expected]


def test_the_default_order_is_the_newest_first(stub: pb_grpc.ImageServiceStub) -> None:
    for name in ("first", "second", "third"):
        create(stub, name)
    assert listed(stub) == ["third", "second", "first"]
    assert listed(stub, order_by="created_at desc") == ["third", "second", "first"]


@pytest.mark.parametrize("order_by", ["bogus", "name sideways", "name, name", "name asc desc", ","])
def test_an_unknown_sort_key_or_a_malformed_order_is_refused(
    stub: pb_grpc.ImageServiceStub, order_by: str
) -> None:
    refusal = refusal_of(lambda: stub.ListImages(pb.ListImagesRequest(order_by=order_by)))
    assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refusal.info.reason == "INVALID_REQUEST"
    assert refusal.details[1].field_violations[0].field == "order_by"


def test_a_page_token_holds_only_for_its_filters_and_its_order(
    stub: pb_grpc.ImageServiceStub,
) -> None:
    for name in ("a", "b", "c"):
        create(stub, name, tags=["t"])
    token = stub.ListImages(
        pb.ListImagesRequest(page_size=1, order_by="name", tags=["t"])
    ).next_page_token
    assert token
    for other in (
        pb.ListImagesRequest(page_token=token, order_by="name desc", tags=["t"]),
        pb.ListImagesRequest(page_token=token, order_by="name", tags=["u"]),
        pb.ListImagesRequest(page_token=token, tags=["t"]),
    ):
        refusal = refusal_of(lambda: stub.ListImages(other))  # noqa: B023
        assert refusal.info.reason == "INVALID_REQUEST"
        assert refusal.details[1].field_violations[0].field == "page_token"
    same = stub.ListImages(pb.ListImagesRequest(page_token=token, order_by="name", tags=["t"]))
    assert [image.name for image in same.images] == ["b", "c"]


@pytest.mark.parametrize(
    ("filters", "field"),
    [
        ({"tags": [f"t{i}" for i in range(129)]}, "tags"),
        ({"properties": {f"k{i}": "v" for i in range(129)}}, "properties"),
        ({"name": "a\x00b"}, "name"),
        ({"tags": ["ok", "a\x00"]}, "tags[1]"),
        ({"properties": {"k": "\x00"}}, "properties.k"),
    ],
)
def test_filters_no_store_should_run_are_refused_not_failed(
    stub: pb_grpc.ImageServiceStub, filters: dict[str, Any], field: str
) -> None:
    # Found by the fuzzer: 129 tag filters were SQLite's "expression tree is too large",
    # answered STORE_UNAVAILABLE; a NUL was PostgreSQL's refusal of the text.
    refusal = refusal_of(lambda: listed(stub, **filters))
    assert (refusal.code, refusal.info.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    )
    assert refusal.details[1].field_violations[0].field == field
