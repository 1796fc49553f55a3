"""Mutual-TLS contexts for both legs: the query endpoint and the reply POSTs."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path


class TlsError(Exception):
    """A certificate, key or CA file that is missing or unusable."""


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path


def pki_files(directory: Path) -> TlsFiles:
    """The simulator's identity in a development PKI directory (``cpis-batch certs`` writes one)."""
    return TlsFiles(directory / "spine.pem", directory / "spine.key", directory / "ca.pem")


def _no_password() -> bytes:
    # OpenSSL asks only for an encrypted key; prompting on a terminal would hang a test run.
    raise TlsError("encrypted private keys are not supported")


def _load(context: ssl.SSLContext, files: TlsFiles) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_cert_chain(certfile=files.cert, keyfile=files.key, password=_no_password)
        context.load_verify_locations(cafile=files.ca)
    except OSError as exc:  # ssl.SSLError is an OSError
        raise TlsError(f"cannot use {files.cert}, {files.key} and {files.ca}: {exc}") from None
    return context


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """The query endpoint: a client certificate issued under the CA is required."""
    return _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), files)


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """The reply leg: present the same certificate, and check the receiver's chain and host name."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = True
    return _load(context, files)
