"""Domain errors: every refusal the rules can make, each with a stable reason.

Standard library only. The gRPC mapping (imageloc.server.rpc.errors) turns a
reason into a status code and Glance's HTTP equivalent.
"""

from __future__ import annotations

import enum


class Reason(enum.StrEnum):
    """Why a request was refused; sent to callers as ErrorInfo.reason."""

    IMAGE_NOT_FOUND = "IMAGE_NOT_FOUND"
    IMAGE_STATUS_CONFLICT = "IMAGE_STATUS_CONFLICT"
    LAST_LOCATION = "LAST_LOCATION"
    EMPTY_LOCATIONS = "EMPTY_LOCATIONS"
    LOCATIONS_NOT_EMPTY = "LOCATIONS_NOT_EMPTY"
    DUPLICATE_LOCATION = "DUPLICATE_LOCATION"
    INVALID_LOCATION = "INVALID_LOCATION"
    INVALID_POSITION = "INVALID_POSITION"
    LOCATION_NOT_FOUND = "LOCATION_NOT_FOUND"
    LOCATION_QUOTA_EXCEEDED = "LOCATION_QUOTA_EXCEEDED"
    VALIDATION_DATA_CONFLICT = "VALIDATION_DATA_CONFLICT"
    INVALID_VALIDATION_DATA = "INVALID_VALIDATION_DATA"
    MISSING_FORMAT = "MISSING_FORMAT"
    IMAGE_PROTECTED = "IMAGE_PROTECTED"
    IMAGE_EXISTS = "IMAGE_EXISTS"
    INVALID_TRANSITION = "INVALID_TRANSITION"
    ETAG_MISMATCH = "ETAG_MISMATCH"
    INVALID_REQUEST = "INVALID_REQUEST"
    REQUEST_ID_REUSED = "REQUEST_ID_REUSED"
    POLICY_DENIED = "POLICY_DENIED"
    REVISION_COMPACTED = "REVISION_COMPACTED"
    FUTURE_REVISION = "FUTURE_REVISION"
    WATCHER_TOO_SLOW = "WATCHER_TOO_SLOW"
    READ_ONLY_FIELD = "READ_ONLY_FIELD"
    RESERVED_PROPERTY = "RESERVED_PROPERTY"
    PROPERTY_QUOTA_EXCEEDED = "PROPERTY_QUOTA_EXCEEDED"
    TAG_QUOTA_EXCEEDED = "TAG_QUOTA_EXCEEDED"
    HTTP_LOCATION_REQUIRED = "HTTP_LOCATION_REQUIRED"


class Action(enum.StrEnum):
    """What the caller asked for; Glance answers some refusals differently per action."""

    CREATE = "create"
    UPDATE = "update"
    GET = "get"
    LIST = "list"
    DELETE = "delete"
    UPLOAD = "upload"
    COMPLETE_UPLOAD = "complete_upload"
    FAIL_UPLOAD = "fail_upload"
    STAGE = "stage"
    IMPORT = "import"
    DEACTIVATE = "deactivate"
    REACTIVATE = "reactivate"
    ADD_LOCATION = "add_location"
    REMOVE_LOCATION = "remove_location"
    REPLACE_LOCATION = "replace_location"


class DomainError(Exception):
    """A refused request.

    `field` names the offending request field for argument errors;
    `metadata` holds extra lowerCamel facts (index, url, quota...).
    """

    def __init__(
        self,
        reason: Reason,
        message: str,
        *,
        image_id: str = "",
        image_status: str = "",
        action: Action | None = None,
        field: str = "",
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.image_id = image_id
        self.image_status = image_status
        self.action = action
        self.field = field
        self.metadata = dict(metadata or {})


def image_not_found(image_id: str) -> DomainError:
    """The refusal of an image that does not exist, or that the caller may not see."""
    return DomainError(
        Reason.IMAGE_NOT_FOUND, f"No image found with ID {image_id}", image_id=image_id
    )
