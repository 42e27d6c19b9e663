"""The store's SQL on the raw driver connection (sqlite3 or psycopg), in the schema's encodings.

Imports psycopg, SQLAlchemy's greenlet bridge (await_only) and the store's error translation.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import operator
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from psycopg import AsyncClientCursor, IsolationLevel
from psycopg.pq import TransactionStatus
from psycopg.types.json import Json
from sqlalchemy.util import await_only

from imageloc.server.store.engine import DRIVER_ERRORS, unavailable

_ALL = operator.methodcaller("fetchall")
_FIRST = operator.methodcaller("fetchone")
_ROWCOUNT = operator.attrgetter("rowcount")

T = TypeVar("T")


class Sql:
    """One statement, written with `?` placeholders, ready for either driver.

    The hot path pays no ORM or SQLAlchemy execution cost: statements are plain SQL written
    once, values encoded as the SQLModel tables store them.
    """

    __slots__ = ("postgresql", "sqlite")

    def __init__(self, text: str) -> None:
        self.sqlite = text
        self.postgresql = text.replace("?", "%s")


#: Statements with their parameters, to run in order.
Statements = list[tuple[Sql, Sequence[Any]]]


class Rider:
    """A statement sent after others (Driver.ride), and its rows once it has run."""

    __slots__ = ("done", "rows", "statement")

    def __init__(self, statement: str) -> None:
        self.statement = statement  # bound
        self.rows: list[Any] = []
        self.done = False


class Driver:
    """One DBAPI connection in a transaction that the unit of work began.

    A lost connection, a lock or a timeout raises StoreUnavailableError (StoreBusyError for
    SQLite's lock), as SQLAlchemy's errors do elsewhere in the store.
    """

    def __init__(self, connection: Any, *, postgresql: bool) -> None:
        self.connection = connection
        self.postgresql = postgresql

    def rows(self, statement: Sql, parameters: Sequence[Any] = ()) -> list[Any]:
        """Every row statement answers."""
        return self._run(statement, parameters, _ALL)  # type: ignore[no-any-return]

    def row(self, statement: Sql, parameters: Sequence[Any] = ()) -> Any | None:
        """The first row statement answers, or None."""
        return self._run(statement, parameters, _FIRST)

    def count(self, statement: Sql, parameters: Sequence[Any] = ()) -> int:
        """How many rows statement changed."""
        return int(self._run(statement, parameters, _ROWCOUNT))

    def rows_of(self, statements: Statements) -> list[list[Any]]:
        """Every row of each statement, run in order (in one round trip where it can)."""
        return [self.rows(statement, values) for statement, values in statements]

    def changes_of(self, statements: Statements) -> int:
        """How many rows the first statement changed; the others run after it (in one
        round trip where it can), or, here, only when it changed some. The caller must not
        commit when it changed none: the others may have run."""
        first, *rest = statements
        changed = self.count(*first)
        if changed:
            for statement, values in rest:
                self.count(statement, values)
        return changed

    def ride(self, statement: Sql, parameters: Sequence[Any] = ()) -> Rider | None:
        """statement, to be sent after the next statements sent together, its rows in the
        Rider once they are; None where statements are sent one at a time (here)."""
        return None

    def _run(self, statement: Sql, parameters: Sequence[Any], take: Callable[[Any], Any]) -> Any:
        """What take reads off the cursor of statement; fetching may fail too (SQLite steps)."""
        try:
            return take(self.connection.execute(self._sql(statement), parameters))
        except DRIVER_ERRORS as error:
            raise unavailable(error) from error

    def _sql(self, statement: Sql) -> str:
        return statement.postgresql if self.postgresql else statement.sqlite

    # PostgreSQL's transactions (SQLite's are plain statements: the unit of work's).

    def begin_autocommit(self) -> None:
        """Run each statement on its own, outside a transaction."""
        self.connection.autocommit = True

    def begin(
        self, isolation: IsolationLevel | None, settings: tuple[Sql, Sequence[Any]] | None = None
    ) -> None:
        """Begin a transaction at isolation (None: the server's default, READ COMMITTED)
        with settings, a statement that SET LOCALs, and its parameters (None: none)."""
        self.connection.autocommit = False
        self.connection.isolation_level = isolation
        if settings is not None:  # SET LOCAL, in one round trip; it begins the transaction
            self.count(*settings)

    def commit(self) -> None:
        """COMMIT."""
        self.connection.commit()

    def run_then_commit(self, statements: Statements) -> Any:
        """Run statements, then COMMIT, in one round trip (pipeline mode); the first row
        of the first statement (None when it returns none). PostgreSQL only (SQLite: one
        statement at a time)."""
        connection = self.connection
        try:
            with connection.pipeline():
                cursors = [connection.execute(s.postgresql, values) for s, values in statements]
                connection.commit()
            return cursors[0].fetchone() if cursors[0].description else None
        except DRIVER_ERRORS as error:
            raise unavailable(error) from error

    def rollback(self) -> None:
        """ROLLBACK."""
        self.connection.rollback()

    def time_in(self, value: datetime.datetime) -> Any:
        """A tz-aware timestamp as its column stores it (UTC)."""
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the store keeps tz-aware UTC only")
        utc = value.astimezone(datetime.UTC)
        if self.postgresql:
            return utc
        # SQLAlchemy's SQLite DATETIME text, so that stored rows compare and sort as one.
        return utc.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")

    def time_out(self, value: Any) -> datetime.datetime:
        """A stored timestamp as a tz-aware UTC datetime."""
        if isinstance(value, str):
            return datetime.datetime.fromisoformat(value).replace(tzinfo=datetime.UTC)
        if value.tzinfo is None:
            return value.replace(tzinfo=datetime.UTC)  # type: ignore[no-any-return]
        return value.astimezone(datetime.UTC)  # type: ignore[no-any-return]

    def json_in(self, value: Any) -> Any:
        """A JSON value as its column stores it."""
        return Json(value) if self.postgresql else json.dumps(value)

    def json_out(self, value: Any) -> Any:
        """A stored JSON value, decoded (PostgreSQL's driver decodes a json column itself;
        one read as its text is decoded here)."""
        if not isinstance(value, str):
            return value
        # Most locations carry no metadata, most images no tags or properties.
        return _EMPTY_JSON[value]() if value in _EMPTY_JSON else json.loads(value)


#: Empty JSON texts, known without decoding.
_EMPTY_JSON: dict[str, Callable[[], Any]] = {"{}": dict, "[]": list}


class LoopDriver(Driver):
    """A psycopg AsyncConnection, driven by the store's blocking code on the event loop.

    The unit of work runs in a greenlet (rpc/store_calls.py's LoopCalls); each statement
    awaits the network on the loop (await_only), so a call needs no thread and no hand-off.
    Round trips are saved by sending statements together, as one query of several
    statements with their values bound by psycopg (its ClientCursor, which quotes each
    value as a literal of its type): the transaction's BEGIN and settings go with its first
    statements, rows_of sends its statements together, and run_then_commit sends the last
    statements with COMMIT. The connection stays in autocommit mode and the transaction is
    begun and ended by these statements, so psycopg sends no BEGIN of its own. (Pipeline
    mode did the same in as many round trips, at about twice the CPU in psycopg's Python.)
    """

    def __init__(self, connection: Any) -> None:
        super().__init__(connection, postgresql=True)
        self._prelude: list[str] = []  # BEGIN and the settings, bound, until a statement runs
        self._riders: list[Rider] = []  # sent after the next statements sent together
        self._cursor = AsyncClientCursor(connection)

    def ride(self, statement: Sql, parameters: Sequence[Any] = ()) -> Rider | None:
        rider = Rider(self._cursor.mogrify(statement.postgresql, parameters))
        self._riders.append(rider)
        return rider

    def _run(self, statement: Sql, parameters: Sequence[Any], take: Callable[[Any], Any]) -> Any:
        if self._prelude:
            (result,) = _awaited(self._together([(statement, parameters)]))
            if take is _ROWCOUNT:
                return result.rowcount
            return result.rows if take is _ALL else (result.rows[0] if result.rows else None)
        cursor = _awaited(self.connection.execute(statement.postgresql, parameters))
        return cursor.rowcount if take is _ROWCOUNT else _awaited(take(cursor))

    def rows_of(self, statements: Statements) -> list[list[Any]]:
        return [result.rows for result in _awaited(self._together(statements))]

    def changes_of(self, statements: Statements) -> int:
        (first, *_) = _awaited(self._together(statements))
        return first.rowcount

    def begin_autocommit(self) -> None:
        await_only(self.connection.set_autocommit(True))  # no round trip

    def begin(
        self, isolation: IsolationLevel | None, settings: tuple[Sql, Sequence[Any]] | None = None
    ) -> None:
        await_only(self.connection.set_autocommit(True))  # no round trip; BEGIN is ours
        self._prelude = [_BEGIN[isolation]]
        if settings is not None:
            statement, values = settings
            self._prelude.append(self._cursor.mogrify(statement.postgresql, values))

    def commit(self) -> None:
        if self._prelude:  # nothing ran: no transaction began
            self._prelude = []
            return
        _awaited(self._cursor.execute("COMMIT"))

    def rollback(self) -> None:
        if self._prelude:
            self._prelude = []
            return
        if self.connection.info.transaction_status != TransactionStatus.IDLE:
            await_only(self._cursor.execute("ROLLBACK"))

    def run_then_commit(self, statements: Statements) -> Any:
        (first, *_) = _awaited(self._together(statements, commit=True))
        return first.rows[0] if first.rows else None

    async def _together(self, statements: Statements, *, commit: bool = False) -> list[_Result]:
        """The results of statements, sent in one round trip after the prelude (and
        COMMIT after them); the prelude's and COMMIT's results are left out."""
        cursor = self._cursor
        prelude, self._prelude = self._prelude, []
        riders, self._riders = self._riders, []
        texts = [*prelude, *(cursor.mogrify(s.postgresql, values) for s, values in statements)]
        texts += (rider.statement for rider in riders)
        if commit:
            texts.append("COMMIT")
        await cursor.execute("; ".join(texts))
        results = []
        while True:
            rows = await cursor.fetchall() if cursor.description else []
            results.append(_Result(rows, cursor.rowcount))
            if not cursor.nextset():
                break
        ridden = len(prelude) + len(statements)
        for rider, result in zip(riders, results[ridden:], strict=False):
            rider.rows, rider.done = result.rows, True
        return results[len(prelude) : ridden]


@dataclasses.dataclass(frozen=True, slots=True)
class _Result:
    """One statement's rows (none when it returns none) and how many rows it changed."""

    rows: list[Any]
    rowcount: int


_BEGIN = {
    None: "BEGIN",
    IsolationLevel.READ_COMMITTED: "BEGIN ISOLATION LEVEL READ COMMITTED",
    IsolationLevel.REPEATABLE_READ: "BEGIN ISOLATION LEVEL REPEATABLE READ",
    IsolationLevel.SERIALIZABLE: "BEGIN ISOLATION LEVEL SERIALIZABLE",
}


def _awaited(awaitable: Awaitable[T]) -> T:
    """awaitable's result, awaited on the loop from the greenlet (await_only); a driver's
    failure as StoreUnavailableError, as Driver's statements raise it."""
    try:
        return await_only(awaitable)
    except DRIVER_ERRORS as error:
        raise unavailable(error) from error
