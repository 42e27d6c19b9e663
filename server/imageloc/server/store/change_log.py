"""The change log: store revisions taken in commit order, and the changes logged at them.

Imports the store's driver and image encoding, and the domain's values and ports.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from typing import Any

from imageloc.server.domain.model import Change, ChangeType, Image
from imageloc.server.domain.ports import StoreHead
from imageloc.server.store.driver import Driver, Sql, Statements
from imageloc.server.store.request_log import REQUEST_COLUMNS, decode_image

# The one row's lock orders the writers: PostgreSQL holds it to the end of the transaction,
# so a revision taken later commits later (no reader sees 101 while 100 is in flight);
# SQLite's writer holds the database's lock anyway. It is taken by the last statements
# before COMMIT, sent with it in one round trip (commit_statements): the lock is held for
# the commit alone, not while the writer's process gets round to its next statement.
_NEXT_REVISION = Sql(
    "UPDATE store_state SET revision = revision + 1 WHERE id = 1 RETURNING revision"
)
#: The revision just taken, inside the statements that follow it in the transaction.
_TAKEN = "(SELECT revision FROM store_state WHERE id = 1)"


def _stamped(json: str) -> str:
    """The encoded image json (a parameter or a column) with its store_revision set to
    the revision taken (SQLite's statements; PostgreSQL's are _COMMIT_IN_ONE)."""
    return f"json_set({json}, '$.store_revision', {_TAKEN})"


_STAMP_IMAGE = Sql(f"UPDATE images SET store_revision = {_TAKEN} WHERE id = ?")
_STAMP_OUTCOME = Sql(f"UPDATE request_log SET outcome = {_stamped('outcome')} WHERE request_id = ?")
_APPEND = Sql(
    "INSERT INTO image_changes (revision, image_id, type, image, commit_time)"
    f" VALUES ({_TAKEN}, ?, ?, {_stamped('?')}, ?)"
)
_HEAD = Sql("SELECT revision, compact_revision FROM store_state WHERE id = 1")
# The head beside each change (or alone, with none): the changes and the head one snapshot.
_AFTER = Sql(
    "SELECT head.revision, head.compact_revision, log.revision, log.type, log.image,"
    " log.commit_time FROM store_state AS head LEFT OUTER JOIN"
    " (SELECT revision, type, image, commit_time FROM image_changes"
    "  WHERE revision > ? ORDER BY revision LIMIT ?) AS log ON 1 = 1"
    " WHERE head.id = 1 ORDER BY log.revision"
)
#: Delivered at COMMIT to every replica LISTENing (store/notifications.py): a wake-up only,
#: never the data, which the feed reads from the log.
CHANNEL = "imageloc_changes"


def _commit_in_one(*, record: bool) -> Sql:
    """PostgreSQL's commit_statements as one statement: a statement costs the driver more
    than the database's work in it. The parts of one statement share its snapshot, so they
    read the revision from `taken`, not from store_state; the lock is taken as before.
    record: the request log's row is written by it too (SqlRequestLog.pending), stamped."""
    stamp = "jsonb_set(CAST({} AS jsonb), '{{store_revision}}', to_jsonb(taken.revision))"
    parts = [
        "taken AS (UPDATE store_state SET revision = revision + 1 WHERE id = 1 RETURNING revision)",
        "image AS (UPDATE images SET store_revision = taken.revision FROM taken"
        " WHERE images.id = ?)",
    ]
    if record:
        parts.append(
            f"outcome AS (INSERT INTO request_log ({REQUEST_COLUMNS})"
            f" SELECT ?, ?, ?, {stamp.format('?')}, ? FROM taken)"
        )
    parts.append(
        "logged AS (INSERT INTO image_changes (revision, image_id, type, image, commit_time)"
        f" SELECT taken.revision, ?, ?, {stamp.format('?')}, ? FROM taken)"
    )
    statement = f"WITH {', '.join(parts)} SELECT revision, pg_notify('{CHANNEL}', '') FROM taken"
    return Sql(statement)


_COMMIT_IN_ONE = {record: _commit_in_one(record=record) for record in (False, True)}
_NEWEST_BEFORE = Sql("SELECT MAX(revision) FROM image_changes WHERE commit_time < ?")
_PRUNE = Sql("DELETE FROM image_changes WHERE revision <= ?")
_COMPACT = Sql("UPDATE store_state SET compact_revision = ? WHERE id = 1 AND compact_revision < ?")


class SqlChangeLog:
    """ChangeLog over the `store_state` and `image_changes` tables."""

    def __init__(self, driver: Driver, *, encode: Callable[[Image], Any]) -> None:
        self._driver = driver
        self._encode = encode  # an image as the JSON parameter (SqlRequestLog.encoded)

    def commit_statements(
        self,
        change: Change,
        *,
        request_log_id: str | None,
        recorded: Sequence[Any] | None = None,
    ) -> Statements:
        """The statements that take the next revision (the first; it returns it), stamp
        change's image row and request_log_id's outcome with it, and log change at it;
        the unit of work runs them right before COMMIT (UnitOfWork.commit_change).
        recorded (PostgreSQL, where the request log's rows wait for COMMIT): the row
        request_log_id's outcome is, to write with them; there is no other to stamp."""
        driver = self._driver
        image = change.image
        encoded = self._encode(image)
        logged = (image.id, change.type.value, encoded, driver.time_in(change.commit_time))
        if driver.postgresql:
            row = () if recorded is None else tuple(recorded)
            return [(_COMMIT_IN_ONE[recorded is not None], (image.id, *row, *logged))]
        statements: Statements = [(_NEXT_REVISION, ()), (_STAMP_IMAGE, (image.id,))]
        if request_log_id is not None:
            statements.append((_STAMP_OUTCOME, (request_log_id,)))
        statements.append((_APPEND, logged))
        return statements

    def head(self) -> StoreHead:
        """The newest committed revision and the compact revision."""
        row = self._driver.row(_HEAD)
        assert row is not None, "store_state has no row: the schema is not migrated"
        return StoreHead(revision=int(row[0]), compact_revision=int(row[1]))

    def after(self, revision: int, *, limit: int) -> tuple[Sequence[Change], StoreHead]:
        """Up to limit changes above revision, in revision order, and the head, in one
        statement."""
        driver = self._driver
        rows = driver.rows(_AFTER, (revision, limit))
        assert rows, "store_state has no row: the schema is not migrated"
        head = StoreHead(revision=int(rows[0][0]), compact_revision=int(rows[0][1]))
        changes = [
            Change(
                revision=int(number),
                type=ChangeType(kind),
                image=decode_image(driver.json_out(image)),
                commit_time=driver.time_out(commit_time),
            )
            for _, _, number, kind, image, commit_time in rows
            if number is not None
        ]
        return changes, head

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
