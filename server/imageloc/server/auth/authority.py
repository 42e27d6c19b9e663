"""From a call's credentials to its Principal, and from a Principal to what it may do.

Imports the auth modules and the domain; not grpc (the servicer hands over the metadata
value and the TLS auth context).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from imageloc.server.auth.access import PolicyAccess, no_auth_principal
from imageloc.server.auth.policy import GlancePolicy
from imageloc.server.auth.tls import service_identity
from imageloc.server.auth.tokens import AuthenticationError, TokenVerifier
from imageloc.server.domain.access import SERVICE_ROLE, CallerAccess, Principal

#: What grpc's ServicerContext.auth_context() returns: the peer's TLS properties.
AuthContext = Mapping[str, Sequence[bytes]]


class Authority:
    """Authenticates callers (bearer tokens, client certificates) and binds them to policy.

    Without a verifier (`--auth none`) every caller is the no-auth admin. With one, a
    call needs a valid token, or a client certificate of a service identity, or both:
    then it acts for the token's user and also holds the `service` role.
    """

    def __init__(
        self,
        policy: GlancePolicy,
        *,
        verifier: TokenVerifier | None = None,
        service_identities: frozenset[str] = frozenset(),
    ) -> None:
        self._policy = policy
        self._verifier = verifier
        self._service_identities = service_identities
        self._anonymous = no_auth_principal()

    @property
    def authenticates(self) -> bool:
        """Whether calls need credentials."""
        return self._verifier is not None

    def principal(
        self, authorization: str | None, auth_context: Callable[[], AuthContext]
    ) -> Principal:
        """The caller; AuthenticationError when its credentials do not authenticate it."""
        if self._verifier is None:
            return self._anonymous
        identity = (
            service_identity(auth_context(), self._service_identities)
            if self._service_identities
            else ""
        )
        if identity and not authorization:
            return Principal(roles=frozenset({SERVICE_ROLE}), service_identity=identity)
        claims = self._verifier.verify(authorization)
        roles = claims.roles | {SERVICE_ROLE} if identity else claims.roles
        return Principal(
            user_id=claims.subject,
            project_id=claims.project_id,
            roles=roles,
            service_identity=identity,
        )

    def access(
        self, principal: Principal, *, rule: str, writes: bool, queued_rule: str | None = None
    ) -> CallerAccess:
        """What principal may do in a call whose policy is rule (see PolicyAccess)."""
        return PolicyAccess(
            self._policy, principal, rule=rule, writes=writes, queued_rule=queued_rule
        )


__all__ = ["AuthContext", "AuthenticationError", "Authority"]
