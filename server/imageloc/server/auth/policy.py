"""Glance 33's image policies on oslo.policy: its rule names, default check strings, overrides.

Imports oslo.policy and oslo.config (a private ConfigOpts: no global config, no /etc).
"""

from __future__ import annotations

import ast
import logging
import os
import re
from collections.abc import Hashable, Iterator, Mapping
from typing import Any

from oslo_config import cfg
from oslo_policy import _checks, _parser, policy

# Glance's check-string constants (glance/policies/base.py), exactly as oslo.policy gets them.
ADMIN = "rule:context_is_admin"
SERVICE = "rule:service_api"
ADMIN_OR_PROJECT_MEMBER = "rule:context_is_admin or (role:member and project_id:%(project_id)s)"
ADMIN_OR_PROJECT_READER = "rule:context_is_admin or (role:reader and project_id:%(project_id)s)"
_ANY_VISIBLE = (
    "(project_id:%(project_id)s or project_id:%(member_id)s or 'community':%(visibility)s"
    " or 'public':%(visibility)s or 'shared':%(visibility)s)"
)
ADMIN_OR_PROJECT_READER_GET_IMAGE = f"rule:context_is_admin or (role:reader and {_ANY_VISIBLE})"
ADMIN_OR_PROJECT_MEMBER_DOWNLOAD_IMAGE = (
    f"rule:context_is_admin or (role:member and {_ANY_VISIBLE})"
)
ADMIN_OR_PROJECT_MEMBER_CREATE_IMAGE = (
    "rule:context_is_admin or (role:member and project_id:%(project_id)s and project_id:%(owner)s)"
)
SERVICE_OR_PROJECT_MEMBER = (
    "rule:service_api or (role:member and project_id:%(project_id)s and project_id:%(owner)s)"
)
ADMIN_OR_SHARED_MEMBER = "rule:context_is_admin or (role:member and project_id:%(member_id)s)"
ADMIN_OR_PROJECT_READER_OR_SHARED_MEMBER = (
    "rule:context_is_admin or role:reader and (project_id:%(project_id)s"
    " or project_id:%(member_id)s)"
)

_PROJECT = ["project"]


def _image_rule(
    name: str, check_str: str, description: str, method: str, path: str
) -> policy.DocumentedRuleDefault:
    return policy.DocumentedRuleDefault(
        name=name,
        check_str=check_str,
        description=description,
        operations=[{"path": path, "method": method}],
        scope_types=_PROJECT,
    )


_IMAGE = "/v2/images/{image_id}"

#: Glance's base rules and image policies, by Glance 33's names and default check strings.
GLANCE_RULES: tuple[policy.RuleDefault, ...] = (
    policy.RuleDefault(
        name="context_is_admin", check_str="role:admin", description="Defines the admin role."
    ),
    policy.RuleDefault(
        name="service_api",
        check_str="role:service or role:admin",
        description="Default rule for the service-to-service APIs.",
    ),
    policy.RuleDefault(name="default", check_str="", description="Defines the default rule."),
    _image_rule("get_image", ADMIN_OR_PROJECT_READER_GET_IMAGE, "Get an image.", "GET", _IMAGE),
    _image_rule("get_images", ADMIN_OR_PROJECT_READER, "Get images.", "GET", "/v2/images"),
    _image_rule(
        "add_image", ADMIN_OR_PROJECT_MEMBER_CREATE_IMAGE, "Create new image.", "POST", "/v2/images"
    ),
    _image_rule("modify_image", ADMIN_OR_PROJECT_MEMBER, "Updates an image.", "PATCH", _IMAGE),
    _image_rule("publicize_image", ADMIN, "Publicize given image.", "PATCH", _IMAGE),
    _image_rule(
        "communitize_image", ADMIN_OR_PROJECT_MEMBER, "Communitize given image.", "PATCH", _IMAGE
    ),
    _image_rule("delete_image", ADMIN_OR_PROJECT_MEMBER, "Deletes the image.", "DELETE", _IMAGE),
    _image_rule(
        "upload_image", ADMIN_OR_PROJECT_MEMBER, "Upload data for image.", "PUT", f"{_IMAGE}/file"
    ),
    _image_rule(
        "download_image",
        ADMIN_OR_PROJECT_MEMBER_DOWNLOAD_IMAGE,
        "Downloads given image.",
        "GET",
        f"{_IMAGE}/file",
    ),
    _image_rule(
        "download_from_store",
        ADMIN_OR_PROJECT_MEMBER_DOWNLOAD_IMAGE,
        "Downloads given image from a preferred store.",
        "GET",
        f"{_IMAGE}/file",
    ),
    _image_rule(
        "deactivate",
        ADMIN_OR_PROJECT_MEMBER,
        "Deactivate image.",
        "POST",
        f"{_IMAGE}/actions/deactivate",
    ),
    _image_rule(
        "reactivate",
        ADMIN_OR_PROJECT_MEMBER,
        "Reactivate image.",
        "POST",
        f"{_IMAGE}/actions/reactivate",
    ),
    _image_rule(
        "set_image_location",
        ADMIN_OR_PROJECT_MEMBER,
        "Add or replace a location of an image.",
        "PATCH",
        _IMAGE,
    ),
    _image_rule(
        "delete_image_location", ADMIN, "Deletes the location of an image.", "PATCH", _IMAGE
    ),
    _image_rule(
        "get_image_location",
        ADMIN_OR_PROJECT_READER,
        "Get locations of an image.",
        "DELETE",
        "/v2/stores/{store_id}/{image_id}",
    ),
    _image_rule(
        "add_image_location",
        SERVICE_OR_PROJECT_MEMBER,
        "Add a location to an image (service API).",
        "POST",
        f"{_IMAGE}/locations",
    ),
    _image_rule(
        "fetch_image_location",
        SERVICE,
        "Show all locations of an image (service API).",
        "GET",
        f"{_IMAGE}/locations",
    ),
    _image_rule("copy_image", ADMIN, "Copy an existing image.", "POST", f"{_IMAGE}/import"),
    _image_rule(
        "add_member", ADMIN_OR_PROJECT_MEMBER, "Create image member.", "POST", f"{_IMAGE}/members"
    ),
    _image_rule(
        "delete_member",
        ADMIN_OR_PROJECT_MEMBER,
        "Delete image member.",
        "DELETE",
        f"{_IMAGE}/members/{{member_id}}",
    ),
    _image_rule(
        "get_member",
        ADMIN_OR_PROJECT_READER_OR_SHARED_MEMBER,
        "Show image member details.",
        "GET",
        f"{_IMAGE}/members/{{member_id}}",
    ),
    _image_rule(
        "get_members",
        ADMIN_OR_PROJECT_READER_OR_SHARED_MEMBER,
        "List image members.",
        "GET",
        f"{_IMAGE}/members",
    ),
    _image_rule(
        "modify_member",
        ADMIN_OR_SHARED_MEMBER,
        "Update image member.",
        "PUT",
        f"{_IMAGE}/members/{{member_id}}",
    ),
    _image_rule("manage_image_cache", ADMIN, "Manage the image cache.", "GET", "/v2/cache"),
    _image_rule(
        "list_cached_nodes", ADMIN, "List the nodes that cache an image.", "GET", "/v2/cache"
    ),
)

#: Results kept per policy before the cache starts over.
_CACHE_SIZE = 65_536
_MISSING = object()
_FORMAT_KEY = re.compile(r"%\(([^)]*)\)[#0 +-]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa]")
_YAML_MARK = re.compile(r"line \d+, column \d+")
#: The checks whose outcome depends on nothing but the credentials and target they read.
_PURE_CHECKS = (_checks.TrueCheck, _checks.FalseCheck, _checks.RoleCheck, _checks.GenericCheck)


class PolicyConfigError(Exception):
    """A policy file that does not load; the message is a one-line reason."""


class GlancePolicy:
    """Glance's policies, with an operator's policy file over them, evaluated by oslo.policy.

    oslo.policy's evaluation inspects every node's signature and parses literals per call
    (some 100 us a rule), so outcomes are cached: a check string built only of role,
    generic and rule checks depends on nothing but the credential and target fields it
    names, and those fields are the cache key. Other checks (http:, plugins) always run.
    """

    def __init__(self, enforcer: policy.Enforcer, *, file_rules: frozenset[str]) -> None:
        self._enforcer = enforcer
        self._file_rules = file_rules
        self._rules = {
            name: _Compiled.of(name, enforcer, scope_types=default.scope_types)
            for name, default in enforcer.registered_rules.items()
        }
        self._cache: dict[Hashable, bool] = {}

    @classmethod
    def load(cls, policy_file: str | None = None) -> GlancePolicy:
        """Glance's defaults, each overridden by policy_file (YAML or JSON) when given."""
        enforcer = policy.Enforcer(cfg.ConfigOpts(), use_conf=False)
        enforcer.register_defaults(GLANCE_RULES)
        overrides = _read_policy_file(policy_file) if policy_file else {}
        rules = policy.Rules(dict(overrides), default_rule=None)
        for name, default in enforcer.registered_rules.items():
            rules.setdefault(name, default.check)
        enforcer.set_rules(rules, overwrite=True, use_conf=False)
        for name in enforcer.registered_rules:
            problem = _reference_problem(enforcer, name, seen=())
            if problem:
                raise PolicyConfigError(f"policy file {policy_file}: {name!r} {problem}")
        return cls(enforcer, file_rules=frozenset(overrides))

    def unknown_rules(self) -> list[str]:
        """The rules the policy file sets that are not policies imageloc knows."""
        return sorted(self._file_rules - self._rules.keys())

    def refers_to(self, rule: str, *, base: str) -> bool:
        """Whether rule's check string grants through `rule:base` (not under a `not`)."""
        return base in self._compiled(rule).grants_via

    def allows(
        self, rule: str, *, credentials: Mapping[str, Any], target: Mapping[str, Any]
    ) -> bool:
        """Whether rule allows a caller with credentials on target; KeyError for no such rule."""
        compiled = self._compiled(rule)
        if compiled.scope_types and _token_scope(credentials) not in compiled.scope_types:
            return False
        key = compiled.key(credentials, target)
        if key is not None:
            cached = self._cache.get(key)
            if cached is not None:
                return cached
        result = bool(self._enforcer.enforce(rule, target, dict(credentials)))
        if key is not None:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = result
        return result

    def check_str(self, rule: str) -> str:
        """The check string in force for rule, as oslo.policy renders it."""
        self._compiled(rule)
        return str(self._enforcer.rules[rule])

    def _compiled(self, rule: str) -> _Compiled:
        try:
            return self._rules[rule]
        except KeyError:
            raise KeyError(f"{rule!r} is not a registered policy") from None


class _Compiled:
    """What one rule's outcome depends on, found by walking its check tree once."""

    __slots__ = ("cred_keys", "grants_via", "name", "scope_types", "target_keys")

    def __init__(
        self,
        name: str,
        *,
        scope_types: list[str] | None,
        cred_keys: tuple[str, ...] | None,
        target_keys: tuple[str, ...],
        grants_via: frozenset[str],
    ) -> None:
        self.name = name
        self.scope_types = frozenset(scope_types or ())
        self.cred_keys = cred_keys
        self.target_keys = target_keys
        self.grants_via = grants_via

    @classmethod
    def of(
        cls, name: str, enforcer: policy.Enforcer, *, scope_types: list[str] | None
    ) -> _Compiled:
        cred_keys: set[str] = set()
        target_keys: set[str] = set()
        pure = all(
            _read_fields(check, cred_keys=cred_keys, target_keys=target_keys)
            for check in _leaves(enforcer, enforcer.rules[name], seen=(name,))
        )
        return cls(
            name,
            scope_types=scope_types,
            cred_keys=tuple(sorted(cred_keys)) if pure else None,
            target_keys=tuple(sorted(target_keys)),
            grants_via=frozenset(_granting_rules(enforcer, enforcer.rules[name], seen=(name,))),
        )

    def key(self, credentials: Mapping[str, Any], target: Mapping[str, Any]) -> Hashable | None:
        """The cache key of this rule's outcome, or None when it must be evaluated."""
        if self.cred_keys is None:
            return None
        try:
            if isinstance(credentials, Credentials):
                creds = tuple(credentials.frozen(k) for k in self.cred_keys)
            else:
                creds = tuple(_freeze(credentials.get(k, _MISSING)) for k in self.cred_keys)
            return (
                self.name,
                creds,
                tuple(_freeze(target.get(k, _MISSING)) for k in self.target_keys),
            )
        except TypeError:
            return None


class Credentials(dict[str, Any]):
    """oslo.policy credentials that remember each field's cache-key form.

    One principal's credentials are asked of many rules in many calls; freezing its
    roles once instead of per rule is most of the cost of a cached answer. Do not
    change one after its first use.
    """

    __slots__ = ("_frozen",)
    _frozen: dict[str, Hashable]

    def frozen(self, key: str) -> Hashable:
        """The cache-key form of field key (TypeError when it has none)."""
        try:
            cache = self._frozen
        except AttributeError:
            cache = self._frozen = {}
        try:
            return cache[key]
        except KeyError:
            value = cache[key] = _freeze(self.get(key, _MISSING))
            return value


def _read_policy_file(path: str) -> dict[str, _checks.BaseCheck]:
    if not os.path.isfile(path):
        raise PolicyConfigError(f"policy file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as handle:
            data = handle.read()
    except (OSError, UnicodeDecodeError) as error:
        raise PolicyConfigError(f"policy file {path} cannot be read: {error}") from None
    try:
        parsed = policy.parse_file_contents(data)
    except ValueError as error:
        raise PolicyConfigError(
            f"policy file {path} does not parse: {_yaml_reason(error)}"
        ) from None
    if not isinstance(parsed, dict):
        raise PolicyConfigError(f"policy file {path} is not a mapping of rule names to rules")
    for name, check_str in parsed.items():
        if not isinstance(name, str) or not isinstance(check_str, str):
            raise PolicyConfigError(f"policy file {path}: {name!r} is not a check string")
    rules: dict[str, _checks.BaseCheck] = {}
    for name, check_str in parsed.items():
        with _ParserErrors() as errors:
            rules[name] = _parser.parse_rule(check_str)
        if errors.messages:
            shown = " ".join(check_str.split())
            raise PolicyConfigError(
                f"policy file {path}: {name!r} is not a valid check string: {shown!r}"
            )
    return rules


def _yaml_reason(error: ValueError) -> str:
    """PyYAML's several-line message as one line: its first line and where it happened."""
    text = str(error)
    reason = text.splitlines()[0] if text else "invalid YAML"
    where = _YAML_MARK.search(text)
    return f"{reason} ({where.group(0)})" if where else reason


class _ParserErrors(logging.Handler):
    """oslo.policy logs a check string it cannot parse and fails it closed; this hears it."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []
        self._logger = logging.getLogger("oslo_policy._parser")

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> _ParserErrors:
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)


def _reference_problem(enforcer: policy.Enforcer, name: str, *, seen: tuple[str, ...]) -> str:
    """Why a rule imageloc uses cannot be trusted: a `rule:` to nothing, or a cycle.

    oslo.policy would answer such a reference with its default rule, which may allow all.
    """
    for check in _walk(enforcer.rules[name]):
        if isinstance(check, policy.RuleCheck):
            if check.match in seen or check.match == name:
                return f"is part of a cyclical reference through {check.match!r}"
            if check.match not in enforcer.rules:
                return f"refers to {check.match!r}, which is not defined"
            problem = _reference_problem(enforcer, check.match, seen=(*seen, name))
            if problem:
                return f"through {check.match!r} {problem}"
    return ""


def _walk(check: _checks.BaseCheck) -> Iterator[_checks.BaseCheck]:
    yield check
    if isinstance(check, policy.AndCheck | policy.OrCheck):
        for child in check.rules:
            yield from _walk(child)
    elif isinstance(check, policy.NotCheck):
        yield from _walk(check.rule)


def _leaves(
    enforcer: policy.Enforcer, check: _checks.BaseCheck, *, seen: tuple[str, ...]
) -> Iterator[_checks.BaseCheck]:
    """The non-boolean checks a rule evaluates, following `rule:` references."""
    for node in _walk(check):
        if isinstance(node, policy.RuleCheck):
            if node.match not in seen and node.match in enforcer.rules:
                yield from _leaves(enforcer, enforcer.rules[node.match], seen=(*seen, node.match))
        elif not isinstance(node, policy.AndCheck | policy.OrCheck | policy.NotCheck):
            yield node


def _granting_rules(
    enforcer: policy.Enforcer, check: _checks.BaseCheck, *, seen: tuple[str, ...]
) -> Iterator[str]:
    """The rules a check can pass through: its `rule:` references outside any `not`."""
    if isinstance(check, policy.AndCheck | policy.OrCheck):
        for child in check.rules:
            yield from _granting_rules(enforcer, child, seen=seen)
    elif isinstance(check, policy.RuleCheck) and check.match not in seen:
        yield check.match
        if check.match in enforcer.rules:
            nested = enforcer.rules[check.match]
            yield from _granting_rules(enforcer, nested, seen=(*seen, check.match))


def _read_fields(check: _checks.BaseCheck, *, cred_keys: set[str], target_keys: set[str]) -> bool:
    """Note the fields a pure check reads; False for a check whose outcome may vary."""
    if type(check) not in _PURE_CHECKS:
        return False
    if isinstance(check, _checks.TrueCheck | _checks.FalseCheck):
        return True
    assert isinstance(check, policy.Check)
    keys = _FORMAT_KEY.findall(check.match)
    if "%" in _FORMAT_KEY.sub("", check.match).replace("%%", ""):
        return False
    target_keys.update(keys)
    if isinstance(check, _checks.RoleCheck):
        cred_keys.add("roles")
    elif not _is_literal(check.kind):
        cred_keys.add(check.kind.split(".")[0])
    return True


def _is_literal(kind: str) -> bool:
    try:
        ast.literal_eval(kind)
    except (ValueError, SyntaxError):
        return False
    return True


def _freeze(value: Any) -> Hashable:
    """value as a cache key that two values share only if every check reads them alike.

    Checks render values with `str()` and compare strings, so equal values of different
    types (1, 1.0 and True; a str-mixin enum and its value) must not share a key: the
    type is part of it. Sequences and mappings keep their order (it shows in `str()`);
    sets are keyed as sets (roles). A value of any other type raises TypeError, so its
    rule is evaluated rather than cached.
    """
    if type(value) is str:  # the common case; no other type's key is a bare str
        return value
    if value is _MISSING or value is None:
        return value
    if isinstance(value, str | int | float):
        return (type(value), value)
    if isinstance(value, list | tuple):
        return (type(value), tuple(_freeze(item) for item in value))
    if isinstance(value, set | frozenset):
        return (type(value), frozenset(_freeze(item) for item in value))
    if isinstance(value, Mapping):
        return (type(value), tuple((_freeze(k), _freeze(v)) for k, v in value.items()))
    raise TypeError(f"no cache key for a {type(value).__name__}")


def _token_scope(credentials: Mapping[str, Any]) -> str:
    """The token's scope as oslo.policy's scope check reads it."""
    if credentials.get("system") or credentials.get("system_scope"):
        return "system"
    if credentials.get("domain_id"):
        return "domain"
    return "project"


__all__ = ["GLANCE_RULES", "Credentials", "GlancePolicy", "PolicyConfigError"]
