"""What a Glance request asks, in the service's terms: a create body, a list query, a PATCH.

Imports the domain and the service. Glance's own checks of a document (read-only and
reserved attributes, types) become the same DomainErrors the gRPC API answers, so both
APIs refuse alike (docs/errors.md); the rules themselves stay in the domain.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from imageloc.server.domain import inputs, listing, record
from imageloc.server.domain.errors import DomainError, Reason
from imageloc.server.domain.listing import ImageFilters, Order, SortKey
from imageloc.server.domain.model import ImageStatus, Location, ValidationData, Visibility
from imageloc.server.service import Decision, ImageService

#: What Glance's documents hold that no request may set (Glance: 403 "... is read-only.").
READ_ONLY = frozenset(
    {
        "status", "checksum", "os_hash_algo", "os_hash_value", "size", "virtual_size",
        "direct_url", "self", "file", "schema", "created_at", "updated_at", "stores",
    }
)  # fmt: skip
#: Glance's reserved attributes (403 "... is reserved.").
RESERVED = frozenset({"location", "locations", "deleted", "deleted_at"})
#: The record fields a document sets by name, with the JSON types each takes.
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str, type(None)),
    "disk_format": (str, type(None)),
    "container_format": (str, type(None)),
    "visibility": (str,),
    "protected": (bool,),
    "os_hidden": (bool,),
    "min_disk": (int,),
    "min_ram": (int,),
    "tags": (list,),
}
#: Glance's default page and its largest (api_limit_max).
DEFAULT_LIMIT, MAX_LIMIT = 25, 1000
#: Query parameters that are not property filters.
_LIST_PARAMETERS = frozenset(
    {"limit", "marker", "sort", "sort_key", "sort_dir", "name", "visibility", "status", "owner",
     "tag", "os_hidden", "size_min", "size_max", "member_status"}
)  # fmt: skip
#: Glance's filters on base fields that this endpoint does not offer (400, not ignored).
_UNOFFERED_FILTERS = frozenset(
    {"checksum", "protected", "id", "created_at", "updated_at", "disk_format",
     "container_format", "os_hash_value", "virtual_size"}
)  # fmt: skip
PATCH_TYPES = (
    "application/openstack-images-v2.1-json-patch",
    "application/openstack-images-v2.0-json-patch",
)


def schema_error(message: str, field: str) -> DomainError:
    """Glance's 400 for a document its schema refuses."""
    return inputs.invalid_request(
        field, f"Provided object does not match schema 'image': {message}"
    )


def _reserved(field: str) -> DomainError:
    return DomainError(Reason.RESERVED_PROPERTY, f"Attribute '{field}' is reserved.", field=field)


def _typed(field: str, value: Any) -> Any:
    """value, if it has a type the field takes (a bool is no integer here)."""
    allowed = _FIELD_TYPES[field]
    if isinstance(value, bool) and bool not in allowed:
        raise schema_error(f"{value!r} is not of type 'integer'", field)
    if not isinstance(value, allowed):
        raise schema_error(f"{json_repr(value)} is not of type {allowed[0].__name__}", field)
    given: Any = value
    if field == "tags" and not all(isinstance(tag, str) for tag in given):
        raise schema_error("every tag must be a string", field)
    if field == "visibility":
        try:
            return Visibility(given)
        except ValueError:
            message = f"{json_repr(value)} is not one of {sorted(Visibility)}"
            raise schema_error(message, field) from None
    return value


def json_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 64 else text[:61] + "..."


def create_arguments(body: Any) -> dict[str, Any]:
    """The keyword arguments of ImageService.create_image that a POST /v2/images body asks."""
    if not isinstance(body, dict):
        raise schema_error("the body is not a JSON object", "body")
    # Glance's default visibility on create is shared (ImageFactory.new_image); gRPC's private.
    arguments: dict[str, Any] = {"name": "", "visibility": Visibility.SHARED}
    properties: dict[str, str] = {}
    for key, value in body.items():
        if key in READ_ONLY:
            raise record.read_only(key)
        if key in RESERVED:
            raise _reserved(key)
        if key == "id":
            if not isinstance(value, str):
                raise schema_error(f"{json_repr(value)} is not of type 'string'", "id")
            arguments["image_id"] = value
        elif key == "owner":
            if value is not None:
                if not isinstance(value, str):
                    raise schema_error(f"{json_repr(value)} is not of type 'string'", "owner")
                arguments["owner"] = value
        elif key in _FIELD_TYPES:
            typed = _typed(key, value)
            arguments[key] = "" if typed is None else typed
        elif not isinstance(value, str):
            raise schema_error(f"{json_repr(value)} is not of type 'string'", key)
        else:
            properties[key] = value
    arguments["properties"] = properties
    return arguments


@dataclasses.dataclass(frozen=True)
class ListQuery:
    """What GET /v2/images asks: its filters, order, page size and the marker's id."""

    filters: ImageFilters
    order: Order
    limit: int
    marker: str | None


def list_query(query: Mapping[str, str], multi: Callable[[str], list[str]]) -> ListQuery:
    """A list request's query parameters (multi: every value of a repeated one)."""
    for key in query:
        if key in _UNOFFERED_FILTERS:
            raise inputs.invalid_request(key, f"Filtering by {key} is not supported here.")
    properties = {k: v for k, v in query.items() if k not in _LIST_PARAMETERS}
    visibility = query.get("visibility")
    filters = ImageFilters(
        status=_enum(ImageStatus, query.get("status"), "status"),
        visibility=None if visibility == "all" else _enum(Visibility, visibility, "visibility"),
        name=query.get("name"),
        owner=query.get("owner"),
        tags=tuple(multi("tag")),
        properties=properties,
        os_hidden=_boolean(query.get("os_hidden"), "os_hidden"),
        size_min=_integer(query.get("size_min"), "size_min"),
        size_max=_integer(query.get("size_max"), "size_max"),
    )
    limit = _integer(query.get("limit"), "limit")
    return ListQuery(
        filters=filters,
        order=_order(query.get("sort"), multi("sort_key"), multi("sort_dir")),
        limit=DEFAULT_LIMIT if limit is None else min(limit, MAX_LIMIT),
        marker=query.get("marker"),
    )


def _order(sort: str | None, keys: list[str], directions: list[str]) -> Order:
    """Glance's `sort=name:asc,created_at` or `sort_key`/`sort_dir` (descending by default)."""
    if sort is not None and (keys or directions):
        raise inputs.invalid_request(
            "sort", "The 'sort' parameter and sort_key/sort_dir exclude each other."
        )
    wanted: list[tuple[str, str]] = []
    if sort is not None:
        for part in sort.split(","):
            name, _, direction = part.strip().partition(":")
            wanted.append((name, direction or "desc"))
    else:
        if len(directions) > 1 and len(directions) != len(keys):
            raise inputs.invalid_request("sort_dir", "Give one sort_dir, or one per sort_key.")
        for i, name in enumerate(keys):
            direction = directions[i] if len(directions) > 1 else (directions or ["desc"])[0]
            wanted.append((name, direction))
    sort_keys = []
    for name, direction in wanted:
        if direction not in ("asc", "desc"):
            raise inputs.invalid_request("sort_dir", f"Invalid sort direction: {direction[:16]}")
        sort_keys.append(SortKey(name, descending=direction == "desc"))
    return listing.order_of(sort_keys)


def _enum(kind: type[Any], value: str | None, field: str) -> Any:
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        raise inputs.invalid_request(field, f"Invalid {field} value: {value[:64]}") from None


def _boolean(value: str | None, field: str) -> bool | None:
    if value is None:
        return None
    lowered = value.lower()
    if lowered not in ("true", "false"):
        raise inputs.invalid_request(field, f"Invalid value for {field}: {value[:64]}")
    return lowered == "true"


def _integer(value: str | None, field: str) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise inputs.invalid_request(field, f"{field} param must be an integer") from None
    if number < 0:
        raise inputs.invalid_request(field, f"{field} param must be positive")
    return number


@dataclasses.dataclass(frozen=True)
class Patch:
    """A PATCH document as decisions, in its order, and the location policies they need."""

    decisions: Sequence[Decision]
    adds_locations: bool
    removes_locations: bool


def patch_of(service: ImageService, content_type: str, body: Any) -> Patch:
    """The decisions of a JSON-patch document (Glance's v2.1 media type, RFC 6902 objects,
    or its v2.0 one, `{"replace": "/name", "value": ...}`)."""
    if not isinstance(body, list):
        raise inputs.invalid_request("body", "A JSON-patch document must be a list of operations.")
    old_style = content_type == PATCH_TYPES[1]
    decisions: list[Decision] = []
    adds = removes = False
    for operation in body:
        op, path, value = _operation(operation, old_style=old_style)
        decision, kind = _decision(service, op, path, value)
        decisions.append(decision)
        adds |= kind == "add-location"
        removes |= kind == "remove-location"
    return Patch(decisions=decisions, adds_locations=adds, removes_locations=removes)


def _operation(operation: Any, *, old_style: bool) -> tuple[str, list[str], Any]:
    if not isinstance(operation, dict):
        raise inputs.invalid_request("body", "Operations must be JSON objects.")
    if old_style:
        ops = [name for name in ("add", "remove", "replace") if name in operation]
        if len(ops) != 1 or "op" in operation:
            raise inputs.invalid_request(
                "body",
                'Operation objects must contain exactly one member named "add", "remove", or'
                ' "replace".',
            )
        op: Any = ops[0]
        pointer: Any = operation[ops[0]]
    else:
        op, pointer = operation.get("op"), operation.get("path")
        if op not in ("add", "remove", "replace"):
            raise inputs.invalid_request("body", f"Invalid operation: {json_repr(op)}")
    if not isinstance(pointer, str) or not pointer.startswith("/"):
        raise inputs.invalid_request(
            "body", f'Pointer `{json_repr(pointer)}` does not start with "/".'
        )
    if op != "remove" and "value" not in operation:
        raise inputs.invalid_request("body", f'Operation "{op}" requires a member named "value".')
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/")]
    return op, parts, operation.get("value")


def _decision(service: ImageService, op: str, path: list[str], value: Any) -> tuple[Decision, str]:
    """One operation's decision, and what kind it is (record, add-location, remove-location)."""
    pointer = "/" + "/".join(path)
    field = path[0]
    if field == "locations":
        return _location_decision(service, op, path, value, pointer)
    if len(path) != 1:
        raise inputs.invalid_request("body", f"Invalid JSON pointer for this resource: '{pointer}'")
    if field in READ_ONLY or field in ("id", "owner"):
        raise record.read_only(field)
    if field in RESERVED:
        raise _reserved(field)
    if field in _FIELD_TYPES:
        if op == "remove":
            raise DomainError(
                Reason.READ_ONLY_FIELD,
                f"Properties {field} cannot be removed.",
                field=field,
                metadata={"field": field},
            )
        update = record.ImageUpdate(fields={field: _typed(field, value)})
        return service.record_updated(update), "record"
    if op == "remove":
        return service.record_updated(record.ImageUpdate(properties={field: None})), "record"
    if not isinstance(value, str):
        raise schema_error(f"{json_repr(value)} is not of type 'string'", field)
    return service.record_updated(record.ImageUpdate(properties={field: value})), "record"


def _location_decision(
    service: ImageService, op: str, path: list[str], value: Any, pointer: str
) -> tuple[Decision, str]:
    if len(path) == 1:
        if op != "replace":
            raise inputs.invalid_request(
                "body", f"Invalid JSON pointer for this resource: '{pointer}'"
            )
        if not isinstance(value, list):
            raise schema_error("the locations are not a list", "locations")
        new = [location_from_json(item, "locations") for item in value]
        return service.locations_replaced(new), "add-location"
    if len(path) != 2:
        raise inputs.invalid_request("body", f"Invalid JSON pointer for this resource: '{pointer}'")
    position = path[1]
    if op == "replace":
        raise inputs.invalid_request("body", f"Invalid JSON pointer for this resource: '{pointer}'")
    if op == "add":
        index = None if position == "-" else _index(position, pointer)
        data = validation_data_from_json(
            value.get("validation_data") if isinstance(value, dict) else None
        )
        location = location_from_json(value, "location")
        return service.location_added(location, index=index, validation_data=data), "add-location"
    return service.location_removed(index=_index(position, pointer)), "remove-location"


def _index(text: str, pointer: str) -> int:
    if not text.isdigit():
        raise inputs.invalid_request("body", f"Invalid JSON pointer for this resource: '{pointer}'")
    return int(text)


def location_from_json(value: Any, field: str) -> Location:
    """A location object, `{url, metadata}` (Glance's schema requires both)."""
    if not isinstance(value, dict) or not isinstance(value.get("url"), str):
        raise schema_error("a location needs a string 'url'", field)
    metadata = value.get("metadata", {})
    if not isinstance(metadata, dict):
        raise schema_error("a location's 'metadata' must be an object", field)
    return Location(url=value["url"], metadata=metadata)


def validation_data_from_json(value: Any) -> ValidationData | None:
    """Validation data (checksum, os_hash_algo, os_hash_value); empty or absent is None."""
    if value is None or value == {}:
        return None
    names = ("checksum", "os_hash_algo", "os_hash_value")
    if not isinstance(value, dict) or set(value) - set(names):
        raise inputs.invalid_request(
            "validation_data", "validation_data takes checksum, os_hash_algo and os_hash_value"
        )
    if not all(isinstance(value.get(name, ""), str) for name in names):
        raise inputs.invalid_request("validation_data", "validation_data's values are strings")
    return ValidationData(**{name: value.get(name, "") for name in names})
