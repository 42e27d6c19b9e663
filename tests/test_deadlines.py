"""A call whose deadline passes while it waits on the database ends DEADLINE_EXCEEDED, unwritten."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator

import grpc
import pytest
from sqlalchemy import create_engine, make_url, text

from imageloc.server.domain.ports import DeadlineExceededError
from imageloc.server.store import SqlStore
from imageloc.v1 import image_service_pb2 as pb
from imageloc.v1 import image_service_pb2_grpc as pb_grpc

from support import location, make_image, migrate
from test_store import make_image as image_record

URL = "https://store.example/late.img"


@contextlib.contextmanager
def image_locked(database_url: str, image_id: str) -> Iterator[None]:
    """Hold what a writer of image_id must wait for: SQLite's write lock, or the row lock."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        writer = sqlite3.connect(url.database or "", isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            writer.execute("ROLLBACK")
            writer.close()
        return
    engine = create_engine(url)
    with engine.connect() as holder:
        holder.execute(text("SELECT id FROM images WHERE id = :id FOR UPDATE"), {"id": image_id})
        try:
            yield
        finally:
            holder.rollback()
    engine.dispose()


def test_a_write_stuck_behind_a_lock_ends_at_its_deadline_and_writes_nothing(
    stub: pb_grpc.ImageServiceStub, database_url: str
) -> None:
    image = make_image(stub, "active")
    request = pb.AddLocationRequest(image_id=image.id, location=location(URL))
    with image_locked(database_url, image.id):
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            stub.AddLocation(request, timeout=0.5)
        assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 5
        # The server gave up too: it does not apply the write once the lock is free.
        time.sleep(0.3)
    stored = stub.GetImage(pb.GetImageRequest(image_id=image.id), timeout=5).image
    assert stored == image
    added = stub.AddLocation(request, timeout=5).image  # and it serves normally again
    assert [loc.url for loc in added.locations][-1] == URL


def test_reads_go_on_while_a_write_waits_for_a_lock_and_the_write_lands_after(
    stub: pb_grpc.ImageServiceStub, database_url: str
) -> None:
    image = make_image(stub, "active")
    request = pb.AddLocationRequest(image_id=image.id, location=location(URL))
    with image_locked(database_url, image.id):
        waiting = stub.AddLocation.future(request, timeout=10)
        time.sleep(0.2)
        for _ in range(20):  # the waiting write holds up neither the server nor its reads
            read = stub.GetImage(pb.GetImageRequest(image_id=image.id), timeout=0.5).image
            assert read == image
        assert not waiting.done()
    added = waiting.result(timeout=10).image
    assert [loc.url for loc in added.locations][-1] == URL
    stored = stub.GetImage(pb.GetImageRequest(image_id=image.id), timeout=5).image
    assert stored == added


def load_for_write(store: SqlStore, image_id: str, *, seconds: float) -> None:
    """Load image_id in a write unit of work that has `seconds` to go."""
    with store.unit_of_work(for_write=True, deadline=time.monotonic() + seconds) as uow:
        uow.images.get(image_id)  # SQLite waits at BEGIN, PostgreSQL at the row lock


def test_a_unit_of_work_waiting_past_its_deadline_for_a_lock_says_deadline_exceeded(
    database_url: str,
) -> None:
    migrate(database_url)
    store = SqlStore(database_url)
    image = image_record()
    try:
        with store.unit_of_work(for_write=True) as uow:
            uow.images.add(image)
            uow.commit()
        with image_locked(database_url, image.id), pytest.raises(DeadlineExceededError):
            load_for_write(store, image.id, seconds=0.3)
    finally:
        store.dispose()
