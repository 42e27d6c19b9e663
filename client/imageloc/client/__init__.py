"""The imageloc Python client: ImageClient, its ImagelocError, and value conversions.

The `imageloc` command lives in imageloc.client.cli.
"""

from imageloc.client.client import DEFAULT_TARGET, ImageClient
from imageloc.client.convert import (
    STATUS_WORDS,
    VISIBILITY_WORDS,
    LocationLike,
    MetadataLike,
    StatusLike,
    ValidationLike,
    VisibilityLike,
    parse_status,
    parse_visibility,
    status_word,
    visibility_word,
)
from imageloc.client.errors import ERROR_DOMAIN, ImagelocError, from_rpc_error

__all__ = [
    "DEFAULT_TARGET",
    "ERROR_DOMAIN",
    "STATUS_WORDS",
    "VISIBILITY_WORDS",
    "ImageClient",
    "ImagelocError",
    "LocationLike",
    "MetadataLike",
    "StatusLike",
    "ValidationLike",
    "VisibilityLike",
    "from_rpc_error",
    "parse_status",
    "parse_visibility",
    "status_word",
    "visibility_word",
]
