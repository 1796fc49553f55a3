"""The dataset: validation, generation, ground truth, and the sample data built from it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from spine_sim.dataset import (
    AppAckError,
    Dataset,
    DatasetError,
    generate_dataset,
    is_valid_test_number,
    load_dataset,
    numbers_with,
)
from spine_sim.dataset import QueryFailed as SimQueryFailed
from tests.sim.harness import (
    FLAGGED,
    UNLISTED,
    small_dataset,
)

REPO = Path(__file__).resolve().parents[2]
SAMPLE_DATA = REPO / "sample_data"


# --- the dataset ----------------------------------------------------------------------------------------------


def test_generated_dataset_is_valid_reproducible_and_varied(tmp_path: Path) -> None:
    dataset = generate_dataset(300, seed=42)
    assert dataset == generate_dataset(300, seed=42)
    assert dataset != generate_dataset(300, seed=43)
    numbers = dataset.nhs_numbers()
    assert len(numbers) == len(set(numbers)) == 300
    assert all(is_valid_test_number(n) for n in numbers)
    assert len(dataset.flagged_numbers()) == 90
    plans = [p for n in dataset.flagged_numbers() for p in dataset.expected(n).plans]
    assert {p.type for p in plans} == {"CPP", "LAC", "UCP"}
    assert any(p.end is None for p in plans) and any(p.end is not None for p in plans)
    assert any(len(dataset.expected(n).plans) > 1 for n in dataset.flagged_numbers())
    assert (
        len({r.local_authority.code for n in dataset.flagged_numbers() for r in dataset.expected(n).records})
        > 1
    )
    assert numbers_with(dataset, "error")
    assert any(isinstance(dataset.answer(n), AppAckError) for n in numbers)
    assert any(dataset.not_found.values())
    path = tmp_path / "dataset.json"
    dataset.dump(path)
    assert load_dataset(path) == dataset


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["children"][0].update(nhs_number="9991234013"), "not a valid"),
        (lambda d: d["children"][0]["records"][0].update(la_code="NOPE"), "la_code"),
        (lambda d: d["children"][0]["records"][0]["plans"][0].update(type="XYZ"), "type"),
        (lambda d: d["children"][0]["records"][0]["plans"][0].update(start="2024-13-01"), "date"),
        (lambda d: d["errors"].update({FLAGGED: {"kind": "quqi", "code": "X", "display": "y"}}), "records"),
        (
            lambda d: d["errors"].update({UNLISTED: {"kind": "quqi", "code": "X", "display": "No record"}}),
            "outcome",
        ),
    ],
    ids=["bad-number", "unknown-la", "plan-type", "bad-date", "error-with-records", "error-reads-not-found"],
)
def test_dataset_validation(mutate: Callable[[dict[str, Any]], None], message: str) -> None:
    data = small_dataset().to_json()
    # Put the flagged child first so the mutations above hit a child with records.
    data["children"].sort(key=lambda c: c["nhs_number"] != FLAGGED)
    mutate(data)
    with pytest.raises(DatasetError, match=message) as raised:
        Dataset.from_json(data)
    assert FLAGGED not in str(raised.value)


# --- the sample data and the command line -----------------------------------------------------------------------


def test_sample_dataset_covers_the_cases() -> None:
    dataset = load_dataset(SAMPLE_DATA / "spine-dataset.json")
    flagged = [dataset.expected(n) for n in dataset.flagged_numbers()]
    plans = [p for e in flagged for p in e.plans]
    assert {p.type for p in plans} == {"CPP", "LAC", "UCP"}
    assert any(p.end is None for p in plans)
    assert any(p.end is not None and p.end.year <= 2025 for p in plans)
    assert any(p.end is not None and p.end.year >= 2027 for p in plans)
    assert any(len(e.plans) > 1 for e in flagged)
    assert any(r.subject_kind == "unborn" and r.plans[0].type == "UCP" for e in flagged for r in e.records)
    assert 2 <= len(dataset.local_authorities) <= 3
    assert any(dataset.children[n].access for n in dataset.flagged_numbers())
    errors = [dataset.answer(n) for n in numbers_with(dataset, "error")]
    assert any(isinstance(a, AppAckError) for a in errors)
    assert any(isinstance(a, SimQueryFailed) for a in errors)
    assert 20 <= len(dataset.children) <= 30


@pytest.mark.parametrize(
    ("name", "rows"), [("clinic-paediatrics.csv", (25, 35)), ("clinic-audiology.parquet", (12, 18))]
)
def test_sample_clinic_lists(name: str, rows: tuple[int, int]) -> None:
    path = SAMPLE_DATA / name
    frame = pl.read_csv(path, infer_schema=False) if path.suffix == ".csv" else pl.read_parquet(path)
    assert frame.columns == ["NHS No", "Patient Name", "DOB", "Appointment Date", "Clinic"]
    assert rows[0] <= frame.height <= rows[1]
    dates = [datetime.strptime(d, "%d/%m/%Y").date() for d in frame["Appointment Date"].to_list()]
    assert all(date(2026, 12, 1) <= d <= date(2027, 2, 28) for d in dates)
