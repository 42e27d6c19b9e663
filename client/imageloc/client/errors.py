"""ImagelocError: a refusal from the imageloc server, decoded from its gRPC rich status.

Reads the google.rpc.Status in the grpc-status-details-bin trailer; the WaitError family is
the client's own verdict of a wait_for_status. Imports grpc, google.rpc and the generated stubs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

import grpc

# googleapis-common-protos ships .pyi stubs but no py.typed marker.
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped, unused-ignore]
from grpc_status import rpc_status

from imageloc.client.convert import status_word
from imageloc.v1 import image_service_pb2 as pb

ERROR_DOMAIN = "imageloc"

#: WatchImages refusals the client acts on (docs/errors.md).
REVISION_COMPACTED = "REVISION_COMPACTED"
WATCHER_TOO_SLOW = "WATCHER_TOO_SLOW"


class ImagelocError(Exception):
    """A call the server refused (or could not answer).

    `reason` is the ErrorInfo reason ("" when the status carries no ErrorInfo, as
    for transport failures); `http_status` is the status Glance answers for the
    same refusal; `metadata` is the ErrorInfo's metadata (e.g. `cause` of an
    UNAUTHENTICATED refusal); `violations` are the BadRequest, PreconditionFailure
    and QuotaFailure entries, one readable line each.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        metadata: dict[str, str] | None = None,
        violations: tuple[str, ...] = (),
        details: status_pb2.Status | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata: dict[str, str] = dict(metadata or {})
        self.violations = violations
        self.details = details

    @property
    def http_status(self) -> int | None:
        """The httpStatus metadata as an int, None when absent or not a number."""
        text = self.metadata.get("httpStatus", "")
        return int(text) if text.isdigit() else None

    @property
    def cause(self) -> str:
        """Why credentials were refused (the `cause` metadata: expired, missing, ...), or ""."""
        return self.metadata.get("cause", "")

    @property
    def code_name(self) -> str:
        """The gRPC code's name, e.g. FAILED_PRECONDITION."""
        return str(self.code.name)

    def __str__(self) -> str:
        head = " ".join(part for part in (self.code_name, self.reason) if part)
        if self.http_status is not None:
            head += f" (HTTP {self.http_status})"
        return f"{head}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"ImagelocError(code={self.code_name}, reason={self.reason!r}, "
            f"message={self.message!r}, metadata={self.metadata!r})"
        )


class WaitError(ImagelocError):
    """wait_for_status gave up before the image reached one of the statuses waited for.

    The client's verdict, not a refusal of the server: `domain` is empty and `reason` is
    WAIT_TIMEOUT, IMAGE_DELETED or STATUS_UNREACHABLE. `image` is the image as last seen
    (None when GetImage had not answered); `metadata` holds `imageId`, `statuses` (the
    ones waited for, comma-separated words) and `status` (the last one seen, when known).
    """

    CODE: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN
    REASON: ClassVar[str] = ""

    def __init__(
        self,
        message: str,
        *,
        image_id: str,
        statuses: Iterable[pb.ImageStatus.ValueType],
        image: pb.Image | None = None,
    ) -> None:
        metadata = {"imageId": image_id, "statuses": ",".join(status_word(s) for s in statuses)}
        if image is not None:
            metadata["status"] = status_word(image.status)
        super().__init__(self.CODE, message, reason=self.REASON, metadata=metadata)
        self.image = image


class WaitTimeoutError(WaitError, TimeoutError):
    """The timeout passed first (DEADLINE_EXCEEDED, WAIT_TIMEOUT); also a TimeoutError."""

    CODE = grpc.StatusCode.DEADLINE_EXCEEDED
    REASON = "WAIT_TIMEOUT"


class ImageDeletedError(WaitError):
    """The image was deleted, status deleted or pending_delete (NOT_FOUND, IMAGE_DELETED)."""

    CODE = grpc.StatusCode.NOT_FOUND
    REASON = "IMAGE_DELETED"


class StatusUnreachableError(WaitError):
    """The image is in a status from which Glance's transitions reach none of the statuses
    waited for, as killed for active (FAILED_PRECONDITION, STATUS_UNREACHABLE)."""

    CODE = grpc.StatusCode.FAILED_PRECONDITION
    REASON = "STATUS_UNREACHABLE"


def from_rpc_error(err: grpc.RpcError) -> ImagelocError:
    """The ImagelocError an RpcError raised by a stub call stands for."""
    if not isinstance(err, grpc.Call):
        return ImagelocError(grpc.StatusCode.UNKNOWN, str(err) or type(err).__name__)
    code = err.code()
    message = err.details() or ""
    status = _rich_status(err)
    if status is None:
        return ImagelocError(code, message)
    info = _error_info(status)
    return ImagelocError(
        code,
        status.message or message,
        reason=info.reason if info else "",
        domain=info.domain if info else "",
        metadata=dict(info.metadata) if info else None,
        violations=_violations(status),
        details=status,
    )


def _rich_status(call: grpc.Call) -> status_pb2.Status | None:
    """The google.rpc.Status in the call's trailer; None when absent or inconsistent."""
    try:
        status = rpc_status.from_call(call)
    except ValueError:
        return None
    return status if isinstance(status, status_pb2.Status) else None


def _error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo | None:
    """The first ErrorInfo among the status details."""
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    return None


def _violations(status: status_pb2.Status) -> tuple[str, ...]:
    """One line per violation in the BadRequest, PreconditionFailure and QuotaFailure details."""
    lines: list[str] = []
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        precondition = error_details_pb2.PreconditionFailure()
        quota = error_details_pb2.QuotaFailure()
        if detail.Unpack(bad_request):
            lines += [f"{v.field}: {v.description}" for v in bad_request.field_violations]
        elif detail.Unpack(precondition):
            lines += [f"{v.type} {v.subject}: {v.description}" for v in precondition.violations]
        elif detail.Unpack(quota):
            lines += [f"{v.subject}: {v.description}" for v in quota.violations]
    return tuple(lines)
