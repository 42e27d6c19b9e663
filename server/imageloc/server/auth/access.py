"""CallerAccess by Glance's policies: what one principal may see and do in one call.

Imports the policy and the domain; the use cases ask it (domain.access.CallerAccess).
"""

from __future__ import annotations

import functools
from typing import Any

from imageloc.server.auth.policy import Credentials, GlancePolicy
from imageloc.server.domain.access import SERVICE_ROLE, ListScope, Principal
from imageloc.server.domain.errors import DomainError, Reason, image_not_found
from imageloc.server.domain.model import Image, ImageStatus, Visibility

#: Glance's rules that decide who sees an image's locations.
LOCATION_RULES = ("get_image_location", "fetch_image_location")
#: The rules a new image's visibility also needs, beyond add_image.
VISIBILITY_RULES = {
    Visibility.PUBLIC: "publicize_image",
    Visibility.COMMUNITY: "communitize_image",
}


def no_auth_principal() -> Principal:
    """The caller of every call under `--auth none`: an admin of no project."""
    return Principal(roles=frozenset({"admin", "member", "reader"}))


class PolicyAccess:
    """One call's CallerAccess: principal's rights under Glance's policies.

    rule is the call's policy; on a queued image, passing queued_rule is enough
    (Glance 2.17's add-location path). writes: the call changes the image, so
    Glance's mutate check applies too: only the owner's project or an admin may
    change it, whatever a loosened rule says; a service that passes queued_rule
    through `service_api` acts for the platform and is exempt.

    Seeing follows Glance's two gates: an admin, or a service (the `service` role),
    sees every image; anyone else sees public and community images and its own
    project's, if it also passes `get_image`. Private and shared images of no owner are
    seen only by admins and services (Glance answers them 404 too).
    """

    def __init__(
        self,
        policy: GlancePolicy,
        principal: Principal,
        *,
        rule: str,
        writes: bool,
        queued_rule: str | None = None,
    ) -> None:
        self._policy = policy
        self._principal = principal
        self._rule = rule
        self._writes = writes
        self._queued_rule = queued_rule
        self._credentials = _credentials(principal)
        self._admin = policy.allows("context_is_admin", credentials=self._credentials, target={})
        self._service = SERVICE_ROLE in self._credentials["roles"]
        self._identity = "\x1e".join((principal.namespace, *sorted(principal.roles)))

    @property
    def namespace(self) -> str:
        """The principal's namespace of request ids."""
        return self._principal.namespace

    @property
    def service(self) -> bool:
        """Whether the principal holds the `service` role."""
        return self._service

    @property
    def identity(self) -> str:
        """The principal, as a string (its hash is kept): what it may see depends on it alone."""
        return self._identity

    def authorize(self, image: Image) -> None:
        """Let this call act on image, or refuse: 404 if unseen, POLICY_DENIED otherwise."""
        if not self.may_see(image):
            raise image_not_found(image.id)
        target = _target(image)
        if self._allows(self._rule, target):
            if self._writes and not self._may_mutate(image):
                raise _denied(self._rule, image.id)
            return
        if (
            self._queued_rule is not None
            and image.status is ImageStatus.QUEUED
            and self._allows(self._queued_rule, target)
        ):
            if self._may_mutate(image) or self._as_service(self._queued_rule):
                return
            raise _denied(self._queued_rule, image.id)
        if not self._writes and self._service:
            return  # a service sees every image: the reads are its too
        raise _denied(self._rule, image.id)

    def owner_of_new_image(self, *, owner: str | None, visibility: Visibility) -> str:
        """The owner a new image gets: the caller's project unless an admin names another."""
        owner = owner or self._principal.project_id
        target = {"project_id": owner, "owner": owner, "visibility": visibility.value}
        if not self._allows(self._rule, target):
            message = f"You are not permitted to create images owned by '{owner}'."
            raise _denied(self._rule, "", message)
        extra = VISIBILITY_RULES.get(visibility)
        if extra is not None and not self._allows(extra, target):
            raise _denied(extra, "", f"You are not permitted to create {visibility.value} images.")
        return owner

    def authorize_visibility(self, image: Image, visibility: Visibility) -> None:
        """Making an image public or community also takes publicize_image or
        communitize_image, as Glance's policy checks of an update do."""
        extra = VISIBILITY_RULES.get(visibility)
        if extra is not None and not self._allows(extra, _target(image)):
            message = f"You are not permitted to set visibility to {visibility.value}."
            raise _denied(extra, image.id, message)

    def listing(self, visibility: Visibility | None) -> ListScope:
        """The scope of the caller's listing, as Glance's list query builds it."""
        project = self._principal.project_id
        if not self._allows(self._rule, {"project_id": project}) and not self._service:
            raise _denied(self._rule, "")
        if self._admin:
            return ListScope(
                own_project=project,
                all_projects=True,
                all_community=visibility is not None,
                visibility=visibility,
            )
        if self._service:
            return ListScope(all_projects=True, all_community=True, visibility=visibility)
        return ListScope(
            own_project=project,
            all_community=visibility is Visibility.COMMUNITY,
            visibility=visibility,
        )

    def may_see(self, image: Image) -> bool:
        """Whether the caller may see image at all (otherwise it does not exist for it)."""
        if self._admin or self._service:
            return True
        visible = image.visibility in (Visibility.PUBLIC, Visibility.COMMUNITY) or (
            bool(image.owner) and image.owner == self._principal.project_id
        )
        return visible and self._allows("get_image", _target(image))

    def sees_locations(self, image: Image) -> bool:
        """Whether the caller may see image's locations; of a deactivated one, admins only."""
        if image.status is ImageStatus.DEACTIVATED:
            return self._admin
        target = _target(image)
        return any(self._allows(rule, target) for rule in LOCATION_RULES)

    def _allows(self, rule: str, target: dict[str, Any]) -> bool:
        return self._policy.allows(rule, credentials=self._credentials, target=target)

    def _may_mutate(self, image: Image) -> bool:
        """Glance's is_image_mutable: an admin, or the owner's project."""
        project = self._principal.project_id
        return self._admin or (bool(project) and image.owner == project)

    def _as_service(self, rule: str) -> bool:
        """Whether the caller passes rule as a service: it grants through `service_api`."""
        return self._policy.refers_to(rule, base="service_api") and self._allows("service_api", {})


@functools.lru_cache(maxsize=4096)
def _credentials(principal: Principal) -> Credentials:
    """oslo.policy's credentials; no project_id key for no project, so no project check passes.

    Kept per principal (a repeat caller's are built once).
    """
    fields: dict[str, Any] = {
        "roles": sorted(role.lower() for role in principal.roles),
        "user_id": principal.user_id or None,
        "service_roles": [],
    }
    if principal.project_id:
        fields["project_id"] = principal.project_id
    return Credentials(fields)


def _target(image: Image) -> dict[str, Any]:
    """Glance's ImageTarget: project_id is the owner; member is None (no image members yet)."""
    owner = image.owner or None
    return {
        "project_id": owner,
        "owner": owner,
        "member_id": None,
        "visibility": image.visibility.value,
        "image_id": image.id,
        "id": image.id,
        "status": image.status.value,
        "protected": image.protected,
        "name": image.name,
    }


def _denied(rule: str, image_id: str, message: str = "") -> DomainError:
    return DomainError(
        Reason.POLICY_DENIED,
        message or f"Policy doesn't allow {rule} to be performed.",
        image_id=image_id,
        metadata={"policy": rule},
    )


__all__ = ["LOCATION_RULES", "PolicyAccess", "no_auth_principal"]
