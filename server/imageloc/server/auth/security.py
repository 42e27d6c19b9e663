"""The server's security from its settings: policy, token verifier, TLS, audit log.

Imports the auth modules and the settings; a file that does not load is a ConfigError.
"""

from __future__ import annotations

import dataclasses
import logging

import grpc

from imageloc.server.auth import tls
from imageloc.server.auth.audit import AuditLog
from imageloc.server.auth.authority import Authority
from imageloc.server.auth.policy import GlancePolicy, PolicyConfigError
from imageloc.server.auth.tokens import (
    AuthConfigError,
    JwksFile,
    JwksUrl,
    KeySource,
    TokenVerifier,
    parse_implied_roles,
)
from imageloc.server.config import ConfigError, Settings

log = logging.getLogger("imageloc.server")


@dataclasses.dataclass(frozen=True)
class Security:
    """What the server needs to authenticate, authorize, encrypt and audit."""

    authority: Authority
    audit: AuditLog
    credentials: grpc.ServerCredentials | None
    #: The bearer-token verifier, with --auth jwt.
    verifier: TokenVerifier | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Security:
        """Security as settings describe it; ConfigError when any of it does not load."""
        settings.check()
        try:
            policy = GlancePolicy.load(settings.policy_file or None)
            verifier = _verifier(settings) if settings.auth == "jwt" else None
            credentials = (
                tls.server_credentials(
                    cert_file=settings.tls_cert,
                    key_file=settings.tls_key,
                    client_ca_file=settings.tls_client_ca or None,
                )
                if settings.tls_cert
                else None
            )
        except (PolicyConfigError, AuthConfigError, tls.TlsConfigError) as error:
            raise ConfigError(str(error)) from None
        for rule in policy.unknown_rules():
            log.warning(
                "policy file %s: %r is not a policy imageloc knows", settings.policy_file, rule
            )
        try:
            audit = AuditLog.open(settings.audit_log)
        except OSError as error:
            raise ConfigError(f"cannot open the audit log: {error}") from None
        authority = Authority(
            policy, verifier=verifier, service_identities=settings.service_identities
        )
        return cls(authority=authority, audit=audit, credentials=credentials, verifier=verifier)


def _verifier(settings: Settings) -> TokenVerifier:
    keys: KeySource = (
        JwksFile(settings.jwks_file) if settings.jwks_file else JwksUrl(settings.jwks_url)
    )
    return TokenVerifier(
        keys,
        issuer=settings.token_issuer,
        audience=settings.token_audience,
        project_claim=settings.project_claim,
        roles_claim=settings.roles_claim,
        implied_roles=parse_implied_roles(settings.implied_roles),
    )
