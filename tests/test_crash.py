"""SIGKILL during a burst of writes loses no acknowledged write and half-applies none.

Writers send every write with a request_id, so after a restart its retry tells whether it committed.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid

import grpc
from google.protobuf.message import Message

from imageloc.v1 import image_service_pb2 as pb
from imageloc.v1 import image_service_pb2_grpc as pb_grpc

from processes import ServerProcess, start_server
from support import location, migrate

WRITERS = 8
CRASHES = 3
MAX_WRITES = 2000
ACKED_BEFORE_KILL = 5
KEPT_LOCATIONS = 4
CALL_TIMEOUT = 10.0


@dataclasses.dataclass(frozen=True)
class Write:
    """One planned write: the RPC, its request (with a request_id) and the locations it leaves."""

    rpc: str
    request: Message
    locations: list[pb.Location]

    def send(self, stub: pb_grpc.ImageServiceStub) -> pb.Image:
        response = getattr(stub, self.rpc)(self.request, timeout=CALL_TIMEOUT)
        image = response.image
        assert isinstance(image, pb.Image)
        return image


def plan(writer: int, step: int, image: pb.Image) -> Write:
    """The writer's next write on image: append, drop the first, or reverse and relabel all."""
    current = list(image.locations)
    request_id = str(uuid.uuid4())
    if len(current) >= 2 and step % 4 == 3:
        relabelled = [location(loc.url, step=str(step)) for loc in reversed(current)]
        replace = pb.ReplaceLocationRequest(
            image_id=image.id, locations=relabelled, request_id=request_id
        )
        return Write("ReplaceLocation", replace, relabelled)
    if len(current) >= KEPT_LOCATIONS:
        remove = pb.RemoveLocationRequest(image_id=image.id, index=0, request_id=request_id)
        return Write("RemoveLocation", remove, current[1:])
    added = location(f"https://store.example/{writer}/{step}.img", step=str(step))
    add = pb.AddLocationRequest(image_id=image.id, location=added, request_id=request_id)
    return Write("AddLocation", add, [*current, added])


@dataclasses.dataclass
class Writer:
    """A client thread that owns one image and writes to it until its first error."""

    number: int
    last: pb.Image
    step: int = 0
    acknowledged: list[tuple[Write, pb.Image]] = dataclasses.field(default_factory=list)
    in_flight: Write | None = None
    error: grpc.StatusCode | None = None

    def run(self, stub: pb_grpc.ImageServiceStub) -> None:
        for _ in range(MAX_WRITES):
            write = plan(self.number, self.step, self.last)
            self.in_flight = write
            try:
                self.last = write.send(stub)
            except grpc.RpcError as error:
                self.error = error.code()
                return
            self.acknowledged.append((write, self.last))
            self.in_flight = None
            self.step += 1


def burst_then_kill(server: ServerProcess, writers: list[Writer]) -> None:
    """Start every writer, SIGKILL the server once each has some acknowledged writes."""
    for writer in writers:
        writer.acknowledged.clear()
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.ImageServiceStub(channel)
        threads = [threading.Thread(target=writer.run, args=(stub,)) for writer in writers]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
            len(writer.acknowledged) < ACKED_BEFORE_KILL for writer in writers
        ):
            time.sleep(0.005)
        server.kill()
        for thread in threads:
            thread.join(timeout=2 * CALL_TIMEOUT)
        assert not any(thread.is_alive() for thread in threads), "a writer hung after the kill"


def check_and_settle(stub: pb_grpc.ImageServiceStub, writer: Writer) -> None:
    """Check the stored image against the writer's history, then move the writer past it.

    The retry of the call in flight at the kill (same request_id) answers its first outcome
    if it committed, or applies it now; either way the image ends one step further.
    """
    for write, image in writer.acknowledged:
        assert list(image.locations) == write.locations
        assert image.status == pb.IMAGE_STATUS_ACTIVE
    lost = writer.in_flight
    assert lost is not None
    before = stub.GetImage(pb.GetImageRequest(image_id=writer.last.id), timeout=CALL_TIMEOUT).image
    retried = lost.send(stub)
    assert list(retried.locations) == lost.locations
    assert retried.etag != writer.last.etag
    assert before in (writer.last, retried), (
        f"writer {writer.number}: stored {before} is neither the last acknowledged "
        f"{writer.last} nor the next step {retried}"
    )
    after = stub.GetImage(pb.GetImageRequest(image_id=writer.last.id), timeout=CALL_TIMEOUT).image
    assert after == retried
    writer.last, writer.in_flight, writer.step = retried, None, writer.step + 1


def test_sigkill_mid_burst_keeps_every_acknowledged_write_and_no_partial_one(
    database_url: str,
) -> None:
    migrate(database_url)
    servers = [start_server(database_url)]
    try:
        with grpc.insecure_channel(servers[-1].target) as channel:
            stub = pb_grpc.ImageServiceStub(channel)
            request = pb.CreateImageRequest(name="w", disk_format="raw", container_format="bare")
            created = [
                stub.CreateImage(request, timeout=CALL_TIMEOUT).image for _ in range(WRITERS)
            ]
        writers = [Writer(number=n, last=image) for n, image in enumerate(created)]
        for _ in range(CRASHES):
            burst_then_kill(servers[-1], writers)
            for writer in writers:
                assert writer.error == grpc.StatusCode.UNAVAILABLE, writer.error
                assert len(writer.acknowledged) >= ACKED_BEFORE_KILL
            servers.append(start_server(database_url))
            with grpc.insecure_channel(servers[-1].target) as channel:
                stub = pb_grpc.ImageServiceStub(channel)
                for writer in writers:
                    check_and_settle(stub, writer)
                listed = stub.ListImages(pb.ListImagesRequest(page_size=1000), timeout=CALL_TIMEOUT)
                assert sorted(image.id for image in listed.images) == sorted(i.id for i in created)
        assert servers[-1].stop() == 0
    finally:
        for server in servers:
            server.kill()
