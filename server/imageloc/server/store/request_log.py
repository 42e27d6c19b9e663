"""The request log: first outcomes of idempotent requests, on the unit of work's connection.

Imports the store's driver and repository encodings, and the domain's values and ports.
"""

from __future__ import annotations

import datetime
from typing import Any

from imageloc.server.domain.model import Image, Location
from imageloc.server.domain.ports import RecordedOutcome, RequestKey
from imageloc.server.store.driver import Driver, Rider, Sql
from imageloc.server.store.repository import (
    COLUMN_NAMES,
    LATER_COLUMNS,
    image_columns,
    image_from_columns,
    plain_json,
)

_CREATED, _UPDATED = COLUMN_NAMES.index("created_at"), COLUMN_NAMES.index("updated_at")

_FIND = Sql("SELECT fingerprint, outcome FROM request_log WHERE request_id = ?")
#: A row's columns, in the order record() gives their values.
REQUEST_COLUMNS = "request_id, fingerprint, image_id, outcome, created_at"
_RECORD = Sql(
    f"INSERT INTO request_log ({REQUEST_COLUMNS}) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (request_id) DO NOTHING"
)
#: PostgreSQL's: sent with COMMIT, where an attempt that recorded first is a unique violation.
RECORD_AT_COMMIT = Sql(f"INSERT INTO request_log ({REQUEST_COLUMNS}) VALUES (?, ?, ?, ?, ?)")
#: The constraint an attempt that recorded first violates.
RECORDED_CONSTRAINT = "request_log_pkey"
_PRUNE = Sql("DELETE FROM request_log WHERE created_at < ?")


class SqlRequestLog:
    """RequestLog over the `request_log` table."""

    def __init__(self, driver: Driver) -> None:
        self._driver = driver
        self._expected: tuple[str, Rider] | None = None  # expect()'s lookup, riding
        self._encoded: tuple[Image, Any] | None = None
        #: PostgreSQL: the rows record() wrote, by log id, to be sent with COMMIT.
        self.pending: dict[str, tuple[Any, ...]] = {}

    def encoded(self, image: Image) -> Any:
        """image as the JSON parameter the store writes; the image this unit of work
        records is the one its change logs, so it is encoded once for both."""
        if self._encoded is not None and self._encoded[0] is image:
            return self._encoded[1]
        value = self._driver.json_in(encode_image(image))
        self._encoded = (image, value)
        return value

    def find(self, log_id: str) -> RecordedOutcome | None:
        """The recorded outcome of the request with this RequestKey.log_id, or None."""
        expected, self._expected = self._expected, None
        if expected is not None and expected[0] == log_id and expected[1].done:
            rows = expected[1].rows
            row = rows[0] if rows else None
        else:
            row = self._driver.row(_FIND, (log_id,))
        if row is None:
            return None
        fingerprint, outcome = row
        return RecordedOutcome(
            fingerprint=fingerprint, image=decode_image(self._driver.json_out(outcome))
        )

    def expect(self, log_id: str) -> None:
        """Send find(log_id)'s lookup with the next statements the driver sends together
        (PostgreSQL's loop driver; elsewhere find looks it up itself)."""
        rider = self._driver.ride(_FIND, (log_id,))
        self._expected = None if rider is None else (log_id, rider)

    def record(self, key: RequestKey, image: Image, *, at: datetime.datetime) -> bool:
        """Record key's outcome; False when the id was recorded already (nothing written).

        On PostgreSQL the row goes with COMMIT, a round trip saved: False only when this
        unit of work recorded the id already, and one another transaction recorded first
        fails the commit instead (RequestRecordedMeanwhileError).
        """
        driver = self._driver
        values = (
            key.log_id,
            key.fingerprint,
            image.id,
            self.encoded(image),
            driver.time_in(at),
        )
        if driver.postgresql:
            if key.log_id in self.pending:
                return False
            self.pending[key.log_id] = values
            return True
        return bool(driver.count(_RECORD, values) == 1)

    def prune(self, *, before: datetime.datetime) -> int:
        """Forget outcomes recorded before `before`; how many were forgotten."""
        return int(self._driver.count(_PRUNE, (self._driver.time_in(before),)))


def encode_image(image: Image) -> dict[str, Any]:
    """image as JSON values, keyed by column name."""
    encoded = dict(zip(COLUMN_NAMES, image_columns(image), strict=True))
    encoded["created_at"] = image.created_at.isoformat()
    encoded["updated_at"] = image.updated_at.isoformat()
    encoded["locations"] = [
        {"url": location.url, "metadata": plain_json(location.metadata)}
        for location in image.locations
    ]
    return encoded


def decode_image(encoded: dict[str, Any]) -> Image:
    """The image encode_image encoded."""
    # Outcomes recorded before a column was added have the value its rows were given.
    values = [encoded[name] if name in encoded else LATER_COLUMNS[name] for name in COLUMN_NAMES]
    values[_CREATED] = datetime.datetime.fromisoformat(encoded["created_at"])
    values[_UPDATED] = datetime.datetime.fromisoformat(encoded["updated_at"])
    locations = tuple(
        Location(url=location["url"], metadata=dict(location["metadata"] or {}))
        for location in encoded["locations"]
    )
    return image_from_columns(values, locations)
