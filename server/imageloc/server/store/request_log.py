"""The request log: first outcomes of idempotent requests, on the unit of work's connection.

Imports sqlalchemy, the store's tables and repository codecs, and the domain's values and ports.
"""

from __future__ import annotations

import datetime
import types
from typing import Any

from sqlalchemy import Connection, delete, insert, select
from sqlalchemy.exc import IntegrityError

from imageloc.server.domain.model import Image
from imageloc.server.domain.ports import RecordedOutcome, RequestKey
from imageloc.server.store.engine import translated_errors
from imageloc.server.store.repository import (
    image_from_row,
    image_values,
    location_from_row,
    plain_json,
)
from imageloc.server.store.tables import request_log


class SqlRequestLog:
    """RequestLog over the `request_log` table."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def find(self, request_id: str) -> RecordedOutcome | None:
        """The recorded outcome of request_id, or None."""
        statement = select(request_log.c.fingerprint, request_log.c.outcome).where(
            request_log.c.request_id == request_id
        )
        with translated_errors():
            row = self._connection.execute(statement).first()
        if row is None:
            return None
        return RecordedOutcome(fingerprint=row.fingerprint, image=decode_image(row.outcome))

    def record(self, key: RequestKey, image: Image, *, at: datetime.datetime) -> bool:
        """Record key's outcome; False when the id was recorded already (nothing written)."""
        values = {
            "request_id": key.request_id,
            "fingerprint": key.fingerprint,
            "image_id": image.id,
            "outcome": encode_image(image),
            "created_at": at,
        }
        with translated_errors():
            try:
                with self._connection.begin_nested():
                    self._connection.execute(insert(request_log).values(values))
            except IntegrityError:
                return False
        return True

    def prune(self, *, before: datetime.datetime) -> int:
        """Forget outcomes recorded before `before`; how many were forgotten."""
        statement = delete(request_log).where(request_log.c.created_at < before)
        with translated_errors():
            return int(self._connection.execute(statement).rowcount)


def encode_image(image: Image) -> dict[str, Any]:
    """image as JSON values."""
    encoded = image_values(image, with_id=True)
    encoded["created_at"] = image.created_at.isoformat()
    encoded["updated_at"] = image.updated_at.isoformat()
    encoded["locations"] = [
        {"url": location.url, "metadata": plain_json(location.metadata)}
        for location in image.locations
    ]
    return encoded


def decode_image(encoded: dict[str, Any]) -> Image:
    """The image encode_image encoded."""
    fields = dict(encoded)
    fields["created_at"] = datetime.datetime.fromisoformat(fields["created_at"])
    fields["updated_at"] = datetime.datetime.fromisoformat(fields["updated_at"])
    locations = tuple(
        location_from_row(location["url"], location["metadata"])
        for location in fields.pop("locations")
    )
    return image_from_row(types.SimpleNamespace(**fields), locations)
