"""TLS and mTLS through a real grpc.aio server: handshakes, peer identities, certificate rotation.

A generic handler answers with the identities it read from the call's auth context.
"""

from __future__ import annotations

import json
import logging
import pathlib
from collections.abc import Iterator

import grpc
import pytest

from imageloc.server.auth.tls import (
    TlsConfigError,
    certificate_identities,
    server_credentials,
    service_identity,
)
from imageloc.server.event_loop import LoopThread

from certs import ClientCert, Pki, make_pki

NOVA = "spiffe://example.org/ns/compute/sa/nova"
ALLOWED = frozenset({NOVA, "glance.example"})
METHOD = "/tlsprobe.Probe/Identity"


async def _identity(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    auth_context = context.auth_context()
    answer = {
        "identities": certificate_identities(auth_context),
        "service": service_identity(auth_context, ALLOWED),
        "transport": [v.decode() for v in auth_context.get("transport_security_type", [])],
    }
    return json.dumps(answer).encode()


class ProbeServer:
    """A grpc.aio server on its own loop thread, on 127.0.0.1 with the given credentials."""

    def __init__(self, credentials: grpc.ServerCredentials) -> None:
        self._loop = LoopThread("tls-probe")
        self.port = self._loop.run(self._start(credentials))

    async def _start(self, credentials: grpc.ServerCredentials) -> int:
        handler = grpc.method_handlers_generic_handler(
            "tlsprobe.Probe", {"Identity": grpc.unary_unary_rpc_method_handler(_identity)}
        )
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((handler,))
        port = self._server.add_secure_port("127.0.0.1:0", credentials)
        await self._server.start()
        return port

    def call(self, *, root: bytes, client: ClientCert | None = None) -> dict[str, object]:
        """One call on a new connection trusting root, with client's certificate if given."""
        credentials = grpc.ssl_channel_credentials(
            root_certificates=root,
            private_key=client.key_pem if client else None,
            certificate_chain=client.cert_pem if client else None,
        )
        # A pool of its own, so that every call makes a new connection (a new handshake).
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.secure_channel(f"127.0.0.1:{self.port}", credentials, options) as channel:
            answer: bytes = channel.unary_unary(METHOD, None, None)(b"", timeout=5)
        result: dict[str, object] = json.loads(answer)
        return result

    def close(self) -> None:
        self._loop.run(self._server.stop(None))
        self._loop.close()


@pytest.fixture
def pki(tmp_path: pathlib.Path) -> Pki:
    return make_pki(tmp_path)


def _serve(pki: Pki, *, mtls: bool) -> Iterator[ProbeServer]:
    credentials = server_credentials(
        cert_file=str(pki.server_cert_file),
        key_file=str(pki.server_key_file),
        client_ca_file=str(pki.ca_file) if mtls else None,
    )
    server = ProbeServer(credentials)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def tls_server(pki: Pki) -> Iterator[ProbeServer]:
    yield from _serve(pki, mtls=False)


@pytest.fixture
def mtls_server(pki: Pki) -> Iterator[ProbeServer]:
    yield from _serve(pki, mtls=True)


def _refused(server: ProbeServer, *, root: bytes, client: ClientCert | None = None) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        server.call(root=root, client=client)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_serves_a_client_that_trusts_the_ca(tls_server: ProbeServer, pki: Pki) -> None:
    answer = tls_server.call(root=pki.ca_pem)
    assert answer == {"identities": [], "service": "", "transport": ["ssl"]}


def test_tls_is_refused_by_a_client_that_trusts_another_ca(
    tls_server: ProbeServer, pki: Pki
) -> None:
    other = pki.client("other", dns="other.example", other_ca=True)
    _refused(tls_server, root=other.cert_pem)


def test_mtls_refuses_a_client_without_a_certificate(mtls_server: ProbeServer, pki: Pki) -> None:
    _refused(mtls_server, root=pki.ca_pem)


def test_mtls_refuses_a_certificate_from_another_ca(mtls_server: ProbeServer, pki: Pki) -> None:
    _refused(mtls_server, root=pki.ca_pem, client=pki.client("rogue", uri=NOVA, other_ca=True))


@pytest.mark.parametrize(
    ("uri", "dns", "identities", "service"),
    [
        (NOVA, "nova.example", [NOVA, "nova.example"], NOVA),
        (None, "glance.example", ["glance.example"], "glance.example"),
        ("spiffe://example.org/ns/x/sa/y", "glance.example",
         ["spiffe://example.org/ns/x/sa/y", "glance.example"], "glance.example"),
        (None, "workstation.example", ["workstation.example"], ""),
        (None, None, [], ""),
    ],
)  # fmt: skip
def test_mtls_names_the_client_by_its_uri_san_else_its_dns_san(
    mtls_server: ProbeServer,
    pki: Pki,
    *,
    uri: str | None,
    dns: str | None,
    identities: list[str],
    service: str,
) -> None:
    answer = mtls_server.call(root=pki.ca_pem, client=pki.client("c", uri=uri, dns=dns))
    assert answer["identities"] == identities
    assert answer["service"] == service


def test_rotated_server_certificate_is_served_on_new_connections(
    mtls_server: ProbeServer, pki: Pki
) -> None:
    client = pki.client("nova", uri=NOVA)
    old_root = pki.ca_pem
    assert mtls_server.call(root=old_root, client=client)["service"] == NOVA
    new_root = pki.rotate_server_cert()
    assert mtls_server.call(root=new_root, client=client)["service"] == NOVA
    _refused(mtls_server, root=old_root, client=client)


def test_a_broken_rotation_keeps_the_certificate_in_use_until_fixed(
    tls_server: ProbeServer, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    good_key = pki.server_key_file.read_bytes()
    pki.server_key_file.write_bytes(pki.client("stray").key_pem)  # matches no server cert
    with caplog.at_level(logging.WARNING, logger="imageloc.server.auth.tls"):
        tls_server.call(root=pki.ca_pem)
        tls_server.call(root=pki.ca_pem)
    warnings = [r for r in caplog.records if "does not match" in r.getMessage()]
    assert len(warnings) == 1
    pki.server_key_file.write_bytes(good_key)
    new_root = pki.rotate_server_cert()
    tls_server.call(root=new_root)


def _credentials(
    pki: Pki, *, cert: pathlib.Path | None = None, key: pathlib.Path | None = None,
    client_ca: pathlib.Path | str | None = None,
) -> grpc.ServerCredentials:  # fmt: skip
    return server_credentials(
        cert_file=str(cert or pki.server_cert_file),
        key_file=str(key or pki.server_key_file),
        client_ca_file=None if client_ca is None else str(client_ca),
    )


def test_missing_files_are_config_errors(pki: Pki, tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "missing.pem"
    for kwargs, flag in (
        ({"cert": missing}, "--tls-cert"),
        ({"key": missing}, "--tls-key"),
        ({"client_ca": missing}, "--tls-client-ca"),
    ):
        with pytest.raises(TlsConfigError, match=rf"^{flag} .*missing\.pem: cannot read it"):
            _credentials(pki, **kwargs)


def test_a_key_that_does_not_match_the_certificate_is_a_config_error(pki: Pki) -> None:
    with pytest.raises(TlsConfigError, match="does not match the certificate"):
        _credentials(pki, key=pki.client("stray").key_file)


def test_files_that_are_not_pem_are_config_errors(pki: Pki, tmp_path: pathlib.Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(TlsConfigError, match=r"^--tls-cert .*: holds no PEM certificate$"):
        _credentials(pki, cert=junk)
    with pytest.raises(TlsConfigError, match=r"^--tls-key .*: not an unencrypted PEM private key"):
        _credentials(pki, key=junk)


def test_a_client_ca_file_without_a_certificate_is_a_config_error(pki: Pki) -> None:
    with pytest.raises(TlsConfigError, match=r"^--tls-client-ca .*: holds no PEM certificate$"):
        _credentials(pki, client_ca=pki.server_key_file)


def test_a_client_ca_without_a_server_certificate_is_a_config_error(pki: Pki) -> None:
    with pytest.raises(TlsConfigError, match="--tls-client-ca needs --tls-cert"):
        server_credentials(cert_file="", key_file="", client_ca_file=str(pki.ca_file))


def test_identities_are_read_from_the_certificate_when_grpc_does_not_list_them(
    pki: Pki,
) -> None:
    pem = pki.client("nova", uri=NOVA, dns="nova.example").cert_pem
    auth_context = {"x509_pem_cert": [pem], "x509_subject_alternative_name": [b"nova.example"]}
    assert certificate_identities(auth_context) == [NOVA, "nova.example"]
    assert service_identity(auth_context, frozenset({"nova.example", NOVA})) == NOVA
    assert service_identity(auth_context, frozenset({"nova.example"})) == "nova.example"
    assert service_identity(auth_context, frozenset()) == ""


def test_no_peer_certificate_has_no_identity() -> None:
    auth_context = {"transport_security_type": [b"ssl"]}
    assert certificate_identities(auth_context) == []
    assert service_identity(auth_context, ALLOWED) == ""
