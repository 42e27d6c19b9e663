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


_ROWS: tuple[tuple[str, str, bool, bool, str | None], ...] = (
    # name, policy, writes, request_id, queued_policy
    ("CreateImage", "add_image", True, True, None),
    ("UpdateImage", "modify_image", True, True, None),
    ("GetImage", "get_image", False, False, None),
    ("ListImages", "get_images", False, False, None),
    ("DeleteImage", "delete_image", True, True, None),
    ("BeginUpload", "upload_image", True, True, None),
    ("CompleteUpload", "upload_image", True, True, None),
    ("FailUpload", "upload_image", True, True, None),
    ("StageImage", "upload_image", True, True, None),
    ("BeginImport", "upload_image", True, True, None),
    ("DeactivateImage", "deactivate", True, True, None),
    ("ReactivateImage", "reactivate", True, True, None),
    ("AddLocation", "set_image_location", True, True, "add_image_location"),
    ("ReplaceLocation", "set_image_location", True, True, None),
    ("RemoveLocation", "delete_image_location", True, True, None),
    # A stream: get_images to open it, then each change as get_image decides (may_see).
    ("WatchImages", "get_images", False, False, None),
)

#: RPC name -> its facts.
METHODS: dict[str, Method] = {row[0]: Method(*row) for row in _ROWS}
