"""What the server accepts of a request before any rule sees it, and how it names one.

Parsing that never raises, the request-size limits, and the request fingerprint behind
request_id. Imports protobuf, the generated messages and the domain's input checks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Iterator
from typing import TypeVar

from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError, Message

from imageloc.server.domain import inputs
from imageloc.server.domain.validation import non_json_metadata, quoted
from imageloc.v1 import image_service_pb2 as pb

LOCATION = pb.Location.DESCRIPTOR.full_name

M = TypeVar("M", bound=Message)
Req = TypeVar("Req", bound=Message)


@dataclasses.dataclass(frozen=True)
class UnreadableRequest:
    """Stands in for a request whose bytes do not parse as its message type."""

    message_type: str
    why: str


def request_decoder(message_type: type[M]) -> Callable[[bytes], M | UnreadableRequest]:
    """A request deserializer that never raises: unparsable bytes become an UnreadableRequest.

    grpcio answers a deserializer's exception itself, with a bare INTERNAL; handing the
    handler a stand-in lets `refusals` answer INVALID_REQUEST with its ErrorInfo instead.
    """

    def decode(data: bytes) -> M | UnreadableRequest:
        try:
            return message_type.FromString(data)
        except (DecodeError, RecursionError) as error:
            return UnreadableRequest(message_type.DESCRIPTOR.full_name, str(error))

    return decode


def acceptable(request: Req | UnreadableRequest) -> Req:
    """request, unless it is unreadable or past a request limit (a DomainError)."""
    if isinstance(request, UnreadableRequest):
        raise inputs.invalid_request(
            "request",
            f"The request cannot be parsed as {request.message_type}: {quoted(request.why)}",
        )
    texts: dict[str, str] = {}
    lists: dict[str, int] = {}
    for field, value in request.ListFields():
        if field.is_repeated:
            lists[field.name] = len(value)
        elif isinstance(value, str):
            texts[field.name] = value
    inputs.check_sizes(texts=texts, lists=lists)
    for name, location in _locations(request):
        if _holds_non_finite(location.metadata):
            raise non_json_metadata(f"{name}.metadata", location.url)
    return request


def _locations(request: Message) -> Iterator[tuple[str, pb.Location]]:
    """The request's Location fields, each with its field path."""
    for field, value in request.ListFields():
        if field.message_type is None or field.message_type.full_name != LOCATION:
            continue
        if field.is_repeated:
            yield from ((f"{field.name}[{i}]", location) for i, location in enumerate(value))
        else:
            yield field.name, value


def _holds_non_finite(struct: struct_pb2.Struct) -> bool:
    """Whether struct holds NaN or Infinity, which JSON, and so the domain, cannot carry."""
    pending = list(struct.fields.values())
    while pending:
        value = pending.pop()
        kind = value.WhichOneof("kind")
        if kind == "number_value" and not math.isfinite(value.number_value):
            return True
        if kind == "struct_value":
            pending.extend(value.struct_value.fields.values())
        elif kind == "list_value":
            pending.extend(value.list_value.values)
    return False


def fingerprint(request: Message) -> str:
    """A digest of what request asks, its request_id aside: equal for the same request only."""
    asked = type(request)()
    asked.CopyFrom(request)
    asked.ClearField("request_id")
    digest = hashlib.sha256(asked.DESCRIPTOR.full_name.encode())
    digest.update(asked.SerializeToString(deterministic=True))
    return digest.hexdigest()
