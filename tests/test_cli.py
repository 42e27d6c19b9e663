"""The `imageloc` command against a real server: output, --json, refusals, exit statuses."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from imageloc.client.cli import main
from imageloc.server.config import Settings

URL_A = "http://store.example/a"
URL_B = "http://store.example/b"
SHA512 = "ab" * 64


@pytest.fixture
def server_address(target: str) -> str:
    """A real imageloc server with SQLite in tmp_path (conftest's `target`)."""
    return target


class Cli:
    """Runs `imageloc --server ADDR ...` through main() and captures its output."""

    def __init__(self, server: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.server = server
        self.capsys = capsys

    def run(self, *args: str) -> tuple[int, str, str]:
        """Exit status, stdout and stderr of one command."""
        self.capsys.readouterr()
        status = main(["--server", self.server, *args])
        captured = self.capsys.readouterr()
        return status, captured.out, captured.err

    def ok(self, *args: str) -> str:
        """stdout of a command that must succeed."""
        status, out, err = self.run(*args)
        assert status == 0, err
        return out

    def json(self, *args: str) -> Any:
        """The parsed --json output of a command that must succeed."""
        return json.loads(self.ok("--json", *args))

    def create(self, *extra: str) -> str:
        """The id of a new queued image with both formats set."""
        image = self.json(
            "image", "create", "--name", "cirros", "--disk-format", "raw",
            "--container-format", "bare", *extra,
        )  # fmt: skip
        image_id: str = image["id"]
        return image_id


@pytest.fixture
def cli(server_address: str, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(server_address, capsys)


def fields(text: str) -> dict[str, str]:
    """The "field: value" lines of an image block (locations lines left out)."""
    pairs = (line.split(": ", 1) for line in text.splitlines() if not line.startswith(" "))
    return {pair[0]: pair[1] if len(pair) > 1 else "" for pair in pairs}


def test_create_show_and_add_location_print_image_blocks(cli: Cli) -> None:
    created = cli.ok(
        "image", "create", "--name", "cirros", "--disk-format", "qcow2",
        "--container-format", "bare", "--visibility", "public",
    )  # fmt: skip
    image = fields(created)
    assert image["name"] == "cirros"
    assert image["status"] == "queued"
    assert image["visibility"] == "public"
    assert "locations: (none)" in created

    added = cli.ok(
        "location", "add", image["id"], URL_A, "--metadata", '{"store": "fast"}',
        "--os-hash-algo", "sha512", "--os-hash-value", SHA512,
    )  # fmt: skip
    assert fields(added)["status"] == "active"
    assert f'  0: {URL_A}  {{"store": "fast"}}' in added.splitlines()

    shown = cli.ok("image", "show", image["id"])
    assert fields(shown)["os_hash_value"] == SHA512
    assert f"  0: {URL_A}" in shown


def test_json_output_is_the_image_message(cli: Cli) -> None:
    image_id = cli.create("--protected")
    image = cli.json("image", "show", image_id)
    assert image["id"] == image_id
    assert image["status"] == "IMAGE_STATUS_QUEUED"
    assert image["disk_format"] == "raw"
    assert image["protected"] is True


def test_global_options_may_follow_the_verb(cli: Cli) -> None:
    image_id = cli.create()
    out = cli.ok("image", "show", image_id, "--json", "--timeout", "5")
    assert json.loads(out)["id"] == image_id


def test_image_list_prints_one_line_per_image_and_honours_limit(cli: Cli) -> None:
    ids = [cli.create() for _ in range(3)]
    lines = cli.ok("image", "list", "--page-size", "1").splitlines()
    assert [line.split()[0] for line in lines] == list(reversed(ids))
    assert lines[0].split()[1:] == ["queued", "cirros"]
    assert len(cli.ok("image", "list", "--limit", "2").splitlines()) == 2


def test_image_list_json_is_an_array_filtered_by_status(cli: Cli) -> None:
    cli.create()
    active_id = cli.create()
    cli.ok("location", "replace", active_id, "--location", URL_A)
    listed = cli.json("image", "list", "--status", "active")
    assert [image["id"] for image in listed] == [active_id]


def test_lifecycle_verbs_move_the_status(cli: Cli) -> None:
    image_id = cli.create()
    assert fields(cli.ok("image", "begin-upload", image_id))["status"] == "saving"
    completed = cli.ok(
        "image", "complete-upload", image_id, "--url", URL_A, "--size", "10",
        "--metadata", '{"a": "b"}', "--os-hash-algo", "sha512", "--os-hash-value", SHA512,
    )  # fmt: skip
    assert fields(completed)["status"] == "active"
    assert fields(completed)["size"] == "10"
    assert fields(cli.ok("image", "deactivate", image_id))["status"] == "deactivated"
    etag = fields(cli.ok("image", "reactivate", image_id))["etag"]
    assert fields(cli.ok("image", "delete", image_id, "--etag", etag))["status"] == "deleted"

    staged_id = cli.create()
    assert fields(cli.ok("image", "stage", staged_id))["status"] == "uploading"
    assert fields(cli.ok("image", "begin-import", staged_id))["status"] == "importing"

    failed_id = cli.create()
    cli.ok("image", "begin-upload", failed_id)
    assert fields(cli.ok("image", "fail-upload", failed_id))["status"] == "killed"


def test_location_verbs_replace_list_and_remove(cli: Cli) -> None:
    image_id = cli.create()
    locations = json.dumps([URL_A, {"url": URL_B, "metadata": {"k": "v"}}])
    cli.ok("location", "replace", image_id, "--locations-json", locations)
    assert cli.ok("location", "list", image_id).splitlines() == [
        f"0: {URL_A}",
        f'1: {URL_B}  {{"k": "v"}}',
    ]
    cli.ok("location", "remove", image_id, "--url", URL_A)
    listed = cli.json("location", "list", image_id)
    assert listed == [{"url": URL_B, "metadata": {"k": "v"}}]


def test_refused_remove_on_a_saving_image_prints_the_refusal(cli: Cli) -> None:
    image_id = cli.create()
    cli.ok("image", "begin-upload", image_id)
    status, out, err = cli.run("location", "remove", image_id, "--index", "0")
    assert status == 1
    assert out == ""
    first, *rest = err.splitlines()
    assert first.startswith("error: FAILED_PRECONDITION IMAGE_STATUS_CONFLICT (HTTP 409): ")
    assert "  imageStatus: saving" in rest
    assert f"  imageId: {image_id}" in rest


def test_refusal_with_json_is_a_json_object_on_stderr(cli: Cli) -> None:
    image_id = cli.create()
    cli.ok("image", "begin-upload", image_id)
    status, _, err = cli.run("--json", "location", "remove", image_id, "--url", URL_A)
    assert status == 1
    refusal = json.loads(err)
    assert refusal["code"] == "FAILED_PRECONDITION"
    assert refusal["reason"] == "IMAGE_STATUS_CONFLICT"
    assert refusal["httpStatus"] == 409
    assert refusal["metadata"]["imageStatus"] == "saving"
    assert refusal["message"]


def test_an_unreachable_server_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    status = main(["--server", address, "--timeout", "2", "image", "show", str(uuid.uuid4())])
    assert status == 1
    assert f"cannot reach the imageloc server at {address}" in capsys.readouterr().err


@pytest.mark.parametrize("metadata", ["{not json", "[1, 2]"])
def test_bad_metadata_json_is_a_usage_error(cli: Cli, metadata: str) -> None:
    status, _, err = cli.run("location", "add", str(uuid.uuid4()), URL_A, "--metadata", metadata)
    assert status == 2
    assert "--metadata" in err


@pytest.mark.parametrize(
    "args",
    [
        ["location", "remove", "some-id"],
        ["location", "remove", "some-id", "--index", "0", "--url", URL_A],
        ["location", "replace", "some-id"],
        ["image", "list", "--status", "ready"],
        ["image", "list", "--limit", "-1"],
        ["image"],
    ],
    ids=["no-target", "two-targets", "no-locations", "unknown-status", "negative-limit", "no-verb"],
)
def test_bad_usage_exits_2(cli: Cli, args: list[str]) -> None:
    assert cli.run(*args)[0] == 2


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["serve"],
        ["image"],
        *(["image", verb] for verb in ("create", "show", "list", "delete", "complete-upload")),
        *(["image", verb] for verb in ("begin-upload", "fail-upload", "stage", "begin-import")),
        ["image", "deactivate"],
        ["image", "reactivate"],
        ["location"],
        *(["location", verb] for verb in ("list", "add", "remove", "replace")),
    ],
    ids=" ".join,
)
def test_every_help_prints_and_exits_0(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*command, "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: imageloc")


def test_serve_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[Settings] = []
    monkeypatch.setattr("imageloc.server.app.serve", served.append)
    monkeypatch.setenv("IMAGELOC_LISTEN", "127.0.0.1:7000")
    monkeypatch.setenv("IMAGELOC_LOCATION_QUOTA", "3")
    monkeypatch.setenv("IMAGELOC_DELAYED_DELETE", "true")
    status = main(
        ["serve", "--listen", "127.0.0.1:7001", "--no-delayed-delete",
         "--location-schemes", "http, RBD", "--database", "sqlite:///x.db"]
    )  # fmt: skip
    assert status == 0
    (settings,) = served
    assert settings.listen == "127.0.0.1:7001"
    assert settings.location_quota == 3
    assert settings.delayed_delete is False
    assert settings.location_schemes == frozenset({"http", "rbd"})
    assert settings.database_url == "sqlite:///x.db"


def test_console_script_shows_not_found_for_an_unknown_image(server_address: str) -> None:
    script = Path(sys.executable).parent / "imageloc"
    result = subprocess.run(
        [str(script), "--server", server_address, "image", "show", str(uuid.uuid4())],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "IMAGE_NOT_FOUND" in result.stderr
    assert "(HTTP 404)" in result.stderr


def test_image_wait_and_watch_against_the_server(cli: Cli) -> None:
    image_id = cli.create()
    status, _, err = cli.run("image", "wait", image_id, "--status", "active", "--timeout", "0.5")
    assert status == 1
    assert "WAIT_TIMEOUT" in err
    cli.ok("location", "add", image_id, "https://store.example/w.img")
    assert fields(cli.ok("image", "wait", image_id, "--status", "active"))["status"] == "active"
    events = cli.ok("--json", "image", "watch", image_id, "--from-revision", "1", "--count", "1")
    (event,) = [json.loads(line) for line in events.splitlines()]
    assert event["type"] == "IMAGE_EVENT_TYPE_UPDATED"
    assert event["image"]["status"] == "IMAGE_STATUS_ACTIVE"
    failed = cli.create()
    cli.ok("image", "begin-upload", failed)
    cli.ok("image", "fail-upload", failed)
    status, _, err = cli.run("image", "wait", failed, "--status", "active", "--timeout", "5")
    assert status == 1  # killed never becomes active: said at once, not at the timeout
    assert "STATUS_UNREACHABLE" in err


def test_image_update_changes_only_the_fields_given_and_needs_one(target: str) -> None:
    from imageloc.client import ImageClient

    with ImageClient(target) as client:
        image = client.create_image("u", tags=["a"], properties={"hw": "scsi", "keep": "1"})
        changed = client.update_image(
            image.id, name="v", properties={"os": "x"}, remove_properties=["hw"]
        )
        assert (changed.name, list(changed.tags)) == ("v", ["a"])
        assert dict(changed.properties) == {"keep": "1", "os": "x"}
    assert main(["--server", target, "image", "update", image.id]) == 2
    assert main(["--server", target, "image", "create", "--name", "z", "--property", "bad"]) == 2
