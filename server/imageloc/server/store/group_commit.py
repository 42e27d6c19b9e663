"""SQLite on the event loop: a reader connection, and a writer whose writes commit together.

Imports asyncio, the store's driver and engine helpers, and the domain's ports.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sqlite3
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.pool import PoolProxiedConnection

from imageloc.server.domain.ports import StoreUnavailableError
from imageloc.server.store.driver import Driver
from imageloc.server.store.engine import translated_errors

log = logging.getLogger(__name__)

#: The commit the current task's write joined, until it has awaited it.
_JOINED: contextvars.ContextVar[asyncio.Future[None] | None] = contextvars.ContextVar(
    "imageloc_joined_commit", default=None
)


class LoopConnections:
    """The connections of the one event loop thread that uses them (group commit).

    Every handler runs to completion on the loop, so the writes of one loop turn run one
    after the other. The first opens a transaction on the writer (BEGIN IMMEDIATE) and
    schedules its COMMIT for the end of the turn; each write is a SAVEPOINT inside it,
    released when its unit of work commits and rolled back alone when it does not. A call
    whose write joined the transaction is answered only after the COMMIT (`durable`), so
    nothing is acknowledged that is not on disk, and one COMMIT serves the whole turn.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        on_failed_commit: Callable[[], None],
        on_commit: Callable[[int], None] = lambda units: None,
    ) -> None:
        self._engine = engine
        self._on_failed_commit = on_failed_commit  # the turn's revisions will be taken again
        self._on_commit = on_commit  # told how many units of work each COMMIT made durable
        self._units = 0  # in this turn's transaction
        self._pooled: list[PoolProxiedConnection] = []
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._commit: asyncio.Future[None] | None = None

    def begin_read(self) -> Driver:
        """The reader, in a new snapshot transaction."""
        if self._reader is None:
            self._reader = self._checkout()
        self._reader.execute("BEGIN")
        return Driver(self._reader, postgresql=False)

    def end_read(self) -> None:
        """End the reader's transaction."""
        assert self._reader is not None
        if self._reader.in_transaction:
            self._reader.execute("ROLLBACK")

    def begin_write(self) -> Driver:
        """The writer, in a savepoint of this turn's transaction (opened here if need be).

        StoreBusyError, with nothing begun, when another process holds the write lock.
        """
        if self._writer is None:
            self._writer = self._checkout()
        connection = self._writer
        if self._commit is None:
            loop = asyncio.get_running_loop()  # before BEGIN: no loop, no lock taken
            connection.execute("BEGIN IMMEDIATE")
            self._commit = loop.create_future()
            self._commit.add_done_callback(_retrieved)
            loop.call_soon(self._commit_turn)
        _JOINED.set(self._commit)
        self._units += 1
        connection.execute("SAVEPOINT unit_of_work")
        return Driver(connection, postgresql=False)

    def end_write(self, *, keep: bool) -> None:
        """Release the unit of work's savepoint (keep) or undo it.

        If the transaction did not survive (SQLite ends it on some I/O errors), every write
        of the turn is lost: their calls are told so by `durable`.
        """
        assert self._writer is not None
        connection = self._writer
        try:
            if not keep and connection.in_transaction:
                connection.execute("ROLLBACK TO SAVEPOINT unit_of_work")
            if connection.in_transaction:
                connection.execute("RELEASE SAVEPOINT unit_of_work")
        finally:
            if not connection.in_transaction:
                self._fail_turn(StoreUnavailableError("the store ended the write transaction"))

    async def durable(self) -> None:
        """Wait for the COMMIT of the transaction this task's writes joined, if any."""
        joined = _JOINED.get()
        if joined is None:
            return
        _JOINED.set(None)
        await asyncio.shield(joined)

    def close(self) -> None:
        """Roll back what is not committed and give the connections back to the pool."""
        for connection in (self._reader, self._writer):
            if connection is not None and connection.in_transaction:
                connection.execute("ROLLBACK")
        for pooled in self._pooled:
            pooled.close()
        self._pooled.clear()
        self._reader = self._writer = None

    def _checkout(self) -> sqlite3.Connection:
        with translated_errors():
            pooled = self._engine.raw_connection()
        self._pooled.append(pooled)
        connection = pooled.driver_connection
        assert isinstance(connection, sqlite3.Connection)
        # Never wait for a lock on the loop: StoreBusyError, and the caller sleeps.
        connection.execute("PRAGMA busy_timeout = 0")
        return connection

    def _commit_turn(self) -> None:
        commit, self._commit = self._commit, None
        units, self._units = self._units, 0
        if commit is None or commit.done():
            return
        assert self._writer is not None
        try:
            with translated_errors():
                self._writer.execute("COMMIT")
        except StoreUnavailableError as error:
            self._rollback()
            commit.set_exception(error)
        else:
            commit.set_result(None)
            self._on_commit(units)

    def _fail_turn(self, error: StoreUnavailableError) -> None:
        commit, self._commit = self._commit, None
        self._units = 0
        self._rollback()
        if commit is not None and not commit.done():
            commit.set_exception(error)

    def _rollback(self) -> None:
        """Undo the turn's transaction, if SQLite still has it; the turn fails either way."""
        assert self._writer is not None
        self._on_failed_commit()
        connection = self._writer
        try:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
        except sqlite3.Error:
            log.exception("could not roll back a failed write transaction")


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Mark the outcome seen: a waiter may have been cancelled (its deadline) meanwhile."""
    if not future.cancelled():
        future.exception()
