"""`cpis-batch check`: what a run needs, checked ahead of the night without sending a query.

Each check gives one `Check` (OK, WARN or FAIL, a short name and a detail naming the file, key, address or
folder concerned). Details carry paths, certificate subjects, counts and configured column names, never a cell
of a list: a header-less list's first line would be patient data. Nothing is created or written: folders are
judged as the run would judge them (batch.files), the inbound port is bound and closed, and the handshake with
Spine is a mutual-TLS handshake after which nothing is sent.
"""

from __future__ import annotations

import os
import socket
import ssl
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from batch.config import ConfigError, JobConfig, load_job
from batch.files import UnsafePathError, check_not_link, check_private_dir
from batch.inbound import bind_socket
from batch.lock import lock_holder
from batch.patients import InputError, read_list_header, resolve_inputs
from batch.peers import PeerPolicy, PeerPolicyError
from batch.tls import TlsConfigError, client_context, read_certificates, read_private_key

EXPIRY_WARN_DAYS = 30
HANDSHAKE_TIMEOUT_S = 5.0
"""Connect and handshake with Spine, each."""
ALERT_WAIT_S = 0.5
"""After a TLS 1.3 handshake the server judges our certificate; a refusal arrives as an alert within this."""
_MAX_CHAIN = 8


class Level(StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    level: Level
    name: str
    detail: str

    def line(self) -> str:
        return f"{self.level.value:<4} {self.name:<14} {self.detail}"


def _ok(name: str, detail: str) -> Check:
    return Check(Level.OK, name, detail)


def _warn(name: str, detail: str) -> Check:
    return Check(Level.WARN, name, detail)


def _fail(name: str, detail: str) -> Check:
    return Check(Level.FAIL, name, detail)


def run_checks(job_file: Path) -> list[Check]:
    """Every check, in order; the job file first (nothing else can be checked without it)."""
    try:
        cfg = load_job(job_file)
    except ConfigError as exc:
        return [_fail("job-file", str(exc))]
    return [
        _ok("job-file", f"{cfg.path}: job '{cfg.name}', profile {cfg.profile}"),
        *check_inputs(cfg),
        *check_tls_files(cfg),
        check_allowed_peers(cfg),
        check_inbound_port(cfg),
        check_spine(cfg),
        *check_folders(cfg),
    ]


def failed(checks: Sequence[Check]) -> bool:
    return any(check.level is Level.FAIL for check in checks)


# --- inputs -----------------------------------------------------------------------------------------------


def check_inputs(cfg: JobConfig) -> list[Check]:
    """Each list exists, is readable and has the configured columns (header or schema only)."""
    try:
        paths = resolve_inputs(cfg.input_pattern, cfg.base_dir)
    except InputError as exc:
        return [_fail("input", str(exc))]
    spec = cfg.input
    wanted = [spec.nhs_number_column, spec.appointment_date_column, *(c for c, _ in spec.context_columns())]
    columns = ", ".join(f"'{name}'" for name in wanted if name is not None)
    checks = []
    for path in paths:
        try:
            header = read_list_header(path, spec)
        except InputError as exc:
            checks.append(_fail("input", str(exc)))
        else:
            checks.append(_ok("input", f"{path}: {header.kind}, {header.columns} columns, has {columns}"))
    return checks


# --- certificate, key, chain, allowed peers ---------------------------------------------------------------


def _spki(public: PublicKeyTypes) -> bytes:
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _validity(name: str, what: str, cert: x509.Certificate, now: datetime) -> Check:
    subject = cert.subject.rfc4514_string()
    expires = cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")
    days = (cert.not_valid_after_utc - now).total_seconds() / 86400
    if cert.not_valid_before_utc > now:
        since = cert.not_valid_before_utc.strftime("%Y-%m-%d %H:%M UTC")
        return _fail(name, f"{what} {subject} is not valid before {since}")
    if days < 0:
        return _fail(name, f"{what} {subject} expired on {expires} ({-days:.0f} days ago)")
    if days <= EXPIRY_WARN_DAYS:
        return _warn(name, f"{what} {subject} expires on {expires}: {days:.1f} days left; renew it")
    return _ok(name, f"{what} {subject} valid until {expires} ({days:.0f} days left)")


def _issuer(cert: x509.Certificate, candidates: Sequence[x509.Certificate]) -> x509.Certificate | None:
    for candidate in candidates:
        if candidate.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(candidate)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return candidate
    return None


def _chain(cfg: JobConfig, certs: list[x509.Certificate], now: datetime) -> Check:
    try:
        anchors = read_certificates(cfg.tls.ca, "CA")
    except TlsConfigError as exc:
        return _fail("chain", str(exc))
    chain, current = [certs[0]], certs[0]
    while current not in anchors:
        issuer = _issuer(current, [*certs[1:], *anchors])
        if issuer is None or len(chain) > _MAX_CHAIN:
            return _fail(
                "chain",
                f"{cfg.tls.cert}: {current.subject.rfc4514_string()} is not issued by a CA in {cfg.tls.ca} "
                f"(its issuer: {current.issuer.rfc4514_string()})",
            )
        chain.append(issuer)
        current = issuer
    for cert in chain[1:]:
        validity = _validity("chain", "CA certificate", cert, now)
        if validity.level is not Level.OK:
            return validity
    path = " <- ".join(cert.subject.rfc4514_string() for cert in chain)
    return _ok("chain", f"{path} (trusted in {cfg.tls.ca})")


def _key_check(cfg: JobConfig, leaf: x509.Certificate | None) -> Check:
    try:
        key: PrivateKeyTypes = read_private_key(cfg.tls.key)
    except TlsConfigError as exc:
        return _fail("key", str(exc))
    if leaf is not None and _spki(key.public_key()) != _spki(leaf.public_key()):
        return _fail("key", f"{cfg.tls.key} does not match the certificate {cfg.tls.cert}")
    matches = "matches the certificate" if leaf is not None else "readable"
    mode = stat.S_IMODE(cfg.tls.key.stat().st_mode)
    if mode & 0o077:
        return _warn(
            "key", f"{cfg.tls.key} {matches}, but others may read it (mode {mode:04o}; chmod 600 it)"
        )
    return _ok("key", f"{cfg.tls.key} {matches}")


def check_tls_files(cfg: JobConfig) -> list[Check]:
    """Our certificate (not expired; WARN within 30 days), its key (matching) and its chain to the CA."""
    now = datetime.now(UTC)
    try:
        certs = read_certificates(cfg.tls.cert, "certificate")
    except TlsConfigError as exc:
        return [_fail("certificate", str(exc)), _key_check(cfg, None)]
    validity = _validity("certificate", f"{cfg.tls.cert}:", certs[0], now)
    return [validity, _key_check(cfg, certs[0]), _chain(cfg, certs, now)]


def check_allowed_peers(cfg: JobConfig) -> Check:
    """Each entry parses. Whether one names the certificate Spine will present is known only when it posts."""
    entries = cfg.inbound.allowed_peers
    if entries is None:
        return _warn(
            "allowed-peers",
            "inbound.allowed_peers is not set: any certificate issued by the CA may post replies "
            "(only the simulated profile allows this)",
        )
    try:
        policy = PeerPolicy.from_config(entries)
    except PeerPolicyError as exc:
        return _fail("allowed-peers", str(exc))
    return _ok(
        "allowed-peers",
        f"{len(entries)} well-formed entr{'y' if len(entries) == 1 else 'ies'}: {policy.describe()}",
    )


# --- network -------------------------------------------------------------------------------------------------


def check_inbound_port(cfg: JobConfig) -> Check:
    """The reply endpoint's address can be bound (bound, then closed)."""
    inbound = cfg.inbound
    try:
        sock = bind_socket(inbound)
    except OSError as exc:
        try:
            holder = lock_holder(cfg.lock_path)
        except OSError:
            holder = None
        running = f"; a run of this job is going (pid {holder})" if holder is not None else ""
        return _fail(
            "inbound-port", f"cannot listen on {inbound.host}:{inbound.port} ({exc.strerror}){running}"
        )
    sock.close()
    return _ok("inbound-port", f"{inbound.host}:{inbound.port} is free; Spine posts replies to {inbound.url}")


def check_spine(cfg: JobConfig) -> Check:
    """A mutual-TLS handshake with Spine's URL, as the run makes it; nothing is sent after it."""
    parts = urlsplit(cfg.spine.url)
    host, port = parts.hostname or "", parts.port or 443
    where = f"{host}:{port}"
    try:
        context = client_context(cfg.tls.cert, cfg.tls.key, cfg.tls.ca)
    except TlsConfigError as exc:
        return _fail("spine-tls", f"no handshake with {where} tried: {exc}")
    try:
        with (
            socket.create_connection((host, port), timeout=HANDSHAKE_TIMEOUT_S) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            version = tls.version()
            der = tls.getpeercert(binary_form=True)
            refused = _refusal_after_handshake(tls)
    except ssl.SSLCertVerificationError as exc:
        return _fail("spine-tls", f"{where}: Spine's certificate is not trusted ({exc.verify_message})")
    except ssl.SSLError as exc:
        return _fail("spine-tls", f"{where}: TLS handshake failed ({exc.reason or exc})")
    except TimeoutError:
        return _fail("spine-tls", f"{where}: no answer within {HANDSHAKE_TIMEOUT_S:g} s")
    except OSError as exc:
        return _fail("spine-tls", f"{where}: cannot connect ({exc.strerror or exc})")
    if refused is not None:
        return _fail("spine-tls", f"{where}: Spine refused our certificate after the handshake ({refused})")
    peer = x509.load_der_x509_certificate(der).subject.rfc4514_string() if der else "no certificate"
    return _ok("spine-tls", f"{where}: {version} handshake, mutual; Spine is {peer}")


def _refusal_after_handshake(tls: ssl.SSLSocket) -> str | None:
    """In TLS 1.3 the server checks our certificate after the client's handshake ends, and refuses it with an
    alert; wait briefly for one (reading only)."""
    tls.settimeout(ALERT_WAIT_S)
    try:
        data = tls.recv(1)
    except TimeoutError:
        return None
    except ssl.SSLError as exc:
        return str(exc.reason or exc)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None if data else "it closed the connection"


# --- folders -------------------------------------------------------------------------------------------------


def _folder(name: str, folder: Path, what: str) -> Check:
    try:
        parent = check_private_dir(folder, what)
    except UnsafePathError as exc:
        return _fail(name, str(exc))
    if parent is not None:
        return _ok(name, f"{folder}: not there yet; the run will make it (private) in {parent}")
    return _ok(name, f"{folder}: ours, and no other user may write it")


def check_folders(cfg: JobConfig) -> list[Check]:
    """The output and state folders and the state's files, by the rules the run enforces (batch.files)."""
    checks = [
        _folder("output-folder", cfg.output_dir, "output folder"),
        _folder("state-folder", cfg.state.parent, "state folder"),
    ]
    state = cfg.state
    try:
        for path, what in (
            (state, "state file"),
            (state.with_name(state.name + "-wal"), "state WAL file"),
            (state.with_name(state.name + "-shm"), "state shared-memory file"),
            (cfg.lock_path, "lock file"),
        ):
            check_not_link(path, what)
    except UnsafePathError as exc:
        checks.append(_fail("state-file", str(exc)))
    else:
        exists = os.path.lexists(state)
        checks.append(
            _ok("state-file", f"{state}: {'ours' if exists else 'not there yet; the first run makes it'}")
        )
    return checks
