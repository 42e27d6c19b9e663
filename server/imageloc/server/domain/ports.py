"""What the use cases need from persistence; the store implements it.

Standard library only.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, Protocol, Self

from imageloc.server.domain.access import ListScope
from imageloc.server.domain.listing import ImageFilters, Order
from imageloc.server.domain.model import Change, Image

#: Where a listing resumes: the sort values (listing.sort_values) of the last image seen.
ListCursor = tuple[Any, ...]


class ImageRepository(Protocol):
    """Images with their ordered locations, deleted ones included."""

    def get(self, image_id: str) -> Image | None:
        """The image with this id, or None."""
        ...

    def add(self, image: Image) -> bool:
        """Insert a new image; False when the id is taken (deleted images included)."""
        ...

    def save(self, old: Image, new: Image) -> bool:
        """Write new over old only if the stored revision is still old.revision.

        False when another writer got there first: the unit of work must then not be
        committed (what this call may have written is undone with it).
        """
        ...

    def list(
        self,
        *,
        limit: int,
        after: ListCursor | None,
        filters: ImageFilters,
        order: Order,
        scope: ListScope | None = None,
    ) -> Sequence[Image]:
        """Images not deleted or pending_delete that pass filters (listing.matches), in
        order, starting after the cursor.

        scope, when given, keeps only the images in it (domain.access.in_scope).
        """
        ...


@dataclasses.dataclass(frozen=True)
class RequestKey:
    """An idempotent request: the caller's request id and a digest of what it asked.

    namespace is the caller's (Principal.namespace): request ids are the caller's own.
    """

    request_id: str
    fingerprint: str
    namespace: str = ""

    @functools.cached_property
    def log_id(self) -> str:
        """The request's key in the request log: its id, within the caller's namespace."""
        if not self.namespace:
            return self.request_id
        digest = hashlib.sha256(self.namespace.encode()).hexdigest()[:32]
        return f"{digest}:{self.request_id}"


@dataclasses.dataclass(frozen=True)
class RecordedOutcome:
    """What an idempotent request did the first time: its digest and the image it answered."""

    fingerprint: str
    image: Image


class RequestLog(Protocol):
    """The outcomes of idempotent requests, kept so that a retry can be answered again."""

    def find(self, log_id: str) -> RecordedOutcome | None:
        """The recorded outcome of the request with this RequestKey.log_id, or None."""
        ...

    def expect(self, log_id: str) -> None:
        """find(log_id) comes after the transaction's next read: a store may send the
        lookup with that read's statements, after them (a round trip saved)."""
        ...

    def record(self, key: RequestKey, image: Image, *, at: datetime.datetime) -> bool:
        """Record key's outcome in this transaction; False when the id is taken already.

        A store may learn that another transaction took it only at commit: the commit
        then raises RequestRecordedMeanwhileError, having written nothing.
        """
        ...


@dataclasses.dataclass(frozen=True)
class StoreHead:
    """Where the change log stands: the newest revision, and the oldest one still resumable.

    A watch may start at any revision from compact_revision up; older changes are pruned.
    """

    revision: int
    compact_revision: int


class ChangeLog(Protocol):
    """Every committed change, in store revision order (the change feed)."""

    def head(self) -> StoreHead:
        """The newest committed revision and the compact revision, as this transaction sees."""
        ...

    def after(self, revision: int, *, limit: int) -> tuple[Sequence[Change], StoreHead]:
        """Up to limit changes with revisions above revision, in revision order, and the
        head, read together (one statement: one snapshot, also outside a transaction)."""
        ...


class UnitOfWork(Protocol):
    """One transaction: rolled back on exit unless commit() was called."""

    @property
    def images(self) -> ImageRepository:
        """The images as this transaction sees them."""
        ...

    @property
    def requests(self) -> RequestLog:
        """The idempotent requests' outcomes as this transaction sees them."""
        ...

    @property
    def changes(self) -> ChangeLog:
        """The change log as this transaction sees it."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def commit(self) -> None:
        """Make the transaction's writes durable."""
        ...

    def commit_change(self, change: Change, *, request_log_id: str | None) -> int:
        """Log change at the store's next revision and commit; that revision.

        The image written in this transaction (and the outcome recorded for request_log_id,
        if any) take the revision too: change.revision and the store_revision of the images
        given before are placeholders. The revision is taken under the store's revision
        lock, held to the end of the transaction, so revisions commit in the order they
        are taken; it is taken last, so the lock is held for the commit alone.
        """
        ...


class UnitOfWorkFactory(Protocol):
    """Opens units of work; `for_write` ones take the write lock up front.

    deadline (a time.monotonic() value) bounds every wait inside the unit of work; past
    it, the unit of work ends with DeadlineExceededError and nothing written.
    """

    def __call__(
        self, *, for_write: bool, deadline: float | None = None, one_statement: bool = False
    ) -> UnitOfWork:
        """one_statement: a reader that makes one statement (GetImage, the change feed), its own
        snapshot: PostgreSQL runs it outside a transaction, in one round trip."""
        ...


class WorkAttempts(Protocol):
    """What a use case tells of its unit of work while the work runs."""

    def retried(self) -> None:
        """The work lost a race (or found its request recorded meanwhile) and runs again."""
        ...


class WorkObserver(Protocol):
    """Watches each use case's unit of work (traces and metrics implement it)."""

    def unit_of_work(
        self, name: str, *, writes: bool, image_id: str = ""
    ) -> AbstractContextManager[WorkAttempts]:
        """The block in which use case `name` does its work, every attempt of it; image_id
        is the image it is about, when one is known before the work starts."""
        ...


class UnobservedWork:
    """A WorkObserver that keeps no record of the work: retries go to on_retry alone
    (nowhere by default). Stateless, so one object serves every unit of work."""

    def __init__(self, on_retry: Callable[[], None] = lambda: None) -> None:
        self._on_retry = on_retry

    def unit_of_work(self, name: str, *, writes: bool, image_id: str = "") -> UnobservedWork:
        """This object: entering and leaving it does nothing."""
        return self

    def __enter__(self) -> UnobservedWork:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def retried(self) -> None:
        """Tell on_retry."""
        self._on_retry()


#: The default WorkObserver of the use cases.
UNOBSERVED = UnobservedWork()


class RequestRecordedMeanwhileError(Exception):
    """Another attempt of the same idempotent request recorded its outcome first, as this
    one committed; nothing of this one was written: try again (the outcome answers it)."""


class DeadlineExceededError(Exception):
    """The call's deadline passed before its work was done; nothing was written."""


class StoreUnavailableError(Exception):
    """The database cannot be reached or refused to work; the call may be retried."""


class StoreBusyError(StoreUnavailableError):
    """Another writer holds the store's lock right now; the call may try again shortly.

    Raised at once, instead of waiting, by a store told not to wait for locks.
    """
