"""Every explicit request limit, at the limit (accepted) and just past it (refused).

Through a real server, with the refusal's rich details decoded. Raw calls send bytes that no
stub would: unparsable requests and Structs nested past protobuf's recursion limit.
"""

from __future__ import annotations

import base64
import json
import math
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from imageloc.server.app import MAX_REQUEST_BYTES
from imageloc.server.domain.inputs import (
    MAX_ETAG_LENGTH,
    MAX_ID_LENGTH,
    MAX_LOCATIONS_PER_REQUEST,
    MAX_NAME_LENGTH,
    MAX_PAGE_SIZE,
    MAX_PAGE_TOKEN_LENGTH,
)
from imageloc.server.domain.policy import (
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MAX_METADATA_KEY_LENGTH,
    MAX_METADATA_VALUE_LENGTH,
    MAX_URL_LENGTH,
)
from imageloc.server.domain.validation import metadata_problem
from imageloc.v1 import image_service_pb2 as pb
from imageloc.v1 import image_service_pb2_grpc as pb_grpc

from conftest import ServerFactory
from support import Refusal, location, make_image, refusal_of

Code = grpc.StatusCode
SERVICE = "/imageloc.v1.ImageService/"
URL = "https://store.example/new.img"
#: protobuf's recursion limit (100 nested messages) falls between these Struct depths
#: inside an AddLocationRequest; each Struct level is three nested messages.
PARSABLE_STRUCT_NESTING = 32
UNPARSABLE_STRUCT_NESTING = 33


def assert_refused(refusal: Refusal, code: grpc.StatusCode, reason: str, field: str) -> None:
    """A documented refusal: code, reason, domain, httpStatus 400 and the field at fault."""
    assert (refusal.code, refusal.info.reason, refusal.info.domain) == (code, reason, "imageloc")
    assert refusal.info.metadata["httpStatus"] == "400"
    violation = refusal.detail(error_details_pb2.BadRequest).field_violations[0]
    assert violation.field == field


def invalid_request(call: Callable[[], object], field: str) -> None:
    assert_refused(refusal_of(call), Code.INVALID_ARGUMENT, "INVALID_REQUEST", field)


def invalid_location(call: Callable[[], object], field: str) -> None:
    assert_refused(refusal_of(call), Code.INVALID_ARGUMENT, "INVALID_LOCATION", field)


def raw_call(target: str, method: str) -> Iterator[Callable[[bytes], bytes]]:
    """A unary call that sends and receives bytes as they are."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(
            SERVICE + method,
            request_serializer=lambda data: data,
            response_deserializer=lambda data: data,
        )
        yield lambda data: bytes(call(data))


@pytest.fixture
def raw_add_location(target: str) -> Iterator[Callable[[bytes], bytes]]:
    yield from raw_call(target, "AddLocation")


@pytest.fixture
def raw_get_image(target: str) -> Iterator[Callable[[bytes], bytes]]:
    yield from raw_call(target, "GetImage")


def varint(number: int) -> bytes:
    """number in protobuf's base-128 varint encoding."""
    encoded = bytearray()
    while number > 0x7F:
        encoded.append(number & 0x7F | 0x80)
        number >>= 7
    encoded.append(number)
    return bytes(encoded)


def length_delimited(field: int, payload: bytes) -> bytes:
    """One protobuf field of wire type 2 (bytes, strings, messages)."""
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def nested_struct(nesting: int) -> bytes:
    """The bytes of a Struct {"k": {"k": ... {}}} with nesting Structs below the top one."""
    struct = b""
    for _ in range(nesting):
        value = length_delimited(5, struct)  # Value.struct_value
        struct = length_delimited(1, length_delimited(1, b"k") + length_delimited(2, value))
    return struct


def add_location_bytes(image_id: str, metadata: bytes) -> bytes:
    """An AddLocationRequest for image_id whose location has metadata as given."""
    loc = length_delimited(1, URL.encode()) + length_delimited(2, metadata)
    return length_delimited(1, image_id.encode()) + length_delimited(2, loc)


def nested(levels: int) -> dict[str, Any]:
    """Metadata of levels nested objects, the top-level one included."""
    metadata: dict[str, Any] = {"leaf": "v"}
    for _ in range(levels - 1):
        metadata = {"k": metadata}
    return metadata


def json_size(metadata: dict[str, Any]) -> int:
    return len(json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode())


def metadata_of_size(size: int) -> dict[str, Any]:
    """Metadata of exactly size bytes as compact JSON, each value within the value limit."""
    metadata: dict[str, Any] = {}
    index = 0
    while json_size(metadata) < size:
        key = f"k{index}"
        metadata[key] = ""
        room = size - json_size(metadata)
        metadata[key] = "x" * min(room, MAX_METADATA_VALUE_LENGTH)
        index += 1
    assert json_size(metadata) == size
    return metadata


def add(stub: pb_grpc.ImageServiceStub, image: pb.Image, **metadata: Any) -> pb.Image:
    return stub.AddLocation(
        pb.AddLocationRequest(image_id=image.id, location=location(URL, **metadata))
    ).image


def uuid_spelled(length: int) -> str:
    """A new UUID spelled in length characters: canonical form padded with hyphens."""
    return str(uuid.uuid4()) + "-" * (length - 36)


# Names


def test_name_of_the_maximum_length_is_accepted_and_one_more_is_refused(
    stub: pb_grpc.ImageServiceStub,
) -> None:
    at_limit = "n" * MAX_NAME_LENGTH
    assert stub.CreateImage(pb.CreateImageRequest(name=at_limit)).image.name == at_limit
    invalid_request(lambda: stub.CreateImage(pb.CreateImageRequest(name=at_limit + "n")), "name")


def test_name_with_nul_is_refused(stub: pb_grpc.ImageServiceStub) -> None:
    invalid_request(lambda: stub.CreateImage(pb.CreateImageRequest(name="a\x00b")), "name")


# Ids, request ids and etags


def test_image_id_of_the_maximum_length_is_read_and_one_more_is_refused(
    stub: pb_grpc.ImageServiceStub,
) -> None:
    image = make_image(stub, "queued")
    spelled = image.id + "-" * (MAX_ID_LENGTH - len(image.id))
    assert stub.GetImage(pb.GetImageRequest(image_id=spelled)).image.id == image.id
    invalid_request(lambda: stub.GetImage(pb.GetImageRequest(image_id=spelled + "-")), "image_id")


def test_request_id_of_the_maximum_length_is_accepted_and_one_more_is_refused(
    stub: pb_grpc.ImageServiceStub,
) -> None:
    at_limit = uuid_spelled(MAX_ID_LENGTH)
    assert stub.CreateImage(pb.CreateImageRequest(name="a", request_id=at_limit)).image.id
    past = uuid_spelled(MAX_ID_LENGTH + 1)
    invalid_request(
        lambda: stub.CreateImage(pb.CreateImageRequest(name="a", request_id=past)), "request_id"
    )


def test_etag_of_the_maximum_length_is_compared_and_one_more_is_refused(
    stub: pb_grpc.ImageServiceStub,
) -> None:
    image = make_image(stub, "queued")
    at_limit = "e" * MAX_ETAG_LENGTH
    stale = refusal_of(
        lambda: stub.BeginUpload(pb.BeginUploadRequest(image_id=image.id, etag=at_limit))
    )
    assert (stale.code, stale.info.reason) == (Code.ABORTED, "ETAG_MISMATCH")
    invalid_request(
        lambda: stub.BeginUpload(pb.BeginUploadRequest(image_id=image.id, etag=at_limit + "e")),
        "etag",
    )


# Paging


def test_page_token_of_the_maximum_length_is_read_and_one_more_is_refused(
    stub: pb_grpc.ImageServiceStub,
) -> None:
    older = make_image(stub, "queued")
    make_image(stub, "queued")
    token = stub.ListImages(pb.ListImagesRequest(page_size=1)).next_page_token
    # Base64 padding past the data is ignored, which pads a real token to any length.
    at_limit = token + "=" * (MAX_PAGE_TOKEN_LENGTH - len(token))
    page = stub.ListImages(pb.ListImagesRequest(page_size=1, page_token=at_limit))
    assert [image.id for image in page.images] == [older.id]
    invalid_request(
        lambda: stub.ListImages(pb.ListImagesRequest(page_size=1, page_token=at_limit + "=")),
        "page_token",
    )


@pytest.mark.parametrize("page_size", [MAX_PAGE_SIZE, MAX_PAGE_SIZE + 1, 2**31 - 1])
def test_page_size_up_to_the_maximum_and_beyond_is_served(
    stub: pb_grpc.ImageServiceStub, page_size: int
) -> None:
    image = make_image(stub, "queued")
    page = stub.ListImages(pb.ListImagesRequest(page_size=page_size))
    assert [listed.id for listed in page.images] == [image.id]


def test_negative_page_size_is_refused(stub: pb_grpc.ImageServiceStub) -> None:
    invalid_request(lambda: stub.ListImages(pb.ListImagesRequest(page_size=-1)), "page_size")


def encoded_token(payload: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "payload",
    [
        {"c": "2024-01-01T00:00:00+00:00", "i": 5, "s": None},
        {"c": "2024-01-01T00:00:00", "i": "2e8371a2-0f1c-4d8e-9a6b-3c2d1e0f9a8b", "s": None},
    ],
    ids=["non-string-id", "naive-time"],
)
def test_forged_page_token_is_refused(
    stub: pb_grpc.ImageServiceStub, payload: dict[str, Any]
) -> None:
    token = encoded_token(payload)
    invalid_request(lambda: stub.ListImages(pb.ListImagesRequest(page_token=token)), "page_token")


# Locations


def test_remove_by_url_of_the_maximum_length_is_looked_up_and_one_more_is_refused(
    stub: pb_grpc.ImageServiceStub,
) -> None:
    image = make_image(stub, "active")
    at_limit = "https://store.example/" + "u" * (MAX_URL_LENGTH - 22)
    missing = refusal_of(
        lambda: stub.RemoveLocation(pb.RemoveLocationRequest(image_id=image.id, url=at_limit))
    )
    assert (missing.code, missing.info.reason) == (Code.NOT_FOUND, "LOCATION_NOT_FOUND")
    invalid_request(
        lambda: stub.RemoveLocation(
            pb.RemoveLocationRequest(image_id=image.id, url=at_limit + "u")
        ),
        "url",
    )


def distinct_locations(count: int) -> list[pb.Location]:
    return [pb.Location(url=f"https://store.example/{i}.img") for i in range(count)]


def test_replace_with_the_most_locations_a_request_may_carry_is_accepted_and_one_more_refused(
    server_factory: ServerFactory,
) -> None:
    stub = pb_grpc.ImageServiceStub(grpc.insecure_channel(server_factory(location_quota=-1)))
    image = make_image(stub, "queued")
    at_limit = distinct_locations(MAX_LOCATIONS_PER_REQUEST)
    past = distinct_locations(MAX_LOCATIONS_PER_REQUEST + 1)
    invalid_request(
        lambda: stub.ReplaceLocation(pb.ReplaceLocationRequest(image_id=image.id, locations=past)),
        "locations",
    )
    replaced = stub.ReplaceLocation(
        pb.ReplaceLocationRequest(image_id=image.id, locations=at_limit)
    )
    assert len(replaced.image.locations) == MAX_LOCATIONS_PER_REQUEST


@pytest.mark.parametrize("count", [11, MAX_LOCATIONS_PER_REQUEST, 100_000])
def test_locations_past_the_quota_are_refused_with_a_documented_code(
    stub: pb_grpc.ImageServiceStub, count: int
) -> None:
    image = make_image(stub, "queued")
    request = pb.ReplaceLocationRequest(image_id=image.id, locations=distinct_locations(count))
    refusal = refusal_of(lambda: stub.ReplaceLocation(request))
    if count <= MAX_LOCATIONS_PER_REQUEST:
        assert (refusal.code, refusal.info.reason) == (
            Code.RESOURCE_EXHAUSTED,
            "LOCATION_QUOTA_EXCEEDED",
        )
    else:
        assert_refused(refusal, Code.INVALID_ARGUMENT, "INVALID_REQUEST", "locations")


# Location metadata


def test_metadata_nested_to_the_maximum_depth_is_accepted_and_one_more_is_refused(
    stub: pb_grpc.ImageServiceStub,
) -> None:
    image = make_image(stub, "active")
    assert len(add(stub, image, **nested(MAX_METADATA_DEPTH)).locations) == 3
    invalid_location(
        lambda: add(stub, image, **nested(MAX_METADATA_DEPTH + 1)), "location.metadata"
    )


def test_metadata_of_the_maximum_size_is_accepted_and_one_byte_more_is_refused(
    stub: pb_grpc.ImageServiceStub,
) -> None:
    image = make_image(stub, "active")
    assert len(add(stub, image, **metadata_of_size(MAX_METADATA_BYTES)).locations) == 3
    invalid_location(
        lambda: add(stub, image, **metadata_of_size(MAX_METADATA_BYTES + 1)), "location.metadata"
    )


def test_metadata_size_counts_utf8_bytes(stub: pb_grpc.ImageServiceStub) -> None:
    image = make_image(stub, "active")
    three_bytes_each = "\u20ac" * MAX_METADATA_VALUE_LENGTH  # 2048 characters, 6 KiB
    invalid_location(lambda: add(stub, image, k=three_bytes_each), "location.metadata")


def test_metadata_key_of_the_maximum_length_is_accepted_and_one_more_is_refused(
    stub: pb_grpc.ImageServiceStub,
) -> None:
    image = make_image(stub, "active")
    key = "k" * MAX_METADATA_KEY_LENGTH
    assert len(add(stub, image, **{key: "v"}).locations) == 3
    invalid_location(lambda: add(stub, image, **{key + "k": "v"}), "location.metadata")


def test_metadata_value_of_the_maximum_length_is_accepted_and_one_more_is_refused(
    stub: pb_grpc.ImageServiceStub,
) -> None:
    image = make_image(stub, "active")
    value = "v" * MAX_METADATA_VALUE_LENGTH
    assert len(add(stub, image, k=value).locations) == 3
    invalid_location(lambda: add(stub, image, k=value + "v"), "location.metadata")


def in_lists(levels: int) -> dict[str, Any]:
    """Metadata of levels nested containers: the top-level object, then lists."""
    value: Any = "v"
    for _ in range(levels - 1):
        value = [value]
    return {"k": value}


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        (nested(MAX_METADATA_DEPTH), None),
        (nested(MAX_METADATA_DEPTH + 1), "nested deeper than 8 levels"),
        (in_lists(MAX_METADATA_DEPTH), None),
        (in_lists(MAX_METADATA_DEPTH + 1), "nested deeper than 8 levels"),
        ({"k": "v" * MAX_METADATA_VALUE_LENGTH}, None),
        ({"k": ["v" * (MAX_METADATA_VALUE_LENGTH + 1)]}, "is longer than 2048 characters"),
        ({"k" * (MAX_METADATA_KEY_LENGTH + 1): "v"}, "is longer than 255 characters"),
        ({1: "v"}, "every key must be a string"),
        ({"k": 1}, "every leaf must be a string"),
        (metadata_of_size(MAX_METADATA_BYTES + 1), "more than 4096"),
    ],
    ids=[
        "depth",
        "too-deep",
        "depth-in-lists",
        "too-deep-in-lists",
        "value",
        "long-value",
        "long-key",
        "key-type",
        "leaf-type",
        "size",
    ],
)
def test_metadata_rule_names_the_first_problem(metadata: Any, problem: str | None) -> None:
    found = metadata_problem(metadata)
    if problem is None:
        assert found is None
    else:
        assert problem in str(found)


@pytest.mark.parametrize(
    "metadata", [{"k\x00": "v"}, {"k": "v\x00"}, {"k": ["\x00"]}], ids=["key", "value", "list"]
)
def test_metadata_with_nul_is_refused(
    stub: pb_grpc.ImageServiceStub, metadata: dict[str, Any]
) -> None:
    image = make_image(stub, "active")
    invalid_location(lambda: add(stub, image, **metadata), "location.metadata")


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf], ids=str)
def test_metadata_number_json_cannot_carry_is_refused(
    stub: pb_grpc.ImageServiceStub, number: float
) -> None:
    image = make_image(stub, "active")
    invalid_location(lambda: add(stub, image, k={"n": [number]}), "location.metadata")
    replace = pb.ReplaceLocationRequest(
        image_id=image.id, locations=[location(URL), location(URL + "2", n=number)]
    )
    invalid_location(lambda: stub.ReplaceLocation(replace), "locations[1].metadata")


# Refusals stay small


def test_refusal_quotes_a_huge_value_in_part(stub: pb_grpc.ImageServiceStub) -> None:
    image = make_image(stub, "saving")
    request = pb.CompleteUploadRequest(
        image_id=image.id, location=location(URL), checksum="z" * 1_000_000
    )
    refusal = refusal_of(lambda: stub.CompleteUpload(request))
    assert refusal.info.reason == "INVALID_VALIDATION_DATA"
    assert len(refusal.message) < 500


# Requests the server cannot parse


def test_garbage_bytes_are_invalid_request(
    raw_get_image: Callable[[bytes], bytes], stub: pb_grpc.ImageServiceStub
) -> None:
    invalid_request(lambda: raw_get_image(b"\xff\xff\xff\xff"), "request")
    invalid_request(lambda: raw_get_image(length_delimited(1, b"\xc3\x28")), "request")  # not UTF-8
    image = make_image(stub, "queued")
    assert raw_get_image(length_delimited(1, image.id.encode()))


def test_struct_nested_past_protobufs_limit_is_invalid_request(
    raw_add_location: Callable[[bytes], bytes], stub: pb_grpc.ImageServiceStub
) -> None:
    image = make_image(stub, "active")
    parsable = add_location_bytes(image.id, nested_struct(PARSABLE_STRUCT_NESTING))
    invalid_location(lambda: raw_add_location(parsable), "location.metadata")
    unparsable = add_location_bytes(image.id, nested_struct(UNPARSABLE_STRUCT_NESTING))
    invalid_request(lambda: raw_add_location(unparsable), "request")
    too_deep = add_location_bytes(image.id, nested_struct(1000))
    invalid_request(lambda: raw_add_location(too_deep), "request")
    assert stub.GetImage(pb.GetImageRequest(image_id=image.id)).image == image


# Message size: gRPC's own refusal, before the server's code, without an ErrorInfo


def test_request_of_the_maximum_size_is_read_and_one_byte_more_is_refused_by_grpc(
    stub: pb_grpc.ImageServiceStub,
) -> None:
    at_limit = pb.CreateImageRequest(name="n" * (MAX_REQUEST_BYTES - 5))
    assert at_limit.ByteSize() == MAX_REQUEST_BYTES
    invalid_request(lambda: stub.CreateImage(at_limit), "name")
    past = pb.CreateImageRequest(name="n" * (MAX_REQUEST_BYTES - 4))
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateImage(past)
    assert caught.value.code() is Code.RESOURCE_EXHAUSTED
    image = make_image(stub, "queued")
    assert stub.GetImage(pb.GetImageRequest(image_id=image.id)).image == image
