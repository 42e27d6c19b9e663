"""The domain's values: image statuses, locations and images.

Standard library only. Values are frozen; rules return new values.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
from collections.abc import Mapping, Sequence
from typing import Any


class ImageStatus(enum.StrEnum):
    """Glance's image statuses, by Glance's own lowercase words."""

    QUEUED = "queued"
    SAVING = "saving"
    ACTIVE = "active"
    KILLED = "killed"
    DELETED = "deleted"
    PENDING_DELETE = "pending_delete"
    DEACTIVATED = "deactivated"
    UPLOADING = "uploading"
    IMPORTING = "importing"


#: Statuses in which an image is gone: every call on it answers "not found".
GONE_STATUSES = frozenset({ImageStatus.DELETED, ImageStatus.PENDING_DELETE})


class Visibility(enum.StrEnum):
    """Who may see an image."""

    PRIVATE = "private"
    PUBLIC = "public"
    SHARED = "shared"
    COMMUNITY = "community"


#: Location metadata: a JSON object whose every leaf is a string.
Metadata = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Location:
    """One place that holds an image's data."""

    url: str
    metadata: Metadata = dataclasses.field(default_factory=dict)

    def same_as(self, other: Location) -> bool:
        """Glance's duplicate test: the same URL and equal metadata."""
        return self.url == other.url and dict(self.metadata) == dict(other.metadata)


@dataclasses.dataclass(frozen=True)
class ValidationData:
    """Hashes a queued image takes when a location makes it active.

    Empty strings mean "not given".
    """

    checksum: str = ""
    os_hash_algo: str = ""
    os_hash_value: str = ""


@dataclasses.dataclass(frozen=True)
class Image:
    """The record of one image. `revision` grows by one with every saved change.

    store_revision is the store's revision of the image's last change: one counter for
    the whole store, assigned in commit order (the change feed, WatchImages).
    """

    id: str
    name: str
    status: ImageStatus
    created_at: datetime.datetime
    updated_at: datetime.datetime
    locations: tuple[Location, ...] = ()
    size: int = 0
    checksum: str = ""
    os_hash_algo: str = ""
    os_hash_value: str = ""
    disk_format: str = ""
    container_format: str = ""
    visibility: Visibility = Visibility.PRIVATE
    owner: str = ""
    protected: bool = False
    revision: int = 1
    store_revision: int = 0
    min_disk: int = 0
    min_ram: int = 0
    tags: tuple[str, ...] = ()
    os_hidden: bool = False
    virtual_size: int | None = None
    properties: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def with_hashes(self, values: Mapping[str, str]) -> Image:
        """This image with the checksum, os_hash_algo and os_hash_value in values."""
        return dataclasses.replace(
            self,
            checksum=values.get("checksum", self.checksum),
            os_hash_algo=values.get("os_hash_algo", self.os_hash_algo),
            os_hash_value=values.get("os_hash_value", self.os_hash_value),
        )

    def with_locations(self, locations: Sequence[Location]) -> Image:
        """This image with another location list."""
        return dataclasses.replace(self, locations=tuple(locations))


class ChangeType(enum.StrEnum):
    """What a committed change did to an image."""

    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"


@dataclasses.dataclass(frozen=True)
class Change:
    """One committed change: the image after it, at the store revision it committed at."""

    revision: int
    type: ChangeType
    image: Image
    commit_time: datetime.datetime


def change_type(old: Image | None, new: Image) -> ChangeType:
    """What turning old (None: nothing) into new is."""
    if old is None:
        return ChangeType.CREATED
    if new.status in GONE_STATUSES and old.status not in GONE_STATUSES:
        return ChangeType.DELETED
    return ChangeType.UPDATED
