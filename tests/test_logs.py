"""The server log as an operator reads it: text as before, or one JSON object a line.

Real `imageloc serve` processes for what a whole run writes (start, calls, refusals, audit,
gRPC's own lines, shutdown); the formatter, the audit line and the time in-process.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import logging
import os
import pathlib
import re
import subprocess
import sys
import time
import types
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import grpc
import pytest

from imageloc.server.auth import redact
from imageloc.server.auth.audit import AuditLog
from imageloc.server.domain.access import Principal
from imageloc.server.observability import logs
from imageloc.v1 import image_service_pb2 as pb
from imageloc.v1 import image_service_pb2_grpc as pb_grpc

from certs import make_pki
from processes import IMAGELOC, START_SECONDS, TEST_ENV, ServerProcess, free_port
from signing import Issuer
from support import make_image, refusal_of

SECRET = "s3cret"
SECRET_URL = f"https://user:{SECRET}@store.example/x.img"
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
#: The JSON log's time and the audit log's: ISO 8601, UTC, milliseconds.
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00")
#: Every key an audit line had before it joined the JSON log's format.
AUDIT_KEYS = [
    "time", "audit", "rpc", "sub", "project", "serviceIdentity", "authenticated", "imageId",
    "code", "reason", "requestId",
]  # fmt: skip


# A server process whose whole standard error is kept in a file.


@contextlib.contextmanager
def logged_server(
    directory: pathlib.Path, *flags: str, env: Mapping[str, str] | None = None
) -> Iterator[tuple[ServerProcess, pathlib.Path]]:
    """`imageloc serve FLAGS` on a free port and a fresh SQLite file, and its stderr's path.

    Stopped with SIGTERM on exit; it must end with status 0.
    """
    target = f"127.0.0.1:{free_port()}"
    stderr_path = directory / "stderr.log"
    clean = {name: value for name, value in os.environ.items() if not name.startswith("IMAGELOC_")}
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [str(IMAGELOC), "serve", "--listen", target,
             "--database", f"sqlite:///{directory / 'imageloc.db'}", *flags],
            env={**clean, **TEST_ENV, **(env or {})},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    server = ServerProcess(process, target, stderr_path.open("rb"))
    try:
        yield server, stderr_path
    finally:
        status = server.stop()
        assert status == 0, stderr_path.read_text()


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of text as a JSON object with a time, a level and a message."""
    entries = []
    for line in text.splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        assert TIME.fullmatch(entry["time"]), line
        assert entry["level"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}, line
        assert isinstance(entry["message"], str), line
        entries.append(entry)
    return entries


def wait_for_line(path: pathlib.Path, start: str) -> None:
    """Return once a line of the JSON log at path has a message starting with start."""
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        text = path.read_text()
        whole = text[: text.rfind("\n") + 1]  # a line still being written is left for later
        if any(json.loads(line)["message"].startswith(start) for line in whole.splitlines()):
            return
        time.sleep(0.05)
    raise AssertionError(f"no {start!r} line\n{path.read_text()}")


def with_message(entries: list[dict[str, Any]], start: str) -> list[dict[str, Any]]:
    return [entry for entry in entries if entry["message"].startswith(start)]


# 1. A whole run of a JSON server: start, calls, refusals, audit, shutdown.


@pytest.mark.parametrize("asked_by", ["--log-format", "IMAGELOC_LOG_FORMAT"])
def test_every_line_a_json_server_writes_from_start_to_exit_is_a_json_object(
    tmp_path: pathlib.Path, asked_by: str
) -> None:
    flags = ["--log-format", "json"] if asked_by == "--log-format" else []
    env = {"IMAGELOC_LOG_FORMAT": "json"} if asked_by == "IMAGELOC_LOG_FORMAT" else {}
    request_id, removal_id = str(uuid.uuid4()), str(uuid.uuid4())
    with logged_server(tmp_path, "--auth", "none", *flags, env=env) as (server, stderr):
        server.wait_serving()
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.ImageServiceStub(channel)
            image = make_image(stub, "active", urls=(SECRET_URL,), request_id=request_id)
            last = refusal_of(
                lambda: stub.RemoveLocation(
                    pb.RemoveLocationRequest(
                        image_id=image.id, url=SECRET_URL, request_id=removal_id
                    )
                )
            )
            unknown = refusal_of(lambda: stub.GetImage(pb.GetImageRequest(image_id=UNKNOWN_ID)))
    assert (last.info.reason, unknown.info.reason) == ("LAST_LOCATION", "IMAGE_NOT_FOUND")
    text = stderr.read_text()
    entries = json_lines(text)
    assert SECRET not in text

    [serving] = with_message(entries, "imageloc serving on")
    assert (serving["level"], serving["logger"]) == ("INFO", "imageloc.server")
    assert with_message(entries, "received SIGTERM")
    assert entries[-1]["message"] == "imageloc stopped"

    [removal] = with_message(entries, "refused RemoveLocation")
    assert removal["level"] == "INFO"
    assert removal["rpc"] == "RemoveLocation"
    assert removal["imageId"] == image.id
    assert removal["requestId"] == removal_id
    assert (removal["code"], removal["reason"]) == ("FAILED_PRECONDITION", "LAST_LOCATION")
    [lookup] = with_message(entries, "refused GetImage")
    assert (lookup["level"], lookup["rpc"], lookup["imageId"]) == ("INFO", "GetImage", UNKNOWN_ID)
    assert (lookup["code"], lookup["reason"]) == ("NOT_FOUND", "IMAGE_NOT_FOUND")

    audited = [entry for entry in entries if entry.get("audit") == "imageloc"]
    assert [entry["rpc"] for entry in audited] == [
        "CreateImage",
        "ReplaceLocation",
        "RemoveLocation",
    ]
    for entry in audited:
        assert set(AUDIT_KEYS) <= entry.keys()
        assert (entry["level"], entry["logger"]) == ("INFO", "imageloc.audit")
    assert audited[0]["message"] == "audit CreateImage OK"
    assert audited[0]["requestId"] == request_id
    assert audited[-1]["message"] == "audit RemoveLocation FAILED_PRECONDITION LAST_LOCATION"
    assert (audited[-1]["code"], audited[-1]["reason"]) == ("FAILED_PRECONDITION", "LAST_LOCATION")


def test_a_refused_token_and_a_good_one_appear_in_no_line(tmp_path: pathlib.Path) -> None:
    issuer = Issuer.create(tmp_path / "idp")
    flags = [
        "--log-format", "json", "--auth", "jwt", "--jwks-file", str(issuer.jwks_file),
        "--token-issuer", issuer.issuer, "--token-audience", issuer.audience,
    ]  # fmt: skip
    bad, good = issuer.token_from_other_key(), issuer.token(project="p1", sub="u1")
    with (
        logged_server(tmp_path, *flags) as (server, stderr),
        grpc.insecure_channel(server.target) as channel,
    ):
        server.wait_serving()
        stub = pb_grpc.ImageServiceStub(channel)
        refused = refusal_of(
            lambda: stub.ListImages(
                pb.ListImagesRequest(), metadata=(("authorization", f"Bearer {bad}"),)
            )
        )
        missing = refusal_of(
            lambda: stub.GetImage(
                pb.GetImageRequest(image_id=UNKNOWN_ID),
                metadata=(("authorization", f"Bearer {good}"),),
            )
        )
    assert (refused.code, missing.code) == (
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.NOT_FOUND,
    )
    text = stderr.read_text()
    entries = json_lines(text)
    for token in (bad, good):
        assert token not in text
        assert token.rsplit(".", 1)[-1] not in text  # not even the signature
    [unauthenticated] = with_message(entries, "refused ListImages")
    assert (unauthenticated["level"], unauthenticated["reason"]) == ("INFO", "UNAUTHENTICATED")
    assert "sub" not in unauthenticated
    [audited] = [entry for entry in entries if entry.get("audit") and entry["rpc"] == "ListImages"]
    assert (audited["authenticated"], audited["reason"]) == (False, "UNAUTHENTICATED")
    [not_found] = with_message(entries, "refused GetImage")
    assert (not_found["sub"], not_found["project"]) == ("u1", "p1")


def test_a_refused_glance_http_call_is_logged_with_its_route_image_id_request_id_and_reason(
    tmp_path: pathlib.Path,
) -> None:
    port = free_port()
    request_id = f"req-{uuid.uuid4()}"
    flags = ["--log-format", "json", "--auth", "none", "--glance-listen", f"127.0.0.1:{port}"]
    with logged_server(tmp_path, *flags) as (server, stderr):
        server.wait_serving()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request(
            "GET", f"/v2/images/{UNKNOWN_ID}", headers={"X-OpenStack-Request-ID": request_id}
        )
        response = connection.getresponse()
        response.read()
        connection.close()
    assert response.status == 404
    [refused] = with_message(json_lines(stderr.read_text()), "refused glance:GET")
    assert refused["level"] == "INFO"
    assert (refused["rpc"], refused["imageId"]) == ("glance:GET GetImage", UNKNOWN_ID)
    assert refused["requestId"] == request_id
    assert (refused["code"], refused["reason"]) == ("HTTP 404", "IMAGE_NOT_FOUND")


@pytest.mark.parametrize("asked_by", ["flags", "IMAGELOC_ variables"])
def test_the_lines_of_endpoints_on_port_0_name_the_ports_they_listen_on(
    tmp_path: pathlib.Path, asked_by: str
) -> None:
    flags = ["--log-format", "json", "--metrics-listen", "127.0.0.1:0", "--glance-listen",
             "127.0.0.1:0"]  # fmt: skip
    env = {"IMAGELOC_LOG_FORMAT": "json", "IMAGELOC_METRICS_LISTEN": "127.0.0.1:0",
           "IMAGELOC_GLANCE_LISTEN": "127.0.0.1:0"}  # fmt: skip
    if asked_by == "flags":
        env = {}
    else:
        flags = []
    with logged_server(tmp_path, *flags, env=env) as (_, stderr):
        wait_for_line(stderr, "Prometheus metrics on")
        entries = json_lines(stderr.read_text())
        [metrics] = with_message(entries, "Prometheus metrics on")
        [glance] = with_message(entries, "Glance Image API v2 on")
        metrics_url = metrics["message"].removeprefix("Prometheus metrics on ")
        glance_url = glance["message"].removeprefix("Glance Image API v2 on ")
        assert re.fullmatch(r"http://127\.0\.0\.1:[1-9]\d*/metrics", metrics_url), metrics_url
        assert re.fullmatch(r"http://127\.0\.0\.1:[1-9]\d*", glance_url), glance_url
        with urllib.request.urlopen(metrics_url, timeout=10) as scraped:
            assert b"grpc_server_started_total" in scraped.read()
        with urllib.request.urlopen(f"{glance_url}/versions", timeout=10) as versions:
            assert json.load(versions)["versions"]


def test_grpcs_own_lines_of_a_failed_tls_handshake_are_json_lines(tmp_path: pathlib.Path) -> None:
    pki = make_pki(tmp_path / "pki")
    tls = [
        "--tls-cert", str(pki.server_cert_file), "--tls-key", str(pki.server_key_file),
        "--tls-client-ca", str(pki.ca_file),
    ]  # fmt: skip
    with logged_server(tmp_path, "--log-format", "json", *tls) as (server, stderr):
        wait_for_line(stderr, "imageloc serving on")
        without_cert = grpc.ssl_channel_credentials(root_certificates=pki.ca_pem)
        with (
            grpc.secure_channel(server.target, without_cert) as channel,
            pytest.raises(grpc.FutureTimeoutError),
        ):
            grpc.channel_ready_future(channel).result(timeout=2)
    entries = json_lines(stderr.read_text())
    native = [entry for entry in entries if entry["logger"] == logs.NATIVE_LOGGER]
    assert native, entries
    assert any("Handshake failed" in entry["message"] for entry in native), native


# 2. The formatter, the audit line and the time, in-process.


@contextlib.contextmanager
def captured(log_format: str, name: str) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """Logger name at INFO, whose one handler is the server's in log_format (redacting as
    serve's does), and the stream it writes to."""
    stream = io.StringIO()
    logger = logging.getLogger(name)
    handler = logs.handler(log_format, stream)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    redact.install(logger)
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def json_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger whose one handler is the server's JSON handler."""
    with captured("json", "imageloc.test.logs") as made:
        yield made


def test_a_json_line_carries_the_calls_facts_the_known_extras_and_a_redacted_traceback(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_log
    with logs.call_facts(rpc="AddLocation"):
        logs.note(imageId="i-1", requestId="r-1", sub="u1", project="")
        try:
            raise ValueError(f"cannot reach {SECRET_URL}")
        except ValueError:
            logger.exception(
                "adding %s failed: café ✓",
                SECRET_URL,
                extra={"code": "UNAVAILABLE", "reason": "STORE_UNAVAILABLE", "secret": SECRET},
            )
    [line] = stream.getvalue().splitlines()
    assert line.isascii()
    assert SECRET not in line
    entry = json.loads(line)
    assert list(entry) == [
        "time", "level", "logger", "message", "rpc", "imageId", "requestId", "sub", "code",
        "reason", "exception",
    ]  # fmt: skip
    assert (entry["level"], entry["logger"]) == ("ERROR", "imageloc.test.logs")
    assert entry["message"] == "adding https://***@store.example/x.img failed: café ✓"
    assert (entry["rpc"], entry["imageId"], entry["requestId"]) == ("AddLocation", "i-1", "r-1")
    assert entry["exception"].startswith("Traceback (most recent call last):\n")
    assert entry["exception"].endswith("ValueError: cannot reach https://***@store.example/x.img")


def test_a_line_outside_a_call_has_no_facts_and_a_broken_record_still_gives_a_json_line(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_log
    logger.warning("plain")
    record = logging.LogRecord("imageloc.test.logs", logging.INFO, "x.py", 7, "%d", ("no",), None)
    broken = logs.JsonFormatter().format(record)
    first, *_ = stream.getvalue().splitlines()
    assert set(json.loads(first)) == {"time", "level", "logger", "message"}
    assert json.loads(broken)["message"] == "unformattable log record of x.py:7"


def test_a_json_line_carries_the_trace_id_of_the_current_span_when_tracing_has_one(
    json_log: tuple[logging.Logger, io.StringIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    logger, stream = json_log
    tracing = types.ModuleType("tracing")
    monkeypatch.setitem(sys.modules, "imageloc.server.observability.tracing", tracing)
    logger.info("before tracing knows spans")
    tracing.current_trace_id = lambda: "ab" * 16  # type: ignore[attr-defined]
    logger.info("in a span")
    tracing.current_trace_id = lambda: ""  # type: ignore[attr-defined]
    logger.info("outside spans")
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [entry.get("traceId") for entry in entries] == [None, "ab" * 16, None]


def test_the_text_format_is_unchanged() -> None:
    with (
        captured("text", "imageloc.test.text") as (logger, stream),
        logs.call_facts(rpc="GetImage", imageId="i-1"),
    ):
        logger.info("hello %s", "there")
    line = stream.getvalue()
    pattern = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO imageloc\.test\.text hello there\n"
    assert re.fullmatch(pattern, line), line


def test_an_audit_line_keeps_its_keys_and_has_the_json_logs_time_level_logger_and_message() -> None:
    stream = io.StringIO()
    principal = Principal(user_id="u1", project_id="p1", roles=frozenset({"member"}))
    AuditLog(stream).record(
        rpc="DeleteImage",
        principal=principal,
        image_id="i-1",
        code="PERMISSION_DENIED",
        reason="POLICY_DENIED",
        request_id="r-1",
    )
    entry = json.loads(stream.getvalue())
    assert TIME.fullmatch(entry.pop("time"))
    assert entry == {
        "level": "INFO",
        "logger": "imageloc.audit",
        "message": "audit DeleteImage PERMISSION_DENIED POLICY_DENIED",
        "audit": "imageloc",
        "rpc": "DeleteImage",
        "sub": "u1",
        "project": "p1",
        "serviceIdentity": "",
        "authenticated": True,
        "imageId": "i-1",
        "code": "PERMISSION_DENIED",
        "reason": "POLICY_DENIED",
        "requestId": "r-1",
    }


def test_the_time_is_iso_8601_utc_to_the_millisecond() -> None:
    assert logs.timestamp(1796281800.1239) == "2026-12-03T07:10:00.123+00:00"


@pytest.mark.parametrize(
    ("line", "level", "message"),
    [
        (
            "I1204 13:28:48.931661    5577 ssl_transport_security.cc:2563] Handshake failed\n",
            logging.INFO,
            "ssl_transport_security.cc:2563] Handshake failed",
        ),
        (
            "E1204 13:30:16.150000 6001 add_port.cc:83] Failed to add port\n",
            logging.ERROR,
            "add_port.cc:83] Failed to add port",
        ),
        ("something else\n", logging.WARNING, "something else"),
    ],
)
def test_a_line_grpcs_core_writes_is_logged_at_its_severity(
    line: str, level: int, message: str
) -> None:
    assert logs.native_record(line) == (level, message)
