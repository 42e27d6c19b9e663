"""TLS for the server: credentials that follow rotated certificate files, and peer identities.

Imports grpc, cryptography and the standard library only.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import cast

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

_log = logging.getLogger(__name__)

#: What grpc.aio's ServicerContext.auth_context() returns: the peer's TLS properties.
AuthContext = Mapping[str, Iterable[bytes]]

#: A file's (mtime_ns, size, inode), None when it cannot be looked at.
_FileStamp = tuple[int, int, int] | None


class TlsConfigError(Exception):
    """A TLS file that does not load or does not fit; the message is one line of why."""


@dataclasses.dataclass(frozen=True)
class _TlsFiles:
    cert_file: str
    key_file: str
    client_ca_file: str | None

    def paths(self) -> tuple[str, ...]:
        return (self.cert_file, self.key_file, *filter(None, (self.client_ca_file,)))


def server_credentials(
    *, cert_file: str, key_file: str, client_ca_file: str | None
) -> grpc.ServerCredentials:
    """Server credentials from PEM files, checked now; TlsConfigError when they do not load.

    New connections get the files' current contents: when a file changes and the new set
    loads and matches, it replaces the old one, else the old one stays (with a warning).
    With client_ca_file, a client must present a certificate that CA signed (mTLS).
    """
    if not cert_file or not key_file:
        if client_ca_file:
            raise TlsConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        raise TlsConfigError("--tls-cert and --tls-key go together")
    files = _TlsFiles(cert_file, key_file, client_ca_file)
    stamp = _stamp(files)
    initial = _load(files)
    fetcher = _Reloader(files, stamp)
    return grpc.dynamic_ssl_server_credentials(
        initial,
        # grpc takes None as "no change", which its stubs leave out.
        cast(Callable[[], grpc.ServerCertificateConfiguration], fetcher),
        require_client_authentication=client_ca_file is not None,
    )


class _Reloader:
    """grpc's certificate fetcher, asked at every handshake: a new configuration or None."""

    def __init__(self, files: _TlsFiles, stamp: tuple[_FileStamp, ...]) -> None:
        self._files = files
        self._stamp = stamp
        self._rejected: tuple[_FileStamp, ...] | None = None
        self._lock = threading.Lock()

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            stamp = _stamp(self._files)
            if stamp in (self._stamp, self._rejected):
                return None
            try:
                configuration = _load(self._files)
            except TlsConfigError as error:
                # Retried once the files change again: a rotation may be half-written.
                self._rejected = stamp
                _log.warning("keeping the TLS certificate in use: %s", error)
                return None
            self._stamp = stamp
            self._rejected = None
            _log.info("TLS certificate files changed: new connections use them")
            return configuration


def _stamp(files: _TlsFiles) -> tuple[_FileStamp, ...]:
    return tuple(_file_stamp(path) for path in files.paths())


def _file_stamp(path: str) -> _FileStamp:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_mtime_ns, status.st_size, status.st_ino)


def _load(files: _TlsFiles) -> grpc.ServerCertificateConfiguration:
    """The grpc configuration of files, checked: certificates load and the key matches."""
    chain = _read(files.cert_file, flag="--tls-cert")
    key = _read(files.key_file, flag="--tls-key")
    certificate = _certificates(chain, flag="--tls-cert", path=files.cert_file)[0]
    _check_key_matches(key, certificate, files=files)
    client_ca = None
    if files.client_ca_file is not None:
        client_ca = _read(files.client_ca_file, flag="--tls-client-ca")
        _certificates(client_ca, flag="--tls-client-ca", path=files.client_ca_file)
    return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=client_ca)


def _read(path: str, *, flag: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise TlsConfigError(f"{flag} {path}: cannot read it: {error.strerror}") from None


def _certificates(data: bytes, *, flag: str, path: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsConfigError(f"{flag} {path}: holds no PEM certificate") from None


def _check_key_matches(key: bytes, certificate: x509.Certificate, *, files: _TlsFiles) -> None:
    try:
        private_key = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise TlsConfigError(
            f"--tls-key {files.key_file}: not an unencrypted PEM private key ({reason})"
        ) from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private_key.public_key().public_bytes(*spki) != certificate.public_key().public_bytes(*spki):
        raise TlsConfigError(
            f"--tls-key {files.key_file} does not match the certificate in {files.cert_file}"
        )


def certificate_identities(auth_context: AuthContext) -> list[str]:
    """The peer certificate's URI SANs, then its DNS SANs; [] without a peer certificate.

    grpc lists them apart as `peer_uri` and `peer_dns` (its `x509_subject_alternative_name`
    mixes every kind); when those are absent the certificate itself is read.
    """
    pem = next(iter(auth_context.get("x509_pem_cert", ())), b"")
    if not pem:
        return []
    if "peer_uri" in auth_context or "peer_dns" in auth_context:
        uris = [_text(value) for value in auth_context.get("peer_uri", ())]
        dns = [_text(value) for value in auth_context.get("peer_dns", ())]
        return uris + dns
    return list(_parsed_identities(pem))


def service_identity(auth_context: AuthContext, allowed: frozenset[str]) -> str:
    """The peer's first URI SAN in allowed, else its first DNS SAN in allowed, else ""."""
    if not allowed or "x509_pem_cert" not in auth_context:
        return ""
    return next((name for name in certificate_identities(auth_context) if name in allowed), "")


@functools.lru_cache(maxsize=256)
def _parsed_identities(pem: bytes) -> tuple[str, ...]:
    """URI SANs then DNS SANs of a PEM certificate; () when it does not parse."""
    try:
        names = (
            x509.load_pem_x509_certificate(pem)
            .extensions.get_extension_for_class(x509.SubjectAlternativeName)
            .value
        )
    except (ValueError, x509.ExtensionNotFound):
        return ()
    return (
        *names.get_values_for_type(x509.UniformResourceIdentifier),
        *names.get_values_for_type(x509.DNSName),
    )


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")
