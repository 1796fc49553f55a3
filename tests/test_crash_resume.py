"""SIGKILL at five stages, resume each time: the final reports equal an uninterrupted run's, row for row."""

from __future__ import annotations

import signal
from pathlib import Path

import polars as pl
import pytest

from batch.pki import DevPki
from spine_sim.dataset import generate_dataset
from spine_sim.jobfile import free_port, job_tables, write_job
from spine_sim.process import running_sim
from tests.support import run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHILDREN = 60
# Columns that legitimately differ between a clean and a resumed run (ids and times of the attempts).
VOLATILE = ("attempts", "message_id", "queried_at")
KILL_POINTS = {
    "before sending": "run_started",
    "first queries recorded, not yet posted": "attempt_recorded:5",
    "mid-sending": f"query_accepted:{CHILDREN // 2}",
    "waiting for replies": f"query_accepted:{CHILDREN}",
    "writing reports": "reports_staged",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, dev_pki: DevPki) -> dict:
    tmp = tmp_path_factory.mktemp("crash")
    dataset = generate_dataset(CHILDREN, seed=11)
    dataset.dump(tmp / "dataset.json")
    numbers = list(dataset.nhs_numbers())[:CHILDREN]
    rows = [*numbers, numbers[0], "12345", ""]
    pl.DataFrame(
        {"NHS No": rows, "Appointment Date": ["15/01/2027"] * len(rows), "Clinic": ["ENT"] * len(rows)}
    ).write_csv(tmp / "list.csv")
    return {"tmp": tmp, "pki": dev_pki.directory}


def _job(world: dict, name: str, spine_url: str, port: int) -> Path:
    folder = world["tmp"] / name
    folder.mkdir()
    tables = job_tables(
        tmp=folder,
        pki=world["pki"],
        inputs=str(world["tmp"] / "list.csv"),
        spine_url=spine_url,
        inbound_port=port,
    )
    tables["limits"].update(rate_per_second=40, reply_timeout_s=3)
    return write_job(folder / "job.toml", tables)


def _reports(job: Path) -> dict[str, pl.DataFrame]:
    latest = job.parent / "out" / "latest"
    results = pl.read_parquet(latest / "results.parquet").drop(VOLATILE)
    flagged = pl.read_parquet(latest / "flagged.parquet").drop("message_id", "queried_at")
    exceptions = pl.read_csv(latest / "exceptions.csv", infer_schema=False).drop(VOLATILE)
    return {"results": results, "flagged": flagged, "exceptions": exceptions}


def _run(world: dict, name: str, failpoint: str | None) -> tuple[Path, list[int]]:
    port = free_port()
    codes = []
    # Replies take a while, so a kill "waiting for replies" really leaves queries in flight.
    with running_sim(
        pki_dir=world["pki"],
        dataset=world["tmp"] / "dataset.json",
        reply_url=f"https://127.0.0.1:{port}/cpis/replies",
        extra_args=["--latency-ms", "800"],
    ) as sim:
        job = _job(world, name, f"{sim.url}/reliablemessaging/reliablerequest", port)
        if failpoint is not None:
            killed = run_cli("run", str(job), env={"CPIS_BATCH_FAILPOINT": failpoint})
            codes.append(killed.returncode)
        resumed = run_cli("run", str(job))
        codes.append(resumed.returncode)
        assert resumed.returncode in (0, 1), resumed.stderr[-2000:]
        if failpoint is not None:
            assert "resumed run" in resumed.stderr
        stats = sim.stats()
    assert stats["notifications"] == 0
    return job, codes


@pytest.fixture(scope="module")
def clean(world: dict) -> tuple[dict[str, pl.DataFrame], int]:
    job, codes = _run(world, "clean", None)
    return _reports(job), codes[-1]


@pytest.mark.parametrize("stage", list(KILL_POINTS))
def test_killed_run_resumes_to_identical_reports(stage: str, world: dict, clean: tuple) -> None:
    clean_reports, clean_code = clean
    job, codes = _run(world, stage.replace(" ", "-").replace(",", ""), KILL_POINTS[stage])
    assert codes[0] == -signal.SIGKILL, "the failpoint did not fire"
    assert codes[1] == clean_code
    reports = _reports(job)
    for name, frame in clean_reports.items():
        assert reports[name].equals(frame), f"{name} differs after a kill {stage}"
    # Only one run exists in the state: the killed one, resumed and completed.
    runs = list((job.parent / "out").glob("run-*"))
    assert len(runs) == 1
    assert not list(runs[0].glob(".*")), "a staged file was left behind"
