"""Traces: a server span per RPC continuing the client's trace, a unit-of-work span under it,
refusals marked as errors, and tracing off (no spans) unless OTEL_* asks for an exporter."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator, Mapping
from typing import ClassVar

import pytest
from opentelemetry.exporter.otlp.proto.grpc import trace_exporter as grpc_exporter
from opentelemetry.exporter.otlp.proto.http import trace_exporter as http_exporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, Tracer

from imageloc.client import ImageClient, ImagelocError
from imageloc.server.domain.model import Image, ImageStatus, Location
from imageloc.server.domain.policy import LocationPolicy
from imageloc.server.observability.tracing import Tracing, current_trace_id
from imageloc.server.service import ImageService

from conftest import ServerFactory
from fakes import InMemoryImages, InMemoryStore, InMemoryUnitOfWork

SERVICE = "imageloc.v1.ImageService"
NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


class LosingImages(InMemoryImages):
    """Saves that lose a race while the store has losses left."""

    def __init__(self, rows: dict[str, Image], losses: list[None]) -> None:
        super().__init__(rows)
        self.losses = losses

    def save(self, old: Image, new: Image) -> bool:
        if self.losses:
            self.losses.pop()
            return False
        return super().save(old, new)


class LosingStore(InMemoryStore):
    """A store holding one active image, whose first write loses a race."""

    def __init__(self) -> None:
        super().__init__()
        self.losses: list[None] = [None]
        self.image = Image(
            id=str(uuid.uuid4()),
            name="cirros",
            status=ImageStatus.ACTIVE,
            created_at=NOW,
            updated_at=NOW,
            locations=(Location("https://s/a.img"), Location("https://s/b.img")),
        )
        self.committed[self.image.id] = self.image

    def unit_of_work(
        self, *, for_write: bool, deadline: float | None = None, one_statement: bool = False
    ) -> InMemoryUnitOfWork:
        store = self

        class Losing(InMemoryUnitOfWork):
            def __enter__(self) -> Losing:
                super().__enter__()
                self.images = LosingImages(dict(store.committed), store.losses)
                return self

        return Losing(self)


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    """The spans of the servers this test starts (their Tracing exports to it)."""
    exporter = InMemorySpanExporter()
    made = Tracing.with_exporter(exporter)
    # build_server asks Tracing.from_environment (the class app.py imports is this one).
    monkeypatch.setattr(Tracing, "from_environment", lambda environ=None: made)
    return exporter


@pytest.fixture
def client(spans: InMemorySpanExporter, server_factory: ServerFactory) -> Iterator[ImageClient]:
    with ImageClient(server_factory(), timeout=5.0) as image_client:
        yield image_client


@pytest.fixture
def caller() -> Tracer:
    """The tracer of the application that calls the client (its own SDK, not the global one)."""
    return TracerProvider(shutdown_on_exit=False).get_tracer("caller")


def named(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in spans.get_finished_spans() if span.name == name]


def only(spans: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = named(spans, name)
    assert len(found) == 1, [span.name for span in spans.get_finished_spans()]
    return found[0]


def test_a_server_span_continues_the_callers_trace_with_a_unit_of_work_under_it(
    client: ImageClient, spans: InMemorySpanExporter, caller: Tracer
) -> None:
    with caller.start_as_current_span("provision") as outer:
        image = client.create_image("cirros")
    called = outer.get_span_context()

    server = only(spans, f"{SERVICE}/CreateImage")
    assert server.kind is SpanKind.SERVER
    assert server.context is not None
    assert server.parent is not None
    assert server.context.trace_id == called.trace_id
    assert server.parent.span_id == called.span_id
    assert server.parent.is_remote
    assert dict(server.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": SERVICE,
        "rpc.method": "CreateImage",
        "rpc.grpc.status_code": 0,
    }
    assert server.status.status_code is StatusCode.UNSET

    work = only(spans, "unit_of_work create_image")
    assert work.kind is SpanKind.INTERNAL
    assert work.context is not None
    assert work.parent is not None
    assert work.context.trace_id == called.trace_id
    assert work.parent.span_id == server.context.span_id
    assert dict(work.attributes or {}) == {
        "imageloc.writes": True,
        "imageloc.image_id": image.id,
        "imageloc.retries": 0,
    }


def test_a_read_and_a_write_each_have_their_own_server_and_unit_of_work_spans(
    client: ImageClient, spans: InMemorySpanExporter, caller: Tracer
) -> None:
    image = client.create_image("cirros")
    with caller.start_as_current_span("inspect") as outer:
        client.get_image(image.id)
        client.update_image(image.id, name="renamed")
    trace_id = outer.get_span_context().trace_id

    for rpc, use_case, writes in (
        ("GetImage", "get_image", False),
        ("UpdateImage", "update_image", True),
    ):
        server = only(spans, f"{SERVICE}/{rpc}")
        work = only(spans, f"unit_of_work {use_case}")
        assert server.context is not None
        assert server.parent is not None
        assert server.context.trace_id == trace_id
        assert server.parent.span_id == outer.get_span_context().span_id
        assert work.parent is not None
        assert work.parent.span_id == server.context.span_id
        assert work.attributes is not None
        assert work.attributes["imageloc.writes"] is writes
        assert work.attributes["imageloc.image_id"] == image.id


def test_a_refused_call_ends_its_span_in_error_with_its_code_and_reason(
    client: ImageClient, spans: InMemorySpanExporter, caller: Tracer
) -> None:
    missing = str(uuid.uuid4())
    with caller.start_as_current_span("look"), pytest.raises(ImagelocError):
        client.get_image(missing)

    server = only(spans, f"{SERVICE}/GetImage")
    assert server.status.status_code is StatusCode.ERROR
    assert server.attributes is not None
    assert server.attributes["rpc.grpc.status_code"] == 5  # NOT_FOUND
    assert server.attributes["imageloc.reason"] == "IMAGE_NOT_FOUND"
    work = only(spans, "unit_of_work get_image")
    assert work.status.status_code is StatusCode.ERROR
    assert work.attributes is not None
    assert work.attributes["imageloc.reason"] == "IMAGE_NOT_FOUND"


def test_a_watch_has_a_server_span_for_its_start_in_the_callers_trace(
    client: ImageClient, spans: InMemorySpanExporter, caller: Tracer
) -> None:
    image = client.create_image("cirros")
    with caller.start_as_current_span("follow") as outer, client.watch_images([image.id]):
        pass
    started = only(spans, f"{SERVICE}/WatchImages")
    assert started.kind is SpanKind.SERVER
    assert started.context is not None
    assert started.parent is not None
    assert started.context.trace_id == outer.get_span_context().trace_id
    assert started.parent.span_id == outer.get_span_context().span_id
    assert dict(started.attributes or {})["rpc.grpc.status_code"] == 0


def test_a_call_made_outside_any_span_starts_a_trace_of_its_own(
    client: ImageClient, spans: InMemorySpanExporter
) -> None:
    assert client._metadata() is None  # nothing to propagate
    client.create_image("cirros")
    server = only(spans, f"{SERVICE}/CreateImage")
    assert server.parent is None


def test_the_client_sends_the_w3c_traceparent_of_the_current_span(caller: Tracer) -> None:
    with ImageClient("127.0.0.1:1") as image_client, caller.start_as_current_span("s") as span:
        metadata = dict(image_client._metadata() or ())
    context = span.get_span_context()
    version, trace_id, parent_id, flags = metadata["traceparent"].split("-")
    assert (version, trace_id, parent_id) == (
        "00",
        f"{context.trace_id:032x}",
        f"{context.span_id:016x}",
    )
    assert int(flags, 16) & 1  # sampled


def test_current_trace_id_is_the_current_spans_or_empty(caller: Tracer) -> None:
    assert current_trace_id() == ""
    with caller.start_as_current_span("s") as span:
        assert current_trace_id() == f"{span.get_span_context().trace_id:032x}"


def test_a_unit_of_work_that_loses_a_race_counts_its_retry() -> None:
    exporter = InMemorySpanExporter()
    retries: list[None] = []
    observer = Tracing.with_exporter(exporter).work_observer(on_retry=lambda: retries.append(None))
    store = LosingStore()
    image = store.image
    service = ImageService(store.unit_of_work, policy=LocationPolicy(), observer=observer)
    service.for_call(seconds_left=5.0).remove_location(image.id, index=0)

    work = only(exporter, "unit_of_work remove_location")
    assert work.attributes is not None
    assert work.attributes["imageloc.retries"] == 1
    assert retries == [None]


def test_without_tracing_retries_still_reach_the_metric() -> None:
    retries: list[None] = []
    observer = Tracing().work_observer(on_retry=lambda: retries.append(None))
    store = LosingStore()
    image = store.image
    ImageService(store.unit_of_work, policy=LocationPolicy(), observer=observer).remove_location(
        image.id, index=0
    )
    assert retries == [None]


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_TRACES_EXPORTER": ""},
        {"OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_TRACES_EXPORTER": "otlp,none"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"},
    ],
)
def test_tracing_is_off_unless_an_exporter_is_asked_for(environ: Mapping[str, str]) -> None:
    tracing = Tracing.from_environment(environ)
    assert not tracing.enabled
    with tracing.server_span(
        "GetImage", [("traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01")]
    ):
        assert current_trace_id() == ""
    observer = tracing.work_observer()
    with observer.unit_of_work("get_image", writes=False) as work:
        work.retried()
    # Near-zero cost: the hooks hand out shared objects, nothing is made per call.
    assert tracing.server_span("GetImage", ()) is tracing.server_span("ListImages", ())
    assert observer.unit_of_work("a", writes=True) is observer.unit_of_work("b", writes=False)
    tracing.shutdown()


class Recorded(SpanExporter):
    """An exporter standing in for an OTLP one: says which protocol was picked."""

    made: ClassVar[list[str]] = []

    def __init__(self, protocol: str) -> None:
        self.made.append(protocol)

    def export(self, spans: object) -> SpanExportResult:
        return SpanExportResult.SUCCESS


@pytest.mark.parametrize(
    ("environ", "protocol"),
    [
        ({"OTEL_TRACES_EXPORTER": "otlp"}, "http/protobuf"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "grpc"),
        (
            {"OTEL_TRACES_EXPORTER": " OTLP ", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            "http/protobuf",
        ),
        (
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
            },
            "grpc",
        ),
    ],
)
def test_the_otlp_exporter_follows_the_protocol_variables(
    monkeypatch: pytest.MonkeyPatch, environ: Mapping[str, str], protocol: str
) -> None:
    Recorded.made = []
    monkeypatch.setattr(http_exporter, "OTLPSpanExporter", lambda: Recorded("http/protobuf"))
    monkeypatch.setattr(grpc_exporter, "OTLPSpanExporter", lambda: Recorded("grpc"))
    tracing = Tracing.from_environment(environ)
    assert tracing.enabled
    assert Recorded.made == [protocol]
    tracing.shutdown()


def test_the_real_otlp_exporters_are_made_for_each_protocol() -> None:
    for protocol in ("http/protobuf", "grpc"):
        environ = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}
        tracing = Tracing.from_environment(environ)
        assert tracing.enabled
        tracing.shutdown()


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_TRACES_EXPORTER": "otlp,jaeger"}, "OTEL_TRACES_EXPORTER"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "udp"},
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ),
    ],
)
def test_an_unknown_exporter_or_protocol_is_refused_naming_its_variable(
    environ: Mapping[str, str], variable: str
) -> None:
    with pytest.raises(ValueError, match=f"^{variable}: ") as caught:
        Tracing.from_environment(environ)
    assert "\n" not in str(caught.value)


def test_the_service_name_comes_from_otel_service_name(monkeypatch: pytest.MonkeyPatch) -> None:
    for environ, name in (
        ({"OTEL_TRACES_EXPORTER": "otlp"}, "imageloc"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SERVICE_NAME": "images-eu"}, "images-eu"),
    ):
        exporter = InMemorySpanExporter()
        monkeypatch.setattr(http_exporter, "OTLPSpanExporter", lambda made=exporter: made)
        tracing = Tracing.from_environment(environ)
        with tracing.server_span("GetImage", ()):
            pass
        tracing.shutdown()  # exports the batch
        assert exporter.get_finished_spans()[-1].resource.attributes["service.name"] == name
