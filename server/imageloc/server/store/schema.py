"""Schema versions: upgrade a database to this server's head, or refuse one it does not know.

Imports alembic, sqlalchemy and the store's engine helpers. The migrations live in
migrations/versions; alembic_version in the database records the applied one.
"""

from __future__ import annotations

import pathlib

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, func, select

from imageloc.server.store.engine import connect, translated_errors

MIGRATIONS = pathlib.Path(__file__).with_name("migrations")

#: Key of the PostgreSQL advisory lock that serialises concurrent upgrades.
_UPGRADE_LOCK_KEY = 0x1A6E10C


class SchemaMismatchError(Exception):
    """The database's schema is not the one this server was built for."""


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    """The newest schema revision this code knows."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None, "no migrations"
    return head


def current_revision(engine: Engine) -> str | None:
    """The database's schema revision; None for a database never migrated."""
    with translated_errors(), engine.connect() as connection:
        revision: str | None = MigrationContext.configure(connection).get_current_revision()
        return revision


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database to revision; safe when several processes start at once.

    A database at a revision this code does not know (made by a newer imageloc) is refused.
    """
    config = _config()
    _refuse_unknown(current_revision(engine))
    with translated_errors():
        connection = connect(engine, for_write=True)
        try:
            if engine.dialect.name == "postgresql":
                connection.execute(select(func.pg_advisory_xact_lock(_UPGRADE_LOCK_KEY)))
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
            connection.commit()
        finally:
            connection.close()


def require_head(engine: Engine, *, database_url: str) -> None:
    """Raise SchemaMismatchError unless the database is at this server's head revision."""
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    _refuse_unknown(current)
    raise SchemaMismatchError(
        f"the database schema is at revision {current or 'none (empty database)'}, this "
        f"server needs {head}: run `imageloc db upgrade --database {database_url}` first"
    )


def _refuse_unknown(current: str | None) -> None:
    known = {script.revision for script in ScriptDirectory.from_config(_config()).walk_revisions()}
    if current is not None and current not in known:
        raise SchemaMismatchError(
            f"the database schema is at revision {current}, which this imageloc does not know "
            f"(its newest is {head_revision()}): run a newer imageloc, or a matching database"
        )
