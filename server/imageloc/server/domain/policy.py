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

#: Location metadata limits. The top-level object is level 1 of the depth; the byte size
#: is that of the metadata as compact UTF-8 JSON. At 4 KiB a location, an image at the
#: default quota of 10 stays near 43 KiB, so a default page of ListImages (25 images)
#: stays well under the 4 MiB a gRPC client accepts by default.
MAX_METADATA_DEPTH = 8
MAX_METADATA_BYTES = 4096
MAX_METADATA_KEY_LENGTH = 255
MAX_METADATA_VALUE_LENGTH = 2048


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
