"""A test identity provider: keys made per test, a JWKS file, good tokens and hostile ones.

Built on imageloc.client.auth_commands (kid, JWK and signing); nothing of the server.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypedDict

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from imageloc.client.auth_commands import algorithm_of, jwks_of, kid_of

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class JwtSettings(TypedDict):
    """The Settings of a server that trusts an Issuer: `Settings(..., **issuer.trusted_by())`."""

    auth: str
    jwks_file: str
    token_issuer: str
    token_audience: str


def new_key(algorithm: str = "RS256") -> SigningKey:
    """A fresh private key for RS256 (RSA 2048), ES256 (P-256) or EdDSA (Ed25519)."""
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"no test keys for {algorithm}")


def private_pem(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_pem(key: SigningKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compose(header: Mapping[str, Any], claims: Mapping[str, Any], signature: bytes = b"") -> str:
    """A JWT from its parts, signed or not as the caller decides."""
    return f"{signing_input(header, claims)}.{b64url(signature)}"


def signing_input(header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
    return ".".join(b64url(json.dumps(part).encode()) for part in (header, claims))


def write_atomically(path: Path, text: str) -> None:
    """Replace the file in one step, as a key-rotation job should."""
    partial = path.with_suffix(".partial")
    partial.write_text(text)
    os.replace(partial, path)


@dataclasses.dataclass
class Issuer:
    """Signs tokens with its current key; `jwks_file` lists the keys a server should trust."""

    directory: Path
    issuer: str
    audience: str
    algorithm: str
    signing_key: SigningKey
    trusted: list[SigningKey]

    @classmethod
    def create(
        cls,
        tmp_path: Path,
        *,
        issuer: str = "imageloc-test",
        audience: str = "imageloc",
        algorithm: str = "RS256",
    ) -> Issuer:
        key = new_key(algorithm)
        tmp_path.mkdir(parents=True, exist_ok=True)
        made = cls(tmp_path, issuer, audience, algorithm, key, [key])
        (tmp_path / "private.pem").write_bytes(private_pem(key))
        made.write_jwks()
        return made

    @property
    def jwks_file(self) -> Path:
        return self.directory / "jwks.json"

    def trusted_by(self) -> JwtSettings:
        """The settings of a server with `--auth jwt` that trusts this issuer's tokens."""
        return JwtSettings(
            auth="jwt",
            jwks_file=str(self.jwks_file),
            token_issuer=self.issuer,
            token_audience=self.audience,
        )

    @property
    def kid(self) -> str:
        return kid_of(self.signing_key.public_key())

    def jwks(self) -> dict[str, Any]:
        return jwks_of(key.public_key() for key in self.trusted)

    def write_jwks(self, document: Mapping[str, Any] | None = None) -> None:
        """Write the trusted keys' JWKS (or another document) over jwks.json."""
        write_atomically(self.jwks_file, json.dumps(self.jwks() if document is None else document))

    def rotate(self, *, keep_old: bool = True, algorithm: str | None = None) -> str:
        """Sign with a new key from now on and add it to jwks.json; returns its kid."""
        key = new_key(algorithm or self.algorithm)
        self.trusted = [key, *self.trusted] if keep_old else [key]
        self.signing_key = key
        self.algorithm = algorithm_of(key.public_key())
        (self.directory / "private.pem").write_bytes(private_pem(key))
        self.write_jwks()
        return self.kid

    def claims(
        self,
        *,
        project: str = "p1",
        roles: Iterable[str] | Any = ("member", "reader"),
        sub: str = "u1",
        ttl: float = 3600,
        now: float | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """A token's claims; an override sets or replaces a claim, or removes it when None."""
        issued = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "sub": sub,
            "project_id": project,
            "roles": list(roles) if isinstance(roles, list | tuple) else roles,
            "iss": self.issuer,
            "aud": self.audience,
            "iat": issued,
            "nbf": issued,
            "exp": issued + int(ttl),
        }
        return _override(claims, overrides)

    def header(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return _override({"alg": self.algorithm, "typ": "JWT", "kid": self.kid}, overrides or {})

    def token(self, *, header: Mapping[str, Any] | None = None, **claims: Any) -> str:
        """A token signed with the current key; `header` overrides header fields the same way."""
        return self.sign(self.signing_key, self.header(header), self.claims(**claims))

    @staticmethod
    def sign(key: SigningKey, header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
        """Sign whatever header and claims are given: PyJWT's encode would refuse odd ones."""
        algorithm = jwt.get_algorithm_by_name(header["alg"])
        signature = algorithm.sign(signing_input(header, claims).encode(), key)
        return compose(header, claims, signature)

    def unsigned_token(self, **claims: Any) -> str:
        """`alg: none`, no signature, the current kid."""
        return compose(self.header({"alg": "none"}), self.claims(**claims))

    def hs256_with_public_key(self, **claims: Any) -> str:
        """HS256 keyed with the public key's PEM: the classic algorithm-confusion attack."""
        header, body = self.header({"alg": "HS256"}), self.claims(**claims)
        mac = hmac.new(public_pem(self.signing_key), signing_input(header, body).encode(), "sha256")
        return compose(header, body, mac.digest())

    def token_from_other_key(self, **claims: Any) -> str:
        """The current kid, signed by a key nobody trusts: a bad signature."""
        return self.sign(new_key(self.algorithm), self.header(), self.claims(**claims))

    def token_with_unknown_kid(self, **claims: Any) -> str:
        """Signed by a key nobody trusts, under a kid no JWKS holds."""
        other = new_key(self.algorithm)
        kid = hashlib.sha256(public_pem(other)).hexdigest()[:16]
        return self.sign(other, self.header({"kid": kid}), self.claims(**claims))


def _override(fields: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    for name, value in overrides.items():
        if value is None:
            fields.pop(name, None)
        else:
            fields[name] = value
    return fields
