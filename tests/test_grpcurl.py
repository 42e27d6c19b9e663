"""Operators' view: the real grpcurl binary against a running server, via reflection."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import grpc

from imageloc.v1 import image_service_pb2_grpc as pb_grpc

from support import make_image

GRPCURL = pathlib.Path(sys.executable).with_name("grpcurl")
EXIT_FAILED_PRECONDITION = 64 + grpc.StatusCode.FAILED_PRECONDITION.value[0]


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GRPCURL), "-plaintext", *command], capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip


def test_list_shows_the_service_and_health(target: str) -> None:
    result = run(target, "list")
    assert result.returncode == 0, result.stderr
    assert {"imageloc.v1.ImageService", "grpc.health.v1.Health"} <= set(result.stdout.split())


def test_describe_shows_every_rpc_with_its_comment(target: str) -> None:
    result = run(target, "describe", "imageloc.v1.ImageService")
    assert result.returncode == 0, result.stderr
    for rpc in ("CreateImage", "AddLocation", "RemoveLocation", "ReplaceLocation"):
        assert f"rpc {rpc} " in result.stdout
    described = run(target, "describe", "imageloc.v1.RemoveLocationRequest")
    assert "oneof target" in described.stdout


def test_health_check_is_serving(target: str) -> None:
    result = run(target, "grpc.health.v1.Health/Check")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"status": "SERVING"}


def test_a_call_with_json_data(target: str) -> None:
    created = run(
        "-d", json.dumps({"name": "cirros", "disk_format": "qcow2", "container_format": "bare"}),
        target, "imageloc.v1.ImageService/CreateImage",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    image = json.loads(created.stdout)["image"]
    assert image["status"] == "IMAGE_STATUS_QUEUED"
    added = run(
        "-d", json.dumps({"image_id": image["id"], "location": {
            "url": "https://store.example/cirros.img", "metadata": {"store": "web"}}}),
        target, "imageloc.v1.ImageService/AddLocation",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    active = json.loads(added.stdout)["image"]
    assert active["status"] == "IMAGE_STATUS_ACTIVE"
    assert active["locations"] == [
        {"url": "https://store.example/cirros.img", "metadata": {"store": "web"}}
    ]


def test_a_refused_call_shows_failed_precondition_and_its_details(
    target: str, stub: pb_grpc.ImageServiceStub
) -> None:
    image = make_image(stub, "saving")
    request = json.dumps({"image_id": image.id, "index": 0})
    plain = run("-d", request, target, "imageloc.v1.ImageService/RemoveLocation")
    assert plain.returncode == EXIT_FAILED_PRECONDITION
    assert "Code: FailedPrecondition" in plain.stderr
    assert '"reason":"IMAGE_STATUS_CONFLICT"' in plain.stderr
    assert '"httpStatus":"409"' in plain.stderr
    structured = run(
        "-format-error", "-d", request, target, "imageloc.v1.ImageService/RemoveLocation"
    )
    assert structured.returncode == EXIT_FAILED_PRECONDITION
    status = json.loads(structured.stderr[structured.stderr.index("{") :])
    assert status["code"] == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    info = next(d for d in status["details"] if d["@type"].endswith("google.rpc.ErrorInfo"))
    assert info["reason"] == "IMAGE_STATUS_CONFLICT"
    assert info["metadata"]["imageStatus"] == "saving"
    assert info["metadata"]["httpStatus"] == "409"
    kinds = {d["@type"].rsplit(".", 1)[-1] for d in status["details"]}
    assert kinds == {"ErrorInfo", "PreconditionFailure"}


def test_watch_images_streams_the_changes_of_an_image(
    target: str, stub: pb_grpc.ImageServiceStub
) -> None:
    image = make_image(stub, "active")
    start = image.revision - 1  # the last change (its locations) comes first
    watched = run(
        "-max-time", "2", "-d", json.dumps({"image_ids": [image.id], "start_revision": start}),
        target, "imageloc.v1.ImageService/WatchImages",
    )  # fmt: skip
    # The stream stays open until -max-time ends it; what it printed is the stream.
    assert "DeadlineExceeded" in watched.stderr, watched.stderr
    decoder = json.JSONDecoder()
    text, responses = watched.stdout.strip(), []
    while text:
        response, end = decoder.raw_decode(text)
        responses.append(response)
        text = text[end:].strip()
    events = [event for response in responses for event in response.get("events", [])]
    assert [(e["revision"], e["type"]) for e in events] == [
        (str(image.revision), "IMAGE_EVENT_TYPE_UPDATED")
    ]
    assert events[0]["image"]["status"] == "IMAGE_STATUS_ACTIVE"
