"""What the use cases need from persistence; the store implements it.

Standard library only.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from types import TracebackType
from typing import Protocol, Self

from imageloc.server.domain.model import Image, ImageStatus

#: Where a listing resumes: the (created_at, id) of the last image already seen.
ListCursor = tuple[datetime.datetime, str]


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

        False when another writer got there first: nothing is written then.
        """
        ...

    def list(
        self, *, limit: int, after: ListCursor | None, status: ImageStatus | None
    ) -> Sequence[Image]:
        """Images not deleted or pending_delete, newest first (created_at, then id, descending)."""
        ...


class UnitOfWork(Protocol):
    """One transaction: rolled back on exit unless commit() was called."""

    @property
    def images(self) -> ImageRepository:
        """The images as this transaction sees them."""
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


class UnitOfWorkFactory(Protocol):
    """Opens units of work; `for_write` ones take the write lock up front."""

    def __call__(self, *, for_write: bool) -> UnitOfWork: ...


class StoreUnavailableError(Exception):
    """The database cannot be reached or refused to work; the call may be retried."""
