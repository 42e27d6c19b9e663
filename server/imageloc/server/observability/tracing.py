"""Traces: an OpenTelemetry span per RPC, continuing the caller's W3C traceparent, with a
child span per unit of work.

Imports the OpenTelemetry API and SDK (an OTLP exporter only when asked for), the
domain's ports and the server's ConfigError. Spans are made only when
OTEL_TRACES_EXPORTER asks for an exporter; otherwise every hook is a shared no-op object.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager

from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from imageloc.server.config import ConfigError
from imageloc.server.domain.ports import UnobservedWork, WorkAttempts, WorkObserver

#: The gRPC service every server span is of (rpc.service).
RPC_SERVICE = "imageloc.v1.ImageService"
#: service.name when neither OTEL_SERVICE_NAME nor OTEL_RESOURCE_ATTRIBUTES names one.
DEFAULT_SERVICE_NAME = "imageloc"
#: What OTEL_TRACES_EXPORTER may name; "none" (or nothing) turns tracing off.
EXPORTERS = ("otlp", "console", "none")
#: What OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL may name; the first is the spec's default.
OTLP_PROTOCOLS = ("http/protobuf", "grpc")

#: Call metadata as grpc gives it: lowercase keys, str values (bytes for -bin keys).
Metadata = Sequence[tuple[str, str | bytes]]

_NOTHING: AbstractContextManager[None] = contextlib.nullcontext()
_PROPAGATOR = TraceContextTextMapPropagator()


class _MetadataGetter(Getter[Metadata]):
    """Reads the W3C trace context out of gRPC call metadata."""

    def get(self, carrier: Metadata, key: str) -> list[str] | None:
        found = [_text(value) for name, value in carrier if name == key]
        return found or None

    def keys(self, carrier: Metadata) -> list[str]:
        return [name for name, _ in carrier]


_METADATA = _MetadataGetter()


class Tracing:
    """One server's tracing: off (every hook a no-op) unless made with a TracerProvider.

    The provider is this object's own, never the global one, so that servers in one
    process keep their spans apart.
    """

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self._provider = provider
        self._tracer: Tracer | None = None if provider is None else provider.get_tracer(__name__)

    @property
    def enabled(self) -> bool:
        """Whether spans are made at all."""
        return self._tracer is not None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Tracing:
        """Tracing as the OTEL_* variables ask: on only when OTEL_TRACES_EXPORTER names
        otlp or console (and OTEL_SDK_DISABLED is not true).

        ConfigError (a ValueError), naming the variable, for an exporter or OTLP protocol
        not known: the CLI prints it as `error: ...`. The
        OTLP exporters read their endpoint, headers and timeout from the process
        environment themselves (OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT...).
        """
        environ = os.environ if environ is None else environ
        if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return cls()
        exporters = [_exporter(name, environ) for name in _exporters_asked(environ)]
        if not exporters:
            return cls()
        provider = TracerProvider(resource=_resource(environ))
        for exporter in exporters:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider)

    @classmethod
    def with_exporter(cls, exporter: SpanExporter) -> Tracing:
        """Tracing that hands every span to exporter as it ends (tests: InMemorySpanExporter)."""
        provider = TracerProvider(
            resource=Resource.create({SERVICE_NAME: DEFAULT_SERVICE_NAME}), shutdown_on_exit=False
        )
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        return cls(provider)

    def server_span(self, rpc: str, metadata: Metadata) -> AbstractContextManager[None]:
        """The span of one call of rpc, the child of the caller's traceparent in metadata,
        current in the block (which must not leave its thread or greenlet)."""
        if self._tracer is None:
            return _NOTHING
        return self._server_span(self._tracer, rpc, metadata)

    @contextlib.contextmanager
    def _server_span(self, tracer: Tracer, rpc: str, metadata: Metadata) -> Iterator[None]:
        parent = _PROPAGATOR.extract(metadata, getter=_METADATA)
        with tracer.start_as_current_span(
            f"{RPC_SERVICE}/{rpc}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": RPC_SERVICE, "rpc.method": rpc},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield
            except BaseException as error:
                _refused(span, error)
                raise
            span.set_attribute("rpc.grpc.status_code", 0)

    def work_observer(self, *, on_retry: Callable[[], None] = lambda: None) -> WorkObserver:
        """The use cases' WorkObserver: a child span per unit of work, when tracing is on;
        on_retry is told of every retry either way (the retries metric)."""
        if self._tracer is None:
            return UnobservedWork(on_retry)
        return _WorkSpans(self._tracer, on_retry)

    def shutdown(self) -> None:
        """Export what is pending, then stop."""
        if self._provider is not None:
            self._provider.shutdown()


def current_trace_id() -> str:
    """The current span's trace id as 32 hex digits, or "" without a valid span."""
    context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid else ""


class _Attempts:
    """One unit of work's retries, counted for its span."""

    def __init__(self, on_retry: Callable[[], None]) -> None:
        self._on_retry = on_retry
        self.retries = 0

    def retried(self) -> None:
        self.retries += 1
        self._on_retry()


class _WorkSpans:
    """A WorkObserver making a span `unit_of_work <use case>` per unit of work."""

    def __init__(self, tracer: Tracer, on_retry: Callable[[], None]) -> None:
        self._tracer = tracer
        self._on_retry = on_retry

    @contextlib.contextmanager
    def unit_of_work(
        self, name: str, *, writes: bool, image_id: str = ""
    ) -> Iterator[WorkAttempts]:
        attributes: dict[str, str | bool] = {"imageloc.writes": writes}
        if image_id:
            attributes["imageloc.image_id"] = image_id
        attempts = _Attempts(self._on_retry)
        with self._tracer.start_as_current_span(
            f"unit_of_work {name}",
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield attempts
            except BaseException as error:
                _failed(span, error)
                raise
            finally:
                span.set_attribute("imageloc.retries", attempts.retries)


def _refused(span: Span, error: BaseException) -> None:
    """Mark span as ended by error: a refusal (an exception with a google.rpc `status` and
    its ErrorInfo `reason`) by its code and reason, anything else by its type."""
    status = getattr(error, "status", None)
    code = getattr(status, "code", None)
    if not isinstance(code, int):
        _failed(span, error)
        return
    span.set_attribute("rpc.grpc.status_code", code)
    reason = getattr(error, "reason", "")
    if isinstance(reason, str) and reason:
        span.set_attribute("imageloc.reason", reason)
    span.set_status(Status(StatusCode.ERROR, str(getattr(status, "message", ""))))


def _failed(span: Span, error: BaseException) -> None:
    """Mark span as ended by error: its type, and its domain reason when it has one."""
    kind = type(error)
    span.set_attribute("error.type", f"{kind.__module__}.{kind.__qualname__}")
    reason = getattr(error, "reason", None)
    if isinstance(reason, str) and reason:
        span.set_attribute("imageloc.reason", reason)
    span.set_status(Status(StatusCode.ERROR, kind.__name__))


def _exporters_asked(environ: Mapping[str, str]) -> list[str]:
    """The exporters OTEL_TRACES_EXPORTER names (a comma-separated list), once each."""
    names = [
        name.strip().lower()
        for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",")
        if name.strip()
    ]
    for name in names:
        if name not in EXPORTERS:
            raise ConfigError(
                f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (otlp, console or none)"
            )
    if "none" in names:
        return []
    return list(dict.fromkeys(names))


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter:
    """The exporter `name` (otlp or console), over the OTLP protocol environ asks for."""
    if name == "console":
        return ConsoleSpanExporter()
    variable = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
    if not environ.get(variable, "").strip():
        variable = "OTEL_EXPORTER_OTLP_PROTOCOL"
    protocol = environ.get(variable, "").strip() or OTLP_PROTOCOLS[0]
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        return HttpExporter()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter()
    raise ConfigError(f"{variable}: unsupported protocol {protocol!r} (http/protobuf or grpc)")


def _resource(environ: Mapping[str, str]) -> Resource:
    """The resource every span is of: service.name from OTEL_SERVICE_NAME, else from
    OTEL_RESOURCE_ATTRIBUTES, else imageloc."""
    named = environ.get("OTEL_SERVICE_NAME", "").strip()
    resource = Resource.create({SERVICE_NAME: named} if named else {})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return resource


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value
