"""Channels for service-to-service calls: the shipped service config and keepalive.

service_config.json (shipped beside this module, and read by the Node client too) sets
per-method deadlines and retries UNAVAILABLE. Retrying a mutation is safe only because
ImageClient gives each one a request_id, which its retries share, and the server answers
a repeated request_id with the first outcome instead of applying it again.
"""

from __future__ import annotations

import importlib.resources
import json
from typing import Any

import grpc

#: Client keepalive: ping an idle connection every 30 s, give up after 10 s without an
#: answer. The server accepts pings every 10 s or more (SERVER_MIN_PING_INTERVAL_MS in
#: imageloc.server.app), so these never trip its too-many-pings guard.
KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000


def service_config() -> dict[str, Any]:
    """The shipped gRPC service config."""
    text = importlib.resources.files(__package__).joinpath("service_config.json").read_text()
    config: dict[str, Any] = json.loads(text)
    return config


def channel_options() -> list[tuple[str, Any]]:
    """gRPC channel arguments: the service config, retries on, keepalive."""
    return [
        ("grpc.service_config", json.dumps(service_config())),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def open_channel(target: str) -> grpc.Channel:
    """An insecure channel to target with the service-to-service defaults."""
    return grpc.insecure_channel(target, options=channel_options())
