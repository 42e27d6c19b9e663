"""The real Glance clients, unchanged, against a real server's Image API v2 endpoint.

The `glance` CLI of python-glanceclient 4.13 runs as a user runs it (its own process, stdin
closed, a HOME of its own); its library and openstacksdk 4.22 run in this process. What
they print, return and raise is what they do against Glance (the captures in
shared/reference/glance-rest-clients.md), down to the HTML-escaped refusals.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import re
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import grpc
import openstack
import openstack.connection
import pytest
from openstack import exceptions as sdk_errors

from imageloc.server.app import build_server
from imageloc.server.config import Settings
from imageloc.v1 import image_service_pb2_grpc as pb_grpc

from support import make_image, migrate

GLANCE = pathlib.Path(sys.executable).with_name("glance")
SHA256_OF_X = hashlib.sha256(b"x").hexdigest()


@dataclasses.dataclass
class Run:
    """One `glance` command's exit code and output."""

    code: int
    out: str
    err: str

    def table(self) -> dict[str, str]:
        """The `| Property | Value |` table the CLI prints for one image.

        A value wider than the column goes on in the next rows, under an empty name.
        """
        rows: dict[str, str] = {}
        name = ""
        for line in self.out.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|", 1)]
            if not line.startswith("|") or len(cells) != 2 or cells[0] == "Property":
                continue
            if cells[0]:
                name = cells[0]
                rows[name] = cells[1]
            else:
                rows[name] += " " + cells[1]
        return rows

    def ids(self) -> list[str]:
        """The ID column of `image-list`."""
        found = re.findall(r"^\| ([0-9a-f-]{36}) \|", self.out, flags=re.MULTILINE)
        return found


@dataclasses.dataclass
class Endpoint:
    """A server with the Glance endpoint on; target is its gRPC address."""

    url: str
    target: str
    home: pathlib.Path

    def glance(self, *arguments: str) -> Run:
        """The CLI with stdin closed (`<&-`), as the docs tell: otherwise create uploads it."""
        command = [
            str(GLANCE),
            "--os-image-url",
            self.url,
            "--os-auth-token",
            "anything",
            "--os-image-api-version",
            "2",
            *arguments,
        ]
        done = subprocess.run(
            ["sh", "-c", 'exec "$@" <&-', "sh", *command],
            capture_output=True,
            text=True,
            timeout=60,
            env={"HOME": str(self.home), "PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
            check=False,
        )
        return Run(done.returncode, done.stdout, done.stderr.strip())

    def ok(self, *arguments: str) -> Run:
        run = self.glance(*arguments)
        assert run.code == 0, run.err
        return run

    def refused(self, *arguments: str) -> str:
        """The message of a command that fails: Glance's CLI exits 1 for every HTTP error."""
        run = self.glance(*arguments)
        assert run.code == 1, (run.out, run.err)
        return run.err

    def image_in(self, status: str) -> str:
        """A new image in status, brought there through gRPC (HTTP has no call for some)."""
        with grpc.insecure_channel(self.target) as channel:
            urls = ("https://s/a.img", "https://s/b.img")
            return make_image(pb_grpc.ImageServiceStub(channel), status, urls=urls).id

    def sdk(self) -> Any:
        """openstacksdk's image proxy on the endpoint (typed Any: the SDK types it as v1 or v2)."""
        return openstack.connect(
            load_yaml_config=False,
            load_envvars=False,
            auth_type="admin_token",
            auth={"endpoint": f"{self.url}/v2", "token": "anything"},
        ).image


@pytest.fixture
def endpoint(
    database_url: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Endpoint]:
    migrate(database_url)
    settings = Settings(
        listen="127.0.0.1:0", database_url=database_url, glance_listen="127.0.0.1:0"
    )
    server = build_server(settings)
    server.start()
    assert server.glance is not None
    home = tmp_path / "home"
    home.mkdir()
    # openstacksdk takes an image name that is a local file's path for a file to upload.
    monkeypatch.chdir(home)
    yield Endpoint(f"http://127.0.0.1:{server.glance.port}", f"127.0.0.1:{server.port}", home)
    server.stop(None)


def _create(endpoint: Endpoint, *arguments: str) -> dict[str, str]:
    formats = ("--disk-format", "raw", "--container-format", "bare")
    return endpoint.ok("image-create", *formats, *arguments).table()


def test_glance_cli_creates_shows_lists_updates_and_deletes_images(endpoint: Endpoint) -> None:
    chosen = str(uuid.uuid4())
    created = _create(
        endpoint,
        *("--id", chosen, "--name", "cirros", "--property", "hw_disk_bus=scsi"),
        *("--tags", "t1", "--min-ram", "64"),
    )
    assert created["id"] == chosen
    assert (created["status"], created["visibility"], created["locations"]) == (
        "queued",
        "shared",
        "[]",
    )
    assert (created["hw_disk_bus"], created["tags"], created["min_ram"]) == ("scsi", '["t1"]', "64")
    assert created["virtual_size"] == "Not available"
    assert endpoint.ok("image-show", chosen).table() == created

    again = endpoint.refused("image-create", "--id", chosen)
    assert again == f"HTTP 409 Conflict: Image ID {chosen} already exists!"
    unknown = str(uuid.uuid4())
    assert endpoint.refused("image-show", unknown) == (
        f"HTTP 404 Not Found: No image found with ID {unknown}"
    )

    others = [_create(endpoint, "--name", name)["id"] for name in ("b", "a", "c")]
    assert endpoint.ok("image-list").ids() == [others[1], others[0], others[2], chosen]
    paged = endpoint.ok(
        "image-list", "--page-size", "1", "--sort-key", "name", "--sort-dir", "desc"
    )
    assert paged.ids() == [chosen, others[2], others[0], others[1]]
    assert endpoint.ok("image-list", "--limit", "2", "--page-size", "1").ids() == [
        others[1],
        others[0],
    ]
    assert endpoint.ok("image-list", "--property-filter", "hw_disk_bus=scsi").ids() == [chosen]
    assert endpoint.ok("image-list", "--tag", "t1", "--visibility", "shared").ids() == [chosen]
    assert endpoint.ok("image-list", "--sort", "name:desc,id").ids()[0] == chosen

    updated = endpoint.ok(
        "image-update",
        *("--name", "cirros-2", "--min-disk", "1", "--property", "os_distro=cirros"),
        *("--remove-property", "hw_disk_bus", "--protected", "True", chosen),
    ).table()
    assert (updated["name"], updated["min_disk"], updated["os_distro"]) == (
        "cirros-2",
        "1",
        "cirros",
    )
    assert "hw_disk_bus" not in updated
    assert updated["protected"] == "True"
    assert endpoint.refused("image-delete", chosen) == (
        f"You are not permitted to delete the image '{chosen}'."
    )
    endpoint.ok("image-update", "--protected", "False", chosen)
    assert endpoint.ok("image-delete", chosen).out == ""
    assert endpoint.refused("image-delete", chosen) == f"No image with an ID of '{chosen}' exists."
    assert chosen not in endpoint.ok("image-list").ids()


def test_glance_cli_location_commands_keep_the_rules_and_print_glances_refusals(
    endpoint: Endpoint,
) -> None:
    image_id = _create(endpoint, "--name", "located")["id"]
    first = endpoint.ok(
        "location-add", "--url", "https://s/a.img", "--metadata", '{"k": "v"}', image_id
    ).table()
    assert first["status"] == "active"
    assert json.loads(first["locations"]) == [{"url": "https://s/a.img", "metadata": {"k": "v"}}]
    assert first["direct_url"] == "https://s/a.img"
    assert endpoint.refused(
        "location-add", "--url", "https://s/a.img", "--metadata", '{"k": "v"}', image_id
    ) == ("HTTP 400 Bad Request: The location https://s/a.img already exists")
    endpoint.ok("location-add", "--url", "https://s/b.img", image_id)

    updated = endpoint.ok(
        "location-update", "--url", "https://s/b.img", "--metadata", '{"z": "1"}', image_id
    ).table()
    assert json.loads(updated["locations"]) == [
        {"url": "https://s/a.img", "metadata": {"k": "v"}},
        {"url": "https://s/b.img", "metadata": {"z": "1"}},
    ]
    hashed = endpoint.refused(
        "location-add",
        *("--url", "https://s/c.img", "--hash-algo", "sha256", "--hash-value", SHA256_OF_X),
        image_id,
    )
    assert hashed == (
        "HTTP 409 Conflict: New value(s) for os_hash_algo, os_hash_value may only be provided"
        " when image status is &#x27;queued&#x27;"
    )

    assert endpoint.ok("location-delete", "--url", "https://s/a.img", image_id).out == ""
    assert endpoint.refused("location-delete", "--url", "https://s/zz.img", image_id) == (
        "HTTP Unknown URL(s): ['https://s/zz.img']"
    )
    assert endpoint.refused("location-delete", "--url", "https://s/b.img", image_id) == (
        "HTTP 403 Forbidden: Access was denied to this resource.:"
        " Cannot remove last location in the image."
    )

    assert endpoint.ok("image-deactivate", image_id).out == ""
    assert endpoint.ok("image-deactivate", image_id).out == ""  # idempotent, as Glance
    assert endpoint.ok("image-show", image_id).table()["status"] == "deactivated"
    assert endpoint.refused("location-add", "--url", "https://s/d.img", image_id) == (
        "HTTP 409 Conflict: It&#x27;s not allowed to add locations if image status is deactivated."
    )
    endpoint.ok("image-reactivate", image_id)
    shown = endpoint.ok("image-show", image_id).table()
    assert shown["status"] == "active"
    assert json.loads(shown["locations"]) == [{"url": "https://s/b.img", "metadata": {"z": "1"}}]

    queued = _create(endpoint, "--name", "q")["id"]
    assert endpoint.refused("image-deactivate", queued) == (
        "HTTP 403 Forbidden: Not allowed to deactivate image in status &#x27;queued&#x27;"
    )


@pytest.mark.parametrize("status", ["saving", "uploading", "importing", "killed", "deactivated"])
def test_glance_cli_location_changes_outside_active_print_glances_409(
    endpoint: Endpoint, status: str
) -> None:
    image_id = endpoint.image_in(status)
    assert endpoint.refused("location-add", "--url", "https://s/new.img", image_id) == (
        f"HTTP 409 Conflict: It&#x27;s not allowed to add locations if image status is {status}."
    )
    if status == "deactivated":  # location-delete reads the list first: only then is there one
        assert endpoint.refused("location-delete", "--url", "https://s/a.img", image_id) == (
            "HTTP 409 Conflict: It&#x27;s not allowed to remove locations if image status is"
            " deactivated."
        )


def test_glance_add_location_and_the_librarys_location_calls_are_api_217(
    endpoint: Endpoint,
) -> None:
    image_id = _create(endpoint, "--name", "217")["id"]
    validation = json.dumps({"os_hash_algo": "sha256", "os_hash_value": SHA256_OF_X})
    shown = endpoint.ok(
        "add-location", "--url", "https://s/a.img", "--validation-data", validation, image_id
    ).table()
    assert shown["status"] == "active"
    assert (shown["os_hash_algo"], shown["os_hash_value"]) == ("sha256", SHA256_OF_X)
    assert endpoint.refused("add-location", "--url", "https://s/b.img", image_id) == (
        "HTTP 409 Conflict: It&#x27;s not allowed to add locations if image status is active."
    )
    queued = _create(endpoint, "--name", "file")["id"]
    assert endpoint.refused("add-location", "--url", "file:///etc/passwd", queued) == (
        "HTTP 403 Forbidden: http store must be enabled to use location API by normal user."
    )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import glanceclient
        from glanceclient import exc as glance_errors

        library = glanceclient.Client("2", endpoint=endpoint.url, token="anything")
    located: Any = library.images.get_image_locations(image_id)
    assert located == [{"url": "https://s/a.img", "metadata": {}}]
    other = _create(endpoint, "--name", "lib")["id"]
    library.images.add_image_location(other, "https://s/lib.img")
    assert library.images.get(other)["status"] == "active"
    with pytest.raises(glance_errors.HTTPNotFound):
        library.images.get_image_locations(str(uuid.uuid4()))


def test_openstacksdk_image_calls(endpoint: Endpoint) -> None:
    images = endpoint.sdk()
    image = images.create_image(
        "sdk-img", disk_format="raw", container_format="bare", tags=["sdk"], foo="bar"
    )
    assert (image.status, image.visibility, image.tags) == ("queued", "shared", ["sdk"])
    assert image.properties["foo"] == "bar"
    assert image.properties["owner_specified.openstack.object"] == "images/sdk-img"
    assert images.get_image(image.id).name == "sdk-img"
    assert images.find_image("sdk-img").id == image.id
    assert images.find_image(image.id).id == image.id
    assert images.find_image("no-such-image") is None
    with pytest.raises(sdk_errors.NotFoundException):
        images.get_image(str(uuid.uuid4()))

    more = [
        images.create_image(name, disk_format="raw", container_format="bare").id
        for name in ("sdk-b", "sdk-c")
    ]
    assert sorted(i.id for i in images.images(limit=1)) == sorted([image.id, *more])

    updated = images.update_image(image, name="sdk-img-b", min_ram=64, hw_disk_bus="scsi")
    assert (updated.name, updated.min_ram, updated.hw_disk_bus) == ("sdk-img-b", 64, "scsi")

    location = images.add_image_location(image, "https://s/sdk.img")
    assert location.url == "https://s/sdk.img"
    assert [(loc.url, loc.metadata) for loc in images.image_locations(image)] == [
        ("https://s/sdk.img", {})
    ]
    assert images.get_image(image.id).status == "active"
    with pytest.raises(sdk_errors.ConflictException) as refused:
        images.add_image_location(image, "https://s/sdk-2.img")
    assert "It&#x27;s not allowed to add locations if image status is active." in str(refused.value)
    current = images.get_image(image.id)
    both = [
        {"url": "https://s/sdk.img", "metadata": {}},
        {"url": "https://s/e.img", "metadata": {}},
    ]
    assert images.update_image(current, locations=both).locations == both

    images.deactivate_image(image)
    assert images.get_image(image.id).status == "deactivated"
    images.reactivate_image(image)
    assert images.get_image(image.id).status == "active"

    images.delete_image(image)
    with pytest.raises(sdk_errors.NotFoundException):
        images.get_image(image.id)
    images.delete_image(image)  # ignore_missing, as against Glance
    with pytest.raises(sdk_errors.NotFoundException):
        images.delete_image(image, ignore_missing=False)
