"""Conversions between imageloc.v1 messages and domain values.

Imports the generated messages and the domain; no rules live here.
"""

from __future__ import annotations

import datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from imageloc.server.domain import inputs, record
from imageloc.server.domain.listing import ImageFilters
from imageloc.server.domain.model import Image, ImageStatus, Location, ValidationData, Visibility
from imageloc.server.domain.record import ImageUpdate
from imageloc.server.service import etag_of
from imageloc.v1 import image_service_pb2 as pb

_STATUS_TO_PROTO = {
    status: pb.ImageStatus.Value(f"IMAGE_STATUS_{status.name}") for status in ImageStatus
}
_STATUS_FROM_PROTO: dict[int, ImageStatus] = {
    number: status for status, number in _STATUS_TO_PROTO.items()
}
_VISIBILITY_TO_PROTO = {
    visibility: pb.ImageVisibility.Value(f"IMAGE_VISIBILITY_{visibility.name}")
    for visibility in Visibility
}
_VISIBILITY_FROM_PROTO: dict[int, Visibility] = {
    number: vis for vis, number in _VISIBILITY_TO_PROTO.items()
}


def status_from_proto(number: int, *, field: str = "status") -> ImageStatus:
    """The domain status of an ImageStatus number; INVALID_REQUEST for 0 or unknown."""
    try:
        return _STATUS_FROM_PROTO[number]
    except KeyError:
        raise inputs.invalid_request(field, f"{field} {number} is not an image status") from None


def visibility_from_proto(number: int, *, field: str = "visibility") -> Visibility:
    """UNSPECIFIED means private; an unknown number is INVALID_REQUEST."""
    if number == pb.IMAGE_VISIBILITY_UNSPECIFIED:
        return Visibility.PRIVATE
    try:
        return _VISIBILITY_FROM_PROTO[number]
    except KeyError:
        raise inputs.invalid_request(
            field, f"{field} {number} is not an image visibility"
        ) from None


def visibility_filter_from_proto(number: int) -> Visibility | None:
    """A listing's visibility filter: UNSPECIFIED is no filter."""
    if number == pb.IMAGE_VISIBILITY_UNSPECIFIED:
        return None
    return visibility_from_proto(number)


def location_from_proto(message: pb.Location) -> Location:
    """A domain location; the Struct becomes plain JSON values."""
    metadata: dict[str, Any] = json_format.MessageToDict(message.metadata)
    return Location(url=message.url, metadata=metadata)


def optional_location(holder: Any, field: str = "location") -> Location | None:
    """The location in holder.field, or None when the field is not set."""
    return location_from_proto(getattr(holder, field)) if holder.HasField(field) else None


def validation_data_from_proto(holder: Any) -> ValidationData | None:
    """The request's validation data; an absent or all-empty message is None."""
    if not holder.HasField("validation_data"):
        return None
    data = holder.validation_data
    value = ValidationData(
        checksum=data.checksum, os_hash_algo=data.os_hash_algo, os_hash_value=data.os_hash_value
    )
    return None if value == ValidationData() else value


def location_to_proto(location: Location) -> pb.Location:
    """A Location message with its metadata as a Struct."""
    metadata = struct_pb2.Struct()
    metadata.update(dict(location.metadata))
    return pb.Location(url=location.url, metadata=metadata)


def image_to_proto(image: Image, *, locations_shown: bool = True) -> pb.Image:
    """The Image message, etag included; without its locations unless locations_shown."""
    message = pb.Image(
        id=image.id,
        name=image.name,
        status=_STATUS_TO_PROTO[image.status],
        locations=[location_to_proto(location) for location in image.locations]
        if locations_shown
        else (),
        locations_hidden=not locations_shown,
        size=image.size,
        checksum=image.checksum,
        os_hash_algo=image.os_hash_algo,
        os_hash_value=image.os_hash_value,
        disk_format=image.disk_format,
        container_format=image.container_format,
        visibility=_VISIBILITY_TO_PROTO[image.visibility],
        owner=image.owner,
        protected=image.protected,
        create_time=timestamp(image.created_at),
        update_time=timestamp(image.updated_at),
        etag=etag_of(image),
        revision=image.store_revision,
        min_disk=image.min_disk,
        min_ram=image.min_ram,
        tags=image.tags,
        os_hidden=image.os_hidden,
        properties=image.properties,
    )
    if image.virtual_size is not None:
        message.virtual_size = image.virtual_size
    return message


#: UpdateImage's mask path of one property, and AIP-161's quoting of a key in a path.
_PROPERTY_PATH = "properties."
_QUOTE = "`"


def image_update_from_proto(request: pb.UpdateImageRequest) -> ImageUpdate:
    """The update that request's mask names, with the values of request.image; a path of
    no updatable field is passed on for the rules to refuse (record.checked_update)."""
    image = request.image
    fields: dict[str, Any] = {}
    properties: dict[str, str | None] = {}
    all_properties: dict[str, str] | None = None
    for path in request.update_mask.paths:
        if path == "properties":
            all_properties = dict(image.properties)
        elif path.startswith(_PROPERTY_PATH):
            key = path[len(_PROPERTY_PATH) :]
            if len(key) > 1 and key[0] == key[-1] == _QUOTE:
                key = key[1:-1]
            properties[key] = image.properties.get(key)
        elif path == "visibility":
            if image.visibility == pb.IMAGE_VISIBILITY_UNSPECIFIED:
                raise inputs.invalid_request(
                    "image.visibility", "visibility must be set when update_mask names it"
                )
            fields[path] = visibility_from_proto(image.visibility, field="image.visibility")
        elif path == "virtual_size":
            fields[path] = image.virtual_size if image.HasField("virtual_size") else None
        elif path == "tags":
            fields[path] = list(image.tags)
        elif path in record.UPDATABLE_FIELDS:
            fields[path] = getattr(image, path)
        else:
            fields[path] = None
    return ImageUpdate(fields=fields, properties=properties, all_properties=all_properties)


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def timestamp(moment: datetime.datetime) -> timestamp_pb2.Timestamp:
    """What Timestamp.FromDatetime computes, in a third of its time (it runs twice an image)."""
    since = moment - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1000
    )


def image_filters_from_proto(request: pb.ListImagesRequest) -> ImageFilters:
    """ListImages' filters; an absent optional filter is no filter."""

    has = request.HasField
    return ImageFilters(
        status=status_from_proto(request.status) if has("status") else None,
        visibility=visibility_filter_from_proto(request.visibility) if has("visibility") else None,
        name=request.name if has("name") else None,
        owner=request.owner if has("owner") else None,
        tags=tuple(request.tags),
        properties=dict(request.properties),
        os_hidden=request.os_hidden if has("os_hidden") else None,
        size_min=request.size_min if has("size_min") else None,
        size_max=request.size_max if has("size_max") else None,
    )
