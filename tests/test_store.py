"""The SQL store against real databases: SQLite always, PostgreSQL when configured.

Set IMAGELOC_TEST_POSTGRES_URL (postgresql+psycopg://...) to run the PostgreSQL cases;
each test gets a schema of its own there, dropped afterwards.
"""

from __future__ import annotations

import dataclasses
import datetime
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from imageloc.server.domain.listing import ImageFilters, parse_order, sort_values
from imageloc.server.domain.model import (
    Change,
    ChangeType,
    Image,
    ImageStatus,
    Location,
    Visibility,
)
from imageloc.server.domain.ports import StoreUnavailableError, UnitOfWorkFactory
from imageloc.server.store import SqlStore

T0 = datetime.datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=datetime.UTC)
#: The listing's default: every image not hidden, the newest first.
ANY, NEWEST = ImageFilters(), parse_order("created_at desc")


@pytest.fixture
def store(database_url: str) -> Iterator[SqlStore]:
    """A store with its schema created."""
    opened = SqlStore(database_url)
    opened.upgrade()
    yield opened
    opened.dispose()


def make_image(
    image_id: str | None = None,
    *,
    created_at: datetime.datetime = T0,
    status: ImageStatus = ImageStatus.ACTIVE,
    locations: tuple[Location, ...] = (),
) -> Image:
    return Image(
        id=image_id or str(uuid.uuid4()),
        name="cirros",
        status=status,
        created_at=created_at,
        updated_at=created_at,
        locations=locations,
        size=12_345_678_901,
        checksum="c" * 32,
        os_hash_algo="sha512",
        os_hash_value="f" * 128,
        disk_format="qcow2",
        container_format="bare",
        visibility=Visibility.SHARED,
        owner="tenant-1",
        protected=True,
        revision=1,
    )


def add(store: SqlStore, *images: Image) -> None:
    with store.unit_of_work(for_write=True) as uow:
        for image in images:
            assert uow.images.add(image)
        uow.commit()


def get(store: SqlStore, image_id: str) -> Image | None:
    with store.unit_of_work(for_write=False) as uow:
        return uow.images.get(image_id)


def test_store_unit_of_work_is_a_unit_of_work_factory(store: SqlStore) -> None:
    factory: UnitOfWorkFactory = store.unit_of_work
    with factory(for_write=False) as uow:
        assert uow.images.get("missing") is None


def test_upgrade_twice_keeps_rows(store: SqlStore) -> None:
    image = make_image()
    add(store, image)
    store.upgrade()
    assert get(store, image.id) == image


def test_check_passes_on_a_live_database(store: SqlStore) -> None:
    store.check()


def test_check_raises_store_unavailable_when_database_cannot_open(tmp_path: Path) -> None:
    broken = SqlStore(f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}")
    with pytest.raises(StoreUnavailableError):
        broken.check()
    broken.dispose()


def test_image_round_trips_with_ordered_locations_and_nested_metadata(store: SqlStore) -> None:
    locations = (
        Location("swift+https://z/v1/c/3", {"store": "c", "nested": {"a": ["x", {"b": "y"}]}}),
        Location("http://a.example/1", {}),
        Location("rbd://fsid/pool/img/snap", {"store": "ceph", "z": "1", "a": "2"}),
    )
    image = make_image(locations=locations)
    add(store, image)
    loaded = get(store, image.id)
    assert loaded == image
    assert loaded is not None
    assert [location.url for location in loaded.locations] == [loc.url for loc in locations]
    assert all(type(location.metadata) is dict for location in loaded.locations)


def test_datetimes_come_back_tz_aware_utc_with_microseconds(store: SqlStore) -> None:
    plus_two = datetime.timezone(datetime.timedelta(hours=2))
    created = datetime.datetime(2024, 5, 1, 14, 0, 0, 654321, tzinfo=plus_two)
    image = make_image(created_at=created)
    add(store, image)
    loaded = get(store, image.id)
    assert loaded is not None
    assert loaded.created_at == created
    assert loaded.created_at.tzinfo == datetime.UTC
    assert loaded.created_at.hour == 12
    assert loaded.created_at.microsecond == 654321
    assert loaded.updated_at.tzinfo == datetime.UTC


def test_naive_datetime_is_refused(store: SqlStore) -> None:
    image = make_image(created_at=datetime.datetime(2024, 5, 1))
    with store.unit_of_work(for_write=True) as uow, pytest.raises(ValueError, match="naive"):
        uow.images.add(image)


def test_get_returns_deleted_and_pending_delete_images(store: SqlStore) -> None:
    deleted = make_image(status=ImageStatus.DELETED)
    pending = make_image(status=ImageStatus.PENDING_DELETE)
    add(store, deleted, pending)
    assert get(store, deleted.id) == deleted
    assert get(store, pending.id) == pending


def test_add_returns_false_for_a_taken_id_and_keeps_the_transaction(store: SqlStore) -> None:
    first = make_image(locations=(Location("http://a/1"),))
    add(store, first)
    other = make_image()
    with store.unit_of_work(for_write=True) as uow:
        taken = dataclasses.replace(first, name="other", locations=(Location("http://b/2"),))
        assert uow.images.add(taken) is False
        assert uow.images.add(other) is True
        uow.commit()
    assert get(store, first.id) == first
    assert get(store, other.id) == other


def test_add_returns_false_for_the_id_of_a_deleted_image(store: SqlStore) -> None:
    gone = make_image(status=ImageStatus.DELETED)
    add(store, gone)
    with store.unit_of_work(for_write=True) as uow:
        assert uow.images.add(dataclasses.replace(gone, status=ImageStatus.QUEUED)) is False


def test_save_writes_new_over_old_at_the_same_revision(store: SqlStore) -> None:
    old = make_image(locations=(Location("http://a/1"),))
    add(store, old)
    later = T0 + datetime.timedelta(seconds=5)
    new = dataclasses.replace(
        old, name="renamed", status=ImageStatus.DEACTIVATED, revision=2, updated_at=later
    )
    with store.unit_of_work(for_write=True) as uow:
        assert uow.images.save(old, new)
        uow.commit()
    assert get(store, old.id) == new


def test_save_with_a_stale_revision_returns_false_and_writes_nothing(store: SqlStore) -> None:
    original = make_image(locations=(Location("http://a/1"),))
    add(store, original)
    current = dataclasses.replace(original, name="second", revision=2)
    with store.unit_of_work(for_write=True) as uow:
        assert uow.images.save(original, current)
        uow.commit()
    stale_change = dataclasses.replace(
        original, name="lost", revision=2, locations=(Location("http://b/2"),)
    )
    with store.unit_of_work(for_write=True) as uow:
        assert uow.images.save(original, stale_change) is False
        uow.commit()
    assert get(store, original.id) == current


def test_save_rewrites_locations_in_the_new_order(store: SqlStore) -> None:
    a, b, c = (Location(f"http://h/{name}", {"n": name}) for name in "abc")
    old = make_image(locations=(a, b, c))
    add(store, old)
    reordered = dataclasses.replace(old, locations=(c, a), revision=2)
    with store.unit_of_work(for_write=True) as uow:
        assert uow.images.save(old, reordered)
        uow.commit()
    loaded = get(store, old.id)
    assert loaded is not None
    assert loaded.locations == (c, a)
    emptied = dataclasses.replace(reordered, locations=(), revision=3)
    with store.unit_of_work(for_write=True) as uow:
        assert uow.images.save(reordered, emptied)
        uow.commit()
    assert get(store, old.id) == emptied


def test_uncommitted_unit_of_work_rolls_back(store: SqlStore) -> None:
    kept = make_image()
    add(store, kept)
    dropped = make_image()
    with store.unit_of_work(for_write=True) as uow:
        assert uow.images.add(dropped)
        assert uow.images.save(kept, dataclasses.replace(kept, name="changed", revision=2))
    assert get(store, dropped.id) is None
    assert get(store, kept.id) == kept


def test_unit_of_work_rolls_back_when_the_block_raises(store: SqlStore) -> None:
    image = make_image()

    def add_then_fail() -> None:
        with store.unit_of_work(for_write=True) as uow:
            uow.images.add(image)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        add_then_fail()
    assert get(store, image.id) is None


def test_read_unit_of_work_sees_one_snapshot(database_url: str) -> None:
    reader, writer = SqlStore(database_url), SqlStore(database_url)
    reader.upgrade()
    old = make_image(locations=(Location("http://a/1"),))
    add(writer, old)
    new = dataclasses.replace(old, name="new", revision=2, locations=(Location("http://b/2"),))
    with reader.unit_of_work(for_write=False) as uow:
        assert _ids(list(uow.images.list(limit=10, after=None, filters=ANY, order=NEWEST))) == [
            old.id
        ]
        with writer.unit_of_work(for_write=True) as write:
            assert write.images.save(old, new)
            write.commit()
        assert uow.images.get(old.id) == old
    assert get(reader, old.id) == new
    reader.dispose()
    writer.dispose()


def _ids(images: list[Image]) -> list[str]:
    return [image.id for image in images]


def test_list_is_newest_first_and_skips_gone_images(store: SqlStore) -> None:
    oldest = make_image(created_at=T0)
    middle = make_image(created_at=T0 + datetime.timedelta(microseconds=1))
    newest = make_image(created_at=T0 + datetime.timedelta(days=1), status=ImageStatus.QUEUED)
    deleted = make_image(created_at=T0 + datetime.timedelta(days=2), status=ImageStatus.DELETED)
    pending = make_image(
        created_at=T0 + datetime.timedelta(days=3), status=ImageStatus.PENDING_DELETE
    )
    add(store, middle, deleted, oldest, pending, newest)
    with store.unit_of_work(for_write=False) as uow:
        listed = list(uow.images.list(limit=10, after=None, filters=ANY, order=NEWEST))
    assert _ids(listed) == [newest.id, middle.id, oldest.id]
    assert listed[0] == newest


def test_list_filters_by_status(store: SqlStore) -> None:
    active = make_image(created_at=T0)
    queued = make_image(created_at=T0 + datetime.timedelta(seconds=1), status=ImageStatus.QUEUED)
    add(store, active, queued)
    with store.unit_of_work(for_write=False) as uow:
        assert _ids(
            list(
                uow.images.list(
                    limit=10,
                    after=None,
                    filters=ImageFilters(status=ImageStatus.QUEUED),
                    order=NEWEST,
                )
            )
        ) == [queued.id]
        assert (
            list(
                uow.images.list(
                    limit=10,
                    after=None,
                    filters=ImageFilters(status=ImageStatus.DELETED),
                    order=NEWEST,
                )
            )
            == []
        )


def test_list_pages_by_keyset_across_equal_created_at(store: SqlStore) -> None:
    same = [make_image(created_at=T0, locations=(Location(f"http://h/{i}"),)) for i in range(5)]
    older = [make_image(created_at=T0 - datetime.timedelta(seconds=i + 1)) for i in range(2)]
    add(store, *same, *older)
    expected = sorted((image.id for image in same), reverse=True) + _ids(older)
    seen: list[Image] = []
    after = None
    with store.unit_of_work(for_write=False) as uow:
        while True:
            page = list(uow.images.list(limit=2, after=after, filters=ANY, order=NEWEST))
            if not page:
                break
            assert len(page) <= 2
            seen.extend(page)
            after = sort_values(page[-1], NEWEST)
    assert _ids(seen) == expected
    by_id = {image.id: image for image in [*same, *older]}
    assert all(image == by_id[image.id] for image in seen)


def test_list_cursor_in_another_zone_means_the_same_instant(store: SqlStore) -> None:
    first = make_image(created_at=T0)
    second = make_image(created_at=T0 - datetime.timedelta(seconds=1))
    add(store, first, second)
    minus_five = datetime.timezone(datetime.timedelta(hours=-5))
    cursor = (T0.astimezone(minus_five), first.id)
    with store.unit_of_work(for_write=False) as uow:
        assert _ids(list(uow.images.list(limit=10, after=cursor, filters=ANY, order=NEWEST))) == [
            second.id
        ]


def test_in_memory_sqlite_works() -> None:
    memory = SqlStore("sqlite://")
    memory.upgrade()
    image = make_image(locations=(Location("http://a/1", {"k": "v"}),))
    add(memory, image)
    assert get(memory, image.id) == image
    memory.dispose()


def test_concurrent_read_modify_write_loses_no_update(database_url: str) -> None:
    """Two writers, each on its own store as separate server processes would be."""
    stores = [SqlStore(database_url) for _ in range(2)]
    stores[0].upgrade()
    image = make_image(locations=(Location("http://a/0"),))
    add(stores[0], image)
    rounds = 25
    errors: list[BaseException] = []
    start = threading.Barrier(len(stores))

    def increment(store: SqlStore) -> None:
        try:
            start.wait()
            for _ in range(rounds):
                while True:
                    with store.unit_of_work(for_write=True) as uow:
                        current = uow.images.get(image.id)
                        assert current is not None
                        changed = dataclasses.replace(
                            current,
                            size=current.size + 1,
                            revision=current.revision + 1,
                            locations=(*current.locations, Location(f"http://a/{current.size}")),
                        )
                        if uow.images.save(current, changed):
                            uow.commit()
                            break
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=increment, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    final = get(stores[0], image.id)
    for store in stores:
        store.dispose()
    assert final is not None
    assert final.size == image.size + 2 * rounds
    assert final.revision == image.revision + 2 * rounds
    assert len(final.locations) == 1 + 2 * rounds


def test_changes_read_back_are_the_changes_committed_remembered_or_decoded(
    store: SqlStore, database_url: str
) -> None:
    # The committing store remembers its changes (the feed need not decode them); another
    # store on the same database decodes the rows. Both read the same changes, and the
    # newest is the image as stored.
    metadata = {"store": "ceph", "nested": {"pool": "images", "list": ["a", "b"]}}
    image = make_image(locations=(Location("rbd://f/p/i/s", metadata), Location("s3://b/c")))
    at = T0 + datetime.timedelta(seconds=5)
    with store.unit_of_work(for_write=True) as uow:
        assert uow.images.add(image)
        created = uow.commit_change(Change(0, ChangeType.CREATED, image, at), request_log_id=None)
    changed = dataclasses.replace(image, name="renamed", revision=2, updated_at=at)
    with store.unit_of_work(for_write=True) as uow:
        current = uow.images.get(image.id)
        assert current is not None
        assert uow.images.save(current, changed)
        updated = uow.commit_change(Change(0, ChangeType.UPDATED, changed, at), request_log_id=None)
    other = SqlStore(database_url)
    try:
        reads = []
        for reader in (store, other):
            with reader.unit_of_work(for_write=False) as uow:
                reads.append(uow.changes.after(0, limit=10)[0])
        remembered, decoded = reads
        assert remembered == decoded
        assert [(c.revision, c.type) for c in decoded] == [
            (created, ChangeType.CREATED),
            (updated, ChangeType.UPDATED),
        ]
        assert decoded[-1].image == get(store, image.id)
        assert decoded[-1].image.store_revision == updated
    finally:
        other.dispose()
