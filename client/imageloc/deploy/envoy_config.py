"""Writes the Envoy v3 bootstrap that fronts imageloc replicas (docs/deploy.md explains it).

Standard library only. `python -m imageloc.deploy.envoy_config --replicas 2` writes the
committed example, deploy/envoy.yaml; tests/test_envoy.py checks that it is still what this
module writes, and runs real Envoy with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

from imageloc.deploy import yaml_text

#: The cluster of replicas, as Envoy's stats and admin pages name it.
CLUSTER = "imageloc"
#: The health service Envoy asks about. The server answers it as it answers "": SERVING
#: while its store answers, NOT_SERVING from the moment it drains; naming the service also
#: checks that this is an imageloc server.
HEALTH_SERVICE = "imageloc.v1.ImageService"
#: Calls that stream: no per-try timeout (it would end a long stream) and no route timeout.
STREAMING_METHODS = (
    "/imageloc.v1.ImageService/WatchImages",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
)
#: What Envoy retries, on another replica: an UNAVAILABLE answer (a replica answers it only
#: for a call it did not apply: draining, or its database unreachable) and failures that
#: never reached a replica. A reset after the call was sent is answered UNAVAILABLE to the
#: caller instead: it may have been applied, and the caller's retry carries its request_id.
RETRY_ON = "unavailable,connect-failure,refused-stream,reset-before-request"

#: The committed example (deploy/envoy.yaml): the first replica port, and how it was made.
EXAMPLE_FIRST_PORT = 50061
PROGRAM = "python -m imageloc.deploy.envoy_config"
EXAMPLE_COMMAND = f"{PROGRAM} --replicas 2"


@dataclasses.dataclass(frozen=True)
class EnvoyConfig:
    """What the bootstrap says: where Envoy listens, the replicas, and its timings.

    TLS at Envoy's listener when tls_cert and tls_key are given (the files of the server's
    --tls-cert and --tls-key); tls_client_ca then requires client certificates (mTLS).
    """

    replicas: tuple[str, ...]
    listen: str = "127.0.0.1:50051"
    admin: str = "127.0.0.1:9901"
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    health_interval_seconds: float = 1.0
    health_timeout_seconds: float = 1.0
    unhealthy_threshold: int = 2
    healthy_threshold: int = 1
    per_try_timeout_seconds: float = 3.0
    num_retries: int = 3
    max_connections: int = 64
    max_requests: int = 1024
    max_retries: int = 64
    max_downstream_connections: int = 10_000

    def check(self) -> None:
        """ValueError, in one line, when the settings cannot make a working config."""
        if not self.replicas:
            raise ValueError("at least one replica is needed")
        for address in (*self.replicas, self.listen, self.admin):
            split_address(address)
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        if not 0 < self.health_timeout_seconds <= self.health_interval_seconds:
            raise ValueError("the health-check timeout must be above 0 and at most the interval")

    @property
    def routed_away_seconds(self) -> float:
        """The longest a replica that turned NOT_SERVING may still be sent new calls.

        Envoy acts on a NOT_SERVING answer at once (unhealthy_threshold counts only checks
        that time out or cannot connect): within the interval and two answers, the check
        in flight when it turned and the next. A replica too busy to answer is marked after
        unhealthy_threshold checks that time out, each asked interval after the last, plus
        the one in flight: the longer of the two, which this is.
        """
        return (
            self.unhealthy_threshold * self.health_interval_seconds
            + (self.unhealthy_threshold + 1) * self.health_timeout_seconds
        )

    @property
    def replica_drain_seconds(self) -> float:
        """The --drain-seconds replicas need behind this Envoy: at least routed_away_seconds."""
        return self.routed_away_seconds


def split_address(address: str) -> tuple[str, int]:
    """host and port of "host:port" ("[::1]:port" too); ValueError when it is not one."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not a host:port address: {address!r}")
    return host.strip("[]"), int(port)


def example() -> EnvoyConfig:
    """The config of the committed deploy/envoy.yaml: two replicas on 50061 and 50062."""
    return EnvoyConfig(replicas=loopback_replicas(2, first_port=EXAMPLE_FIRST_PORT))


def loopback_replicas(count: int, *, first_port: int) -> tuple[str, ...]:
    """count loopback addresses on consecutive ports from first_port."""
    return tuple(f"127.0.0.1:{first_port + n}" for n in range(count))


def render(config: EnvoyConfig, *, written_by: str = EXAMPLE_COMMAND) -> str:
    """The bootstrap as YAML, headed by the command that wrote it."""
    header = (
        f"Envoy in front of {len(config.replicas)} imageloc replicas (docs/deploy.md).\n"
        f"Written by: {written_by}\n"
        "Do not edit: change imageloc/deploy/envoy_config.py and write it again."
    )
    return yaml_text.dump(bootstrap(config), header=header)


def bootstrap(config: EnvoyConfig) -> dict[str, Any]:
    """The Envoy v3 bootstrap: one listener, one route table, one cluster of the replicas."""
    config.check()
    return {
        "admin": {"address": _socket_address(config.admin)},
        "static_resources": {"listeners": [_listener(config)], "clusters": [_cluster(config)]},
        # Envoy's own limit on the connections callers hold open, all listeners together.
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.resource_monitors"
                        ".downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": config.max_downstream_connections,
                    },
                }
            ]
        },
    }


def _listener(config: EnvoyConfig) -> dict[str, Any]:
    chain: dict[str, Any] = {
        "filters": [
            {
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network"
                    ".http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "ingress",
                    "codec_type": "AUTO",
                    "route_config": _routes(config),
                    "http_filters": [
                        {
                            "name": "envoy.filters.http.router",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http"
                                ".router.v3.Router"
                            },
                        }
                    ],
                },
            }
        ]
    }
    if config.tls_cert:
        chain["transport_socket"] = _downstream_tls(config)
    return {
        "name": "ingress",
        "address": _socket_address(config.listen),
        "filter_chains": [chain],
    }


def _routes(config: EnvoyConfig) -> dict[str, Any]:
    """Unary calls get a per-try timeout; streams none (the virtual host's retry policy).

    Every call ends at the caller's deadline (grpc-timeout), and at no route timeout
    (Envoy's default, 15 s, would end every stream).
    """
    streams = [{"match": {"path": path}, "route": _route()} for path in STREAMING_METHODS]
    unary = {
        "match": {"prefix": "/"},
        "route": _route() | {"retry_policy": _retry_policy(config, per_try=True)},
    }
    virtual_host = {
        "name": "imageloc",
        "domains": ["*"],
        "retry_policy": _retry_policy(config, per_try=False),
        "routes": [*streams, unary],
    }
    return {"name": "imageloc", "virtual_hosts": [virtual_host]}


def _route() -> dict[str, Any]:
    return {
        "cluster": CLUSTER,
        "timeout": "0s",
        # 0s: the grpc-timeout header is the call's limit as the caller sent it.
        "max_stream_duration": {"grpc_timeout_header_max": "0s"},
    }


def _retry_policy(config: EnvoyConfig, *, per_try: bool) -> dict[str, Any]:
    retry: dict[str, Any] = {"retry_on": RETRY_ON, "num_retries": config.num_retries}
    if per_try:
        retry["per_try_timeout"] = _duration(config.per_try_timeout_seconds)
    return retry | {
        # A retry goes to another replica than the ones this call tried, while there is one.
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.retry.host"
                    ".previous_hosts.v3.PreviousHostsPredicate"
                },
            }
        ],
        "host_selection_retry_max_attempts": 5,
        "retry_back_off": {"base_interval": "0.025s", "max_interval": "0.25s"},
    }


def _cluster(config: EnvoyConfig) -> dict[str, Any]:
    interval = _duration(config.health_interval_seconds)
    return {
        "name": CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3"
                ".HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": _socket_address(replica)}}
                        for replica in config.replicas
                    ]
                }
            ],
        },
        "health_checks": [
            {
                "timeout": _duration(config.health_timeout_seconds),
                "interval": interval,
                # Envoy's default is 60 s while the cluster takes no calls: a replica that
                # comes back would wait that long to be used again.
                "no_traffic_interval": interval,
                "unhealthy_threshold": config.unhealthy_threshold,
                "healthy_threshold": config.healthy_threshold,
                "grpc_health_check": {"service_name": HEALTH_SERVICE},
            }
        ],
        "outlier_detection": {
            # Connection failures and resets eject a replica at once (a killed one); answers
            # only after five 5xx in a row (UNAVAILABLE, INTERNAL...). Never half of them.
            "split_external_local_origin_errors": True,
            "consecutive_local_origin_failure": 2,
            "consecutive_5xx": 5,
            "interval": "1s",
            "base_ejection_time": "5s",
            "max_ejection_percent": 50,
        },
        "circuit_breakers": {
            "thresholds": [
                {
                    "priority": "DEFAULT",
                    "max_connections": config.max_connections,
                    "max_pending_requests": config.max_requests,
                    "max_requests": config.max_requests,
                    "max_retries": config.max_retries,
                }
            ]
        },
        "common_lb_config": {
            # A replica known unhealthy never takes calls, even when most are (Envoy's
            # default sends to all once under half are healthy: to draining replicas too).
            "healthy_panic_threshold": {"value": 0.0},
            # A health change reaches the balancer at once: Envoy's default holds changes
            # for 1 s to merge them, 1 s more of calls sent to a draining replica.
            "update_merge_window": "0s",
        },
    }


def _downstream_tls(config: EnvoyConfig) -> dict[str, Any]:
    context: dict[str, Any] = {
        "alpn_protocols": ["h2"],
        "tls_certificates": [
            {
                "certificate_chain": {"filename": config.tls_cert},
                "private_key": {"filename": config.tls_key},
            }
        ],
    }
    tls: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
        ".DownstreamTlsContext",
    }
    if config.tls_client_ca:
        context["validation_context"] = {"trusted_ca": {"filename": config.tls_client_ca}}
        tls["require_client_certificate"] = True
    tls["common_tls_context"] = context
    return {"name": "envoy.transport_sockets.tls", "typed_config": tls}


def _socket_address(address: str) -> dict[str, Any]:
    host, port = split_address(address)
    return {"socket_address": {"address": host, "port_value": port}}


def _duration(seconds: float) -> str:
    """A protobuf Duration as YAML/JSON text: "1s", "0.5s"."""
    return f"{seconds:g}s"


def main(argv: Sequence[str] | None = None) -> int:
    """Write a bootstrap on stdout; `--replicas 2` and no other option: deploy/envoy.yaml."""
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Write an Envoy bootstrap (YAML) for imageloc replicas on stdout.",
    )
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--replicas", type=int, metavar="N", help="N replicas on loopback ports")
    given.add_argument(
        "--upstream", action="append", metavar="HOST:PORT", help="a replica; repeat for each"
    )
    parser.add_argument(
        "--first-port",
        type=int,
        default=EXAMPLE_FIRST_PORT,
        metavar="PORT",
        help=f"with --replicas: the first replica's port (default {EXAMPLE_FIRST_PORT})",
    )
    defaults = EnvoyConfig(replicas=())
    parser.add_argument("--listen", default=defaults.listen, metavar="HOST:PORT")
    parser.add_argument("--admin", default=defaults.admin, metavar="HOST:PORT")
    parser.add_argument("--tls-cert", default="", metavar="PEM", help="TLS at Envoy's listener")
    parser.add_argument("--tls-key", default="", metavar="PEM")
    parser.add_argument("--tls-client-ca", default="", metavar="PEM", help="require client certs")
    given_args = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(given_args)
    replicas = (
        tuple(args.upstream)
        if args.replicas is None
        else loopback_replicas(args.replicas, first_port=args.first_port)
    )
    config = EnvoyConfig(
        replicas=replicas,
        listen=args.listen,
        admin=args.admin,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
    )
    try:
        text = render(config, written_by=" ".join([PROGRAM, *given_args]))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
