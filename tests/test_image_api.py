"""What succeeds, and what it leaves stored, through a real server."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from imageloc.server.app import build_server
from imageloc.server.config import Settings
from imageloc.v1 import image_service_pb2 as pb
from imageloc.v1 import image_service_pb2_grpc as pb_grpc

from support import MD5, SHA512, location, make_image, migrate, status_name

URLS = ["https://store.example/a.img", "rbd://fsid/pool/b/snap", "s3://bucket/c"]


def get(stub: pb_grpc.ImageServiceStub, image_id: str) -> pb.Image:
    return stub.GetImage(pb.GetImageRequest(image_id=image_id)).image


def test_create_image_is_queued_private_with_timestamps_and_etag(
    stub: pb_grpc.ImageServiceStub,
) -> None:
    image = stub.CreateImage(
        pb.CreateImageRequest(name="cirros", disk_format="qcow2", container_format="bare")
    ).image
    assert uuid.UUID(image.id)
    assert status_name(image.status) == "queued"
    assert image.visibility == pb.IMAGE_VISIBILITY_PRIVATE
    assert image.create_time.seconds > 0
    assert image.update_time == image.create_time
    assert image.etag
    assert get(stub, image.id) == image


def test_create_image_takes_a_given_id_in_canonical_form(stub: pb_grpc.ImageServiceStub) -> None:
    wanted = uuid.uuid4()
    image = stub.CreateImage(
        pb.CreateImageRequest(
            name="x", id=str(wanted).upper(), visibility=pb.IMAGE_VISIBILITY_PUBLIC
        )
    ).image
    assert image.id == str(wanted)
    assert image.visibility == pb.IMAGE_VISIBILITY_PUBLIC
    assert get(stub, str(wanted).upper()).id == str(wanted)


def test_values_with_quotes_percents_and_semicolons_are_stored_as_given(
    stub: pb_grpc.ImageServiceStub,
) -> None:
    # PostgreSQL's writes send their statements together with the values bound as literals
    # (store/driver.py's LoopDriver): every value comes back exactly as it was given.
    tricky = '50%s off; it\'s "%%" -- DROP TABLE images; \\ $1 ? \u00e9\u2603'
    request = pb.CreateImageRequest(name=tricky, disk_format="raw", container_format="bare")
    image = stub.CreateImage(request).image
    url = "https://store.example/a%20b;c'd%s?q=1&r=%%"
    metadata = {"note": tricky, "nested": {"k'; --": "v%s"}}
    added = stub.AddLocation(
        pb.AddLocationRequest(
            image_id=image.id, location=location(url, **metadata), request_id=str(uuid.uuid4())
        )
    ).image
    stored = get(stub, image.id)
    assert stored == added
    assert stored.name == tricky
    assert stored.locations[0].url == url
    assert json_format.MessageToDict(stored.locations[0].metadata) == metadata


def test_location_order_is_stored_as_set(stub: pb_grpc.ImageServiceStub) -> None:
    image = make_image(stub, "queued")
    stub.ReplaceLocation(
        pb.ReplaceLocationRequest(image_id=image.id, locations=[location(u) for u in URLS])
    )
    inserted = stub.AddLocation(
        pb.AddLocationRequest(image_id=image.id, location=location("cinder://vol-1"), index=0)
    ).image
    assert [loc.url for loc in inserted.locations] == ["cinder://vol-1", *URLS]
    assert [loc.url for loc in get(stub, image.id).locations] == ["cinder://vol-1", *URLS]
    reordered = stub.ReplaceLocation(
        pb.ReplaceLocationRequest(
            image_id=image.id,
            locations=[location(u, store=f"s{i}") for i, u in enumerate(reversed(URLS))]
            + [location("cinder://vol-1")],
        )
    ).image
    stored = get(stub, image.id)
    assert stored == reordered
    assert [loc.url for loc in stored.locations] == [*reversed(URLS), "cinder://vol-1"]
    assert stored.locations[0].metadata["store"] == "s0"


def test_add_location_to_queued_image_activates_it_with_validation_data(
    stub: pb_grpc.ImageServiceStub,
) -> None:
    image = make_image(stub, "queued")
    data = pb.ValidationData(checksum=MD5, os_hash_algo="sha512", os_hash_value=SHA512)
    active = stub.AddLocation(
        pb.AddLocationRequest(image_id=image.id, location=location(URLS[0]), validation_data=data)
    ).image
    assert status_name(active.status) == "active"
    assert (active.checksum, active.os_hash_algo, active.os_hash_value) == (MD5, "sha512", SHA512)
    assert get(stub, image.id) == active


def test_remove_location_by_index_and_by_url_keeps_size_checksum_status(
    stub: pb_grpc.ImageServiceStub,
) -> None:
    image = make_image(stub, "saving")
    active = stub.CompleteUpload(
        pb.CompleteUploadRequest(
            image_id=image.id,
            location=location(URLS[0]),
            size=1024,
            checksum=MD5,
            os_hash_algo="sha512",
            os_hash_value=SHA512,
        )
    ).image
    for url in URLS[1:]:
        stub.AddLocation(pb.AddLocationRequest(image_id=image.id, location=location(url)))
    by_index = stub.RemoveLocation(pb.RemoveLocationRequest(image_id=image.id, index=1)).image
    assert [loc.url for loc in by_index.locations] == [URLS[0], URLS[2]]
    by_url = stub.RemoveLocation(pb.RemoveLocationRequest(image_id=image.id, url=URLS[0])).image
    assert [loc.url for loc in by_url.locations] == [URLS[2]]
    assert (by_url.size, by_url.checksum, by_url.status) == (1024, MD5, active.status)
    assert get(stub, image.id) == by_url


def test_every_mutation_changes_the_etag_and_a_no_op_does_not(
    stub: pb_grpc.ImageServiceStub,
) -> None:
    image = make_image(stub, "active")
    deactivated = stub.DeactivateImage(pb.DeactivateImageRequest(image_id=image.id)).image
    again = stub.DeactivateImage(pb.DeactivateImageRequest(image_id=image.id)).image
    reactivated = stub.ReactivateImage(pb.ReactivateImageRequest(image_id=image.id)).image
    assert len({image.etag, deactivated.etag, reactivated.etag}) == 3
    assert again.etag == deactivated.etag
    assert status_name(reactivated.status) == "active"


def test_upload_lifecycle(stub: pb_grpc.ImageServiceStub) -> None:
    image = make_image(stub, "queued")
    saving = stub.BeginUpload(pb.BeginUploadRequest(image_id=image.id)).image
    assert status_name(saving.status) == "saving"
    active = stub.CompleteUpload(
        pb.CompleteUploadRequest(image_id=image.id, location=location(URLS[0]), size=7)
    ).image
    assert status_name(active.status) == "active"
    assert active.size == 7
    assert [loc.url for loc in active.locations] == [URLS[0]]


def test_import_lifecycle(stub: pb_grpc.ImageServiceStub) -> None:
    image = make_image(stub, "queued")
    assert status_name(stub.StageImage(pb.StageImageRequest(image_id=image.id)).image.status) == (
        "uploading"
    )
    importing = stub.BeginImport(pb.BeginImportRequest(image_id=image.id)).image
    assert status_name(importing.status) == "importing"
    active = stub.CompleteUpload(
        pb.CompleteUploadRequest(image_id=image.id, location=location(URLS[1]), size=3)
    ).image
    assert status_name(active.status) == "active"


def test_failed_upload_kills_the_image(stub: pb_grpc.ImageServiceStub) -> None:
    image = make_image(stub, "saving")
    assert status_name(stub.FailUpload(pb.FailUploadRequest(image_id=image.id)).image.status) == (
        "killed"
    )


def test_list_pages_newest_first_without_gaps_or_repeats(stub: pb_grpc.ImageServiceStub) -> None:
    created = [stub.CreateImage(pb.CreateImageRequest(name=f"i{i}")).image.id for i in range(7)]
    seen: list[str] = []
    token = ""
    while True:
        page = stub.ListImages(pb.ListImagesRequest(page_size=3, page_token=token))
        assert len(page.images) <= 3
        seen += [image.id for image in page.images]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(created))


def test_list_filters_by_status_and_hides_deleted(stub: pb_grpc.ImageServiceStub) -> None:
    active = make_image(stub, "active")
    queued = make_image(stub, "queued")
    gone = make_image(stub, "queued")
    stub.DeleteImage(pb.DeleteImageRequest(image_id=gone.id))
    listed = stub.ListImages(pb.ListImagesRequest(status=pb.IMAGE_STATUS_ACTIVE)).images
    assert [i.id for i in listed] == [active.id]
    everything = [i.id for i in stub.ListImages(pb.ListImagesRequest()).images]
    assert everything == [queued.id, active.id]
    deleted = stub.ListImages(pb.ListImagesRequest(status=pb.IMAGE_STATUS_DELETED)).images
    assert list(deleted) == []


def test_page_size_zero_means_the_default_and_large_is_capped(
    stub: pb_grpc.ImageServiceStub,
) -> None:
    for i in range(30):
        stub.CreateImage(pb.CreateImageRequest(name=f"i{i}"))
    assert len(stub.ListImages(pb.ListImagesRequest()).images) == 25
    assert len(stub.ListImages(pb.ListImagesRequest(page_size=5000)).images) == 30


def test_page_token_is_bound_to_its_filter(stub: pb_grpc.ImageServiceStub) -> None:
    for i in range(3):
        stub.CreateImage(pb.CreateImageRequest(name=f"i{i}"))
    token = stub.ListImages(pb.ListImagesRequest(page_size=1)).next_page_token
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListImages(
            pb.ListImagesRequest(page_size=1, page_token=token, status=pb.IMAGE_STATUS_QUEUED)
        )
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_data_survives_a_restart(database_url: str) -> None:
    migrate(database_url)
    settings = Settings(listen="127.0.0.1:0", database_url=database_url)
    first = build_server(settings)
    first.start()
    with grpc.insecure_channel(f"127.0.0.1:{first.port}") as channel:
        image = make_image(pb_grpc.ImageServiceStub(channel), "active")
    first.stop(None)
    second = build_server(settings)
    second.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{second.port}") as channel:
            assert get(pb_grpc.ImageServiceStub(channel), image.id) == image
    finally:
        second.stop(None)


def test_an_in_memory_store_serves_reads_amid_concurrent_writes() -> None:
    server = build_server(Settings(listen="127.0.0.1:0", database_url="sqlite://"))
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ImageServiceStub(channel)
            image = make_image(stub, "active")
            urls = [f"https://store.example/{i}.img" for i in range(8)]
            writes = [
                stub.AddLocation.future(
                    pb.AddLocationRequest(image_id=image.id, location=location(url))
                )
                for url in urls
            ]
            reads = [stub.GetImage.future(pb.GetImageRequest(image_id=image.id)) for _ in urls]
            for write in writes:
                write.result(timeout=10)
            for read in reads:
                read.result(timeout=10)
            stored = get(stub, image.id)
    finally:
        server.stop(None)
    assert {loc.url for loc in stored.locations} >= set(urls)


def test_health_serves_and_reflection_lists_the_service(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "imageloc.v1.ImageService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {"imageloc.v1.ImageService", "grpc.health.v1.Health"} <= names


def test_a_page_too_large_for_a_client_is_cut_short_and_continues(
    stub: pb_grpc.ImageServiceStub,
) -> None:
    big = {f"k{k}": "x" * 1900 for k in range(2)}  # near the 4 KiB per-location metadata limit
    created = []
    for i in range(90):  # 90 images x 10 locations x ~3.8 KiB: over 3 MiB in one page
        image = make_image(stub, "queued")
        stub.ReplaceLocation(
            pb.ReplaceLocationRequest(
                image_id=image.id,
                locations=[location(f"https://s/{i}/{n}", **big) for n in range(10)],
            )
        )
        created.append(image.id)
    first = stub.ListImages(pb.ListImagesRequest(page_size=1000))
    assert 0 < len(first.images) < 90
    assert first.ByteSize() < 4 * 1024 * 1024
    assert first.next_page_token
    seen = [i.id for i in first.images]
    token = first.next_page_token
    while token:
        page = stub.ListImages(pb.ListImagesRequest(page_size=1000, page_token=token))
        seen += [i.id for i in page.images]
        token = page.next_page_token
    assert seen == list(reversed(created))
