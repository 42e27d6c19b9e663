"""Who may call, end to end: a real mTLS server with JWT auth, every RPC x persona, hiding.

The server runs on an ephemeral port with certificates (tests/certs.py) and tokens
(tests/signing.py) made here; each persona is a channel with its own credentials.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import json
import pathlib
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from imageloc.server.app import build_server
from imageloc.server.config import Settings
from imageloc.server.domain.model import Change, ChangeType, Visibility
from imageloc.server.store import SqlStore
from imageloc.v1 import image_service_pb2 as pb
from imageloc.v1 import image_service_pb2_grpc as pb_grpc

from certs import Pki, make_pki
from signing import Issuer
from support import location, make_image, migrate, refusal_of

NOVA = "spiffe://example.org/ns/compute/sa/nova"
URL_A = "https://store.example/a.img"
URL_B = "rbd://fsid/pool/b/snap"

#: persona -> (project, roles) of its token; None: no token (a certificate only).
TOKENS: dict[str, tuple[str, tuple[str, ...]] | None] = {
    "admin": ("ops", ("admin",)),
    "member": ("p1", ("member",)),
    "reader": ("p1", ("reader",)),
    "stranger": ("p2", ("member",)),
    "service": None,
    "anonymous": None,
}


@dataclasses.dataclass
class Secured:
    """A running secured server and what it takes to call it."""

    target: str
    pki: Pki
    issuer: Issuer
    audit_log: pathlib.Path
    tmp: pathlib.Path
    channels: list[grpc.Channel] = dataclasses.field(default_factory=list)

    def channel(
        self, *, token: str | None = None, cert: str = "workstation", uri: str | None = None
    ) -> grpc.Channel:
        """A TLS channel with a client certificate (cert "" for none) and maybe a token."""
        client = self.pki.client(cert, uri=uri, dns=f"{cert}.example") if cert else None
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.pki.ca_pem,
            private_key=client.key_pem if client else None,
            certificate_chain=client.cert_pem if client else None,
        )
        if token is not None:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(token)
            )
        channel = grpc.secure_channel(self.target, credentials)
        self.channels.append(channel)
        return channel

    def stub(self, persona: str) -> pb_grpc.ImageServiceStub:
        """The stub of a persona of TOKENS."""
        if persona == "service":
            return pb_grpc.ImageServiceStub(self.channel(cert="nova", uri=NOVA))
        spec = TOKENS[persona]
        token = None if spec is None else self.issuer.token(project=spec[0], roles=spec[1])
        return pb_grpc.ImageServiceStub(self.channel(token=token))

    def audit(self) -> list[dict[str, Any]]:
        """The audit log's entries so far."""
        return [json.loads(line) for line in self.audit_log.read_text().splitlines()]


@contextlib.contextmanager
def start_secured(database_url: str, tmp: pathlib.Path, **overrides: Any) -> Iterator[Secured]:
    """A migrated database, a PKI, an identity provider and an mTLS + JWT server on them."""
    migrate(database_url)
    pki = make_pki(tmp)
    issuer = Issuer.create(tmp / "idp", issuer="imageloc-test", audience="imageloc")
    audit_log = tmp / "audit.log"
    settings = Settings(
        listen="127.0.0.1:0",
        database_url=database_url,
        drain_seconds=0.0,
        **issuer.trusted_by(),
        tls_cert=str(pki.server_cert_file),
        tls_key=str(pki.server_key_file),
        tls_client_ca=str(pki.ca_file),
        service_identities=frozenset({NOVA}),
        audit_log=str(audit_log),
    )
    server = build_server(dataclasses.replace(settings, **overrides))
    server.start()
    secured = Secured(f"127.0.0.1:{server.port}", pki, issuer, audit_log, tmp)
    try:
        yield secured
    finally:
        for channel in secured.channels:
            channel.close()
        server.stop(None)


@pytest.fixture
def secured(database_url: str, tmp_path: pathlib.Path) -> Iterator[Secured]:
    """A secured server with Glance's default policy."""
    with start_secured(database_url, tmp_path) as running:
        yield running


@pytest.fixture
def stubs(secured: Secured) -> dict[str, pb_grpc.ImageServiceStub]:
    """A stub per persona."""
    return {persona: secured.stub(persona) for persona in TOKENS}


# The RPC x persona table, on a private image of project p1 (the member's and reader's).
OK, DENIED, HIDDEN, UNAUTH = "ok", "denied", "not-found", "unauthenticated"

#: rpc -> (status the image is put in, request builder, policy named when denied)
Builder = Callable[[str], Any]
RPCS: dict[str, tuple[str, Builder, str]] = {
    "GetImage": ("active", lambda i: pb.GetImageRequest(image_id=i), "get_image"),
    "UpdateImage": (
        "active",
        lambda i: pb.UpdateImageRequest(
            image=pb.Image(id=i, name="renamed"), update_mask=FieldMask(paths=["name"])
        ),
        "modify_image",
    ),
    "DeleteImage": ("active", lambda i: pb.DeleteImageRequest(image_id=i), "delete_image"),
    "BeginUpload": ("queued", lambda i: pb.BeginUploadRequest(image_id=i), "upload_image"),
    "CompleteUpload": (
        "saving",
        lambda i: pb.CompleteUploadRequest(image_id=i, location=location(URL_A), size=1),
        "upload_image",
    ),
    "FailUpload": ("saving", lambda i: pb.FailUploadRequest(image_id=i), "upload_image"),
    "StageImage": ("queued", lambda i: pb.StageImageRequest(image_id=i), "upload_image"),
    "BeginImport": ("queued", lambda i: pb.BeginImportRequest(image_id=i), "upload_image"),
    "DeactivateImage": ("active", lambda i: pb.DeactivateImageRequest(image_id=i), "deactivate"),
    "ReactivateImage": (
        "deactivated",
        lambda i: pb.ReactivateImageRequest(image_id=i),
        "reactivate",
    ),
    "AddLocation": (
        "active",
        lambda i: pb.AddLocationRequest(image_id=i, location=location("https://store.example/c")),
        "set_image_location",
    ),
    "RemoveLocation": (
        "active",
        lambda i: pb.RemoveLocationRequest(image_id=i, index=0),
        "delete_image_location",
    ),
    "ReplaceLocation": (
        "active",
        lambda i: pb.ReplaceLocationRequest(
            image_id=i, locations=[location(URL_B), location(URL_A)]
        ),
        "set_image_location",
    ),
}

#: What Glance's default policy lets each persona do to another's... to p1's private image.
EXPECTED: dict[str, dict[str, str]] = {
    "GetImage": {"admin": OK, "member": OK, "reader": OK, "stranger": HIDDEN, "service": OK},
    "RemoveLocation": {
        "admin": OK,
        "member": DENIED,
        "reader": DENIED,
        "stranger": HIDDEN,
        "service": DENIED,
    },
}
WRITE_DEFAULT = {"admin": OK, "member": OK, "reader": DENIED, "stranger": HIDDEN, "service": DENIED}


@pytest.mark.parametrize("persona", list(TOKENS))
@pytest.mark.parametrize("rpc", list(RPCS))
def test_every_rpc_answers_each_persona_as_glance_default_policy_does(
    stubs: dict[str, pb_grpc.ImageServiceStub], rpc: str, persona: str
) -> None:
    status, build, policy = RPCS[rpc]
    image = make_image(stubs["member"], status, urls=(URL_A, URL_B))
    expected = UNAUTH if persona == "anonymous" else EXPECTED.get(rpc, WRITE_DEFAULT)[persona]
    call = getattr(stubs[persona], rpc)
    if expected == OK:
        call(build(image.id))
        return
    refusal = refusal_of(lambda: call(build(image.id)))
    if expected == UNAUTH:
        assert refusal.code == grpc.StatusCode.UNAUTHENTICATED
        assert refusal.info.reason == "UNAUTHENTICATED"
        assert dict(refusal.info.metadata) == {"cause": "missing", "httpStatus": "401"}
    elif expected == HIDDEN:
        assert refusal.code == grpc.StatusCode.NOT_FOUND
        assert refusal.info.reason == "IMAGE_NOT_FOUND"
    else:
        assert refusal.code == grpc.StatusCode.PERMISSION_DENIED
        assert refusal.info.reason == "POLICY_DENIED"
        assert dict(refusal.info.metadata) == {
            "policy": policy,
            "imageId": image.id,
            "httpStatus": "403",
        }


def test_a_hidden_image_is_refused_exactly_as_one_that_does_not_exist(
    stubs: dict[str, pb_grpc.ImageServiceStub],
) -> None:
    image = make_image(stubs["member"], "active")
    missing = str(uuid.uuid4())
    for image_id in (image.id, missing):
        delete = functools.partial(
            stubs["stranger"].DeleteImage, pb.DeleteImageRequest(image_id=image_id)
        )
        refusal = refusal_of(delete)
        assert refusal.code == grpc.StatusCode.NOT_FOUND
        assert refusal.message == f"No image found with ID {image_id}"
        assert dict(refusal.info.metadata) == {"imageId": image_id, "httpStatus": "404"}


def test_a_service_identity_adds_a_location_to_a_queued_image_of_any_project(
    stubs: dict[str, pb_grpc.ImageServiceStub],
) -> None:
    image = make_image(stubs["member"], "queued")
    added = (
        stubs["service"]
        .AddLocation(pb.AddLocationRequest(image_id=image.id, location=location(URL_A)))
        .image
    )
    assert [loc.url for loc in added.locations] == [URL_A]
    assert added.status == pb.IMAGE_STATUS_ACTIVE
    assert not added.locations_hidden


def test_create_sets_the_owner_to_the_callers_project(
    stubs: dict[str, pb_grpc.ImageServiceStub],
) -> None:
    image = stubs["member"].CreateImage(pb.CreateImageRequest(name="mine")).image
    assert image.owner == "p1"
    assert image.visibility == pb.IMAGE_VISIBILITY_PRIVATE


@pytest.mark.parametrize(
    ("persona", "fields", "policy"),
    [
        ("reader", {}, "add_image"),
        ("service", {}, "add_image"),
        ("member", {"owner": "p2"}, "add_image"),
        ("member", {"visibility": pb.IMAGE_VISIBILITY_PUBLIC}, "publicize_image"),
    ],
)
def test_create_is_refused_by_policy(
    stubs: dict[str, pb_grpc.ImageServiceStub], persona: str, fields: dict[str, Any], policy: str
) -> None:
    refusal = refusal_of(
        lambda: stubs[persona].CreateImage(pb.CreateImageRequest(name="x", **fields))
    )
    assert refusal.code == grpc.StatusCode.PERMISSION_DENIED
    assert refusal.info.reason == "POLICY_DENIED"
    assert refusal.info.metadata["policy"] == policy
    assert refusal.info.metadata["httpStatus"] == "403"


def test_an_admin_creates_for_another_project_and_makes_images_public(
    stubs: dict[str, pb_grpc.ImageServiceStub],
) -> None:
    image = (
        stubs["admin"]
        .CreateImage(
            pb.CreateImageRequest(name="x", owner="p2", visibility=pb.IMAGE_VISIBILITY_PUBLIC)
        )
        .image
    )
    assert image.owner == "p2"
    seen = stubs["stranger"].GetImage(pb.GetImageRequest(image_id=image.id)).image
    assert seen.owner == "p2"


def test_a_member_shares_with_the_community(stubs: dict[str, pb_grpc.ImageServiceStub]) -> None:
    image = (
        stubs["member"]
        .CreateImage(pb.CreateImageRequest(name="x", visibility=pb.IMAGE_VISIBILITY_COMMUNITY))
        .image
    )
    assert image.visibility == pb.IMAGE_VISIBILITY_COMMUNITY


def test_making_an_image_public_through_an_update_takes_publicize_image(
    stubs: dict[str, pb_grpc.ImageServiceStub],
) -> None:
    image = stubs["member"].CreateImage(pb.CreateImageRequest(name="x")).image

    def make(persona: str, visibility: pb.ImageVisibility.ValueType) -> pb.Image:
        request = pb.UpdateImageRequest(
            image=pb.Image(id=image.id, visibility=visibility),
            update_mask=FieldMask(paths=["visibility"]),
        )
        return stubs[persona].UpdateImage(request).image

    refusal = refusal_of(lambda: make("member", pb.IMAGE_VISIBILITY_PUBLIC))
    assert refusal.code == grpc.StatusCode.PERMISSION_DENIED
    assert refusal.info.metadata["policy"] == "publicize_image"
    assert make("member", pb.IMAGE_VISIBILITY_COMMUNITY).visibility == pb.IMAGE_VISIBILITY_COMMUNITY
    assert make("admin", pb.IMAGE_VISIBILITY_PUBLIC).visibility == pb.IMAGE_VISIBILITY_PUBLIC
    assert make("member", pb.IMAGE_VISIBILITY_PRIVATE).visibility == pb.IMAGE_VISIBILITY_PRIVATE


def _listed(stub: pb_grpc.ImageServiceStub, **filters: Any) -> set[str]:
    return {image.name for image in stub.ListImages(pb.ListImagesRequest(**filters)).images}


def test_listings_show_each_caller_what_glance_shows(
    stubs: dict[str, pb_grpc.ImageServiceStub],
) -> None:
    for visibility in ("private", "public", "community", "shared"):
        number = pb.ImageVisibility.Value(f"IMAGE_VISIBILITY_{visibility.upper()}")
        # Only an admin makes an image public (publicize_image): it does so for p1.
        creator = stubs["admin"] if visibility == "public" else stubs["member"]
        creator.CreateImage(
            pb.CreateImageRequest(name=f"p1-{visibility}", visibility=number, owner="p1")
        )
    stubs["stranger"].CreateImage(pb.CreateImageRequest(name="p2-private"))
    stubs["stranger"].CreateImage(
        pb.CreateImageRequest(name="p2-community", visibility=pb.IMAGE_VISIBILITY_COMMUNITY)
    )
    everything = {
        "p1-private", "p1-public", "p1-community", "p1-shared", "p2-private", "p2-community"
    }  # fmt: skip
    assert _listed(stubs["member"]) == {"p1-private", "p1-public", "p1-community", "p1-shared"}
    assert _listed(stubs["reader"]) == _listed(stubs["member"])
    assert _listed(stubs["stranger"]) == {"p2-private", "p2-community", "p1-public"}
    community = {"visibility": pb.IMAGE_VISIBILITY_COMMUNITY}
    assert _listed(stubs["stranger"], **community) == {"p1-community", "p2-community"}
    # An admin sees every image but other projects' community ones, unless it asks for them.
    assert _listed(stubs["admin"]) == everything - {"p1-community", "p2-community"}
    assert _listed(stubs["admin"], **community) == {"p1-community", "p2-community"}
    assert _listed(stubs["service"]) == everything


def test_get_follows_visibility(stubs: dict[str, pb_grpc.ImageServiceStub]) -> None:
    for visibility, stranger_sees in (
        ("private", False),
        ("shared", False),
        ("public", True),
        ("community", True),
    ):
        number = pb.ImageVisibility.Value(f"IMAGE_VISIBILITY_{visibility.upper()}")
        creator = stubs["admin"] if visibility == "public" else stubs["member"]
        request = pb.CreateImageRequest(name="x", visibility=number, owner="p1")
        image = creator.CreateImage(request).image

        def get(i: str = image.id) -> pb.Image:
            return stubs["stranger"].GetImage(pb.GetImageRequest(image_id=i)).image

        if stranger_sees:
            assert get().id == image.id
        else:
            assert refusal_of(get).code == grpc.StatusCode.NOT_FOUND


def test_locations_are_shown_only_to_callers_the_policy_lets_see_them(
    stubs: dict[str, pb_grpc.ImageServiceStub],
) -> None:
    image = make_image(
        stubs["admin"], "active", urls=(URL_A,), visibility=pb.IMAGE_VISIBILITY_PUBLIC, owner="p1"
    )
    for persona, shown in (
        ("admin", True),
        ("member", True),
        ("reader", True),
        ("service", True),
        ("stranger", False),
    ):
        got = stubs[persona].GetImage(pb.GetImageRequest(image_id=image.id)).image
        listed = list(stubs[persona].ListImages(pb.ListImagesRequest()).images)
        for seen in [got, *(i for i in listed if i.id == image.id)]:
            assert [loc.url for loc in seen.locations] == ([URL_A] if shown else []), persona
            assert seen.locations_hidden is not shown, persona


def test_a_deactivated_image_shows_its_locations_to_admins_only(
    stubs: dict[str, pb_grpc.ImageServiceStub],
) -> None:
    image = make_image(stubs["member"], "deactivated", urls=(URL_A,))
    for persona, shown in (("admin", True), ("member", False), ("service", False)):
        got = stubs[persona].GetImage(pb.GetImageRequest(image_id=image.id)).image
        assert bool(got.locations) is shown, persona
        assert got.locations_hidden is not shown, persona


def test_a_stranger_writing_to_a_public_image_is_refused_by_policy_not_hidden(
    stubs: dict[str, pb_grpc.ImageServiceStub],
) -> None:
    image = make_image(stubs["admin"], "active", visibility=pb.IMAGE_VISIBILITY_PUBLIC, owner="p1")
    refusal = refusal_of(
        lambda: stubs["stranger"].DeactivateImage(pb.DeactivateImageRequest(image_id=image.id))
    )
    assert refusal.code == grpc.StatusCode.PERMISSION_DENIED
    assert refusal.info.metadata["policy"] == "deactivate"


def test_a_request_id_of_one_principal_tells_another_nothing(
    stubs: dict[str, pb_grpc.ImageServiceStub],
) -> None:
    request_id = str(uuid.uuid4())
    first = stubs["member"].CreateImage(pb.CreateImageRequest(name="a", request_id=request_id))
    again = stubs["member"].CreateImage(pb.CreateImageRequest(name="a", request_id=request_id))
    assert again.image.id == first.image.id
    # Another principal's same id and same request is a request of its own...
    other = stubs["stranger"].CreateImage(pb.CreateImageRequest(name="a", request_id=request_id))
    assert other.image.id != first.image.id
    assert other.image.owner == "p2"
    # ...and with another request it is not REQUEST_ID_REUSED either: nothing leaks.
    third = stubs["admin"].CreateImage(pb.CreateImageRequest(name="b", request_id=request_id))
    assert third.image.id not in (first.image.id, other.image.id)


def test_health_and_reflection_answer_without_credentials(secured: Secured) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = secured.channel()
    health = health_pb2_grpc.HealthStub(channel)
    answer = health.Check(health_pb2.HealthCheckRequest(service="imageloc.v1.ImageService"))
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert "imageloc.v1.ImageService" in names


# Token refusals: every cause.


def _token_refusal(secured: Secured, token: str) -> dict[str, str]:
    stub = pb_grpc.ImageServiceStub(secured.channel(token=token))
    refusal = refusal_of(lambda: stub.ListImages(pb.ListImagesRequest()))
    assert refusal.code == grpc.StatusCode.UNAUTHENTICATED
    assert refusal.info.reason == "UNAUTHENTICATED"
    assert token not in refusal.message
    return dict(refusal.info.metadata)


@pytest.mark.parametrize(
    ("make", "cause"),
    [
        (lambda i: "not-a-jwt", "malformed"),
        (lambda i: "x" * 9000, "malformed"),
        (lambda i: i.token(exp=time.time() - 3600), "expired"),
        (lambda i: i.token(nbf=time.time() + 3600), "not_yet_valid"),
        (lambda i: i.token_from_other_key(), "bad_signature"),
        (lambda i: i.token(iss="someone-else"), "wrong_issuer"),
        (lambda i: i.token(aud="another-service"), "wrong_audience"),
        (lambda i: i.token_with_unknown_kid(), "unknown_key"),
        (lambda i: i.unsigned_token(), "unsupported_algorithm"),
        (lambda i: i.hs256_with_public_key(), "unsupported_algorithm"),
    ],
)
def test_each_bad_token_is_refused_with_its_cause(
    secured: Secured, make: Callable[[Issuer], str], cause: str
) -> None:
    token = make(secured.issuer)
    assert _token_refusal(secured, token) == {"cause": cause, "httpStatus": "401"}
    text = secured.audit_log.read_text()
    assert token not in text
    refused = [e for e in secured.audit() if e["reason"] == "UNAUTHENTICATED"][-1]
    assert refused["authenticated"] is False
    assert (refused["sub"], refused["project"], refused["serviceIdentity"]) == ("", "", "")


def test_a_rotated_signing_key_is_used_without_a_restart(secured: Secured) -> None:
    stub = pb_grpc.ImageServiceStub(secured.channel(token=secured.issuer.token()))
    stub.ListImages(pb.ListImagesRequest())
    secured.issuer.rotate(keep_old=False)
    time.sleep(1.1)  # the key file is looked at again at most every 0.5 s
    fresh = pb_grpc.ImageServiceStub(secured.channel(token=secured.issuer.token()))
    fresh.ListImages(pb.ListImagesRequest())
    old_key = secured.issuer
    del old_key


def test_mtls_refuses_a_client_without_a_certificate_or_with_another_cas(
    secured: Secured,
) -> None:
    for channel in (
        secured.channel(token=secured.issuer.token(), cert=""),
        grpc.secure_channel(
            secured.target,
            grpc.ssl_channel_credentials(
                root_certificates=secured.pki.ca_pem,
                private_key=secured.pki.client("rogue", other_ca=True).key_pem,
                certificate_chain=secured.pki.client("rogue", other_ca=True).cert_pem,
            ),
        ),
    ):
        stub = pb_grpc.ImageServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListImages(pb.ListImagesRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        channel.close()


def test_a_certificate_and_a_token_act_for_the_user_with_the_service_role(
    secured: Secured, stubs: dict[str, pb_grpc.ImageServiceStub]
) -> None:
    image = make_image(stubs["member"], "queued")
    # p2's member owns nothing of p1, but with nova's certificate it holds `service`.
    token = secured.issuer.token(project="p2", roles=("member",), sub="u2")
    both = pb_grpc.ImageServiceStub(secured.channel(token=token, cert="nova", uri=NOVA))
    added = both.AddLocation(pb.AddLocationRequest(image_id=image.id, location=location(URL_A)))
    assert added.image.status == pb.IMAGE_STATUS_ACTIVE
    entry = [e for e in secured.audit() if e["rpc"] == "AddLocation"][-1]
    assert entry["sub"] == "u2"
    assert entry["project"] == "p2"
    assert entry["serviceIdentity"] == NOVA


def test_every_mutation_and_refusal_is_audited_without_secrets(
    secured: Secured, stubs: dict[str, pb_grpc.ImageServiceStub]
) -> None:
    secret = "https://user:hunter2@store.example/a.img"
    request_id = str(uuid.uuid4())
    image = stubs["member"].CreateImage(
        pb.CreateImageRequest(
            name="x", disk_format="raw", container_format="bare", request_id=request_id
        )
    )
    stubs["member"].AddLocation(
        pb.AddLocationRequest(image_id=image.image.id, location=location(secret))
    )
    refusal_of(lambda: stubs["reader"].DeleteImage(pb.DeleteImageRequest(image_id=image.image.id)))
    entries = secured.audit()
    created = [e for e in entries if e["rpc"] == "CreateImage"][-1]
    assert created["code"] == "OK"
    assert created["sub"] == "u1"
    assert created["authenticated"] is True
    assert created["project"] == "p1"
    assert created["imageId"] == image.image.id
    assert created["requestId"] == request_id
    assert created["time"]
    denied = [e for e in entries if e["rpc"] == "DeleteImage"][-1]
    assert (denied["code"], denied["reason"]) == ("PERMISSION_DENIED", "POLICY_DENIED")
    text = secured.audit_log.read_text()
    assert "hunter2" not in text
    assert "Bearer" not in text


def test_a_policy_file_can_let_owners_remove_locations(
    database_url: str, tmp_path: pathlib.Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        '"delete_image_location": "rule:context_is_admin or'
        ' (role:member and project_id:%(project_id)s)"\n'
        '"set_image_location": "role:member"\n'
    )
    with start_secured(database_url, tmp_path, policy_file=str(policy)) as secured:
        member = secured.stub("member")
        image = make_image(member, "active", urls=(URL_A, URL_B))
        removed = member.RemoveLocation(pb.RemoveLocationRequest(image_id=image.id, index=0))
        assert [loc.url for loc in removed.image.locations] == [URL_B]
        # Only the owner's project or an admin changes an image, whatever a rule says.
        admin = secured.stub("admin")
        public = make_image(admin, "active", visibility=pb.IMAGE_VISIBILITY_PUBLIC, owner="p1")
        stranger = secured.stub("stranger")
        refusal = refusal_of(
            lambda: stranger.AddLocation(
                pb.AddLocationRequest(image_id=public.id, location=location(URL_B))
            )
        )
        assert refusal.info.reason == "POLICY_DENIED"
        assert refusal.info.metadata["policy"] == "set_image_location"


def test_a_watcher_gets_only_the_changes_it_may_see_with_locations_hidden_as_get_image(
    stubs: dict[str, pb_grpc.ImageServiceStub],
) -> None:
    streams: dict[str, Any] = {
        persona: stubs[persona].WatchImages(pb.WatchImagesRequest(), timeout=30)
        for persona in ("stranger", "reader")
    }
    for stream in streams.values():
        next(stream)  # open
    private = make_image(stubs["member"], "active", urls=(URL_A,))
    public = make_image(
        stubs["admin"], "active", urls=(URL_A,), visibility=pb.IMAGE_VISIBILITY_PUBLIC, owner="p1"
    )
    last = public.revision

    def events_of(persona: str) -> list[pb.ImageEvent]:
        seen: list[pb.ImageEvent] = []
        for response in streams[persona]:
            seen += response.events
            if response.revision >= last:
                break
        return seen

    stranger = events_of("stranger")
    assert {e.image.id for e in stranger} == {public.id}
    assert all(not e.image.locations and e.image.locations_hidden for e in stranger)
    reader = events_of("reader")
    assert {e.image.id for e in reader} == {private.id, public.id}
    assert [loc.url for loc in reader[-1].image.locations] == [URL_A]
    for stream in streams.values():
        stream.cancel()
    anonymous: Any = stubs["anonymous"].WatchImages(pb.WatchImagesRequest())
    refusal = refusal_of(lambda: next(anonymous))
    assert refusal.code == grpc.StatusCode.UNAUTHENTICATED


def test_an_image_made_private_ends_its_events_for_a_watcher_that_may_no_longer_see_it(
    database_url: str, tmp_path: pathlib.Path
) -> None:
    # No RPC changes visibility yet (UpdateImage will), so the change is committed the way
    # a replica commits every change: through the store, with its change log entry.
    with start_secured(database_url, tmp_path, watch_progress_seconds=0.5) as secured:
        admin, member = secured.stub("admin"), secured.stub("member")
        image = make_image(admin, "active", visibility=pb.IMAGE_VISIBILITY_PUBLIC, owner="p1")
        streams: dict[str, Any] = {
            persona: secured.stub(persona).WatchImages(
                pb.WatchImagesRequest(start_revision=image.revision), timeout=30
            )
            for persona in ("stranger", "reader")
        }
        for stream in streams.values():
            next(stream)  # open
        seen = member.AddLocation(
            pb.AddLocationRequest(image_id=image.id, location=location("s3://bucket/b.img"))
        ).image
        made_private = _make_private(database_url, image.id)
        unseen = member.AddLocation(
            pb.AddLocationRequest(image_id=image.id, location=location("s3://bucket/c.img"))
        ).image
        assert unseen.revision > made_private > seen.revision

        def revisions_seen(persona: str) -> list[int]:
            found: list[int] = []
            for response in streams[persona]:
                found += [event.revision for event in response.events]
                if response.revision >= unseen.revision:
                    return found
            raise AssertionError(f"{persona}'s stream ended")

        assert revisions_seen("reader") == [seen.revision, made_private, unseen.revision]
        assert revisions_seen("stranger") == [seen.revision]
        for stream in streams.values():
            stream.cancel()


def _make_private(database_url: str, image_id: str) -> int:
    """Make the image private, as a write of any replica commits; its store revision."""
    store = SqlStore(database_url)
    try:
        with store.unit_of_work(for_write=True) as uow:
            current = uow.images.get(image_id)
            assert current is not None
            now = datetime.datetime.now(datetime.UTC)
            revision = current.revision + 1
            private = dataclasses.replace(
                current, visibility=Visibility.PRIVATE, revision=revision, updated_at=now
            )
            assert uow.images.save(current, private)
            change = Change(revision=0, type=ChangeType.UPDATED, image=private, commit_time=now)
            return uow.commit_change(change, request_log_id=None)
    finally:
        store.dispose()
