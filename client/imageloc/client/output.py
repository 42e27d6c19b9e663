"""How the imageloc CLI shows images, locations, events and refusals: readable text or JSON.

Pure functions from messages and errors to strings; the CLI decides where they go.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

from imageloc.client.convert import event_type_word, from_struct, status_word, visibility_word
from imageloc.client.errors import ImagelocError
from imageloc.v1 import image_service_pb2 as pb


def message_dict(message: Message) -> dict[str, Any]:
    """A message as the proto JSON mapping, with the .proto field names."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def to_json(value: Any) -> str:
    """Indented JSON text."""
    return json.dumps(value, indent=2, sort_keys=False)


def image_json(image: pb.Image) -> str:
    """An image as a JSON object."""
    return to_json(message_dict(image))


def images_json(images: Iterable[pb.Image]) -> str:
    """Images as a JSON array."""
    return to_json([message_dict(image) for image in images])


def locations_json(image: pb.Image) -> str:
    """An image's locations as a JSON array."""
    return to_json([message_dict(location) for location in image.locations])


def image_text(image: pb.Image) -> str:
    """An image as "field: value" lines, its locations numbered by index."""
    fields = [
        ("id", image.id),
        ("name", image.name),
        ("status", status_word(image.status)),
        ("disk_format", image.disk_format),
        ("container_format", image.container_format),
        ("visibility", visibility_word(image.visibility)),
        ("protected", str(image.protected).lower()),
        ("owner", image.owner),
        ("size", str(image.size)),
        ("checksum", image.checksum),
        ("os_hash_algo", image.os_hash_algo),
        ("os_hash_value", image.os_hash_value),
        ("min_disk", str(image.min_disk)),
        ("min_ram", str(image.min_ram)),
        ("os_hidden", str(image.os_hidden).lower()),
        ("virtual_size", str(image.virtual_size) if image.HasField("virtual_size") else ""),
        ("tags", ", ".join(image.tags)),
        ("create_time", _timestamp(image.create_time)),
        ("update_time", _timestamp(image.update_time)),
        ("etag", image.etag),
    ]
    lines = [f"{name}: {value}".rstrip() for name, value in fields]
    if image.properties:
        lines.append("properties:")
        lines += [f"  {key}={value}" for key, value in sorted(image.properties.items())]
    if image.locations:
        lines.append("locations:")
        lines += [f"  {line}" for line in locations_text(image).splitlines()]
    else:
        lines.append("locations: (none)")
    return "\n".join(lines)


def locations_text(image: pb.Image) -> str:
    """One line per location: its index, URL and metadata (as JSON, when any)."""
    return "\n".join(
        _location_line(index, location) for index, location in enumerate(image.locations)
    )


def image_line(image: pb.Image) -> str:
    """One line for a listing: id, status, name."""
    return f"{image.id}  {status_word(image.status):<14}  {image.name}"


def event_line(event: pb.ImageEvent) -> str:
    """One line for a watch: revision, type, then the image's id, status and name."""
    return f"{event.revision:<6}  {event_type_word(event.type):<7}  {image_line(event.image)}"


def event_json(event: pb.ImageEvent) -> str:
    """An event as a JSON object on one line, for a stream of them."""
    return json.dumps(message_dict(event))


def error_text(error: ImagelocError, *, server: str) -> str:
    """A refusal as "error: CODE REASON (HTTP n): message" and its metadata and violations.

    An authentication refusal reads "error: UNAUTHENTICATED (cause: expired): message".
    """
    if not error.reason and error.code.name in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
        return f"error: cannot reach the imageloc server at {server}: {error}"
    head = str(error)
    if error.reason == "UNAUTHENTICATED" and error.cause:
        head = f"{error.code_name} (cause: {error.cause}): {error.message}"
    lines = [f"error: {head}"]
    lines += [f"  {key}: {value}" for key, value in sorted(error.metadata.items())]
    lines += [f"  violation: {violation}" for violation in error.violations]
    return "\n".join(lines)


def error_json(error: ImagelocError) -> str:
    """A refusal as a JSON object: code, reason, httpStatus, message, metadata, violations."""
    return to_json(
        {
            "code": error.code.name,
            "reason": error.reason,
            "httpStatus": error.http_status,
            "message": error.message,
            "metadata": error.metadata,
            "violations": list(error.violations),
        }
    )


def _location_line(index: int, location: pb.Location) -> str:
    metadata = from_struct(location.metadata)
    suffix = f"  {json.dumps(metadata, sort_keys=True)}" if metadata else ""
    return f"{index}: {location.url}{suffix}"


def _timestamp(stamp: timestamp_pb2.Timestamp) -> str:
    """RFC 3339 text; empty for the unset (zero) timestamp."""
    return stamp.ToJsonString() if stamp.seconds or stamp.nanos else ""
