"""Test helpers: decode rich refusals and put images into any status through the API."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from sqlalchemy import create_engine, make_url, text

from imageloc.server.store import SqlStore
from imageloc.v1 import image_service_pb2 as pb
from imageloc.v1 import image_service_pb2_grpc as pb_grpc


@dataclasses.dataclass
class Refusal:
    """A decoded refusal: code, message and every rich detail."""

    code: grpc.StatusCode
    message: str
    info: error_details_pb2.ErrorInfo
    details: list[Any]

    def detail(self, kind: type[Any]) -> Any:
        found = [d for d in self.details if isinstance(d, kind)]
        assert len(found) == 1, f"want one {kind.__name__} in {self.details}"
        return found[0]


DETAIL_TYPES: list[type[Message]] = [
    error_details_pb2.ErrorInfo,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.BadRequest,
    error_details_pb2.ResourceInfo,
    error_details_pb2.QuotaFailure,
]


def refusal_of(call: Callable[[], object]) -> Refusal:
    """Run call, which must fail, and decode grpc-status-details-bin."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return refusal_from(caught.value)


def refusal_from(error: grpc.RpcError) -> Refusal:
    """error's grpc-status-details-bin, decoded."""
    status: status_pb2.Status | None = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, f"no rich status on {error}"
    details = []
    for packed in status.details:
        for kind in DETAIL_TYPES:
            detail = kind()
            if packed.Unpack(detail):
                details.append(detail)
    infos = [d for d in details if isinstance(d, error_details_pb2.ErrorInfo)]
    assert len(infos) == 1, f"want exactly one ErrorInfo in {details}"
    code: grpc.StatusCode = error.code()
    return Refusal(code=code, message=status.message, info=infos[0], details=details)


M = TypeVar("M", bound=Message)


def filled(message: M, **fields: Any) -> M:
    """message with fields set: a dict updates a map, a list extends a repeated field."""
    for name, value in fields.items():
        target = getattr(message, name)
        if isinstance(value, dict):
            target.update(value)
        elif isinstance(value, list):
            target.extend(value)
        else:
            setattr(message, name, value)
    return message


def location(url: str, **metadata: Any) -> pb.Location:
    """A Location message."""
    message = pb.Location(url=url)
    message.metadata.update(metadata)
    return message


SHA512 = "ab" * 64
MD5 = "cd" * 16

#: Statuses an image can be put in and still be seen through the API.
VISIBLE_STATUSES = [
    "queued",
    "saving",
    "active",
    "killed",
    "deactivated",
    "uploading",
    "importing",
]


def status_name(number: pb.ImageStatus.ValueType) -> str:
    """Glance's lowercase word for an ImageStatus number."""
    return pb.ImageStatus.Name(number).removeprefix("IMAGE_STATUS_").lower()


def make_image(
    stub: pb_grpc.ImageServiceStub,
    status: str,
    *,
    urls: tuple[str, ...] = ("https://store.example/a.img", "rbd://fsid/pool/b/snap"),
    **create: Any,
) -> pb.Image:
    """A new image brought to status through the API; active ones get locations urls."""
    fields: dict[str, Any] = {"name": "cirros", "disk_format": "qcow2", "container_format": "bare"}
    fields.update(create)
    image = stub.CreateImage(pb.CreateImageRequest(**fields)).image
    image_id = image.id
    if status in ("active", "deactivated"):
        image = stub.ReplaceLocation(
            pb.ReplaceLocationRequest(image_id=image_id, locations=[location(u) for u in urls])
        ).image
    if status == "deactivated":
        image = stub.DeactivateImage(pb.DeactivateImageRequest(image_id=image_id)).image
    if status in ("saving", "killed"):
        image = stub.BeginUpload(pb.BeginUploadRequest(image_id=image_id)).image
    if status == "killed":
        image = stub.FailUpload(pb.FailUploadRequest(image_id=image_id)).image
    if status == "uploading":
        image = stub.StageImage(pb.StageImageRequest(image_id=image_id)).image
    if status == "importing":
        image = stub.BeginImport(pb.BeginImportRequest(image_id=image_id)).image
    assert status_name(image.status) == status
    return image


def migrate(database_url: str) -> None:
    """Bring the database to the newest schema, as `imageloc db upgrade` does."""
    store = SqlStore(database_url)
    try:
        store.upgrade()
    finally:
        store.dispose()


POSTGRES_URL = os.environ.get("IMAGELOC_TEST_POSTGRES_URL", "")

#: Parameters of a fixture that runs once per backend, as `database_url` does.
BACKENDS: list[Any] = [
    "sqlite",
    pytest.param(
        "postgresql",
        marks=[
            pytest.mark.postgres,
            pytest.mark.skipif(not POSTGRES_URL, reason="IMAGELOC_TEST_POSTGRES_URL not set"),
        ],
    ),
]
#: The parameters of a fixture or test of PostgreSQL alone.
POSTGRESQL_ONLY = BACKENDS[1:]


@contextlib.contextmanager
def fresh_database(backend: str, directory: pathlib.Path) -> Iterator[str]:
    """A URL to an empty database: a SQLite file in directory, or a new PostgreSQL schema."""
    if backend == "sqlite":
        yield f"sqlite:///{directory / 'imageloc.db'}"
        return
    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
