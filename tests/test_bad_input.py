"""Bad input at the command line: one clear line naming file, row and reason, exit 2, nothing written."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from batch.pki import make_dev_pki
from spine_sim.jobfile import free_port, job_tables, write_job
from tests.support import REPO, run_cli

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d (INFO|WARNING) ")
HEADER = "NHS No,Patient Name,Appointment Date\n"
ROW = "9991234012,Test Child,01/12/2026\n"


def _write(name: str, data: bytes) -> Callable[[Path], str]:
    def make(folder: Path) -> str:
        (folder / name).write_bytes(data)
        return name

    return make


def _parquet_int(folder: Path) -> str:
    pl.DataFrame({"NHS No": [9991234012], "Appointment Date": ["01/12/2026"]}).write_parquet(
        folder / "ints.parquet"
    )
    return "ints.parquet"


def _parquet_nested(folder: Path) -> str:
    # Such a column once passed validation and crashed the CSV report after every query had been sent.
    pl.DataFrame(
        {"NHS No": ["9991234012"], "Appointment Date": ["01/12/2026"], "Contacts": [[{"role": "GP"}]]}
    ).write_parquet(folder / "nested.parquet")
    return "nested.parquet"


def _wide(folder: Path) -> str:
    names = ["NHS No", "Appointment Date", *(f"c{i}" for i in range(3, 20_001))]
    (folder / "wide.csv").write_text(",".join(names) + "\n" + ROW)
    return "wide.csv"


def _big_line(folder: Path) -> str:
    # A 1 GiB file with no line break: must fail fast, in bounded memory.
    path = folder / "one-line.csv"
    block = b"9" * (1 << 20)
    with path.open("wb") as fh:
        for _ in range(1024):
            fh.write(block)
    return path.name


def _directory(folder: Path) -> str:
    (folder / "lists.csv").mkdir()
    return "lists.csv"


CASES: dict[str, tuple[Callable[[Path], str], str]] = {
    "empty file": (_write("empty.csv", b""), "empty file"),
    "header only": (_write("header.csv", HEADER.encode()), "no data rows"),
    "missing NHS column": (
        _write("cols.csv", b"Name,Appointment Date\nA,01/12/2026\n"),
        "column 'NHS No' not found",
    ),
    "wrong delimiter": (_write("semi.csv", (HEADER + ROW).replace(",", ";").encode()), "delimiter"),
    "non-UTF-8": (
        _write("latin.csv", (HEADER + ROW).encode() + b"9991234020,Ren\xe9e \xff\xfe,01/12/2026\n"),
        "row 3",
    ),
    "binary file": (_write("binary.csv", b"\x00\x01\x02PK\x03\x04" * 100), "binary"),
    "1 GB single line": (_big_line, "row 1"),
    "directory": (_directory, "is a directory"),
    "missing file": (lambda folder: "absent.csv", "file not found"),
    "Parquet integer column": (_parquet_int, "must be stored as text"),
    "Parquet nested column": (_parquet_nested, "column 'Contacts' is List: nested or binary columns"),
    "20,000 columns": (_wide, "row 1: too many columns (20000): a list may hold at most 1000"),
}


def _job(folder: Path, pki: Path, inputs: str) -> Path:
    tables = job_tables(
        tmp=folder,
        pki=pki,
        inputs=inputs,
        spine_url="https://127.0.0.1:9/reliablemessaging/reliablerequest",
        inbound_port=9,
    )
    return write_job(folder / "job.toml", tables)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dev_pki(tmp_path_factory.mktemp("pki")).directory


def _assert_refused(
    completed: subprocess.CompletedProcess[str], folder: Path, file_name: str, needle: str
) -> None:
    assert completed.returncode == 2, completed.stderr
    lines = completed.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("cpis-batch: error: ")]
    assert len(errors) == 1, completed.stderr  # one line for the user
    assert all(line in errors or LOG_LINE.match(line) for line in lines), completed.stderr  # no traceback
    assert file_name in errors[0]
    assert needle in errors[0]
    assert "Traceback" not in completed.stderr
    assert not (folder / "out").exists()
    assert not (folder / "state").exists()


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_cleanly(case: str, tmp_path: Path, pki: Path) -> None:
    make, needle = CASES[case]
    file_name = make(tmp_path)
    completed = run_cli("run", str(_job(tmp_path, pki, file_name)))
    _assert_refused(completed, tmp_path, file_name, needle)
    if case == "1 GB single line":
        (tmp_path / file_name).unlink()


def test_a_job_file_with_an_unknown_key_is_refused(tmp_path: Path, pki: Path) -> None:
    (tmp_path / "list.csv").write_text(HEADER + ROW)
    tables = job_tables(
        tmp=tmp_path,
        pki=pki,
        inputs="list.csv",
        spine_url="https://127.0.0.1:9/reliablemessaging/reliablerequest",
        inbound_port=free_port(),
    )
    tables["limits"]["max_inflight"] = 10
    completed = run_cli("run", str(write_job(tmp_path / "job.toml", tables)))
    needle = "unknown key `limits.max_inflight`; did you mean `limits.max_in_flight`?"
    _assert_refused(completed, tmp_path, "job.toml", needle)


def _run_tolerated(tmp_path: Path, pki: Path, name: str, data: bytes) -> tuple[int, pl.DataFrame]:
    (tmp_path / name).write_bytes(data)
    tables = job_tables(
        tmp=tmp_path,
        pki=pki,
        inputs=name,
        # Nothing listens on port 9: a valid child ends as a send failure, which is fine here.
        spine_url="https://127.0.0.1:9/reliablemessaging/reliablerequest",
        inbound_port=free_port(),
    )
    completed = run_cli("run", str(write_job(tmp_path / "job.toml", tables)))
    assert completed.returncode in (0, 1), completed.stderr
    return completed.returncode, pl.read_parquet(tmp_path / "out" / "latest" / "results.parquet")


def test_bom_and_crlf_are_read_as_usual(tmp_path: Path, pki: Path) -> None:
    data = b"\xef\xbb\xbf" + (HEADER + ROW).replace("\n", "\r\n").encode()
    code, results = _run_tolerated(tmp_path, pki, "bom-crlf.csv", data)
    assert results.columns[:3] == ["NHS No", "Patient Name", "Appointment Date"]
    assert results.get_column("nhs_number").to_list() == ["9991234012"]
    assert results.get_column("outcome").to_list() == ["error"]  # no Spine on port 9
    assert code == 1


def test_excel_damaged_numbers_are_row_outcomes(tmp_path: Path, pki: Path) -> None:
    data = (HEADER + "9.99123E+09,Excel Damaged,01/12/2026\n999123401,Lost Zero,01/12/2026\n").encode()
    code, results = _run_tolerated(tmp_path, pki, "excel.csv", data)
    assert results.get_column("outcome").to_list() == ["invalid_nhs_number", "invalid_nhs_number"]
    assert results.get_column("reason").to_list() == ["scientific_notation", "leading_zero_lost"]
    assert code == 0


def test_unreadable_file(tmp_path: Path, pki: Path) -> None:
    private = tmp_path / "secret.csv"
    private.write_text(HEADER + ROW)
    private.chmod(0)
    command = [sys.executable, "-m", "batch", "run", str(_job(tmp_path, pki, "secret.csv"))]
    if os.geteuid() == 0:
        # Permissions do not bind root; without the DAC capabilities they do.
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and util-linux setpriv is not installed to drop CAP_DAC_OVERRIDE")
        command = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--", *command]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False, timeout=120)
    _assert_refused(completed, tmp_path, "secret.csv", "permission denied")


def test_a_taken_inbound_port_is_refused_before_any_state(tmp_path: Path, pki: Path) -> None:
    (tmp_path / "list.csv").write_text(HEADER + ROW)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        tables = job_tables(
            tmp=tmp_path,
            pki=pki,
            inputs="list.csv",
            spine_url="https://127.0.0.1:9/reliablemessaging/reliablerequest",
            inbound_port=holder.getsockname()[1],
        )
        completed = run_cli("run", str(write_job(tmp_path / "job.toml", tables)))
    assert completed.returncode == 2, completed.stderr
    assert "cannot listen on 127.0.0.1:" in completed.stderr and "Traceback" not in completed.stderr
    # Only the job's lock file (taken first, so a concurrent run meets the lock, not the port) is there.
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["state.sqlite.lock"]
    assert not (tmp_path / "out").exists()
