"""Prometheus metrics through the real tools: a real Prometheus scrapes a real server, and
what its query API answers is what the test did (calls by method and code, refusals by
reason). Prometheus is Debian's package, which `make test` installs."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from imageloc.server.app import Server, build_server
from imageloc.server.config import Settings
from imageloc.v1 import image_service_pb2 as pb
from imageloc.v1 import image_service_pb2_grpc as pb_grpc

from processes import IMAGELOC, TEST_ENV
from support import make_image, migrate

SERVICE = "imageloc.v1.ImageService"
#: How long Prometheus may take to start and to scrape what the test did.
WAIT_SECONDS = 60.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def server(database_url: str) -> Iterator[Server]:
    migrate(database_url)
    settings = Settings(
        listen="127.0.0.1:0", database_url=database_url, metrics_listen="127.0.0.1:0"
    )
    built = build_server(settings)
    built.start()
    yield built
    built.stop(None)


class Prometheus:
    """A real Prometheus scraping one target every second; queries through its HTTP API."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The instant vector expression answers now."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        with urllib.request.urlopen(url, timeout=5) as response:
            answer = json.loads(response.read())
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def values(self, expression: str, *labels: str) -> dict[tuple[str, ...], float]:
        """expression's series as {label values: value}."""
        return {
            tuple(series["metric"].get(label, "") for label in labels): float(series["value"][1])
            for series in self.query(expression)
        }

    def wait_for(self, expression: str, labels: tuple[str, ...], expected: dict[Any, float]) -> Any:
        """expression's values once they equal expected (scrapes come every second)."""
        deadline = time.monotonic() + WAIT_SECONDS
        seen: dict[tuple[str, ...], float] = {}
        while time.monotonic() < deadline:
            try:
                seen = self.values(expression, *labels)
            except OSError:
                seen = {}
            if seen == expected:
                return seen
            time.sleep(0.5)
        return seen


@pytest.fixture
def prometheus(server: Server, tmp_path: pathlib.Path) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not pathlib.Path(binary).exists():
        pytest.fail("prometheus is not installed: `make test` installs Debian's package")
    assert server.metrics_endpoint is not None
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: imageloc\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{server.metrics_endpoint.port}']\n"
    )
    port = _free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        running = Prometheus(port)
        up = running.wait_for('up{job="imageloc"}', ("job",), {("imageloc",): 1.0})
        assert up == {("imageloc",): 1.0}, (tmp_path / "prometheus.log").read_text()[-2000:]
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_prometheus_counts_each_call_by_method_and_code_and_each_refusal_by_reason(
    server: Server, prometheus: Prometheus
) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ImageServiceStub(channel)
        image = make_image(stub, "active", urls=("https://s/a.img",))  # CreateImage, Replace
        for _ in range(5):
            stub.GetImage(pb.GetImageRequest(image_id=image.id))
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as missing:
                stub.GetImage(pb.GetImageRequest(image_id=str(uuid.uuid4())))
            assert missing.value.code() is grpc.StatusCode.NOT_FOUND
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as last:
                stub.RemoveLocation(pb.RemoveLocationRequest(image_id=image.id, index=0))
            assert last.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as bad:
            stub.GetImage(pb.GetImageRequest(image_id="not-a-uuid"))
        assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT

    made = {  # the calls above, by method and code
        ("CreateImage", "OK"): 1.0,
        ("ReplaceLocation", "OK"): 1.0,
        ("GetImage", "OK"): 5.0,
        ("GetImage", "NOT_FOUND"): 3.0,
        ("GetImage", "INVALID_ARGUMENT"): 1.0,
        ("RemoveLocation", "FAILED_PRECONDITION"): 2.0,
    }
    handled = prometheus.wait_for(
        "sum by (grpc_method, grpc_code)"
        f' (grpc_server_handled_total{{grpc_service="{SERVICE}"}}) > 0',
        ("grpc_method", "grpc_code"),
        made,
    )
    assert handled == made
    started = prometheus.values(
        f'grpc_server_started_total{{grpc_service="{SERVICE}",grpc_method="GetImage"}}',
        "grpc_type",
    )
    assert started == {("unary",): 9.0}
    refusals = prometheus.wait_for(
        "sum by (reason) (imageloc_refusals_total) > 0",
        ("reason",),
        {("IMAGE_NOT_FOUND",): 3.0, ("LAST_LOCATION",): 2.0, ("INVALID_REQUEST",): 1.0},
    )
    assert refusals == {
        ("IMAGE_NOT_FOUND",): 3.0,
        ("LAST_LOCATION",): 2.0,
        ("INVALID_REQUEST",): 1.0,
    }
    # The histogram answers a p99 per method; the health gauge says the server serves.
    p99 = prometheus.values(
        "histogram_quantile(0.99, sum by (le, grpc_method)"
        ' (grpc_server_handling_seconds_bucket{grpc_method="GetImage"}))',
        "grpc_method",
    )
    assert 0 < p99[("GetImage",)] < 10
    serving = prometheus.values("imageloc_health_serving", "service")
    assert serving[(SERVICE,)] == 1.0


def test_the_exposition_bounds_its_labels(server: Server) -> None:
    """No image id, URL, principal or request id becomes a label value."""
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ImageServiceStub(channel)
        image = make_image(stub, "active", urls=("https://user:s3cret@s/a.img",))
        request_id = str(uuid.uuid4())
        stub.GetImage(pb.GetImageRequest(image_id=image.id))
        with pytest.raises(grpc.RpcError):
            stub.DeleteImage(
                pb.DeleteImageRequest(image_id=str(uuid.uuid4()), request_id=request_id)
            )
    assert server.metrics_endpoint is not None
    url = f"http://127.0.0.1:{server.metrics_endpoint.port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    assert "grpc_server_handled_total" in text
    for secret in (image.id, request_id, "s3cret", "https://"):
        assert secret not in text


def scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The server's /metrics now, as {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    assert server.metrics_endpoint is not None
    url = f"http://127.0.0.1:{server.metrics_endpoint.port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_the_change_feed_metrics_follow_the_open_streams(server: Server) -> None:
    from imageloc.client.client import ImageClient

    with ImageClient(f"127.0.0.1:{server.port}") as client:
        watch = client.watch_images()
        try:
            image = client.create_image(name="watched", disk_format="raw", container_format="bare")
            event = next(iter(watch))
            assert event.image.id == image.id
            deadline = time.monotonic() + 10
            samples = scrape(server)
            while time.monotonic() < deadline and (
                _value(samples, "imageloc_watch_events_sent_total") < 1
            ):
                time.sleep(0.05)
                samples = scrape(server)
            assert _value(samples, "imageloc_watch_streams") == 1.0
            assert _value(samples, "imageloc_watch_events_sent_total") >= 1.0
            assert _value(samples, "imageloc_watch_lag_revisions") == 0.0
            sent = _value(
                samples,
                "grpc_server_msg_sent_total",
                grpc_method="WatchImages",
                grpc_service=SERVICE,
                grpc_type="server_stream",
            )
            assert sent >= 2  # the first response at once, then the event
        finally:
            watch.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _value(scrape(server), "imageloc_watch_streams"):
        time.sleep(0.05)
    assert _value(scrape(server), "imageloc_watch_streams") == 0.0


def test_sqlite_group_commits_and_the_glance_endpoint_are_counted(
    database_url: str, tmp_path: pathlib.Path
) -> None:
    migrate(database_url)
    settings = Settings(
        listen="127.0.0.1:0",
        database_url=database_url,
        metrics_listen="127.0.0.1:0",
        glance_listen="127.0.0.1:0",
    )
    built = build_server(settings)
    built.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{built.port}") as channel:
            make_image(pb_grpc.ImageServiceStub(channel), "active", urls=("https://s/a.img",))
        assert built.glance is not None
        base = f"http://127.0.0.1:{built.glance.port}"
        with urllib.request.urlopen(f"{base}/v2/images", timeout=5) as listed:
            assert listed.status == 200
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{base}/v2/images/{uuid.uuid4()}", timeout=5)
        assert missing.value.code == 404
        samples = scrape(built)
        assert _value(samples, "imageloc_http_requests_total", code="200", method="GET",
                      route="/v2/images") == 1.0  # fmt: skip
        assert _value(samples, "imageloc_http_requests_total", code="404", method="GET",
                      route="/v2/images/{image_id}") == 1.0  # fmt: skip
        assert _value(samples, "imageloc_refusals_total", reason="IMAGE_NOT_FOUND") == 1.0
        batches = _value(samples, "imageloc_store_commit_batch_size_count")
        if database_url.startswith("sqlite"):
            assert batches >= 1  # CreateImage's and ReplaceLocation's commits
            assert _value(samples, "imageloc_store_commit_batch_size_sum") >= 2
        else:
            assert batches == 0  # PostgreSQL commits each unit of work itself
    finally:
        built.stop(None)


def test_authentication_failures_by_cause_and_the_token_cache(
    database_url: str, tmp_path: pathlib.Path
) -> None:
    from signing import Issuer

    migrate(database_url)
    issuer = Issuer.create(tmp_path / "idp", issuer="imageloc-test", audience="imageloc")
    settings = Settings(
        listen="127.0.0.1:0",
        database_url=database_url,
        metrics_listen="127.0.0.1:0",
        **issuer.trusted_by(),
    )
    built = build_server(settings)
    built.start()
    try:
        token = issuer.token(project="p1", roles=("member",))
        with grpc.insecure_channel(f"127.0.0.1:{built.port}") as channel:
            stub = pb_grpc.ImageServiceStub(channel)
            for _ in range(3):
                stub.ListImages(
                    pb.ListImagesRequest(), metadata=(("authorization", f"Bearer {token}"),)
                )
            for metadata in ((("authorization", "Bearer not-a-token"),), ()):
                with pytest.raises(grpc.RpcError) as refused:
                    stub.ListImages(pb.ListImagesRequest(), metadata=metadata)
                assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        samples = scrape(built)
        assert _value(samples, "imageloc_auth_failures_total", cause="malformed") == 1.0
        assert _value(samples, "imageloc_auth_failures_total", cause="missing") == 1.0
        assert _value(samples, "imageloc_refusals_total", reason="UNAUTHENTICATED") == 2.0
        # The good token once, the malformed one; a missing one is refused before the cache.
        assert _value(samples, "imageloc_token_cache_misses_total") == 2.0
        assert _value(samples, "imageloc_token_cache_hits_total") == 2.0
    finally:
        built.stop(None)


@pytest.mark.parametrize("flag", ["--metrics-listen", "--glance-listen"])
@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1:99999", "127.0.0.1:http", ":9464"])
def test_an_http_listen_address_that_is_no_host_port_refuses_the_start_in_one_line(
    tmp_path: pathlib.Path, flag: str, address: str
) -> None:
    done = subprocess.run(
        [str(IMAGELOC), "serve", "--listen", "127.0.0.1:0",
         "--database", f"sqlite:///{tmp_path / 'imageloc.db'}", flag, address],
        env={**os.environ, **TEST_ENV}, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"error: {flag} must be HOST:PORT with a port of 0 to 65535, not {address!r}"
    ]
    assert not (tmp_path / "imageloc.db").exists()  # refused before anything was done
