"""A throwaway PKI for TLS tests: CAs and server certificates from trustme, client certificates
(with URI SANs, which trustme cannot write) from cryptography. Nothing is committed.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: The names the server certificate is good for.
SERVER_NAMES = ("127.0.0.1", "localhost")


@dataclasses.dataclass(frozen=True)
class ClientCert:
    """A client certificate and its key, as PEM and as files."""

    cert_file: Path
    key_file: Path
    cert_pem: bytes
    key_pem: bytes


class Pki:
    """A CA that signs the clients and the first server certificate, and another CA for rogues.

    `ca_pem`/`ca_file` are the client CA the server trusts (`--tls-client-ca`), and also the
    root a client trusts until rotate_server_cert(); `server_ca_pem` is always the root that
    signed the certificate now in `server_cert_file`.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._ca = trustme.CA()
        self._other_ca = trustme.CA()
        self.ca_pem: bytes = self._ca.cert_pem.bytes()
        self.ca_file = directory / "ca.pem"
        self.ca_file.write_bytes(self.ca_pem)
        self.server_cert_file = directory / "server.pem"
        self.server_key_file = directory / "server.key"
        self.server_ca_pem: bytes = self.ca_pem
        self._write_server_cert(self._ca)
        self._clients: dict[tuple[str, str | None, str | None, bool], ClientCert] = {}

    def client(
        self, name: str, *, uri: str | None = None, dns: str | None = None, other_ca: bool = False
    ) -> ClientCert:
        """A client certificate with CN name and these SANs, signed by the CA (or the other CA).

        The same arguments give the same certificate.
        """
        key = (name, uri, dns, other_ca)
        if key not in self._clients:
            ca = self._other_ca if other_ca else self._ca
            cert_pem, key_pem = _client_cert(ca, name=name, uri=uri, dns=dns)
            stem = f"client-{name}-{len(self._clients)}"
            cert_file = self.directory / f"{stem}.pem"
            key_file = self.directory / f"{stem}.key"
            cert_file.write_bytes(cert_pem)
            key_file.write_bytes(key_pem)
            self._clients[key] = ClientCert(cert_file, key_file, cert_pem, key_pem)
        return self._clients[key]

    def rotate_server_cert(self) -> bytes:
        """Replace the server's certificate and key files with ones signed by a new CA.

        Returns that CA's certificate (also `server_ca_pem` from now on); the client CA
        (`ca_pem`, `ca_file`) stays as it was.
        """
        new_ca = trustme.CA()
        self._write_server_cert(new_ca)
        self.server_ca_pem = new_ca.cert_pem.bytes()
        return self.server_ca_pem

    def _write_server_cert(self, ca: trustme.CA) -> None:
        leaf = ca.issue_cert(*SERVER_NAMES)
        _replace(self.server_key_file, leaf.private_key_pem.bytes())
        _replace(self.server_cert_file, b"".join(blob.bytes() for blob in leaf.cert_chain_pems))


def make_pki(tmp_path: Path) -> Pki:
    """A new PKI whose files live in tmp_path/pki."""
    return Pki(tmp_path / "pki")


def _replace(path: Path, content: bytes) -> None:
    """Write content to path atomically: readers see the old file or the new one."""
    staged = path.with_name(path.name + ".tmp")
    staged.write_bytes(content)
    os.replace(staged, path)


def _client_cert(
    ca: trustme.CA, *, name: str, uri: str | None, dns: str | None
) -> tuple[bytes, bytes]:
    """A PEM certificate for a client, signed by ca, and its PEM key."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    if uri is not None:
        names.append(x509.UniformResourceIdentifier(uri))
    if dns is not None:
        names.append(x509.DNSName(dns))
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem
