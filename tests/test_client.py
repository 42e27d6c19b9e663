"""ImageClient against a real server on an ephemeral port: every method, paging, refusals."""

from __future__ import annotations

import hashlib
import socket
import uuid
from collections.abc import Iterator

import grpc
import pytest

from imageloc.client import (
    ImageClient,
    ImagelocError,
    parse_status,
    parse_visibility,
    status_word,
)
from imageloc.v1 import image_service_pb2 as pb

DATA = b"image data"
MD5 = hashlib.md5(DATA).hexdigest()
SHA512 = hashlib.sha512(DATA).hexdigest()
URL_A = "http://store.example/a"
URL_B = "http://store.example/b"
URL_C = "http://store.example/c"


@pytest.fixture
def server_address(target: str) -> str:
    """A real imageloc server with SQLite in tmp_path (conftest's `target`)."""
    return target


@pytest.fixture
def client(server_address: str) -> Iterator[ImageClient]:
    with ImageClient(server_address, timeout=5.0) as image_client:
        yield image_client


def queued(client: ImageClient, name: str = "cirros") -> pb.Image:
    """A new queued image with both formats set."""
    return client.create_image(name, disk_format="qcow2", container_format="bare")


def active(client: ImageClient, *urls: str) -> pb.Image:
    """A new active image with the given locations (URL_A when none)."""
    image = queued(client)
    return client.replace_locations(image.id, list(urls or (URL_A,)))


def refusal(error: pytest.ExceptionInfo[ImagelocError]) -> tuple[grpc.StatusCode, str]:
    return error.value.code, error.value.reason


# Images.


def test_create_image_returns_a_queued_image_with_the_given_fields(client: ImageClient) -> None:
    image_id = str(uuid.uuid4())
    image = client.create_image(
        "cirros",
        disk_format="qcow2",
        container_format="bare",
        visibility="public",
        protected=True,
        image_id=image_id,
    )
    assert image.id == image_id
    assert image.name == "cirros"
    assert image.status == pb.IMAGE_STATUS_QUEUED
    assert (image.disk_format, image.container_format) == ("qcow2", "bare")
    assert image.visibility == pb.IMAGE_VISIBILITY_PUBLIC
    assert image.protected
    assert image.etag


def test_create_image_takes_a_visibility_enum_and_picks_an_id(client: ImageClient) -> None:
    image = client.create_image("x", visibility=pb.IMAGE_VISIBILITY_COMMUNITY)
    assert uuid.UUID(image.id)
    assert image.visibility == pb.IMAGE_VISIBILITY_COMMUNITY


def test_create_image_refuses_a_taken_id(client: ImageClient) -> None:
    image = queued(client)
    with pytest.raises(ImagelocError) as caught:
        client.create_image("again", image_id=image.id)
    assert refusal(caught) == (grpc.StatusCode.ALREADY_EXISTS, "IMAGE_EXISTS")


def test_get_image_returns_what_create_returned(client: ImageClient) -> None:
    image = queued(client)
    assert client.get_image(image.id) == image


def test_get_image_of_an_unknown_id_is_image_not_found(client: ImageClient) -> None:
    image_id = str(uuid.uuid4())
    with pytest.raises(ImagelocError) as caught:
        client.get_image(image_id)
    assert refusal(caught) == (grpc.StatusCode.NOT_FOUND, "IMAGE_NOT_FOUND")
    assert caught.value.http_status == 404
    assert caught.value.domain == "imageloc"


def test_list_images_pages_through_every_image_newest_first(client: ImageClient) -> None:
    created = [queued(client, f"image-{n}").id for n in range(5)]
    listed = [image.id for image in client.list_images(page_size=2)]
    assert listed == list(reversed(created))


def test_list_images_page_hands_out_a_token_until_the_last_page(client: ImageClient) -> None:
    for n in range(3):
        queued(client, f"image-{n}")
    first = client.list_images_page(page_size=2)
    assert len(first.images) == 2
    assert first.next_page_token
    last = client.list_images_page(page_size=2, page_token=first.next_page_token)
    assert len(last.images) == 1
    assert not last.next_page_token


@pytest.mark.parametrize("status", ["active", "ACTIVE", pb.IMAGE_STATUS_ACTIVE])
def test_list_images_filters_by_status_word_or_enum(
    client: ImageClient, status: str | pb.ImageStatus.ValueType
) -> None:
    queued(client)
    wanted = active(client)
    assert [image.id for image in client.list_images(status=status)] == [wanted.id]


def test_delete_image_hides_the_image(client: ImageClient) -> None:
    image = queued(client)
    deleted = client.delete_image(image.id, etag=image.etag)
    assert deleted.status == pb.IMAGE_STATUS_DELETED
    with pytest.raises(ImagelocError) as caught:
        client.get_image(image.id)
    assert caught.value.reason == "IMAGE_NOT_FOUND"


def test_delete_image_with_a_stale_etag_is_etag_mismatch(client: ImageClient) -> None:
    image = queued(client)
    client.begin_upload(image.id)
    with pytest.raises(ImagelocError) as caught:
        client.delete_image(image.id, etag=image.etag)
    assert refusal(caught) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    assert caught.value.http_status == 412


# Lifecycle.


def test_upload_moves_queued_to_saving_to_active_with_the_location(client: ImageClient) -> None:
    image = queued(client)
    saving = client.begin_upload(image.id, etag=image.etag)
    assert saving.status == pb.IMAGE_STATUS_SAVING
    done = client.complete_upload(
        image.id,
        url=URL_A,
        metadata={"store": "fast"},
        size=len(DATA),
        checksum=MD5,
        os_hash_algo="sha512",
        os_hash_value=SHA512,
        etag=saving.etag,
    )
    assert done.status == pb.IMAGE_STATUS_ACTIVE
    assert (done.size, done.checksum, done.os_hash_value) == (len(DATA), MD5, SHA512)
    assert [location.url for location in done.locations] == [URL_A]
    assert dict(done.locations[0].metadata) == {"store": "fast"}


def test_fail_upload_kills_a_saving_image(client: ImageClient) -> None:
    image = queued(client)
    client.begin_upload(image.id)
    assert client.fail_upload(image.id).status == pb.IMAGE_STATUS_KILLED


def test_import_moves_queued_to_uploading_to_importing_to_active(client: ImageClient) -> None:
    image = queued(client)
    assert client.stage_image(image.id).status == pb.IMAGE_STATUS_UPLOADING
    assert client.begin_import(image.id).status == pb.IMAGE_STATUS_IMPORTING
    done = client.complete_upload(
        image.id, url=URL_A, size=len(DATA), os_hash_algo="sha512", os_hash_value=SHA512
    )
    assert done.status == pb.IMAGE_STATUS_ACTIVE


def test_complete_upload_without_hashes_is_allowed(client: ImageClient) -> None:
    image = queued(client)
    client.begin_upload(image.id)
    done = client.complete_upload(image.id, url=URL_A, size=len(DATA))
    assert done.status == pb.IMAGE_STATUS_ACTIVE
    assert (done.checksum, done.os_hash_algo, done.os_hash_value) == ("", "", "")


def test_deactivate_and_reactivate_round_trip(client: ImageClient) -> None:
    image = active(client)
    assert client.deactivate_image(image.id).status == pb.IMAGE_STATUS_DEACTIVATED
    assert client.reactivate_image(image.id).status == pb.IMAGE_STATUS_ACTIVE


def test_deactivate_of_a_queued_image_is_refused_with_http_403(client: ImageClient) -> None:
    image = queued(client)
    with pytest.raises(ImagelocError) as caught:
        client.deactivate_image(image.id)
    assert refusal(caught) == (grpc.StatusCode.FAILED_PRECONDITION, "INVALID_TRANSITION")
    assert caught.value.http_status == 403


# Locations.


def test_add_location_activates_a_queued_image_with_its_validation_data(
    client: ImageClient,
) -> None:
    image = queued(client)
    done = client.add_location(
        image.id,
        URL_A,
        metadata={"region": "one"},
        validation_data={"checksum": MD5, "os_hash_algo": "sha512", "os_hash_value": SHA512},
    )
    assert done.status == pb.IMAGE_STATUS_ACTIVE
    assert (done.checksum, done.os_hash_algo, done.os_hash_value) == (MD5, "sha512", SHA512)
    assert dict(done.locations[0].metadata) == {"region": "one"}


def test_add_location_takes_validation_data_as_a_message(client: ImageClient) -> None:
    image = queued(client)
    data = pb.ValidationData(os_hash_algo="sha512", os_hash_value=SHA512)
    assert client.add_location(image.id, URL_A, validation_data=data).os_hash_value == SHA512


def test_add_location_inserts_at_the_index(client: ImageClient) -> None:
    image = active(client, URL_A, URL_B)
    done = client.add_location(image.id, URL_C, index=1, etag=image.etag)
    assert [location.url for location in done.locations] == [URL_A, URL_C, URL_B]


def test_remove_location_by_index_or_url(client: ImageClient) -> None:
    image = active(client, URL_A, URL_B, URL_C)
    after_index = client.remove_location(image.id, index=0)
    assert [location.url for location in after_index.locations] == [URL_B, URL_C]
    after_url = client.remove_location(image.id, url=URL_C, etag=after_index.etag)
    assert [location.url for location in after_url.locations] == [URL_B]


@pytest.mark.parametrize(("index", "url"), [(None, None), (0, URL_A)], ids=["neither", "both"])
def test_remove_location_needs_exactly_one_of_index_and_url(
    client: ImageClient, index: int | None, url: str | None
) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        client.remove_location(str(uuid.uuid4()), index=index, url=url)


def test_replace_locations_takes_tuples_dicts_messages_and_urls(client: ImageClient) -> None:
    image = queued(client)
    done = client.replace_locations(
        image.id,
        [
            (URL_A, {"k": "a"}),
            {"url": URL_B, "metadata": {"k": "b"}},
            pb.Location(url=URL_C),
        ],
        validation_data={"os_hash_algo": "sha512", "os_hash_value": SHA512},
    )
    assert [location.url for location in done.locations] == [URL_A, URL_B, URL_C]
    assert [dict(location.metadata) for location in done.locations] == [
        {"k": "a"},
        {"k": "b"},
        {},
    ]
    reordered = client.replace_locations(image.id, [URL_C, URL_B, URL_A], etag=done.etag)
    assert [location.url for location in reordered.locations] == [URL_C, URL_B, URL_A]


def test_replace_locations_refuses_a_dict_without_url(client: ImageClient) -> None:
    with pytest.raises(ValueError, match="url"):
        client.replace_locations(str(uuid.uuid4()), [{"href": URL_A}])


# Refusals.


def test_remove_location_of_a_saving_image_is_an_image_status_conflict(
    client: ImageClient,
) -> None:
    image = queued(client)
    client.begin_upload(image.id)
    with pytest.raises(ImagelocError) as caught:
        client.remove_location(image.id, index=0)
    error = caught.value
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "IMAGE_STATUS_CONFLICT"
    assert error.domain == "imageloc"
    assert error.http_status == 409
    assert error.metadata["imageStatus"] == "saving"
    assert error.metadata["imageId"] == image.id
    assert error.details is not None
    assert error.details.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert error.violations
    assert str(error) == f"FAILED_PRECONDITION IMAGE_STATUS_CONFLICT (HTTP 409): {error.message}"
    assert isinstance(error.__cause__, grpc.RpcError)


def test_an_unreachable_server_is_unavailable_without_a_reason() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    client = ImageClient(f"127.0.0.1:{free_port}", timeout=2.0)
    with client, pytest.raises(ImagelocError) as caught:
        client.get_image(str(uuid.uuid4()))
    assert caught.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert caught.value.reason == ""
    assert caught.value.http_status is None
    assert caught.value.details is None


def test_a_given_channel_is_used_and_left_open(server_address: str) -> None:
    with grpc.insecure_channel(server_address) as channel:
        with ImageClient(channel=channel) as client:
            image = queued(client)
        assert ImageClient(channel=channel).get_image(image.id).id == image.id


# Conversions.


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("active", pb.IMAGE_STATUS_ACTIVE),
        ("pending_delete", pb.IMAGE_STATUS_PENDING_DELETE),
        ("IMAGE_STATUS_SAVING", pb.IMAGE_STATUS_SAVING),
        (pb.IMAGE_STATUS_KILLED, pb.IMAGE_STATUS_KILLED),
    ],
)
def test_parse_status_takes_glance_words_names_and_values(
    given: str | pb.ImageStatus.ValueType, expected: pb.ImageStatus.ValueType
) -> None:
    assert parse_status(given) == expected


def test_parse_status_refuses_an_unknown_word() -> None:
    with pytest.raises(ValueError, match="unknown image status"):
        parse_status("ready")


def test_parse_visibility_takes_none_as_unspecified() -> None:
    assert parse_visibility(None) == pb.IMAGE_VISIBILITY_UNSPECIFIED
    assert parse_visibility("shared") == pb.IMAGE_VISIBILITY_SHARED


def test_status_word_is_the_lowercase_glance_word() -> None:
    assert status_word(pb.IMAGE_STATUS_PENDING_DELETE) == "pending_delete"
