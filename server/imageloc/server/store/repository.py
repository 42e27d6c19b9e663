"""The image repository: plain SQL on the unit of work's driver connection.

Imports the store's driver and the domain's values and ports. The statements follow the
tables in tables.py (the schema Alembic migrates); test_store runs them on both databases.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from imageloc.server.domain.access import ListScope
from imageloc.server.domain.listing import ImageFilters, Order
from imageloc.server.domain.model import GONE_STATUSES, Image, ImageStatus, Location, Visibility
from imageloc.server.domain.ports import ListCursor
from imageloc.server.store.driver import Driver, Sql, Statements

#: The images table's columns, in the order every statement and codec here uses.
COLUMN_NAMES = (
    "id", "name", "status", "size", "checksum", "os_hash_algo", "os_hash_value", "disk_format",
    "container_format", "visibility", "owner", "protected", "created_at", "updated_at",
    "revision", "store_revision", "min_disk", "min_ram", "tags", "os_hidden", "virtual_size",
    "properties",
)  # fmt: skip
#: The columns added after the first outcomes and changes were recorded, and the value
#: an image recorded before them has.
LATER_COLUMNS: dict[str, Any] = {
    "store_revision": 0, "min_disk": 0, "min_ram": 0, "tags": [], "os_hidden": False,
    "virtual_size": None, "properties": {},
}  # fmt: skip
_COLUMNS = ", ".join(COLUMN_NAMES)
_PAGE_COLUMNS = ", ".join(f"page.{name}" for name in COLUMN_NAMES)
_CREATED, _UPDATED = COLUMN_NAMES.index("created_at"), COLUMN_NAMES.index("updated_at")
_JSON_COLUMNS = (COLUMN_NAMES.index("tags"), COLUMN_NAMES.index("properties"))
_URL, _METADATA = len(COLUMN_NAMES), len(COLUMN_NAMES) + 1  # a joined row's location

# A reader's image and locations in one statement: one round trip, one snapshot.
# A location's metadata is read as its text: most are "{}", which json_out knows without
# decoding (psycopg's jsonb loader cost GetImage 3% of the loop on PostgreSQL).
_METADATA_TEXT = "CAST(loc.metadata AS TEXT)"
_SELECT_IMAGE_WITH_LOCATIONS = Sql(
    f"SELECT {_PAGE_COLUMNS}, loc.url, {_METADATA_TEXT} FROM images AS page"
    " LEFT OUTER JOIN image_locations AS loc ON loc.image_id = page.id"
    " WHERE page.id = ? ORDER BY loc.position"
)
# A writer locks the image's row first, then reads the locations in a statement of their
# own: on PostgreSQL a statement that waited for a row lock re-reads only that row, so
# locations joined into it would come from before the lock and the decision be stale.
# SQLite has no FOR UPDATE: its writer already holds the database's write lock.
_SELECT_IMAGE = f"SELECT {_COLUMNS} FROM images WHERE id = ?"
_SELECT_IMAGE_FOR_UPDATE = {False: Sql(_SELECT_IMAGE), True: Sql(_SELECT_IMAGE + " FOR UPDATE")}
_SELECT_LOCATIONS = Sql(
    "SELECT url, CAST(metadata AS TEXT) FROM image_locations WHERE image_id = ? ORDER BY position"
)
_INSERT_IMAGE = Sql(
    f"INSERT INTO images ({_COLUMNS}) VALUES ({', '.join('?' for _ in COLUMN_NAMES)})"
    " ON CONFLICT (id) DO NOTHING"
)
# save() writes only the columns that changed (and the revision, always), so an unchanged
# status or name leaves its index pages alone: fewer pages for COMMIT to write.
_REVISION = COLUMN_NAMES.index("revision")
_UPDATES: dict[tuple[str, ...], Sql] = {}


def _update_of(columns: tuple[str, ...]) -> Sql:
    """UPDATE of these columns, conditional on the id and the old revision (built once)."""
    statement = _UPDATES.get(columns)
    if statement is None:
        assignments = ", ".join(f"{column} = ?" for column in columns)
        statement = Sql(f"UPDATE images SET {assignments} WHERE id = ? AND revision = ?")
        _UPDATES[columns] = statement
    return statement


#: Rows per INSERT of locations: one statement for any list the API accepts but the
#: longest, and well inside either database's limit on parameters.
_LOCATIONS_PER_INSERT = 250
_LOCATION_INSERTS: dict[int, Sql] = {}


def _insert_locations(rows: int) -> Sql:
    """INSERT of this many locations in one statement (built once): a statement costs the
    driver more than a row does."""
    statement = _LOCATION_INSERTS.get(rows)
    if statement is None:
        values = ", ".join("(?, ?, ?, ?)" for _ in range(rows))
        statement = Sql(
            f"INSERT INTO image_locations (image_id, position, url, metadata) VALUES {values}"
        )
        _LOCATION_INSERTS[rows] = statement
    return statement


_DELETE_LOCATIONS = Sql("DELETE FROM image_locations WHERE image_id = ?")
_NOT_GONE = "status NOT IN ({})".format(
    ", ".join(f"'{status.value}'" for status in sorted(GONE_STATUSES))
)


#: A statement's parameters.
Parameters = list[Any]


class SqlImageRepository:
    """Images with their ordered locations in the `images` and `image_locations` tables.

    With lock_rows, get() locks the image's row (SELECT ... FOR UPDATE) until the
    transaction ends, so writers of one image take turns on PostgreSQL; SQLite does
    without, as its write transactions already hold the database's single write lock.
    """

    def __init__(self, driver: Driver, *, lock_rows: bool = False) -> None:
        self._driver = driver
        self._lock_rows = lock_rows

    def get(self, image_id: str) -> Image | None:
        """The image with this id, deleted ones included, or None."""
        driver = self._driver
        if self._lock_rows:
            # Sent together: the locations are read once the row's lock is granted.
            statement = _SELECT_IMAGE_FOR_UPDATE[driver.postgresql]
            image_rows, found = driver.rows_of(
                [(statement, (image_id,)), (_SELECT_LOCATIONS, (image_id,))]
            )
            if not image_rows:
                return None
            locations = tuple(self._location(url, data) for url, data in found)
            return self._image(image_rows[0], locations)
        rows = driver.rows(_SELECT_IMAGE_WITH_LOCATIONS, (image_id,))
        if not rows:
            return None
        locations = tuple(
            self._location(row[_URL], row[_METADATA]) for row in rows if row[_URL] is not None
        )
        return self._image(rows[0], locations)

    def add(self, image: Image) -> bool:
        """Insert a new image and its locations; False when the id is taken."""
        if self._driver.count(_INSERT_IMAGE, self._values(image)) != 1:
            return False
        for statement, values in self._location_inserts(image.id, image.locations):
            self._driver.count(statement, values)
        return True

    def save(self, old: Image, new: Image) -> bool:
        """Write new over old if the stored revision is still old.revision; else False."""
        if new.id != old.id:
            raise ValueError(f"cannot save image {new.id} over image {old.id}")
        olds, news = image_columns(old), image_columns(new)
        changed = [i for i in range(1, len(news)) if news[i] != olds[i] or i == _REVISION]
        statement = _update_of(tuple(COLUMN_NAMES[i] for i in changed))
        stored = self._values(new)
        values = [stored[i] for i in changed]
        statements: Statements = [(statement, (*values, old.id, old.revision))]
        if new.locations != old.locations:
            statements.append((_DELETE_LOCATIONS, (new.id,)))
            statements += self._location_inserts(new.id, new.locations)
        # In one round trip where the driver can: the location statements go with the
        # update, and are rolled back with it when it changed nothing.
        return self._driver.changes_of(statements) == 1

    def list(
        self,
        *,
        limit: int,
        after: ListCursor | None,
        filters: ImageFilters,
        order: Order,
        scope: ListScope | None = None,
    ) -> Sequence[Image]:
        """Images not deleted or pending_delete that pass filters, in order, after the cursor.

        scope, when given, keeps only the images in it (domain.access.in_scope).
        """
        conditions = [_NOT_GONE]
        parameters: list[Any] = []
        for condition, values in self._filter_conditions(filters):
            conditions.append(condition)
            parameters += values
        if scope is not None:
            condition, values = _scope_condition(scope)
            conditions.append(condition)
            parameters += values
        if after is not None:
            condition, values = self._after(after, order)
            conditions.append(condition)
            parameters += values
        parameters.append(limit)
        inner = ", ".join(f"{k.field} {'DESC' if k.descending else 'ASC'}" for k in order)
        outer = ", ".join(f"page.{k.field} {'DESC' if k.descending else 'ASC'}" for k in order)
        # The page and its locations in one statement: one round trip, one snapshot. The
        # page is keyset-paginated on an index of each sort key and id (tables.py).
        statement = Sql(
            f"SELECT {_PAGE_COLUMNS}, loc.url, {_METADATA_TEXT} FROM"
            f" (SELECT {_COLUMNS} FROM images WHERE {' AND '.join(conditions)}"
            f"  ORDER BY {inner} LIMIT ?) AS page"
            " LEFT OUTER JOIN image_locations AS loc ON loc.image_id = page.id"
            f" ORDER BY {outer}, loc.position"
        )
        firsts: dict[str, Any] = {}
        grouped: dict[str, list[Location]] = {}
        for row in self._driver.rows(statement, parameters):
            image_id = row[0]
            if image_id not in firsts:
                firsts[image_id] = row
                grouped[image_id] = []
            if row[_URL] is not None:
                grouped[image_id].append(self._location(row[_URL], row[_METADATA]))
        return [self._image(row, tuple(grouped[image_id])) for image_id, row in firsts.items()]

    def _filter_conditions(self, filters: ImageFilters) -> Iterator[tuple[str, Parameters]]:
        """Each filter as a WHERE condition and its parameters: the SQL of listing.matches."""
        equal = {
            "status": filters.status and filters.status.value,
            "visibility": filters.visibility and filters.visibility.value,
            "name": filters.name,
            "owner": filters.owner,
        }
        for column, value in equal.items():
            if value is not None:
                yield f"{column} = ?", [value]
        yield "os_hidden = ?", [bool(filters.os_hidden)]
        if filters.size_min is not None:
            yield "size >= ?", [filters.size_min]
        if filters.size_max is not None:
            yield "size <= ?", [filters.size_max]
        postgresql = self._driver.postgresql
        if filters.tags:
            if postgresql:  # containment: one condition, the jsonb operator's
                yield "CAST(tags AS jsonb) @> CAST(? AS jsonb)", [json.dumps(list(filters.tags))]
            else:
                for tag in filters.tags:
                    yield "EXISTS (SELECT 1 FROM json_each(images.tags) WHERE value = ?)", [tag]
        if filters.properties:
            if postgresql:
                yield (
                    "CAST(properties AS jsonb) @> CAST(? AS jsonb)",
                    [json.dumps(dict(filters.properties))],
                )
            else:
                for key, value in filters.properties.items():
                    yield (
                        "EXISTS (SELECT 1 FROM json_each(images.properties)"
                        " WHERE key = ? AND value = ?)",
                        [key, value],
                    )

    def _after(self, cursor: ListCursor, order: Order) -> tuple[str, Parameters]:
        """The condition of the images after cursor in order, and its parameters.

        One direction: a row value, which both databases seek their (key, id) index to, so a
        deep page costs what the first one does. Mixed directions: the first key bounds the
        index range, and the rest decide among equal firsts.
        """
        values = [
            self._driver.time_in(v) if isinstance(v, datetime.datetime) else v for v in cursor
        ]
        fields = [key.field for key in order]
        if len({key.descending for key in order}) == 1:
            compare = "<" if order[0].descending else ">"
            marks = ", ".join("?" for _ in fields)
            return f"({', '.join(fields)}) {compare} ({marks})", values
        alternatives: list[str] = []
        parameters: list[Any] = []
        for i, key in enumerate(order):
            equal_before = [f"{field} = ?" for field in fields[:i]]
            compare = f"{key.field} {'<' if key.descending else '>'} ?"
            alternatives.append("(" + " AND ".join([*equal_before, compare]) + ")")
            parameters += [*values[:i], values[i]]
        first = order[0]
        bound = f"{first.field} {'<=' if first.descending else '>='} ?"
        return f"{bound} AND ({' OR '.join(alternatives)})", [values[0], *parameters]

    def _location_inserts(self, image_id: str, locations: Sequence[Location]) -> Statements:
        """The INSERTs of locations, at their positions: one per _LOCATIONS_PER_INSERT."""
        json_in = self._driver.json_in
        statements: Statements = []
        for start in range(0, len(locations), _LOCATIONS_PER_INSERT):
            chunk = locations[start : start + _LOCATIONS_PER_INSERT]
            values: list[Any] = []
            for position, location in enumerate(chunk, start):
                values += (image_id, position, location.url, json_in(plain_json(location.metadata)))
            statements.append((_insert_locations(len(chunk)), values))
        return statements

    def _values(self, image: Image) -> Sequence[Any]:
        """image's columns, in COLUMN_NAMES order, as the table stores them."""
        values = image_columns(image)
        values[_CREATED] = self._driver.time_in(image.created_at)
        values[_UPDATED] = self._driver.time_in(image.updated_at)
        for column in _JSON_COLUMNS:
            values[column] = self._driver.json_in(values[column])
        return values

    def _image(self, row: Sequence[Any], locations: tuple[Location, ...]) -> Image:
        """The image in a row whose first columns are COLUMN_NAMES."""
        values = list(row[: len(COLUMN_NAMES)])
        values[_CREATED] = self._driver.time_out(values[_CREATED])
        values[_UPDATED] = self._driver.time_out(values[_UPDATED])
        for column in _JSON_COLUMNS:
            values[column] = self._driver.json_out(values[column])
        return image_from_columns(values, locations)

    def _location(self, url: str, metadata: Any) -> Location:
        return Location(url=url, metadata=dict(self._driver.json_out(metadata) or {}))


def _scope_condition(scope: ListScope) -> tuple[str, list[Any]]:
    """scope as a WHERE condition and its parameters: the SQL of domain.access.in_scope."""
    parameters: list[Any] = []
    community = "TRUE" if scope.all_community else "owner = ?"
    if not scope.all_community:
        parameters.append(scope.own_project)
    projects = "TRUE" if scope.all_projects else "owner = ?"
    if not scope.all_projects:
        parameters.append(scope.own_project)
    condition = (
        f"(visibility = '{Visibility.PUBLIC.value}'"
        f" OR (visibility = '{Visibility.COMMUNITY.value}' AND {community})"
        f" OR (visibility IN ('{Visibility.PRIVATE.value}', '{Visibility.SHARED.value}')"
        f" AND {projects}))"
    )
    if scope.visibility is not None:
        condition += " AND visibility = ?"
        parameters.append(scope.visibility.value)
    return condition, parameters


def image_columns(image: Image) -> list[Any]:
    """image's values in COLUMN_NAMES order: enums by value, timestamps as datetimes."""
    return [
        image.id,
        image.name,
        image.status.value,
        image.size,
        image.checksum,
        image.os_hash_algo,
        image.os_hash_value,
        image.disk_format,
        image.container_format,
        image.visibility.value,
        image.owner,
        image.protected,
        image.created_at,
        image.updated_at,
        image.revision,
        image.store_revision,
        image.min_disk,
        image.min_ram,
        list(image.tags),
        image.os_hidden,
        image.virtual_size,
        dict(image.properties),
    ]


def image_from_columns(values: Sequence[Any], locations: tuple[Location, ...]) -> Image:
    """The image whose values image_columns gave (timestamps as datetimes)."""
    return Image(
        id=values[0],
        name=values[1],
        status=ImageStatus(values[2]),
        size=values[3],
        checksum=values[4],
        os_hash_algo=values[5],
        os_hash_value=values[6],
        disk_format=values[7],
        container_format=values[8],
        visibility=Visibility(values[9]),
        owner=values[10],
        protected=bool(values[11]),
        created_at=values[12],
        updated_at=values[13],
        revision=values[14],
        store_revision=values[15],
        min_disk=values[16],
        min_ram=values[17],
        tags=tuple(values[18]),
        os_hidden=bool(values[19]),
        virtual_size=values[20],
        properties=dict(values[21]),
        locations=locations,
    )


def plain_json(value: Any) -> Any:
    """value with every mapping made a dict and every sequence a list, as JSON keeps them."""
    if isinstance(value, Mapping):
        return {str(key): plain_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain_json(item) for item in value]
    return value
