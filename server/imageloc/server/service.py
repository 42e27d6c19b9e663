"""The use cases: load an image, let a domain rule decide, save, commit once.

Imports the domain only. Every mutation is one write unit of work whose save is
conditional on the revision the rule decided on; a lost race is decided again
on fresh state, and only a caller-given stale etag ends in ETAG_MISMATCH.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import datetime
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence

from imageloc.server.domain import inputs, listing, locations, record, status
from imageloc.server.domain.access import UNRESTRICTED, CallerAccess
from imageloc.server.domain.errors import DomainError, Reason, image_not_found
from imageloc.server.domain.listing import ImageFilters, Order
from imageloc.server.domain.model import (
    GONE_STATUSES,
    Change,
    Image,
    ImageStatus,
    Location,
    ValidationData,
    Visibility,
    change_type,
)
from imageloc.server.domain.policy import LocationPolicy
from imageloc.server.domain.ports import (
    UNOBSERVED,
    DeadlineExceededError,
    ListCursor,
    RequestKey,
    RequestRecordedMeanwhileError,
    StoreHead,
    UnitOfWork,
    UnitOfWorkFactory,
    WorkAttempts,
    WorkObserver,
)
from imageloc.server.domain.record import ImageUpdate, RecordLimits
from imageloc.server.domain.validation import check_validation_data_shape

#: A listing with no filter but Glance's default (hidden images left out).
NO_FILTERS = ImageFilters()

#: A decision: the image as loaded -> the image to save (the same one for a no-op).
Decision = Callable[[Image], Image]

#: A deadline further away than this is no deadline.
NO_DEADLINE_SECONDS = 24 * 3600.0

#: How many times a write lost to a concurrent one is decided again.
MAX_WRITE_ATTEMPTS = 50


class ConcurrentUpdateError(Exception):
    """A write kept losing races to other writers; the caller may retry."""


def utc_now() -> datetime.datetime:
    """The current time, timezone-aware UTC."""
    return datetime.datetime.now(datetime.UTC)


def etag_of(image: Image) -> str:
    """An opaque tag that changes with every saved change of the image."""
    digest = hashlib.blake2b(f"{image.id}:{image.revision}".encode(), digest_size=8)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class Page:
    """One page of ListImages."""

    images: Sequence[Image]
    next_page_token: str
    #: The store revision the page was read at.
    revision: int = 0


class ImageService:
    """Every operation of the API, on top of a unit-of-work factory."""

    def __init__(
        self,
        unit_of_work: UnitOfWorkFactory,
        *,
        policy: LocationPolicy,
        delayed_delete: bool = False,
        clock: Callable[[], datetime.datetime] = utc_now,
        deadline: float | None = None,
        request: RequestKey | None = None,
        access: CallerAccess = UNRESTRICTED,
        limits: RecordLimits = record.DEFAULT_LIMITS,
        observer: WorkObserver = UNOBSERVED,
    ) -> None:
        self._uow = unit_of_work
        self._observer = observer
        self._policy = policy
        self._limits = limits
        self._delayed_delete = delayed_delete
        self._clock = clock
        self._deadline = deadline
        self._request = request
        self._access = access

    def for_call(
        self,
        *,
        seconds_left: float | None = None,
        request: RequestKey | None = None,
        access: CallerAccess = UNRESTRICTED,
    ) -> ImageService:
        """This service for one call.

        seconds_left bounds it: a write that loses a race is decided again until then.
        request makes a mutation idempotent: a repeat of it answers the first outcome.
        access is what the caller may do: every operation asks it before acting.
        """
        if seconds_left is not None and seconds_left > NO_DEADLINE_SECONDS:
            seconds_left = None  # gRPC reports "no deadline" as a huge time remaining
        if seconds_left is None and request is None and access is UNRESTRICTED:
            return self
        if request is not None:
            inputs.parse_image_id(request.request_id, field="request_id")
        return ImageService(
            self._uow,
            policy=self._policy,
            delayed_delete=self._delayed_delete,
            clock=self._clock,
            deadline=None if seconds_left is None else time.monotonic() + seconds_left,
            request=request,
            access=access,
            limits=self._limits,
            observer=self._observer,
        )

    # Reads

    def get_image(self, image_id: str) -> Image:
        """The image, unless unknown, deleted or pending_delete."""
        image_id = inputs.parse_image_id(image_id)
        with (
            self._observer.unit_of_work("get_image", writes=False, image_id=image_id),
            self._uow(for_write=False, deadline=self._deadline, one_statement=True) as uow,
        ):
            image = _visible(uow.images.get(image_id), image_id)
        self._access.authorize(image)
        return image

    def list_images(
        self,
        *,
        page_size: int,
        page_token: str,
        filters: ImageFilters = NO_FILTERS,
        order: Order | None = None,
    ) -> Page:
        """A page of the images the caller may see that pass filters, in order (the newest
        first by default), with the next page's token.

        The store filters by the caller's scope; each image of the page is then asked of
        the caller's policy, so a page may hold fewer images than the store found (the
        next page's token follows the store's page, as Glance's next marker does).
        """
        limit = inputs.page_size(page_size)
        listing.check_filters(filters)
        order = order or listing.parse_order(listing.DEFAULT_ORDER_TEXT)
        after = _decode_page_token(page_token, filters, order) if page_token else None
        scope = self._access.listing(filters.visibility)
        with (
            self._observer.unit_of_work("list_images", writes=False),
            self._uow(for_write=False, deadline=self._deadline) as uow,
        ):
            found = list(
                uow.images.list(
                    limit=limit + 1, after=after, filters=filters, order=order, scope=scope
                )
            )
            revision = uow.changes.head().revision  # the page's snapshot: watch from here
        page = found[:limit]
        token = page_token_after(page[-1], filters, order) if len(found) > limit else ""
        images = [image for image in page if self._access.may_see(image)]
        return Page(images=images, next_page_token=token, revision=revision)

    def changes_after(self, revision: int, limit: int) -> tuple[Sequence[Change], StoreHead]:
        """Up to limit committed changes above revision, and the store's head, in one snapshot.

        Not filtered by the caller's access: the change feed asks it per change.
        """
        with self._uow(for_write=False, deadline=self._deadline, one_statement=True) as uow:
            return uow.changes.after(revision, limit=limit)

    # Creation and deletion

    def create_image(
        self,
        *,
        name: str,
        disk_format: str = "",
        container_format: str = "",
        visibility: Visibility = Visibility.PRIVATE,
        protected: bool = False,
        image_id: str | None = None,
        owner: str | None = None,
        min_disk: int = 0,
        min_ram: int = 0,
        tags: Sequence[str] = (),
        os_hidden: bool = False,
        virtual_size: int | None = None,
        properties: Mapping[str, str] | None = None,
    ) -> Image:
        """A new queued image; IMAGE_EXISTS when the id is taken, even by a deleted one.

        owner None: the caller's project owns it.
        """
        new_id = (
            str(uuid.uuid4()) if image_id is None else inputs.parse_image_id(image_id, field="id")
        )
        inputs.check_name(name)
        if owner is not None:
            inputs.check_owner(owner)
        owner = self._access.owner_of_new_image(owner=owner, visibility=visibility)
        inputs.check_format(disk_format, field="disk_format", allowed=inputs.DISK_FORMATS)
        inputs.check_format(
            container_format, field="container_format", allowed=inputs.CONTAINER_FORMATS
        )
        now = self._clock()
        image = Image(
            id=new_id,
            name=name,
            status=ImageStatus.QUEUED,
            created_at=now,
            updated_at=now,
            disk_format=disk_format,
            container_format=container_format,
            visibility=visibility,
            owner=owner,
            protected=protected,
            min_disk=record.check_minimum(min_disk, field="min_disk"),
            min_ram=record.check_minimum(min_ram, field="min_ram"),
            tags=record.checked_tags(tags, limits=self._limits),
            os_hidden=os_hidden,
            virtual_size=record.check_virtual_size(virtual_size),
            properties=record.checked_properties(properties or {}, limits=self._limits),
        )
        with self._observer.unit_of_work("create_image", writes=True, image_id=new_id) as work:
            return self._create(image, now, work)

    def _create(self, image: Image, now: datetime.datetime, work: WorkAttempts) -> Image:
        """Insert image, attempt after attempt, telling work of each retry."""
        new_id = image.id
        for attempt in range(MAX_WRITE_ATTEMPTS):
            if attempt:
                work.retried()
            self._check_deadline(new_id)
            with _retried(), self._uow(for_write=True, deadline=self._deadline) as uow:
                if (answered := self._answered_before(uow)) is not None:
                    return answered
                if not uow.images.add(image):
                    # The id may be taken by a concurrent attempt of this same request,
                    # whose insert this one waited for.
                    if (answered := self._answered_before(uow)) is not None:
                        return answered
                    raise DomainError(
                        Reason.IMAGE_EXISTS,
                        f"Image ID {new_id} already exists!",
                        image_id=new_id,
                        field="id",
                    )
                if self._record(uow, image):
                    return self._commit(uow, None, image, now)
        raise ConcurrentUpdateError(f"request {self._request} kept colliding")

    def update_image(self, image_id: str, update: ImageUpdate, *, etag: str | None = None) -> Image:
        """Set the record fields update names; a new visibility asks its own policy too."""
        return self._mutate(image_id, etag, self.record_updated(update), use_case="update_image")

    def delete_image(self, image_id: str, *, etag: str | None = None) -> Image:
        """-> deleted, or pending_delete under delayed delete for an active image with locations."""
        return self._mutate(
            image_id,
            etag,
            lambda image: status.delete(image, delayed_delete=self._delayed_delete),
            use_case="delete_image",
        )

    # Lifecycle

    def begin_upload(self, image_id: str, *, etag: str | None = None) -> Image:
        """queued -> saving."""
        return self._mutate(image_id, etag, status.begin_upload, use_case="begin_upload")

    def complete_upload(
        self,
        image_id: str,
        *,
        location: Location | None,
        size: int,
        checksum: str = "",
        os_hash_algo: str = "",
        os_hash_value: str = "",
        etag: str | None = None,
    ) -> Image:
        """saving or importing -> active with the location first."""
        if location is None:
            raise inputs.invalid_request("location", "location is required")
        if size < 0:
            raise inputs.invalid_request("size", "size must not be negative")
        hashes = {
            "checksum": checksum,
            "os_hash_algo": os_hash_algo,
            "os_hash_value": os_hash_value,
        }
        return self._mutate(
            image_id,
            etag,
            lambda image: locations.complete_upload(
                image, location, size=size, hashes=hashes, policy=self._policy
            ),
            use_case="complete_upload",
        )

    def fail_upload(self, image_id: str, *, etag: str | None = None) -> Image:
        """saving -> killed."""
        return self._mutate(image_id, etag, status.fail_upload, use_case="fail_upload")

    def stage_image(self, image_id: str, *, etag: str | None = None) -> Image:
        """queued -> uploading."""
        return self._mutate(image_id, etag, status.stage, use_case="stage_image")

    def begin_import(self, image_id: str, *, etag: str | None = None) -> Image:
        """queued or uploading -> importing."""
        return self._mutate(image_id, etag, status.begin_import, use_case="begin_import")

    def deactivate_image(self, image_id: str, *, etag: str | None = None) -> Image:
        """active -> deactivated."""
        return self._mutate(image_id, etag, status.deactivate, use_case="deactivate_image")

    def reactivate_image(self, image_id: str, *, etag: str | None = None) -> Image:
        """deactivated -> active."""
        return self._mutate(image_id, etag, status.reactivate, use_case="reactivate_image")

    # Locations

    def add_location(
        self,
        image_id: str,
        *,
        location: Location | None,
        index: int | None = None,
        validation_data: ValidationData | None = None,
        etag: str | None = None,
    ) -> Image:
        """Insert a location (append when index is None)."""
        decide = self.location_added(location, index=index, validation_data=validation_data)
        return self._mutate(image_id, etag, decide, use_case="add_location")

    def remove_location(
        self,
        image_id: str,
        *,
        index: int | None = None,
        url: str | None = None,
        etag: str | None = None,
    ) -> Image:
        """Remove the location at index, or the first with url; exactly one is given."""
        return self._mutate(
            image_id, etag, self.location_removed(index=index, url=url), use_case="remove_location"
        )

    def replace_locations(
        self,
        image_id: str,
        *,
        new_locations: Sequence[Location],
        validation_data: ValidationData | None = None,
        etag: str | None = None,
    ) -> Image:
        """Set the whole location list."""
        decide = self.locations_replaced(new_locations, validation_data=validation_data)
        return self._mutate(image_id, etag, decide, use_case="replace_locations")

    # Decisions, each checked as far as it can be before the image is read; apply() runs
    # several in one unit of work (the Glance endpoint's PATCH documents).

    def record_updated(self, update: ImageUpdate) -> Decision:
        """Set the record fields update names; a new visibility asks its own policy too."""
        update = record.checked_update(update, limits=self._limits)

        def decide(image: Image) -> Image:
            updated = record.apply_update(image, update, limits=self._limits)
            if updated.visibility is not image.visibility:
                self._access.authorize_visibility(image, updated.visibility)
            return updated

        return decide

    def location_added(
        self,
        location: Location | None,
        *,
        index: int | None = None,
        validation_data: ValidationData | None = None,
    ) -> Decision:
        """Insert a location (append when index is None)."""
        if location is None:
            raise inputs.invalid_request("location", "location is required")
        check_validation_data_shape(validation_data)
        return lambda image: locations.add_location(
            image, location, index=index, validation_data=validation_data, policy=self._policy
        )

    def location_added_to_queued(
        self,
        location: Location,
        *,
        validation_data: ValidationData | None = None,
        by_service: bool,
    ) -> Decision:
        """Glance 2.17's add-location: a queued image's first location."""
        check_validation_data_shape(validation_data)
        return lambda image: locations.add_location_to_queued(
            image,
            location,
            validation_data=validation_data,
            policy=self._policy,
            by_service=by_service,
        )

    def location_removed(self, *, index: int | None = None, url: str | None = None) -> Decision:
        """Remove the location at index, or the first with url; exactly one is given."""
        if (index is None) == (url is None):
            raise inputs.invalid_request("target", "exactly one of index or url is required")
        return lambda image: locations.remove_location(image, index=index, url=url)

    def locations_replaced(
        self, new_locations: Sequence[Location], *, validation_data: ValidationData | None = None
    ) -> Decision:
        """Set the whole location list."""
        check_validation_data_shape(validation_data)
        return lambda image: locations.replace_locations(
            image, new_locations, validation_data=validation_data, policy=self._policy
        )

    def tag_set(self, tag: str, *, present: bool) -> Decision:
        """Add tag at the end of the image's tags, or take it away; either may be a no-op."""
        record.checked_tags([tag], limits=self._limits)

        def decide(image: Image) -> Image:
            if present == (tag in image.tags):
                return image
            tags = [*image.tags, tag] if present else [t for t in image.tags if t != tag]
            update = record.checked_update(ImageUpdate(fields={"tags": tags}), limits=self._limits)
            return record.apply_update(image, update, limits=self._limits)

        return decide

    def apply(
        self,
        image_id: str,
        decisions: Sequence[Decision],
        *,
        also: Sequence[CallerAccess] = (),
        etag: str | None = None,
    ) -> Image:
        """Every decision in turn on the image, in one unit of work: all are saved, or
        none when one refuses. also: the accesses of the other policies the decisions
        need, each asked of the image as this call's own is."""

        def decide(image: Image) -> Image:
            for decision in decisions:
                image = decision(image)
            return image

        return self._mutate(image_id, etag, decide, also=also, use_case="apply")

    # The one write path

    def _mutate(
        self,
        image_id: str,
        etag: str | None,
        decide: Decision,
        *,
        use_case: str,
        also: Sequence[CallerAccess] = (),
    ) -> Image:
        image_id = inputs.parse_image_id(image_id)
        with self._observer.unit_of_work(use_case, writes=True, image_id=image_id) as work:
            return self._decided(image_id, etag, decide, also=also, work=work)

    def _decided(
        self,
        image_id: str,
        etag: str | None,
        decide: Decision,
        *,
        also: Sequence[CallerAccess],
        work: WorkAttempts,
    ) -> Image:
        """Load, decide, save and commit, attempt after attempt, telling work of each retry."""
        for attempt in range(MAX_WRITE_ATTEMPTS):
            if attempt:
                work.retried()
            self._check_deadline(image_id)
            # Another attempt of this request recorded first: the next attempt answers it.
            with _retried(), self._uow(for_write=True, deadline=self._deadline) as uow:
                # The image's row lock first: a concurrent attempt of this same request on
                # another replica has then committed its outcome, and the log shows it
                # (the lookup goes with the image's statements, after them).
                if self._request is not None:
                    uow.requests.expect(self._request.log_id)
                loaded = uow.images.get(image_id)
                if (answered := self._answered_before(uow)) is not None:
                    return answered
                current = _visible(loaded, image_id)
                self._access.authorize(current)
                for access in also:
                    access.authorize(current)
                if etag is not None and etag != etag_of(current):
                    raise DomainError(
                        Reason.ETAG_MISMATCH,
                        f"The etag {etag!r} is stale: image {image_id} has changed.",
                        image_id=image_id,
                        image_status=current.status,
                        field="etag",
                        metadata={"etag": etag_of(current)},
                    )
                decided = decide(current)
                if decided == current:
                    if self._record(uow, current):
                        uow.commit()
                        return current
                    continue
                now = self._clock()
                changed = dataclasses.replace(
                    decided, revision=current.revision + 1, updated_at=now
                )
                if uow.images.save(current, changed) and self._record(uow, changed):
                    return self._commit(uow, current, changed, now)
        raise ConcurrentUpdateError(
            f"image {image_id} kept changing under {MAX_WRITE_ATTEMPTS} writes"
        )

    def _check_deadline(self, image_id: str) -> None:
        if self._deadline is not None and time.monotonic() >= self._deadline:
            raise DeadlineExceededError(f"the deadline passed before image {image_id} changed")

    def _answered_before(self, uow: UnitOfWork) -> Image | None:
        """The first outcome of this idempotent request, if it ran before."""
        if self._request is None:
            return None
        recorded = uow.requests.find(self._request.log_id)
        if recorded is None:
            return None
        if recorded.fingerprint != self._request.fingerprint:
            raise DomainError(
                Reason.REQUEST_ID_REUSED,
                f"request_id {self._request.request_id} was used for another request",
                field="request_id",
                metadata={"requestId": self._request.request_id},
            )
        return recorded.image

    def _commit(
        self, uow: UnitOfWork, old: Image | None, new: Image, at: datetime.datetime
    ) -> Image:
        """Commit the change from old to new (written in uow); new at its store revision."""
        log_id = None if self._request is None else self._request.log_id
        revision = uow.commit_change(_change(old, new, at), request_log_id=log_id)
        return dataclasses.replace(new, store_revision=revision)

    def _record(self, uow: UnitOfWork, image: Image) -> bool:
        """Record this request's outcome in uow; False when another got the id first."""
        if self._request is None:
            return True
        return uow.requests.record(self._request, image, at=self._clock())


def _change(old: Image | None, new: Image, at: datetime.datetime) -> Change:
    """The change log's entry for turning old (None: nothing) into new, committed at `at`
    (its revision is the store's to take: UnitOfWork.commit_change)."""
    return Change(revision=0, type=change_type(old, new), image=new, commit_time=at)


def _retried() -> contextlib.suppress:
    """An attempt that another attempt of the same request recorded before (at its
    commit): it wrote nothing, and the next attempt finds that one's outcome."""
    return contextlib.suppress(RequestRecordedMeanwhileError)


def _visible(image: Image | None, image_id: str) -> Image:
    if image is None or image.status in GONE_STATUSES:
        raise image_not_found(image_id)
    return image


def page_token_after(last: Image, filters: ImageFilters, order: Order) -> str:
    """The page_token of the page that starts after `last` in a listing with these filters
    and this order."""
    payload = {
        "v": listing.cursor_to_json(listing.sort_values(last, order)),
        "f": filters.encoded(),
        "o": listing.order_text(order),
    }
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def _decode_page_token(token: str, filters: ImageFilters, order: Order) -> ListCursor:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(raw)
        token_filters, token_order = payload["f"], payload["o"]
        cursor = listing.cursor_from_json(payload["v"], order)
    except (binascii.Error, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise inputs.invalid_request("page_token", "page_token is malformed") from None
    if token_filters != json.loads(json.dumps(filters.encoded())):
        raise inputs.invalid_request("page_token", "page_token was issued for other filters")
    if token_order != listing.order_text(order):
        raise inputs.invalid_request("page_token", "page_token was issued for another order")
    return cursor
