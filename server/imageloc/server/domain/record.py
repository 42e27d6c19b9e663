"""The rules of an image's record fields: boot minimums, tags, extra properties, and updates.

Standard library only. Limits follow Glance's (image_property_quota and image_tag_quota,
128 each by default; its schema's 255-character tags); each refusal names the field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from imageloc.server.domain import inputs
from imageloc.server.domain.errors import Action, DomainError, Reason
from imageloc.server.domain.model import Image, ImageStatus, Visibility

#: Glance's int32 columns min_disk and min_ram.
MAX_MINIMUM = 2**31 - 1
MAX_TAG_LENGTH = 255
MAX_PROPERTY_KEY_LENGTH = 255
#: Glance keeps a property's value as TEXT; MySQL's TEXT holds 65,535 bytes.
MAX_PROPERTY_VALUE_LENGTH = 65535
#: Glance's reserved namespace of properties.
RESERVED_PREFIX = "os_glance"

#: The image's own fields (Glance's base properties and what its documents add): a
#: property may not be named as one, or Glance's flat image document would be ambiguous.
IMAGE_FIELDS = frozenset(
    {
        "id", "name", "status", "visibility", "protected", "os_hidden", "checksum",
        "os_hash_algo", "os_hash_value", "owner", "size", "virtual_size", "container_format",
        "disk_format", "created_at", "updated_at", "tags", "direct_url", "min_ram", "min_disk",
        "self", "file", "schema", "locations", "stores", "location", "deleted", "deleted_at",
    }
)  # fmt: skip

#: What UpdateImage may set, by field.
UPDATABLE_FIELDS = frozenset(
    {
        "name", "disk_format", "container_format", "visibility", "protected", "min_disk",
        "min_ram", "tags", "os_hidden", "virtual_size",
    }
)  # fmt: skip
#: What it may not: the status machine, the location rules, the upload and the owner do.
READ_ONLY_FIELDS = frozenset(
    {
        "id", "status", "locations", "size", "checksum", "os_hash_algo", "os_hash_value",
        "owner", "create_time", "update_time", "etag", "locations_hidden", "revision",
    }
)  # fmt: skip
#: Formats change only while no data is there (Glance: "can be only replaced for a
#: queued image").
_QUEUED_ONLY = ("disk_format", "container_format")


@dataclasses.dataclass(frozen=True)
class RecordLimits:
    """The most tags and extra properties an image may hold; negative means unlimited."""

    property_quota: int = 128
    tag_quota: int = 128


#: Glance's defaults.
DEFAULT_LIMITS = RecordLimits()


@dataclasses.dataclass(frozen=True)
class ImageUpdate:
    """What one update sets.

    fields maps names of UPDATABLE_FIELDS to their new values (virtual_size None: unknown).
    properties maps keys to new values, None removing the key; all_properties, when
    given, replaces every property first.
    """

    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    properties: Mapping[str, str | None] = dataclasses.field(default_factory=dict)
    all_properties: Mapping[str, str] | None = None


def read_only(field: str) -> DomainError:
    """The refusal of a change to a field that UpdateImage may not set."""
    return DomainError(
        Reason.READ_ONLY_FIELD,
        f"Attribute '{field}' is read-only.",
        field=field,
        metadata={"field": field},
    )


def check_minimum(value: int, *, field: str) -> int:
    """min_disk or min_ram: 0 to 2^31-1 (Glance: "Cannot be a negative value")."""
    if not 0 <= value <= MAX_MINIMUM:
        raise inputs.invalid_request(field, f"{field} must be between 0 and {MAX_MINIMUM}")
    return value


def check_virtual_size(value: int | None) -> int | None:
    """A virtual size in bytes, or None while unknown."""
    if value is not None and value < 0:
        raise inputs.invalid_request("virtual_size", "virtual_size must not be negative")
    return value


def checked_tags(tags: Iterable[str], *, limits: RecordLimits) -> tuple[str, ...]:
    """tags in the order first given, each once; refused past the quota or 255 characters."""
    kept: dict[str, None] = {}
    for tag in tags:
        if not tag or len(tag) > MAX_TAG_LENGTH:
            raise inputs.invalid_request(
                "tags", f"a tag must be 1 to {MAX_TAG_LENGTH} characters long"
            )
        if "\x00" in tag:
            raise inputs.invalid_request("tags", "a tag contains a NUL character")
        kept[tag] = None
    if 0 <= limits.tag_quota < len(kept):
        raise _over_quota(Reason.TAG_QUOTA_EXCEEDED, "tags", len(kept), limits.tag_quota)
    return tuple(kept)


def checked_properties(properties: Mapping[str, str], *, limits: RecordLimits) -> dict[str, str]:
    """properties, refused for a reserved or overlong key, an overlong value or the quota."""
    for key, value in properties.items():
        field = f"properties.{key[:64]}"
        if not key or len(key) > MAX_PROPERTY_KEY_LENGTH:
            raise inputs.invalid_request(
                field, f"a property key must be 1 to {MAX_PROPERTY_KEY_LENGTH} characters long"
            )
        if key in IMAGE_FIELDS or key.startswith(RESERVED_PREFIX):
            raise DomainError(
                Reason.RESERVED_PROPERTY, f"Attribute '{key}' is reserved.", field=field
            )
        if len(value) > MAX_PROPERTY_VALUE_LENGTH:
            raise inputs.invalid_request(
                field, f"a property value is longer than {MAX_PROPERTY_VALUE_LENGTH} characters"
            )
        if "\x00" in key or "\x00" in value:
            raise inputs.invalid_request(field, "a property contains a NUL character")
    if 0 <= limits.property_quota < len(properties):
        raise _over_quota(
            Reason.PROPERTY_QUOTA_EXCEEDED, "properties", len(properties), limits.property_quota
        )
    return dict(properties)


def checked_update(update: ImageUpdate, *, limits: RecordLimits) -> ImageUpdate:
    """update with every value checked, before any image is read: READ_ONLY_FIELD for a
    field it may not set, INVALID_REQUEST for one an image does not have or a bad value."""
    if not update.fields and not update.properties and update.all_properties is None:
        raise inputs.invalid_request("update_mask", "update_mask names no field to change")
    values: dict[str, Any] = {}
    for field, value in update.fields.items():
        if field in READ_ONLY_FIELDS:
            raise read_only(field)
        if field not in UPDATABLE_FIELDS:
            raise inputs.invalid_request(
                "update_mask", f"{field[:64]!r} is not a field of an image"
            )
        values[field] = _checked(field, value, limits=limits)
    unlimited = RecordLimits(property_quota=-1, tag_quota=-1)  # the quota is of the result
    set_ = {key: value for key, value in update.properties.items() if value is not None}
    checked_properties(set_, limits=unlimited)
    if update.all_properties is not None:
        checked_properties(update.all_properties, limits=unlimited)
    return dataclasses.replace(update, fields=values)


def apply_update(image: Image, update: ImageUpdate, *, limits: RecordLimits) -> Image:
    """image with a checked update's values; formats of a queued image only, and the
    property quota of the result."""
    values = dict(update.fields)
    for field in _QUEUED_ONLY:
        changes = field in values and values[field] != getattr(image, field)
        if changes and image.status is not ImageStatus.QUEUED:
            raise DomainError(
                Reason.IMAGE_STATUS_CONFLICT,
                f"Attribute {field} can be only replaced for a queued image.",
                image_id=image.id,
                image_status=image.status,
                action=Action.UPDATE,
                field=field,
            )
    if update.all_properties is not None or update.properties:
        properties = dict(
            image.properties if update.all_properties is None else update.all_properties
        )
        for key, value in update.properties.items():
            if value is None:
                properties.pop(key, None)
            else:
                properties[key] = value
        values["properties"] = checked_properties(properties, limits=limits)
    return dataclasses.replace(image, **values)


def _checked(field: str, value: Any, *, limits: RecordLimits) -> Any:
    """One updatable field's new value, checked as CreateImage checks it."""
    if field == "name":
        inputs.check_name(value)
    elif field == "disk_format":
        inputs.check_format(value, field=field, allowed=inputs.DISK_FORMATS)
    elif field == "container_format":
        inputs.check_format(value, field=field, allowed=inputs.CONTAINER_FORMATS)
    elif field == "visibility":
        return Visibility(value)
    elif field in ("min_disk", "min_ram"):
        return check_minimum(value, field=field)
    elif field == "tags":
        return checked_tags(value, limits=limits)
    elif field == "virtual_size":
        return check_virtual_size(value)
    elif field in ("protected", "os_hidden"):
        return bool(value)
    return value


def _over_quota(reason: Reason, field: str, attempted: int, maximum: int) -> DomainError:
    return DomainError(
        reason,
        f"The limit has been exceeded on the number of allowed image {field}."
        f" Attempted: {attempted}, Maximum: {maximum}",
        field=field,
        metadata={"attempted": str(attempted), "maximum": str(maximum)},
    )
