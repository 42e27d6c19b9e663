"""Conversions between plain Python values and imageloc.v1 messages.

Glance status and visibility words, metadata dicts as Structs, location-likes and
validation data. Imports only protobuf and the generated stubs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

from google.protobuf import json_format, struct_pb2

from imageloc.v1 import image_service_pb2 as pb

StatusLike: TypeAlias = str | pb.ImageStatus.ValueType
VisibilityLike: TypeAlias = str | pb.ImageVisibility.ValueType
MetadataLike: TypeAlias = Mapping[str, Any]
LocationLike: TypeAlias = pb.Location | str | tuple[str, MetadataLike | None] | Mapping[str, Any]
ValidationLike: TypeAlias = pb.ValidationData | Mapping[str, str]

_STATUS_PREFIX = "IMAGE_STATUS_"
_EVENT_TYPE_PREFIX = "IMAGE_EVENT_TYPE_"
_VISIBILITY_PREFIX = "IMAGE_VISIBILITY_"
_VALIDATION_KEYS = frozenset({"checksum", "os_hash_algo", "os_hash_value"})
_LOCATION_KEYS = frozenset({"url", "metadata"})

#: Glance's status words, in the enum's order (UNSPECIFIED left out).
STATUS_WORDS: tuple[str, ...] = tuple(
    name.removeprefix(_STATUS_PREFIX).lower()
    for name in pb.ImageStatus.keys()  # noqa: SIM118 (an enum wrapper, not a dict)
    if name != "IMAGE_STATUS_UNSPECIFIED"
)
#: Glance's visibility words (UNSPECIFIED left out).
VISIBILITY_WORDS: tuple[str, ...] = tuple(
    name.removeprefix(_VISIBILITY_PREFIX).lower()
    for name in pb.ImageVisibility.keys()  # noqa: SIM118
    if name != "IMAGE_VISIBILITY_UNSPECIFIED"
)


def parse_status(status: StatusLike) -> pb.ImageStatus.ValueType:
    """The enum value of a Glance status word ("active"), an enum name or an enum value."""
    if not isinstance(status, str):
        return status
    name = status.strip().upper()
    if not name.startswith(_STATUS_PREFIX):
        name = _STATUS_PREFIX + name
    try:
        return pb.ImageStatus.Value(name)
    except ValueError:
        raise ValueError(f"unknown image status {status!r}") from None


def status_word(status: pb.ImageStatus.ValueType) -> str:
    """The Glance word of a status ("active"); "unspecified" for 0, the number if unknown."""
    try:
        return pb.ImageStatus.Name(status).removeprefix(_STATUS_PREFIX).lower()
    except ValueError:
        return str(int(status))


def event_type_word(event_type: pb.ImageEventType.ValueType) -> str:
    """The word of an event type ("created", "updated", "deleted"); the number if unknown."""
    try:
        return pb.ImageEventType.Name(event_type).removeprefix(_EVENT_TYPE_PREFIX).lower()
    except ValueError:
        return str(int(event_type))


def parse_visibility(visibility: VisibilityLike | None) -> pb.ImageVisibility.ValueType:
    """The enum value of a visibility word ("public"), name or value; None is UNSPECIFIED."""
    if visibility is None:
        return pb.IMAGE_VISIBILITY_UNSPECIFIED
    if not isinstance(visibility, str):
        return visibility
    name = visibility.strip().upper()
    if not name.startswith(_VISIBILITY_PREFIX):
        name = _VISIBILITY_PREFIX + name
    try:
        return pb.ImageVisibility.Value(name)
    except ValueError:
        raise ValueError(f"unknown image visibility {visibility!r}") from None


def visibility_word(visibility: pb.ImageVisibility.ValueType) -> str:
    """The word of a visibility ("private"); the number if unknown."""
    try:
        return pb.ImageVisibility.Name(visibility).removeprefix(_VISIBILITY_PREFIX).lower()
    except ValueError:
        return str(int(visibility))


def to_struct(metadata: MetadataLike | None) -> struct_pb2.Struct:
    """A Struct holding a JSON-like dict (empty for None)."""
    struct = struct_pb2.Struct()
    if metadata:
        struct.update(dict(metadata))
    return struct


def from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    """The JSON-like dict a Struct holds."""
    return json_format.MessageToDict(struct)


def to_location(location: LocationLike) -> pb.Location:
    """A pb.Location from one, a URL, a (url, metadata) pair or a {"url", "metadata"} dict."""
    if isinstance(location, pb.Location):
        return location
    if isinstance(location, str):
        return pb.Location(url=location)
    if isinstance(location, tuple):
        url, metadata = location
        return pb.Location(url=url, metadata=to_struct(metadata))
    unknown = set(location) - _LOCATION_KEYS
    if unknown or "url" not in location:
        raise ValueError(f"a location dict needs 'url' and may have 'metadata', got {location!r}")
    return pb.Location(url=location["url"], metadata=to_struct(location.get("metadata")))


def to_locations(locations: Sequence[LocationLike]) -> list[pb.Location]:
    """pb.Locations from location-likes, in order."""
    if isinstance(locations, str):
        raise TypeError("locations must be a sequence of locations, not a single URL")
    return [to_location(location) for location in locations]


def to_validation_data(data: ValidationLike | None) -> pb.ValidationData | None:
    """A pb.ValidationData from one or a dict of checksum/os_hash_algo/os_hash_value; None stays."""
    if data is None or isinstance(data, pb.ValidationData):
        return data
    unknown = set(data) - _VALIDATION_KEYS
    if unknown:
        raise ValueError(f"unknown validation data keys: {', '.join(sorted(unknown))}")
    return pb.ValidationData(**data)
