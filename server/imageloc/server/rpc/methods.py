"""Every RPC's facts in one table: its Glance policy, whether it writes, whether it is idempotent.

Imports nothing of the server; the servicer, the authority and the audit log read it.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Method:
    """One RPC of imageloc.v1.ImageService.

    policy is the Glance rule the caller must pass; on a queued image passing
    queued_policy instead is enough (Glance 2.17's add-location path for services).
    writes: a mutation (audited, and Glance's owner-only mutate check applies).
    request_id: the request carries an idempotency key.
    """

    name: str
    policy: str
    writes: bool
    request_id: bool
    queued_policy: str | None = None


_ROWS = (
    # name, policy, writes, request_id
    ("CreateImage", "add_image", True, True),
    ("GetImage", "get_image", False, False),
    ("ListImages", "get_images", False, False),
    ("DeleteImage", "delete_image", True, True),
    ("BeginUpload", "upload_image", True, True),
    ("CompleteUpload", "upload_image", True, True),
    ("FailUpload", "upload_image", True, True),
    ("StageImage", "upload_image", True, True),
    ("BeginImport", "upload_image", True, True),
    ("DeactivateImage", "deactivate", True, True),
    ("ReactivateImage", "reactivate", True, True),
    ("ReplaceLocation", "set_image_location", True, True),
    ("RemoveLocation", "delete_image_location", True, True),
)

#: RPC name -> its facts.
METHODS: dict[str, Method] = {
    name: Method(name=name, policy=policy, writes=writes, request_id=request_id)
    for name, policy, writes, request_id in _ROWS
} | {
    "AddLocation": Method(
        name="AddLocation",
        policy="set_image_location",
        writes=True,
        request_id=True,
        queued_policy="add_image_location",
    )
}
