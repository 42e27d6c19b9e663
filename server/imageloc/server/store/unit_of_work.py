"""Units of work (one transaction each) and SqlStore, the store the server opens from a URL.

Imports sqlalchemy, the store's modules, and the domain's ports.
"""

from __future__ import annotations

import contextlib
import datetime
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Self

import psycopg
import psycopg.errors
from psycopg import IsolationLevel
from psycopg.pq import TransactionStatus
from sqlalchemy import Engine
from sqlalchemy.pool import PoolProxiedConnection

from imageloc.server.domain.model import Change
from imageloc.server.domain.ports import (
    DeadlineExceededError,
    ImageRepository,
    RequestRecordedMeanwhileError,
    StoreUnavailableError,
)
from imageloc.server.store import schema
from imageloc.server.store.change_log import CommittedHere, SqlChangeLog
from imageloc.server.store.driver import Driver, LoopDriver, Sql
from imageloc.server.store.engine import (
    SQLITE_BUSY_TIMEOUT_MS,
    LoopEngine,
    check_database,
    create_engine_from_url,
    is_memory_sqlite,
    translated_errors,
)
from imageloc.server.store.group_commit import LoopConnections
from imageloc.server.store.repository import SqlImageRepository
from imageloc.server.store.request_log import (
    RECORD_AT_COMMIT,
    RECORDED_CONSTRAINT,
    SqlRequestLog,
)

#: A wait that ended this close to the deadline was cut short by it.
_DEADLINE_SLACK = 0.05

_REPEATABLE_READ = IsolationLevel.REPEATABLE_READ
_SET_LOCAL_TIMEOUTS = Sql(
    "SELECT set_config('lock_timeout', ?, true), set_config('statement_timeout', ?, true)"
)

#: The longest wait either database accepts (a 32-bit count of milliseconds).
_MAX_WAIT_MS = 2**31 - 1


class SqlUnitOfWork:
    """One transaction on its own pooled driver connection, rolled back unless committed.

    A for_write unit of work holds the write lock from its start on SQLite (BEGIN
    IMMEDIATE) and locks each image it reads on PostgreSQL (SELECT ... FOR UPDATE).
    Readers get a snapshot: SQLite's transaction, PostgreSQL's REPEATABLE READ; writers stay
    READ COMMITTED there, where SELECT ... FOR UPDATE waits and then sees the latest row.
    The statements run on the driver (store/driver.py); SQLAlchemy pools the connections.
    Given loop_connections (an event-loop SQLite store), a reader uses the loop's reader
    connection and a writer a savepoint in the loop turn's shared transaction instead.
    """

    images: ImageRepository
    requests: SqlRequestLog
    changes: SqlChangeLog

    def __init__(
        self,
        engine: Engine,
        *,
        for_write: bool,
        committed: CommittedHere,
        deadline: float | None = None,
        loop_connections: LoopConnections | None = None,
        on_lost: Callable[[], None] | None = None,
        one_statement: bool = False,
    ) -> None:
        self._engine = engine
        self._committed_here = committed
        self._on_lost = on_lost
        self._one_statement = one_statement and not for_write
        self._postgresql = engine.dialect.name == "postgresql"
        self._for_write = for_write
        self._deadline = deadline
        self._loop_connections = loop_connections
        self._pooled: PoolProxiedConnection | None = None
        self._driver: Driver | None = None
        self._committed = False

    def __enter__(self) -> Self:
        if self._driver is not None:
            raise RuntimeError("a unit of work cannot be entered twice")
        wait_ms = self._wait_ms()
        try:
            with translated_errors():
                self._driver = self._connect(wait_ms)
        except StoreUnavailableError as error:
            self._release()
            self._raise_if_past_deadline(error)
            raise
        except BaseException:
            self._release()
            raise
        self._committed = False
        self.images = SqlImageRepository(self._driver, lock_rows=self._for_write)
        self.requests = SqlRequestLog(self._driver)
        self.changes = SqlChangeLog(
            self._driver, encode=self.requests.encoded, committed=self._committed_here
        )
        return self

    def _connect(self, wait_ms: int | None) -> Driver:
        """A driver connection in this unit of work's transaction."""
        if self._loop_connections is not None:
            if self._for_write:
                return self._loop_connections.begin_write()
            return self._loop_connections.begin_read()
        self._pooled = self._engine.raw_connection()
        connection = self._pooled.driver_connection
        driver = (
            LoopDriver(connection)
            if isinstance(connection, psycopg.AsyncConnection)
            else Driver(connection, postgresql=self._postgresql)
        )
        self._begin(driver, wait_ms)
        return driver

    def _begin(self, driver: Driver, wait_ms: int | None) -> None:
        """Begin the transaction; wait_ms bounds its every wait for a lock (see _wait_ms)."""
        connection = driver.connection
        if self._postgresql:
            if self._one_statement:
                # One statement is its own snapshot: no BEGIN, no end, one round trip. The
                # deadline holds without SET LOCAL: the call is cancelled at it, and a
                # connection left mid-statement is discarded (_release).
                driver.begin_autocommit()
                return
            isolation = None if self._for_write else _REPEATABLE_READ
            if wait_ms is None:
                driver.begin(isolation)
            else:
                driver.begin(isolation, (_SET_LOCAL_TIMEOUTS, (str(wait_ms), str(wait_ms))))
            return
        busy_ms = SQLITE_BUSY_TIMEOUT_MS if wait_ms is None else wait_ms
        connection.execute(f"PRAGMA busy_timeout = {int(busy_ms)}")
        # A writer takes the lock before it reads, so read-decide-write is atomic across
        # processes; a deferred transaction upgraded in WAL mode fails instead of waiting.
        connection.execute("BEGIN IMMEDIATE" if self._for_write else "BEGIN")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._driver is None:
            return
        try:
            if not self._committed:
                with translated_errors():
                    self._end("ROLLBACK")
        finally:
            self._release()
        if isinstance(exc, StoreUnavailableError):
            # A wait the deadline cut short (lock_timeout, statement_timeout).
            self._raise_if_past_deadline(exc)

    def _end(self, how: str) -> None:
        """COMMIT or ROLLBACK the transaction."""
        assert self._driver is not None
        if self._loop_connections is not None:
            if self._for_write:
                self._loop_connections.end_write(keep=how == "COMMIT")
            else:
                self._loop_connections.end_read()
            return
        connection = self._driver.connection
        if self._postgresql:
            if how == "COMMIT":
                self._driver.commit()
            else:
                self._driver.rollback()
        elif connection.in_transaction:
            connection.execute(how)

    def _release(self) -> None:
        """Give the connection back to the pool, or drop it when the database broke it or
        its transaction could not be ended (a call cancelled while the database stalled)."""
        pooled, self._pooled, self._driver = self._pooled, None, None
        if pooled is None:
            return
        if self._postgresql:
            connection = pooled.driver_connection
            if (
                connection is None
                or connection.broken
                or (connection.info.transaction_status != TransactionStatus.IDLE)
            ):
                pooled.invalidate()
                if self._on_lost is not None:
                    self._on_lost()  # the others may be lost too
        pooled.close()

    def _wait_ms(self) -> int | None:
        """How long this unit of work may wait for a lock, by its deadline."""
        if self._deadline is None:
            return None
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceededError("the call's deadline passed before the store was reached")
        return max(1, min(int(left * 1000), _MAX_WAIT_MS))

    def _raise_if_past_deadline(self, error: StoreUnavailableError) -> None:
        if self._deadline is not None and time.monotonic() >= self._deadline - _DEADLINE_SLACK:
            raise DeadlineExceededError(
                f"the call's deadline passed while waiting on the store: {error}"
            ) from error

    def commit(self) -> None:
        """Make the transaction's writes durable (with the request log's pending row)."""
        driver = self._driver
        if driver is None:
            raise RuntimeError("commit() outside the unit of work's `with` block")
        pending, self.requests.pending = self.requests.pending, {}
        if pending:
            with _recorded_meanwhile(), translated_errors():
                driver.run_then_commit([(RECORD_AT_COMMIT, row) for row in pending.values()])
        else:
            with translated_errors():
                self._end("COMMIT")
        self._committed = True

    def commit_change(self, change: Change, *, request_log_id: str | None) -> int:
        """Log change at the next revision and commit (UnitOfWork.commit_change); on
        PostgreSQL the revision's statements and COMMIT go in one round trip."""
        driver = self._driver
        if driver is None:
            raise RuntimeError("commit_change() outside the unit of work's `with` block")
        pending, self.requests.pending = self.requests.pending, {}
        recorded = None if request_log_id is None else pending.pop(request_log_id, None)
        statements = self.changes.commit_statements(
            change, request_log_id=request_log_id, recorded=recorded
        )
        statements += [(RECORD_AT_COMMIT, row) for row in pending.values()]
        if self._postgresql:
            with _recorded_meanwhile(), translated_errors():
                row = driver.run_then_commit(statements)
            self._committed = True
        else:
            (take, values), rest = statements[0], statements[1:]
            row = driver.row(take, values)
            for statement, values in rest:
                driver.count(statement, values)
            self.commit()
        assert row is not None, "store_state has no row: the schema is not migrated"
        revision = int(row[0])
        self.changes.committed(revision)
        return revision


@contextlib.contextmanager
def _recorded_meanwhile() -> Iterator[None]:
    """The request log's row, sent with COMMIT, as RequestRecordedMeanwhileError when an
    attempt of the same request recorded first (the transaction is rolled back)."""
    try:
        yield
    except psycopg.errors.UniqueViolation as error:
        if error.diag.constraint_name != RECORDED_CONSTRAINT:
            raise
        raise RequestRecordedMeanwhileError(str(error).splitlines()[0]) from error


class SqlStore:
    """The database behind a URL: its engine, its schema and its units of work.

    With event_loop=True, units of work are for the one event loop thread that serves
    calls. On SQLite they run inline: they never wait for a lock (StoreBusyError at once,
    and the caller sleeps), and the writes of one loop turn commit together
    (group_commit.py). On PostgreSQL they run in greenlets on the loop (LoopCalls) over
    psycopg's AsyncConnection: no thread per call. An in-memory database is one
    connection that no other process shares: its units of work take turns on it, each
    committing its own transaction. Housekeeping and migrations use the blocking engine.
    """

    def __init__(
        self,
        url: str,
        *,
        event_loop: bool = False,
        loop_pool_size: int = 16,
        on_commit_batch: Callable[[int], None] = lambda units: None,
    ) -> None:
        self.url = url
        self.engine = create_engine_from_url(url)
        self._loop_connections: LoopConnections | None = None
        self._loop_engine: LoopEngine | None = None
        # The changes this process's units of work committed (the feed's reads need not
        # decode them); the loop's group commit forgets them when a COMMIT fails.
        self._committed = CommittedHere()
        if event_loop and not self.is_embedded:
            self._loop_engine = LoopEngine(url, pool_size=loop_pool_size)
        elif event_loop and not is_memory_sqlite(self.engine.url):
            self._loop_connections = LoopConnections(
                self.engine, on_failed_commit=self._committed.forget, on_commit=on_commit_batch
            )

    @property
    def is_embedded(self) -> bool:
        """SQLite: the embedded default, which migrates itself on start."""
        return self.engine.dialect.name == "sqlite"

    def unit_of_work(
        self, *, for_write: bool, deadline: float | None = None, one_statement: bool = False
    ) -> SqlUnitOfWork:
        """A new unit of work; pass `store.unit_of_work` where a UnitOfWorkFactory is wanted."""
        if self._loop_engine is not None:
            return SqlUnitOfWork(
                self._loop_engine.engine.sync_engine,
                for_write=for_write,
                deadline=deadline,
                on_lost=self._loop_engine.suspect,
                one_statement=one_statement,
                committed=self._committed,
            )
        return SqlUnitOfWork(
            self.engine,
            for_write=for_write,
            deadline=deadline,
            loop_connections=self._loop_connections,
            committed=self._committed,
        )

    async def durable(self) -> None:
        """Wait until the writes of the current task are committed (event_loop stores)."""
        if self._loop_connections is not None:
            await self._loop_connections.durable()

    def upgrade(self) -> None:
        """Migrate the schema to this code's newest revision (`imageloc db upgrade`)."""
        schema.upgrade(self.engine)

    def require_current_schema(self) -> None:
        """Raise SchemaMismatchError, saying what to run, unless the schema is current."""
        shown = self.engine.url.render_as_string(hide_password=True)
        schema.require_head(self.engine, database_url=shown)

    def prune_requests(self, *, before: datetime.datetime) -> int:
        """Forget idempotent requests' outcomes recorded before `before`."""
        return self._housekeep(lambda uow: uow.requests.prune(before=before))

    def prune_changes(self, *, before: datetime.datetime) -> int:
        """Forget the changes committed before `before`; the new compact revision, or 0."""
        return self._housekeep(lambda uow: uow.changes.prune(before=before))

    def _housekeep(self, work: Callable[[SqlUnitOfWork], int]) -> int:
        """work in a write unit of work of its own, committed.

        Housekeeping never waits long for a lock: the next round will do it instead.
        """
        # Off the event loop, in the maintenance thread: it may wait for the lock.
        deadline = time.monotonic() + 5
        with SqlUnitOfWork(
            self.engine, for_write=True, committed=self._committed, deadline=deadline
        ) as uow:
            done = work(uow)
            uow.commit()
        return done

    def schema_revision(self) -> str | None:
        """The schema revision the database is at; None when never migrated."""
        return schema.current_revision(self.engine)

    def check(self) -> None:
        """Raise StoreUnavailableError unless the database answers."""
        check_database(self.engine)

    async def close_loop_connections(self) -> None:
        """Close the event loop's PostgreSQL connections (on that loop, before dispose)."""
        if self._loop_engine is not None:
            await self._loop_engine.engine.dispose()

    def dispose(self) -> None:
        """Close every pooled connection (the loop's: close_loop_connections)."""
        if self._loop_connections is not None:
            self._loop_connections.close()
        self.engine.dispose()
