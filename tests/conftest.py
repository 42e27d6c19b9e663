"""Shared fixtures: a real server on an ephemeral port, stubs, and rich-error decoding."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from imageloc.server.app import Server, build_server
from imageloc.server.config import Settings
from imageloc.v1 import image_service_pb2_grpc as pb_grpc

ServerFactory = Callable[..., str]


@pytest.fixture
def server_factory(tmp_path: Any) -> Iterator[ServerFactory]:
    """Start servers on ephemeral ports with SQLite in tmp_path; setting overrides as kwargs."""
    started: list[Server] = []

    def start(**overrides: Any) -> str:
        settings = dataclasses.replace(
            Settings(
                listen="127.0.0.1:0",
                database_url=f"sqlite:///{tmp_path}/imageloc-{len(started)}.db",
            ),
            **overrides,
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
