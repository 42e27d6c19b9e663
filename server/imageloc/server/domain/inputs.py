"""Checks of request values that need no stored state: ids, names, formats, paging.

Standard library only. Each raises DomainError(INVALID_REQUEST) naming the field.
"""

from __future__ import annotations

import uuid

from imageloc.server.domain.errors import DomainError, Reason

MAX_NAME_LENGTH = 255
DEFAULT_PAGE_SIZE = 25
MAX_PAGE_SIZE = 1000

#: Glance's default [image_format] disk_formats and container_formats.
DISK_FORMATS = frozenset(
    {"ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop"}
)
CONTAINER_FORMATS = frozenset({"ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed"})


def invalid_request(field: str, message: str) -> DomainError:
    """A malformed request: INVALID_REQUEST on field."""
    return DomainError(Reason.INVALID_REQUEST, message, field=field)


def parse_image_id(text: str, *, field: str = "image_id") -> str:
    """The canonical lowercase form of a UUID, or INVALID_REQUEST."""
    if not text:
        raise invalid_request(field, f"{field} is required")
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise invalid_request(field, f"{field} is not a UUID: {text[:64]!r}") from None


def check_name(name: str) -> None:
    """Names are at most 255 characters, like Glance's."""
    if len(name) > MAX_NAME_LENGTH:
        raise invalid_request("name", f"name is longer than {MAX_NAME_LENGTH} characters")


def check_format(value: str, *, field: str, allowed: frozenset[str]) -> None:
    """An empty format is unset; any other must be one Glance knows."""
    if value and value not in allowed:
        raise invalid_request(
            field, f"Invalid value {value[:64]!r} for {field}: want one of {sorted(allowed)}"
        )


def page_size(requested: int) -> int:
    """0 means the default, above the maximum means the maximum, negative is refused."""
    if requested < 0:
        raise invalid_request("page_size", "page_size must not be negative")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)
