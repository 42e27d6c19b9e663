"""ImagelocError: a refusal from the imageloc server, decoded from its gRPC rich status.

Reads the google.rpc.Status in the grpc-status-details-bin trailer; imports grpc and google.rpc.
"""

from __future__ import annotations

import grpc

# googleapis-common-protos ships .pyi stubs but no py.typed marker.
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped, unused-ignore]
from grpc_status import rpc_status

ERROR_DOMAIN = "imageloc"


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
