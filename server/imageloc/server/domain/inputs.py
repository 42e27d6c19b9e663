"""Checks of request values that need no stored state: ids, names, formats, paging.

Standard library only. Each raises DomainError(INVALID_REQUEST) naming the field.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from imageloc.server.domain.errors import DomainError, Reason
from imageloc.server.domain.policy import MAX_URL_LENGTH

#: Glance's images.owner is a VARCHAR(255).
MAX_OWNER_LENGTH = 255
MAX_NAME_LENGTH = 255
DEFAULT_PAGE_SIZE = 25
MAX_PAGE_SIZE = 1000
#: Ids and request_ids are UUIDs; 64 characters hold every spelling of one that uuid reads.
MAX_ID_LENGTH = 64
#: The server's etags are 16 hex digits.
MAX_ETAG_LENGTH = 64
#: The server's page tokens are about 150 characters.
MAX_PAGE_TOKEN_LENGTH = 512
#: The most locations one request may carry, whatever the location quota.
MAX_LOCATIONS_PER_REQUEST = 1000

#: Request fields that no rule of their own bounds: the most characters each may hold.
MAX_TEXT_LENGTHS: Mapping[str, int] = {
    "etag": MAX_ETAG_LENGTH,
    "page_token": MAX_PAGE_TOKEN_LENGTH,
    "url": MAX_URL_LENGTH,
}
#: Repeated request fields: the most elements each may hold.
MAX_LIST_LENGTHS: Mapping[str, int] = {"locations": MAX_LOCATIONS_PER_REQUEST}

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
    if len(text) > MAX_ID_LENGTH:
        raise invalid_request(field, f"{field} is longer than {MAX_ID_LENGTH} characters")
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise invalid_request(field, f"{field} is not a UUID: {text[:64]!r}") from None


def check_name(name: str) -> None:
    """Names are at most 255 characters, like Glance's, and hold no NUL (PostgreSQL can't)."""
    if len(name) > MAX_NAME_LENGTH:
        raise invalid_request("name", f"name is longer than {MAX_NAME_LENGTH} characters")
    if "\x00" in name:
        raise invalid_request("name", "name contains a NUL character")


def check_owner(owner: str) -> None:
    """An owner named in a request: a project id of 1 to 255 characters (Glance's), no NUL."""
    if not owner:
        raise invalid_request("owner", "owner is empty; leave it out for the caller's project")
    if len(owner) > MAX_OWNER_LENGTH:
        raise invalid_request("owner", f"owner is longer than {MAX_OWNER_LENGTH} characters")
    if "\x00" in owner:
        raise invalid_request("owner", "owner contains a NUL character")


def check_sizes(*, texts: Mapping[str, str], lists: Mapping[str, int]) -> None:
    """Refuse a request field past its limit (INVALID_REQUEST).

    texts maps field names to values, lists maps them to element counts; a field with no
    limit here passes.
    """
    for field, value in texts.items():
        limit = MAX_TEXT_LENGTHS.get(field)
        if limit is not None and len(value) > limit:
            raise invalid_request(field, f"{field} is longer than {limit} characters")
    for field, count in lists.items():
        limit = MAX_LIST_LENGTHS.get(field)
        if limit is not None and count > limit:
            raise invalid_request(field, f"{field} holds {count} elements, more than {limit}")


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
