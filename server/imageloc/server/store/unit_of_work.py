"""Units of work (one transaction each) and SqlStore, the store the server opens from a URL.

Imports sqlalchemy, the store's modules, and the domain's ports.
"""

from __future__ import annotations

import datetime
import time
from types import TracebackType
from typing import Self

from sqlalchemy import Connection, Engine

from imageloc.server.domain.ports import (
    DeadlineExceededError,
    ImageRepository,
    StoreUnavailableError,
)
from imageloc.server.store import schema
from imageloc.server.store.engine import (
    check_database,
    connect,
    create_engine_from_url,
    translated_errors,
)
from imageloc.server.store.repository import SqlImageRepository
from imageloc.server.store.request_log import SqlRequestLog

#: A wait that ended this close to the deadline was cut short by it.
_DEADLINE_SLACK = 0.05

#: The longest wait either database accepts (a 32-bit count of milliseconds).
_MAX_WAIT_MS = 2**31 - 1


class SqlUnitOfWork:
    """One transaction on its own connection, rolled back on exit unless committed.

    A for_write unit of work holds the write lock from its start on SQLite (BEGIN
    IMMEDIATE) and locks each image it reads on PostgreSQL (SELECT ... FOR UPDATE).
    """

    images: ImageRepository
    requests: SqlRequestLog

    def __init__(
        self,
        engine: Engine,
        *,
        for_write: bool,
        deadline: float | None = None,
        wait_for_locks: bool = True,
    ) -> None:
        self._engine = engine
        self._for_write = for_write
        self._deadline = deadline
        self._wait_for_locks = wait_for_locks
        self._connection: Connection | None = None
        self._committed = False

    def __enter__(self) -> Self:
        if self._connection is not None:
            raise RuntimeError("a unit of work cannot be entered twice")
        try:
            self._connection = connect(
                self._engine, for_write=self._for_write, wait_ms=self._wait_ms()
            )
        except StoreUnavailableError as error:
            self._raise_if_past_deadline(error)
            raise
        self._committed = False
        self.images = SqlImageRepository(self._connection, lock_rows=self._for_write)
        self.requests = SqlRequestLog(self._connection)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            if not self._committed and connection.in_transaction():
                with translated_errors():
                    connection.rollback()
        finally:
            connection.close()
        if isinstance(exc, StoreUnavailableError):
            # A wait the deadline cut short (lock_timeout, statement_timeout).
            self._raise_if_past_deadline(exc)

    def _wait_ms(self) -> int | None:
        """How long this unit of work may wait for a lock, by its deadline."""
        if self._deadline is None:
            return None if self._wait_for_locks else 0
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceededError("the call's deadline passed before the store was reached")
        if not self._wait_for_locks:
            return 0
        return max(1, min(int(left * 1000), _MAX_WAIT_MS))

    def _raise_if_past_deadline(self, error: StoreUnavailableError) -> None:
        if self._deadline is not None and time.monotonic() >= self._deadline - _DEADLINE_SLACK:
            raise DeadlineExceededError(
                f"the call's deadline passed while waiting on the store: {error}"
            ) from error

    def commit(self) -> None:
        """Make the transaction's writes durable."""
        if self._connection is None:
            raise RuntimeError("commit() outside the unit of work's `with` block")
        with translated_errors():
            self._connection.commit()
        self._committed = True


class SqlStore:
    """The database behind a URL: its engine, its schema and its units of work.

    With wait_for_locks=False (SQLite only), a unit of work that finds another writer
    holding the lock raises StoreBusyError at once instead of blocking its thread: the
    caller, an event loop, waits without blocking and tries again.
    """

    def __init__(self, url: str, *, wait_for_locks: bool = True) -> None:
        self.url = url
        self.engine = create_engine_from_url(url)
        if not wait_for_locks and not self.is_embedded:
            self.engine.dispose()
            raise ValueError("only SQLite can answer StoreBusyError instead of waiting")
        self.wait_for_locks = wait_for_locks

    @property
    def is_embedded(self) -> bool:
        """SQLite: the embedded default, which migrates itself on start."""
        return self.engine.dialect.name == "sqlite"

    def unit_of_work(self, *, for_write: bool, deadline: float | None = None) -> SqlUnitOfWork:
        """A new unit of work; pass `store.unit_of_work` where a UnitOfWorkFactory is wanted."""
        return SqlUnitOfWork(
            self.engine, for_write=for_write, deadline=deadline, wait_for_locks=self.wait_for_locks
        )

    def upgrade(self) -> None:
        """Migrate the schema to this code's newest revision (`imageloc db upgrade`)."""
        schema.upgrade(self.engine)

    def require_current_schema(self) -> None:
        """Raise SchemaMismatchError, saying what to run, unless the schema is current."""
        shown = self.engine.url.render_as_string(hide_password=True)
        schema.require_head(self.engine, database_url=shown)

    def prune_requests(self, *, before: datetime.datetime) -> int:
        """Forget idempotent requests' outcomes recorded before `before`.

        Housekeeping never waits long for a lock: the next round will prune instead.
        """
        # Off the event loop, in the maintenance thread: it may wait for the lock.
        deadline = time.monotonic() + 5
        with SqlUnitOfWork(self.engine, for_write=True, deadline=deadline) as uow:
            forgotten = uow.requests.prune(before=before)
            uow.commit()
        return forgotten

    def schema_revision(self) -> str | None:
        """The schema revision the database is at; None when never migrated."""
        return schema.current_revision(self.engine)

    def check(self) -> None:
        """Raise StoreUnavailableError unless the database answers."""
        check_database(self.engine)

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
