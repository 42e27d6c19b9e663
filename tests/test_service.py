"""The one write path: a lost race is decided again on fresh state, within the deadline."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable

import pytest

from imageloc.server.domain.errors import DomainError, Reason
from imageloc.server.domain.model import Image, ImageStatus, Location
from imageloc.server.domain.policy import LocationPolicy
from imageloc.server.domain.ports import DeadlineExceededError
from imageloc.server.service import ImageService, etag_of

from fakes import InMemoryImages, InMemoryStore, InMemoryUnitOfWork

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
A = Location("https://store.example/a.img")
B = Location("https://store.example/b.img")


class RacingImages(InMemoryImages):
    """The first save loses to an interloper, whose change lands in the store instead."""

    def __init__(self, store: RacingStore, rows: dict[str, Image]) -> None:
        super().__init__(rows)
        self.store = store

    def save(self, old: Image, new: Image) -> bool:
        if self.store.interloper is not None:
            change, self.store.interloper = self.store.interloper, None
            current = self.store.committed[old.id]
            self.store.committed[old.id] = dataclasses.replace(
                change(current), revision=current.revision + 1
            )
            return False
        return super().save(old, new)


class RacingStore(InMemoryStore):
    def __init__(self, interloper: Callable[[Image], Image]) -> None:
        super().__init__()
        self.interloper: Callable[[Image], Image] | None = interloper

    def unit_of_work(
        self, *, for_write: bool, deadline: float | None = None, one_statement: bool = False
    ) -> InMemoryUnitOfWork:
        store = self

        class Racing(InMemoryUnitOfWork):
            def __enter__(self) -> Racing:
                super().__enter__()
                self.images = RacingImages(store, dict(store.committed))
                return self

        return Racing(self)


def seeded(store: InMemoryStore) -> Image:
    image = Image(
        id="00000000-0000-4000-8000-000000000001",
        name="cirros",
        status=ImageStatus.ACTIVE,
        created_at=NOW,
        updated_at=NOW,
        locations=(A, B),
        disk_format="raw",
        container_format="bare",
    )
    store.committed[image.id] = image
    return image


def deactivate(image: Image) -> Image:
    return dataclasses.replace(image, status=ImageStatus.DEACTIVATED)


def test_a_remove_that_loses_to_a_deactivation_is_refused_on_fresh_state() -> None:
    store = RacingStore(deactivate)
    image = seeded(store)
    service = ImageService(store.unit_of_work, policy=LocationPolicy())
    with pytest.raises(DomainError) as caught:
        service.remove_location(image.id, index=0)
    assert caught.value.reason is Reason.IMAGE_STATUS_CONFLICT
    assert caught.value.image_status == "deactivated"
    assert store.committed[image.id].locations == (A, B)


def test_a_write_that_loses_a_harmless_race_is_applied_on_fresh_state() -> None:
    store = RacingStore(lambda image: dataclasses.replace(image, name="renamed"))
    image = seeded(store)
    service = ImageService(store.unit_of_work, policy=LocationPolicy())
    saved = service.remove_location(image.id, index=0)
    assert saved.locations == (B,)
    assert store.committed[image.id].name == "renamed"
    assert store.committed[image.id].revision == image.revision + 2


def test_with_the_callers_etag_a_lost_race_is_etag_mismatch() -> None:
    store = RacingStore(lambda image: dataclasses.replace(image, name="renamed"))
    image = seeded(store)
    service = ImageService(store.unit_of_work, policy=LocationPolicy())
    with pytest.raises(DomainError) as caught:
        service.remove_location(image.id, index=0, etag=etag_of(image))
    assert caught.value.reason is Reason.ETAG_MISMATCH
    assert store.committed[image.id].locations == (A, B)


def test_no_retry_starts_after_the_deadline() -> None:
    store = RacingStore(lambda image: dataclasses.replace(image, name="renamed"))
    image = seeded(store)
    service = ImageService(store.unit_of_work, policy=LocationPolicy()).for_call(seconds_left=0.0)
    with pytest.raises(DeadlineExceededError):
        service.remove_location(image.id, index=0)
    assert store.committed[image.id].locations == (A, B)
