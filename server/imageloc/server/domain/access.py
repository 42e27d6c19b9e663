"""Who is calling, and what the use cases ask of the rules that decide what they may do.

Standard library only. The auth package implements CallerAccess with Glance's policies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from typing import Protocol

from imageloc.server.domain.model import Image, Visibility

#: The role of a principal that acts for the platform (Glance's `service_api`).
SERVICE_ROLE = "service"


@dataclasses.dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    project_id is empty for a caller with no project (a service identity, or any caller
    under `--auth none`). service_identity is the certificate identity (a SPIFFE ID or
    DNS name) that authenticated it or rides along with its token; empty when none.
    """

    user_id: str = ""
    project_id: str = ""
    roles: frozenset[str] = frozenset()
    service_identity: str = ""

    @property
    def namespace(self) -> str:
        """Whose request ids these are: one principal's ids never answer another's."""
        return "\x1f".join((self.service_identity, self.user_id, self.project_id))


@dataclasses.dataclass(frozen=True)
class ListScope:
    """Which images a listing may return, in terms a store can filter on.

    Public images are always in scope; private and shared ones of `own_project`, or of
    every project when `all_projects`; community ones of `own_project`, or all of them
    when `all_community`. `visibility`, when given, narrows the scope to that one.
    """

    own_project: str = ""
    all_projects: bool = False
    all_community: bool = False
    visibility: Visibility | None = None


#: The scope of a caller who may see every image.
EVERYTHING = ListScope(all_projects=True, all_community=True)


def in_scope(image: Image, scope: ListScope) -> bool:
    """Whether a listing with this scope may return image."""
    if scope.visibility is not None and image.visibility is not scope.visibility:
        return False
    if image.visibility is Visibility.PUBLIC:
        return True
    if image.visibility is Visibility.COMMUNITY:
        return scope.all_community or image.owner == scope.own_project
    return scope.all_projects or image.owner == scope.own_project


class CallerAccess(Protocol):
    """What one call's caller may do, as the use cases ask it.

    The methods that authorize raise DomainError: IMAGE_NOT_FOUND for an image the
    caller may not see, POLICY_DENIED (with the rule's name) for one it may see but
    not act on.
    """

    @property
    def namespace(self) -> str:
        """The caller's namespace of request ids."""
        ...

    @property
    def identity(self) -> Hashable:
        """Who the caller is, to share what it may see: equal identities see alike."""
        ...

    @property
    def service(self) -> bool:
        """Whether the caller holds the `service` role (acts for the platform)."""
        ...

    def authorize(self, image: Image) -> None:
        """Let this call act on image (which exists), or refuse."""
        ...

    def owner_of_new_image(self, *, owner: str | None, visibility: Visibility) -> str:
        """The owner a new image gets when this caller creates it, or refuse."""
        ...

    def authorize_visibility(self, image: Image, visibility: Visibility) -> None:
        """Let this call give image (which it may change) this visibility, or refuse."""
        ...

    def listing(self, visibility: Visibility | None) -> ListScope:
        """The scope of this caller's listing, or refuse it."""
        ...

    def may_see(self, image: Image) -> bool:
        """Whether this caller may see image at all."""
        ...

    def sees_locations(self, image: Image) -> bool:
        """Whether this caller may see image's locations."""
        ...


class Unrestricted:
    """CallerAccess of a caller who may do anything: `--auth none` and the use cases' tests."""

    namespace = ""
    identity: Hashable = "unrestricted"
    service = True

    def authorize(self, image: Image) -> None:
        """Everything is allowed."""

    def owner_of_new_image(self, *, owner: str | None, visibility: Visibility) -> str:
        """The owner asked for, or none."""
        return owner or ""

    def authorize_visibility(self, image: Image, visibility: Visibility) -> None:
        """Every visibility is allowed."""

    def listing(self, visibility: Visibility | None) -> ListScope:
        """Every image, of the visibility asked for."""
        return dataclasses.replace(EVERYTHING, visibility=visibility)

    def may_see(self, image: Image) -> bool:
        """Every image."""
        return True

    def sees_locations(self, image: Image) -> bool:
        """Every location."""
        return True


UNRESTRICTED = Unrestricted()
