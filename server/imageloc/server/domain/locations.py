"""Glance's location rules, each a pure function from an image to a new image.

Standard library only. The order of the checks in each function is Glance's,
so the first refusal a caller sees is the one Glance would answer.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence

from imageloc.server.domain.errors import Action, DomainError, Reason
from imageloc.server.domain.model import Image, ImageStatus, Location, ValidationData
from imageloc.server.domain.policy import LocationPolicy
from imageloc.server.domain.status import transition
from imageloc.server.domain.validation import (
    check_hashes,
    check_location,
    validation_updates,
)

S = ImageStatus

#: The statuses in which each location operation is allowed.
ADD_STATUSES = frozenset({S.ACTIVE, S.QUEUED})
REPLACE_STATUSES = frozenset({S.ACTIVE, S.QUEUED})
REMOVE_STATUSES = frozenset({S.ACTIVE})
#: Glance 2.17's add-location call.
QUEUED_ADD_STATUSES = frozenset({S.QUEUED})


def _require_status(image: Image, allowed: frozenset[ImageStatus], verb: str) -> None:
    if image.status not in allowed:
        raise DomainError(
            Reason.IMAGE_STATUS_CONFLICT,
            f"It's not allowed to {verb} locations if image status is {image.status}.",
            image_id=image.id,
            image_status=image.status,
            metadata={"allowedStatuses": ",".join(sorted(allowed))},
        )


def _require_quota(image: Image, attempted: int, policy: LocationPolicy) -> None:
    if 0 <= policy.location_quota < attempted:
        raise DomainError(
            Reason.LOCATION_QUOTA_EXCEEDED,
            "The limit has been exceeded on the number of allowed image locations. "
            f"Attempted: {attempted}, Maximum: {policy.location_quota}",
            image_id=image.id,
            image_status=image.status,
            metadata={"attempted": str(attempted), "maximum": str(policy.location_quota)},
        )


def _duplicate(image: Image, location: Location, field: str) -> DomainError:
    return DomainError(
        Reason.DUPLICATE_LOCATION,
        f"The location {location.url} already exists",
        image_id=image.id,
        image_status=image.status,
        field=field,
        metadata={"url": location.url},
    )


def _invalid_position(image: Image, index: int, verb: str, limit: str) -> DomainError:
    return DomainError(
        Reason.INVALID_POSITION,
        f"Invalid position for {verb} a location: {index} (want {limit}).",
        image_id=image.id,
        image_status=image.status,
        field="index",
        metadata={"index": str(index), "locationCount": str(len(image.locations))},
    )


def _activate(image: Image, updates: Mapping[str, str], action: Action) -> Image:
    """A queued image that got locations becomes active with its validation data."""
    if image.status is not S.QUEUED:
        return image
    active = transition(image, S.ACTIVE, action=action)
    return active.with_hashes(updates)


def add_location(
    image: Image,
    location: Location,
    *,
    index: int | None,
    validation_data: ValidationData | None,
    policy: LocationPolicy,
) -> Image:
    """Insert location at index (None appends)."""
    _require_status(image, ADD_STATUSES, "add")
    updates = validation_updates(image, validation_data, policy=policy)
    count = len(image.locations)
    position = count if index is None else index
    if not 0 <= position <= count:
        raise _invalid_position(image, position, "adding", f"0 <= index <= {count}")
    _require_quota(image, count + 1, policy)
    check_location(image, location, field="location", policy=policy)
    if any(location.same_as(existing) for existing in image.locations):
        raise _duplicate(image, location, "location")
    locations = list(image.locations)
    locations.insert(position, location)
    return _activate(image.with_locations(locations), updates, Action.ADD_LOCATION)


def remove_location(image: Image, *, index: int | None = None, url: str | None = None) -> Image:
    """Remove the location at index, or the first one whose URL is url."""
    _require_status(image, REMOVE_STATUSES, "remove")
    count = len(image.locations)
    if count == 1:
        raise DomainError(
            Reason.LAST_LOCATION,
            "Cannot remove last location in the image.",
            image_id=image.id,
            image_status=image.status,
        )
    if url is not None:
        matches = [i for i, loc in enumerate(image.locations) if loc.url == url]
        if not matches:
            raise DomainError(
                Reason.LOCATION_NOT_FOUND,
                f"Image {image.id} has no location {url}",
                image_id=image.id,
                image_status=image.status,
                field="url",
                metadata={"url": url},
            )
        position = matches[0]
    else:
        position = -1 if index is None else index
        if not 0 <= position < count:
            raise _invalid_position(image, position, "removing", f"0 <= index < {count}")
    locations = list(image.locations)
    del locations[position]
    return image.with_locations(locations)


def check_not_empty(image: Image, locations: Sequence[Location]) -> None:
    """ReplaceLocation's first check, before the status: the list must not be empty."""
    if not locations:
        raise DomainError(
            Reason.EMPTY_LOCATIONS,
            "Cannot set locations to empty list.",
            image_id=image.id,
            image_status=image.status,
            field="locations",
        )


def replace_locations(
    image: Image,
    locations: Sequence[Location],
    *,
    validation_data: ValidationData | None,
    policy: LocationPolicy,
) -> Image:
    """Set the whole list; on an image with locations only order and metadata may change."""
    check_not_empty(image, locations)
    _require_status(image, REPLACE_STATUSES, "replace")
    updates = validation_updates(image, validation_data, policy=policy)
    _require_quota(image, len(locations), policy)
    if image.locations and Counter(loc.url for loc in image.locations) != Counter(
        loc.url for loc in locations
    ):
        raise DomainError(
            Reason.LOCATIONS_NOT_EMPTY,
            "Original locations is not empty: only the order and the metadata of the "
            "image's locations can be replaced.",
            image_id=image.id,
            image_status=image.status,
            field="locations",
        )
    for i, location in enumerate(locations):
        check_location(image, location, field=f"locations[{i}]", policy=policy)
        if any(location.same_as(earlier) for earlier in locations[:i]):
            raise _duplicate(image, location, f"locations[{i}]")
    return _activate(image.with_locations(locations), updates, Action.REPLACE_LOCATION)


def complete_upload(
    image: Image,
    location: Location,
    *,
    size: int,
    hashes: Mapping[str, str],
    policy: LocationPolicy,
) -> Image:
    """saving or importing -> active, with size, hashes and location put first."""
    if image.status not in (S.SAVING, S.IMPORTING):
        raise DomainError(
            Reason.INVALID_TRANSITION,
            f"Not allowed to complete an upload of an image in status '{image.status}' "
            "(wanted importing or saving)",
            image_id=image.id,
            image_status=image.status,
            action=Action.COMPLETE_UPLOAD,
        )
    given = {name: value for name, value in hashes.items() if value}
    check_location(image, location, field="location", policy=policy)
    check_hashes(given, policy=policy, image=image, field_prefix="")
    if any(location.same_as(existing) for existing in image.locations):
        raise _duplicate(image, location, "location")
    _require_quota(image, len(image.locations) + 1, policy)
    active = transition(image, S.ACTIVE, action=Action.COMPLETE_UPLOAD)
    return dataclasses.replace(
        active.with_hashes(given), locations=(location, *image.locations), size=size
    )


#: The algorithms the Image API 2.17 location call accepts in its validation data.
LOCATION_API_ALGORITHMS = ("sha1", "sha256", "sha512", "md5")


def add_location_to_queued(
    image: Image,
    location: Location,
    *,
    validation_data: ValidationData | None,
    policy: LocationPolicy,
    by_service: bool,
) -> Image:
    """Glance 2.17's add-location (POST /v2/images/{id}/locations): a queued image only;
    a caller without the service role (by_service), admins too, may give only an http(s)
    URL; the validation data may use any of LOCATION_API_ALGORITHMS. Glance reads the data
    from the URL and checks the hashes later; here no data is read, so they are stored as
    given and the image is active at once."""
    _require_status(image, QUEUED_ADD_STATUSES, "add")
    if not by_service and not location.url.startswith("http"):
        raise DomainError(
            Reason.HTTP_LOCATION_REQUIRED,
            "http store must be enabled to use location API by normal user.",
            image_id=image.id,
            image_status=image.status,
            field="location.url",
        )
    algorithm = validation_data.os_hash_algo if validation_data is not None else ""
    if algorithm and algorithm not in LOCATION_API_ALGORITHMS:
        raise DomainError(
            Reason.INVALID_VALIDATION_DATA,
            f"os_hash_algo must be one of {', '.join(LOCATION_API_ALGORITHMS)},"
            f" not {algorithm[:64]!r}",
            image_id=image.id,
            image_status=image.status,
            field="validation_data.os_hash_algo",
        )
    if algorithm:
        policy = dataclasses.replace(policy, hashing_algorithm=algorithm)
    return add_location(image, location, index=None, validation_data=validation_data, policy=policy)
