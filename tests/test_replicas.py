"""Two server processes on one database, hit with conflicting calls at the same moment.

Every round must end as some serial order of the calls would; lock waits are never errors.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from imageloc.v1 import image_service_pb2 as pb
from imageloc.v1 import image_service_pb2_grpc as pb_grpc

from processes import ServerProcess, replicas
from support import BACKENDS, fresh_database, location, make_image

ROUNDS = 25
QUOTA = 5
CALL_TIMEOUT = 10.0

#: A call fired in a race: given a stub, it makes its RPCs and returns the image answered.
Call = Callable[[pb_grpc.ImageServiceStub], pb.Image]

#: Codes that would mean a lost race or a lock wait surfaced as a failure.
NEVER = {"UNAVAILABLE", "INTERNAL", "UNKNOWN", "DEADLINE_EXCEEDED"}


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How one raced call ended: "OK" and the image, or the code and the ErrorInfo reason."""

    result: str
    image: pb.Image | None = None


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The database backend this module's replicas share."""
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def servers(
    backend: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ServerProcess]]:
    """Two replicas on one fresh database of the backend, shared by this module's rounds."""
    with (
        fresh_database(backend, tmp_path_factory.mktemp("replicas")) as database_url,
        replicas(database_url, 2, env={"IMAGELOC_LOCATION_QUOTA": str(QUOTA)}) as started,
    ):
        yield started


@pytest.fixture(scope="module")
def stubs(servers: list[ServerProcess]) -> Iterator[list[pb_grpc.ImageServiceStub]]:
    """One stub per replica, each on its own channel."""
    channels = [grpc.insecure_channel(server.target) for server in servers]
    try:
        yield [pb_grpc.ImageServiceStub(channel) for channel in channels]
    finally:
        for channel in channels:
            channel.close()


def outcome_of(call: Call, stub: pb_grpc.ImageServiceStub) -> Outcome:
    try:
        image = call(stub)
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        status: status_pb2.Status | None = rpc_status.from_call(error)  # type: ignore[arg-type]
        info = error_details_pb2.ErrorInfo()
        if status is not None:
            for packed in status.details:
                packed.Unpack(info)
        return Outcome(f"{code.name} {info.reason}".strip())
    return Outcome("OK", image)


def race(stubs: Sequence[pb_grpc.ImageServiceStub], calls: Sequence[Call]) -> list[Outcome]:
    """Fire calls at once, call i on replica i mod n, released together by a barrier."""
    barrier = threading.Barrier(len(calls))
    outcomes: list[Outcome | None] = [None] * len(calls)

    def fire(i: int) -> None:
        stub = stubs[i % len(stubs)]
        barrier.wait(timeout=CALL_TIMEOUT)
        outcomes[i] = outcome_of(calls[i], stub)

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=3 * CALL_TIMEOUT)
    ended = [outcome for outcome in outcomes if outcome is not None]
    assert len(ended) == len(calls), "a raced call never returned"
    failed = [outcome.result for outcome in ended if outcome.result.split()[0] in NEVER]
    assert not failed, f"contention reached callers as errors: {failed}"
    return ended


def results(outcomes: Sequence[Outcome]) -> Counter[str]:
    return Counter(outcome.result for outcome in outcomes)


def winner(outcomes: Sequence[Outcome]) -> tuple[int, pb.Image]:
    """The index and image of the single call that succeeded."""
    won = [(i, outcome.image) for i, outcome in enumerate(outcomes) if outcome.image is not None]
    assert len(won) == 1, f"want exactly one winner in {[o.result for o in outcomes]}"
    return won[0]


def stored(stub: pb_grpc.ImageServiceStub, image_id: str) -> pb.Image:
    request = pb.GetImageRequest(image_id=image_id)
    return stub.GetImage(request, timeout=CALL_TIMEOUT).image


def urls(image: pb.Image) -> list[str]:
    return [loc.url for loc in image.locations]


def create_image(image_id: str, *, request_id: str, name: str = "twice") -> Call:
    request = pb.CreateImageRequest(name=name, request_id=request_id)
    if image_id:  # else the server makes one
        request.id = image_id
    return lambda stub: stub.CreateImage(request, timeout=CALL_TIMEOUT).image


def add(image_id: str, url: str, *, etag: str | None = None) -> Call:
    request = pb.AddLocationRequest(image_id=image_id, location=location(url), etag=etag)
    return lambda stub: stub.AddLocation(request, timeout=CALL_TIMEOUT).image


def remove_at(image_id: str, index: int, *, etag: str | None = None, request_id: str = "") -> Call:
    request = pb.RemoveLocationRequest(
        image_id=image_id, index=index, etag=etag, request_id=request_id
    )
    return lambda stub: stub.RemoveLocation(request, timeout=CALL_TIMEOUT).image


def replace(image_id: str, locations: Sequence[pb.Location], *, etag: str | None = None) -> Call:
    request = pb.ReplaceLocationRequest(image_id=image_id, locations=locations, etag=etag)
    return lambda stub: stub.ReplaceLocation(request, timeout=CALL_TIMEOUT).image


def begin_upload(image_id: str) -> Call:
    request = pb.BeginUploadRequest(image_id=image_id)
    return lambda stub: stub.BeginUpload(request, timeout=CALL_TIMEOUT).image


def deactivate(image_id: str, *, etag: str | None = None) -> Call:
    request = pb.DeactivateImageRequest(image_id=image_id, etag=etag)
    return lambda stub: stub.DeactivateImage(request, timeout=CALL_TIMEOUT).image


def test_racing_removals_of_index_0_leave_one_location_and_refuse_the_last(
    stubs: list[pb_grpc.ImageServiceStub],
) -> None:
    for n in range(ROUNDS):
        first, second = f"https://store.example/{n}/1.img", f"https://store.example/{n}/2.img"
        image = make_image(stubs[0], "active", urls=(first, second))

        outcomes = race(stubs, [remove_at(image.id, 0), remove_at(image.id, 0)])

        assert results(outcomes) == {"OK": 1, "FAILED_PRECONDITION LAST_LOCATION": 1}, n
        _, won = winner(outcomes)
        assert urls(won) == [second]
        assert stored(stubs[1], image.id) == won


def test_begin_upload_racing_replace_location_on_a_queued_image_lets_exactly_one_win(
    stubs: list[pb_grpc.ImageServiceStub],
) -> None:
    for n in range(ROUNDS):
        image = make_image(stubs[0], "queued")
        new = [location(f"https://store.example/{n}/a.img", store="a")]
        labelled = {"upload": begin_upload(image.id), "replace": replace(image.id, new)}
        labels = sorted(labelled, reverse=n % 2 == 1)  # each call takes each replica in turn

        outcomes = race(stubs, [labelled[label] for label in labels])

        i, won = winner(outcomes)
        if labels[i] == "upload":
            assert results(outcomes) == {"OK": 1, "FAILED_PRECONDITION IMAGE_STATUS_CONFLICT": 1}
            assert won.status == pb.IMAGE_STATUS_SAVING
            assert list(won.locations) == []
        else:
            assert results(outcomes) == {"OK": 1, "FAILED_PRECONDITION INVALID_TRANSITION": 1}
            assert won.status == pb.IMAGE_STATUS_ACTIVE
            assert list(won.locations) == new
        assert stored(stubs[1], image.id) == won


def test_racing_replace_locations_on_a_queued_image_keep_one_list_whole(
    stubs: list[pb_grpc.ImageServiceStub],
) -> None:
    for n in range(ROUNDS):
        image = make_image(stubs[0], "queued")
        lists = [
            [location(f"https://store.example/{n}/a{k}.img", side="a", k=str(k)) for k in range(2)],
            [location(f"rbd://fsid/pool/{n}-b{k}/snap", side="b", k=str(k)) for k in range(3)],
        ]
        if n % 2:
            lists.reverse()

        outcomes = race(stubs, [replace(image.id, new) for new in lists])

        assert results(outcomes) == {"OK": 1, "FAILED_PRECONDITION LOCATIONS_NOT_EMPTY": 1}, n
        i, won = winner(outcomes)
        assert won.status == pb.IMAGE_STATUS_ACTIVE
        assert list(won.locations) == lists[i]
        assert stored(stubs[1], image.id) == won


def test_a_burst_of_add_location_at_the_quota_fills_it_exactly(
    stubs: list[pb_grpc.ImageServiceStub],
) -> None:
    burst, room = 6, QUOTA - 2
    for n in range(ROUNDS):
        image = make_image(stubs[0], "active", urls=tuple(f"s3://b/{n}/{k}" for k in range(2)))
        added = [f"https://store.example/{n}/{k}.img" for k in range(burst)]

        outcomes = race(stubs, [add(image.id, url) for url in added])

        assert results(outcomes) == {
            "OK": room,
            "RESOURCE_EXHAUSTED LOCATION_QUOTA_EXCEEDED": burst - room,
        }, n
        final = stored(stubs[1], image.id)
        assert len(final.locations) == QUOTA
        assert list(final.locations[:2]) == list(image.locations)
        won = sorted(
            (outcome.image for outcome in outcomes if outcome.image is not None),
            key=lambda answered: len(answered.locations),
        )
        # Serial: the winners saw 3, 4, 5 locations, each list a prefix of the final one.
        assert [len(answered.locations) for answered in won] == list(range(3, QUOTA + 1))
        for answered in won:
            assert urls(answered) == urls(final)[: len(answered.locations)]
        assert won[-1] == final
        assert set(urls(final)[2:]) <= set(added)


def test_writes_carrying_the_same_etag_let_exactly_one_win(
    stubs: list[pb_grpc.ImageServiceStub],
) -> None:
    for n in range(ROUNDS):
        image = make_image(stubs[0], "active", urls=(f"s3://b/{n}/0", f"s3://b/{n}/1"))
        etag = image.etag
        calls = [
            add(image.id, f"https://store.example/{n}.img", etag=etag),
            remove_at(image.id, 0, etag=etag),
            replace(image.id, list(reversed(image.locations)), etag=etag),
            deactivate(image.id, etag=etag),
        ]

        outcomes = race(stubs, calls)

        assert results(outcomes) == {"OK": 1, "ABORTED ETAG_MISMATCH": 3}, n
        _, won = winner(outcomes)
        assert won.etag != etag
        assert stored(stubs[1], image.id) == won


def test_lock_contention_between_replicas_never_fails_a_call(
    stubs: list[pb_grpc.ImageServiceStub],
) -> None:
    writers, writes = 16, 5
    images = [make_image(stubs[0], "active", urls=(f"s3://b/{k}",)) for k in range(writers)]

    def churn(image_id: str) -> Call:
        def run(stub: pb_grpc.ImageServiceStub) -> pb.Image:
            image = pb.Image()
            for i in range(writes):
                add(image_id, f"https://store.example/{image_id}/{i}.img")(stub)
                image = remove_at(image_id, 0)(stub)
            return image

        return run

    outcomes = race(stubs, [churn(image.id) for image in images])

    assert results(outcomes) == {"OK": writers}
    for image, outcome in zip(images, outcomes, strict=True):
        assert urls(stored(stubs[1], image.id)) == [
            f"https://store.example/{image.id}/{writes - 1}.img"
        ]
        assert outcome.image == stored(stubs[0], image.id)


def test_one_request_id_at_both_replicas_at_once_answers_both_with_its_first_outcome(
    stubs: list[pb_grpc.ImageServiceStub],
) -> None:
    for n in range(ROUNDS):
        image = make_image(stubs[0], "active", urls=(f"s3://b/{n}/0", f"s3://b/{n}/1"))
        remove = remove_at(image.id, 0, request_id=str(uuid.uuid4()))

        outcomes = race(stubs, [remove, remove])

        assert results(outcomes) == {"OK": 2}, n
        assert outcomes[0].image == outcomes[1].image == stored(stubs[1], image.id)
        assert urls(stored(stubs[1], image.id)) == [f"s3://b/{n}/1"]


def test_one_create_request_at_both_replicas_at_once_creates_once_and_answers_both(
    stubs: list[pb_grpc.ImageServiceStub],
) -> None:
    for n in range(ROUNDS):
        image_id = str(uuid.uuid4())
        create = create_image(image_id, request_id=str(uuid.uuid4()))

        outcomes = race(stubs, [create, create])

        assert results(outcomes) == {"OK": 2}, n
        assert outcomes[0].image == outcomes[1].image == stored(stubs[1], image_id)


def test_one_create_request_without_an_id_at_both_replicas_at_once_creates_one_image(
    stubs: list[pb_grpc.ImageServiceStub],
) -> None:
    # Each attempt makes an id of its own, so nothing but the request log's row tells them
    # apart; on PostgreSQL that row is written with COMMIT, where the later attempt fails
    # and tries again, to find and answer the first one's image.
    names = [f"once-{uuid.uuid4()}" for _ in range(ROUNDS)]
    for n, name in enumerate(names):
        create = create_image("", request_id=str(uuid.uuid4()), name=name)

        outcomes = race(stubs, [create, create])

        assert results(outcomes) == {"OK": 2}, n
        first = outcomes[0].image
        assert first is not None
        assert first == outcomes[1].image == stored(stubs[1], first.id)
    listed: list[pb.Image] = []
    token = ""
    while True:
        page = stubs[0].ListImages(pb.ListImagesRequest(page_size=1000, page_token=token))
        listed += page.images
        if not (token := page.next_page_token):
            break
    assert sorted(image.name for image in listed if image.name in set(names)) == sorted(names)
