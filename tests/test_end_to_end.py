"""The whole path as a user runs it: the simulator as a real process, the CLI as a real process, real mTLS."""

from __future__ import annotations

import json
import re
import shutil
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from batch.pki import DevPki
from spine_sim.dataset import load_dataset
from spine_sim.jobfile import free_port, job_tables, write_job
from spine_sim.process import running_sim
from tests.expectations import (
    expected_flagged,
    expected_outcomes,
    reported_flagged,
    reported_outcomes,
)
from tests.support import SAMPLE_DATA, SAMPLE_DATASET, run_cli

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory: pytest.TempPathFactory, dev_pki: DevPki) -> dict:
    tmp = tmp_path_factory.mktemp("e2e")
    pki = dev_pki.directory
    lists_dir = tmp / "lists"
    lists_dir.mkdir()
    lists = []
    for source in sorted(SAMPLE_DATA.glob("clinic-*")):
        lists.append(Path(shutil.copy(source, lists_dir / source.name)))
    inbound_port = free_port()
    reply_url = f"https://127.0.0.1:{inbound_port}/cpis/replies"
    with running_sim(pki_dir=pki, dataset=SAMPLE_DATASET, reply_url=reply_url) as sim:
        job = write_job(
            tmp / "job.toml",
            job_tables(
                tmp=tmp,
                pki=pki,
                inputs=str(lists_dir / "clinic-*"),
                spine_url=f"{sim.url}/reliablemessaging/reliablerequest",
                inbound_port=inbound_port,
            ),
        )
        completed = run_cli("run", str(job))
        stats = sim.stats()
    run_dir = (tmp / "out" / "latest").resolve()
    return {"tmp": tmp, "lists": lists, "completed": completed, "stats": stats, "run_dir": run_dir}


def test_run_exits_with_the_documented_code(sample_run: dict) -> None:
    completed = sample_run["completed"]
    dataset = load_dataset(SAMPLE_DATASET)
    expected = expected_outcomes(dataset, sample_run["lists"])
    has_errors = any(outcome in ("error", "no_reply") for outcome, _ in expected.values())
    assert completed.returncode == (1 if has_errors else 0), completed.stderr[-3000:]
    assert "reports:" in completed.stdout


def test_every_row_has_the_ground_truth_outcome(sample_run: dict) -> None:
    results = pl.read_parquet(sample_run["run_dir"] / "results.parquet")
    dataset = load_dataset(SAMPLE_DATASET)
    expected = expected_outcomes(dataset, sample_run["lists"])
    reported = reported_outcomes(results)
    assert results.height == len(expected)
    assert set(reported) == set(expected)
    for key, (outcome, reason) in expected.items():
        got_outcome, got_reason = reported[key]
        assert got_outcome == outcome, key
        if outcome == "invalid_nhs_number":
            assert got_reason == reason
        if outcome == "error":
            assert reason is not None and reason in (got_reason or "")
    # The sample exercises every path the issue names.
    outcomes = {o for o, _ in expected.values()}
    assert {"flagged", "not_flagged", "invalid_nhs_number", "error"} <= outcomes
    reasons = {r for o, r in expected.values() if o == "invalid_nhs_number"}
    assert {"empty", "not_10_digits", "bad_check_digit", "same_digit", "scientific_notation"} <= reasons


def test_flagged_report_matches_ground_truth_exactly(sample_run: dict) -> None:
    run_dir = sample_run["run_dir"]
    summary = json.loads((run_dir / "summary.json").read_text())
    dataset = load_dataset(SAMPLE_DATASET)
    expected = expected_flagged(dataset, sample_run["lists"], date.fromisoformat(summary["reference_date"]))
    flagged = pl.read_parquet(run_dir / "flagged.parquet")
    assert reported_flagged(flagged) == expected
    assert flagged.height == len(expected)  # no duplicate rows
    plan_types = set(flagged.get_column("plan_type"))
    assert {"CPP", "LAC", "UCP"} <= plan_types
    assert (
        flagged.get_column("plan_end").is_null().any() and flagged.get_column("plan_end").is_not_null().any()
    )
    # CSV and Parquet carry the same rows; input columns are kept.
    csv = pl.read_csv(run_dir / "flagged.csv", infer_schema=False)
    assert csv.height == flagged.height
    assert {"NHS No", "Patient Name", "Clinic"} <= set(flagged.columns)


def test_duplicates_are_queried_once(sample_run: dict) -> None:
    results = pl.read_parquet(sample_run["run_dir"] / "results.parquet")
    valid = results.filter(pl.col("nhs_number").is_not_null())
    assert valid.height > valid.get_column("nhs_number").n_unique(), "sample has no duplicates"
    per_number = sample_run["stats"]["queries_by_nhs_number"]
    assert set(per_number) == set(valid.get_column("nhs_number"))
    assert all(count == 1 for count in per_number.values())


def test_no_local_authority_was_notified(sample_run: dict) -> None:
    stats = sample_run["stats"]
    assert stats["queries_received"] > 0
    assert stats["notifications"] == 0


def test_exceptions_and_summary(sample_run: dict) -> None:
    run_dir = sample_run["run_dir"]
    results = pl.read_parquet(run_dir / "results.parquet")
    exceptions = pl.read_csv(run_dir / "exceptions.csv", infer_schema=False)
    assert set(exceptions.get_column("outcome")) <= {"invalid_nhs_number", "error", "no_reply"}
    assert exceptions.height == results.filter(~pl.col("outcome").is_in(["flagged", "not_flagged"])).height
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rows"] == results.height
    assert sum(summary["outcomes"].values()) == results.height
    assert (
        summary["queries_sent"] == results.filter(pl.col("nhs_number").is_not_null())["nhs_number"].n_unique()
    )


def test_no_nhs_number_reaches_the_log(sample_run: dict) -> None:
    completed = sample_run["completed"]
    log = completed.stdout + completed.stderr
    assert "run complete" in log
    results = pl.read_parquet(sample_run["run_dir"] / "results.parquet")
    raw_values = [v for v in results.get_column("NHS No").to_list() if v]
    numbers = set(results.get_column("nhs_number").drop_nulls()) | {re.sub(r"\D", "", v) for v in raw_values}
    digits_in_log = set(re.findall(r"\d{9,}", log))
    assert not (numbers & digits_in_log)
    assert all(v not in log for v in raw_values if len(v) >= 9)
