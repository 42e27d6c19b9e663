"""The store's SQL on the raw driver connection (sqlite3 or psycopg), in the schema's encodings.

The hot path pays no ORM or SQLAlchemy execution cost: statements are plain SQL written
once, values are encoded as the SQLModel tables store them (timestamps as SQLite's text
or timestamptz, metadata as JSON). Imports the standard library and psycopg's JSON adapter.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Sequence
from typing import Any

from psycopg.types.json import Json


class Sql:
    """One statement, written with `?` placeholders, ready for either driver."""

    __slots__ = ("postgresql", "sqlite")

    def __init__(self, text: str) -> None:
        self.sqlite = text
        self.postgresql = text.replace("?", "%s")


class Driver:
    """One DBAPI connection in a transaction that the unit of work began.

    Errors come from the driver itself; the unit of work translates them.
    """

    def __init__(self, connection: Any, *, postgresql: bool) -> None:
        self.connection = connection
        self.postgresql = postgresql

    def execute(self, statement: Sql, parameters: Sequence[Any] = ()) -> Any:
        """Run statement; the cursor, for its rows or rowcount."""
        sql = statement.postgresql if self.postgresql else statement.sqlite
        return self.connection.execute(sql, parameters)

    def execute_many(self, statement: Sql, rows: Iterable[Sequence[Any]]) -> None:
        """Run statement once per row of parameters."""
        sql = statement.postgresql if self.postgresql else statement.sqlite
        self.connection.cursor().executemany(sql, rows)

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
