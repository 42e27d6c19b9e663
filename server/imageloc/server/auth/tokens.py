"""Bearer tokens: verify a JWT against a JWKS (a file or a URL) and read who is calling.

Imports PyJWT, cryptography and the standard library only: no gRPC, no database.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

_log = logging.getLogger(__name__)

#: Why a token was refused; the server sends it as ErrorInfo metadata `cause`.
CAUSES = (
    "missing",
    "malformed",
    "expired",
    "not_yet_valid",
    "bad_signature",
    "wrong_issuer",
    "wrong_audience",
    "unknown_key",
    "unsupported_algorithm",
)

#: A token longer than this is refused as malformed (the server lets gRPC carry 16 KiB).
MAX_TOKEN_BYTES = 8192

#: Keystone's default implications; an identity provider usually does not write them in.
DEFAULT_IMPLIED_ROLES = "admin:member,member:reader"

#: The only algorithms accepted, whatever a token's header says.
ALGORITHMS = frozenset({"RS256", "ES256", "EdDSA"})

#: How often a JWKS file is checked for a change.
JWKS_FILE_CHECK_SECONDS = 0.5

_MIN_RSA_BITS = 2048
_MAX_JWKS_BYTES = 1 << 20

_MESSAGES = {
    "missing": "The call carries no bearer token.",
    "malformed": "The bearer token is not a well-formed JWT this server can read.",
    "expired": "The bearer token has expired.",
    "not_yet_valid": "The bearer token is not valid yet.",
    "bad_signature": "The bearer token's signature does not verify.",
    "wrong_issuer": "The bearer token was issued by an issuer this server does not trust.",
    "wrong_audience": "The bearer token is meant for another audience.",
    "unknown_key": "The bearer token is signed with a key this server does not know.",
    "unsupported_algorithm": "The bearer token uses an algorithm other than RS256, ES256 or EdDSA.",
}


class AuthenticationError(Exception):
    """A token refused: `cause` is one of CAUSES; `message` never holds any of the token."""

    def __init__(self, cause: str, message: str) -> None:
        if cause not in CAUSES:
            raise ValueError(f"unknown authentication cause {cause!r}")
        super().__init__(message)
        self.cause = cause
        self.message = message


class AuthConfigError(Exception):
    """The authentication configuration cannot work; the message is a one-line reason."""


@dataclasses.dataclass(frozen=True)
class TokenClaims:
    """What a verified token says: roles are lowercased and expanded by implication."""

    subject: str
    project_id: str
    roles: frozenset[str]
    expires_at: float


def _refusal(cause: str) -> AuthenticationError:
    return AuthenticationError(cause, _MESSAGES[cause])


# --- implied roles -------------------------------------------------------------------


def parse_implied_roles(text: str) -> dict[str, frozenset[str]]:
    """`admin:member,member:reader` as each role's implied roles, transitively closed.

    Blank text turns implication off ({}); a malformed entry raises AuthConfigError.
    """
    if not text.strip():
        return {}
    direct: dict[str, set[str]] = {}
    for entry in text.split(","):
        role, colon, implied = (part.strip().lower() for part in entry.partition(":"))
        if not colon or not role or not implied or ":" in implied:
            raise AuthConfigError(
                f"bad implied-roles entry {entry.strip()!r}: expected ROLE:IMPLIED_ROLE"
            )
        direct.setdefault(role, set()).add(implied)
    return {role: frozenset(_closure(role, direct)) for role in direct}


def _closure(role: str, direct: Mapping[str, set[str] | frozenset[str]]) -> set[str]:
    """Every role that `role` implies, through any chain; `role` itself only on a cycle."""
    found: set[str] = set()
    pending = list(direct.get(role, ()))
    while pending:
        implied = pending.pop()
        if implied not in found:
            found.add(implied)
            pending.extend(direct.get(implied, ()))
    return found


def _expand(roles: frozenset[str], implied: Mapping[str, frozenset[str]]) -> frozenset[str]:
    expanded = set(roles)
    for role in roles:
        expanded |= implied.get(role, frozenset())
    return frozenset(expanded)


# --- key sources ---------------------------------------------------------------------


class KeySource(Protocol):
    """Public keys by `kid`; `generation` changes whenever the key set changes."""

    def key(self, kid: str | None) -> Any | None:
        """The public key with this kid (a cryptography key object), or None when unknown."""
        ...

    @property
    def generation(self) -> int:
        """A number that changes whenever the key set does, so caches can be dropped."""
        ...


@dataclasses.dataclass(frozen=True)
class _KeySet:
    """Usable public keys by kid; `sole` is the only key when the set has exactly one."""

    by_kid: Mapping[str, Any]
    sole: Any | None

    def key(self, kid: str | None) -> Any | None:
        if kid is None:
            return self.sole
        return self.by_kid.get(kid)


def _alg_for(jwk: Mapping[str, Any]) -> str | None:
    """The one algorithm a JWK may sign with here, or None when its type is not accepted."""
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if kty == "RSA":
        return "RS256"
    if kty == "EC" and crv == "P-256":
        return "ES256"
    if kty == "OKP" and crv == "Ed25519":
        return "EdDSA"
    return None


def _public_key(jwk: object) -> tuple[str | None, Any] | None:
    """(kid, public key) of one JWK, or None when it is not a usable signing key."""
    if not isinstance(jwk, dict):
        return None
    alg = _alg_for(jwk)
    kid = jwk.get("kid")
    if alg is None or jwk.get("use", "sig") != "sig" or jwk.get("alg", alg) != alg:
        return None
    if kid is not None and not isinstance(kid, str):
        return None
    try:
        key = jwt.PyJWK(jwk, algorithm=alg).key
    except (jwt.PyJWTError, ValueError, TypeError):
        return None
    if hasattr(key, "public_key"):
        # A JWK with its private part still verifies with its public half only.
        key = key.public_key()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < _MIN_RSA_BITS:
        return None
    return kid, key


def _parse_jwks(data: bytes, *, source: str) -> _KeySet:
    """The usable keys of a JWKS document; AuthConfigError when there are none."""
    if len(data) > _MAX_JWKS_BYTES:
        raise AuthConfigError(f"the JWKS {source} is larger than {_MAX_JWKS_BYTES} bytes")
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise AuthConfigError(f"the JWKS {source} is not JSON: {err}") from None
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise AuthConfigError(f'the JWKS {source} has no "keys" list')
    by_kid: dict[str, Any] = {}
    usable: list[Any] = []
    for jwk in keys:
        found = _public_key(jwk)
        if found is None:
            continue
        kid, key = found
        usable.append(key)
        if kid is not None and kid not in by_kid:
            by_kid[kid] = key
    if not usable:
        raise AuthConfigError(
            f"the JWKS {source} has no usable signing key (RSA, EC P-256 or Ed25519, use sig)"
        )
    return _KeySet(by_kid=by_kid, sole=usable[0] if len(usable) == 1 else None)


def _file_signature(path: str) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


class JwksFile:
    """A JWKS file, re-read when it changes (checked at most every 0.5 s): keys rotate live.

    A re-read that fails keeps the keys in use and logs a warning.
    """

    def __init__(self, path: str, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._path = path
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._signature = _file_signature(path)
        self._content = self._read()
        self._keys = _parse_jwks(self._content, source=f"file {path}")
        self._generation = 0
        self._checked_at = monotonic()

    @property
    def path(self) -> str:
        return self._path

    @property
    def generation(self) -> int:
        self._refresh_if_due()
        return self._generation

    def key(self, kid: str | None) -> Any | None:
        self._refresh_if_due()
        return self._keys.key(kid)

    def _read(self) -> bytes:
        try:
            with open(self._path, "rb") as file:
                return file.read(_MAX_JWKS_BYTES + 1)
        except FileNotFoundError:
            raise AuthConfigError(f"the JWKS file {self._path} does not exist") from None
        except OSError as err:
            raise AuthConfigError(
                f"cannot read the JWKS file {self._path}: {err.strerror or err}"
            ) from None

    def _refresh_if_due(self) -> None:
        now = self._monotonic()
        if now - self._checked_at < JWKS_FILE_CHECK_SECONDS:
            return
        with self._lock:
            if now - self._checked_at < JWKS_FILE_CHECK_SECONDS:
                return
            self._checked_at = now
            signature = _file_signature(self._path)
            if signature == self._signature:
                return
            # Remember the failed state too, so a bad file is retried only once it changes.
            self._signature = signature
            self._reload()

    def _reload(self) -> None:
        try:
            content = self._read()
            if content == self._content:
                return
            keys = _parse_jwks(content, source=f"file {self._path}")
        except AuthConfigError as err:
            _log.warning("keeping the JWKS in use: %s", err)
            return
        self._content, self._keys = content, keys
        self._generation += 1
        _log.info("reloaded the JWKS file %s", self._path)


class JwksUrl:
    """A JWKS fetched from a URL and cached.

    An unknown kid refetches it, at most once per `min_refresh_seconds`; a copy older than
    `max_age_seconds` is refetched by one caller while the others go on with it. A fetch
    that fails after the first keeps the keys in use.
    """

    def __init__(
        self,
        url: str,
        *,
        min_refresh_seconds: float = 30.0,
        timeout: float = 5.0,
        max_age_seconds: float = 300.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise AuthConfigError(f"the JWKS URL {url} is not http or https")
        self._url = url
        self._min_refresh = min_refresh_seconds
        self._timeout = timeout
        self._max_age = max_age_seconds
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._content = self._fetch()
        self._keys = _parse_jwks(self._content, source=f"at {url}")
        self._generation = 0
        self._fetched_at = monotonic()

    @property
    def generation(self) -> int:
        if self._monotonic() - self._fetched_at >= self._max_age and self._lock.acquire(
            blocking=False
        ):
            try:
                self._refetch()
            finally:
                self._lock.release()
        return self._generation

    def key(self, kid: str | None) -> Any | None:
        key = self._keys.key(kid)
        if key is not None:
            return key
        with self._lock:
            if self._monotonic() - self._fetched_at >= self._min_refresh:
                self._refetch()
        return self._keys.key(kid)

    def _fetch(self) -> bytes:
        try:
            with urllib.request.urlopen(self._url, timeout=self._timeout) as response:
                content: bytes = response.read(_MAX_JWKS_BYTES + 1)
        except urllib.error.HTTPError as err:
            reason = f"HTTP {err.code}"
            raise AuthConfigError(f"cannot fetch the JWKS at {self._url}: {reason}") from None
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = str(getattr(err, "reason", None) or err)
            raise AuthConfigError(f"cannot fetch the JWKS at {self._url}: {reason}") from None
        return content

    def _refetch(self) -> None:
        """Fetch again (the caller holds the lock); on failure keep the keys in use."""
        self._fetched_at = self._monotonic()
        try:
            content = self._fetch()
            if content == self._content:
                return
            keys = _parse_jwks(content, source=f"at {self._url}")
        except AuthConfigError as err:
            _log.warning("keeping the JWKS in use: %s", err)
            return
        self._content, self._keys = content, keys
        self._generation += 1
        _log.info("refetched the JWKS at %s", self._url)


# --- verification --------------------------------------------------------------------


def _key_fits(alg: str, key: Any) -> bool:
    """Whether the key is of the type the algorithm signs with (no cross-type confusion)."""
    if alg == "RS256":
        return isinstance(key, rsa.RSAPublicKey)
    if alg == "ES256":
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    return alg == "EdDSA" and isinstance(key, ed25519.Ed25519PublicKey)


def _bearer_token(authorization: str | None) -> str:
    if not authorization or not authorization.strip():
        raise _refusal("missing")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _refusal("malformed")
    if len(token) > MAX_TOKEN_BYTES or not token.isascii():
        raise _refusal("malformed")
    return token


def _claim(payload: Mapping[str, Any], name: str) -> Any:
    """A claim by name, or by dotted path into nested objects (`realm_access.roles`).

    A claim whose own name holds dots (`https://example.org/roles`) is found first.
    """
    if name in payload:
        return payload[name]
    value: Any = payload
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _time_claim(payload: Mapping[str, Any], name: str) -> float | None:
    """A NumericDate claim, None when absent; malformed when it is not a number."""
    value = payload.get(name)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _refusal("malformed")
    try:
        moment = float(value)
    except OverflowError:
        raise _refusal("malformed") from None
    if not math.isfinite(moment):
        raise _refusal("malformed")
    return moment


def _optional_string(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _refusal("malformed")
    return value


def _roles(value: object) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not all(isinstance(role, str) for role in value):
        raise _refusal("malformed")
    return frozenset(role.strip().lower() for role in value if role.strip())


@dataclasses.dataclass(frozen=True)
class _Cached:
    claims: TokenClaims
    valid_until: float


class TokenVerifier:
    """Verifies `authorization: Bearer <JWT>` values and keeps verified tokens for reuse.

    The cache is keyed by the token's sha256, bounded (the oldest go first), drops an entry
    once its token expires and drops everything when the key set changes.
    """

    def __init__(
        self,
        keys: KeySource,
        *,
        issuer: str,
        audience: str,
        project_claim: str = "project_id",
        roles_claim: str = "roles",
        implied_roles: Mapping[str, frozenset[str]] | None = None,
        leeway: float = 60.0,
        cache_size: int = 10000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if implied_roles is None:
            implied_roles = parse_implied_roles(DEFAULT_IMPLIED_ROLES)
        direct = {
            role.lower(): frozenset(r.lower() for r in implied)
            for role, implied in implied_roles.items()
        }
        self._implied = {role: frozenset(_closure(role, direct)) for role in direct}
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._project_claim = project_claim
        self._roles_claim = roles_claim
        self._leeway = leeway
        self._cache_size = cache_size
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[bytes, _Cached] = {}
        self._generation = keys.generation
        # Verifications answered from the cache, and by checking the signature (metrics).
        self.cache_hits = 0
        self.cache_misses = 0

    def verify(self, authorization: str | None) -> TokenClaims:
        """The claims of a valid token; AuthenticationError with its cause otherwise."""
        token = _bearer_token(authorization)
        generation = self._keys.generation
        if generation != self._generation:
            with self._lock:
                self._cache = {}
                self._generation = generation
        digest = hashlib.sha256(token.encode("ascii")).digest()
        cache = self._cache
        cached = cache.get(digest)
        now = self._clock()
        if cached is not None:
            if now < cached.valid_until:
                self.cache_hits += 1
                return cached.claims
            with self._lock:
                cache.pop(digest, None)
        self.cache_misses += 1
        claims = self._verify_uncached(token, now=now)
        self._remember(digest, _Cached(claims, claims.expires_at + self._leeway), generation)
        return claims

    def _remember(self, digest: bytes, entry: _Cached, generation: int) -> None:
        if self._cache_size <= 0:
            return
        with self._lock:
            if generation != self._generation:
                return
            cache = self._cache
            while len(cache) >= self._cache_size:
                cache.pop(next(iter(cache)))
            cache[digest] = entry

    def _verify_uncached(self, token: str, *, now: float) -> TokenClaims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _refusal("malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALGORITHMS:
            raise _refusal("unsupported_algorithm")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _refusal("malformed")
        key = self._keys.key(kid)
        if key is None:
            raise _refusal("unknown_key")
        if not _key_fits(alg, key):
            raise _refusal("bad_signature")
        payload = self._signed_payload(token, key=key, alg=alg)
        return self._claims(payload, now=now)

    @staticmethod
    def _signed_payload(token: str, *, key: Any, alg: str) -> dict[str, Any]:
        # Claims are checked below against this verifier's clock, so PyJWT checks none.
        options: Any = {
            "verify_signature": True,
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
            "verify_aud": False,
            "verify_iss": False,
            "verify_sub": False,
            "verify_jti": False,
            "require": [],
        }
        try:
            payload: dict[str, Any] = jwt.decode(token, key, algorithms=[alg], options=options)
        except jwt.InvalidSignatureError:
            raise _refusal("bad_signature") from None
        except jwt.InvalidAlgorithmError:
            raise _refusal("unsupported_algorithm") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise _refusal("malformed") from None
        return payload

    def _claims(self, payload: Mapping[str, Any], *, now: float) -> TokenClaims:
        exp = _time_claim(payload, "exp")
        if exp is None:
            raise _refusal("malformed")
        if now >= exp + self._leeway:
            raise _refusal("expired")
        for name in ("nbf", "iat"):
            moment = _time_claim(payload, name)
            if moment is not None and moment > now + self._leeway:
                raise _refusal("not_yet_valid")
        if payload.get("iss") != self._issuer:
            raise _refusal("wrong_issuer")
        aud = payload.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or self._audience not in audiences:
            raise _refusal("wrong_audience")
        roles = _roles(_claim(payload, self._roles_claim))
        return TokenClaims(
            subject=_optional_string(payload.get("sub")),
            project_id=_optional_string(_claim(payload, self._project_claim)),
            roles=_expand(roles, self._implied),
            expires_at=exp,
        )
