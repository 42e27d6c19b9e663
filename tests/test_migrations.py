"""Schema migrations: upgrade from the first revision keeps data; unknown schemas are refused."""

from __future__ import annotations

import datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import insert
from sqlmodel import SQLModel

from imageloc.client.cli import main
from imageloc.server.app import build_server
from imageloc.server.config import Settings
from imageloc.server.store import SchemaMismatchError, SqlStore
from imageloc.server.store.schema import head_revision, upgrade
from imageloc.server.store.tables import image_locations, images

FIRST = "0001"
T0 = datetime.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.UTC)
IMAGE_ID = "00000000-0000-4000-8000-0000000000aa"


@pytest.fixture
def store(database_url: str) -> SqlStore:
    return SqlStore(database_url)


def test_upgrade_creates_the_schema_the_models_describe(store: SqlStore) -> None:
    store.upgrade()
    assert store.schema_revision() == head_revision()
    with store.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    assert differences == []
    store.dispose()


def test_upgrade_from_the_first_migration_keeps_the_data(store: SqlStore) -> None:
    upgrade(store.engine, FIRST)
    with store.engine.begin() as connection:
        connection.execute(
            insert(images).values(
                id=IMAGE_ID, name="old", status="active", size=42, checksum="", os_hash_algo="",
                os_hash_value="", disk_format="raw", container_format="bare",
                visibility="private", owner="", protected=False, created_at=T0, updated_at=T0,
                revision=3,
            )
        )  # fmt: skip
        connection.execute(
            insert(image_locations),
            [
                {"image_id": IMAGE_ID, "position": 0, "url": "rbd://a/b/c/d", "metadata": {}},
                {"image_id": IMAGE_ID, "position": 1, "url": "https://s/x", "metadata": {"k": "v"}},
            ],
        )
    store.upgrade()
    assert store.schema_revision() == head_revision()
    with store.unit_of_work(for_write=False) as uow:
        image = uow.images.get(IMAGE_ID)
    assert image is not None
    assert (image.name, image.size, image.revision, image.created_at) == ("old", 42, 3, T0)
    assert image.store_revision == 0  # changed before the change log: no revision yet
    assert [(loc.url, dict(loc.metadata)) for loc in image.locations] == [
        ("rbd://a/b/c/d", {}),
        ("https://s/x", {"k": "v"}),
    ]
    store.dispose()


def test_upgrading_twice_is_harmless(store: SqlStore) -> None:
    store.upgrade()
    store.upgrade()
    assert store.schema_revision() == head_revision()
    store.dispose()


def test_a_server_on_an_unmigrated_network_database_refuses_to_start(
    database_url: str, store: SqlStore
) -> None:
    settings = Settings(listen="127.0.0.1:0", database_url=database_url)
    if store.is_embedded:
        server = build_server(settings)  # the embedded SQLite default migrates itself
        server.stop(None)
        assert store.schema_revision() == head_revision()
        return
    with pytest.raises(SchemaMismatchError, match="imageloc db upgrade"):
        build_server(settings)
    upgrade(store.engine, FIRST)
    with pytest.raises(SchemaMismatchError, match=f"needs {head_revision()}"):
        build_server(settings)
    store.upgrade()
    build_server(settings).stop(None)
    store.dispose()


def test_a_schema_from_a_newer_imageloc_is_refused(database_url: str, store: SqlStore) -> None:
    store.upgrade()
    with store.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = 'f00d'")
    settings = Settings(listen="127.0.0.1:0", database_url=database_url)
    with pytest.raises(SchemaMismatchError, match="does not know"):
        build_server(settings)
    with pytest.raises(SchemaMismatchError, match="does not know"):
        store.upgrade()
    store.dispose()


def test_db_upgrade_command_migrates_and_reports(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["db", "current", "--database", database_url]) == 0
    assert capsys.readouterr().out.strip() == "none"
    assert main(["db", "upgrade", "--database", database_url]) == 0
    assert capsys.readouterr().out.strip() == head_revision()


def test_serve_on_an_unmigrated_network_database_says_what_to_run(
    database_url: str, store: SqlStore, capsys: pytest.CaptureFixture[str]
) -> None:
    if store.is_embedded:
        upgrade(store.engine, FIRST)  # SQLite would migrate itself; show a newer-schema refusal
        with store.engine.begin() as connection:
            connection.exec_driver_sql("UPDATE alembic_version SET version_num = 'f00d'")
        expected = "does not know"
    else:
        expected = "run `imageloc db upgrade --database"
    assert main(["serve", "--listen", "127.0.0.1:0", "--database", database_url]) == 1
    assert expected in capsys.readouterr().err
    store.dispose()
