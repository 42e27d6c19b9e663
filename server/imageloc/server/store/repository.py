"""The image repository on one SQLAlchemy Connection, with Core statements for speed.

Imports sqlalchemy, the store's tables and engine helpers, and the domain's values and ports.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    delete,
    exists,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from imageloc.server.domain.model import GONE_STATUSES, Image, ImageStatus, Location, Visibility
from imageloc.server.domain.ports import ListCursor
from imageloc.server.store.engine import translated_errors
from imageloc.server.store.tables import image_locations, images

_IMAGE_COLUMNS = (
    images.c.id,
    images.c.name,
    images.c.status,
    images.c.size,
    images.c.checksum,
    images.c.os_hash_algo,
    images.c.os_hash_value,
    images.c.disk_format,
    images.c.container_format,
    images.c.visibility,
    images.c.owner,
    images.c.protected,
    images.c.created_at,
    images.c.updated_at,
    images.c.revision,
)
_METADATA = image_locations.c["metadata"]

# A reader's image and locations in one statement: one round trip, one snapshot.
_SELECT_IMAGE_WITH_LOCATIONS = (
    select(*_IMAGE_COLUMNS, image_locations.c.url, _METADATA)
    .select_from(images.outerjoin(image_locations, image_locations.c.image_id == images.c.id))
    .where(images.c.id == bindparam("image_id"))
    .order_by(image_locations.c.position)
)
# A writer locks the image's row first, then reads the locations in a statement of their
# own: on PostgreSQL a statement that waited for a row lock re-reads only that row, so
# locations joined into it would come from before the lock and the decision be stale.
_SELECT_IMAGE_FOR_UPDATE = (
    select(*_IMAGE_COLUMNS).where(images.c.id == bindparam("image_id")).with_for_update()
)
_SELECT_LOCATIONS = (
    select(image_locations.c.url, _METADATA)
    .where(image_locations.c.image_id == bindparam("image_id"))
    .order_by(image_locations.c.position)
)
_IMAGE_EXISTS = select(exists().where(images.c.id == bindparam("image_id")))
_INSERT_IMAGE = insert(images)
_INSERT_LOCATIONS = insert(image_locations)
_DELETE_LOCATIONS = delete(image_locations).where(
    image_locations.c.image_id == bindparam("image_id")
)
_GONE = sorted(status.value for status in GONE_STATUSES)


class SqlImageRepository:
    """Images with their ordered locations in the `images` and `image_locations` tables.

    With lock_rows, get() locks the image's row (SELECT ... FOR UPDATE) until the
    transaction ends, so writers of one image take turns on PostgreSQL; SQLite ignores
    it, as its write transactions already hold the database's single write lock.
    """

    def __init__(self, connection: Connection, *, lock_rows: bool = False) -> None:
        self._connection = connection
        self._lock_rows = lock_rows

    def get(self, image_id: str) -> Image | None:
        """The image with this id, deleted ones included, or None."""
        parameters = {"image_id": image_id}
        with translated_errors():
            if self._lock_rows:
                row = self._connection.execute(_SELECT_IMAGE_FOR_UPDATE, parameters).first()
                if row is None:
                    return None
                found = self._connection.execute(_SELECT_LOCATIONS, parameters).all()
                return image_from_row(row, tuple(location_from_row(*loc) for loc in found))
            rows = self._connection.execute(_SELECT_IMAGE_WITH_LOCATIONS, parameters).all()
        if not rows:
            return None
        locations = tuple(
            location_from_row(row.url, row.metadata) for row in rows if row.url is not None
        )
        return image_from_row(rows[0], locations)

    def add(self, image: Image) -> bool:
        """Insert a new image and its locations; False when the id is taken."""
        with translated_errors():
            try:
                # A savepoint, so a refused insert leaves the caller's transaction usable.
                with self._connection.begin_nested():
                    self._connection.execute(_INSERT_IMAGE, image_values(image, with_id=True))
                    self._insert_locations(image.id, image.locations)
            except IntegrityError:
                if self._connection.execute(_IMAGE_EXISTS, {"image_id": image.id}).scalar():
                    return False
                raise
        return True

    def save(self, old: Image, new: Image) -> bool:
        """Write new over old if the stored revision is still old.revision; else False."""
        if new.id != old.id:
            raise ValueError(f"cannot save image {new.id} over image {old.id}")
        statement = (
            update(images)
            .where(images.c.id == old.id, images.c.revision == old.revision)
            .values(image_values(new, with_id=False))
        )
        with translated_errors():
            if self._connection.execute(statement).rowcount != 1:
                return False
            if new.locations != old.locations:
                self._connection.execute(_DELETE_LOCATIONS, {"image_id": new.id})
                self._insert_locations(new.id, new.locations)
        return True

    def list(
        self, *, limit: int, after: ListCursor | None, status: ImageStatus | None
    ) -> Sequence[Image]:
        """Images not deleted or pending_delete, newest first (created_at, then id, descending)."""
        statement = select(*_IMAGE_COLUMNS).where(images.c.status.not_in(_GONE))
        if status is not None:
            statement = statement.where(images.c.status == status.value)
        if after is not None:
            created_at, image_id = after
            statement = statement.where(
                or_(
                    images.c.created_at < created_at,
                    and_(images.c.created_at == created_at, images.c.id < image_id),
                )
            )
        page = (
            statement.order_by(images.c.created_at.desc(), images.c.id.desc())
            .limit(limit)
            .subquery()
        )
        # The page and its locations in one statement: one round trip, one snapshot.
        with_locations = (
            select(page, image_locations.c.url, _METADATA)
            .select_from(page.outerjoin(image_locations, image_locations.c.image_id == page.c.id))
            .order_by(page.c.created_at.desc(), page.c.id.desc(), image_locations.c.position)
        )
        with translated_errors():
            rows = self._connection.execute(with_locations).all()
        firsts: dict[str, Any] = {}
        grouped: defaultdict[str, list[Location]] = defaultdict(list)
        for row in rows:
            firsts.setdefault(row.id, row)
            if row.url is not None:
                grouped[row.id].append(location_from_row(row.url, row.metadata))
        return [image_from_row(row, tuple(grouped[image_id])) for image_id, row in firsts.items()]

    def _insert_locations(self, image_id: str, locations: Iterable[Location]) -> None:
        rows = [
            {
                "image_id": image_id,
                "position": position,
                "url": location.url,
                "metadata": plain_json(location.metadata),
            }
            for position, location in enumerate(locations)
        ]
        # An empty parameter list would insert one row of defaults.
        if rows:
            self._connection.execute(_INSERT_LOCATIONS, rows)


def image_values(image: Image, *, with_id: bool) -> dict[str, Any]:
    values: dict[str, Any] = {
        "name": image.name,
        "status": image.status.value,
        "size": image.size,
        "checksum": image.checksum,
        "os_hash_algo": image.os_hash_algo,
        "os_hash_value": image.os_hash_value,
        "disk_format": image.disk_format,
        "container_format": image.container_format,
        "visibility": image.visibility.value,
        "owner": image.owner,
        "protected": image.protected,
        "created_at": image.created_at,
        "updated_at": image.updated_at,
        "revision": image.revision,
    }
    if with_id:
        values["id"] = image.id
    return values


def image_from_row(row: Any, locations: tuple[Location, ...]) -> Image:
    return Image(
        id=row.id,
        name=row.name,
        status=ImageStatus(row.status),
        created_at=row.created_at,
        updated_at=row.updated_at,
        locations=locations,
        size=row.size,
        checksum=row.checksum,
        os_hash_algo=row.os_hash_algo,
        os_hash_value=row.os_hash_value,
        disk_format=row.disk_format,
        container_format=row.container_format,
        visibility=Visibility(row.visibility),
        owner=row.owner,
        protected=bool(row.protected),
        revision=row.revision,
    )


def location_from_row(url: str, metadata: Any) -> Location:
    return Location(url=url, metadata=dict(metadata or {}))


def plain_json(value: Any) -> Any:
    """value with every mapping made a dict and every sequence a list, as JSON keeps them."""
    if isinstance(value, Mapping):
        return {str(key): plain_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain_json(item) for item in value]
    return value
