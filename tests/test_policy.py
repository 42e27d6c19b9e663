"""Glance 33's policies on oslo.policy (auth.policy) and the CallerAccess on them (auth.access)."""

from __future__ import annotations

import datetime
import json
import pathlib
from collections.abc import Callable
from typing import Any

import pytest
from oslo_policy import _external, _parser

from imageloc.server.auth.access import PolicyAccess, no_auth_principal
from imageloc.server.auth.policy import GLANCE_RULES, Credentials, GlancePolicy, PolicyConfigError
from imageloc.server.domain.access import CallerAccess, ListScope, Principal
from imageloc.server.domain.errors import DomainError, Reason
from imageloc.server.domain.model import Image, ImageStatus, Visibility

# ---------------------------------------------------------------------------------------------
# Glance 33's default check strings, copied from glance-policies.md §1 and §2 (not from the
# module under test), as Glance's TestDefaultPolicyCheckStrings pins them.

_ANY_VISIBLE = (
    "(project_id:%(project_id)s or project_id:%(member_id)s or 'community':%(visibility)s"
    " or 'public':%(visibility)s or 'shared':%(visibility)s)"
)
REFERENCE_CHECK_STRINGS = {
    "context_is_admin": "role:admin",
    "service_api": "role:service or role:admin",
    "default": "",
    "get_image": f"rule:context_is_admin or (role:reader and {_ANY_VISIBLE})",
    "get_images": "rule:context_is_admin or (role:reader and project_id:%(project_id)s)",
    "add_image": (
        "rule:context_is_admin or (role:member and project_id:%(project_id)s"
        " and project_id:%(owner)s)"
    ),
    "modify_image": "rule:context_is_admin or (role:member and project_id:%(project_id)s)",
    "publicize_image": "rule:context_is_admin",
    "communitize_image": "rule:context_is_admin or (role:member and project_id:%(project_id)s)",
    "delete_image": "rule:context_is_admin or (role:member and project_id:%(project_id)s)",
    "upload_image": "rule:context_is_admin or (role:member and project_id:%(project_id)s)",
    "deactivate": "rule:context_is_admin or (role:member and project_id:%(project_id)s)",
    "reactivate": "rule:context_is_admin or (role:member and project_id:%(project_id)s)",
    "set_image_location": "rule:context_is_admin or (role:member and project_id:%(project_id)s)",
    "delete_image_location": "rule:context_is_admin",
    "get_image_location": "rule:context_is_admin or (role:reader and project_id:%(project_id)s)",
    "add_image_location": (
        "rule:service_api or (role:member and project_id:%(project_id)s and project_id:%(owner)s)"
    ),
    "fetch_image_location": "rule:service_api",
}
BASE_RULES = ("context_is_admin", "service_api", "default")
IMAGE_POLICIES = sorted(rule.name for rule in GLANCE_RULES if rule.name not in BASE_RULES)
#: The image policies whose check string grants through context_is_admin.
ADMIN_POLICIES = sorted(
    name
    for name in IMAGE_POLICIES
    if name not in ("add_image_location", "fetch_image_location")  # through service_api
)


@pytest.fixture(scope="module")
def glance() -> GlancePolicy:
    """Glance's defaults, no policy file: shared, so its cache outlives single tests."""
    return GlancePolicy.load()


PolicyFile = Callable[..., str]


@pytest.fixture
def policy_file(tmp_path: pathlib.Path) -> PolicyFile:
    """Write a policy file's text (YAML unless suffix says otherwise) and return its path."""

    def write(text: str, suffix: str = ".yaml") -> str:
        path = tmp_path / f"policy{suffix}"
        path.write_text(text, encoding="utf-8")
        return str(path)

    return write


def creds(*roles: str, project: str = "p1", **extra: Any) -> dict[str, Any]:
    """oslo.policy credentials of a project-scoped token (no project_id key for no project)."""
    credentials: dict[str, Any] = {"roles": list(roles), **extra}
    if project:
        credentials["project_id"] = project
    return credentials


def target(owner: str | None = "p1", visibility: str = "private") -> dict[str, Any]:
    """Glance's ImageTarget of an image: project_id is the owner; no image members."""
    return {"project_id": owner, "owner": owner, "member_id": None, "visibility": visibility}


# ---------------------------------------------------------------------------------------------
# Default check strings


@pytest.mark.parametrize(("rule", "check_str"), sorted(REFERENCE_CHECK_STRINGS.items()))
def test_default_check_string_is_glance_33s(rule: str, check_str: str) -> None:
    registered = {default.name: default.check_str for default in GLANCE_RULES}
    assert registered[rule] == check_str


@pytest.mark.parametrize(("rule", "check_str"), sorted(REFERENCE_CHECK_STRINGS.items()))
def test_check_string_in_force_without_a_policy_file_is_the_default(
    glance: GlancePolicy, rule: str, check_str: str
) -> None:
    assert glance.check_str(rule) == str(_parser.parse_rule(check_str))


def test_every_image_policy_is_project_scoped_and_base_rules_are_not() -> None:
    scopes = {default.name: default.scope_types for default in GLANCE_RULES}
    assert {name: scopes[name] for name in IMAGE_POLICIES} == {
        name: ["project"] for name in IMAGE_POLICIES
    }
    assert [scopes[name] for name in BASE_RULES] == [None, None, None]


def test_a_rule_imageloc_does_not_know_is_a_key_error(glance: GlancePolicy) -> None:
    with pytest.raises(KeyError, match="not a registered policy"):
        glance.allows("get_image_locations", credentials=creds("admin"), target={})
    with pytest.raises(KeyError):
        glance.check_str("get_image_locations")
    with pytest.raises(KeyError):
        glance.refers_to("get_image_locations", base="context_is_admin")


# ---------------------------------------------------------------------------------------------
# allows(): the personas


@pytest.mark.parametrize("rule", ADMIN_POLICIES)
def test_an_admin_of_any_project_passes_every_admin_rule_on_another_projects_image(
    glance: GlancePolicy, rule: str
) -> None:
    admin = creds("admin", project="elsewhere")
    assert glance.allows(rule, credentials=admin, target=target(owner="p1"))


@pytest.mark.parametrize(
    ("rule", "member_of_owner", "reader_of_owner", "member_elsewhere"),
    [
        ("get_image", True, True, False),
        ("get_image_location", True, True, False),
        ("delete_image", True, False, False),
        ("upload_image", True, False, False),
        ("deactivate", True, False, False),
        ("reactivate", True, False, False),
        ("set_image_location", True, False, False),
        ("communitize_image", True, False, False),
        ("add_image_location", True, False, False),
        ("publicize_image", False, False, False),
        ("delete_image_location", False, False, False),
        ("fetch_image_location", False, False, False),
    ],
)
def test_members_and_readers_of_the_owners_project_pass_what_glance_grants_them(
    glance: GlancePolicy,
    rule: str,
    member_of_owner: bool,
    reader_of_owner: bool,
    member_elsewhere: bool,
) -> None:
    private = target(owner="p1")
    assert glance.allows(rule, credentials=creds("member", "reader"), target=private) is (
        member_of_owner
    )
    assert glance.allows(rule, credentials=creds("reader"), target=private) is reader_of_owner
    elsewhere = creds("member", "reader", project="p2")
    assert glance.allows(rule, credentials=elsewhere, target=private) is member_elsewhere


@pytest.mark.parametrize("visibility", ["public", "community", "shared"])
def test_any_project_scoped_reader_passes_get_image_of_a_visible_image(
    glance: GlancePolicy, visibility: str
) -> None:
    stranger = creds("reader", project="p2")
    assert glance.allows("get_image", credentials=stranger, target=target(visibility=visibility))


def test_get_images_reduces_to_admin_or_any_reader_of_its_own_project(
    glance: GlancePolicy,
) -> None:
    assert glance.allows("get_images", credentials=creds("reader"), target={"project_id": "p1"})
    assert not glance.allows("get_images", credentials=creds("member"), target={"project_id": "p1"})


def test_a_member_without_the_reader_role_fails_get_image_of_its_own_image(
    glance: GlancePolicy,
) -> None:
    assert not glance.allows("get_image", credentials=creds("member"), target=target())
    assert glance.allows("delete_image", credentials=creds("member"), target=target())


def test_an_unowned_image_passes_no_project_check(glance: GlancePolicy) -> None:
    unowned = target(owner=None)
    assert not glance.allows("get_image", credentials=creds("reader"), target=unowned)
    no_project = creds("member", "reader", project="")
    assert not glance.allows("get_image_location", credentials=no_project, target=unowned)


def test_the_service_role_passes_the_service_rules_without_a_project(
    glance: GlancePolicy,
) -> None:
    service = creds("service", project="")
    for rule in ("service_api", "add_image_location", "fetch_image_location"):
        assert glance.allows(rule, credentials=service, target=target(owner="p9"))
    assert not glance.allows("get_image", credentials=service, target=target(owner="p9"))
    assert not glance.allows("context_is_admin", credentials=service, target={})


@pytest.mark.parametrize(
    "scope", [{"system_scope": "all"}, {"system": "all"}, {"domain_id": "default"}]
)
def test_a_system_or_domain_scoped_token_fails_every_image_policy(
    glance: GlancePolicy, scope: dict[str, str]
) -> None:
    admin = creds("admin", "member", "reader", "service", **scope)
    assert [
        rule for rule in IMAGE_POLICIES if glance.allows(rule, credentials=admin, target=target())
    ] == []
    # Glance's is_admin still holds: context_is_admin has no scope types.
    assert glance.allows("context_is_admin", credentials=admin, target={})


# ---------------------------------------------------------------------------------------------
# allows(): the outcome cache


def test_the_cache_answers_the_same_rule_for_two_owners_apart() -> None:
    policy = GlancePolicy.load()
    reader = creds("reader")
    answers = [
        policy.allows("get_image_location", credentials=reader, target=target(owner=owner))
        for owner in ("p1", "p2", "p1", "p2")
    ]
    assert answers == [True, False, True, False]


def test_the_cache_answers_two_callers_on_one_image_apart() -> None:
    policy = GlancePolicy.load()
    image = target(owner="p1")
    answers = [
        policy.allows("delete_image", credentials=creds("member", project=project), target=image)
        for project in ("p1", "p2", "p1", "p2")
    ]
    assert answers == [True, False, True, False]
    by_roles = [
        policy.allows("delete_image", credentials=creds(*roles), target=image)
        for roles in (("member",), ("reader",), ("member",), ())
    ]
    assert by_roles == [True, False, True, False]


@pytest.mark.parametrize("rule", ["get_image", "delete_image", "get_image_location", "add_image"])
def test_credentials_that_remember_their_keys_answer_as_a_plain_dict(rule: str) -> None:
    policy = GlancePolicy.load()
    for roles, project in ((("member", "reader"), "p1"), (("reader",), "p2"), (("admin",), "")):
        plain = creds(*roles, project=project)
        remembered = Credentials(plain)
        for owner in ("p1", "p2", ""):
            image = target(owner=owner)
            expected = GlancePolicy.load().allows(rule, credentials=plain, target=image)
            for _ in range(2):  # the second answer comes from the cache
                assert policy.allows(rule, credentials=remembered, target=image) is expected


def test_the_cache_follows_a_negated_role(policy_file: PolicyFile) -> None:
    policy = GlancePolicy.load(policy_file('"get_image": "not role:reader"\n'))
    answers = [
        policy.allows("get_image", credentials=creds(*roles), target=target())
        for roles in (("member",), ("reader",), ("member",), ("reader", "member"))
    ]
    assert answers == [True, False, True, False]


@pytest.mark.parametrize(("check_str", "allowed"), [("@", True), ("!", False)])
def test_always_and_never_overrides_answer_everyone_alike(
    policy_file: PolicyFile, check_str: str, allowed: bool
) -> None:
    policy = GlancePolicy.load(policy_file(f'"get_image": "{check_str}"\n'))
    for credentials in (creds("admin"), creds(), creds("reader", project="p2")):
        assert policy.allows("get_image", credentials=credentials, target=target()) is allowed


def test_an_http_check_is_asked_on_every_call(
    policy_file: PolicyFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = iter([True, False, True])
    asked: list[dict[str, Any]] = []

    def ask(self: Any, target: Any, creds: Any, enforcer: Any, current_rule: Any = None) -> bool:
        asked.append(dict(target))
        return next(answers)

    monkeypatch.setattr(_external.HttpCheck, "__call__", ask)
    policy = GlancePolicy.load(policy_file('"get_image": "http://policy.example/check"\n'))
    results = [
        policy.allows("get_image", credentials=creds("reader"), target=target()) for _ in range(3)
    ]
    assert results == [True, False, True]
    assert len(asked) == 3


class Stage:
    """A target value whose rendering changes while it stays the same object."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __str__(self) -> str:
        return self.name


def test_a_target_value_the_cache_cannot_key_on_is_evaluated_each_time(
    policy_file: PolicyFile,
) -> None:
    policy = GlancePolicy.load(policy_file('"get_image": "\'ready\':%(stage)s"\n'))
    stage = Stage("ready")
    first = policy.allows("get_image", credentials=creds(), target={"stage": stage})
    stage.name = "waiting"
    second = policy.allows("get_image", credentials=creds(), target={"stage": stage})
    assert (first, second) == (True, False)


def test_equal_values_that_render_differently_are_not_confused_by_the_cache(
    policy_file: PolicyFile,
) -> None:
    policy = GlancePolicy.load(policy_file('"delete_image": "\'True\':%(protected)s"\n'))
    answers = [
        policy.allows("delete_image", credentials=creds(), target={"protected": value})
        for value in (1, True, 1.0, True)
    ]
    assert answers == [False, True, False, True]


# ---------------------------------------------------------------------------------------------
# Policy files


def test_a_yaml_policy_file_overrides_a_rule(policy_file: PolicyFile) -> None:
    policy = GlancePolicy.load(
        policy_file('"delete_image_location": "rule:context_is_admin or role:member"\n')
    )
    member = creds("member", project="p2")
    assert policy.allows("delete_image_location", credentials=member, target=target())
    assert policy.check_str("delete_image_location") == "(rule:context_is_admin or role:member)"
    assert policy.check_str("delete_image") == str(
        _parser.parse_rule(REFERENCE_CHECK_STRINGS["delete_image"])
    )


def test_a_json_policy_file_overrides_a_rule(policy_file: PolicyFile) -> None:
    path = policy_file(json.dumps({"publicize_image": "role:member"}), suffix=".json")
    policy = GlancePolicy.load(path)
    assert policy.allows("publicize_image", credentials=creds("member"), target=target())
    assert not policy.allows("publicize_image", credentials=creds("admin"), target=target())


def test_overriding_context_is_admin_changes_every_rule_through_it(
    policy_file: PolicyFile,
) -> None:
    policy = GlancePolicy.load(policy_file('"context_is_admin": "role:superuser"\n'))
    superuser = creds("superuser", project="elsewhere")
    admin = creds("admin", project="elsewhere")
    through_admin = [
        rule for rule in IMAGE_POLICIES if policy.refers_to(rule, base="context_is_admin")
    ]
    assert through_admin == ADMIN_POLICIES
    for rule in through_admin:
        assert policy.allows(rule, credentials=superuser, target=target()), rule
        assert not policy.allows(rule, credentials=admin, target=target()), rule
    # service_api keeps Glance's `role:admin` of its own.
    assert policy.allows("fetch_image_location", credentials=admin, target=target())


def test_a_file_rule_may_be_referred_to_and_is_listed_as_unknown(
    policy_file: PolicyFile,
) -> None:
    policy = GlancePolicy.load(
        policy_file('"image_auditor": "role:auditor"\n"get_image": "rule:image_auditor"\n')
    )
    assert policy.allows("get_image", credentials=creds("auditor"), target=target())
    assert policy.refers_to("get_image", base="image_auditor")
    assert policy.unknown_rules() == ["image_auditor"]


def test_unknown_rules_lists_names_imageloc_does_not_know(
    glance: GlancePolicy, policy_file: PolicyFile
) -> None:
    policy = GlancePolicy.load(
        policy_file('"get_image_locations": "role:admin"\n"get_image": "role:reader"\n')
    )
    assert policy.unknown_rules() == ["get_image_locations"]
    assert glance.unknown_rules() == []


def test_an_empty_policy_file_keeps_every_default(policy_file: PolicyFile) -> None:
    policy = GlancePolicy.load(policy_file(""))
    assert policy.unknown_rules() == []
    assert policy.check_str("publicize_image") == "rule:context_is_admin"


@pytest.mark.parametrize(
    ("rule", "base", "refers"),
    [
        ("add_image_location", "service_api", True),
        ("fetch_image_location", "service_api", True),
        ("get_image", "service_api", False),
        ("publicize_image", "context_is_admin", True),
        ("add_image_location", "context_is_admin", False),
    ],
)
def test_refers_to_names_the_rules_a_default_grants_through(
    glance: GlancePolicy, rule: str, base: str, refers: bool
) -> None:
    assert glance.refers_to(rule, base=base) is refers


def test_a_reference_under_not_grants_nothing(policy_file: PolicyFile) -> None:
    policy = GlancePolicy.load(
        policy_file('"add_image_location": "role:member and not rule:service_api"\n')
    )
    assert not policy.refers_to("add_image_location", base="service_api")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("get_image: [role:admin\n", "does not parse: while parsing a flow sequence (line 1,"),
        ("- role:admin\n", "is not a mapping of rule names to rules"),
        ("get_image: 3\n", "'get_image' is not a check string"),
        ("get_image:\n", "'get_image' is not a check string"),
        ("get_image: [[role:admin]]\n", "'get_image' is not a check string"),
        (
            'get_image: "role:admin and ("\n',
            "'get_image' is not a valid check string: 'role:admin and ('",
        ),
        ('get_image: "role"\n', "'get_image' is not a valid check string: 'role'"),
        (
            "get_image: |\n  role:admin or\n  (role:reader\n",
            "'get_image' is not a valid check string: 'role:admin or (role:reader'",
        ),
        (
            'get_image: "rule:context_is_admn"\n',
            "'get_image' refers to 'context_is_admn', which is not defined",
        ),
        (
            'get_image: "rule:get_image"\n',
            "'get_image' is part of a cyclical reference through 'get_image'",
        ),
        (
            '"context_is_admin": "rule:publicize_image"\n',
            "'context_is_admin' through 'publicize_image' is part of a cyclical reference",
        ),
        (
            '"get_image": "rule:a"\n"a": "rule:b"\n"b": "role:reader or rule:a"\n',
            "'get_image' through 'a' through 'b' is part of a cyclical reference through 'a'",
        ),
    ],
)
def test_a_policy_file_that_does_not_load_is_refused_with_a_one_line_reason(
    policy_file: PolicyFile, text: str, reason: str
) -> None:
    path = policy_file(text)
    with pytest.raises(PolicyConfigError) as refused:
        GlancePolicy.load(path)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"policy file {path}")
    assert reason in message


def test_a_missing_policy_file_is_refused_with_its_path(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(PolicyConfigError) as refused:
        GlancePolicy.load(str(path))
    assert str(refused.value) == f"policy file {path} does not exist"


def test_a_policy_file_that_is_not_utf8_is_refused_with_its_path(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b'"get_image": "role:caf\xe9"\n')
    with pytest.raises(PolicyConfigError) as refused:
        GlancePolicy.load(str(path))
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"policy file {path} cannot be read: ")


# ---------------------------------------------------------------------------------------------
# PolicyAccess

ADMIN = Principal(user_id="ada", project_id="admins", roles=frozenset({"admin", "reader"}))
MEMBER = Principal(user_id="alice", project_id="p1", roles=frozenset({"member", "reader"}))
READER = Principal(user_id="rita", project_id="p1", roles=frozenset({"reader"}))
STRANGER = Principal(user_id="bob", project_id="p2", roles=frozenset({"member", "reader"}))
SERVICE = Principal(user_id="nova", roles=frozenset({"service"}))
MEMBER_WITHOUT_READER = Principal(user_id="max", project_id="p1", roles=frozenset({"member"}))
NO_PROJECT = Principal(user_id="nemo", roles=frozenset({"member", "reader"}))

_EPOCH = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def image(
    *,
    owner: str = "p1",
    visibility: Visibility = Visibility.PRIVATE,
    status: ImageStatus = ImageStatus.ACTIVE,
) -> Image:
    return Image(
        id=f"{owner or 'unowned'}-{visibility}-{status}",
        name="cirros",
        status=status,
        created_at=_EPOCH,
        updated_at=_EPOCH,
        visibility=visibility,
        owner=owner,
    )


def access(
    policy: GlancePolicy,
    principal: Principal,
    *,
    rule: str = "get_image",
    writes: bool = False,
    queued_rule: str | None = None,
) -> CallerAccess:
    return PolicyAccess(policy, principal, rule=rule, writes=writes, queued_rule=queued_rule)


def add_location(policy: GlancePolicy, principal: Principal) -> CallerAccess:
    """The access of AddLocation (Glance 2.17's add-location path on a queued image)."""
    return access(
        policy,
        principal,
        rule="set_image_location",
        writes=True,
        queued_rule="add_image_location",
    )


def refusal(call: Callable[[], object]) -> DomainError:
    with pytest.raises(DomainError) as refused:
        call()
    return refused.value


def test_policy_access_speaks_for_its_principals_namespace(glance: GlancePolicy) -> None:
    assert access(glance, MEMBER).namespace == MEMBER.namespace


@pytest.mark.parametrize(
    ("principal", "unseen"),
    [
        (STRANGER, image(owner="p1")),
        (STRANGER, image(owner="p1", visibility=Visibility.SHARED)),
        (MEMBER, image(owner="")),
        (MEMBER, image(owner="", visibility=Visibility.SHARED)),
        (MEMBER_WITHOUT_READER, image(owner="p1")),
    ],
)
@pytest.mark.parametrize(("rule", "writes"), [("get_image", False), ("delete_image", True)])
def test_authorize_answers_an_image_the_caller_may_not_see_as_not_found(
    glance: GlancePolicy, principal: Principal, unseen: Image, rule: str, writes: bool
) -> None:
    caller = access(glance, principal, rule=rule, writes=writes)
    refused = refusal(lambda: caller.authorize(unseen))
    assert refused.reason is Reason.IMAGE_NOT_FOUND
    assert refused.image_id == unseen.id
    assert refused.metadata == {}


@pytest.mark.parametrize(
    ("principal", "rule", "seen"),
    [
        (STRANGER, "deactivate", image(visibility=Visibility.PUBLIC)),
        (STRANGER, "delete_image", image(visibility=Visibility.COMMUNITY)),
        (READER, "delete_image", image()),
        (MEMBER, "delete_image_location", image()),
        (MEMBER, "publicize_image", image()),
    ],
)
def test_authorize_refuses_an_image_the_caller_may_see_by_the_policy_it_fails(
    glance: GlancePolicy, principal: Principal, rule: str, seen: Image
) -> None:
    refused = refusal(lambda: access(glance, principal, rule=rule, writes=True).authorize(seen))
    assert refused.reason is Reason.POLICY_DENIED
    assert refused.metadata == {"policy": rule}
    assert refused.image_id == seen.id
    assert refused.message == f"Policy doesn't allow {rule} to be performed."


@pytest.mark.parametrize("principal", [ADMIN, MEMBER])
@pytest.mark.parametrize(
    "rule", ["delete_image", "upload_image", "deactivate", "reactivate", "set_image_location"]
)
def test_authorize_lets_the_owners_member_and_an_admin_write(
    glance: GlancePolicy, principal: Principal, rule: str
) -> None:
    access(glance, principal, rule=rule, writes=True).authorize(image())


def test_authorize_lets_a_reader_of_another_project_get_a_public_image(
    glance: GlancePolicy,
) -> None:
    access(glance, STRANGER).authorize(image(visibility=Visibility.PUBLIC))


def test_a_loosened_rule_still_lets_only_the_owner_or_an_admin_change_an_image(
    policy_file: PolicyFile,
) -> None:
    policy = GlancePolicy.load(policy_file('"set_image_location": "role:member"\n'))
    public = image(visibility=Visibility.PUBLIC)
    refused = refusal(
        lambda: access(policy, STRANGER, rule="set_image_location", writes=True).authorize(public)
    )
    assert refused.reason is Reason.POLICY_DENIED
    assert refused.metadata == {"policy": "set_image_location"}
    access(policy, MEMBER, rule="set_image_location", writes=True).authorize(public)
    # A read is not a change: the loosened rule lets the stranger's read through.
    access(policy, STRANGER, rule="set_image_location", writes=False).authorize(public)


def test_an_operators_rule_may_name_the_owner_as_project_id_or_owner(
    policy_file: PolicyFile,
) -> None:
    policy = GlancePolicy.load(
        policy_file('"delete_image": "role:member and project_id:%(owner)s"\n')
    )
    access(policy, MEMBER, rule="delete_image", writes=True).authorize(image())
    public = image(visibility=Visibility.PUBLIC)
    refused = refusal(
        lambda: access(policy, STRANGER, rule="delete_image", writes=True).authorize(public)
    )
    assert refused.metadata == {"policy": "delete_image"}


@pytest.mark.parametrize("owner", ["p1", "p9", ""])
def test_a_service_adds_a_location_to_a_queued_image_of_any_project(
    glance: GlancePolicy, owner: str
) -> None:
    add_location(glance, SERVICE).authorize(image(owner=owner, status=ImageStatus.QUEUED))


def test_a_service_may_not_add_a_location_to_an_active_image(glance: GlancePolicy) -> None:
    refused = refusal(lambda: add_location(glance, SERVICE).authorize(image()))
    assert refused.reason is Reason.POLICY_DENIED
    assert refused.metadata == {"policy": "set_image_location"}


def test_the_owners_member_adds_a_location_to_its_queued_and_active_images(
    glance: GlancePolicy,
) -> None:
    add_location(glance, MEMBER).authorize(image(status=ImageStatus.QUEUED))
    add_location(glance, MEMBER).authorize(image())


def test_a_stranger_may_not_add_a_location_to_a_queued_public_image(
    glance: GlancePolicy,
) -> None:
    public = image(visibility=Visibility.PUBLIC, status=ImageStatus.QUEUED)
    refused = refusal(lambda: add_location(glance, STRANGER).authorize(public))
    assert refused.reason is Reason.POLICY_DENIED
    assert refused.metadata == {"policy": "set_image_location"}


def test_a_loosened_queued_rule_still_refuses_a_stranger_who_is_no_service(
    policy_file: PolicyFile,
) -> None:
    policy = GlancePolicy.load(
        policy_file('"add_image_location": "rule:service_api or role:member"\n')
    )
    public = image(visibility=Visibility.PUBLIC, status=ImageStatus.QUEUED)
    refused = refusal(lambda: add_location(policy, STRANGER).authorize(public))
    assert refused.reason is Reason.POLICY_DENIED
    assert refused.metadata == {"policy": "add_image_location"}


def test_a_service_reads_every_image_but_writes_none_by_default_rules(
    glance: GlancePolicy,
) -> None:
    private = image(owner="p9")
    access(glance, SERVICE).authorize(private)
    access(glance, SERVICE, rule="fetch_image_location").authorize(private)
    refused = refusal(
        lambda: access(glance, SERVICE, rule="delete_image", writes=True).authorize(private)
    )
    assert refused.metadata == {"policy": "delete_image"}


def test_a_principal_of_no_project_passes_no_project_check_on_an_unowned_image(
    glance: GlancePolicy,
) -> None:
    public = image(owner="", visibility=Visibility.PUBLIC)
    refused = refusal(
        lambda: access(glance, NO_PROJECT, rule="delete_image", writes=True).authorize(public)
    )
    assert refused.reason is Reason.POLICY_DENIED
    assert not access(glance, NO_PROJECT).sees_locations(public)
    assert not access(glance, NO_PROJECT).may_see(image(owner=""))
    with pytest.raises(DomainError):
        access(glance, NO_PROJECT, rule="add_image", writes=True).owner_of_new_image(
            owner=None, visibility=Visibility.PRIVATE
        )


def new_image_owner(
    policy: GlancePolicy, principal: Principal, owner: str | None, visibility: Visibility
) -> str:
    creator = access(policy, principal, rule="add_image", writes=True)
    return creator.owner_of_new_image(owner=owner, visibility=visibility)


@pytest.mark.parametrize(
    ("principal", "owner", "visibility", "expected"),
    [
        (MEMBER, None, Visibility.PRIVATE, "p1"),
        (MEMBER, "p1", Visibility.SHARED, "p1"),
        (MEMBER, None, Visibility.COMMUNITY, "p1"),
        (ADMIN, "p9", Visibility.PRIVATE, "p9"),
        (ADMIN, "p9", Visibility.PUBLIC, "p9"),
        (ADMIN, None, Visibility.PUBLIC, "admins"),
    ],
)
def test_a_new_image_is_owned_by_the_callers_project_unless_an_admin_names_another(
    glance: GlancePolicy,
    principal: Principal,
    owner: str | None,
    visibility: Visibility,
    expected: str,
) -> None:
    assert new_image_owner(glance, principal, owner, visibility) == expected


@pytest.mark.parametrize(
    ("principal", "owner", "visibility", "rule"),
    [
        (MEMBER, "p2", Visibility.PRIVATE, "add_image"),
        (READER, None, Visibility.PRIVATE, "add_image"),
        (SERVICE, None, Visibility.PRIVATE, "add_image"),
        (SERVICE, "p1", Visibility.PRIVATE, "add_image"),
        (MEMBER, None, Visibility.PUBLIC, "publicize_image"),
    ],
)
def test_creating_an_image_is_refused_by_the_policy_it_fails(
    glance: GlancePolicy,
    principal: Principal,
    owner: str | None,
    visibility: Visibility,
    rule: str,
) -> None:
    refused = refusal(lambda: new_image_owner(glance, principal, owner, visibility))
    assert refused.reason is Reason.POLICY_DENIED
    assert refused.metadata == {"policy": rule}


def test_a_member_naming_another_owner_hears_glances_message(glance: GlancePolicy) -> None:
    refused = refusal(lambda: new_image_owner(glance, MEMBER, "p2", Visibility.PRIVATE))
    assert refused.message == "You are not permitted to create images owned by 'p2'."


@pytest.mark.parametrize(
    ("principal", "visibility", "scope"),
    [
        (ADMIN, None, ListScope(own_project="admins", all_projects=True)),
        (
            ADMIN,
            Visibility.COMMUNITY,
            ListScope(
                own_project="admins",
                all_projects=True,
                all_community=True,
                visibility=Visibility.COMMUNITY,
            ),
        ),
        (
            ADMIN,
            Visibility.PRIVATE,
            ListScope(
                own_project="admins",
                all_projects=True,
                all_community=True,
                visibility=Visibility.PRIVATE,
            ),
        ),
        (SERVICE, None, ListScope(all_projects=True, all_community=True)),
        (
            SERVICE,
            Visibility.SHARED,
            ListScope(all_projects=True, all_community=True, visibility=Visibility.SHARED),
        ),
        (MEMBER, None, ListScope(own_project="p1")),
        (READER, Visibility.PUBLIC, ListScope(own_project="p1", visibility=Visibility.PUBLIC)),
        (
            MEMBER,
            Visibility.COMMUNITY,
            ListScope(own_project="p1", all_community=True, visibility=Visibility.COMMUNITY),
        ),
    ],
)
def test_a_listing_has_the_scope_glances_list_query_gives_each_persona(
    glance: GlancePolicy, principal: Principal, visibility: Visibility | None, scope: ListScope
) -> None:
    assert access(glance, principal, rule="get_images").listing(visibility) == scope


@pytest.mark.parametrize(
    "principal", [MEMBER_WITHOUT_READER, Principal(project_id="p1"), NO_PROJECT]
)
def test_a_listing_is_refused_to_a_caller_without_the_reader_role_of_a_project(
    glance: GlancePolicy, principal: Principal
) -> None:
    refused = refusal(lambda: access(glance, principal, rule="get_images").listing(None))
    assert refused.reason is Reason.POLICY_DENIED
    assert refused.metadata == {"policy": "get_images"}


#: Who sees p1's image of each visibility (Glance's test_image_visibility_to_different_users,
#: with no image members: a shared image is its owner's alone). A reader of no project is
#: project-scoped to oslo.policy, so it passes get_image on public and community images.
VISIBILITY_MATRIX = {
    Visibility.PRIVATE: {"admin", "member", "reader", "service"},
    Visibility.SHARED: {"admin", "member", "reader", "service"},
    Visibility.PUBLIC: {"admin", "member", "reader", "service", "stranger", "no-project"},
    Visibility.COMMUNITY: {"admin", "member", "reader", "service", "stranger", "no-project"},
}
PERSONAS = {
    "admin": ADMIN,
    "member": MEMBER,
    "reader": READER,
    "service": SERVICE,
    "stranger": STRANGER,
    "member-without-reader": MEMBER_WITHOUT_READER,
    "no-project": NO_PROJECT,
}


@pytest.mark.parametrize("visibility", list(Visibility))
def test_may_see_follows_glances_visibility_matrix(
    glance: GlancePolicy, visibility: Visibility
) -> None:
    subject = image(visibility=visibility)
    seen_by = {name for name, who in PERSONAS.items() if access(glance, who).may_see(subject)}
    assert seen_by == VISIBILITY_MATRIX[visibility]


def test_an_unowned_image_is_seen_by_admins_and_services_only(glance: GlancePolicy) -> None:
    unowned = image(owner="")
    seen_by = {name for name, who in PERSONAS.items() if access(glance, who).may_see(unowned)}
    assert seen_by == {"admin", "service"}


@pytest.mark.parametrize(
    ("status", "seen_by"),
    [
        (ImageStatus.ACTIVE, {"admin", "member", "reader", "service"}),
        (ImageStatus.QUEUED, {"admin", "member", "reader", "service"}),
        (ImageStatus.DEACTIVATED, {"admin"}),
    ],
)
def test_locations_are_seen_by_the_owners_readers_admins_and_services(
    glance: GlancePolicy, status: ImageStatus, seen_by: set[str]
) -> None:
    public = image(visibility=Visibility.PUBLIC, status=status)
    assert {
        name for name, who in PERSONAS.items() if access(glance, who).sees_locations(public)
    } == seen_by


def test_the_no_auth_principal_is_an_admin_of_no_project(glance: GlancePolicy) -> None:
    principal = no_auth_principal()
    assert principal.project_id == ""
    credentials = {"roles": sorted(principal.roles)}
    assert glance.allows("context_is_admin", credentials=credentials, target={})
    caller = access(glance, principal, rule="delete_image", writes=True)
    for subject in (image(), image(owner=""), image(status=ImageStatus.DEACTIVATED)):
        assert caller.may_see(subject)
        assert caller.sees_locations(subject)
        caller.authorize(subject)
    creator = access(glance, principal, rule="add_image", writes=True)
    assert creator.owner_of_new_image(owner=None, visibility=Visibility.PUBLIC) == ""
    assert creator.owner_of_new_image(owner="p1", visibility=Visibility.PRIVATE) == "p1"


def test_roles_are_matched_case_insensitively(glance: GlancePolicy) -> None:
    shouting = Principal(project_id="p1", roles=frozenset({"Member", "READER"}))
    access(glance, shouting, rule="delete_image", writes=True).authorize(image())
