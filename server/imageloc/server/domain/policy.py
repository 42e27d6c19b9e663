"""The server's location settings that the rules read.

Standard library only.
"""

from __future__ import annotations

import dataclasses

#: Schemes glance_store knows, which the server accepts unless configured otherwise.
DEFAULT_SCHEMES = frozenset(
    {
        "http",
        "https",
        "rbd",
        "swift",
        "swift+http",
        "swift+https",
        "s3",
        "s3+http",
        "s3+https",
        "cinder",
        "vsphere",
    }
)

#: Glance's RESTRICTED_URI_SCHEMAS: refused whatever the configuration says.
RESTRICTED_SCHEMES = frozenset({"file", "filesystem", "swift+config"})

MAX_URL_LENGTH = 255


@dataclasses.dataclass(frozen=True)
class LocationPolicy:
    """Settings of the location rules.

    location_quota: most locations an image may have; negative means unlimited.
    schemes: URL schemes accepted (restricted ones are refused regardless).
    hashing_algorithm: the only os_hash_algo accepted in validation data.
    """

    location_quota: int = 10
    schemes: frozenset[str] = DEFAULT_SCHEMES
    hashing_algorithm: str = "sha512"
