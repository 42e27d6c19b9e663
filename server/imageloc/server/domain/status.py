"""Glance's image status machine and the lifecycle moves built on it.

Standard library only. Each lifecycle function takes an image and returns the
changed image or raises DomainError; none of them saves anything.
"""

from __future__ import annotations

import dataclasses

from imageloc.server.domain.errors import Action, DomainError, Reason
from imageloc.server.domain.model import Image, ImageStatus

S = ImageStatus

#: glance/domain/__init__.py :: Image.valid_state_targets, verbatim.
TRANSITIONS: dict[ImageStatus, frozenset[ImageStatus]] = {
    S.QUEUED: frozenset({S.SAVING, S.UPLOADING, S.IMPORTING, S.ACTIVE, S.DELETED}),
    S.SAVING: frozenset({S.ACTIVE, S.KILLED, S.DELETED, S.QUEUED}),
    S.UPLOADING: frozenset({S.IMPORTING, S.QUEUED, S.DELETED}),
    S.IMPORTING: frozenset({S.ACTIVE, S.DELETED, S.QUEUED}),
    S.ACTIVE: frozenset({S.PENDING_DELETE, S.DELETED, S.DEACTIVATED}),
    S.KILLED: frozenset({S.DELETED}),
    S.PENDING_DELETE: frozenset({S.DELETED, S.ACTIVE}),
    S.DELETED: frozenset(),
    S.DEACTIVATED: frozenset({S.ACTIVE, S.DELETED}),
}

#: Leaving these for a status that holds data needs both formats set.
_FORMAT_GUARDED_FROM = frozenset({S.QUEUED, S.UPLOADING})
_DATA_STATUSES = frozenset({S.SAVING, S.ACTIVE, S.IMPORTING})


def can_transition(current: ImageStatus, target: ImageStatus) -> bool:
    """Whether Glance's table allows current -> target."""
    return target in TRANSITIONS[current]


def transition(image: Image, target: ImageStatus, *, action: Action) -> Image:
    """Move image to target, enforcing the table and the format requirement."""
    if not can_transition(image.status, target):
        raise DomainError(
            Reason.INVALID_TRANSITION,
            f"Image status transition from {image.status} to {target} is not allowed",
            image_id=image.id,
            image_status=image.status,
            action=action,
            metadata={"targetStatus": str(target)},
        )
    if image.status in _FORMAT_GUARDED_FROM and target in _DATA_STATUSES:
        require_formats(image)
    return dataclasses.replace(image, status=target)


def require_formats(image: Image) -> None:
    """Glance's "Properties ... must be set prior to saving data." check."""
    missing = [
        name
        for name, value in (
            ("disk_format", image.disk_format),
            ("container_format", image.container_format),
        )
        if not value
    ]
    if missing:
        noun = "Property" if len(missing) == 1 else "Properties"
        raise DomainError(
            Reason.MISSING_FORMAT,
            f"{noun} {', '.join(missing)} must be set prior to saving data.",
            image_id=image.id,
            image_status=image.status,
            metadata={"missingFields": ",".join(missing)},
        )


def _require_status(image: Image, allowed: frozenset[ImageStatus], *, action: Action) -> None:
    if image.status not in allowed:
        # Glance's words; the statuses that would do are in the metadata.
        raise DomainError(
            Reason.INVALID_TRANSITION,
            f"Not allowed to {action.value.replace('_', ' ')} image in status '{image.status}'",
            image_id=image.id,
            image_status=image.status,
            action=action,
            metadata={"allowedStatuses": ",".join(sorted(allowed))},
        )


def begin_upload(image: Image) -> Image:
    """queued -> saving, as an uploader does before it writes data."""
    _require_status(image, frozenset({S.QUEUED}), action=Action.UPLOAD)
    return transition(image, S.SAVING, action=Action.UPLOAD)


def fail_upload(image: Image) -> Image:
    """saving -> killed."""
    _require_status(image, frozenset({S.SAVING}), action=Action.FAIL_UPLOAD)
    return transition(image, S.KILLED, action=Action.FAIL_UPLOAD)


def stage(image: Image) -> Image:
    """queued -> uploading: data is being staged for an import."""
    _require_status(image, frozenset({S.QUEUED}), action=Action.STAGE)
    return transition(image, S.UPLOADING, action=Action.STAGE)


def begin_import(image: Image) -> Image:
    """queued or uploading -> importing."""
    _require_status(image, frozenset({S.QUEUED, S.UPLOADING}), action=Action.IMPORT)
    return transition(image, S.IMPORTING, action=Action.IMPORT)


def deactivate(image: Image) -> Image:
    """active -> deactivated; unchanged when deactivated already."""
    if image.status is S.DEACTIVATED:
        return image
    _require_status(image, frozenset({S.ACTIVE}), action=Action.DEACTIVATE)
    return transition(image, S.DEACTIVATED, action=Action.DEACTIVATE)


def reactivate(image: Image) -> Image:
    """deactivated -> active; unchanged when active already."""
    if image.status is S.ACTIVE:
        return image
    _require_status(image, frozenset({S.DEACTIVATED}), action=Action.REACTIVATE)
    return transition(image, S.ACTIVE, action=Action.REACTIVATE)


def delete(image: Image, *, delayed_delete: bool) -> Image:
    """-> deleted, or -> pending_delete with delayed delete when it has locations.

    Glance reaches pending_delete only from active, so a delayed delete of a
    non-active image that has locations is an invalid transition.
    """
    if image.protected:
        raise DomainError(
            Reason.IMAGE_PROTECTED,
            f"Image {image.id} is protected and cannot be deleted.",
            image_id=image.id,
            image_status=image.status,
        )
    target = S.PENDING_DELETE if delayed_delete and image.locations else S.DELETED
    return transition(image, target, action=Action.DELETE)
