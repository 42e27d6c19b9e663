"""Server settings, from command-line flags or IMAGELOC_* environment variables."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from imageloc.server.domain.policy import DEFAULT_SCHEMES, LocationPolicy

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DATABASE = "sqlite:///imageloc.db"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything `imageloc serve` can be told."""

    listen: str = DEFAULT_LISTEN
    database_url: str = DEFAULT_DATABASE
    location_quota: int = 10
    delayed_delete: bool = False
    location_schemes: frozenset[str] = DEFAULT_SCHEMES
    hashing_algorithm: str = "sha512"
    grace_seconds: float = 10.0
    drain_seconds: float = 3.0
    max_workers: int = 8
    health_check_seconds: float = 2.0
    request_retention_seconds: float = 86_400.0

    @property
    def location_policy(self) -> LocationPolicy:
        """The settings the location rules read."""
        return LocationPolicy(
            location_quota=self.location_quota,
            schemes=self.location_schemes,
            hashing_algorithm=self.hashing_algorithm,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from IMAGELOC_* variables, defaults for the rest."""
        env = os.environ if environ is None else environ
        base = cls()
        schemes = env.get("IMAGELOC_LOCATION_SCHEMES")
        return cls(
            listen=env.get("IMAGELOC_LISTEN", base.listen),
            database_url=env.get("IMAGELOC_DATABASE", base.database_url),
            location_quota=int(env.get("IMAGELOC_LOCATION_QUOTA", base.location_quota)),
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
        )


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
