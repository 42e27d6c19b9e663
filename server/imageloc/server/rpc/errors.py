"""The one place a refusal becomes a gRPC status with google.rpc rich details.

Imports grpc, google.rpc and the domain. Each reason has one gRPC code and the
HTTP status Glance answers for the same refusal (docs/errors.md is the table).
"""

from __future__ import annotations

from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from imageloc.server.domain.errors import Action, DomainError, Reason

#: ErrorInfo.domain of every refusal.
ERROR_DOMAIN = "imageloc"

R = Reason
C = code_pb2

#: reason -> (google.rpc.Code, Glance's HTTP status)
REASON_CODES: dict[Reason, tuple[int, int]] = {
    R.IMAGE_NOT_FOUND: (C.NOT_FOUND, 404),
    R.IMAGE_STATUS_CONFLICT: (C.FAILED_PRECONDITION, 409),
    R.LAST_LOCATION: (C.FAILED_PRECONDITION, 403),
    R.EMPTY_LOCATIONS: (C.INVALID_ARGUMENT, 403),
    R.LOCATIONS_NOT_EMPTY: (C.FAILED_PRECONDITION, 400),
    R.DUPLICATE_LOCATION: (C.ALREADY_EXISTS, 400),
    R.INVALID_LOCATION: (C.INVALID_ARGUMENT, 400),
    R.INVALID_POSITION: (C.INVALID_ARGUMENT, 400),
    R.LOCATION_NOT_FOUND: (C.NOT_FOUND, 400),
    R.LOCATION_QUOTA_EXCEEDED: (C.RESOURCE_EXHAUSTED, 413),
    R.VALIDATION_DATA_CONFLICT: (C.FAILED_PRECONDITION, 409),
    R.INVALID_VALIDATION_DATA: (C.INVALID_ARGUMENT, 400),
    R.MISSING_FORMAT: (C.FAILED_PRECONDITION, 400),
    R.IMAGE_PROTECTED: (C.FAILED_PRECONDITION, 403),
    R.IMAGE_EXISTS: (C.ALREADY_EXISTS, 409),
    R.INVALID_TRANSITION: (C.FAILED_PRECONDITION, 409),
    R.ETAG_MISMATCH: (C.ABORTED, 412),
    R.INVALID_REQUEST: (C.INVALID_ARGUMENT, 400),
    # Glance has no request ids; 422 is what HTTP idempotency keys answer for a reuse.
    R.REQUEST_ID_REUSED: (C.INVALID_ARGUMENT, 422),
    R.POLICY_DENIED: (C.PERMISSION_DENIED, 403),
    # WatchImages: 410 Gone for a start older than the kept log, as etcd and Kubernetes.
    R.REVISION_COMPACTED: (C.OUT_OF_RANGE, 410),
    R.FUTURE_REVISION: (C.INVALID_ARGUMENT, 400),
    R.WATCHER_TOO_SLOW: (C.RESOURCE_EXHAUSTED, 429),
    # Glance: "Attribute 'status' is read-only." and "... is reserved.", 403 Forbidden.
    R.READ_ONLY_FIELD: (C.INVALID_ARGUMENT, 403),
    R.RESERVED_PROPERTY: (C.INVALID_ARGUMENT, 403),
    R.PROPERTY_QUOTA_EXCEEDED: (C.RESOURCE_EXHAUSTED, 413),
    R.TAG_QUOTA_EXCEEDED: (C.RESOURCE_EXHAUSTED, 413),
    # Glance: "http store must be enabled to use location API by normal user.", 403.
    R.HTTP_LOCATION_REQUIRED: (C.PERMISSION_DENIED, 403),
}

#: Where Glance answers a refusal of one action with another status: a refused deactivate
#: or reactivate with 403, a refused delayed delete with 400 (upload, stage and import keep
#: 409), and a format change of an image that is not queued with 403.
ACTION_HTTP_STATUS: dict[tuple[Reason, Action], int] = {
    (R.INVALID_TRANSITION, Action.DEACTIVATE): 403,
    (R.INVALID_TRANSITION, Action.REACTIVATE): 403,
    (R.INVALID_TRANSITION, Action.DELETE): 400,
    (R.IMAGE_STATUS_CONFLICT, Action.UPDATE): 403,
}

#: Refusals that are not the caller's fault: the server's state or load.
UNAVAILABLE_REASON = "STORE_UNAVAILABLE"
STOPPING_REASON = "SERVER_SHUTTING_DOWN"
CONCURRENT_UPDATE_REASON = "CONCURRENT_UPDATE"
INTERNAL_REASON = "INTERNAL_ERROR"
DEADLINE_REASON = "DEADLINE_EXCEEDED"
#: No valid credentials; ErrorInfo metadata `cause` says what was wrong with them.
UNAUTHENTICATED_REASON = "UNAUTHENTICATED"


def http_status_of(error: DomainError) -> int:
    """The HTTP status Glance answers for this refusal."""
    if error.action is not None:
        special = ACTION_HTTP_STATUS.get((error.reason, error.action))
        if special is not None:
            return special
    return REASON_CODES[error.reason][1]


def http_status_of_refusal(status: status_pb2.Status) -> tuple[int, str]:
    """The HTTP status and the reason a refusal's ErrorInfo carries (500 without one): what
    the Glance endpoint answers, so that HTTP and gRPC callers are told the same."""
    for packed in status.details:
        info = error_details_pb2.ErrorInfo()
        if packed.Unpack(info):
            return int(info.metadata.get("httpStatus", "500")), info.reason
    return 500, ""


def domain_error_status(error: DomainError) -> status_pb2.Status:
    """A google.rpc.Status with one ErrorInfo and the detail its code calls for."""
    code = REASON_CODES[error.reason][0]
    metadata = dict(error.metadata)
    if error.image_id:
        metadata["imageId"] = error.image_id
    if error.image_status:
        metadata["imageStatus"] = error.image_status
    metadata["httpStatus"] = str(http_status_of(error))
    details: list[object] = [
        error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=metadata)
    ]
    subject = f"images/{error.image_id}" if error.image_id else "images"
    if code == C.FAILED_PRECONDITION:
        details.append(
            error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type=error.reason, subject=subject, description=error.message
                    )
                ]
            )
        )
    elif code == C.INVALID_ARGUMENT:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=error.field or "request",
                        description=error.message,
                        reason=error.reason,
                    )
                ]
            )
        )
    elif code in (C.NOT_FOUND, C.ALREADY_EXISTS):
        is_location = error.reason in (Reason.LOCATION_NOT_FOUND, Reason.DUPLICATE_LOCATION)
        details.append(
            error_details_pb2.ResourceInfo(
                resource_type="imageloc.v1.Location" if is_location else "imageloc.v1.Image",
                resource_name=error.metadata.get("url", "") if is_location else subject,
                description=error.message,
            )
        )
    elif code == C.RESOURCE_EXHAUSTED:
        details.append(
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(
                        subject=subject, description=error.message
                    )
                ]
            )
        )
    return _status(code, error.message, details)


def server_status(
    code: int,
    reason: str,
    message: str,
    http_status: int,
    *,
    metadata: dict[str, str] | None = None,
) -> status_pb2.Status:
    """A refusal that comes from the server's condition or the call's credentials."""
    info = error_details_pb2.ErrorInfo(
        reason=reason,
        domain=ERROR_DOMAIN,
        metadata={**(metadata or {}), "httpStatus": str(http_status)},
    )
    return _status(code, message, [info])


def _status(code: int, message: str, details: list[object]) -> status_pb2.Status:
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)  # type: ignore[arg-type]
        packed.append(holder)
    return status_pb2.Status(code=code, message=message, details=packed)
