"""Group commit on the event-loop SQLite store: a turn's writes commit together, and only then
are they durable; a failed unit of work undoes only its own writes; a busy store says so at once.
"""

from __future__ import annotations

import asyncio
import datetime
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from imageloc.server.domain.model import Change, ChangeType, Image, Location
from imageloc.server.domain.ports import StoreBusyError, StoreUnavailableError
from imageloc.server.store import SqlStore

from test_store import make_image


def stored_ids(path: Path) -> set[str]:
    """The image ids another process would see now."""
    with sqlite3.connect(path) as outsider:
        return {row[0] for row in outsider.execute("SELECT id FROM images")}


def add_then_refuse(store: SqlStore, image: Image) -> None:
    """A unit of work that writes, then fails before it commits."""
    with store.unit_of_work(for_write=True) as uow:
        uow.images.add(image)
        raise RuntimeError("a rule refused it")


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "loop.db"
    SqlStore(f"sqlite:///{path}").upgrade()
    return path


def test_writes_of_one_turn_are_durable_together_after_the_commit(database: Path) -> None:
    store = SqlStore(f"sqlite:///{database}", event_loop=True)
    first, second, refused = make_image(), make_image(), make_image()

    async def turn() -> None:
        for image in (first, second):
            with store.unit_of_work(for_write=True) as uow:
                assert uow.images.add(image)
                uow.commit()
        with pytest.raises(RuntimeError):
            add_then_refuse(store, refused)
        # Later units of work in the turn see the earlier writes; the outside does not yet.
        with store.unit_of_work(for_write=False) as uow:
            assert uow.images.get(first.id) is None  # readers see committed state only
        with store.unit_of_work(for_write=True) as uow:
            assert uow.images.get(first.id) == first
            assert uow.images.get(refused.id) is None
        assert stored_ids(database) == set()
        await store.durable()
        assert stored_ids(database) == {first.id, second.id}

    try:
        asyncio.run(turn())
    finally:
        store.dispose()


def test_a_write_finding_another_writer_answers_busy_at_once(database: Path) -> None:
    store = SqlStore(f"sqlite:///{database}", event_loop=True)
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")

    async def attempt() -> None:
        with pytest.raises(StoreBusyError), store.unit_of_work(for_write=True):
            pass
        await store.durable()  # nothing joined: returns at once

    try:
        asyncio.run(asyncio.wait_for(attempt(), timeout=1))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        store.dispose()


def test_each_turn_commits_its_own_transaction(database: Path) -> None:
    store = SqlStore(f"sqlite:///{database}", event_loop=True)
    image = make_image(locations=(Location("https://s.example/a"),))

    async def turns() -> None:
        with store.unit_of_work(for_write=True) as uow:
            uow.images.add(image)
            uow.commit()
        await store.durable()
        assert stored_ids(database) == {image.id}
        with store.unit_of_work(for_write=True) as uow:
            current = uow.images.get(image.id)
            assert current is not None
            changed = current.with_hashes({"checksum": "d" * 32})
            assert uow.images.save(current, changed)
            uow.commit()
        await store.durable()

    try:
        asyncio.run(turns())
        with store.unit_of_work(for_write=False) as uow:
            stored = uow.images.get(image.id)
        assert stored is not None
        assert stored.checksum == "d" * 32
    finally:
        store.dispose()


class FailingCommit:
    """The loop's writer connection, whose COMMIT fails as a full disk makes it fail."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return self.connection.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self.connection, name)


def test_a_failed_commit_leaves_no_remembered_change_behind(database: Path) -> None:
    # The store remembers the changes it committed, so that the change feed need not decode
    # them. A turn whose COMMIT fails gives its revisions back; when another process takes
    # one next, even for a change of the same type at the same time, its change is the one
    # this process reads back.
    store = SqlStore(f"sqlite:///{database}", event_loop=True)
    other_process = SqlStore(f"sqlite:///{database}")
    lost, kept = make_image(), make_image()
    at = datetime.datetime(2026, 12, 3, tzinfo=datetime.UTC)

    def create(image: Image, where: SqlStore = store) -> int:
        with where.unit_of_work(for_write=True) as uow:
            assert uow.images.add(image)
            return uow.commit_change(Change(0, ChangeType.CREATED, image, at), request_log_id=None)

    async def turns() -> None:
        create(make_image())
        await store.durable()
        loop_connections = store._loop_connections  # its writer, made to fail
        assert loop_connections is not None
        writer = loop_connections._writer
        assert writer is not None
        loop_connections._writer = FailingCommit(writer)  # type: ignore[assignment]
        taken = create(lost)
        with pytest.raises(StoreUnavailableError):
            await store.durable()
        loop_connections._writer = writer
        assert create(kept, other_process) == taken

    try:
        asyncio.run(turns())
        with store.unit_of_work(for_write=False) as uow:
            changes, _ = uow.changes.after(0, limit=10)
        assert [c.image.id for c in changes][1:] == [kept.id]
    finally:
        store.dispose()
        other_process.dispose()
