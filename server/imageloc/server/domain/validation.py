"""Pure checks of location URLs, location metadata and validation data.

Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import string
import urllib.parse
from collections.abc import Mapping
from typing import Any

from imageloc.server.domain.errors import DomainError, Reason
from imageloc.server.domain.model import Image, ImageStatus, Location, ValidationData
from imageloc.server.domain.policy import (
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MAX_METADATA_KEY_LENGTH,
    MAX_METADATA_VALUE_LENGTH,
    MAX_URL_LENGTH,
    RESTRICTED_SCHEMES,
    LocationPolicy,
)

_HEX = frozenset(string.hexdigits)
#: The most characters of a caller's value a refusal quotes: refusals travel in
#: response trailers, which gRPC clients cap at 8 KiB by default.
_QUOTED_LENGTH = 160
#: Schemes whose URLs name a host, so a URL without one is meaningless.
_HOST_SCHEMES = frozenset({"http", "https", "swift+http", "swift+https", "s3+http", "s3+https"})


def _invalid_location(image: Image, field: str, why: str, url: str) -> DomainError:
    return DomainError(
        Reason.INVALID_LOCATION,
        f"Invalid location: {why}",
        image_id=image.id,
        image_status=image.status,
        field=field,
        metadata={"url": url[:MAX_URL_LENGTH]},
    )


def url_problem(url: str, policy: LocationPolicy) -> str | None:
    """Why url cannot be a location, or None when it can."""
    if not url:
        return "the URL is empty"
    if len(url) > MAX_URL_LENGTH:
        return f"the URL is longer than {MAX_URL_LENGTH} characters"
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        return "the URL contains white space or control characters"
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError as exc:
        return f"the URL cannot be parsed ({exc})"
    scheme = parts.scheme.lower()
    if not scheme:
        return "the URL has no scheme"
    if scheme in RESTRICTED_SCHEMES:
        return f"the scheme {scheme!r} is restricted"
    if scheme not in policy.schemes:
        return f"the scheme {scheme!r} is not a known store scheme"
    if scheme in _HOST_SCHEMES and not parts.hostname:
        return "the URL has no host"
    if not (parts.netloc or parts.path.strip("/")):
        return "the URL names nothing after its scheme"
    return None


def quoted(value: str, limit: int = _QUOTED_LENGTH) -> str:
    """value as a refusal may quote it: cut to limit characters."""
    return value if len(value) <= limit else f"{value[:limit]}..."


def metadata_problem(metadata: Any, path: str = "metadata") -> str | None:
    """Why metadata is not a JSON object of string leaves within the limits, or None.

    Limits: MAX_METADATA_DEPTH nested objects and lists (the top-level object is the first),
    keys of MAX_METADATA_KEY_LENGTH and strings of MAX_METADATA_VALUE_LENGTH characters
    without NUL, and MAX_METADATA_BYTES of compact UTF-8 JSON in all.
    """
    if not isinstance(metadata, Mapping):
        return f"{path} must be an object"
    problem = _value_problem(metadata, path, depth=1)
    if problem:
        return problem
    size = len(json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode())
    if size > MAX_METADATA_BYTES:
        return f"{path} takes {size} bytes as JSON, more than {MAX_METADATA_BYTES}"
    return None


def _value_problem(value: Any, path: str, *, depth: int) -> str | None:
    if isinstance(value, str):
        flaw = _text_flaw(value, MAX_METADATA_VALUE_LENGTH)
        return f"{path} {flaw}" if flaw else None
    if not isinstance(value, Mapping | list | tuple):
        return f"{path} has an invalid type of {type(value).__name__}: every leaf must be a string"
    if depth > MAX_METADATA_DEPTH:
        return f"{path} is nested deeper than {MAX_METADATA_DEPTH} levels"
    if isinstance(value, Mapping):
        problem = next(filter(None, (_key_problem(key, path) for key in value)), None)
        if problem:
            return problem
        children = [(f"{path}.{quoted(key, 32)}", child) for key, child in value.items()]
    else:
        children = [(f"{path}[{i}]", child) for i, child in enumerate(value)]
    for child_path, child in children:
        problem = _value_problem(child, child_path, depth=depth + 1)
        if problem:
            return problem
    return None


def _key_problem(key: Any, path: str) -> str | None:
    if not isinstance(key, str):
        return f"{path} has a key of type {type(key).__name__}: every key must be a string"
    flaw = _text_flaw(key, MAX_METADATA_KEY_LENGTH)
    return f"{path} has a key {quoted(key, 32)!r} that {flaw}" if flaw else None


def _text_flaw(text: str, limit: int) -> str | None:
    if len(text) > limit:
        return f"is longer than {limit} characters"
    if "\x00" in text:
        return "contains a NUL character"
    return None


def non_json_metadata(field: str, url: str) -> DomainError:
    """INVALID_LOCATION for metadata that holds a number JSON cannot: NaN or Infinity.

    Raised before the image is read, so it names neither the image nor its status.
    """
    return DomainError(
        Reason.INVALID_LOCATION,
        f"Invalid location: {field} holds NaN or Infinity: every leaf must be a string",
        field=field,
        metadata={"url": url[:MAX_URL_LENGTH]},
    )


def check_location(image: Image, location: Location, *, field: str, policy: LocationPolicy) -> None:
    """Refuse a location with a bad URL or metadata (INVALID_LOCATION)."""
    problem = url_problem(location.url, policy)
    if problem:
        raise _invalid_location(image, f"{field}.url", problem, location.url)
    problem = metadata_problem(location.metadata, f"{field}.metadata")
    if problem:
        raise _invalid_location(image, f"{field}.metadata", problem, location.url)


def check_validation_data_shape(data: ValidationData | None) -> None:
    """Glance's schema: given validation data needs os_hash_algo and os_hash_value."""
    if data is None:
        return
    missing = [name for name in ("os_hash_algo", "os_hash_value") if not getattr(data, name)]
    if missing:
        raise DomainError(
            Reason.INVALID_VALIDATION_DATA,
            f"validation_data needs {' and '.join(missing)}",
            field=f"validation_data.{missing[0]}",
        )


def validation_updates(
    image: Image, data: ValidationData | None, *, policy: LocationPolicy
) -> dict[str, str]:
    """The hash fields data would set on image, after Glance's checks.

    Values equal to the image's are ignored; a value that differs from one the
    image has, or any new value on an image that is not queued, is a conflict;
    then new values must be well-formed.
    """
    if data is None:
        return {}
    check_validation_data_shape(data)
    updates: dict[str, str] = {}
    for name in ("checksum", "os_hash_algo", "os_hash_value"):
        given = getattr(data, name)
        current = getattr(image, name)
        if not given or given == current:
            continue
        if current:
            raise _conflict(image, name, f"{name} is already set with a different value")
        updates[name] = given
    if updates and image.status is not ImageStatus.QUEUED:
        raise _conflict(
            image,
            next(iter(updates)),
            f"New value(s) for {', '.join(updates)} may only be provided when image "
            "status is 'queued'",
        )
    check_hashes(updates, policy=policy, image=image, field_prefix="validation_data.")
    return updates


def check_hashes(
    values: Mapping[str, str], *, policy: LocationPolicy, image: Image, field_prefix: str
) -> None:
    """Refuse a malformed checksum, algorithm or hash value (INVALID_VALIDATION_DATA)."""
    checksum = values.get("checksum", "")
    if checksum:
        _check_hex(image, checksum, name="checksum", size=16, algo="md5", field_prefix=field_prefix)
    algo = values.get("os_hash_algo", "") or image.os_hash_algo
    value = values.get("os_hash_value", "")
    if ("os_hash_algo" in values or value) and algo != policy.hashing_algorithm:
        raise _malformed(
            image,
            f"{field_prefix}os_hash_algo",
            f"os_hash_algo must be {policy.hashing_algorithm}, not {quoted(algo) or None}",
        )
    if value:
        size = hashlib.new(policy.hashing_algorithm).digest_size
        _check_hex(
            image,
            value,
            name="os_hash_value",
            size=size,
            algo=policy.hashing_algorithm,
            field_prefix=field_prefix,
        )


def _check_hex(
    image: Image, value: str, *, name: str, size: int, algo: str, field_prefix: str
) -> None:
    if not set(value) <= _HEX:
        raise _malformed(
            image,
            f"{field_prefix}{name}",
            f"{name} ({quoted(value)}) is not a valid hexadecimal value",
        )
    if len(value) != 2 * size:
        raise _malformed(
            image,
            f"{field_prefix}{name}",
            f"{name} ({quoted(value)}) is not the correct size for {algo} (should be {size} bytes)",
        )


def _conflict(image: Image, name: str, message: str) -> DomainError:
    return DomainError(
        Reason.VALIDATION_DATA_CONFLICT,
        message,
        image_id=image.id,
        image_status=image.status,
        field=f"validation_data.{name}",
    )


def _malformed(image: Image, field: str, message: str) -> DomainError:
    return DomainError(
        Reason.INVALID_VALIDATION_DATA,
        message,
        image_id=image.id,
        image_status=image.status,
        field=field,
    )
