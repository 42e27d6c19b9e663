"""WatchImages through gRPC: every committed change once, in revision order, on any replica."""

from __future__ import annotations

import datetime
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from imageloc.server.app import build_server
from imageloc.server.config import Settings
from imageloc.server.store import SqlStore
from imageloc.v1 import image_service_pb2 as pb
from imageloc.v1 import image_service_pb2_grpc as pb_grpc

from conftest import ServerFactory
from support import POSTGRESQL_ONLY, location, make_image, migrate, refusal_from, refusal_of

URL_A = "https://store.example/a.img"
URL_B = "rbd://fsid/pool/b/snap"


@pytest.fixture
def channels() -> Iterator[list[grpc.Channel]]:
    opened: list[grpc.Channel] = []
    yield opened
    for channel in opened:
        channel.close()


def open_watch(stub: pb_grpc.ImageServiceStub, timeout: float | None = None, **request: Any) -> Any:
    """A WatchImages call: an iterator of responses with cancel() (typed loosely: the
    stubs' CallIterator declares neither)."""
    return stub.WatchImages(pb.WatchImagesRequest(**request), timeout=timeout)


def stub_of(target: str, channels: list[grpc.Channel]) -> pb_grpc.ImageServiceStub:
    channel = grpc.insecure_channel(target)
    channels.append(channel)
    return pb_grpc.ImageServiceStub(channel)


class Watcher:
    """A WatchImages stream read on a thread of its own, its responses kept in order."""

    def __init__(self, stub: pb_grpc.ImageServiceStub, **request: Any) -> None:
        self.call = open_watch(stub, **request)
        self.responses: list[pb.WatchImagesResponse] = []
        self.error: grpc.RpcError | None = None
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for response in self.call:
                with self._changed:
                    self.responses.append(response)
                    self._changed.notify_all()
        except grpc.RpcError as error:
            with self._changed:
                self.error = error
                self._changed.notify_all()

    @property
    def events(self) -> list[pb.ImageEvent]:
        with self._changed:
            return [event for response in self.responses for event in response.events]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[pb.ImageEvent]:
        """The first count events, once they have come."""
        self._wait_until(lambda: len(self.events) >= count, timeout, f"{count} events")
        return self.events[:count]

    def wait_responses(self, count: int, timeout: float = 10.0) -> list[pb.WatchImagesResponse]:
        """The responses so far, once there are count of them."""
        self._wait_until(lambda: len(self.responses) >= count, timeout, f"{count} responses")
        with self._changed:
            return list(self.responses)

    def _wait_until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done() and self.error is None:
                left = deadline - time.monotonic()
                assert left > 0, f"no {what} after {timeout} s: {len(self.events)} events"
                self._changed.wait(left)

    def wait_error(self, timeout: float = 10.0) -> grpc.RpcError:
        self._thread.join(timeout)
        assert self.error is not None, "the stream did not end"
        return self.error

    def close(self) -> None:
        self.call.cancel()
        self._thread.join(5)


@pytest.fixture
def watchers() -> Iterator[list[Watcher]]:
    opened: list[Watcher] = []
    yield opened
    for watcher in opened:
        watcher.close()


def watch(stub: pb_grpc.ImageServiceStub, watchers: list[Watcher], **request: Any) -> Watcher:
    watcher = Watcher(stub, **request)
    watchers.append(watcher)
    watcher.wait_responses(1)  # the first response comes at once: the stream is open
    return watcher


def test_list_then_watch_delivers_every_later_change_once_in_order(
    stub: pb_grpc.ImageServiceStub, watchers: list[Watcher]
) -> None:
    before = make_image(stub, "active")
    listed = stub.ListImages(pb.ListImagesRequest())
    assert listed.revision == before.revision
    created = stub.CreateImage(
        pb.CreateImageRequest(name="new", disk_format="raw", container_format="bare")
    ).image
    stub.AddLocation(pb.AddLocationRequest(image_id=before.id, location=location("s3://b/c")))
    stub.DeleteImage(pb.DeleteImageRequest(image_id=created.id))
    watcher = watch(stub, watchers, start_revision=listed.revision)
    events = watcher.wait_for(3)
    assert [e.revision for e in events] == [
        listed.revision + 1,
        listed.revision + 2,
        listed.revision + 3,
    ]
    assert [e.type for e in events] == [
        pb.IMAGE_EVENT_TYPE_CREATED,
        pb.IMAGE_EVENT_TYPE_UPDATED,
        pb.IMAGE_EVENT_TYPE_DELETED,
    ]
    assert events[2].image.status == pb.IMAGE_STATUS_DELETED
    assert watcher.responses[0].revision == listed.revision
    assert watcher.responses[-1].revision >= events[-1].revision


def test_a_stream_from_now_gets_only_later_changes_and_its_first_response_at_once(
    stub: pb_grpc.ImageServiceStub, watchers: list[Watcher]
) -> None:
    old = make_image(stub, "queued")
    watcher = watch(stub, watchers)
    assert watcher.responses[0].revision == old.revision
    assert not watcher.responses[0].events
    begun = stub.BeginUpload(pb.BeginUploadRequest(image_id=old.id)).image
    (event,) = watcher.wait_for(1)
    assert event.revision == begun.revision == old.revision + 1
    assert event.image == begun


def test_replaying_an_images_events_reproduces_get_image(
    stub: pb_grpc.ImageServiceStub, watchers: list[Watcher]
) -> None:
    watcher = watch(stub, watchers)
    image = make_image(stub, "deactivated", urls=(URL_A, URL_B))
    stub.ReactivateImage(pb.ReactivateImageRequest(image_id=image.id))
    stub.RemoveLocation(pb.RemoveLocationRequest(image_id=image.id, index=0))
    got = stub.GetImage(pb.GetImageRequest(image_id=image.id)).image
    events = watcher.wait_for(got.revision - watcher.responses[0].revision)
    state = {e.image.id: e.image for e in events}
    assert state[image.id] == got


def test_resuming_from_the_last_revision_has_no_gap_and_no_duplicate(
    stub: pb_grpc.ImageServiceStub, watchers: list[Watcher]
) -> None:
    first = watch(stub, watchers)
    start = first.responses[0].revision
    image = make_image(stub, "active")
    seen = first.wait_for(2)
    first.close()
    stub.AddLocation(pb.AddLocationRequest(image_id=image.id, location=location("s3://b/1")))
    stub.AddLocation(pb.AddLocationRequest(image_id=image.id, location=location("s3://b/2")))
    resumed = watch(stub, watchers, start_revision=seen[-1].revision)
    later = resumed.wait_for(2)
    assert [e.revision for e in [*seen, *later]] == list(range(start + 1, start + 5))


def test_watching_ids_filters_and_an_id_may_not_exist_yet(
    stub: pb_grpc.ImageServiceStub, watchers: list[Watcher]
) -> None:
    future_id = str(uuid.uuid4())
    watcher = watch(stub, watchers, image_ids=[future_id])
    make_image(stub, "queued")  # another image: not for this watcher
    stub.CreateImage(pb.CreateImageRequest(id=future_id, name="later"))
    (event,) = watcher.wait_for(1)
    assert (event.type, event.image.id) == (pb.IMAGE_EVENT_TYPE_CREATED, future_id)
    # The filtered stream's revision is the store's: the other image's change counts.
    assert watcher.responses[-1].revision == event.revision


def test_a_no_op_commits_and_announces_nothing(
    stub: pb_grpc.ImageServiceStub, watchers: list[Watcher]
) -> None:
    image = make_image(stub, "deactivated")
    watcher = watch(stub, watchers, image_ids=[image.id])
    again = stub.DeactivateImage(pb.DeactivateImageRequest(image_id=image.id)).image
    assert again.revision == image.revision
    stub.ReactivateImage(pb.ReactivateImageRequest(image_id=image.id))
    (event,) = watcher.wait_for(1)
    assert event.image.status == pb.IMAGE_STATUS_ACTIVE
    assert event.revision == image.revision + 1


def test_an_idle_stream_gets_progress_with_the_current_revision(
    server_factory: ServerFactory, channels: list[grpc.Channel], watchers: list[Watcher]
) -> None:
    stub = stub_of(server_factory(watch_progress_seconds=0.2), channels)
    image = make_image(stub, "queued")
    watcher = watch(stub, watchers, image_ids=[str(uuid.uuid4())])
    responses = watcher.wait_responses(3, timeout=5)
    assert all(not r.events and r.revision == image.revision for r in responses)


def test_a_filtered_stream_gets_progress_while_other_images_change(
    server_factory: ServerFactory, channels: list[grpc.Channel], watchers: list[Watcher]
) -> None:
    # Changes it does not watch move the store on; the stream must still say where it is.
    stub = stub_of(server_factory(watch_progress_seconds=0.2), channels)
    busy = make_image(stub, "active")
    watcher = watch(stub, watchers, image_ids=[str(uuid.uuid4())])
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:  # a change every 20 ms, well inside the interval
        stub.DeactivateImage(pb.DeactivateImageRequest(image_id=busy.id))
        time.sleep(0.01)
        stub.ReactivateImage(pb.ReactivateImageRequest(image_id=busy.id))
        time.sleep(0.01)
    responses = watcher.wait_responses(1)  # those that came while the store moved on
    assert len(responses) >= 4, responses
    assert not any(r.events for r in responses)
    revisions = [r.revision for r in responses]
    assert revisions == sorted(revisions)
    assert revisions[-1] > revisions[0]


def test_refusals_of_a_start_revision_and_of_an_id(
    stub: pb_grpc.ImageServiceStub, database_url: str
) -> None:
    image = make_image(stub, "active")  # revisions 1 and 2
    ahead = refusal_of(lambda: next(open_watch(stub, start_revision=99)))
    assert ahead.code == grpc.StatusCode.INVALID_ARGUMENT
    assert ahead.info.reason == "FUTURE_REVISION"
    assert ahead.info.metadata["httpStatus"] == "400"
    bad = refusal_of(lambda: next(open_watch(stub, image_ids=["x"])))
    assert (bad.code, bad.info.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    store = SqlStore(database_url)
    try:
        later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=1)
        compact = store.prune_changes(before=later)
    finally:
        store.dispose()
    assert compact == image.revision
    deadline = time.monotonic() + 5
    while True:  # the feed reads the new compact revision within its poll
        try:
            stream = open_watch(stub, start_revision=compact - 1)
            next(stream)
        except grpc.RpcError:
            break
        stream.cancel()
        assert time.monotonic() < deadline, "compaction not seen"
        time.sleep(0.05)
    gone = refusal_of(lambda: next(open_watch(stub, start_revision=compact - 1)))
    assert gone.code == grpc.StatusCode.OUT_OF_RANGE
    assert gone.info.reason == "REVISION_COMPACTED"
    assert dict(gone.info.metadata) == {"compactRevision": str(compact), "httpStatus": "410"}
    # The compact revision itself is still accepted.
    assert next(open_watch(stub, start_revision=compact)).revision == compact


def test_writers_and_watchers_on_two_replicas_see_one_order_with_no_gap(
    server_factory: ServerFactory, channels: list[grpc.Channel], watchers: list[Watcher]
) -> None:
    stubs = [stub_of(server_factory(), channels) for _ in range(2)]
    ids = [make_image(stubs[i % 2], "active").id for i in range(4)]
    start = stubs[0].ListImages(pb.ListImagesRequest()).revision
    # The other replica may not have read the last change yet: it catches up first.
    watching = [watch(stub, watchers, start_revision=start) for stub in stubs]
    rounds = 400  # add+remove cycles, on four images, from two replicas: 800 changes

    def write(replica: int, image_id: str) -> None:
        stub = stubs[replica]
        for n in range(rounds // 4):
            added = stub.AddLocation(
                pb.AddLocationRequest(image_id=image_id, location=location(f"s3://b/{n}"))
            ).image
            stub.RemoveLocation(
                pb.RemoveLocationRequest(image_id=image_id, index=len(added.locations) - 1)
            )

    threads = [
        threading.Thread(target=write, args=(i % 2, image_id)) for i, image_id in enumerate(ids)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    total = 2 * rounds
    seen = [w.wait_for(total, timeout=30) for w in watching]
    expected = list(range(start + 1, start + total + 1))
    for events in seen:
        assert [e.revision for e in events] == expected  # every change, once, in order
    assert [e.SerializeToString() for e in seen[0]] == [e.SerializeToString() for e in seen[1]]
    for image_id in ids:  # and the last event of each image is what GetImage says
        last = [e.image for e in seen[0] if e.image.id == image_id][-1]
        assert last == stubs[0].GetImage(pb.GetImageRequest(image_id=image_id)).image


def test_a_stream_resumes_on_another_replica_and_after_a_restart(
    server_factory: ServerFactory, channels: list[grpc.Channel], watchers: list[Watcher]
) -> None:
    one = stub_of(server_factory(), channels)
    image = make_image(one, "queued")
    first = watch(one, watchers, image_ids=[image.id])
    one.BeginUpload(pb.BeginUploadRequest(image_id=image.id))
    (begun,) = first.wait_for(1)
    first.close()
    one.FailUpload(pb.FailUploadRequest(image_id=image.id))
    other = stub_of(server_factory(), channels)  # a replica started after the change
    resumed = watch(other, watchers, image_ids=[image.id], start_revision=begun.revision)
    (failed,) = resumed.wait_for(1)
    assert failed.revision == begun.revision + 1
    assert failed.image.status == pb.IMAGE_STATUS_KILLED


def test_a_stop_ends_open_streams_unavailable_so_clients_resume_elsewhere(
    database_url: str, channels: list[grpc.Channel], watchers: list[Watcher]
) -> None:
    migrate(database_url)
    settings = Settings(listen="127.0.0.1:0", database_url=database_url, drain_seconds=0.0)
    server = build_server(settings)
    server.start()
    stub = stub_of(f"127.0.0.1:{server.port}", channels)
    watcher = watch(stub, watchers)
    stopping = threading.Thread(target=server.stop, args=(5.0,))
    stopping.start()
    error = watcher.wait_error()
    stopping.join(10)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert refusal_from(error).info.reason == "SERVER_SHUTTING_DOWN"


def test_a_stream_that_falls_behind_the_feed_is_ended_and_resumes_from_its_revision(
    server_factory: ServerFactory, channels: list[grpc.Channel], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("imageloc.server.watch.feed.RING_SIZE", 16)
    server_target = server_factory()
    stub = stub_of(server_target, channels)
    urls = [f"https://store.example/{n:03}/" + "x" * 220 for n in range(10)]
    image = make_image(stub, "active", urls=tuple(urls))
    # No BDP probing: the client's window stays small, so the server's writes block soon.
    slow = grpc.insecure_channel(server_target, options=[("grpc.http2.bdp_probe", 0)])
    channels.append(slow)
    stalled = open_watch(pb_grpc.ImageServiceStub(slow), timeout=60)
    first = next(stalled)  # open, then read nothing while the feed moves on
    for n in range(600):
        stub.ReplaceLocation(
            pb.ReplaceLocationRequest(
                image_id=image.id,
                locations=[location(u) for u in urls[(n + 1) % 2 :] + urls[: (n + 1) % 2]],
            )
        )
    delivered = first.revision

    def read_to_the_end() -> None:
        nonlocal delivered
        for response in stalled:
            delivered = response.revision

    refusal = refusal_of(read_to_the_end)
    assert refusal.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refusal.info.reason == "WATCHER_TOO_SLOW"
    assert refusal.info.metadata["revision"] == str(delivered)
    resumed = open_watch(stub, timeout=60, start_revision=delivered)
    events: list[pb.ImageEvent] = []
    for response in resumed:
        events += response.events
        if events and events[-1].revision == first.revision + 600:
            break
    assert [e.revision for e in events] == list(range(delivered + 1, first.revision + 601))
    resumed.cancel()


@pytest.mark.parametrize("database_url", POSTGRESQL_ONLY, indirect=True)  # its LISTEN/NOTIFY
def test_on_postgresql_a_commit_on_one_replica_wakes_the_watchers_of_another(
    server_factory: ServerFactory,
    channels: list[grpc.Channel],
    watchers: list[Watcher],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Without the NOTIFY the other replica would read the log a minute later.
    monkeypatch.setattr("imageloc.server.app.POSTGRES_FEED_POLL_SECONDS", 60.0)
    writer, reader = (stub_of(server_factory(), channels) for _ in range(2))
    time.sleep(0.5)  # both feeds have read the head and LISTEN
    watcher = watch(reader, watchers)
    image = writer.CreateImage(pb.CreateImageRequest(name="far")).image
    (event,) = watcher.wait_for(1, timeout=10)
    assert event.image.id == image.id


def test_the_python_client_waits_for_a_status_and_follows_changes(target: str) -> None:
    from imageloc.client import ImageClient, StatusUnreachableError

    with ImageClient(target) as client:
        image = client.create_image("c", disk_format="raw", container_format="bare")
        with client.watch_images([image.id], start_revision=image.revision) as changes:
            client.add_location(image.id, URL_A)
            active = client.wait_for_status(image.id, "active", timeout=10)
            client.deactivate_image(image.id)
            events = [next(changes), next(changes)]
        assert [e.image.status for e in events] == [
            pb.IMAGE_STATUS_ACTIVE,
            pb.IMAGE_STATUS_DEACTIVATED,
        ]
        assert events[0].image == active
        doomed = client.create_image("k", disk_format="raw", container_format="bare")
        client.begin_upload(doomed.id)
        client.fail_upload(doomed.id)
        with pytest.raises(StatusUnreachableError):
            client.wait_for_status(doomed.id, "active", timeout=10)
