"""2,000 children against a simulated Spine that misbehaves on a third of the queries.

Whatever the faults, every input row gets exactly one outcome, every answered row matches the ground truth,
no child is queried more than `max_attempts` times, and no local authority is notified.
"""

from __future__ import annotations

import json

import polars as pl
import pytest

from batch.nhs_number import validate
from batch.pki import DevPki
from spine_sim.dataset import generate_dataset
from spine_sim.jobfile import free_port, job_tables, write_job
from spine_sim.process import running_sim
from tests.support import run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHILDREN = 2000
MAX_ATTEMPTS = 3
RATE = 250
FAULTS = {
    "drop_reply": 0.04,
    "duplicate_reply": 0.03,
    "duplicate_reply_new_id": 0.03,
    "reorder_replies": 0.03,
    "late_reply": 0.03,
    "reply_before_accept": 0.03,
    "soap_fault_retriable": 0.03,
    "soap_fault_permanent": 0.005,
    "message_error": 0.005,
    "mcci_error_reply": 0.01,
    "malformed_reply": 0.02,
    "unknown_reply": 0.02,
    "connection_reset": 0.02,
    "slow_accept": 0.02,
}


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory, dev_pki: DevPki) -> dict:
    assert sum(FAULTS.values()) >= 0.2
    tmp = tmp_path_factory.mktemp("chaos")
    pki = dev_pki.directory
    dataset = generate_dataset(CHILDREN, seed=2026)
    dataset.dump(tmp / "dataset.json")
    numbers = list(dataset.nhs_numbers())
    assert len(numbers) >= CHILDREN
    # Every child once, a few twice, and some rows that are not valid numbers at all.
    rows = [*numbers, *numbers[:25], "", "12345", "9999999999", "9.99123E+09"]
    pl.DataFrame({"NHS No": rows, "Appointment Date": ["20/01/2027"] * len(rows)}).write_csv(tmp / "list.csv")
    port = free_port()
    fault_args = [arg for name, rate in FAULTS.items() for arg in ("--fault", f"{name}={rate}")]
    with running_sim(
        pki_dir=pki,
        dataset=tmp / "dataset.json",
        reply_url=f"https://127.0.0.1:{port}/cpis/replies",
        extra_args=[
            "--latency-ms",
            "30",
            "--seed",
            "7",
            "--late-delay-s",
            "8",
            "--slow-accept-s",
            "1",
            "--reorder-hold-s",
            "0.5",
            *fault_args,
        ],
    ) as sim:
        tables = job_tables(
            tmp=tmp,
            pki=pki,
            inputs="list.csv",
            spine_url=f"{sim.url}/reliablemessaging/reliablerequest",
            inbound_port=port,
        )
        tables["limits"].update(
            rate_per_second=RATE,
            max_in_flight=200,
            reply_timeout_s=5,
            max_attempts=MAX_ATTEMPTS,
            max_concurrent_posts=10,
        )
        tables["limits"]["circuit_breaker_failures"] = 50
        job = write_job(tmp / "job.toml", tables)
        completed = run_cli("run", str(job), timeout=900)
        stats = sim.stats()
    run_dir = (tmp / "out" / "latest").resolve()
    return {
        "dataset": dataset,
        "rows": rows,
        "completed": completed,
        "stats": stats,
        "results": pl.read_parquet(run_dir / "results.parquet"),
        "flagged": pl.read_parquet(run_dir / "flagged.parquet"),
        "exceptions": pl.read_csv(run_dir / "exceptions.csv", infer_schema=False),
        "summary": json.loads((run_dir / "summary.json").read_text()),
    }


def test_the_run_finished_and_faults_really_happened(chaos: dict) -> None:
    assert chaos["completed"].returncode in (0, 1), chaos["completed"].stderr[-3000:]
    injected = chaos["stats"]["faults_injected"]
    assert set(injected) == set(FAULTS), injected
    accepted = chaos["stats"]["queries_accepted"]
    assert sum(injected.values()) >= 0.2 * accepted


def test_every_row_has_exactly_one_outcome(chaos: dict) -> None:
    results = chaos["results"]
    assert results.height == len(chaos["rows"])
    assert results.select("source_file", "source_row").is_unique().all()
    assert results.get_column("outcome").null_count() == 0
    assert set(results.get_column("outcome")) <= {
        "flagged",
        "not_flagged",
        "invalid_nhs_number",
        "error",
        "no_reply",
    }


def test_answered_rows_match_ground_truth(chaos: dict) -> None:
    dataset = chaos["dataset"]
    results = chaos["results"]
    for nhs, outcome, raw in results.select("nhs_number", "outcome", "NHS No").iter_rows():
        if outcome == "invalid_nhs_number":
            assert validate(raw).reason is not None
            continue
        truth = dataset.expected(nhs)
        if outcome in ("flagged", "not_flagged"):
            assert outcome == truth.outcome, "an answered row contradicts the ground truth"
    flagged = chaos["flagged"]
    answered_flagged = set(results.filter(pl.col("outcome") == "flagged").get_column("nhs_number"))
    for nhs in answered_flagged:
        expected = {
            (p.type, p.start.isoformat(), p.end.isoformat() if p.end else None)
            for p in dataset.expected(nhs).plans
        }
        reported = set(
            flagged.filter(pl.col("nhs_number") == nhs)
            .select("plan_type", "plan_start", "plan_end")
            .iter_rows()
        )
        assert reported == expected


def test_errors_are_explained(chaos: dict) -> None:
    results = chaos["results"]
    dataset = chaos["dataset"]
    for nhs, reason in (
        results.filter(pl.col("outcome") == "error").select("nhs_number", "reason").iter_rows()
    ):
        truth = dataset.expected(nhs)
        assert reason, "an error row without a reason"
        if truth.outcome == "error":
            continue
        # Otherwise a fault the simulator injected: permanent SOAP fault, MessageError or MCCI rejection.
        assert reason.startswith(("SOAPFault:101", "MessageError:", "MCCI:AE", "MCCI:AR")), reason


def test_no_child_is_queried_more_than_max_attempts(chaos: dict) -> None:
    per_child = chaos["stats"]["messages_by_nhs_number"]
    assert per_child, "the simulator reported no queries"
    assert max(per_child.values()) <= MAX_ATTEMPTS
    results = chaos["results"]
    assert results.get_column("attempts").max() <= MAX_ATTEMPTS


def test_no_local_authority_notified_and_rate_never_exceeded(chaos: dict) -> None:
    assert chaos["stats"]["notifications"] == 0
    assert chaos["stats"]["max_queries_in_1s_window"] <= RATE


def test_no_duplicate_rows_in_any_report(chaos: dict) -> None:
    assert chaos["results"].select("source_file", "source_row").is_unique().all()
    flagged = chaos["flagged"]
    assert flagged.select("source_file", "source_row", "plan_type", "plan_start", "la_code").is_unique().all()
    exceptions = chaos["exceptions"]
    assert exceptions.select("source_file", "source_row").is_unique().all()
    assert (
        exceptions.height
        == chaos["results"].filter(~pl.col("outcome").is_in(["flagged", "not_flagged"])).height
    )
