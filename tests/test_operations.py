"""What on-call sees of a real run: `status` mid-run and after, a progress line on SIGUSR1, JSON logs without
patient data, the closing JSON line, `--version`. One run against the simulated Spine, stopped mid-way."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import IO, Any

import pytest

from batch.nhs_number import is_valid_modulus11
from batch.pki import DevPki, make_dev_pki
from spine_sim.jobfile import free_port, job_tables, write_job
from spine_sim.process import running_sim
from tests.support import REPO, SAMPLE_DATASET, run_cli

pytestmark = pytest.mark.e2e

CHILDREN = 60
TEN_DIGITS = re.compile(r"(?<!\d)\d{10}(?!\d)")


def _numbers(n: int) -> list[str]:
    numbers: list[str] = []
    stem = 999_000_100
    while len(numbers) < n:
        stem += 1
        candidates = [f"{stem}{digit}" for digit in range(10) if is_valid_modulus11(f"{stem}{digit}")]
        numbers.extend(candidates[:1])
    return numbers


class Background:
    """A CLI process whose stdout and stderr lines are collected as they come."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "batch", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        self._changed = threading.Condition()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        assert self.process.stdout is not None and self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, self.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str], lines: list[str]) -> None:
        for line in stream:
            with self._changed:
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for_stderr(self, matches: Callable[[str], bool], timeout: float) -> str:
        """The first stderr line that matches; TimeoutError (a failure) if none comes in time."""
        with self._changed:
            found = self._changed.wait_for(
                lambda: any(matches(line) for line in self.stderr) or self.process.poll() is not None, timeout
            )
            hits = [line for line in self.stderr if matches(line)]
        if not found or not hits:
            raise TimeoutError(f"no such line within {timeout} s; stderr so far: {self.stderr[-5:]}")
        return hits[0]

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=10)
        return code


@dataclass(frozen=True)
class Observed:
    numbers: list[str]
    run_pid: int
    status_during: dict[str, Any]
    status_during_text: str
    progress_line: dict[str, Any]
    returncode: int
    stdout: list[str]
    stderr: list[str]
    status_after: dict[str, Any]
    status_after_text: str


def _is_progress_on_signal(line: str) -> bool:
    try:
        event = json.loads(line)
    except ValueError:
        return False
    return bool(event["message"].startswith("progress:") and event["fields"].get("reason") == "SIGUSR1")


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory, dev_pki: DevPki) -> Iterator[Observed]:
    tmp = tmp_path_factory.mktemp("operations")
    pki = dev_pki.directory
    numbers = _numbers(CHILDREN)
    (tmp / "list.csv").write_text(
        "NHS No,Appointment Date\n" + "".join(f"{nhs},01/12/2026\n" for nhs in numbers)
    )
    inbound_port = free_port()
    reply_url = f"https://127.0.0.1:{inbound_port}/cpis/replies"
    with running_sim(pki_dir=pki, dataset=SAMPLE_DATASET, reply_url=reply_url) as sim:
        tables = job_tables(
            tmp=tmp,
            pki=pki,
            inputs="list.csv",
            spine_url=f"{sim.url}/reliablemessaging/reliablerequest",
            inbound_port=inbound_port,
        )
        tables["limits"]["rate_per_second"] = 20
        job = str(write_job(tmp / "job.toml", tables))
        run = Background("--log-format", "json", "run", job)
        try:
            sim.wait_for_arrivals(5, timeout=60)
            # Spine stops answering: the run is mid-way, and stays so until it is let go on.
            os.kill(sim.process.pid, signal.SIGSTOP)
            try:
                during = run_cli("status", "--json", job, timeout=60)
                during_text = run_cli("status", job, timeout=60)
                os.kill(run.process.pid, signal.SIGUSR1)
                line = run.wait_for_stderr(_is_progress_on_signal, timeout=30)
            finally:
                os.kill(sim.process.pid, signal.SIGCONT)
            returncode = run.wait(timeout=180)
        finally:
            if run.process.poll() is None:
                run.process.kill()
                run.wait(timeout=10)
    after = run_cli("status", "--json", job, timeout=60)
    after_text = run_cli("status", job, timeout=60)
    assert during.returncode == 0 and after.returncode == 0, during.stderr + after.stderr
    yield Observed(
        numbers=numbers,
        run_pid=run.process.pid,
        status_during=json.loads(during.stdout),
        status_during_text=during_text.stdout,
        progress_line=json.loads(line),
        returncode=returncode,
        stdout=run.stdout,
        stderr=run.stderr,
        status_after=json.loads(after.stdout),
        status_after_text=after_text.stdout,
    )


def test_status_during_a_run_shows_progress(observed: Observed) -> None:
    status = observed.status_during
    current = status["current"]
    assert status["lock_holder_pid"] == observed.run_pid
    assert current["state"] == "running"
    assert current["children"] == CHILDREN
    assert current["sent"] >= 5
    assert 0 < current["outstanding"] <= CHILDREN - current["answered"]
    assert current["answered"] == sum(current["outcomes"].values())
    assert current["rate_per_s"] > 0 and current["eta_s"] > 0
    assert [run["run_id"] for run in status["runs"]] == [current["run_id"]]
    text = observed.status_during_text
    assert f"current run {current['run_id']}: running (pid {observed.run_pid})" in text
    assert "ETA" in text and "outstanding" in text


def test_sigusr1_logs_a_progress_line_at_once(observed: Observed) -> None:
    event = observed.progress_line
    fields = event["fields"]
    assert event["level"] == "INFO" and event["logger"] == "batch.progress"
    assert event["run_id"] == observed.status_during["current"]["run_id"]
    assert fields["children"] == CHILDREN and fields["sent"] >= 5 and fields["outstanding"] > 0
    assert set(fields["outcomes"]) == {"flagged", "not_flagged", "error", "no_reply"}
    assert {"rate_per_s", "eta_s", "answered", "awaiting_reply"} <= set(fields)


def test_json_logs_parse_line_by_line_and_hold_no_nhs_number(observed: Observed) -> None:
    assert observed.stderr, "the run logged nothing"
    for line in observed.stderr:
        event = json.loads(line)
        assert {"timestamp", "level", "logger", "run_id", "message", "fields"} <= set(event), line
        assert not TEN_DIGITS.search(line), line
        assert not any(nhs in line for nhs in observed.numbers), line


def test_the_run_ends_with_one_json_summary_line(observed: Observed) -> None:
    last = json.loads(observed.stdout[-1])
    assert last["event"] == "run_finished"
    assert last["exit_code"] == observed.returncode == 0
    assert last["run_id"] == observed.status_after["current"]["run_id"]
    assert last["rows"] == CHILDREN and sum(last["outcomes"].values()) == CHILDREN
    assert Path(last["reports"]).is_dir()
    assert not any(TEN_DIGITS.search(line) for line in observed.stdout)
    assert not any("\x1b[" in line for line in observed.stdout), "no bar when stdout is not a terminal"


def test_status_after_the_run_shows_the_final_counts(observed: Observed) -> None:
    status = observed.status_after
    current = status["current"]
    summary = json.loads(observed.stdout[-1])
    assert status["lock_holder_pid"] is None
    assert current["state"] == "complete" and current["finished_at"] is not None
    assert current["outstanding"] == 0 and current["awaiting_reply"] == 0
    assert current["answered"] == CHILDREN == sum(current["outcomes"].values())
    assert current["sent"] == summary["queries_sent"]
    assert {k: v for k, v in current["outcomes"].items() if v} == {
        k: v for k, v in summary["outcomes"].items() if v
    }
    assert current["rate_per_s"] is None and current["eta_s"] is None
    assert f"last run {current['run_id']}: complete" in observed.status_after_text


def test_status_of_a_job_that_never_ran_is_a_clear_message(tmp_path: Path) -> None:
    tables = job_tables(
        tmp=tmp_path,
        pki=tmp_path / "pki",
        inputs="list.csv",
        spine_url="https://127.0.0.1:9/reliablemessaging/reliablerequest",
        inbound_port=free_port(),
    )
    job = write_job(tmp_path / "job.toml", tables)
    completed = run_cli("status", str(job))
    assert completed.returncode == 2
    assert "no state file: the job has not run yet" in completed.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.toml"]


def test_version_comes_from_the_installed_package() -> None:
    completed = run_cli("--version")
    assert completed.returncode == 0
    assert completed.stdout.strip() == f"cpis-batch {version('cpis-batch')}"


def test_a_run_that_cannot_start_still_ends_with_the_json_line(tmp_path: Path) -> None:
    pki = make_dev_pki(tmp_path / "pki").directory
    (tmp_path / "list.csv").write_text("NHS Number,Appointment Date\n9991234012,01/12/2026\n")
    tables = job_tables(
        tmp=tmp_path,
        pki=pki,
        inputs="list.csv",
        spine_url="https://127.0.0.1:9/reliablemessaging/reliablerequest",
        inbound_port=free_port(),
    )
    job = write_job(tmp_path / "job.toml", tables)
    completed = run_cli("--log-format", "json", "run", str(job))
    assert completed.returncode == 2
    last = json.loads(completed.stdout.splitlines()[-1])
    assert last == {
        "job": "test-job",
        "run_id": None,
        "exit_code": 2,
        "outcomes": {},
        "rows": None,
        "queries_sent": None,
        "duration_s": None,
        "reports": None,
        "event": "run_finished",
    }
    # The one-line error is a JSON record too: stderr stays parseable.
    events = [json.loads(line) for line in completed.stderr.splitlines()]
    assert any(
        e["level"] == "ERROR"
        and "column 'NHS No' not found" in e["message"]
        and e["fields"] == {"exit_code": 2}
        for e in events
    )
