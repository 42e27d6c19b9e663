"""What a listing asks for: its filters, its sort order, and where a page starts.

Standard library only. Glance's filters and sort keys; a store filters and orders by these
(store/repository.py in SQL, tests/fakes.py with matches and sort_values).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from imageloc.server.domain import inputs
from imageloc.server.domain.model import Image, ImageStatus, Visibility

#: Glance's sort keys (glanceclient refuses others before it sends).
SORT_KEYS = (
    "name", "status", "container_format", "disk_format", "size", "id", "created_at", "updated_at",
)  # fmt: skip
#: Glance's default order: the newest first.
DEFAULT_ORDER_TEXT = "created_at desc"
#: The most tags, and properties, one listing may filter by: what an image holds by default.
MAX_FILTER_ITEMS = 128
#: The most keys one order may name (every sort key once).
MAX_SORT_KEYS = len(SORT_KEYS)


@dataclasses.dataclass(frozen=True)
class SortKey:
    """One key of an order: a field of SORT_KEYS, descending or not."""

    field: str
    descending: bool = False


#: An order: its keys, most significant first, always ending with id (the tie-break).
Order = tuple[SortKey, ...]


@dataclasses.dataclass(frozen=True)
class ImageFilters:
    """Glance's list filters; every one given must hold (tags: each of them).

    os_hidden None lists the images that are not hidden, as Glance's default does.
    """

    status: ImageStatus | None = None
    visibility: Visibility | None = None
    name: str | None = None
    owner: str | None = None
    tags: tuple[str, ...] = ()
    properties: Mapping[str, str] = dataclasses.field(default_factory=dict)
    os_hidden: bool | None = None
    size_min: int | None = None
    size_max: int | None = None

    def encoded(self) -> list[Any]:
        """The filters as JSON values, equal for equal filters (a page token holds them)."""
        return [
            self.status and self.status.value,
            self.visibility and self.visibility.value,
            self.name,
            self.owner,
            sorted(self.tags),
            sorted(self.properties.items()),
            self.os_hidden,
            self.size_min,
            self.size_max,
        ]


def check_filters(filters: ImageFilters) -> None:
    """Refuse filters no image could pass or no store should run: a NUL, more tags or
    properties than an image may hold by default (INVALID_REQUEST)."""
    texts = {"name": filters.name or "", "owner": filters.owner or ""}
    texts.update((f"tags[{i}]", tag) for i, tag in enumerate(filters.tags))
    for key, value in filters.properties.items():
        texts[f"properties.{key[:64]}"] = key + value
    for field, text in texts.items():
        if "\x00" in text:
            raise inputs.invalid_request(field, f"{field} contains a NUL character")
    for field, count in (("tags", len(filters.tags)), ("properties", len(filters.properties))):
        if count > MAX_FILTER_ITEMS:
            raise inputs.invalid_request(
                field, f"a listing filters by at most {MAX_FILTER_ITEMS} {field}, not {count}"
            )


def order_of(keys: Sequence[SortKey]) -> Order:
    """keys, each field once, ended by id in the direction of the last key (Glance's
    tie-break): a total order, so that a page can start after any image."""
    seen: list[SortKey] = []
    for key in keys:
        if key.field not in SORT_KEYS:
            raise inputs.invalid_request(
                "order_by",
                f"Invalid sort key: {key.field[:64]}. Valid keys: {', '.join(SORT_KEYS)}",
            )
        if any(k.field == key.field for k in seen):
            raise inputs.invalid_request("order_by", f"sort key {key.field} is given twice")
        seen.append(key)
        if key.field == "id":
            break
    if not seen:
        return parse_order(DEFAULT_ORDER_TEXT)
    if seen[-1].field != "id":
        seen.append(SortKey("id", descending=seen[-1].descending))
    return tuple(seen)


def parse_order(text: str) -> Order:
    """An AIP-132 order_by: "name desc, size" (a field, then asc or desc; asc by default)."""
    keys = []
    for part in text.split(","):
        words = part.split()
        if not words:
            if text.strip():
                raise inputs.invalid_request("order_by", f"order_by {text[:64]!r} has an empty key")
            continue
        if len(words) > 2 or (len(words) == 2 and words[1].lower() not in ("asc", "desc")):
            raise inputs.invalid_request(
                "order_by", f"order_by key {part.strip()[:64]!r} is not 'FIELD [asc|desc]'"
            )
        keys.append(SortKey(words[0], descending=len(words) == 2 and words[1].lower() == "desc"))
    return order_of(keys)


def order_text(order: Order) -> str:
    """order as parse_order reads it."""
    return ", ".join(f"{k.field} {'desc' if k.descending else 'asc'}" for k in order)


def sort_values(image: Image, order: Order) -> tuple[Any, ...]:
    """image's values of order's fields (statuses by their words, times as datetimes)."""
    return tuple(_value(image, key.field) for key in order)


def comes_after(values: Sequence[Any], cursor: Sequence[Any], order: Order) -> bool:
    """Whether an image with these sort values comes after the cursor's in order."""
    for key, value, start in zip(order, values, cursor, strict=True):
        if value != start:
            return bool(value < start) if key.descending else bool(value > start)
    return False


def matches(image: Image, filters: ImageFilters) -> bool:
    """Whether image passes every filter (what a store's WHERE says)."""
    return (
        (filters.status is None or image.status is filters.status)
        and (filters.visibility is None or image.visibility is filters.visibility)
        and (filters.name is None or image.name == filters.name)
        and (filters.owner is None or image.owner == filters.owner)
        and all(tag in image.tags for tag in filters.tags)
        and all(image.properties.get(k) == v for k, v in filters.properties.items())
        and image.os_hidden is bool(filters.os_hidden)
        and (filters.size_min is None or image.size >= filters.size_min)
        and (filters.size_max is None or image.size <= filters.size_max)
    )


def cursor_to_json(values: Sequence[Any]) -> list[Any]:
    """A cursor's values as JSON (times as ISO 8601)."""
    return [v.isoformat() if isinstance(v, datetime.datetime) else v for v in values]


def cursor_from_json(encoded: Sequence[Any], order: Order) -> tuple[Any, ...]:
    """The cursor cursor_to_json encoded; ValueError or TypeError when it does not fit order."""
    if len(encoded) != len(order):
        raise ValueError("a cursor of another order")
    values: list[Any] = []
    for key, value in zip(order, encoded, strict=True):
        if key.field in ("created_at", "updated_at"):
            moment = datetime.datetime.fromisoformat(value)
            if moment.tzinfo is None:
                raise ValueError("a cursor time without a time zone")
            values.append(moment)
        elif key.field == "size":
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError("a size that is not an integer")
            values.append(value)
        elif not isinstance(value, str):
            raise TypeError(f"a {key.field} that is not a string")
        else:
            values.append(value)
    return tuple(values)


def _value(image: Image, field: str) -> Any:
    value = getattr(image, field)
    return value.value if isinstance(value, ImageStatus) else value
