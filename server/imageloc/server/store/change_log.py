"""The change log: store revisions taken in commit order, and the changes logged at them.

Imports the store's driver and image encoding, and the domain's values and ports.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from imageloc.server.domain.model import Change, ChangeType
from imageloc.server.domain.ports import StoreHead
from imageloc.server.store.driver import Driver, Sql
from imageloc.server.store.request_log import decode_image, encode_image

# The one row's lock orders the writers: PostgreSQL holds it to the end of the transaction,
# so a revision taken later commits later (no reader sees 101 while 100 is in flight);
# SQLite's writer holds the database's lock anyway.
_NEXT_REVISION = Sql(
    "UPDATE store_state SET revision = revision + 1 WHERE id = 1 RETURNING revision"
)
_HEAD = Sql("SELECT revision, compact_revision FROM store_state WHERE id = 1")
_APPEND = Sql(
    "INSERT INTO image_changes (revision, image_id, type, image, commit_time)"
    " VALUES (?, ?, ?, ?, ?)"
)
_AFTER = Sql(
    "SELECT revision, type, image, commit_time FROM image_changes"
    " WHERE revision > ? ORDER BY revision LIMIT ?"
)
#: Delivered at COMMIT to every replica LISTENing (store/notifications.py): a wake-up only,
#: never the data, which the feed reads from the log.
CHANNEL = "imageloc_changes"
_NOTIFY = Sql(f"SELECT pg_notify('{CHANNEL}', '')")
_NEWEST_BEFORE = Sql("SELECT MAX(revision) FROM image_changes WHERE commit_time < ?")
_PRUNE = Sql("DELETE FROM image_changes WHERE revision <= ?")
_COMPACT = Sql("UPDATE store_state SET compact_revision = ? WHERE id = 1 AND compact_revision < ?")


class SqlChangeLog:
    """ChangeLog over the `store_state` and `image_changes` tables."""

    def __init__(self, driver: Driver) -> None:
        self._driver = driver

    def next_revision(self) -> int:
        """Take the store's next revision (the row stays locked until the transaction ends)."""
        row = self._driver.row(_NEXT_REVISION)
        assert row is not None, "store_state has no row: the schema is not migrated"
        return int(row[0])

    def append(self, change: Change) -> None:
        """Log change in this transaction."""
        driver = self._driver
        driver.count(
            _APPEND,
            (
                change.revision,
                change.image.id,
                change.type.value,
                driver.json_in(encode_image(change.image)),
                driver.time_in(change.commit_time),
            ),
        )
        if driver.postgresql:
            driver.row(_NOTIFY)

    def head(self) -> StoreHead:
        """The newest committed revision and the compact revision."""
        row = self._driver.row(_HEAD)
        assert row is not None, "store_state has no row: the schema is not migrated"
        return StoreHead(revision=int(row[0]), compact_revision=int(row[1]))

    def after(self, revision: int, *, limit: int) -> Sequence[Change]:
        """Up to limit changes above revision, in revision order."""
        driver = self._driver
        return [
            Change(
                revision=int(number),
                type=ChangeType(kind),
                image=decode_image(driver.json_out(image)),
                commit_time=driver.time_out(commit_time),
            )
            for number, kind, image, commit_time in driver.rows(_AFTER, (revision, limit))
        ]

    def prune(self, *, before: datetime.datetime) -> int:
        """Forget the changes committed before `before`; the compact revision moves past them.

        Returns the new compact revision, or 0 when nothing was pruned.
        """
        driver = self._driver
        row = driver.row(_NEWEST_BEFORE, (driver.time_in(before),))
        newest = None if row is None else row[0]
        if newest is None:
            return 0
        driver.count(_PRUNE, (int(newest),))
        driver.count(_COMPACT, (int(newest), int(newest)))
        return int(newest)
