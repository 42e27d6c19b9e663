"""The change log: store revisions taken in commit order, and the changes logged at them.

Imports the store's driver and image encoding, and the domain's values and ports.
"""

from __future__ import annotations

import dataclasses
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


class CommittedHere:
    """The changes this process committed lately, by revision, as the change log holds them.

    The change feed reads every change back from the log, this process's own too; one it
    committed need not be decoded again (about 25 us an image). A change is taken from
    here only if its row, read back, has the type and the commit time it was logged with,
    and everything is forgotten when a commit's outcome is in doubt (SQLite: a group
    commit failed, and its revisions will be taken again).
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._changes: dict[int, tuple[str, Any, Change]] = {}

    def remember(self, revision: int, change: Change, commit_time: Any) -> None:
        """change, committed at revision; commit_time as its column stores it."""
        changes = self._changes
        if len(changes) >= self._size:
            del changes[next(iter(changes))]  # the oldest
        changes[revision] = (change.type.value, commit_time, change)

    def recall(self, revision: int, kind: str, commit_time: Any) -> Change | None:
        """The change logged at revision, if this process committed it with this type and
        commit time (as their columns store them), at its revision; None otherwise."""
        remembered = self._changes.get(revision)
        if remembered is None or remembered[0] != kind or remembered[1] != commit_time:
            return None
        change = remembered[2]
        image = dataclasses.replace(change.image, store_revision=revision)
        return Change(revision, change.type, image, change.commit_time)

    def forget(self) -> None:
        """Forget every change: a commit failed, and the revisions it took may be reused."""
        self._changes.clear()


class SqlChangeLog:
    """ChangeLog over the `store_state` and `image_changes` tables."""

    def __init__(
        self,
        driver: Driver,
        *,
        encode: Callable[[Image], Any],
        committed: CommittedHere,
    ) -> None:
        self._driver = driver
        self._encode = encode  # an image as the JSON parameter (SqlRequestLog.encoded)
        self._committed = committed
        self._logging: tuple[Change, Any] | None = None  # commit_statements' change, its time

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
        self._logging = (change, logged[3])
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
        rows = self._driver.rows(_AFTER, (revision, limit))
        assert rows, "store_state has no row: the schema is not migrated"
        head = StoreHead(revision=int(rows[0][0]), compact_revision=int(rows[0][1]))
        recall = self._committed.recall
        changes = [
            recall(number, kind, commit_time) or self._decoded(number, kind, image, commit_time)
            for _, _, number, kind, image, commit_time in rows
            if number is not None
        ]
        return changes, head

    def committed(self, revision: int) -> None:
        """The change of commit_statements has committed at revision (remembered, so as not
        to be decoded again)."""
        logging, self._logging = self._logging, None
        if logging is not None:
            self._committed.remember(revision, *logging)

    def _decoded(self, number: Any, kind: str, image: Any, commit_time: Any) -> Change:
        driver = self._driver
        return Change(
            revision=int(number),
            type=ChangeType(kind),
            image=decode_image(driver.json_out(image)),
            commit_time=driver.time_out(commit_time),
        )

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
