"""Property-based fuzzing of every RPC through a real server, with hypothesis.

Whatever a request holds, the answer is success or a refusal documented for that RPC, with
exactly one ErrorInfo (domain imageloc, a documented reason and httpStatus), never INTERNAL
or UNKNOWN; and the server keeps serving. Examples are derandomized, so CI is reproducible.
"""

from __future__ import annotations

import base64
import math
import operator
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from imageloc.server.app import MAX_REQUEST_BYTES
from imageloc.v1 import image_service_pb2 as pb
from imageloc.v1 import image_service_pb2_grpc as pb_grpc

from support import MD5, SHA512, VISIBLE_STATUSES, make_image

Code = grpc.StatusCode
S = st.SearchStrategy

FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)

#: docs/errors.md: reason -> (gRPC code, the httpStatus values it may carry).
DOCUMENTED: dict[str, tuple[grpc.StatusCode, frozenset[str]]] = {
    "IMAGE_NOT_FOUND": (Code.NOT_FOUND, frozenset({"404"})),
    "IMAGE_STATUS_CONFLICT": (Code.FAILED_PRECONDITION, frozenset({"403", "409"})),
    "LAST_LOCATION": (Code.FAILED_PRECONDITION, frozenset({"403"})),
    "EMPTY_LOCATIONS": (Code.INVALID_ARGUMENT, frozenset({"403"})),
    "LOCATIONS_NOT_EMPTY": (Code.FAILED_PRECONDITION, frozenset({"400"})),
    "DUPLICATE_LOCATION": (Code.ALREADY_EXISTS, frozenset({"400"})),
    "INVALID_LOCATION": (Code.INVALID_ARGUMENT, frozenset({"400"})),
    "INVALID_POSITION": (Code.INVALID_ARGUMENT, frozenset({"400"})),
    "LOCATION_NOT_FOUND": (Code.NOT_FOUND, frozenset({"400"})),
    "LOCATION_QUOTA_EXCEEDED": (Code.RESOURCE_EXHAUSTED, frozenset({"413"})),
    "VALIDATION_DATA_CONFLICT": (Code.FAILED_PRECONDITION, frozenset({"409"})),
    "INVALID_VALIDATION_DATA": (Code.INVALID_ARGUMENT, frozenset({"400"})),
    "MISSING_FORMAT": (Code.FAILED_PRECONDITION, frozenset({"400"})),
    "IMAGE_PROTECTED": (Code.FAILED_PRECONDITION, frozenset({"403"})),
    "IMAGE_EXISTS": (Code.ALREADY_EXISTS, frozenset({"409"})),
    "INVALID_TRANSITION": (Code.FAILED_PRECONDITION, frozenset({"400", "403", "409"})),
    "ETAG_MISMATCH": (Code.ABORTED, frozenset({"412"})),
    "INVALID_REQUEST": (Code.INVALID_ARGUMENT, frozenset({"400"})),
    "REQUEST_ID_REUSED": (Code.INVALID_ARGUMENT, frozenset({"422"})),
    "READ_ONLY_FIELD": (Code.INVALID_ARGUMENT, frozenset({"403"})),
    "RESERVED_PROPERTY": (Code.INVALID_ARGUMENT, frozenset({"403"})),
    "PROPERTY_QUOTA_EXCEEDED": (Code.RESOURCE_EXHAUSTED, frozenset({"413"})),
    "TAG_QUOTA_EXCEEDED": (Code.RESOURCE_EXHAUSTED, frozenset({"413"})),
}

#: Reasons every request can meet: its shape, and (where it has one) its request_id.
SHAPE = frozenset({"INVALID_REQUEST", "REQUEST_ID_REUSED"})
LIFECYCLE = SHAPE | {"IMAGE_NOT_FOUND", "INVALID_TRANSITION", "ETAG_MISMATCH"}
LOCATION_RULES = frozenset(
    {
        "INVALID_LOCATION",
        "INVALID_VALIDATION_DATA",
        "DUPLICATE_LOCATION",
        "LOCATION_QUOTA_EXCEEDED",
    }
)

#: The record fields' own refusals.
RECORD = frozenset({"RESERVED_PROPERTY", "PROPERTY_QUOTA_EXCEEDED", "TAG_QUOTA_EXCEEDED"})

#: The proto's "Errors:" line of each RPC, plus SHAPE.
ALLOWED: dict[str, frozenset[str]] = {
    "CreateImage": SHAPE | RECORD | {"IMAGE_EXISTS"},
    "UpdateImage": SHAPE
    | RECORD
    | {"IMAGE_NOT_FOUND", "ETAG_MISMATCH", "READ_ONLY_FIELD", "IMAGE_STATUS_CONFLICT"},
    "GetImage": SHAPE | {"IMAGE_NOT_FOUND"},
    "ListImages": SHAPE,
    "DeleteImage": LIFECYCLE | {"IMAGE_PROTECTED"},
    "BeginUpload": LIFECYCLE | {"MISSING_FORMAT"},
    "CompleteUpload": LIFECYCLE | LOCATION_RULES,
    "FailUpload": LIFECYCLE,
    "StageImage": LIFECYCLE,
    "BeginImport": LIFECYCLE | {"MISSING_FORMAT"},
    "DeactivateImage": LIFECYCLE,
    "ReactivateImage": LIFECYCLE,
    "AddLocation": LIFECYCLE
    | LOCATION_RULES
    | {"IMAGE_STATUS_CONFLICT", "VALIDATION_DATA_CONFLICT", "MISSING_FORMAT", "INVALID_POSITION"},
    "RemoveLocation": LIFECYCLE
    | {"LOCATION_NOT_FOUND", "IMAGE_STATUS_CONFLICT", "LAST_LOCATION", "INVALID_POSITION"},
    "ReplaceLocation": LIFECYCLE
    | LOCATION_RULES
    | {
        "EMPTY_LOCATIONS",
        "IMAGE_STATUS_CONFLICT",
        "LOCATIONS_NOT_EMPTY",
        "VALIDATION_DATA_CONFLICT",
        "MISSING_FORMAT",
    },
}

#: The images each fuzzed server starts with, by status; requests aim at them often.
WORLD = {
    status: str(uuid.uuid5(uuid.NAMESPACE_URL, f"fuzz/{status}")) for status in VISIBLE_STATUSES
}
#: Never named by a fuzzed request: read after each one to show the server still serves.
SENTINEL = str(uuid.uuid5(uuid.NAMESPACE_URL, "fuzz/sentinel"))
#: A few request ids, so that some requests reuse another's.
REQUEST_IDS = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"fuzz/request/{i}")) for i in range(3)]
#: Stand-ins resolved just before sending: the image's current etag, a real page token.
CURRENT_ETAG = "<current etag>"
REAL_PAGE_TOKEN = "<real page token>"

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
#: Lengths at and around every limit, and far past them (1.1 M four-byte characters is
#: past the 4 MiB message limit).
LENGTHS = [63, 64, 65, 255, 256, 511, 512, 513, 2048, 2049, 4097, 100_000, 1_100_000]
URLS = ["https://store.example/a.img", "rbd://fsid/pool/b/snap", "swift://c/o", "file:///etc"]


# Strategies


def texts() -> S[str]:
    """Any text, NUL included and surrogates excluded (protobuf strings are UTF-8).

    Short random text, edge cases, and a character or two repeated to lengths around and far
    past the limits.
    """
    return st.one_of(
        st.text(max_size=40),
        st.sampled_from(["", "\x00", "a\x00b", " ", "\U0010ffff", "e\u0301", "\u202e"]),
        st.builds(operator.mul, st.text(min_size=1, max_size=2), st.sampled_from(LENGTHS)),
    )


def short_texts() -> S[str]:
    return st.one_of(st.text(max_size=12), st.sampled_from(["", "\x00", "k" * 256]))


def image_ids() -> S[str]:
    return st.one_of(
        st.sampled_from(sorted(WORLD.values())),
        st.uuids().map(str),
        st.uuids().map(lambda u: str(u).upper()),
        texts(),
    )


def int32s() -> S[int]:
    return st.one_of(st.integers(*INT32), st.sampled_from([INT32[0], -1, 0, 1, 2, 10, INT32[1]]))


def int64s() -> S[int]:
    return st.one_of(st.integers(*INT64), st.sampled_from([INT64[0], -1, 0, 1, INT64[1]]))


def enum_numbers() -> S[int]:
    """Known and unknown enum numbers: proto3 enums are open, so any int32 arrives."""
    return st.one_of(st.integers(0, 10), st.sampled_from([INT32[0], -1, 11, INT32[1]]))


def valid_text() -> S[str]:
    return st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30)


def json_values() -> S[Any]:
    """Every JSON value type, nested a little."""
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.floats(),
        # A Struct carries these, JSON cannot.
        st.sampled_from([math.nan, math.inf, -math.inf]),
        st.integers(-(2**53), 2**53),
        short_texts(),
    )
    return st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(short_texts(), inner, max_size=4)
        ),
        max_leaves=12,
    )


def nested_metadata(levels: int) -> dict[str, Any]:
    metadata: dict[str, Any] = {"leaf": "v"}
    for _ in range(levels - 1):
        metadata = {"k": metadata}
    return metadata


def metadata() -> S[dict[str, Any]]:
    """Struct metadata: valid, arbitrary JSON, deep (up to protobuf's parse limit) and wide."""
    return st.one_of(
        st.dictionaries(short_texts(), short_texts(), max_size=4),
        st.dictionaries(short_texts(), json_values(), max_size=4),
        st.integers(1, 32).map(nested_metadata),
        st.sampled_from([100, 500, 5000]).map(lambda n: {f"k{i}": "v" * 8 for i in range(n)}),
    )


def location_of(url: str, meta: dict[str, Any]) -> pb.Location:
    message = pb.Location(url=url)
    message.metadata.update(meta)
    return message


def locations() -> S[pb.Location]:
    urls = st.one_of(st.sampled_from(URLS), st.builds(operator.add, st.sampled_from(URLS), texts()))
    return st.builds(location_of, st.one_of(urls, texts()), metadata())


def location_lists() -> S[list[pb.Location]]:
    """From empty to far past the quota, the per-request limit and the message size."""
    small = st.builds(location_of, st.sampled_from(URLS), st.just({}))
    return st.one_of(
        st.lists(locations(), max_size=12),
        st.builds(
            operator.mul,
            st.lists(small, min_size=1, max_size=1),
            st.sampled_from([11, 1000, 1001, 200_000]),
        ),
    )


def hashes() -> S[str]:
    return st.one_of(
        st.sampled_from(["", MD5, SHA512]),
        st.text(alphabet="0123456789abcdefABCDEF", max_size=130),
        texts(),
    )


def valid_locations() -> S[pb.Location]:
    urls = st.builds(operator.add, st.sampled_from(URLS[:3]), st.sampled_from(["", "x", "y/z"]))
    return st.builds(location_of, urls, st.dictionaries(st.sampled_from("abc"), valid_text()))


def rarely_absent(strategy: S[Any]) -> S[Any]:
    """strategy, or None one time in ten."""
    return st.integers(0, 9).flatmap(lambda n: strategy if n else st.none())


def tokens() -> S[str]:
    return st.one_of(
        texts(),
        st.binary(max_size=200).map(lambda raw: base64.urlsafe_b64encode(raw).decode()),
    )


def validation_data() -> S[pb.ValidationData]:
    algos = st.one_of(st.sampled_from(["", "sha512", "md5"]), texts())
    return st.builds(
        pb.ValidationData, checksum=hashes(), os_hash_algo=algos, os_hash_value=hashes()
    )


#: A request field: (a strategy of values the API accepts, one of arbitrary values).
#: None leaves a field unset (absent, for optional ones).
Field = tuple[S[Any], S[Any]]

IMAGE_ID: Field = (st.sampled_from(sorted(WORLD.values())), image_ids())
#: The location RPCs aim at the images they can change.
LOCATION_TARGET: Field = (st.sampled_from([WORLD["active"], WORLD["queued"]]), image_ids())
ETAG: Field = (st.sampled_from([None, CURRENT_ETAG]), texts())
REQUEST_ID: Field = (
    st.one_of(st.just(""), st.sampled_from(REQUEST_IDS), st.uuids().map(str)),
    texts(),
)
VALIDATION_DATA: Field = (
    st.sampled_from(
        [None, pb.ValidationData(checksum=MD5, os_hash_algo="sha512", os_hash_value=SHA512)]
    ),
    st.none() | validation_data(),
)
MUTATION = {"image_id": IMAGE_ID, "etag": ETAG, "request_id": REQUEST_ID}
#: The record fields: sensible values, and lists and maps from empty to past the quotas.
TAGS: Field = (
    st.lists(st.sampled_from(["a", "b", "c"]), max_size=3),
    st.one_of(st.lists(short_texts(), max_size=5), st.sampled_from([129, 1000]).map(
        lambda n: [f"t{i}" for i in range(n)]
    )),
)  # fmt: skip
PROPERTIES: Field = (
    st.dictionaries(st.sampled_from(["hw_disk_bus", "os_distro", "x.y"]), valid_text(), max_size=3),
    st.one_of(
        st.dictionaries(short_texts(), short_texts(), max_size=4),
        st.sampled_from([{"status": "x"}, {"os_glance_x": "y"}, {"k": "v" * 65536}]),
        st.sampled_from([129, 1000]).map(lambda n: {f"k{i}": "v" for i in range(n)}),
    ),
)
RECORD_FIELDS: dict[str, Field] = {
    "min_disk": (st.integers(0, 100), int32s()),
    "min_ram": (st.integers(0, 4096), int32s()),
    "tags": TAGS,
    "os_hidden": (st.booleans(), st.booleans()),
    "virtual_size": (st.none() | st.integers(0, 2**40), int64s()),
    "properties": PROPERTIES,
}
#: Every path UpdateImage knows, read-only ones included, and some it does not.
MASK_PATHS = [
    "name", "disk_format", "container_format", "visibility", "protected", "min_disk", "min_ram",
    "tags", "os_hidden", "virtual_size", "properties", "properties.hw_disk_bus",
    "properties.`x.y`", "status", "locations", "size", "owner", "id", "etag",
]  # fmt: skip


@st.composite
def images_to_update(draw: st.DrawFn, *, wild: bool) -> pb.Image:
    """UpdateImage's image: an id and values for every field a mask may name."""
    pick = 1 if wild else 0
    fields: dict[str, Any] = {
        "id": draw(IMAGE_ID[pick]),
        "name": draw((valid_text(), texts())[pick]),
        "disk_format": draw(st.sampled_from(["", "qcow2", "raw"]) if not wild else texts()),
        "visibility": draw((st.integers(1, 4), enum_numbers())[pick]),
        "min_disk": draw(RECORD_FIELDS["min_disk"][pick]),
        "tags": draw(TAGS[pick]),
        "properties": draw(PROPERTIES[pick]),
    }
    image = pb.Image(**fields)
    virtual_size = draw(RECORD_FIELDS["virtual_size"][pick])
    if virtual_size is not None:
        image.virtual_size = virtual_size
    return image


def field_masks(paths: S[str]) -> S[field_mask_pb2.FieldMask]:
    return st.lists(paths, max_size=4).map(lambda p: field_mask_pb2.FieldMask(paths=p))


LOCATION_MUTATION = {**MUTATION, "image_id": LOCATION_TARGET}

FIELDS: dict[str, tuple[type[Message], dict[str, Field]]] = {
    "CreateImage": (
        pb.CreateImageRequest,
        {
            "name": (valid_text(), texts()),
            "disk_format": (st.sampled_from(["", "qcow2", "raw"]), texts()),
            "container_format": (st.sampled_from(["", "bare", "ovf"]), texts()),
            "visibility": (st.integers(0, 4), enum_numbers()),
            "protected": (st.booleans(), st.booleans()),
            "id": (st.none() | st.uuids().map(str), image_ids()),
            "request_id": REQUEST_ID,
            **RECORD_FIELDS,
        },
    ),
    "UpdateImage": (
        pb.UpdateImageRequest,
        {
            "image": (images_to_update(wild=False), images_to_update(wild=True)),
            "update_mask": (
                field_masks(st.sampled_from(MASK_PATHS[:12])),
                field_masks(st.one_of(st.sampled_from(MASK_PATHS), texts())),
            ),
            "etag": ETAG,
            "request_id": REQUEST_ID,
        },
    ),
    "GetImage": (pb.GetImageRequest, {"image_id": IMAGE_ID}),
    "ListImages": (
        pb.ListImagesRequest,
        {
            "page_size": (st.integers(0, 30), int32s()),
            "page_token": (st.sampled_from(["", REAL_PAGE_TOKEN]), tokens()),
            "status": (st.none() | st.integers(1, 9), enum_numbers()),
            "name": (st.none() | st.sampled_from(["cirros", "x"]), texts()),
            "tags": (st.lists(st.sampled_from(["a", "b"]), max_size=2), TAGS[1]),
            "properties": (st.just({}) | PROPERTIES[0], PROPERTIES[1]),
            "os_hidden": (st.none() | st.booleans(), st.booleans()),
            "size_min": (st.none() | st.integers(0, 100), int64s()),
            "size_max": (st.none() | st.integers(0, 2**40), int64s()),
            "order_by": (
                st.sampled_from(
                    ["", "name", "size desc", "name asc, created_at desc", "updated_at"]
                ),
                texts(),
            ),
        },
    ),
    "DeleteImage": (pb.DeleteImageRequest, MUTATION),
    "BeginUpload": (pb.BeginUploadRequest, MUTATION),
    "CompleteUpload": (
        pb.CompleteUploadRequest,
        {
            **MUTATION,
            "location": (valid_locations(), rarely_absent(locations())),
            "size": (st.integers(0, 2**40), int64s()),
            "checksum": (st.sampled_from(["", MD5]), hashes()),
            "os_hash_algo": (st.sampled_from(["", "sha512"]), texts()),
            "os_hash_value": (st.sampled_from(["", SHA512]), hashes()),
        },
    ),
    "FailUpload": (pb.FailUploadRequest, MUTATION),
    "StageImage": (pb.StageImageRequest, MUTATION),
    "BeginImport": (pb.BeginImportRequest, MUTATION),
    "DeactivateImage": (pb.DeactivateImageRequest, MUTATION),
    "ReactivateImage": (pb.ReactivateImageRequest, MUTATION),
    "AddLocation": (
        pb.AddLocationRequest,
        {
            **LOCATION_MUTATION,
            "location": (valid_locations(), rarely_absent(locations())),
            "index": (st.none() | st.integers(0, 3), int32s()),
            "validation_data": VALIDATION_DATA,
        },
    ),
    "RemoveLocation": (
        pb.RemoveLocationRequest,
        {
            **LOCATION_MUTATION,
            # A oneof: when both are drawn, the url (set last) wins.
            "index": (st.none() | st.integers(0, 2), int32s()),
            "url": (st.none() | st.sampled_from(URLS), texts()),
        },
    ),
    "ReplaceLocation": (
        pb.ReplaceLocationRequest,
        {
            **LOCATION_MUTATION,
            "locations": (st.lists(valid_locations(), min_size=1, max_size=3), location_lists()),
            "validation_data": VALIDATION_DATA,
        },
    ),
}


@st.composite
def requests(draw: st.DrawFn, rpc: str) -> Message:
    """A request for rpc: valid but for up to three fields that take arbitrary values."""
    request_type, fields = FIELDS[rpc]
    wild = draw(st.sets(st.sampled_from(sorted(fields)), max_size=3), label="wild fields")
    request = request_type()
    for name, (valid, arbitrary) in fields.items():
        value = draw(arbitrary if name in wild else valid, label=name)
        if value is None:
            continue
        if isinstance(value, Message):
            getattr(request, name).CopyFrom(value)
        elif isinstance(value, dict):
            getattr(request, name).update(value)
        elif isinstance(value, list):
            getattr(request, name).extend(value)
        else:
            setattr(request, name, value)
    return request


# Checks


@pytest.fixture
def world(stub: pb_grpc.ImageServiceStub) -> pb_grpc.ImageServiceStub:
    """The stub of a server holding an image in every visible status, and the sentinel."""
    for status, image_id in WORLD.items():
        make_image(stub, status, id=image_id)
    make_image(stub, "active", id=SENTINEL)
    return stub


def resolve(stub: pb_grpc.ImageServiceStub, request: Any) -> None:
    """Replace request's stand-ins with real values from the server."""
    if "etag" in request.DESCRIPTOR.fields_by_name and request.etag == CURRENT_ETAG:
        image_id = request.image.id if isinstance(request, pb.UpdateImageRequest) else None
        try:
            found = stub.GetImage(pb.GetImageRequest(image_id=image_id or request.image_id))
            request.etag = found.image.etag
        except grpc.RpcError:
            pass
    if isinstance(request, pb.ListImagesRequest) and request.page_token == REAL_PAGE_TOKEN:
        first = pb.ListImagesRequest()
        first.CopyFrom(request)
        first.page_size, first.page_token = 1, ""
        try:  # a token of the same filters and order, when they are valid
            request.page_token = stub.ListImages(first).next_page_token
        except grpc.RpcError:
            request.page_token = ""


def check_refusal(rpc: str, error: grpc.RpcError, *, request_bytes: int) -> str:
    """A refusal documented for rpc: one ErrorInfo, its reason, code and httpStatus.

    Returns the reason, or MESSAGE_TOO_LARGE for gRPC's own refusal of an oversized request.
    """
    code: grpc.StatusCode = error.code()
    if code is Code.RESOURCE_EXHAUSTED and request_bytes > MAX_REQUEST_BYTES:
        return "MESSAGE_TOO_LARGE"  # refused by gRPC before the server's code, no ErrorInfo
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, f"{rpc} answered {code} without details: {error}"
    infos = []
    for packed in status.details:
        info = error_details_pb2.ErrorInfo()
        if packed.Unpack(info):
            infos.append(info)
    assert len(infos) == 1, f"{rpc} answered {code} with {len(infos)} ErrorInfo"
    info = infos[0]
    assert info.domain == "imageloc"
    assert info.reason in ALLOWED[rpc], f"{rpc} answered {code} {info.reason}: {status.message}"
    documented_code, http_statuses = DOCUMENTED[info.reason]
    assert code is documented_code, f"{info.reason} came with {code}"
    assert info.metadata["httpStatus"] in http_statuses
    return info.reason


def assert_serving(stub: pb_grpc.ImageServiceStub) -> None:
    assert stub.GetImage(pb.GetImageRequest(image_id=SENTINEL)).image.id == SENTINEL
    assert stub.ListImages(pb.ListImagesRequest(page_size=1)).images


def exchange(stub: pb_grpc.ImageServiceStub, rpc: str, request: Message) -> None:
    """Send request; the answer must be success or a refusal documented for rpc."""
    resolve(stub, request)
    try:
        getattr(stub, rpc)(request)
        event("OK")
    except grpc.RpcError as error:
        event(check_refusal(rpc, error, request_bytes=request.ByteSize()))
    assert_serving(stub)


@pytest.mark.parametrize("rpc", sorted(FIELDS))
@FUZZ
@given(data=st.data())
def test_any_request_gets_success_or_a_documented_refusal(
    world: pb_grpc.ImageServiceStub, rpc: str, data: st.DataObject
) -> None:
    exchange(world, rpc, data.draw(requests(rpc), label="request"))


@pytest.mark.parametrize("rpc", sorted(FIELDS))
@settings(FUZZ, max_examples=25)
@given(raw=st.binary(max_size=300))
def test_any_bytes_get_success_or_a_documented_refusal(
    world: pb_grpc.ImageServiceStub, target: str, rpc: str, raw: bytes
) -> None:
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(
            f"/imageloc.v1.ImageService/{rpc}",
            request_serializer=lambda data: data,
            response_deserializer=lambda data: data,
        )
        try:
            call(raw)
            event("OK")
        except grpc.RpcError as error:
            event(check_refusal(rpc, error, request_bytes=len(raw)))
    assert_serving(world)


def test_every_rpc_is_fuzzed() -> None:
    service = pb.DESCRIPTOR.services_by_name["ImageService"]
    # The stream (WatchImages) is checked field by field in tests/test_watch.py.
    unary = (method.name for method in service.methods if not method.server_streaming)
    assert sorted(FIELDS) == sorted(unary)
