"""The client's watch and wait: resumes without gaps or repeats, refusals, wait verdicts, the CLI.

Against a scripted ImageService on an ephemeral port: each WatchImages stream plays the next
script (responses, pauses, then an abort with a rich status, a clean end, or holding the
stream open until the client cancels it), and GetImage answers from a table.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from imageloc.client import ImageClient, ImagelocError, parse_status
from imageloc.client.channel import service_config
from imageloc.client.cli import main
from imageloc.client.errors import (
    ImageDeletedError,
    StatusUnreachableError,
    WaitTimeoutError,
)
from imageloc.client.watch import TRANSITIONS, reachable_statuses
from imageloc.server.domain.status import TRANSITIONS as SERVER_TRANSITIONS
from imageloc.v1 import image_service_pb2 as pb
from imageloc.v1 import image_service_pb2_grpc as pb_grpc

IMAGE_ID = str(uuid.uuid4())
CREATED, UPDATED, DELETED = (
    pb.IMAGE_EVENT_TYPE_CREATED,
    pb.IMAGE_EVENT_TYPE_UPDATED,
    pb.IMAGE_EVENT_TYPE_DELETED,
)
#: A script step: the stream ends cleanly, with no status.
END = "end"
#: A script step: no response for this many seconds.
Pause = float
Step = pb.WatchImagesResponse | status_pb2.Status | str | Pause


def image(status: str, revision: int = 0, image_id: str = IMAGE_ID) -> pb.Image:
    return pb.Image(id=image_id, name="cirros", status=parse_status(status), revision=revision)


def event(revision: int, status: str = "queued", kind: int = UPDATED) -> pb.ImageEvent:
    return pb.ImageEvent(revision=revision, type=kind, image=image(status, revision))  # type: ignore[arg-type]


def events(*changes: pb.ImageEvent, revision: int | None = None) -> pb.WatchImagesResponse:
    """A response with these events, caught up to `revision` (default: the last event's)."""
    caught_up = changes[-1].revision if revision is None else revision
    return pb.WatchImagesResponse(events=changes, revision=caught_up)


def progress(revision: int) -> pb.WatchImagesResponse:
    return pb.WatchImagesResponse(revision=revision)


def refusal(code: int, reason: str, message: str = "refused", **metadata: str) -> status_pb2.Status:
    """A rich status with one ErrorInfo, as imageloc sends."""
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="imageloc", metadata=metadata))
    return status_pb2.Status(code=code, message=message, details=[detail])


UNAVAILABLE = status_pb2.Status(code=code_pb2.UNAVAILABLE, message="server stopping")


class ScriptedImages(pb_grpc.ImageServiceServicer):
    """WatchImages plays scripts[n] on the n-th stream (then `then`, by default holding it
    open); GetImage answers images[id][0], moving on after each call while more follow."""

    def __init__(self) -> None:
        self.scripts: list[list[Step]] = []
        self.then: list[Step] = []
        self.images: dict[str, list[pb.Image]] = {}
        self.requests: list[pb.WatchImagesRequest] = []
        self.authorizations: list[str] = []
        self.get_calls = 0
        #: Set when a stream ends; one that holds open ends only when the client cancels it.
        self.ended = threading.Event()
        self._lock = threading.Lock()

    def WatchImages(  # noqa: N802
        self, request: pb.WatchImagesRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.WatchImagesResponse]:
        ended = threading.Event()
        context.add_callback(ended.set)
        context.add_callback(self.ended.set)
        with self._lock:
            attempt = len(self.requests)
            self.requests.append(request)
            metadata = dict(context.invocation_metadata() or ())
            self.authorizations.append(str(metadata.get("authorization", "")))
        script = self.scripts[attempt] if attempt < len(self.scripts) else self.then
        for step in script:
            if isinstance(step, pb.WatchImagesResponse):
                yield step
            elif isinstance(step, status_pb2.Status):
                context.abort_with_status(rpc_status.to_status(step))
            elif step == END:
                return
            elif isinstance(step, float):
                time.sleep(step)
        ended.wait(10)

    def GetImage(  # noqa: N802
        self, request: pb.GetImageRequest, context: grpc.ServicerContext
    ) -> pb.GetImageResponse:
        with self._lock:
            self.get_calls += 1
            answers = self.images.get(request.image_id, [])
            found = answers.pop(0) if len(answers) > 1 else (answers[0] if answers else None)
        if found is None:
            not_found = refusal(code_pb2.NOT_FOUND, "IMAGE_NOT_FOUND", "no such image")
            context.abort_with_status(rpc_status.to_status(not_found))
        return pb.GetImageResponse(image=found)

    def start_revisions(self) -> list[int]:
        return [request.start_revision for request in self.requests]


@pytest.fixture
def service() -> ScriptedImages:
    return ScriptedImages()  # type: ignore[abstract]  # two RPCs are enough here


@pytest.fixture
def target(service: ScriptedImages) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_ImageServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


@pytest.fixture
def client(target: str) -> Iterator[ImageClient]:
    with ImageClient(target) as image_client:
        yield image_client


def revisions(watch: Iterator[pb.ImageEvent], count: int) -> list[int]:
    return [next(watch).revision for _ in range(count)]


# watch_images: resuming.


def test_watch_resumes_after_unavailable_from_the_last_revision_received(
    service: ScriptedImages, client: ImageClient, caplog: pytest.LogCaptureFixture
) -> None:
    service.scripts = [
        [progress(10), UNAVAILABLE],
        [events(event(11), event(12), revision=15), UNAVAILABLE],
        [events(event(16))],
    ]
    with client.watch_images([IMAGE_ID]) as watch:
        assert watch.revision == 10  # the first response came before watch_images returned
        assert revisions(watch, 3) == [11, 12, 16]
    assert service.start_revisions() == [0, 10, 15]
    assert all(list(request.image_ids) == [IMAGE_ID] for request in service.requests)
    assert "resuming from revision 15" in caplog.text


def test_the_revision_of_a_response_counts_once_all_its_events_are_returned(
    service: ScriptedImages, client: ImageClient
) -> None:
    service.scripts = [[events(event(11), event(12), revision=15)]]
    with client.watch_images(start_revision=10) as watch:
        assert watch.revision == 10
        next(watch)
        assert watch.revision == 11
        next(watch)
        assert watch.revision == 15


def test_a_stream_that_ends_without_a_status_is_resumed(
    service: ScriptedImages, client: ImageClient
) -> None:
    service.scripts = [[progress(7), END], [events(event(8))]]
    with client.watch_images() as watch:
        assert revisions(watch, 1) == [8]
    assert service.start_revisions() == [0, 7]


def test_a_stream_lost_before_its_first_response_is_opened_again_from_the_start(
    service: ScriptedImages, client: ImageClient
) -> None:
    service.scripts = [[UNAVAILABLE], [progress(9), events(event(10))]]
    with client.watch_images() as watch:
        assert revisions(watch, 1) == [10]
    assert service.start_revisions() == [0, 0]


@pytest.mark.parametrize(
    ("delivered", "resumed_from"),
    [([11, 12], 12), ([], 14)],
    ids=["after-events", "before-any"],
)
def test_watcher_too_slow_resumes_from_the_revision_in_its_metadata(
    service: ScriptedImages, client: ImageClient, delivered: list[int], resumed_from: int
) -> None:
    too_slow = refusal(code_pb2.RESOURCE_EXHAUSTED, "WATCHER_TOO_SLOW", revision=str(resumed_from))
    script: list[Step] = [events(*map(event, delivered))] if delivered else []
    service.scripts = [[*script, too_slow], [events(event(20))]]
    with client.watch_images(start_revision=10) as watch:
        assert revisions(watch, len(delivered) + 1) == [*delivered, 20]
    assert service.start_revisions() == [10, resumed_from]


COMPACTED = refusal(
    code_pb2.OUT_OF_RANGE, "REVISION_COMPACTED", "compacted", compactRevision="40", httpStatus="410"
)


@pytest.mark.parametrize(
    ("status", "http_status"),
    [
        (COMPACTED, 410),
        (
            refusal(code_pb2.INVALID_ARGUMENT, "FUTURE_REVISION", revision="3", httpStatus="400"),
            400,
        ),
        (refusal(code_pb2.INVALID_ARGUMENT, "INVALID_REQUEST", httpStatus="400"), 400),
        (refusal(code_pb2.UNAUTHENTICATED, "UNAUTHENTICATED", cause="expired"), None),
    ],
    ids=["compacted", "future", "invalid", "unauthenticated"],
)
def test_other_refusals_end_the_watch_with_their_error_info(
    service: ScriptedImages, client: ImageClient, status: status_pb2.Status, http_status: int | None
) -> None:
    service.scripts = [[status]]
    watch = client.watch_images([IMAGE_ID], start_revision=10)
    with pytest.raises(ImagelocError) as caught:
        next(watch)
    error = caught.value
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    assert (error.code.value[0], error.reason) == (status.code, info.reason)
    assert error.metadata == dict(info.metadata)
    assert error.http_status == http_status
    assert list(watch) == []  # the watch is over, as a generator that raised
    assert len(service.requests) == 1


def test_a_refusal_of_a_watch_from_now_comes_from_watch_images(
    service: ScriptedImages, client: ImageClient
) -> None:
    service.scripts = [[refusal(code_pb2.UNAUTHENTICATED, "UNAUTHENTICATED", cause="missing")]]
    with pytest.raises(ImagelocError) as caught:
        client.watch_images()
    assert caught.value.cause == "missing"


def test_every_stream_carries_a_fresh_token(service: ScriptedImages, target: str) -> None:
    service.scripts = [[progress(3), UNAVAILABLE], [events(event(4))]]
    tokens = iter(["t1", "t2"])
    with (
        ImageClient(target, token_provider=lambda: next(tokens)) as client,
        client.watch_images() as watch,
    ):
        assert revisions(watch, 1) == [4]
    assert service.authorizations == ["Bearer t1", "Bearer t2"]


def test_image_ids_must_be_a_sequence_not_one_id(client: ImageClient) -> None:
    with pytest.raises(TypeError, match="not one id"):
        client.watch_images(IMAGE_ID)


# watch_images: closing, deadlines.


def test_leaving_the_with_block_cancels_the_stream(
    service: ScriptedImages, client: ImageClient
) -> None:
    service.scripts = [[events(event(11))]]
    with client.watch_images(start_revision=10) as watch:
        assert revisions(watch, 1) == [11]
    assert service.ended.wait(2)
    assert list(watch) == []


def test_close_from_another_thread_ends_a_blocked_iteration(
    service: ScriptedImages, client: ImageClient
) -> None:
    service.scripts = [[progress(5)]]
    watch = client.watch_images()
    closer = threading.Timer(0.1, watch.close)
    closer.start()
    started = time.monotonic()
    assert list(watch) == []
    assert time.monotonic() - started < 2
    assert service.ended.wait(2)
    closer.join()


def test_the_shipped_service_config_gives_watch_images_no_deadline_and_no_retries() -> None:
    entries = [
        entry
        for entry in service_config()["methodConfig"]
        if {"service": "imageloc.v1.ImageService", "method": "WatchImages"} in entry["name"]
    ]
    assert len(entries) == 1
    assert "timeout" not in entries[0]
    assert "retryPolicy" not in entries[0]


@pytest.mark.parametrize("own_entry", [True, False], ids=["shipped", "without-watch-entry"])
def test_the_service_wide_deadline_does_not_cut_a_watch(
    service: ScriptedImages, target: str, *, own_entry: bool
) -> None:
    """With the service-wide timeout shortened to 0.2 s, a stream quiet for 0.5 s lives on."""
    config = service_config()
    for entry in config["methodConfig"]:
        if {"service": "imageloc.v1.ImageService"} in entry["name"]:
            entry["timeout"] = "0.2s"
    if not own_entry:  # the control: then the service-wide deadline applies, and cuts it
        config["methodConfig"] = [entry for entry in config["methodConfig"] if "timeout" in entry]
    service.scripts = [[events(event(11)), 0.5, events(event(12))]]
    options = [("grpc.service_config", json.dumps(config))]
    with (
        grpc.insecure_channel(target, options=options) as channel,
        ImageClient(channel=channel) as client,
        client.watch_images(start_revision=10) as watch,
    ):
        if own_entry:
            assert revisions(watch, 2) == [11, 12]
        else:
            with pytest.raises(ImagelocError) as caught:
                revisions(watch, 2)
            assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(service.requests) <= 1  # never resumed: 1 when it got there before its deadline


# wait_for_status.


def test_wait_returns_at_once_when_the_image_is_in_a_status_waited_for(
    service: ScriptedImages, client: ImageClient
) -> None:
    service.images[IMAGE_ID] = [image("active", 5)]
    assert client.wait_for_status(IMAGE_ID, "active", 2).status == pb.IMAGE_STATUS_ACTIVE
    assert service.requests == []


@pytest.mark.parametrize(
    "statuses",
    ["active", pb.IMAGE_STATUS_ACTIVE, ["active"], ("deactivated", pb.IMAGE_STATUS_ACTIVE)],
    ids=["word", "enum", "list", "mixed"],
)
def test_wait_watches_from_the_images_revision_until_an_event_brings_it(
    service: ScriptedImages, client: ImageClient, statuses: Any
) -> None:
    service.images[IMAGE_ID] = [image("queued", 5)]
    service.scripts = [[events(event(6, "saving")), events(event(7, "active"))]]
    reached = client.wait_for_status(IMAGE_ID, statuses, 2)
    assert (reached.status, reached.revision) == (pb.IMAGE_STATUS_ACTIVE, 7)
    (request,) = service.requests
    assert (list(request.image_ids), request.start_revision) == ([IMAGE_ID], 5)


def test_wait_resumes_its_watch_after_unavailable(
    service: ScriptedImages, client: ImageClient
) -> None:
    service.images[IMAGE_ID] = [image("queued", 5)]
    service.scripts = [[events(event(6, "saving")), UNAVAILABLE], [events(event(7, "active"))]]
    assert client.wait_for_status(IMAGE_ID, "active", 2).revision == 7
    assert service.start_revisions() == [5, 6]


def test_an_image_without_a_revision_is_watched_from_now_then_looked_at_again(
    service: ScriptedImages, client: ImageClient
) -> None:
    """Revision 0 (older than the change log) would mean "from now": watch, then GetImage."""
    service.images[IMAGE_ID] = [image("queued"), image("saving", 30)]
    service.scripts = [[progress(30), events(event(31, "active"))]]
    assert client.wait_for_status(IMAGE_ID, "active", 2).revision == 31
    assert service.start_revisions() == [0]
    assert service.get_calls == 2


def test_a_compacted_revision_makes_the_wait_watch_from_now_and_look_again(
    service: ScriptedImages, client: ImageClient
) -> None:
    service.images[IMAGE_ID] = [image("queued", 5), image("saving", 39)]
    compacted = refusal(code_pb2.OUT_OF_RANGE, "REVISION_COMPACTED", compactRevision="20")
    service.scripts = [[compacted], [progress(40), events(event(41, "active"))]]
    assert client.wait_for_status(IMAGE_ID, "active", 2).revision == 41
    assert service.start_revisions() == [5, 0]
    assert service.get_calls == 2


@pytest.mark.parametrize("stream", ["held-open", "unavailable"])
def test_wait_raises_wait_timeout_error_when_the_timeout_passes(
    service: ScriptedImages, client: ImageClient, stream: str
) -> None:
    service.images[IMAGE_ID] = [image("queued", 5)]
    service.then = [progress(5)] if stream == "held-open" else [UNAVAILABLE]
    started = time.monotonic()
    with pytest.raises(WaitTimeoutError) as caught:
        client.wait_for_status(IMAGE_ID, "active", 0.3)
    assert 0.25 < time.monotonic() - started < 1.5
    error = caught.value
    assert isinstance(error, TimeoutError)
    assert (error.code, error.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "WAIT_TIMEOUT")
    assert error.metadata == {"imageId": IMAGE_ID, "statuses": "active", "status": "queued"}
    assert error.image is not None
    assert error.image.status == pb.IMAGE_STATUS_QUEUED


@pytest.mark.parametrize("status", ["deleted", "pending_delete"])
def test_wait_raises_image_deleted_error_on_a_deletion(
    service: ScriptedImages, client: ImageClient, status: str
) -> None:
    service.images[IMAGE_ID] = [image("active", 5)]
    service.scripts = [[events(event(6, status, kind=DELETED))]]
    with pytest.raises(ImageDeletedError) as caught:
        client.wait_for_status(IMAGE_ID, "deactivated", 2)
    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.NOT_FOUND, "IMAGE_DELETED")
    assert caught.value.metadata["status"] == status


def test_a_wait_for_deleted_ends_with_the_deletion(
    service: ScriptedImages, client: ImageClient
) -> None:
    service.images[IMAGE_ID] = [image("active", 5)]
    service.scripts = [[events(event(6, "deleted", kind=DELETED))]]
    assert client.wait_for_status(IMAGE_ID, "deleted", 2).status == pb.IMAGE_STATUS_DELETED


def test_wait_raises_status_unreachable_error_when_the_image_is_killed(
    service: ScriptedImages, client: ImageClient
) -> None:
    service.images[IMAGE_ID] = [image("saving", 5)]
    service.scripts = [[events(event(6, "killed"))]]
    with pytest.raises(StatusUnreachableError) as caught:
        client.wait_for_status(IMAGE_ID, "active", 2)
    error = caught.value
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "STATUS_UNREACHABLE")
    assert str(error).endswith(f"image {IMAGE_ID} is killed and can no longer become active")


def test_an_image_that_cannot_reach_the_status_is_refused_without_a_watch(
    service: ScriptedImages, client: ImageClient
) -> None:
    service.images[IMAGE_ID] = [image("active", 5)]
    with pytest.raises(StatusUnreachableError):
        client.wait_for_status(IMAGE_ID, ["queued", "saving"], 2)
    assert service.requests == []


def test_a_missing_image_is_the_servers_not_found(client: ImageClient) -> None:
    with pytest.raises(ImagelocError) as caught:
        client.wait_for_status(IMAGE_ID, "active", 2)
    assert (caught.value.code, caught.value.reason) == (
        grpc.StatusCode.NOT_FOUND,
        "IMAGE_NOT_FOUND",
    )


@pytest.mark.parametrize("statuses", [[], "ready"])
def test_wait_needs_known_statuses(client: ImageClient, statuses: Any) -> None:
    with pytest.raises(ValueError, match="status"):
        client.wait_for_status(IMAGE_ID, statuses, 2)


# The status machine the wait reasons with.


def test_the_clients_transition_table_is_the_servers() -> None:
    server = {
        str(source): {str(target) for target in targets}
        for source, targets in SERVER_TRANSITIONS.items()
    }
    assert {source: set(targets) for source, targets in TRANSITIONS.items()} == server


@pytest.mark.parametrize(
    ("status", "reachable"),
    [
        ("killed", {"deleted"}),
        ("deleted", set()),
        ("active", {"active", "deactivated", "pending_delete", "deleted"}),
        ("deactivated", {"active", "deactivated", "pending_delete", "deleted"}),
        ("uploading", set(TRANSITIONS)),
        ("unspecified", set(TRANSITIONS)),
    ],
)
def test_reachable_statuses_follow_the_transitions(status: str, reachable: set[str]) -> None:
    assert reachable_statuses(status) == {parse_status(word) for word in reachable}


# The CLI.


class _Interrupted:
    """A watch that gives its events and then is interrupted, as by Ctrl-C."""

    def __init__(self, *given: pb.ImageEvent) -> None:
        self._events = iter(given)

    def __enter__(self) -> _Interrupted:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __iter__(self) -> _Interrupted:
        return self

    def __next__(self) -> pb.ImageEvent:
        for given in self._events:
            return given
        raise KeyboardInterrupt


def _cli(capsys: pytest.CaptureFixture[str], target: str, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(["--server", target, *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_cli_watch_prints_one_line_per_event_and_stops_after_count(
    service: ScriptedImages, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    service.scripts = [[events(event(11, kind=CREATED), event(12, "saving")), events(event(13))]]
    status, out, err = _cli(
        capsys, target, "image", "watch", IMAGE_ID, "--from-revision", "10", "--count", "2"
    )
    assert status == 0, err
    assert [line.split() for line in out.splitlines()] == [
        ["11", "created", IMAGE_ID, "queued", "cirros"],
        ["12", "updated", IMAGE_ID, "saving", "cirros"],
    ]
    (request,) = service.requests
    assert (list(request.image_ids), request.start_revision) == ([IMAGE_ID], 10)


def test_cli_watch_json_prints_one_event_object_per_line(
    service: ScriptedImages, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    created, deleted = event(11, kind=CREATED), event(12, "deleted", DELETED)
    service.scripts = [[progress(10), events(created, deleted)]]
    status, out, err = _cli(capsys, target, "image", "watch", "--json", "--count", "2")
    assert status == 0, err
    first, second = (json.loads(line) for line in out.splitlines())
    assert (first["revision"], first["type"]) == ("11", "IMAGE_EVENT_TYPE_CREATED")
    assert first["image"]["id"] == IMAGE_ID
    assert second["type"] == "IMAGE_EVENT_TYPE_DELETED"
    assert second["image"]["status"] == "IMAGE_STATUS_DELETED"
    assert list(service.requests[0].image_ids) == []


def test_cli_watch_ends_quietly_with_0_on_ctrl_c(
    target: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ImageClient, "watch_images", lambda *_, **__: _Interrupted(event(11)))
    status, out, err = _cli(capsys, target, "image", "watch")
    assert (status, len(out.splitlines()), err) == (0, 1, "")


def test_cli_watch_prints_a_refusal_and_exits_1(
    service: ScriptedImages, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    service.scripts = [[COMPACTED]]
    status, _, err = _cli(capsys, target, "image", "watch", "--from-revision", "3")
    assert status == 1
    assert err.splitlines()[0] == "error: OUT_OF_RANGE REVISION_COMPACTED (HTTP 410): compacted"
    assert "  compactRevision: 40" in err.splitlines()


def test_cli_wait_prints_the_image_and_exits_0(
    service: ScriptedImages, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    service.images[IMAGE_ID] = [image("queued", 5), image("killed", 6)]
    service.scripts = [[events(event(6, "killed"))]]
    status, out, err = _cli(
        capsys, target, "image", "wait", IMAGE_ID, "--status", "active,deactivated",
        "--status", "killed", "--timeout", "2",
    )  # fmt: skip
    assert status == 0, err
    assert "status: killed" in out.splitlines()
    status, out, _ = _cli(
        capsys, target, "--json", "image", "wait", IMAGE_ID, "--status", "killed", "--timeout", "2"
    )
    assert (status, json.loads(out)["status"]) == (0, "IMAGE_STATUS_KILLED")


@pytest.mark.parametrize(
    ("start", "script", "reason"),
    [
        ("queued", [], "DEADLINE_EXCEEDED WAIT_TIMEOUT: "),
        ("saving", [events(event(6, "killed"))], "FAILED_PRECONDITION STATUS_UNREACHABLE: "),
        ("queued", [events(event(6, "deleted", DELETED))], "NOT_FOUND IMAGE_DELETED: "),
        (None, [], "NOT_FOUND IMAGE_NOT_FOUND"),
    ],
    ids=["timeout", "killed", "deleted", "missing"],
)
def test_cli_wait_exits_1_with_the_reason(
    service: ScriptedImages,
    target: str,
    capsys: pytest.CaptureFixture[str],
    *,
    start: str | None,
    script: list[Step],
    reason: str,
) -> None:
    if start is not None:
        service.images[IMAGE_ID] = [image(start, 5)]
    service.scripts = [script]
    status, out, err = _cli(
        capsys, target, "image", "wait", IMAGE_ID, "--status", "active", "--timeout", "0.3"
    )
    assert (status, out) == (1, "")
    assert err.startswith(f"error: {reason}")


@pytest.mark.parametrize(
    "args",
    [["image", "wait", IMAGE_ID], ["image", "wait", IMAGE_ID, "--status", "ready"],
     ["image", "watch", "--count", "-1"], ["image", "watch", "--from-revision", "x"]],
    ids=["no-status", "unknown-status", "negative-count", "bad-revision"],
)  # fmt: skip
def test_cli_watch_and_wait_bad_usage_exits_2(
    target: str, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    assert _cli(capsys, target, *args)[0] == 2


@pytest.mark.parametrize("verb", ["watch", "wait"])
def test_cli_watch_and_wait_help_prints_and_exits_0(
    capsys: pytest.CaptureFixture[str], verb: str
) -> None:
    assert main(["image", verb, "--help"]) == 0
    assert capsys.readouterr().out.startswith(f"usage: imageloc image {verb}")
