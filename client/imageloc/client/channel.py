"""Channels for service-to-service calls: the shipped service config, keepalive, credentials.

service_config.json (shipped beside this module, and read by the Node client too) sets
per-method deadlines and retries UNAVAILABLE. Retrying a mutation is safe only because
ImageClient gives each one a request_id, which its retries share, and the server answers
a repeated request_id with the first outcome instead of applying it again.

It also balances round_robin over every address a target names ("ipv4:h1:p1,h2:p2",
"dns:///name:port"), so that callers without a proxy spread their calls over replicas and
retry elsewhere when one stops (docs/client-balancing.md).
"""

from __future__ import annotations

import importlib.resources
import ipaddress
import json
from collections.abc import Callable
from typing import Any

import grpc

#: Client keepalive: ping an idle connection every 30 s, give up after 10 s without an
#: answer. The server accepts pings every 10 s or more (SERVER_MIN_PING_INTERVAL_MS in
#: imageloc.server.app), so these never trip its too-many-pings guard.
KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000

#: Gives the bearer token of each call; called once per call, so caching is the caller's.
TokenProvider = Callable[[], str]


def service_config() -> dict[str, Any]:
    """The shipped gRPC service config."""
    text = importlib.resources.files(__package__).joinpath("service_config.json").read_text()
    config: dict[str, Any] = json.loads(text)
    return config


def channel_options() -> list[tuple[str, Any]]:
    """gRPC channel arguments: the service config, retries on, keepalive."""
    return [
        ("grpc.service_config", json.dumps(service_config())),
        # The shipped config is the one used: no DNS TXT record replaces it (gRPC's default).
        ("grpc.service_config_disable_resolution", 1),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def open_channel(
    target: str,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    authority: str | None = None,
) -> grpc.Channel:
    """A channel to target with the service-to-service defaults: TLS with credentials.

    `authority` is the name sent as :authority and verified on each server's certificate,
    instead of the one gRPC takes from target; over TLS an "ipv4:h1:p1,h2:p2" target needs
    it, since gRPC would verify the whole address list as a name.
    """
    options = channel_options()
    if authority is not None:
        options.append(("grpc.default_authority", authority))
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, credentials, options=options)


def tls_credentials(
    *,
    root_certificates: bytes | None = None,
    certificate_chain: bytes | None = None,
    private_key: bytes | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    token_provider: TokenProvider | None = None,
) -> grpc.ChannelCredentials:
    """TLS channel credentials (PEM bytes; no root: the system's), with the token if given.

    `credentials`, a ready grpc.ChannelCredentials, replaces the three PEM arguments.
    """
    if (certificate_chain is None) != (private_key is None):
        raise ValueError("certificate_chain and private_key go together")
    if credentials is None:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
        )
    elif root_certificates is not None or certificate_chain is not None:
        raise ValueError("give credentials or PEM certificates and keys, not both")
    if token_provider is None:
        return credentials
    return grpc.composite_channel_credentials(credentials, token_call_credentials(token_provider))


def bearer_metadata(token: str) -> tuple[tuple[str, str]]:
    """The call metadata that carries token."""
    return (("authorization", f"Bearer {token}"),)


def token_call_credentials(token_provider: TokenProvider) -> grpc.CallCredentials:
    """Call credentials that ask token_provider for each call's token (TLS channels only)."""
    return grpc.metadata_call_credentials(_BearerToken(token_provider), name="imageloc-bearer")


class _BearerToken(grpc.AuthMetadataPlugin):
    def __init__(self, token_provider: TokenProvider) -> None:
        self._token_provider = token_provider

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        try:
            token = self._token_provider()
        except Exception as error:  # the call fails with it; grpc's thread must not
            callback((), error)
            return
        callback(bearer_metadata(token), None)


def is_loopback(target: str) -> bool:
    """Whether every address the gRPC target names stays on this host.

    "host:port", "[::1]:port", "dns:///name:port" and "dns:name:port" by the name (not what
    it resolves to); "ipv4:h1:p1,h2:p2" and "ipv6:[h1]:p1,[h2]:p2" only when each address is
    loopback; "unix:..." always.
    """
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    scheme, _, rest = target.partition(":")
    if scheme in ("ipv4", "ipv6"):
        return all(_is_loopback_host(_host(address)) for address in rest.split(","))
    if scheme == "dns":
        if rest.startswith("//"):
            dns_server, _, rest = rest[2:].partition("/")
            if dns_server:  # that server says where a name goes: only an IP literal counts
                host = _host(rest)
                return host != "localhost" and _is_loopback_host(host)
        return _is_loopback_host(_host(rest))
    return _is_loopback_host(_host(target))


def _host(address: str) -> str:
    """The host of "host", "host:port", "[v6]" or "[v6]:port" (a bare v6 address as is)."""
    if address.startswith("["):
        return address[1:].partition("]")[0]
    if address.count(":") == 1:
        return address.partition(":")[0]
    return address


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
