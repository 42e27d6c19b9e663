"""`imageloc auth dev-keys` and `imageloc auth dev-token`: a signing key and tokens to try auth.

For development only: a real deployment's tokens come from its identity provider.
Imports PyJWT, cryptography and the standard library; nothing of the server.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

EXIT_OK = 0
EXIT_USAGE = 2

#: The top-level commands this module handles.
COMMANDS = frozenset({"auth"})

DEFAULT_ISSUER = "imageloc-dev"
DEFAULT_AUDIENCE = "imageloc"
DEFAULT_SUBJECT = "dev-user"
DEFAULT_TTL_SECONDS = 3600
PRIVATE_KEY_FILE = "private.pem"
JWKS_FILE = "jwks.json"

#: The members of each key type that RFC 7638 hashes, in its order.
_THUMBPRINT_MEMBERS = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
}
_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_TTL = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `auth` with its verbs `dev-keys` and `dev-token` to the command line."""
    auth = commands.add_parser(
        "auth",
        help="Make a development signing key and tokens.",
        description="Make a development signing key and tokens, to try `serve --auth jwt`.",
    )
    verbs = auth.add_subparsers(dest="verb", required=True, metavar="VERB")
    keys = verbs.add_parser(
        "dev-keys",
        help="Write a private key and its JWKS.",
        description=f"Write DIR/{PRIVATE_KEY_FILE} (RSA 2048, mode 0600) and DIR/{JWKS_FILE} "
        "(its public key), for `serve --jwks-file`.",
    )
    keys.add_argument("--out", required=True, metavar="DIR", help="where to write the files")
    keys.add_argument("--force", action="store_true", help="replace a key already there")
    token = verbs.add_parser(
        "dev-token",
        help="Print a token signed with a dev-keys key.",
        description="Print a JWT signed with a key from `auth dev-keys`.",
    )
    token.add_argument("--key", required=True, metavar="PEM", help="the private key to sign with")
    token.add_argument("--project", required=True, metavar="P", help="the caller's project_id")
    token.add_argument(
        "--roles", required=True, metavar="a,b", help="the caller's roles, comma-separated"
    )
    token.add_argument("--sub", default=DEFAULT_SUBJECT, metavar="U", help="the user (sub)")
    token.add_argument(
        "--ttl",
        type=parse_ttl,
        default=DEFAULT_TTL_SECONDS,
        metavar="T",
        help="lifetime: 90s, 30m, 1h, 2d or seconds (default 1h)",
    )
    token.add_argument("--issuer", default=DEFAULT_ISSUER, help="iss (default %(default)s)")
    token.add_argument("--audience", default=DEFAULT_AUDIENCE, help="aud (default %(default)s)")


def parse_ttl(text: str) -> float:
    """`90s`, `30m`, `1h`, `2d` or plain seconds, as seconds."""
    match = _TTL.fullmatch(text.strip().lower())
    seconds = float(match[1]) * _TTL_UNITS[match[2] or "s"] if match else 0.0
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"bad ttl {text!r}: use 90s, 30m, 1h, 2d or seconds")
    return seconds


def run(args: argparse.Namespace) -> int:
    """Run `auth VERB`; returns the exit status (2 with a one-line message on bad usage)."""
    try:
        if args.verb == "dev-keys":
            _dev_keys(Path(args.out), force=args.force)
        else:
            _dev_token(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


class UsageError(Exception):
    """A command that cannot be done as asked; the message is one line."""


def _dev_keys(out: Path, *, force: bool) -> None:
    private_path, jwks_path = out / PRIVATE_KEY_FILE, out / JWKS_FILE
    if private_path.exists() and not force:
        raise UsageError(f"{private_path} exists; pass --force to replace it")
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write_private(private_path, pem)
        jwks_path.write_text(json.dumps(jwks_of([private_key.public_key()]), indent=2) + "\n")
    except OSError as err:
        raise UsageError(f"cannot write to {out}: {err.strerror or err}") from None
    print(f"wrote {private_path} (RS256 private key; keep it secret)")
    print(f"wrote {jwks_path} (kid {kid_of(private_key.public_key())}; serve --jwks-file it)")


def _write_private(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(data)


def _dev_token(args: argparse.Namespace) -> None:
    try:
        pem = Path(args.key).read_bytes()
    except OSError as err:
        raise UsageError(f"cannot read the key {args.key}: {err.strerror or err}") from None
    roles = [role.strip() for role in args.roles.split(",") if role.strip()]
    try:
        token = sign_token(
            pem,
            subject=args.sub,
            project_id=args.project,
            roles=roles,
            ttl_seconds=args.ttl,
            issuer=args.issuer,
            audience=args.audience,
        )
    except ValueError as err:
        raise UsageError(f"{args.key} is not a usable private key: {err}") from None
    print(token)


def load_private_key(private_key_pem: bytes) -> PrivateKeyTypes:
    """An unencrypted PEM private key; ValueError when it is not one that can sign here."""
    try:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
    except (TypeError, ValueError) as err:
        raise ValueError(f"not an unencrypted PEM private key ({err})") from None
    algorithm_of(key.public_key())
    return key


def algorithm_of(public_key: PublicKeyTypes) -> str:
    """The JWS algorithm a key signs with: RS256, ES256 (P-256) or EdDSA (Ed25519)."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(
        public_key.curve, ec.SECP256R1
    ):
        return "ES256"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    raise ValueError("the key is not RSA, EC P-256 or Ed25519")


def public_jwk(public_key: PublicKeyTypes) -> dict[str, Any]:
    """The public JWK of a key, with its kid (RFC 7638 thumbprint), alg and use `sig`."""
    alg = algorithm_of(public_key)
    jwk: dict[str, Any] = jwt.get_algorithm_by_name(alg).to_jwk(public_key, as_dict=True)
    return jwk | {"kid": kid_of(public_key), "alg": alg, "use": "sig"}


def jwks_of(public_keys: Iterable[PublicKeyTypes]) -> dict[str, Any]:
    """A JWKS document holding these public keys."""
    return {"keys": [public_jwk(key) for key in public_keys]}


def kid_of(public_key: PublicKeyTypes) -> str:
    """The key's RFC 7638 JWK thumbprint (SHA-256, base64url): the same from either half."""
    alg = algorithm_of(public_key)
    jwk = jwt.get_algorithm_by_name(alg).to_jwk(public_key, as_dict=True)
    members = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def sign_token(
    private_key_pem: bytes,
    *,
    subject: str,
    project_id: str,
    roles: Iterable[str],
    ttl_seconds: float,
    issuer: str,
    audience: str,
    now: float | None = None,
    extra_claims: Mapping[str, Any] | None = None,
) -> str:
    """A JWT signed with the key, its kid in the header; extra_claims add or replace claims.

    Raises ValueError when the PEM is not a private key that can sign here.
    """
    key = load_private_key(private_key_pem)
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": subject,
        "project_id": project_id,
        "roles": list(roles),
        "iss": issuer,
        "aud": audience,
        "iat": issued,
        "nbf": issued,
        "exp": issued + int(ttl_seconds),
    }
    claims |= extra_claims or {}
    public_key = key.public_key()
    return jwt.encode(
        claims,
        key,  # type: ignore[arg-type]
        algorithm=algorithm_of(public_key),
        headers={"kid": kid_of(public_key)},
    )
