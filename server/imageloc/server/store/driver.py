"""The store's SQL on the raw driver connection (sqlite3 or psycopg), in the schema's encodings.

Imports psycopg's JSON adapter and the store's error translation.
"""

from __future__ import annotations

import datetime
import json
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from psycopg.types.json import Json

from imageloc.server.store.engine import DRIVER_ERRORS, unavailable

_ALL = operator.methodcaller("fetchall")
_FIRST = operator.methodcaller("fetchone")
_ROWCOUNT = operator.attrgetter("rowcount")


class Sql:
    """One statement, written with `?` placeholders, ready for either driver.

    The hot path pays no ORM or SQLAlchemy execution cost: statements are plain SQL written
    once, values encoded as the SQLModel tables store them.
    """

    __slots__ = ("postgresql", "sqlite")

    def __init__(self, text: str) -> None:
        self.sqlite = text
        self.postgresql = text.replace("?", "%s")


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

    def run_many(self, statement: Sql, rows: Iterable[Sequence[Any]]) -> None:
        """Run statement once per row of parameters."""
        try:
            self.connection.cursor().executemany(self._sql(statement), rows)
        except DRIVER_ERRORS as error:
            raise unavailable(error) from error

    def _run(self, statement: Sql, parameters: Sequence[Any], take: Callable[[Any], Any]) -> Any:
        """What take reads off the cursor of statement; fetching may fail too (SQLite steps)."""
        try:
            return take(self.connection.execute(self._sql(statement), parameters))
        except DRIVER_ERRORS as error:
            raise unavailable(error) from error

    def _sql(self, statement: Sql) -> str:
        return statement.postgresql if self.postgresql else statement.sqlite

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
        """A stored JSON value, decoded."""
        if self.postgresql:
            return value
        return {} if value == "{}" else json.loads(value)  # most locations carry no metadata
