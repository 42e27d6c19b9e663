"""Group commit on the event-loop SQLite store: a turn's writes commit together, and only then
are they durable; a failed unit of work undoes only its own writes; a busy store says so at once.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from imageloc.server.domain.model import Image, Location
from imageloc.server.domain.ports import StoreBusyError
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
