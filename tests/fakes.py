"""An in-memory store implementing the domain's ports, for tests of the layers above it."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Self

from imageloc.server.domain.access import ListScope, in_scope
from imageloc.server.domain.listing import ImageFilters, Order, comes_after, matches, sort_values
from imageloc.server.domain.model import GONE_STATUSES, Change, Image
from imageloc.server.domain.ports import ListCursor, RecordedOutcome, RequestKey, StoreHead


class InMemoryImages:
    """ImageRepository over a dict; writes go to a staging copy until commit."""

    def __init__(self, rows: dict[str, Image]) -> None:
        self.rows = rows

    def get(self, image_id: str) -> Image | None:
        return self.rows.get(image_id)

    def add(self, image: Image) -> bool:
        if image.id in self.rows:
            return False
        self.rows[image.id] = image
        return True

    def save(self, old: Image, new: Image) -> bool:
        stored = self.rows.get(old.id)
        if stored is None or stored.revision != old.revision:
            return False
        self.rows[old.id] = new
        return True

    def list(
        self,
        *,
        limit: int,
        after: ListCursor | None,
        filters: ImageFilters,
        order: Order,
        scope: ListScope | None = None,
    ) -> Sequence[Image]:
        chosen = [
            image
            for image in self.rows.values()
            if image.status not in GONE_STATUSES
            and matches(image, filters)
            and (scope is None or in_scope(image, scope))
            and (after is None or comes_after(sort_values(image, order), after, order))
        ]
        chosen.sort(key=functools.cmp_to_key(lambda a, b: _compare(a, b, order)))
        return chosen[:limit]


def _compare(a: Image, b: Image, order: Order) -> int:
    """-1 when a comes before b in order, 1 after, 0 for the same sort values."""
    if comes_after(sort_values(b, order), sort_values(a, order), order):
        return -1
    return 1 if comes_after(sort_values(a, order), sort_values(b, order), order) else 0


class InMemoryRequests:
    """RequestLog over a dict."""

    def __init__(self, rows: dict[str, RecordedOutcome]) -> None:
        self.rows = rows

    def find(self, log_id: str) -> RecordedOutcome | None:
        return self.rows.get(log_id)

    def expect(self, log_id: str) -> None:
        pass

    def record(self, key: RequestKey, image: Image, *, at: datetime.datetime) -> bool:
        if key.log_id in self.rows:
            return False
        self.rows[key.log_id] = RecordedOutcome(key.fingerprint, image)
        return True


class InMemoryChanges:
    """ChangeLog over a list; revisions taken count up from the committed head."""

    def __init__(self, changes: list[Change], head: int) -> None:
        self.changes = changes
        self.revision = head

    def head(self) -> StoreHead:
        return StoreHead(revision=self.revision, compact_revision=0)

    def after(self, revision: int, *, limit: int) -> tuple[Sequence[Change], StoreHead]:
        found = [change for change in self.changes if change.revision > revision][:limit]
        return found, self.head()


class InMemoryStore:
    """A unit-of-work factory whose transactions are serialised by one lock."""

    def __init__(self) -> None:
        self.committed: dict[str, Image] = {}
        self.recorded: dict[str, RecordedOutcome] = {}
        self.changes: list[Change] = []
        self.revision = 0
        self.lock = threading.Lock()

    def unit_of_work(
        self, *, for_write: bool, deadline: float | None = None, one_statement: bool = False
    ) -> InMemoryUnitOfWork:
        return InMemoryUnitOfWork(self)


class InMemoryUnitOfWork:
    """Copies the committed rows on enter; commit() publishes the copy."""

    def __init__(self, store: InMemoryStore) -> None:
        self._store = store
        self.images = InMemoryImages({})
        self.requests = InMemoryRequests({})
        self.changes = InMemoryChanges([], 0)

    def __enter__(self) -> Self:
        self._store.lock.acquire()
        self.images = InMemoryImages(dict(self._store.committed))
        self.requests = InMemoryRequests(dict(self._store.recorded))
        self.changes = InMemoryChanges(list(self._store.changes), self._store.revision)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._store.lock.release()

    def commit_change(self, change: Change, *, request_log_id: str | None) -> int:
        self.changes.revision += 1
        revision = self.changes.revision
        image = dataclasses.replace(change.image, store_revision=revision)
        self.images.rows[image.id] = image
        if request_log_id is not None:
            recorded = self.requests.rows[request_log_id]
            self.requests.rows[request_log_id] = RecordedOutcome(recorded.fingerprint, image)
        self.changes.changes.append(dataclasses.replace(change, revision=revision, image=image))
        self.commit()
        return revision

    def commit(self) -> None:
        self._store.committed = dict(self.images.rows)
        self._store.recorded = dict(self.requests.rows)
        self._store.changes = self.changes.changes
        self._store.revision = self.changes.revision
