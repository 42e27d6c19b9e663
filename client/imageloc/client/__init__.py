"""The imageloc Python client: ImageClient, its errors, watches and value conversions.

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
from imageloc.client.errors import (
    ERROR_DOMAIN,
    ImageDeletedError,
    ImagelocError,
    StatusUnreachableError,
    WaitError,
    WaitTimeoutError,
    from_rpc_error,
)
from imageloc.client.watch import ImageWatch

__all__ = [
    "DEFAULT_TARGET",
    "ERROR_DOMAIN",
    "STATUS_WORDS",
    "VISIBILITY_WORDS",
    "ImageClient",
    "ImageDeletedError",
    "ImageWatch",
    "ImagelocError",
    "LocationLike",
    "MetadataLike",
    "StatusLike",
    "StatusUnreachableError",
    "ValidationLike",
    "VisibilityLike",
    "WaitError",
    "WaitTimeoutError",
    "from_rpc_error",
    "parse_status",
    "parse_visibility",
    "status_word",
    "visibility_word",
]
