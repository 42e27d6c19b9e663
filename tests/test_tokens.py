"""Bearer-token verification through its API: every refusal cause, keys, the cache, the CLI."""

from __future__ import annotations

import argparse
import base64
import http.server
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from imageloc.client import auth_commands
from imageloc.server.auth.tokens import (
    CAUSES,
    DEFAULT_IMPLIED_ROLES,
    MAX_TOKEN_BYTES,
    AuthConfigError,
    AuthenticationError,
    JwksFile,
    JwksUrl,
    TokenClaims,
    TokenVerifier,
    parse_implied_roles,
)

from signing import Issuer, b64url, compose, new_key, private_pem

NOW = 1_800_000_000.0


class Clock:
    """A clock the test moves by hand: time.time for the verifier, monotonic for key sources."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingKeys:
    """A key source that counts lookups, to tell a cache hit from a verification."""

    def __init__(self, inner: JwksFile) -> None:
        self.inner = inner
        self.lookups = 0

    def key(self, kid: str | None) -> Any | None:
        self.lookups += 1
        return self.inner.key(kid)

    @property
    def generation(self) -> int:
        return self.inner.generation


@pytest.fixture
def issuer(tmp_path: Path) -> Issuer:
    return Issuer.create(tmp_path)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def monotonic() -> Clock:
    return Clock(1000.0)


def verifier_for(issuer: Issuer, clock: Clock, **options: Any) -> TokenVerifier:
    keys = options.pop("keys", None) or JwksFile(str(issuer.jwks_file))
    return TokenVerifier(
        keys, issuer=issuer.issuer, audience=issuer.audience, clock=clock, **options
    )


def bearer(token: str) -> str:
    return f"Bearer {token}"


def refusal(verifier: TokenVerifier, authorization: str | None) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as caught:
        verifier.verify(authorization)
    return caught.value


# --- accepted tokens ---------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "EdDSA"])
def test_valid_token_gives_subject_project_roles_and_expiry(
    tmp_path: Path, clock: Clock, algorithm: str
) -> None:
    issuer = Issuer.create(tmp_path, algorithm=algorithm)
    verifier = verifier_for(issuer, clock)

    claims = verifier.verify(bearer(issuer.token(now=NOW, ttl=600, roles=["member"])))

    assert claims == TokenClaims(
        subject="u1", project_id="p1", roles=frozenset({"member", "reader"}), expires_at=NOW + 600
    )


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "BeArEr"])
def test_bearer_scheme_is_case_insensitive(issuer: Issuer, clock: Clock, scheme: str) -> None:
    verifier = verifier_for(issuer, clock)

    assert verifier.verify(f"{scheme} {issuer.token(now=NOW)}").subject == "u1"


def test_token_of_nearly_max_bytes_is_accepted(issuer: Issuer, clock: Clock) -> None:
    verifier = verifier_for(issuer, clock)
    pad = (MAX_TOKEN_BYTES - len(issuer.token(now=NOW))) * 3 // 4
    token = issuer.token(now=NOW, pad="x" * pad)
    while len(token) > MAX_TOKEN_BYTES:
        pad -= 1
        token = issuer.token(now=NOW, pad="x" * pad)

    assert MAX_TOKEN_BYTES - 16 <= len(token) <= MAX_TOKEN_BYTES
    assert verifier.verify(bearer(token)).subject == "u1"


# --- refusals, one cause at a time -------------------------------------------------------


@pytest.mark.parametrize("authorization", [None, "", "   "])
def test_no_authorization_is_missing(
    issuer: Issuer, clock: Clock, authorization: str | None
) -> None:
    assert refusal(verifier_for(issuer, clock), authorization).cause == "missing"


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer   ",
        "Token abc.def.ghi",
        "abc.def.ghi",
        "Bearer\xe9 x",
    ],
)
def test_authorization_that_is_not_bearer_token_is_malformed(
    issuer: Issuer, clock: Clock, authorization: str
) -> None:
    assert refusal(verifier_for(issuer, clock), authorization).cause == "malformed"


def test_token_over_max_bytes_is_malformed(issuer: Issuer, clock: Clock) -> None:
    token = issuer.token(now=NOW, pad="x" * MAX_TOKEN_BYTES)

    assert len(token) > MAX_TOKEN_BYTES
    assert refusal(verifier_for(issuer, clock), bearer(token)).cause == "malformed"


def test_non_ascii_token_is_malformed(issuer: Issuer, clock: Clock) -> None:
    assert refusal(verifier_for(issuer, clock), "Bearer ébc.déf.ghi").cause == "malformed"


@pytest.mark.parametrize(
    "token",
    [
        "abc",
        "a.b",
        "a.b.c",
        "!!!.@@@.###",
        f"{b64url(b'not json')}.{b64url(b'{}')}.",
        f"{b64url(b'[1, 2]')}.{b64url(b'{}')}.",
    ],
)
def test_undecodable_token_is_malformed(issuer: Issuer, clock: Clock, token: str) -> None:
    assert refusal(verifier_for(issuer, clock), bearer(token)).cause == "malformed"


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", b'"text"'])
def test_signed_payload_that_is_not_a_json_object_is_malformed(
    issuer: Issuer, clock: Clock, payload: bytes
) -> None:
    token = jwt.api_jws.encode(
        payload, issuer.signing_key, algorithm="RS256", headers={"kid": issuer.kid}
    )

    assert refusal(verifier_for(issuer, clock), bearer(token)).cause == "malformed"


def test_alg_none_is_unsupported_algorithm(issuer: Issuer, clock: Clock) -> None:
    token = issuer.unsigned_token(now=NOW)

    assert refusal(verifier_for(issuer, clock), bearer(token)).cause == "unsupported_algorithm"


def test_hs256_keyed_with_the_public_key_is_unsupported_algorithm(
    issuer: Issuer, clock: Clock
) -> None:
    token = issuer.hs256_with_public_key(now=NOW)

    assert refusal(verifier_for(issuer, clock), bearer(token)).cause == "unsupported_algorithm"


@pytest.mark.parametrize(
    "alg", ["none", "None", "NONE", "HS256", "HS384", "HS512", "RS384", "RS512", "PS256", "ES384"]
)
def test_every_algorithm_but_rs256_es256_eddsa_is_unsupported(
    issuer: Issuer, clock: Clock, alg: str
) -> None:
    token = compose(issuer.header({"alg": alg}), issuer.claims(now=NOW), b"signature")

    assert refusal(verifier_for(issuer, clock), bearer(token)).cause == "unsupported_algorithm"


def test_header_without_alg_is_unsupported_algorithm(issuer: Issuer, clock: Clock) -> None:
    token = compose({"kid": issuer.kid}, issuer.claims(now=NOW), b"signature")

    assert refusal(verifier_for(issuer, clock), bearer(token)).cause == "unsupported_algorithm"


def test_unsupported_algorithm_is_decided_before_any_key_lookup(
    issuer: Issuer, clock: Clock
) -> None:
    keys = CountingKeys(JwksFile(str(issuer.jwks_file)))
    verifier = verifier_for(issuer, clock, keys=keys)

    for token in (issuer.unsigned_token(now=NOW), issuer.hs256_with_public_key(now=NOW)):
        assert refusal(verifier, bearer(token)).cause == "unsupported_algorithm"

    assert keys.lookups == 0


@pytest.mark.parametrize("algorithm", ["ES256", "EdDSA"])
def test_alg_that_does_not_match_the_key_type_is_bad_signature(
    issuer: Issuer, clock: Clock, algorithm: str
) -> None:
    """An RSA kid with an ES256 or EdDSA header never reaches a verification with that key."""
    token = issuer.sign(
        new_key(algorithm), issuer.header({"alg": algorithm}), issuer.claims(now=NOW)
    )

    assert refusal(verifier_for(issuer, clock), bearer(token)).cause == "bad_signature"


def test_unknown_kid_is_unknown_key(issuer: Issuer, clock: Clock) -> None:
    token = issuer.token_with_unknown_kid(now=NOW)

    assert refusal(verifier_for(issuer, clock), bearer(token)).cause == "unknown_key"


def test_token_without_kid_is_accepted_when_the_set_has_one_key(
    issuer: Issuer, clock: Clock
) -> None:
    token = issuer.token(now=NOW, header={"kid": None})

    assert verifier_for(issuer, clock).verify(bearer(token)).subject == "u1"


def test_token_without_kid_is_unknown_key_when_the_set_has_several(
    issuer: Issuer, clock: Clock
) -> None:
    issuer.rotate(keep_old=True)
    token = issuer.token(now=NOW, header={"kid": None})

    assert refusal(verifier_for(issuer, clock), bearer(token)).cause == "unknown_key"


def test_non_string_kid_is_malformed(issuer: Issuer, clock: Clock) -> None:
    token = issuer.token(now=NOW, header={"kid": 7})

    assert refusal(verifier_for(issuer, clock), bearer(token)).cause == "malformed"


def test_token_signed_by_another_key_under_a_known_kid_is_bad_signature(
    issuer: Issuer, clock: Clock
) -> None:
    token = issuer.token_from_other_key(now=NOW)

    assert refusal(verifier_for(issuer, clock), bearer(token)).cause == "bad_signature"


def test_tampered_payload_is_bad_signature(issuer: Issuer, clock: Clock) -> None:
    header, _, signature = issuer.token(now=NOW).split(".")
    forged = b64url(json.dumps(issuer.claims(now=NOW, roles=["admin"])).encode())

    token = f"{header}.{forged}.{signature}"

    assert refusal(verifier_for(issuer, clock), bearer(token)).cause == "bad_signature"


@pytest.mark.parametrize("exp", [None, "tomorrow", True, [1], 10**400])
def test_missing_or_non_numeric_exp_is_malformed(issuer: Issuer, clock: Clock, exp: Any) -> None:
    token = issuer.token(now=NOW, exp=exp)

    assert refusal(verifier_for(issuer, clock), bearer(token)).cause == "malformed"


@pytest.mark.parametrize("exp", [float("nan"), float("inf")])
def test_non_finite_exp_is_malformed(issuer: Issuer, clock: Clock, exp: float) -> None:
    token = issuer.token(now=NOW, exp=exp)

    assert refusal(verifier_for(issuer, clock), bearer(token)).cause == "malformed"


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_non_numeric_nbf_or_iat_is_malformed(issuer: Issuer, clock: Clock, claim: str) -> None:
    claims: dict[str, Any] = {claim: "soon"}
    token = issuer.token(now=NOW, **claims)

    assert refusal(verifier_for(issuer, clock), bearer(token)).cause == "malformed"


def test_expiry_has_60_seconds_of_leeway(issuer: Issuer, clock: Clock) -> None:
    verifier = verifier_for(issuer, clock, cache_size=0)
    token = bearer(issuer.token(now=NOW - 3600, ttl=3600))

    clock.now = NOW + 59
    assert verifier.verify(token).subject == "u1"
    clock.now = NOW + 60
    assert refusal(verifier, token).cause == "expired"


def test_long_expired_token_is_expired(issuer: Issuer, clock: Clock) -> None:
    token = issuer.token(now=NOW - 86400, ttl=3600)

    assert refusal(verifier_for(issuer, clock), bearer(token)).cause == "expired"


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_nbf_and_iat_have_60_seconds_of_leeway(issuer: Issuer, clock: Clock, claim: str) -> None:
    verifier = verifier_for(issuer, clock, cache_size=0)

    at_leeway: dict[str, Any] = {claim: NOW + 60}
    beyond: dict[str, Any] = {claim: NOW + 61}
    soon, later = issuer.token(now=NOW, **at_leeway), issuer.token(now=NOW, **beyond)

    assert verifier.verify(bearer(soon)).subject == "u1"
    assert refusal(verifier, bearer(later)).cause == "not_yet_valid"


def test_leeway_is_configurable(issuer: Issuer, clock: Clock) -> None:
    verifier = verifier_for(issuer, clock, leeway=0)

    assert refusal(verifier, bearer(issuer.token(now=NOW - 10, ttl=10))).cause == "expired"
    assert refusal(verifier, bearer(issuer.token(now=NOW, nbf=NOW + 1))).cause == "not_yet_valid"


@pytest.mark.parametrize("iss", ["someone-else", None, 42])
def test_wrong_or_missing_issuer_is_wrong_issuer(issuer: Issuer, clock: Clock, iss: Any) -> None:
    token = issuer.token(now=NOW, iss=iss)

    assert refusal(verifier_for(issuer, clock), bearer(token)).cause == "wrong_issuer"


@pytest.mark.parametrize("aud", ["another-service", None, ["a", "b"], 42, ["imageloc-x"]])
def test_wrong_or_missing_audience_is_wrong_audience(
    issuer: Issuer, clock: Clock, aud: Any
) -> None:
    token = issuer.token(now=NOW, aud=aud)

    assert refusal(verifier_for(issuer, clock), bearer(token)).cause == "wrong_audience"


def test_audience_may_be_a_list_holding_ours(issuer: Issuer, clock: Clock) -> None:
    token = issuer.token(now=NOW, aud=["account", "imageloc"])

    assert verifier_for(issuer, clock).verify(bearer(token)).subject == "u1"


def test_every_cause_is_reachable_through_verify(issuer: Issuer, clock: Clock) -> None:
    verifier = verifier_for(issuer, clock)
    tokens = {
        "missing": None,
        "malformed": "Bearer abc",
        "expired": bearer(issuer.token(now=NOW - 7200)),
        "not_yet_valid": bearer(issuer.token(now=NOW + 7200)),
        "bad_signature": bearer(issuer.token_from_other_key(now=NOW)),
        "wrong_issuer": bearer(issuer.token(now=NOW, iss="x")),
        "wrong_audience": bearer(issuer.token(now=NOW, aud="x")),
        "unknown_key": bearer(issuer.token_with_unknown_kid(now=NOW)),
        "unsupported_algorithm": bearer(issuer.unsigned_token(now=NOW)),
    }

    assert {cause: refusal(verifier, auth).cause for cause, auth in tokens.items()} == {
        cause: cause for cause in CAUSES
    }


def test_refusal_messages_never_hold_any_part_of_the_token(issuer: Issuer, clock: Clock) -> None:
    verifier = verifier_for(issuer, clock)
    tokens = [
        issuer.token(now=NOW - 7200),
        issuer.token(now=NOW, iss="x"),
        issuer.token_from_other_key(now=NOW),
        issuer.token_with_unknown_kid(now=NOW),
        issuer.hs256_with_public_key(now=NOW),
        issuer.token(now=NOW, roles=7),
        "abcdefghijklmnop.qrstuvwxyz",
    ]
    for token in tokens:
        err = refusal(verifier, bearer(token))
        for part in token.split("."):
            if len(part) >= 8:
                assert part[:8] not in err.message
                assert part[:8] not in str(err)
                assert part[:8] not in repr(err)


def test_authentication_error_takes_only_known_causes() -> None:
    assert AuthenticationError("expired", "The token has expired.").cause == "expired"
    with pytest.raises(ValueError, match="cause"):
        AuthenticationError("bored", "no")


# --- claims ------------------------------------------------------------------------------


@pytest.mark.parametrize(("sub", "subject"), [(None, ""), ("alice", "alice")])
def test_sub_is_the_subject_and_may_be_missing(
    issuer: Issuer, clock: Clock, sub: str | None, subject: str
) -> None:
    token = issuer.token(now=NOW, sub=sub) if sub else issuer.token(now=NOW, sub=None)

    assert verifier_for(issuer, clock).verify(bearer(token)).subject == subject


@pytest.mark.parametrize(("claim", "value"), [("sub", 7), ("project_id", ["p1"])])
def test_non_string_sub_or_project_is_malformed(
    issuer: Issuer, clock: Clock, claim: str, value: Any
) -> None:
    token = issuer.token(now=NOW, **{claim: value})

    assert refusal(verifier_for(issuer, clock), bearer(token)).cause == "malformed"


def test_missing_project_is_empty(issuer: Issuer, clock: Clock) -> None:
    token = issuer.token(now=NOW, project_id=None)

    assert verifier_for(issuer, clock).verify(bearer(token)).project_id == ""


def test_project_and_roles_claims_may_be_dotted_paths(issuer: Issuer, clock: Clock) -> None:
    verifier = verifier_for(
        issuer, clock, project_claim="tenant.id", roles_claim="realm_access.roles"
    )
    token = issuer.token(
        now=NOW,
        project_id=None,
        roles=["ignored"],
        tenant={"id": "p9"},
        realm_access={"roles": ["reader", "offline_access"]},
    )

    claims = verifier.verify(bearer(token))

    assert (claims.project_id, claims.roles) == ("p9", frozenset({"reader", "offline_access"}))


def test_claim_name_holding_dots_is_found_as_a_name_first(issuer: Issuer, clock: Clock) -> None:
    verifier = verifier_for(issuer, clock, roles_claim="https://imageloc.example/roles")
    namespaced: dict[str, Any] = {"https://imageloc.example/roles": ["admin"]}
    token = issuer.token(now=NOW, **namespaced)

    assert "admin" in verifier.verify(bearer(token)).roles


def test_missing_dotted_path_gives_no_roles(issuer: Issuer, clock: Clock) -> None:
    verifier = verifier_for(issuer, clock, roles_claim="realm_access.roles")
    token = issuer.token(now=NOW, realm_access={"groups": ["admin"]})

    assert verifier.verify(bearer(token)).roles == frozenset()


def test_roles_may_be_a_comma_separated_string_and_are_lowercased(
    issuer: Issuer, clock: Clock
) -> None:
    verifier = verifier_for(issuer, clock, implied_roles={})
    token = issuer.token(now=NOW, roles="Member, READER,,service")

    assert verifier.verify(bearer(token)).roles == frozenset({"member", "reader", "service"})


@pytest.mark.parametrize("roles", [7, {"admin": True}, ["admin", 1], [["admin"]]])
def test_roles_that_are_not_strings_are_malformed(issuer: Issuer, clock: Clock, roles: Any) -> None:
    token = issuer.token(now=NOW, roles=roles)

    assert refusal(verifier_for(issuer, clock), bearer(token)).cause == "malformed"


@pytest.mark.parametrize(
    ("roles", "expanded"),
    [
        (["admin"], {"admin", "member", "reader"}),
        (["member"], {"member", "reader"}),
        (["reader"], {"reader"}),
        (["service"], {"service"}),
        ([], set()),
    ],
)
def test_default_implied_roles_follow_keystone(
    issuer: Issuer, clock: Clock, roles: list[str], expanded: set[str]
) -> None:
    token = issuer.token(now=NOW, roles=roles)

    assert verifier_for(issuer, clock).verify(bearer(token)).roles == expanded


def test_custom_implied_roles_replace_the_default(issuer: Issuer, clock: Clock) -> None:
    verifier = verifier_for(issuer, clock, implied_roles=parse_implied_roles("owner:editor"))

    assert verifier.verify(bearer(issuer.token(now=NOW, roles=["Owner"]))).roles == {
        "owner",
        "editor",
    }
    assert verifier.verify(bearer(issuer.token(now=NOW, roles=["admin"]))).roles == {"admin"}


def test_empty_implied_roles_turn_implication_off(issuer: Issuer, clock: Clock) -> None:
    verifier = verifier_for(issuer, clock, implied_roles=parse_implied_roles("  "))

    assert verifier.verify(bearer(issuer.token(now=NOW, roles=["admin"]))).roles == {"admin"}


def test_implied_roles_given_as_direct_links_are_expanded_transitively(
    issuer: Issuer, clock: Clock
) -> None:
    verifier = verifier_for(
        issuer, clock, implied_roles={"a": frozenset({"b"}), "b": frozenset({"c"})}
    )

    assert verifier.verify(bearer(issuer.token(now=NOW, roles=["a"]))).roles == {"a", "b", "c"}


def test_parse_implied_roles_is_transitive() -> None:
    assert parse_implied_roles(DEFAULT_IMPLIED_ROLES) == {
        "admin": frozenset({"member", "reader"}),
        "member": frozenset({"reader"}),
    }


def test_parse_implied_roles_trims_lowercases_and_merges() -> None:
    assert parse_implied_roles(" Admin : Member , admin:service,member:reader ") == {
        "admin": frozenset({"member", "service", "reader"}),
        "member": frozenset({"reader"}),
    }


def test_parse_implied_roles_tolerates_cycles() -> None:
    assert parse_implied_roles("a:b,b:a") == {"a": frozenset({"a", "b"}), "b": {"a", "b"}}


@pytest.mark.parametrize("text", ["", "   "])
def test_parse_implied_roles_of_blank_text_is_empty(text: str) -> None:
    assert parse_implied_roles(text) == {}


@pytest.mark.parametrize("text", ["admin", "admin:", ":member", "a:b:c", "a:b,,c:d", "a:b,"])
def test_parse_implied_roles_refuses_malformed_entries(text: str) -> None:
    with pytest.raises(AuthConfigError, match="implied-roles"):
        parse_implied_roles(text)


# --- the verified-token cache ------------------------------------------------------------


def test_cached_token_returns_the_same_claims_without_verifying_again(
    issuer: Issuer, clock: Clock
) -> None:
    keys = CountingKeys(JwksFile(str(issuer.jwks_file)))
    verifier = verifier_for(issuer, clock, keys=keys)
    token = bearer(issuer.token(now=NOW))

    first = verifier.verify(token)
    second = verifier.verify(token)

    assert second is first
    assert keys.lookups == 1


def test_cached_token_is_dropped_once_it_expires(issuer: Issuer, clock: Clock) -> None:
    verifier = verifier_for(issuer, clock)
    token = bearer(issuer.token(now=NOW, ttl=100))
    verifier.verify(token)

    clock.now = NOW + 100 + 60

    assert refusal(verifier, token).cause == "expired"


def test_cache_is_dropped_when_the_key_set_changes(
    issuer: Issuer, clock: Clock, monotonic: Clock
) -> None:
    keys = JwksFile(str(issuer.jwks_file), monotonic=monotonic)
    verifier = verifier_for(issuer, clock, keys=keys)
    token = bearer(issuer.token(now=NOW))
    verifier.verify(token)

    issuer.rotate(keep_old=False)
    monotonic.now += 0.5

    assert refusal(verifier, token).cause == "unknown_key"


def test_cache_is_bounded_and_evicts_the_oldest(issuer: Issuer, clock: Clock) -> None:
    keys = CountingKeys(JwksFile(str(issuer.jwks_file)))
    verifier = verifier_for(issuer, clock, keys=keys, cache_size=2)
    first, second, third = (bearer(issuer.token(now=NOW, sub=f"u{n}")) for n in range(3))
    for token in (first, second, third):
        verifier.verify(token)
    assert keys.lookups == 3

    verifier.verify(third)
    verifier.verify(second)
    assert keys.lookups == 3
    verifier.verify(first)
    assert keys.lookups == 4


def test_refused_tokens_are_not_cached(issuer: Issuer, clock: Clock) -> None:
    verifier = verifier_for(issuer, clock)
    token = bearer(issuer.token(now=NOW + 3600))

    assert refusal(verifier, token).cause == "not_yet_valid"
    clock.now = NOW + 3600
    assert verifier.verify(token).subject == "u1"


# --- JWKS files --------------------------------------------------------------------------


def test_jwks_file_picks_up_a_rotated_key_after_the_check_interval(
    issuer: Issuer, clock: Clock, monotonic: Clock
) -> None:
    verifier = verifier_for(
        issuer, clock, keys=JwksFile(str(issuer.jwks_file), monotonic=monotonic)
    )
    old = bearer(issuer.token(now=NOW))
    verifier.verify(old)

    issuer.rotate(keep_old=True)
    new = bearer(issuer.token(now=NOW))
    monotonic.now += 0.4
    assert refusal(verifier, new).cause == "unknown_key"

    monotonic.now += 0.1
    assert verifier.verify(new).subject == "u1"
    assert verifier.verify(old).subject == "u1"


def test_jwks_file_rotation_works_in_real_time(issuer: Issuer, clock: Clock) -> None:
    verifier = verifier_for(issuer, clock)
    issuer.rotate(keep_old=False)
    token = bearer(issuer.token(now=NOW))
    deadline, cause = time.monotonic() + 5, ""
    while time.monotonic() < deadline:
        try:
            claims = verifier.verify(token)
        except AuthenticationError as err:
            cause = err.cause
            time.sleep(0.1)
        else:
            assert claims.subject == "u1"
            break
    else:
        pytest.fail(f"the rotated key was never picked up: {cause}")


def test_jwks_file_keeps_its_keys_when_a_reread_fails(
    issuer: Issuer, clock: Clock, monotonic: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    keys = JwksFile(str(issuer.jwks_file), monotonic=monotonic)
    verifier = verifier_for(issuer, clock, keys=keys, cache_size=0)
    token = bearer(issuer.token(now=NOW))
    generation = keys.generation

    issuer.jwks_file.write_text("{ half a document")
    monotonic.now += 1
    with caplog.at_level(logging.WARNING):
        assert verifier.verify(token).subject == "u1"

    assert keys.generation == generation
    assert "keeping the JWKS in use" in caplog.text
    assert "not JSON" in caplog.text


def test_jwks_file_keeps_its_keys_while_the_file_is_gone(
    issuer: Issuer, clock: Clock, monotonic: Clock
) -> None:
    verifier = verifier_for(
        issuer, clock, keys=JwksFile(str(issuer.jwks_file), monotonic=monotonic)
    )
    token = bearer(issuer.token(now=NOW))

    issuer.jwks_file.unlink()
    monotonic.now += 1
    assert verifier.verify(token).subject == "u1"

    issuer.rotate(keep_old=False)
    monotonic.now += 1
    assert verifier.verify(bearer(issuer.token(now=NOW, sub="u2"))).subject == "u2"


def test_jwks_file_generation_is_unchanged_by_a_rewrite_with_the_same_keys(
    issuer: Issuer, monotonic: Clock
) -> None:
    keys = JwksFile(str(issuer.jwks_file), monotonic=monotonic)
    generation = keys.generation

    issuer.write_jwks()
    monotonic.now += 1

    assert keys.generation == generation


def test_jwks_file_skips_keys_it_may_not_use(issuer: Issuer, clock: Clock) -> None:
    good = issuer.jwks()["keys"][0]
    weak = auth_commands.public_jwk(new_key("RS256").public_key()) | {"kid": "enc", "use": "enc"}
    issuer.write_jwks(
        {
            "keys": [
                {"kty": "oct", "k": b64url(b"secret"), "kid": "hmac"},
                weak,
                good | {"kid": "mislabelled", "alg": "HS256"},
                "not an object",
                good,
            ]
        }
    )
    keys = JwksFile(str(issuer.jwks_file))

    assert keys.key("hmac") is None
    assert keys.key("enc") is None
    assert keys.key("mislabelled") is None
    assert keys.key(issuer.kid) is not None
    assert keys.key(None) is not None
    assert verifier_for(issuer, Clock(), keys=keys).verify(bearer(issuer.token(now=NOW)))


def test_jwks_holding_a_private_jwk_verifies_with_its_public_half(
    issuer: Issuer, clock: Clock
) -> None:
    assert isinstance(issuer.signing_key, rsa.RSAPrivateKey)
    private = jwt.algorithms.RSAAlgorithm.to_jwk(issuer.signing_key, as_dict=True)
    issuer.write_jwks({"keys": [private | {"kid": issuer.kid}]})

    assert verifier_for(issuer, clock).verify(bearer(issuer.token(now=NOW))).subject == "u1"


def small_rsa_jwks() -> dict[str, Any]:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    return {"keys": [jwt.algorithms.RSAAlgorithm.to_jwk(weak.public_key(), as_dict=True)]}


def p384_jwks() -> dict[str, Any]:
    key = ec.generate_private_key(ec.SECP384R1())
    return {"keys": [jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)]}


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{ not json", "not JSON"),
        ("[]", 'no "keys" list'),
        ('{"keys": {}}', 'no "keys" list'),
        ('{"keys": []}', "no usable signing key"),
        ('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "no usable signing key"),
        (json.dumps(small_rsa_jwks()), "no usable signing key"),
        (json.dumps(p384_jwks()), "no usable signing key"),
    ],
)
def test_jwks_file_without_usable_keys_is_a_config_error(
    tmp_path: Path, content: str, reason: str
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(content)

    with pytest.raises(AuthConfigError, match=reason) as caught:
        JwksFile(str(path))

    assert "\n" not in str(caught.value)


def test_missing_jwks_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(AuthConfigError, match="does not exist"):
        JwksFile(str(tmp_path / "absent.json"))


def test_unreadable_jwks_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(AuthConfigError, match="cannot read"):
        JwksFile(str(tmp_path))


# --- JWKS URLs ---------------------------------------------------------------------------


class JwksServer:
    """An HTTP server on 127.0.0.1:0 serving a JWKS document and counting its fetches."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.status = 200
        self.hits = 0
        served = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                served.hits += 1
                self.send_response(served.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(served.body)))
                self.end_headers()
                self.wfile.write(served.body)

            def log_message(self, format: str, *args: Any) -> None:
                del format, args

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"

    def serve(self, issuer: Issuer) -> None:
        self.body = issuer.jwks_file.read_bytes()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def jwks_server(issuer: Issuer) -> Iterator[JwksServer]:
    server = JwksServer(issuer.jwks_file.read_bytes())
    yield server
    server.close()


def test_jwks_url_is_fetched_at_start(
    issuer: Issuer, clock: Clock, jwks_server: JwksServer
) -> None:
    keys = JwksUrl(jwks_server.url)
    assert jwks_server.hits == 1

    verifier = verifier_for(issuer, clock, keys=keys, cache_size=0)
    for _ in range(3):
        verifier.verify(bearer(issuer.token(now=NOW)))

    assert jwks_server.hits == 1


def test_jwks_url_refetches_on_an_unknown_kid(
    issuer: Issuer, clock: Clock, monotonic: Clock, jwks_server: JwksServer
) -> None:
    keys = JwksUrl(jwks_server.url, min_refresh_seconds=30, monotonic=monotonic)
    verifier = verifier_for(issuer, clock, keys=keys)

    issuer.rotate(keep_old=True)
    jwks_server.serve(issuer)
    monotonic.now += 30

    assert verifier.verify(bearer(issuer.token(now=NOW))).subject == "u1"
    assert jwks_server.hits == 2


def test_jwks_url_refetches_at_most_once_per_min_refresh(
    issuer: Issuer, clock: Clock, monotonic: Clock, jwks_server: JwksServer
) -> None:
    keys = JwksUrl(jwks_server.url, min_refresh_seconds=30, monotonic=monotonic)
    verifier = verifier_for(issuer, clock, keys=keys)
    unknown = [bearer(issuer.token_with_unknown_kid(now=NOW)) for _ in range(5)]

    for token in unknown:
        assert refusal(verifier, token).cause == "unknown_key"
    assert jwks_server.hits == 1

    monotonic.now += 30
    for token in unknown:
        assert refusal(verifier, token).cause == "unknown_key"
    assert jwks_server.hits == 2


def test_jwks_url_keeps_its_keys_when_a_refetch_fails(
    issuer: Issuer, clock: Clock, monotonic: Clock, jwks_server: JwksServer
) -> None:
    keys = JwksUrl(jwks_server.url, min_refresh_seconds=0, monotonic=monotonic)
    verifier = verifier_for(issuer, clock, keys=keys, cache_size=0)
    token = bearer(issuer.token(now=NOW))

    jwks_server.status = 503
    assert refusal(verifier, bearer(issuer.token_with_unknown_kid(now=NOW))).cause == "unknown_key"
    jwks_server.body = b"garbage"
    jwks_server.status = 200
    assert refusal(verifier, bearer(issuer.token_with_unknown_kid(now=NOW))).cause == "unknown_key"

    assert jwks_server.hits == 3
    assert verifier.verify(token).subject == "u1"


def test_jwks_url_refetches_a_copy_older_than_max_age(
    issuer: Issuer, clock: Clock, monotonic: Clock, jwks_server: JwksServer
) -> None:
    keys = JwksUrl(jwks_server.url, max_age_seconds=300, monotonic=monotonic)
    verifier = verifier_for(issuer, clock, keys=keys)
    token = bearer(issuer.token(now=NOW))
    verifier.verify(token)

    issuer.rotate(keep_old=False)
    jwks_server.serve(issuer)
    monotonic.now += 299
    assert verifier.verify(token).subject == "u1"
    monotonic.now += 1

    assert refusal(verifier, token).cause == "unknown_key"
    assert jwks_server.hits == 2


def test_unreachable_jwks_url_is_a_config_error() -> None:
    with pytest.raises(AuthConfigError, match="cannot fetch the JWKS"):
        JwksUrl("http://127.0.0.1:9/jwks.json", timeout=1)


def test_jwks_url_answering_an_error_is_a_config_error(jwks_server: JwksServer) -> None:
    jwks_server.status = 404

    with pytest.raises(AuthConfigError, match="HTTP 404"):
        JwksUrl(jwks_server.url)


def test_jwks_url_serving_no_json_is_a_config_error(jwks_server: JwksServer) -> None:
    jwks_server.body = b"<html>login</html>"

    with pytest.raises(AuthConfigError, match="not JSON"):
        JwksUrl(jwks_server.url)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://idp/jwks", "jwks.json"])
def test_jwks_url_other_than_http_is_a_config_error(url: str) -> None:
    with pytest.raises(AuthConfigError, match="not http or https"):
        JwksUrl(url)


# --- imageloc auth dev-keys / dev-token --------------------------------------------------


def auth_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="imageloc")
    auth_commands.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    assert args.command in auth_commands.COMMANDS
    return auth_commands.run(args)


def test_dev_keys_writes_a_private_key_and_its_jwks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "keys"

    assert auth_cli("auth", "dev-keys", "--out", str(out)) == 0

    assert stat.S_IMODE(os.stat(out / "private.pem").st_mode) == 0o600
    (jwk,) = json.loads((out / "jwks.json").read_text())["keys"]
    assert (jwk["kty"], jwk["alg"], jwk["use"]) == ("RSA", "RS256", "sig")
    assert jwk["kid"]
    assert "d" not in jwk
    printed = capsys.readouterr().out
    assert str(out / "private.pem") in printed
    assert str(out / "jwks.json") in printed


def test_dev_keys_refuses_to_replace_a_key_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert auth_cli("auth", "dev-keys", "--out", str(tmp_path)) == 0
    pem = (tmp_path / "private.pem").read_bytes()

    assert auth_cli("auth", "dev-keys", "--out", str(tmp_path)) == 2
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "private.pem").read_bytes() == pem

    assert auth_cli("auth", "dev-keys", "--out", str(tmp_path), "--force") == 0
    assert (tmp_path / "private.pem").read_bytes() != pem


def test_dev_token_verifies_against_the_dev_keys_jwks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    auth_cli("auth", "dev-keys", "--out", str(tmp_path))
    capsys.readouterr()

    status = auth_cli(
        "auth", "dev-token", "--key", str(tmp_path / "private.pem"),
        "--project", "p7", "--roles", "member,reader", "--ttl", "30m",
    )  # fmt: skip
    token = capsys.readouterr().out.strip()

    assert status == 0
    verifier = TokenVerifier(
        JwksFile(str(tmp_path / "jwks.json")), issuer="imageloc-dev", audience="imageloc"
    )
    claims = verifier.verify(bearer(token))
    assert (claims.subject, claims.project_id) == ("dev-user", "p7")
    assert claims.roles == {"member", "reader"}
    payload = jwt.decode(token, options={"verify_signature": False})
    assert payload["exp"] - payload["iat"] == 1800
    assert payload["roles"] == ["member", "reader"]
    kid = json.loads((tmp_path / "jwks.json").read_text())["keys"][0]["kid"]
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "typ": "JWT", "kid": kid}


def test_dev_token_takes_subject_issuer_and_audience(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    auth_cli("auth", "dev-keys", "--out", str(tmp_path))
    auth_cli(
        "auth", "dev-token", "--key", str(tmp_path / "private.pem"), "--project", "p1",
        "--roles", "admin", "--sub", "alice", "--issuer", "corp-idp", "--audience", "images",
    )  # fmt: skip
    token = capsys.readouterr().out.strip().splitlines()[-1]

    verifier = TokenVerifier(
        JwksFile(str(tmp_path / "jwks.json")), issuer="corp-idp", audience="images"
    )
    claims = verifier.verify(bearer(token))
    assert (claims.subject, claims.roles) == ("alice", frozenset({"admin", "member", "reader"}))


@pytest.mark.parametrize(
    ("ttl", "seconds"), [("90s", 90), ("30m", 1800), ("1h", 3600), ("2d", 172800), ("120", 120)]
)
def test_ttl_takes_seconds_minutes_hours_days(ttl: str, seconds: float) -> None:
    assert auth_commands.parse_ttl(ttl) == seconds


@pytest.mark.parametrize("ttl", ["", "0", "-5m", "1w", "h", "1.5.h"])
def test_bad_ttl_is_a_usage_error(tmp_path: Path, ttl: str) -> None:
    with pytest.raises(SystemExit) as caught:
        auth_cli("auth", "dev-token", "--key", "k", "--project", "p", "--roles", "r", "--ttl", ttl)

    assert caught.value.code == 2


@pytest.mark.parametrize("content", [None, b"not a key", b""])
def test_dev_token_with_an_unusable_key_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None
) -> None:
    key = tmp_path / "private.pem"
    if content is not None:
        key.write_bytes(content)

    status = auth_cli("auth", "dev-token", "--key", str(key), "--project", "p", "--roles", "r")

    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error: ")
    assert err.count("\n") == 1
    assert str(key) in err


def test_dev_token_refuses_a_key_it_cannot_sign_with(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "p384.pem"
    key.write_bytes(private_pem(ec.generate_private_key(ec.SECP384R1())))

    assert auth_cli("auth", "dev-token", "--key", str(key), "--project", "p", "--roles", "r") == 2
    assert "not RSA, EC P-256 or Ed25519" in capsys.readouterr().err


@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "EdDSA"])
def test_kid_is_the_rfc7638_thumbprint_of_the_public_key(algorithm: str) -> None:
    key = new_key(algorithm)
    jwk = auth_commands.public_jwk(key.public_key())
    loaded = jwt.PyJWK(jwk).key

    assert auth_commands.kid_of(loaded) == auth_commands.kid_of(key.public_key()) == jwk["kid"]
    assert len(base64.urlsafe_b64decode(jwk["kid"] + "=")) == 32


def test_kid_matches_the_rfc7638_example() -> None:
    """RFC 7638 section 3.1's RSA key and its thumbprint."""
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B"
        "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_F"
        "DW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4v"
        "MQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    jwk = {"kty": "RSA", "n": n, "e": "AQAB"}

    kid = auth_commands.kid_of(jwt.PyJWK(jwk, algorithm="RS256").key)

    assert kid == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_sign_token_sets_now_and_extra_claims(issuer: Issuer, clock: Clock) -> None:
    token = auth_commands.sign_token(
        private_pem(issuer.signing_key),
        subject="svc",
        project_id="p2",
        roles=("Reader",),
        ttl_seconds=60,
        issuer=issuer.issuer,
        audience=issuer.audience,
        now=NOW,
        extra_claims={"aud": ["x", issuer.audience], "jti": "1"},
    )

    claims = verifier_for(issuer, clock).verify(bearer(token))

    assert claims == TokenClaims("svc", "p2", frozenset({"reader"}), NOW + 60)
