"""Server settings, from command-line flags or IMAGELOC_* environment variables."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping

from imageloc.server.domain.policy import DEFAULT_SCHEMES, LocationPolicy
from imageloc.server.domain.record import RecordLimits


class ConfigError(ValueError):
    """A setting that does not work (a file that does not load...): the server cannot start."""


DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DATABASE = "sqlite:///imageloc.db"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything `imageloc serve` can be told."""

    listen: str = DEFAULT_LISTEN
    # Glance's Image API v2 over HTTP, host:port; empty: not served (docs/glance-compat.md).
    glance_listen: str = ""
    database_url: str = DEFAULT_DATABASE
    location_quota: int = 10
    # Glance's image_property_quota and image_tag_quota; negative means unlimited.
    property_quota: int = 128
    tag_quota: int = 128
    delayed_delete: bool = False
    location_schemes: frozenset[str] = DEFAULT_SCHEMES
    hashing_algorithm: str = "sha512"
    grace_seconds: float = 10.0
    drain_seconds: float = 3.0
    # PostgreSQL connections per server process (calls run on the event loop).
    max_workers: int = 16
    health_check_seconds: float = 2.0
    request_retention_seconds: float = 86_400.0
    # WatchImages (docs/api.md): progress messages, and how long the change log is kept.
    watch_progress_seconds: float = 10.0
    watch_retention_seconds: float = 86_400.0
    # Who may call (docs/security.md).
    auth: str = "none"
    allow_unauthenticated: bool = False
    jwks_file: str = ""
    jwks_url: str = ""
    token_issuer: str = ""
    token_audience: str = ""
    project_claim: str = "project_id"
    roles_claim: str = "roles"
    implied_roles: str = "admin:member,member:reader"
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    service_identities: frozenset[str] = frozenset()
    policy_file: str = ""
    audit_log: str = ""
    # Observability (docs/operations.md): Prometheus /metrics on host:port (empty: off), and
    # the server log's format. Traces follow the standard OTEL_* variables.
    metrics_listen: str = ""
    log_format: str = "text"

    def check(self) -> None:
        """Refuse settings that cannot serve safely; ValueError says why, in one line."""
        if not self.watch_progress_seconds > 0:
            raise ValueError("--watch-progress-seconds must be above 0")
        if not self.watch_retention_seconds > 0:
            raise ValueError("--watch-retention-seconds must be above 0")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(
                f"--log-format must be one of {', '.join(LOG_FORMATS)}, not {self.log_format!r}"
            )
        if self.auth not in AUTH_MODES:
            raise ValueError(f"--auth must be one of {', '.join(AUTH_MODES)}, not {self.auth!r}")
        for flag, address in (
            ("--glance-listen", self.glance_listen),
            ("--metrics-listen", self.metrics_listen),
        ):
            if address and not _is_host_port(address):
                raise ValueError(
                    f"{flag} must be HOST:PORT with a port of 0 to 65535, not {address!r}"
                )
        for flag, listen in (("", self.listen), ("--glance-listen ", self.glance_listen)):
            open_to_all = self.auth == "none" and not self.allow_unauthenticated
            if listen and open_to_all and not is_loopback(listen):
                raise ValueError(
                    f"--auth none lets any caller do anything, so it serves only on a loopback"
                    f" address, not {flag}{listen}: use --auth jwt, or --allow-unauthenticated"
                )
        if self.auth == "jwt":
            if bool(self.jwks_file) == bool(self.jwks_url):
                raise ValueError("--auth jwt needs exactly one of --jwks-file and --jwks-url")
            if not self.token_issuer or not self.token_audience:
                raise ValueError("--auth jwt needs --token-issuer and --token-audience")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        if self.service_identities and not self.tls_client_ca:
            raise ValueError("--service-identity needs client certificates: add --tls-client-ca")

    @property
    def location_policy(self) -> LocationPolicy:
        """The settings the location rules read."""
        return LocationPolicy(
            location_quota=self.location_quota,
            schemes=self.location_schemes,
            hashing_algorithm=self.hashing_algorithm,
        )

    @property
    def record_limits(self) -> RecordLimits:
        """The limits the record's rules read."""
        return RecordLimits(property_quota=self.property_quota, tag_quota=self.tag_quota)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from IMAGELOC_* variables, defaults for the rest."""
        env = os.environ if environ is None else environ
        base = cls()
        schemes = env.get("IMAGELOC_LOCATION_SCHEMES")
        return cls(
            listen=env.get("IMAGELOC_LISTEN", base.listen),
            glance_listen=env.get("IMAGELOC_GLANCE_LISTEN", base.glance_listen),
            metrics_listen=env.get("IMAGELOC_METRICS_LISTEN", base.metrics_listen),
            log_format=env.get("IMAGELOC_LOG_FORMAT", base.log_format),
            database_url=env.get("IMAGELOC_DATABASE", base.database_url),
            location_quota=int(env.get("IMAGELOC_LOCATION_QUOTA", base.location_quota)),
            property_quota=int(env.get("IMAGELOC_PROPERTY_QUOTA", base.property_quota)),
            tag_quota=int(env.get("IMAGELOC_TAG_QUOTA", base.tag_quota)),
            delayed_delete=parse_bool(env.get("IMAGELOC_DELAYED_DELETE", "false")),
            location_schemes=parse_schemes(schemes) if schemes else base.location_schemes,
            hashing_algorithm=env.get("IMAGELOC_HASHING_ALGORITHM", base.hashing_algorithm),
            grace_seconds=float(env.get("IMAGELOC_GRACE_SECONDS", base.grace_seconds)),
            drain_seconds=float(env.get("IMAGELOC_DRAIN_SECONDS", base.drain_seconds)),
            max_workers=int(env.get("IMAGELOC_MAX_WORKERS", base.max_workers)),
            health_check_seconds=float(
                env.get("IMAGELOC_HEALTH_CHECK_SECONDS", base.health_check_seconds)
            ),
            request_retention_seconds=float(
                env.get("IMAGELOC_REQUEST_RETENTION_SECONDS", base.request_retention_seconds)
            ),
            watch_progress_seconds=float(
                env.get("IMAGELOC_WATCH_PROGRESS_SECONDS", base.watch_progress_seconds)
            ),
            watch_retention_seconds=float(
                env.get("IMAGELOC_WATCH_RETENTION_SECONDS", base.watch_retention_seconds)
            ),
            auth=env.get("IMAGELOC_AUTH", base.auth),
            allow_unauthenticated=parse_bool(env.get("IMAGELOC_ALLOW_UNAUTHENTICATED", "false")),
            service_identities=parse_list(env.get("IMAGELOC_SERVICE_IDENTITY", "")),
            **{name: env.get(f"IMAGELOC_{name.upper()}", getattr(base, name)) for name in PATHS},
        )


#: The values of --auth.
AUTH_MODES = ("none", "jwt")

#: The values of --log-format.
LOG_FORMATS = ("text", "json")

#: Text settings read as they are from IMAGELOC_<NAME> (--jwks-file is IMAGELOC_JWKS_FILE).
PATHS = (
    "jwks_file", "jwks_url", "token_issuer", "token_audience", "project_claim", "roles_claim",
    "implied_roles", "tls_cert", "tls_key", "tls_client_ca", "policy_file", "audit_log",
)  # fmt: skip


def is_loopback(listen: str) -> bool:
    """Whether host:port listens on a loopback address only (localhost, 127.0.0.0/8, ::1)."""
    host = listen.rsplit(":", 1)[0].strip("[]") if ":" in listen else listen
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_list(text: str) -> frozenset[str]:
    """A comma-separated list, its items stripped, empty ones dropped."""
    return frozenset(part.strip() for part in text.split(",") if part.strip())


def parse_bool(text: str) -> bool:
    """'1', 'true', 'yes', 'on' (any case) are true; '0', 'false', 'no', 'off', '' false."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def parse_schemes(text: str) -> frozenset[str]:
    """A comma-separated list of URL schemes, lowercased."""
    return frozenset(part.strip().lower() for part in text.split(",") if part.strip())


def _is_host_port(address: str) -> bool:
    """Whether address is HOST:PORT (an IPv6 host in brackets) with a port of 0 to 65535."""
    host, _, port = address.rpartition(":")
    return bool(host.strip("[]")) and port.isascii() and port.isdigit() and int(port) <= 65535
