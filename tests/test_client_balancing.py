"""Client-side balancing: one client spreads its calls over replicas and outlives one's stop.

Two in-process replicas share one database; each counts, in a gRPC server interceptor added
here, the calls that reach it, so the spread is read off real traffic.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import pathlib
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest

from imageloc.client import ImageClient, ImagelocError
from imageloc.client.channel import is_loopback, open_channel, service_config, tls_credentials
from imageloc.client.cli import main
from imageloc.server.app import Server, build_server
from imageloc.server.config import Settings

from certs import make_pki
from support import migrate

GET_IMAGE = "/imageloc.v1.ImageService/GetImage"
CREATE_IMAGE = "/imageloc.v1.ImageService/CreateImage"
CALLS = 40
CALL_TIMEOUT = 10.0
#: How long a new channel may take to be connected to every replica.
CONNECT_SECONDS = 10.0
#: How long gRPC may take to reconnect to an address that listens again (its backoff
#: starts at 1 s and grows 1.6 times a try).
RECONNECT_SECONDS = 15.0
#: The stopping replica's grace period; calls keep coming while it runs.
STOP_GRACE_SECONDS = 5.0


class CallCounter(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # generic in stubs only
    """Counts the calls that reach one server, by full method name."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        self.calls[handler_call_details.method] += 1
        return await continuation(handler_call_details)


@dataclasses.dataclass
class Replica:
    """One in-process server on the shared database, and the calls that reached it."""

    server: Server
    counter: CallCounter
    stopped: bool = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def served(self, method: str) -> int:
        return self.counter.calls[method]

    def stop(self, grace: float | None) -> None:
        if not self.stopped:
            self.stopped = True
            self.server.stop(grace)


def start_replica(database_url: str, monkeypatch: pytest.MonkeyPatch, **settings: Any) -> Replica:
    """A started server whose gRPC server carries a CallCounter (added while it is built)."""
    counter = CallCounter()
    with monkeypatch.context() as patch:
        patch.setattr(
            grpc.aio, "server", functools.partial(grpc.aio.server, interceptors=[counter])
        )
        defaults = Settings(listen="127.0.0.1:0", database_url=database_url)
        server = build_server(dataclasses.replace(defaults, **settings))
    server.start()
    return Replica(server=server, counter=counter)


@contextlib.contextmanager
def started_replicas(
    database_url: str, monkeypatch: pytest.MonkeyPatch, **settings: Any
) -> Iterator[list[Replica]]:
    """Two replicas on database_url (migrated first), stopped at the end."""
    migrate(database_url)
    started: list[Replica] = []
    try:
        for _ in range(2):
            started.append(start_replica(database_url, monkeypatch, **settings))
        yield started
    finally:
        for replica in started:
            replica.stop(None)


@pytest.fixture
def replicas(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Replica]]:
    """Two replicas on this test's database (once per backend)."""
    with started_replicas(database_url, monkeypatch) as started:
        yield started


def balanced_target(replicas: list[Replica]) -> str:
    """The one target naming every replica: "ipv4:127.0.0.1:p1,127.0.0.1:p2"."""
    return "ipv4:" + ",".join(replica.address for replica in replicas)


def served_each(replicas: list[Replica], method: str) -> list[int]:
    return [replica.served(method) for replica in replicas]


def connect_to_all(client: ImageClient, image_id: str, replicas: list[Replica]) -> None:
    """GetImage until every replica has answered one: round_robin picks only among the
    replicas it is connected to, and it connects to each in its own time."""
    deadline = time.monotonic() + CONNECT_SECONDS
    while min(served_each(replicas, GET_IMAGE)) == 0:
        assert time.monotonic() < deadline, f"not all reached: {served_each(replicas, GET_IMAGE)}"
        client.get_image(image_id)


def test_service_config_balances_round_robin() -> None:
    assert service_config()["loadBalancingConfig"] == [{"round_robin": {}}]


def test_calls_spread_over_every_address_of_the_target(replicas: list[Replica]) -> None:
    with ImageClient(balanced_target(replicas), timeout=CALL_TIMEOUT) as client:
        image_id = client.create_image("balanced").id
        connect_to_all(client, image_id, replicas)
        before = served_each(replicas, GET_IMAGE)
        for _ in range(CALLS):
            assert client.get_image(image_id).id == image_id
        after = served_each(replicas, GET_IMAGE)
    spread = [a - b for a, b in zip(after, before, strict=True)]
    assert sum(spread) == CALLS  # each call reached one replica, once
    # round_robin alternates; a little slack for a connection that blinks on a busy host.
    assert min(spread) >= CALLS // 2 - 2, spread


def test_calls_continue_on_the_other_replica_when_one_stops(replicas: list[Replica]) -> None:
    """Every call made while one replica stops gracefully succeeds: with no drain delay,
    the calls that reach it after it stops admitting are answered UNAVAILABLE, and the
    service config retries each on the other. Each create applies once; afterwards the
    survivor takes every call."""
    stopping, surviving = replicas
    during: list[str] = []
    failures: list[ImagelocError] = []
    with ImageClient(balanced_target(replicas), timeout=CALL_TIMEOUT) as client:
        image_id = client.create_image("balanced").id
        connect_to_all(client, image_id, replicas)
        stop = threading.Thread(target=stopping.stop, args=(STOP_GRACE_SECONDS,))
        before = sum(served_each(replicas, CREATE_IMAGE))
        stop.start()
        deadline = time.monotonic() + STOP_GRACE_SECONDS + CALL_TIMEOUT
        while stop.is_alive() and time.monotonic() < deadline:
            try:
                during.append(client.create_image("during-stop").id)
            except ImagelocError as error:
                failures.append(error)
        stop.join(timeout=max(0.0, deadline - time.monotonic()))
        assert not stop.is_alive(), "the replica did not stop within its grace period"
        attempts = sum(served_each(replicas, CREATE_IMAGE)) - before

        before_after = surviving.served(CREATE_IMAGE)
        after = [client.create_image("after-stop").id for _ in range(CALLS)]
        reached_survivor = surviving.served(CREATE_IMAGE) - before_after
        listed = [image.id for image in client.list_images() if image.id != image_id]

    assert failures == []
    assert attempts > len(during), "no attempt was refused: the retry path went untested"
    assert reached_survivor == CALLS
    assert sorted(listed) == sorted(during + after), "a create was lost or applied twice"


def test_a_replica_that_comes_back_is_used_again(
    replicas: list[Replica], database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gRPC reconnects to a stopped address in the background (with backoff): once a
    replica listens there again, round_robin gives it calls again."""
    stopping, _ = replicas
    port = stopping.server.port
    with ImageClient(balanced_target(replicas), timeout=CALL_TIMEOUT) as client:
        image_id = client.create_image("balanced").id
        connect_to_all(client, image_id, replicas)
        stopping.stop(STOP_GRACE_SECONDS)
        for _ in range(4):
            client.get_image(image_id)
        back = start_replica(database_url, monkeypatch, listen=f"127.0.0.1:{port}")
        try:
            deadline = time.monotonic() + RECONNECT_SECONDS
            while back.served(GET_IMAGE) == 0:
                assert time.monotonic() < deadline, "the replica that came back got no call"
                client.get_image(image_id)
                time.sleep(0.05)
        finally:
            back.stop(None)


def test_dns_target_with_the_name_of_one_replica(replicas: list[Replica]) -> None:
    """dns:///localhost:P resolves (to 127.0.0.1 and perhaps ::1, where nothing listens:
    round_robin uses the address that answers)."""
    replica = replicas[0]
    with ImageClient(f"dns:///localhost:{replica.server.port}", timeout=CALL_TIMEOUT) as client:
        image_id = client.create_image("by-name").id
        for _ in range(3):
            assert client.get_image(image_id).id == image_id
    assert replica.served(GET_IMAGE) == 3
    assert replicas[1].served(GET_IMAGE) == 0


def test_tls_over_a_multi_address_target_verifies_the_authority_given(
    database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """gRPC would verify "127.0.0.1:p1,127.0.0.1:p2" as the name: the authority names the
    certificate's name instead, checked on every replica."""
    pki = make_pki(tmp_path)
    tls = {"tls_cert": str(pki.server_cert_file), "tls_key": str(pki.server_key_file)}
    with started_replicas(database_url, monkeypatch, **tls) as replicas:
        channel = open_channel(
            balanced_target(replicas),
            credentials=tls_credentials(root_certificates=pki.server_ca_pem),
            authority="localhost",
        )
        with channel, ImageClient(channel=channel, timeout=CALL_TIMEOUT) as client:
            image_id = client.create_image("over-tls").id
            connect_to_all(client, image_id, replicas)


def test_cli_server_takes_a_multi_address_target(
    replicas: list[Replica], capsys: pytest.CaptureFixture[str]
) -> None:
    with ImageClient(balanced_target(replicas), timeout=CALL_TIMEOUT) as client:
        image_id = client.create_image("for-the-cli").id
    capsys.readouterr()
    assert main(["--server", balanced_target(replicas), "--json", "image", "show", image_id]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == image_id


@pytest.mark.parametrize(
    ("target", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("unix:/run/imageloc.sock", True),
        ("10.0.0.7:50051", False),
        ("imageloc.example:50051", False),
        ("ipv4:127.0.0.1:50051", True),
        ("ipv4:127.0.0.1:50051,127.0.0.2:50052", True),
        ("ipv4:127.0.0.1:50051,10.0.0.7:50051", False),
        ("ipv4:10.0.0.7:50051,127.0.0.1:50051", False),
        ("ipv4:127.0.0.1:50051,", False),
        ("ipv6:[::1]:50051,[::1]:50052", True),
        ("ipv6:[::1]:50051,[2001:db8::1]:50051", False),
        ("dns:///localhost:50051", True),
        ("dns:///127.0.0.1:50051", True),
        ("dns:localhost:50051", True),
        ("dns:///imageloc.example:50051", False),
        # With a DNS server named, that server says where "localhost" goes.
        ("dns://10.0.0.53/localhost:50051", False),
        ("dns://10.0.0.53/127.0.0.1:50051", True),
        ("xds:///imageloc.example", False),
    ],
)
def test_loopback_means_every_address_of_the_target(target: str, loopback: bool) -> None:
    assert is_loopback(target) is loopback


def test_a_token_goes_in_plaintext_only_when_every_address_is_loopback() -> None:
    ImageClient("ipv4:127.0.0.1:50051,127.0.0.1:50052", token="secret").close()
    with pytest.raises(ValueError, match="loopback"):
        ImageClient("ipv4:127.0.0.1:50051,10.0.0.7:50051", token="secret")
