"""The Glance Image API v2 endpoint over plain HTTP: routes, documents, errors, the rules' codes.

The real clients' runs are in tests/test_glance_clients.py; this pins the wire itself.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import pathlib
import re
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import jsonschema
import pytest

from imageloc.server.app import build_server
from imageloc.server.config import Settings
from imageloc.v1 import image_service_pb2_grpc as pb_grpc

from signing import Issuer
from support import make_image, migrate

PATCH_TYPE = "application/openstack-images-v2.1-json-patch"
ERRORS_DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "errors.md"


@dataclasses.dataclass
class Answer:
    status: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


class Glance:
    """Requests to the endpoint on one connection; target is the same server's gRPC address."""

    def __init__(self, port: int, target: str) -> None:
        self.port = port
        self.target = target

    def request(
        self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None
    ) -> Answer:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        sent = {"X-Auth-Token": "anything", "Accept": "application/json", **(headers or {})}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        connection.request(method, path, body=data, headers=sent)
        response = connection.getresponse()
        text = response.read().decode()
        connection.close()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, text)

    def create(self, **fields: Any) -> dict[str, Any]:
        answer = self.request(
            "POST", "/v2/images", {"disk_format": "raw", "container_format": "bare", **fields}
        )
        assert answer.status == 201, answer.text
        created: dict[str, Any] = answer.json()
        return created

    def patch(self, image_id: str, *operations: dict[str, Any], **headers: str) -> Answer:
        return self.request(
            "PATCH",
            f"/v2/images/{image_id}",
            list(operations),
            headers={"Content-Type": PATCH_TYPE, **headers},
        )

    def show_as(self, path: str, headers: dict[str, str]) -> dict[str, Any]:
        answer = self.request("GET", path, headers=headers)
        assert answer.status == 200, answer.text
        shown: dict[str, Any] = answer.json()
        return shown

    def show(self, image_id: str) -> dict[str, Any]:
        answer = self.request("GET", f"/v2/images/{image_id}")
        assert answer.status == 200, answer.text
        shown: dict[str, Any] = answer.json()
        return shown


@pytest.fixture
def glance(database_url: str) -> Iterator[Glance]:
    migrate(database_url)
    settings = Settings(
        listen="127.0.0.1:0",
        database_url=database_url,
        glance_listen="127.0.0.1:0",
        delayed_delete=True,
    )
    server = build_server(settings)
    server.start()
    assert server.glance is not None
    yield Glance(server.glance.port, f"127.0.0.1:{server.port}")
    server.stop(None)


def add(url: str, **metadata: str) -> dict[str, Any]:
    return {"op": "add", "path": "/locations/-", "value": {"url": url, "metadata": metadata}}


def active(glance: Glance, *urls: str) -> dict[str, Any]:
    image = glance.create(name="a")
    answer = glance.patch(image["id"], *(add(u) for u in urls or ["https://s/a.img"]))
    assert answer.status == 200, answer.text
    patched: dict[str, Any] = answer.json()
    return patched


def test_discovery_answers_as_glance_does_without_a_token(glance: Glance) -> None:
    root = glance.request("GET", "/", headers={"X-Auth-Token": ""})
    assert root.status == 300
    versions = root.json()["versions"]
    current = [v for v in versions if v["status"] == "CURRENT"]
    assert [v["id"] for v in current] == ["v2.17"]
    assert current[0]["links"] == [{"rel": "self", "href": f"http://127.0.0.1:{glance.port}/v2/"}]
    assert glance.request("GET", "/versions").status == 200
    redirect = glance.request("GET", "/v2")
    assert redirect.status == 302
    assert redirect.headers["location"].endswith("/v2/")
    assert glance.request("GET", "/v2/").status == 404


def test_every_image_document_validates_against_glance_33s_schema(glance: Glance) -> None:
    schema = glance.request("GET", "/v2/schemas/image").json()
    assert schema["name"] == "image"
    queued = glance.create(name="q", tags=["t"], hw_disk_bus="scsi", min_ram=64)
    located = active(glance, "https://s/x.img", "rbd://f/p/i/s")
    for document in (queued, located, glance.show(located["id"])):
        jsonschema.validate(document, schema)
    assert "direct_url" not in queued
    assert queued["locations"] == []
    assert (queued["size"], queued["checksum"], queued["hw_disk_bus"]) == (None, None, "scsi")
    assert located["direct_url"] == "https://s/x.img"
    assert located["locations"][1] == {"url": "rbd://f/p/i/s", "metadata": {}}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", located["created_at"])
    listed = glance.request("GET", "/v2/images").json()
    jsonschema.validate(listed, glance.request("GET", "/v2/schemas/images").json())


def test_create_refuses_read_only_and_reserved_attributes_as_glance_does(glance: Glance) -> None:
    status = glance.request("POST", "/v2/images", {"name": "x", "status": "active"})
    assert status.status == 403
    assert "Attribute 'status' is read-only." in status.json()["message"]
    locations = glance.request("POST", "/v2/images", {"locations": []})
    assert locations.status == 403
    assert "Attribute 'locations' is reserved." in locations.json()["message"]
    not_a_string = glance.request("POST", "/v2/images", {"my_int_prop": 5})
    assert not_a_string.status == 400
    image = glance.create(name="x")
    assert image["visibility"] == "shared"  # Glance's default on create; gRPC's is private
    again = glance.request("POST", "/v2/images", {"id": image["id"]})
    assert again.status == 409
    assert f"Image ID {image['id']} already exists!" in again.json()["message"]


def test_list_pages_with_limit_marker_and_a_relative_next(glance: Glance) -> None:
    ids = {glance.create(name=f"n{i}")["id"] for i in range(5)}
    seen: list[str] = []
    path = "/v2/images?limit=2&sort_key=name&sort_dir=asc"
    while path:
        page = glance.request("GET", path).json()
        seen += [image["name"] for image in page["images"]]
        path = page.get("next", "")
        assert not path or path.startswith("/v2/images?")
    assert seen == [f"n{i}" for i in range(5)]
    assert {i["id"] for i in glance.request("GET", "/v2/images?limit=1000").json()["images"]} >= ids
    unknown = glance.request("GET", f"/v2/images?marker={uuid.uuid4()}")
    assert unknown.status == 400
    assert "No image found with ID" in unknown.json()["message"]
    assert glance.request("GET", "/v2/images?limit=0").json()["images"] == []
    by_sort = glance.request("GET", "/v2/images?sort=name:desc").json()["images"]
    assert [i["name"] for i in by_sort[:2]] == ["n4", "n3"]


def test_list_filters_by_property_tag_and_hidden(glance: Glance) -> None:
    glance.create(name="scsi", hw_disk_bus="scsi", tags=["gold"])
    glance.create(name="ide", hw_disk_bus="ide")
    glance.create(name="hidden", os_hidden=True)

    def names(query: str) -> list[str]:
        return [i["name"] for i in glance.request("GET", f"/v2/images?{query}").json()["images"]]

    assert names("hw_disk_bus=scsi") == ["scsi"]
    assert names("tag=gold") == ["scsi"]
    assert "hidden" not in names("")
    assert names("os_hidden=True") == ["hidden"]
    assert glance.request("GET", "/v2/images?checksum=x").status == 400


def test_a_patch_document_is_applied_whole_or_not_at_all(glance: Glance) -> None:
    image = active(glance, "https://s/a.img", "https://s/b.img")
    failing = glance.patch(
        image["id"],
        {"op": "replace", "path": "/name", "value": "renamed"},
        {"op": "remove", "path": "/locations/0"},
        {
            "op": "add",
            "path": "/locations/-",
            "value": {"url": "file:///etc/passwd", "metadata": {}},
        },
    )
    assert failing.status == 400
    after = glance.show(image["id"])
    assert after["name"] == "a"
    assert [loc["url"] for loc in after["locations"]] == ["https://s/a.img", "https://s/b.img"]
    ok = glance.patch(
        image["id"],
        {"op": "replace", "path": "/name", "value": "renamed"},
        {"op": "add", "path": "/hw_disk_bus", "value": "scsi"},
        {"op": "remove", "path": "/locations/0"},
        {"op": "replace", "path": "/tags", "value": ["x", "y"]},
    )
    assert ok.status == 200, ok.text
    body = ok.json()
    assert (body["name"], body["hw_disk_bus"], body["tags"]) == ("renamed", "scsi", ["x", "y"])
    assert [loc["url"] for loc in body["locations"]] == ["https://s/b.img"]
    assert glance.show(image["id"]) == body


def test_patch_refuses_read_only_paths_deep_pointers_and_other_media_types(
    glance: Glance,
) -> None:
    image = glance.create(name="x")
    for path in ("/status", "/owner", "/size", "/checksum", "/id"):
        answer = glance.patch(image["id"], {"op": "replace", "path": path, "value": "v"})
        assert answer.status == 403, (path, answer.text)
    deep = glance.patch(image["id"], {"op": "add", "path": "/locations/0/metadata/k", "value": "v"})
    assert deep.status == 400
    assert "Invalid JSON pointer for this resource: '/locations/0/metadata/k'" in deep.text
    wrong = glance.request(
        "PATCH", f"/v2/images/{image['id']}", [], headers={"Content-Type": "application/json"}
    )
    assert wrong.status == 415
    old_style = glance.request(
        "PATCH",
        f"/v2/images/{image['id']}",
        [{"replace": "/name", "value": "v20"}],
        headers={"Content-Type": "application/openstack-images-v2.0-json-patch"},
    )
    assert old_style.status == 200
    assert old_style.json()["name"] == "v20"


def _documented(reason: str, row_mentions: str) -> int:
    """The HTTP status docs/errors.md gives reason in the row whose case mentions row_mentions."""
    for line in ERRORS_DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 4 and cells[2] == reason and row_mentions in cells[0]:
            return int(cells[3])
    raise AssertionError(reason)


STATUSES = ["queued", "saving", "uploading", "importing", "active", "deactivated", "killed"]


@pytest.mark.parametrize("status", [*STATUSES, "deleted", "pending_delete"])
def test_the_location_rules_answer_glances_http_codes_in_every_status(
    glance: Glance, status: str
) -> None:
    """Each status reached the way a caller would; those HTTP has no call for, through gRPC."""
    urls = ("https://s/a.img", "https://s/b.img")

    def image_in(wanted: str) -> str:
        if wanted in STATUSES:
            with grpc.insecure_channel(glance.target) as channel:
                stub = pb_grpc.ImageServiceStub(channel)
                return make_image(stub, wanted, urls=urls).id
        image_id = str(active(glance, *urls)["id"])
        # With delayed delete an active image goes to pending_delete; one with no data
        # (here: deleted while queued) straight to deleted.
        if wanted == "deleted":
            image_id = str(glance.create(name="q")["id"])
        assert glance.request("DELETE", f"/v2/images/{image_id}").status == 204
        return image_id

    reordered: list[dict[str, Any]] = [{"url": u, "metadata": {}} for u in reversed(urls)]
    answers = (
        glance.patch(image_in(status), {"op": "remove", "path": "/locations/0"}),
        glance.patch(image_in(status), add("https://s/c.img")),
        glance.patch(image_in(status), {"op": "replace", "path": "/locations", "value": reordered}),
    )
    conflict = _documented("IMAGE_STATUS_CONFLICT", "RemoveLocation")
    assert conflict == 409
    expected = {
        "queued": (conflict, 200, 200),
        "active": (200, 200, 200),
        "deleted": (404, 404, 404),
        "pending_delete": (404, 404, 404),
    }.get(status, (conflict, conflict, conflict))
    assert tuple(a.status for a in answers) == expected, [a.text for a in answers]


def test_removing_the_last_location_is_webobs_403_with_glances_detail(glance: Glance) -> None:
    image = active(glance, "https://s/only.img")
    html_page = glance.patch(image["id"], {"op": "remove", "path": "/locations/0"}, Accept="*/*")
    assert html_page.status == 403
    assert html_page.headers["content-type"].startswith("text/html")
    assert (
        "Access was denied to this resource.<br /><br />\nCannot remove last location in the image."
        in html_page.text
    )


def test_error_bodies_take_the_shape_accept_asks_for_and_carry_a_request_id(
    glance: Glance,
) -> None:
    missing = f"/v2/images/{uuid.uuid4()}"
    page = glance.request("GET", missing, headers={"Accept": "*/*"})
    assert page.status == 404
    assert page.headers["content-type"].startswith("text/html")
    assert "<h1>404 Not Found</h1>" in page.text
    flat = glance.request("GET", missing, headers={"Accept": "application/json"}).json()
    assert flat["code"] == "404 Not Found"
    assert flat["title"] == "Not Found"
    assert flat["message"].startswith("No image found with ID")
    plain = glance.request("GET", missing, headers={"Accept": ""})
    assert plain.headers["content-type"].startswith("text/plain")
    assert plain.text.startswith("404 Not Found\n\nNo image found with ID")
    assert re.fullmatch(r"req-[0-9a-f-]{36}", page.headers["x-openstack-request-id"])
    given = f"req-{uuid.uuid4()}"
    echoed = glance.request("GET", "/v2/images", headers={"X-OpenStack-Request-ID": given})
    assert echoed.headers["x-openstack-request-id"] == given
    assert glance.request("GET", "/v2/images/not-a-uuid").status == 404


def test_empty_answers_carry_no_json_content_type(glance: Glance) -> None:
    image = active(glance)
    for method, path in (
        ("POST", f"/v2/images/{image['id']}/actions/deactivate"),
        ("POST", f"/v2/images/{image['id']}/actions/reactivate"),
        ("PUT", f"/v2/images/{image['id']}/tags/gold"),
        ("DELETE", f"/v2/images/{image['id']}/tags/gold"),
    ):
        answer = glance.request(method, path)
        assert answer.status == 204, (path, answer.text)
        assert answer.text == ""
        assert "json" not in answer.headers.get("content-type", "")
    assert glance.show(image["id"])["tags"] == []
    assert glance.request("DELETE", f"/v2/images/{image['id']}/tags/never").status == 404


def test_the_image_api_217_location_calls(glance: Glance) -> None:
    image = glance.create(name="q")
    sha256 = "a" * 64
    added = glance.request(
        "POST",
        f"/v2/images/{image['id']}/locations",
        {
            "url": "https://s/new.img",
            "validation_data": {"os_hash_algo": "sha256", "os_hash_value": sha256},
        },
    )
    assert added.status == 202
    assert added.text == ""
    shown = glance.show(image["id"])
    assert shown["status"] == "active"
    assert (shown["os_hash_algo"], shown["os_hash_value"]) == ("sha256", sha256)
    listed = glance.request("GET", f"/v2/images/{image['id']}/locations")
    assert listed.json() == [{"url": "https://s/new.img", "metadata": {}}]
    again = glance.request(
        "POST", f"/v2/images/{image['id']}/locations", {"url": "https://s/other.img"}
    )
    assert again.status == 409
    assert "It's not allowed to add locations if image status is active." in again.json()["message"]
    bad = glance.create(name="q2")
    algo = glance.request(
        "POST",
        f"/v2/images/{bad['id']}/locations",
        {
            "url": "https://s/x.img",
            "validation_data": {"os_hash_algo": "crc32", "os_hash_value": "00"},
        },
    )
    assert algo.status == 400
    for url in ("rbd://pool/image/snap", "file:///etc/passwd"):
        not_http = glance.request("POST", f"/v2/images/{bad['id']}/locations", {"url": url})
        assert not_http.status == _documented("HTTP_LOCATION_REQUIRED", "2.17") == 403
        assert (
            "http store must be enabled to use location API by normal user."
            in (not_http.json()["message"])
        )
    assert glance.show(bad["id"])["status"] == "queued"


def test_image_data_answers_501_saying_where_data_goes(glance: Glance) -> None:
    image = glance.create(name="x")
    for method, path in (
        ("PUT", f"/v2/images/{image['id']}/file"),
        ("GET", f"/v2/images/{image['id']}/file"),
        ("PUT", f"/v2/images/{image['id']}/stage"),
        ("POST", f"/v2/images/{image['id']}/import"),
    ):
        answer = glance.request(method, path)
        assert answer.status == 501, path
        assert "not image data" in answer.json()["message"]


def test_with_jwt_the_bearer_token_rides_in_x_auth_token_under_the_same_policies(
    database_url: str, tmp_path: pathlib.Path
) -> None:
    migrate(database_url)
    issuer = Issuer.create(tmp_path / "idp", issuer="imageloc-test", audience="imageloc")
    settings = Settings(
        listen="127.0.0.1:0",
        database_url=database_url,
        **issuer.trusted_by(),
        glance_listen="127.0.0.1:0",
    )
    server = build_server(settings)
    server.start()
    try:
        assert server.glance is not None
        glance = Glance(server.glance.port, f"127.0.0.1:{server.port}")

        def as_(project: str, *roles: str) -> dict[str, str]:
            return {"X-Auth-Token": issuer.token(project=project, roles=roles)}

        member, stranger = as_("p1", "member"), as_("p2", "member")
        assert glance.request("GET", "/versions", headers={"X-Auth-Token": ""}).status == 200
        anonymous = glance.request("GET", "/v2/images", headers={"X-Auth-Token": ""})
        assert anonymous.status == 401
        created = glance.request("POST", "/v2/images", {"name": "m"}, headers=member)
        assert created.status == 201
        image = created.json()
        assert image["owner"] == "p1"
        path = f"/v2/images/{image['id']}"
        # hidden: shared (Glance's default on create) with no members
        assert glance.request("GET", path, headers=stranger).status == 404
        public = glance.patch(
            image["id"], {"op": "replace", "path": "/visibility", "value": "public"}, **member
        )
        assert public.status == 403
        assert "publicize_image" in public.text or "public" in public.text
        theirs = glance.request(
            "POST", "/v2/images", {"name": "t", "owner": "p1"}, headers=stranger
        )
        assert theirs.status == 403
        owner = glance.patch(
            image["id"], {"op": "replace", "path": "/owner", "value": "p2"}, **member
        )
        assert owner.status == 403
        assert glance.show_as(path, member)["owner"] == "p1"
        # 2.17's add-location takes a URL other than http(s) from a service only (Nova, Cinder).
        rbd = {"url": "rbd://pool/image/snap"}
        refused = glance.request("POST", f"{path}/locations", rbd, headers=member)
        assert refused.status == 403
        queued = {"op": "replace", "path": "/disk_format", "value": "raw"}
        assert glance.patch(image["id"], queued, **member).status == 200
        queued = {"op": "replace", "path": "/container_format", "value": "bare"}
        assert glance.patch(image["id"], queued, **member).status == 200
        service = as_("p1", "member", "service")
        added = glance.request("POST", f"{path}/locations", rbd, headers=service)
        assert added.status == 202, added.text
        assert glance.show_as(path, member)["status"] == "active"
    finally:
        server.stop(None)
