"""Glance's JSON documents: an image, a list page, the schemas and the version list.

Imports the domain and the standard library: the shapes python-glanceclient and
openstacksdk read (../shared/reference/glance-rest-clients.md, sections 3 to 6).
"""

from __future__ import annotations

import datetime
import functools
import json
import pathlib
from typing import Any

from imageloc.server.domain.model import Image, ImageStatus

#: Glance 33's image schema, as it serves it.
IMAGE_SCHEMA_FILE = pathlib.Path(__file__).with_name("image_schema.json")

#: Glance 33's version list, in its order: 2.17 is the current one (2.14 and 2.16 are the
#: cache API, which it leaves out).
_VERSIONS = ("2.15", "2.13", "2.12", "2.11", "2.10", "2.9", "2.8", "2.17", "2.7", "2.6",
             "2.5", "2.4", "2.3", "2.2", "2.1", "2.0")  # fmt: skip
CURRENT_VERSION = "2.17"

#: Statuses in which an image has no data yet: its size and hashes are unknown (null).
_NO_DATA = frozenset({ImageStatus.QUEUED, ImageStatus.SAVING, ImageStatus.UPLOADING,
                      ImageStatus.IMPORTING})  # fmt: skip


@functools.cache
def image_schema() -> dict[str, Any]:
    """GET /v2/schemas/image."""
    loaded: dict[str, Any] = json.loads(IMAGE_SCHEMA_FILE.read_text())
    return loaded


def images_schema() -> dict[str, Any]:
    """GET /v2/schemas/images: a page of images, as Glance describes it."""
    return {
        "name": "images",
        "properties": {
            "images": {"type": "array", "items": image_schema()},
            "schema": {"type": "string"},
            "first": {"type": "string"},
            "next": {"type": "string"},
        },
        "links": [
            {"rel": "first", "href": "{first}"},
            {"rel": "next", "href": "{next}"},
            {"rel": "describedby", "href": "{schema}"},
        ],
    }


def versions(base_url: str) -> dict[str, Any]:
    """The version list (GET / and /versions), its links on the host the caller asked."""
    link = [{"rel": "self", "href": f"{base_url}/v2/"}]
    return {
        "versions": [
            {
                "id": f"v{number}",
                "status": "CURRENT" if number == CURRENT_VERSION else "SUPPORTED",
                "links": link,
            }
            for number in _VERSIONS
        ]
    }


def image_document(image: Image, *, locations_shown: bool) -> dict[str, Any]:
    """image as Glance shows it: its extra properties at the top level, null for what is
    unset, `locations` and `direct_url` only for a caller who may see locations (and
    `direct_url` only when there is one), and valid against image_schema()."""
    unknown = image.status in _NO_DATA and not image.size
    document: dict[str, Any] = dict(image.properties)
    document.update(
        {
            "name": image.name or None,
            "disk_format": image.disk_format or None,
            "container_format": image.container_format or None,
            "visibility": image.visibility.value,
            "size": None if unknown else image.size,
            "virtual_size": image.virtual_size,
            "status": image.status.value,
            "checksum": image.checksum or None,
            "protected": image.protected,
            "min_ram": image.min_ram,
            "min_disk": image.min_disk,
            "owner": image.owner or None,
            "os_hidden": image.os_hidden,
            "os_hash_algo": image.os_hash_algo or None,
            "os_hash_value": image.os_hash_value or None,
            "id": image.id,
            "created_at": _time(image.created_at),
            "updated_at": _time(image.updated_at),
            "tags": list(image.tags),
        }
    )
    if locations_shown:
        document["locations"] = [
            {"url": location.url, "metadata": dict(location.metadata)}
            for location in image.locations
        ]
        if image.locations:
            document["direct_url"] = image.locations[0].url
    document["self"] = f"/v2/images/{image.id}"
    document["file"] = f"/v2/images/{image.id}/file"
    document["schema"] = "/v2/schemas/image"
    return document


def _time(moment: datetime.datetime) -> str:
    """Glance's timestamps: UTC to the second, with a Z."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
