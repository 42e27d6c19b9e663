"""The client's credentials: bearer tokens (fixed or per call), TLS, mTLS, and the CLI's options.

Against an echo server: its GetImage answers with what the call carried (the authorization
metadata as the image's name, the transport as its owner, the client certificate's
identities as its disk_format), and refuses a call without a token as imageloc does.
"""

from __future__ import annotations

import itertools
import pathlib
import uuid
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from imageloc.client import ImageClient, ImagelocError
from imageloc.client.cli import main
from imageloc.server.auth.tls import certificate_identities, server_credentials
from imageloc.server.event_loop import LoopThread
from imageloc.v1 import image_service_pb2 as pb

from certs import Pki, make_pki

IMAGE_ID = str(uuid.uuid4())


def _unauthenticated(cause: str) -> status_pb2.Status:
    """The refusal imageloc gives a call whose token it does not take."""
    info = error_details_pb2.ErrorInfo(
        reason="UNAUTHENTICATED",
        domain="imageloc",
        metadata={"cause": cause, "httpStatus": "401"},
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    return status_pb2.Status(
        code=code_pb2.UNAUTHENTICATED, message=f"token refused: {cause}", details=[detail]
    )


async def _get_image(
    request: pb.GetImageRequest, context: grpc.aio.ServicerContext[bytes, bytes]
) -> pb.GetImageResponse:
    metadata = dict(context.invocation_metadata() or ())
    authorization = str(metadata.get("authorization", ""))
    if authorization in ("", "Bearer expired"):
        rich = rpc_status.to_status(_unauthenticated("expired" if authorization else "missing"))
        await context.abort(rich.code, rich.details, rich.trailing_metadata)
    auth_context = context.auth_context()
    transport = b"".join(auth_context.get("transport_security_type", [b"insecure"])).decode()
    image = pb.Image(
        id=request.image_id,
        name=authorization,
        owner=transport,
        disk_format=",".join(certificate_identities(auth_context)),
    )
    return pb.GetImageResponse(image=image)


class EchoServer:
    """An ImageService with only GetImage, on 127.0.0.1 (TLS with credentials)."""

    def __init__(self, credentials: grpc.ServerCredentials | None) -> None:
        self._loop = LoopThread("echo-server")
        self.target = f"127.0.0.1:{self._loop.run(self._start(credentials))}"

    async def _start(self, credentials: grpc.ServerCredentials | None) -> int:
        method = grpc.unary_unary_rpc_method_handler(
            _get_image,
            request_deserializer=pb.GetImageRequest.FromString,
            response_serializer=pb.GetImageResponse.SerializeToString,
        )
        handler = grpc.method_handlers_generic_handler(
            "imageloc.v1.ImageService", {"GetImage": method}
        )
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((handler,))
        if credentials is None:
            port = self._server.add_insecure_port("127.0.0.1:0")
        else:
            port = self._server.add_secure_port("127.0.0.1:0", credentials)
        await self._server.start()
        return port

    def close(self) -> None:
        self._loop.run(self._server.stop(None))
        self._loop.close()


def _serve(credentials: grpc.ServerCredentials | None) -> Iterator[EchoServer]:
    server = EchoServer(credentials)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pki(tmp_path: pathlib.Path) -> Pki:
    return make_pki(tmp_path)


@pytest.fixture
def plain() -> Iterator[EchoServer]:
    yield from _serve(None)


@pytest.fixture
def tls(pki: Pki) -> Iterator[EchoServer]:
    yield from _serve(
        server_credentials(
            cert_file=str(pki.server_cert_file),
            key_file=str(pki.server_key_file),
            client_ca_file=None,
        )
    )


@pytest.fixture
def mtls(pki: Pki) -> Iterator[EchoServer]:
    yield from _serve(
        server_credentials(
            cert_file=str(pki.server_cert_file),
            key_file=str(pki.server_key_file),
            client_ca_file=str(pki.ca_file),
        )
    )


def _echo(client: ImageClient) -> pb.Image:
    with client:
        return client.get_image(IMAGE_ID)


# The Python client.


def test_a_token_rides_as_call_metadata_on_a_plaintext_loopback_channel(
    plain: EchoServer,
) -> None:
    image = _echo(ImageClient(plain.target, token="t1", timeout=5))
    assert (image.name, image.owner) == ("Bearer t1", "insecure")


def test_a_token_rides_as_call_credentials_over_tls(tls: EchoServer, pki: Pki) -> None:
    image = _echo(ImageClient(tls.target, token="t1", root_certificates=pki.ca_pem, timeout=5))
    assert (image.name, image.owner) == ("Bearer t1", "ssl")


@pytest.mark.parametrize("secure", [False, True])
def test_the_token_provider_is_asked_for_every_call(
    plain: EchoServer, tls: EchoServer, pki: Pki, *, secure: bool
) -> None:
    tokens = (f"t{n}" for n in itertools.count(1))
    root = pki.ca_pem if secure else None
    target = tls.target if secure else plain.target
    with ImageClient(
        target, token_provider=lambda: next(tokens), root_certificates=root, timeout=5
    ) as client:
        names = [client.get_image(IMAGE_ID).name for _ in range(3)]
    assert names == ["Bearer t1", "Bearer t2", "Bearer t3"]


def test_a_client_certificate_authenticates_over_mtls(mtls: EchoServer, pki: Pki) -> None:
    nova = pki.client("nova", uri="spiffe://example.org/ns/compute/sa/nova", dns="nova.example")
    image = _echo(
        ImageClient(
            mtls.target,
            root_certificates=pki.ca_pem,
            certificate_chain=nova.cert_pem,
            private_key=nova.key_pem,
            token="t1",
            timeout=5,
        )
    )
    assert image.disk_format == "spiffe://example.org/ns/compute/sa/nova,nova.example"
    assert image.name == "Bearer t1"


def test_ready_channel_credentials_are_used_with_the_token(tls: EchoServer, pki: Pki) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca_pem)
    image = _echo(ImageClient(tls.target, credentials=credentials, token="t1", timeout=5))
    assert (image.name, image.owner) == ("Bearer t1", "ssl")


def test_a_refused_token_carries_its_cause(plain: EchoServer) -> None:
    with pytest.raises(ImagelocError) as caught:
        _echo(ImageClient(plain.target, token="expired", timeout=5))
    error = caught.value
    assert (error.code, error.reason, error.cause) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "UNAUTHENTICATED",
        "expired",
    )
    assert error.http_status == 401


def test_mtls_without_a_client_certificate_cannot_connect(mtls: EchoServer, pki: Pki) -> None:
    with pytest.raises(ImagelocError) as caught:
        _echo(ImageClient(mtls.target, root_certificates=pki.ca_pem, timeout=5))
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("target", "options", "message"),
    [
        ("203.0.113.7:50051", {"token": "t"}, "plaintext only to a loopback server"),
        ("example.org:50051", {"token_provider": lambda: "t"}, "plaintext only to a loopback"),
        ("127.0.0.1:1", {"token": "t", "token_provider": lambda: "t"}, "token or token_provider"),
        ("127.0.0.1:1", {"certificate_chain": b"pem"}, "go together"),
    ],
)  # fmt: skip
def test_credentials_that_do_not_fit_are_refused_before_any_call(
    target: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ImageClient(target, **options)  # type: ignore[arg-type]


def test_a_channel_of_ones_own_takes_no_tls_credentials() -> None:
    with (
        grpc.insecure_channel("127.0.0.1:1") as channel,
        pytest.raises(ValueError, match="a channel or TLS credentials"),
    ):
        ImageClient(channel=channel, root_certificates=b"pem")


# The CLI.


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main([*args, "--timeout", "5", "image", "show", IMAGE_ID])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_cli_sends_the_token_over_tls_from_the_environment(
    tls: EchoServer, pki: Pki, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGELOC_TOKEN", "from-env")
    monkeypatch.setenv("IMAGELOC_CA_CERT", str(pki.ca_file))
    status, out, err = _cli(capsys, "--server", tls.target)
    assert status == 0, err
    assert "name: Bearer from-env" in out.splitlines()
    assert "owner: ssl" in out.splitlines()


def test_cli_flags_give_a_client_certificate(
    mtls: EchoServer, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    nova = pki.client("nova", dns="nova.example")
    status, out, err = _cli(
        capsys, "--server", mtls.target, "--ca-cert", str(pki.ca_file),
        "--cert", str(nova.cert_file), "--key", str(nova.key_file), "--token", "t1",
    )  # fmt: skip
    assert status == 0, err
    assert "disk_format: nova.example" in out.splitlines()


def test_cli_prints_the_cause_of_an_authentication_refusal(
    plain: EchoServer, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = _cli(capsys, "--server", plain.target, "--token", "expired")
    assert status == 1
    assert err.splitlines()[0] == "error: UNAUTHENTICATED (cause: expired): token refused: expired"
    status, _, err = _cli(capsys, "--server", plain.target, "--json")
    assert status == 1
    assert '"cause": "missing"' in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ca-cert", "/nonexistent/ca.pem"], "error: cannot read --ca-cert /nonexistent/ca.pem"),
        (["--cert", "/nonexistent/c.pem", "--key", "/nonexistent/c.key"], "error: cannot read"),
        (["--ca-cert", "{ca}", "--cert", "{ca}"], "error: --cert and --key go together"),
        (["--server", "203.0.113.7:50051", "--token", "t"], "error: a token goes in plaintext"),
    ],
)
def test_cli_credentials_that_do_not_fit_exit_2_with_one_line(
    pki: Pki, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    status, out, err = _cli(capsys, *(arg.format(ca=pki.ca_file) for arg in args))
    assert status == 2
    assert out == ""
    assert err.startswith(message)
    assert len(err.splitlines()) == 1
