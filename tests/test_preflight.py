"""`cpis-batch check`: one line per check, exit 0 or 2, no query sent, nothing created, no patient data."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from batch.patients import InputError, InputSpec, read_list_header, read_patient_lists
from batch.pki import DevPki, make_dev_pki, spine_allowed_peer
from spine_sim.jobfile import free_port, job_tables, write_job
from spine_sim.process import SimProcess, running_sim
from tests.support import SAMPLE_DATA, SAMPLE_DATASET, run_cli

pytestmark = pytest.mark.e2e

NHS_NUMBERS = ("9991234012", "9991234020")


@dataclass(frozen=True)
class Setup:
    pki: DevPki
    sim: SimProcess
    inbound_port: int


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("preflight")
    pki = make_dev_pki(tmp / "pki")
    inbound_port = free_port()
    with running_sim(
        pki_dir=pki.directory,
        dataset=SAMPLE_DATASET,
        reply_url=f"https://127.0.0.1:{inbound_port}/cpis/replies",
    ) as sim:
        yield Setup(pki, sim, inbound_port)


def _tables(tmp: Path, setup: Setup) -> dict[str, dict[str, Any]]:
    lists = tmp / "lists"
    lists.mkdir()
    (lists / "clinic.csv").write_text(
        "NHS No,Appointment Date\n" + "".join(f"{nhs},01/12/2026\n" for nhs in NHS_NUMBERS)
    )
    shutil.copy(SAMPLE_DATA / "clinic-audiology.parquet", lists / "audiology.parquet")
    tables = job_tables(
        tmp=tmp,
        pki=setup.pki.directory,
        inputs="lists/*",
        spine_url=f"{setup.sim.url}/reliablemessaging/reliablerequest",
        inbound_port=setup.inbound_port,
    )
    tables["inbound"]["allowed_peers"] = [spine_allowed_peer(setup.pki)]
    return tables


@dataclass(frozen=True)
class Outcome:
    code: int
    lines: dict[str, list[str]]
    """Check name -> the lines of that check, e.g. {"key": ["FAIL key ..."]}."""
    output: str

    def levels(self, level: str) -> set[str]:
        return {name for name, lines in self.lines.items() if any(line.startswith(level) for line in lines)}

    def line(self, name: str) -> str:
        return "\n".join(self.lines[name])


def _check(tmp: Path, tables: dict[str, dict[str, Any]]) -> Outcome:
    job = write_job(tmp / "job.toml", tables)
    completed = run_cli("check", str(job), timeout=120)
    lines: dict[str, list[str]] = {}
    for line in completed.stdout.splitlines():
        level, name, _ = line.split(maxsplit=2)
        assert level in ("OK", "WARN", "FAIL"), line
        lines.setdefault(name, []).append(line)
    output = completed.stdout + completed.stderr
    assert not any(nhs in output for nhs in NHS_NUMBERS), "patient data in check's output"
    # Nothing is created: no state, lock or output folder.
    assert not (tmp / "state").exists() and not (tmp / "out").exists()
    return Outcome(completed.returncode, lines, output)


def _fails_only(outcome: Outcome, *names: str, allowed: tuple[str, ...] = ()) -> None:
    assert outcome.code == 2, outcome.output
    assert set(names) <= outcome.levels("FAIL") <= set(names) | set(allowed), outcome.output


def test_passes_on_the_demo_like_job_and_sends_no_query(tmp_path: Path, setup: Setup) -> None:
    outcome = _check(tmp_path, _tables(tmp_path, setup))
    assert outcome.code == 0, outcome.output
    assert outcome.levels("FAIL") == set() and outcome.levels("WARN") == set(), outcome.output
    expected = {
        "job-file",
        "input",
        "certificate",
        "key",
        "chain",
        "allowed-peers",
        "inbound-port",
        "spine-tls",
    }
    assert expected | {"output-folder", "state-folder", "state-file"} == set(outcome.lines)
    assert len(outcome.lines["input"]) == 2
    assert "TLSv1" in outcome.line("spine-tls") and "CN=spine-sim" in outcome.line("spine-tls")
    assert "days left" in outcome.line("certificate")
    assert setup.sim.stats()["queries_received"] == 0


def _issue(
    pki: DevPki, key: ec.EllipticCurvePrivateKey, not_before: datetime, not_after: datetime
) -> x509.Certificate:
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cpis-batch-expired")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)
    return path


def test_an_expired_certificate_is_named(tmp_path: Path, setup: Setup) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = _issue(setup.pki, key, now - timedelta(days=10), now - timedelta(days=2))
    tables = _tables(tmp_path, setup)
    tables["tls"]["cert"] = str(tmp_path / "expired.pem")
    tables["tls"]["key"] = str(_write_key(tmp_path / "expired.key", key))
    (tmp_path / "expired.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    outcome = _check(tmp_path, tables)
    # Spine refuses an expired client certificate too; the chain to the dev CA is still fine.
    _fails_only(outcome, "certificate", allowed=("spine-tls",))
    assert "expired on" in outcome.line("certificate") and "2 days ago" in outcome.line("certificate")
    assert outcome.line("chain").startswith("OK") and outcome.line("key").startswith("OK")


def test_a_certificate_expiring_soon_is_a_warning(tmp_path: Path, setup: Setup) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = _issue(setup.pki, key, now - timedelta(days=1), now + timedelta(days=10))
    tables = _tables(tmp_path, setup)
    (tmp_path / "soon.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tables["tls"]["cert"] = str(tmp_path / "soon.pem")
    tables["tls"]["key"] = str(_write_key(tmp_path / "soon.key", key))
    outcome = _check(tmp_path, tables)
    assert outcome.code == 0, outcome.output
    assert outcome.line("certificate").startswith("WARN") and "days left; renew it" in outcome.line(
        "certificate"
    )


def test_a_key_that_does_not_match_is_named(tmp_path: Path, setup: Setup) -> None:
    tables = _tables(tmp_path, setup)
    tables["tls"]["key"] = str(_write_key(tmp_path / "other.key", ec.generate_private_key(ec.SECP256R1())))
    outcome = _check(tmp_path, tables)
    # The handshake cannot be tried with a key that does not match.
    _fails_only(outcome, "key", "spine-tls")
    assert "does not match the certificate" in outcome.line("key")


def test_a_certificate_from_another_ca_does_not_chain(tmp_path: Path, setup: Setup) -> None:
    other = make_dev_pki(tmp_path / "other-pki")
    tables = _tables(tmp_path, setup)
    tables["tls"]["cert"], tables["tls"]["key"] = str(other.client_cert), str(other.client_key)
    outcome = _check(tmp_path, tables)
    _fails_only(outcome, "chain", allowed=("spine-tls",))
    assert "is not issued by a CA in" in outcome.line("chain")


def test_a_missing_input_column_is_named(tmp_path: Path, setup: Setup) -> None:
    tables = _tables(tmp_path, setup)
    (tmp_path / "lists" / "clinic.csv").write_text("NHS Number,Appointment Date\n9991234012,01/12/2026\n")
    outcome = _check(tmp_path, tables)
    _fails_only(outcome, "input")
    assert "clinic.csv: row 1: column 'NHS No' not found" in outcome.line("input")
    assert any(line.startswith("OK") for line in outcome.lines["input"]), "the other list is fine"


def test_a_taken_inbound_port_is_named(tmp_path: Path, setup: Setup) -> None:
    tables = _tables(tmp_path, setup)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", setup.inbound_port))
        taken.listen()
        outcome = _check(tmp_path, tables)
    _fails_only(outcome, "inbound-port")
    assert f"cannot listen on 127.0.0.1:{setup.inbound_port} (Address already in use)" in outcome.line(
        "inbound-port"
    )


def test_spine_not_listening_is_named(tmp_path: Path, setup: Setup) -> None:
    tables = _tables(tmp_path, setup)
    port = free_port()
    tables["spine"]["url"] = f"https://127.0.0.1:{port}/reliablemessaging/reliablerequest"
    outcome = _check(tmp_path, tables)
    _fails_only(outcome, "spine-tls")
    assert f"127.0.0.1:{port}: cannot connect (Connection refused)" in outcome.line("spine-tls")


def test_a_world_writable_output_folder_is_named(tmp_path: Path, setup: Setup) -> None:
    tables = _tables(tmp_path, setup)
    out = tmp_path / "shared-out"
    out.mkdir()
    out.chmod(0o777)
    tables["job"]["output_dir"] = str(out)
    outcome = _check(tmp_path, tables)
    _fails_only(outcome, "output-folder")
    assert f"{out}: the output folder is writable by other users" in outcome.line("output-folder")
    assert os.listdir(out) == []


def test_a_bad_job_file_names_the_key(tmp_path: Path, setup: Setup) -> None:
    tables = _tables(tmp_path, setup)
    tables["limits"]["rate_per_secnd"] = 5
    outcome = _check(tmp_path, tables)
    assert outcome.code == 2
    assert list(outcome.lines) == ["job-file"]
    assert "did you mean `limits.rate_per_second`?" in outcome.line("job-file")


# --- the header check agrees with the reader ----------------------------------------------------------------

SPEC = InputSpec(nhs_number_column="NHS No", appointment_date_column="Appointment Date")


def _parquet_ints(path: Path) -> None:
    pl.DataFrame({"NHS No": [9991234012], "Appointment Date": ["01/12/2026"]}).write_parquet(path)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("semicolons.csv", b"NHS No;Appointment Date\n9991234012;01/12/2026\n"),
        ("duplicate.csv", b"NHS No,NHS No,Appointment Date\n9991234012,x,01/12/2026\n"),
        ("no-date.csv", b"NHS No,Clinic\n9991234012,x\n"),
        ("empty.csv", b"\n\n"),
        ("excel.csv", b"PK\x03\x04rest of a zip"),
        ("latin1.csv", "NHS N\u00ba,Appointment Date\n".encode("latin-1")),
        ("nul.csv", b"NHS No,\x00Appointment Date\n"),
        ("ints.parquet", None),
        ("notes.docx", b"whatever"),
    ],
)
def test_the_header_check_fails_as_the_reader_does(tmp_path: Path, name: str, content: bytes | None) -> None:
    path = tmp_path / name
    if content is None:
        _parquet_ints(path)
    else:
        path.write_bytes(content)
    with pytest.raises(InputError) as from_reader:
        read_patient_lists([path], SPEC)
    with pytest.raises(InputError, match=r"\S") as from_header:
        read_list_header(path, SPEC)
    assert str(from_header.value) == str(from_reader.value)


def test_the_header_check_reads_a_bom_and_crlf_as_the_reader_does(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfNHS No,Appointment Date,Clinic\r\n9991234012,01/12/2026,x\r\n")
    assert read_patient_lists([path], SPEC).height == 1
    header = read_list_header(path, SPEC)
    assert (header.kind, header.columns) == ("CSV", 3)
    # A blank first line is the reader's header too, so both refuse such a list (each in its own words).
    blank = tmp_path / "blank-first.csv"
    blank.write_bytes(b"\nNHS No,Appointment Date\n9991234012,01/12/2026\n")
    with pytest.raises(InputError, match="malformed CSV"):
        read_patient_lists([blank], SPEC)
    with pytest.raises(InputError, match="column 'NHS No' not found"):
        read_list_header(blank, SPEC)
