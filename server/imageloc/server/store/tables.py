"""The database schema: SQLModel table models for images and their ordered locations.

Imports sqlmodel and sqlalchemy only; the repository turns these rows into domain values.
"""

from __future__ import annotations

import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlmodel import Field, SQLModel

#: The longest location URL a row holds; the domain refuses URLs past 255 characters.
MAX_URL_COLUMN_LENGTH = 2048


class UtcDateTime(TypeDecorator[datetime.datetime]):
    """A timestamp written as UTC and always read back as a tz-aware UTC datetime.

    SQLite keeps no offset, so what it returns is naive and gets UTC re-attached;
    PostgreSQL's timestamptz comes back in the session's zone and is converted.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(
        self, value: datetime.datetime | None, dialect: Dialect
    ) -> datetime.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the store keeps tz-aware UTC only")
        return value.astimezone(datetime.UTC)

    def process_result_value(
        self, value: datetime.datetime | None, dialect: Dialect
    ) -> datetime.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=datetime.UTC)
        return value.astimezone(datetime.UTC)


#: The sort keys beside created_at (whose index is above) that have an index of their own.
SORTED_BY_INDEX = ("name", "status", "container_format", "disk_format", "size", "updated_at")


class ImageRow(SQLModel, table=True):
    """One image record; `revision` makes every save conditional."""

    __tablename__ = "images"
    __table_args__ = (
        Index("ix_images_created_at_id", "created_at", "id"),
        Index("ix_images_status_created_at_id", "status", "created_at", "id"),
        # One per sort key of ListImages (domain/listing.py), with the id that breaks ties:
        # a page of any order seeks its index.
        *(Index(f"ix_images_{key}_id", key, "id") for key in SORTED_BY_INDEX),
    )

    id: str = Field(primary_key=True)
    name: str = Field(default="")
    status: str
    size: int = Field(default=0, sa_type=BigInteger)
    checksum: str = Field(default="")
    os_hash_algo: str = Field(default="")
    os_hash_value: str = Field(default="")
    disk_format: str = Field(default="")
    container_format: str = Field(default="")
    visibility: str
    owner: str = Field(default="")
    protected: bool = Field(default=False)
    created_at: datetime.datetime = Field(sa_column=Column(UtcDateTime(), nullable=False))
    updated_at: datetime.datetime = Field(sa_column=Column(UtcDateTime(), nullable=False))
    revision: int = Field(default=1)
    # The store revision of the image's last change (image_changes.revision).
    store_revision: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default="0")
    )
    min_disk: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    min_ram: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    # The tags, a JSON list in their order; the extra properties, a JSON object.
    tags: list[str] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False, server_default="[]")
    )
    os_hidden: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default=false())
    )
    virtual_size: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    properties: dict[str, str] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False, server_default="{}")
    )


class LocationRow(SQLModel, table=True):
    """One location of an image, at its place in the image's list."""

    __tablename__ = "image_locations"
    __table_args__ = (UniqueConstraint("image_id", "position", name="uq_image_locations_position"),)

    id: int | None = Field(
        default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True)
    )
    # The unique (image_id, position) index also serves lookups by image_id.
    image_id: str = Field(
        sa_column=Column(String, ForeignKey("images.id", ondelete="CASCADE"), nullable=False)
    )
    position: int
    url: str = Field(sa_type=String(MAX_URL_COLUMN_LENGTH))
    # `metadata` is SQLModel's own attribute, so the column keeps the name under another key.
    location_metadata: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column("metadata", JSON, nullable=False)
    )


class RequestRow(SQLModel, table=True):
    """The first outcome of an idempotent request, kept to answer its retries."""

    __tablename__ = "request_log"
    __table_args__ = (Index("ix_request_log_created_at", "created_at"),)

    request_id: str = Field(primary_key=True)
    fingerprint: str
    image_id: str
    # The image as the first attempt answered it (see request_log.py for the encoding).
    outcome: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime.datetime = Field(sa_column=Column(UtcDateTime(), nullable=False))


class ChangeRow(SQLModel, table=True):
    """One committed change of an image, at its store revision (the change feed)."""

    __tablename__ = "image_changes"
    __table_args__ = (Index("ix_image_changes_commit_time", "commit_time"),)

    revision: int = Field(
        sa_column=Column(BigInteger, primary_key=True, autoincrement=False, nullable=False)
    )
    image_id: str
    type: str
    # The image after the change (request_log.py's encoding).
    image: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    commit_time: datetime.datetime = Field(sa_column=Column(UtcDateTime(), nullable=False))


class StoreStateRow(SQLModel, table=True):
    """The store's one row of counters: its newest revision and the oldest still watchable.

    Writers take the row's lock to take a revision, so revisions commit in order.
    """

    __tablename__ = "store_state"

    id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    revision: int = Field(default=0, sa_type=BigInteger)
    compact_revision: int = Field(default=0, sa_type=BigInteger)


#: The tables as SQLAlchemy Core sees them; the repository's statements are built on these.
images: Table = SQLModel.metadata.tables["images"]
image_locations: Table = SQLModel.metadata.tables["image_locations"]
request_log: Table = SQLModel.metadata.tables["request_log"]
image_changes: Table = SQLModel.metadata.tables["image_changes"]
store_state: Table = SQLModel.metadata.tables["store_state"]
