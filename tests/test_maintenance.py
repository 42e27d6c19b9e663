"""Health follows the store, and old request outcomes are forgotten."""

from __future__ import annotations

import datetime
import uuid

from grpc_health.v1 import health, health_pb2

from imageloc.server.domain.model import Image, ImageStatus
from imageloc.server.domain.ports import RequestKey, StoreUnavailableError
from imageloc.server.maintenance import Maintenance
from imageloc.server.service import utc_now
from imageloc.server.store import SqlStore

from support import migrate

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class SwitchableStore:
    """A store whose database can be switched off and on."""

    def __init__(self) -> None:
        self.up = True

    def check(self) -> None:
        if not self.up:
            raise StoreUnavailableError("connection refused")

    def prune_requests(self, *, before: datetime.datetime) -> int:
        return 0

    def prune_changes(self, *, before: datetime.datetime) -> int:
        return 0


def status_of(servicer: health.HealthServicer, service: str) -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    status: int = servicer.Check(request, None).status  # type: ignore[arg-type]
    return status


def test_health_is_not_serving_while_the_store_is_down_and_recovers_by_itself() -> None:
    store = SwitchableStore()
    servicer = health.HealthServicer()
    maintenance = Maintenance(
        store=store, set_health=servicer.set, services=("", "imageloc.v1.ImageService"),
        check_seconds=3600, prune_seconds=3600, retention=datetime.timedelta(days=1),
    )  # fmt: skip
    assert maintenance.check_once()
    assert status_of(servicer, "imageloc.v1.ImageService") == SERVING
    store.up = False
    assert not maintenance.check_once()
    assert status_of(servicer, "") == NOT_SERVING
    store.up = True
    assert maintenance.check_once()
    assert status_of(servicer, "") == SERVING


def test_outcomes_older_than_the_retention_are_forgotten(database_url: str) -> None:
    migrate(database_url)
    store = SqlStore(database_url)
    now = utc_now()
    image = Image(id=str(uuid.uuid4()), name="x", status=ImageStatus.QUEUED,
                  created_at=now, updated_at=now)  # fmt: skip
    old, new = str(uuid.uuid4()), str(uuid.uuid4())
    with store.unit_of_work(for_write=True) as uow:
        assert uow.requests.record(RequestKey(old, "f"), image, at=now - datetime.timedelta(days=2))
        assert uow.requests.record(RequestKey(new, "f"), image, at=now)
        assert not uow.requests.record(RequestKey(new, "g"), image, at=now)
        uow.commit()
    maintenance = Maintenance(
        store=store, set_health=health.HealthServicer().set, services=("",),
        check_seconds=3600, prune_seconds=3600, retention=datetime.timedelta(days=1),
    )  # fmt: skip
    assert maintenance.prune_once() == 1
    with store.unit_of_work(for_write=False) as uow:
        assert uow.requests.find(old) is None
        recorded = uow.requests.find(new)
    assert recorded is not None
    assert (recorded.fingerprint, recorded.image) == ("f", image)
    store.dispose()
