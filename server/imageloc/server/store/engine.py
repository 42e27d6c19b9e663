"""Engines from a database URL, tuned for SQLite or PostgreSQL; schema creation; health.

Imports sqlalchemy, sqlmodel, the store's tables and the domain's StoreUnavailableError.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, create_engine, event, exc, make_url, select
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

from imageloc.server.domain.ports import StoreBusyError, StoreUnavailableError

#: Execution option that makes a connection's next transaction take the write lock up front.
FOR_WRITE_OPTION = "imageloc_for_write"

#: How long a SQLite connection waits for another writer's lock before giving up.
SQLITE_BUSY_TIMEOUT_MS = 30_000

#: How long to wait for a PostgreSQL connection, or for a free one in the pool.
CONNECT_TIMEOUT_SECONDS = 3
POOL_TIMEOUT_SECONDS = 5

#: SQLite's pooled connections, and PostgreSQL's outside the event loop (housekeeping, the
#: health check, the CLI, tests); the loop's own are LoopEngine's.
_POOL_SIZE: dict[str, Any] = {"pool_size": 10, "max_overflow": 10}


def is_embedded(url: str) -> bool:
    """Whether url names SQLite, the embedded store (file or in-memory)."""
    return make_url(url).get_backend_name() == "sqlite"


def create_engine_from_url(url: str) -> Engine:
    """An engine for url: SQLite (file or in-memory) or PostgreSQL."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed)
    return create_engine(
        parsed,
        pool_pre_ping=True,
        # Fail fast when the database is away: a call answers UNAVAILABLE within seconds.
        pool_timeout=POOL_TIMEOUT_SECONDS,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS},
        **_POOL_SIZE,
    )


LOOP_POOL_RECYCLE_SECONDS = 300
#: A pooled connection idle this long is pinged before a call uses it; after a lost one,
#: every one is for a while.
LOOP_PING_IDLE_SECONDS = 1.0
LOOP_SUSPECT_SECONDS = 10.0
_IDLE_SINCE = "imageloc_idle_since"


class LoopEngine:
    """A PostgreSQL engine whose connections are psycopg's AsyncConnection, for the event
    loop (SqlStore(event_loop=True)): the pool waits for a free connection on the loop.

    A connection is pinged (a round trip) when it comes out of the pool after lying idle
    for LOOP_PING_IDLE_SECONDS, and every connection is for LOOP_SUSPECT_SECONDS after one
    was found lost (suspect()): those the database dropped in an outage are replaced
    before a call uses them. Under load, with no outage, no call pays for a ping.
    """

    def __init__(self, url: str, *, pool_size: int) -> None:
        self.engine = create_async_engine(
            make_url(url),
            pool_pre_ping=False,
            pool_recycle=LOOP_POOL_RECYCLE_SECONDS,
            pool_timeout=POOL_TIMEOUT_SECONDS,
            connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS},
            # A fixed pool: an overflow connection would be opened and closed per call
            # under load (a PostgreSQL backend started each time); a call waits instead.
            pool_size=pool_size,
            max_overflow=0,
            # No ROLLBACK on the way back (an awaited call even when idle): a unit of work
            # returns only idle connections, and drops any other (SqlUnitOfWork._release).
            pool_reset_on_return=None,
        )
        self._suspect_until = 0.0
        event.listen(self.engine.sync_engine, "checkin", self._on_checkin)
        event.listen(self.engine.sync_engine, "checkout", self._on_checkout)

    def suspect(self) -> None:
        """A connection was lost: ping every one before use for a while."""
        self._suspect_until = time.monotonic() + LOOP_SUSPECT_SECONDS

    @staticmethod
    def _on_checkin(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    def _on_checkout(self, dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        idle_since = record.info.get(_IDLE_SINCE)
        now = time.monotonic()
        if idle_since is None:
            return  # new
        if now - idle_since < LOOP_PING_IDLE_SECONDS and now >= self._suspect_until:
            return  # in steady use
        try:
            cursor = dbapi_connection.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
            dbapi_connection.rollback()  # the ping began a transaction
        except DRIVER_ERRORS as error:
            # The pool discards this connection and checks out another (SQLAlchemy's
            # documented pessimistic disconnect handling).
            raise exc.DisconnectionError(str(error)) from error


def is_memory_sqlite(url: URL) -> bool:
    """Whether url names an in-memory SQLite database (one connection, this process only)."""
    return (url.database or "") in ("", ":memory:") or url.query.get("mode") == "memory"


def _sqlite_engine(url: URL) -> Engine:
    memory = is_memory_sqlite(url)
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False},
        # One shared connection, or each checkout would see its own empty database.
        **({"poolclass": StaticPool} if memory else _POOL_SIZE),
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # The driver's own transaction handling skips BEGIN before SELECT and DDL; turn it
        # off and emit BEGIN ourselves (SQLAlchemy's documented recipe for pysqlite).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if not memory:
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # A writer takes the lock before it reads, so read-decide-write is atomic across
        # processes; a deferred transaction upgraded in WAL mode fails instead of waiting.
        if connection.get_execution_options().get(FOR_WRITE_OPTION):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")

    return engine


_SQLITE_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)

#: What the drivers raise, on the hot path below SQLAlchemy, for failures a retry may cure.
DRIVER_ERRORS = (
    sqlite3.OperationalError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
)

_SQLALCHEMY_ERRORS = (exc.OperationalError, exc.InterfaceError, exc.TimeoutError)


def unavailable(error: Exception) -> StoreUnavailableError:
    """The StoreUnavailableError that stands for a driver's or SQLAlchemy's error.

    StoreBusyError when SQLite's lock is held by another writer.
    """
    cause = getattr(error, "orig", None) or error
    summary = str(error).splitlines()[0] if str(error) else type(error).__name__
    if getattr(cause, "sqlite_errorcode", None) in _SQLITE_BUSY_CODES:
        return StoreBusyError(summary)
    return StoreUnavailableError(summary)


@contextlib.contextmanager
def translated_errors() -> Iterator[None]:
    """Raise StoreUnavailableError for failures a retry may cure: lost connection, lock, timeout.

    Both SQLAlchemy's errors and the drivers' own (the hot path runs on the driver).
    """
    try:
        yield
    except (*_SQLALCHEMY_ERRORS, *DRIVER_ERRORS) as error:
        raise unavailable(error) from error
    except exc.DBAPIError as error:
        if error.connection_invalidated:
            raise unavailable(error) from error
        raise


def connect(engine: Engine, *, for_write: bool, wait_ms: int | None = None) -> Connection:
    """A connection whose transaction has begun.

    wait_ms bounds every wait for a lock (and, on PostgreSQL, every statement) in the
    transaction: SQLite's busy timeout, PostgreSQL's lock_timeout and statement_timeout.
    None waits up to SQLITE_BUSY_TIMEOUT_MS on SQLite and has no bound on PostgreSQL.

    On SQLite a for_write transaction holds the write lock from its start, and a reader's
    transaction is a snapshot from its first read. PostgreSQL readers get a snapshot too
    (REPEATABLE READ), so an image and its locations, read by two statements, agree;
    writers stay READ COMMITTED, where SELECT ... FOR UPDATE waits and then sees the
    latest committed row.
    """
    postgresql = engine.dialect.name == "postgresql"
    with translated_errors():
        connection = engine.connect()
        try:
            if for_write:
                connection.execution_options(**{FOR_WRITE_OPTION: True})
            elif postgresql:
                connection.execution_options(isolation_level="REPEATABLE READ")
            if not postgresql:
                # Before BEGIN IMMEDIATE, which is what waits; straight on the driver
                # connection, so that it starts no transaction of its own.
                busy_ms = SQLITE_BUSY_TIMEOUT_MS if wait_ms is None else wait_ms
                connection.connection.driver_connection.execute(  # type: ignore[union-attr]
                    f"PRAGMA busy_timeout = {int(busy_ms)}"
                )
            connection.begin()
            if postgresql and wait_ms is not None:
                for setting in ("lock_timeout", "statement_timeout"):
                    connection.exec_driver_sql(f"SET LOCAL {setting} = {int(wait_ms)}")
        except BaseException:
            connection.close()
            raise
    return connection


def check_database(engine: Engine) -> None:
    """Raise StoreUnavailableError unless the database answers a trivial query."""
    with translated_errors(), engine.connect() as connection:
        connection.execute(select(1)).one()
