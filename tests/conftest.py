"""Shared fixtures: a real server on an ephemeral port, stubs, and rich-error decoding."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from imageloc.server.app import Server, build_server
from imageloc.server.config import Settings
from imageloc.v1 import image_service_pb2_grpc as pb_grpc

from support import BACKENDS, fresh_database, migrate

ServerFactory = Callable[..., str]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[str]:
    """A URL to an empty database of its own: a SQLite file or a fresh PostgreSQL schema.

    Every test that uses it, directly or through a server, runs once per backend.
    """
    with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def server_factory(database_url: str) -> Iterator[ServerFactory]:
    """Start servers on ephemeral ports on this test's database; setting overrides as kwargs.

    The database is migrated first, as `imageloc db upgrade` does before a PostgreSQL start.
    """
    migrate(database_url)
    started: list[Server] = []

    def start(**overrides: Any) -> str:
        settings = dataclasses.replace(
            Settings(listen="127.0.0.1:0", database_url=database_url), **overrides
        )
        server = build_server(settings)
        server.start()
        started.append(server)
        return f"127.0.0.1:{server.port}"

    yield start
    for server in started:
        server.stop(None)


@pytest.fixture
def target(server_factory: ServerFactory) -> str:
    """The address of a server with default settings."""
    return server_factory()


@pytest.fixture
def stub(target: str) -> Iterator[pb_grpc.ImageServiceStub]:
    """A stub on a fresh channel to the default server."""
    with grpc.insecure_channel(target) as channel:
        yield pb_grpc.ImageServiceStub(channel)
