"""Regenerate the sample data: the simulated Spine's dataset and two clinic lists that exercise it.

    .venv/bin/python sample_data/make_samples.py

Reproducible (fixed seed); every NHS number that can be queried is a synthetic 999-range number, every name is
made up, every phone number is in Ofcom's drama range. The clinic lists cover: flagged children of each plan
type (plans ended in 2025, open, or ending after 2027, against appointments from December 2026 to February
2027), children not on CP-IS, "no record" answered both ways, a QUQI and an MCCI error, every kind of invalid
NHS number, duplicates within and across lists, and numbers written with spaces, hyphens or a leading
apostrophe.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import polars as pl

from spine_sim.dataset import (
    FAMILY_NAMES,
    GIVEN_NAMES,
    LOCAL_AUTHORITIES,
    MCCI_ERROR,
    NF_NOT_FOUND,
    QUQI_ERROR,
    Child,
    ChildRecord,
    Dataset,
    Plan,
    birth_date,
    check_digit,
    random_access,
    random_date,
    random_test_number,
)

SEED = 20261201
HERE = Path(__file__).resolve().parent
COLUMNS = ["NHS No", "Patient Name", "DOB", "Appointment Date", "Clinic"]
PAEDIATRICS = "Community Paediatrics - Northbridge (simulated)"
AUDIOLOGY = "Paediatric Audiology - Eastmoor (simulated)"
FIRST_APPOINTMENT, LAST_APPOINTMENT = date(2026, 12, 1), date(2027, 2, 26)


def _plan(kind: str, start: str, end: str | None = None) -> Plan:
    return Plan(kind, date.fromisoformat(start), None if end is None else date.fromisoformat(end))


THREE_PLANS = [
    _plan("CPP", "2020-05-05", "2023-05-05"),
    _plan("LAC", "2023-05-06", "2025-12-31"),
    _plan("CPP", "2026-01-05"),
]
# (records as (LA index, subject kind, plans), number of access entries); three local authorities.
FLAGGED_SPECS: list[tuple[list[tuple[int, str, list[Plan]]], int]] = [
    ([(0, "child", [_plan("CPP", "2024-03-11")])], 2),  # CPP open
    ([(0, "child", [_plan("CPP", "2023-06-01", "2025-08-31")])], 0),  # CPP ended in 2025
    ([(1, "child", [_plan("CPP", "2025-09-15", "2027-06-30")])], 1),  # CPP ends after the appointments
    ([(1, "child", [_plan("LAC", "2022-11-02")])], 1),  # LAC open
    ([(2, "child", [_plan("LAC", "2021-04-19", "2025-02-14")])], 0),  # LAC ended in 2025
    ([(0, "child", [_plan("LAC", "2024-07-01", "2028-01-31")])], 2),  # LAC ends after 2027
    ([(1, "unborn", [_plan("UCP", "2025-03-03", "2025-11-30")])], 0),  # UCP ended (child born)
    ([(2, "unborn", [_plan("UCP", "2026-06-20", "2027-03-31")])], 1),  # UCP active at the appointment
    ([(0, "child", [_plan("CPP", "2024-01-08", "2025-04-30"), _plan("LAC", "2025-05-01")])], 3),  # two plans
    # Records from two local authorities: one plan ended, one open.
    (
        [
            (0, "child", [_plan("CPP", "2024-02-02", "2025-10-01")]),
            (2, "child", [_plan("CPP", "2025-10-02")]),
        ],
        2,
    ),
    ([(2, "child", [_plan("CPP", "2027-01-10")])], 0),  # starts during the appointment period
    ([(1, "child", THREE_PLANS)], 1),  # three plans, one open
]
NOT_ON_CPIS = 10


@dataclass(frozen=True)
class Row:
    nhs_no: str | None
    name: str
    dob: str
    clinic: str


def _dmy(day: date) -> str:
    return day.strftime("%d/%m/%Y")


def _spaced(number: str) -> str:
    return f"{number[:3]} {number[3:6]} {number[6:]}"


def build_dataset(rng: random.Random) -> tuple[Dataset, list[str], list[str], dict[str, str]]:
    """The dataset, its flagged numbers, its not-on-CP-IS numbers, and the scripted answers by role."""
    taken: set[str] = set()
    las = LOCAL_AUTHORITIES[:3]
    children: dict[str, Child] = {}

    def child(records: tuple[ChildRecord, ...], access_count: int) -> str:
        number = random_test_number(rng, taken)
        born = birth_date(rng, records)
        access = random_access(rng, number, access_count)
        children[number] = Child(
            number, rng.choice(GIVEN_NAMES), rng.choice(FAMILY_NAMES), born, records, access
        )
        return number

    flagged = [
        child(tuple(ChildRecord(las[i].code, kind, tuple(plans)) for i, kind, plans in records), access_count)
        for records, access_count in FLAGGED_SPECS
    ]
    unflagged = [child((), 0) for _ in range(NOT_ON_CPIS)]
    scripted = {"nf": child((), 0), "quqi": child((), 0), "mcci": child((), 0)}
    dataset = Dataset(
        {la.code: la for la in las},
        children,
        errors={scripted["quqi"]: QUQI_ERROR, scripted["mcci"]: MCCI_ERROR},
        not_found={scripted["nf"]: NF_NOT_FOUND},
    )
    return dataset, flagged, unflagged, scripted


def _invalid_numbers(rng: random.Random) -> dict[str, str | None]:
    """One value per invalid-number reason (report names from docs/decisions.md#d13)."""
    stem = "999" + "".join(rng.choice("0123456789") for _ in range(6))
    while check_digit(stem) is None:
        stem = "999" + "".join(rng.choice("0123456789") for _ in range(6))
    good = f"{stem}{check_digit(stem)}"
    ten_stem = "999123408"  # check value 10 (docs/decisions.md#d13)
    assert check_digit(ten_stem) is None
    return {
        "empty": None,
        "not_10_digits": good[:8],
        "bad_check_digit": f"{stem}{(int(good[9]) + 1) % 10}",
        "same_digit": "9999999999",
        "check_digit_ten": f"{ten_stem}4",
        "scientific_notation": f"{good[0]}.{good[1:7]}E+09",
        "leading_zero_lost": "101099123",  # a Scottish CHI number read as an integer
        # Valid modulus 11 in the England range, so rejected only for being live in a test profile. A patterned
        # number rather than a plausible one, and never sent anywhere.
        "live_number_in_test": "4000000004",
    }


def build_lists(
    rng: random.Random, dataset: Dataset, flagged: list[str], unflagged: list[str], scripted: dict[str, str]
) -> tuple[list[Row], list[Row]]:
    def row(number: str, clinic: str, *, shown: str | None = None) -> Row:
        person = dataset.children[number]
        return Row(shown if shown is not None else number, f"{person.given} {person.family}",
                   _dmy(person.birth_date), clinic)  # fmt: skip

    def stranger(value: str | None, clinic: str) -> Row:
        born = random_date(rng, date(2011, 1, 1), date(2026, 4, 30))
        return Row(value, f"{rng.choice(GIVEN_NAMES)} {rng.choice(FAMILY_NAMES)}", _dmy(born), clinic)

    p, a = PAEDIATRICS, AUDIOLOGY
    invalid = _invalid_numbers(rng)
    paediatrics = [row(n, p) for n in flagged[:10]]
    paediatrics[1] = row(flagged[1], p, shown=_spaced(flagged[1]))  # "999 123 4012"
    paediatrics[2] = row(flagged[2], p, shown=f"{flagged[2][:3]}-{flagged[2][3:6]}-{flagged[2][6:]}")
    paediatrics += [row(flagged[0], p)]  # duplicate within the list (a second appointment)
    paediatrics += [row(n, p) for n in unflagged[:6]]
    paediatrics += [row(unflagged[0], p, shown=_spaced(unflagged[0]))]  # duplicate, written differently
    paediatrics += [row(unflagged[1], p, shown=f"'{unflagged[1]}")]  # spreadsheet text marker, duplicate
    paediatrics += [row(scripted[k], p) for k in ("nf", "quqi", "mcci")]
    paediatrics += [stranger(value, p) for value in invalid.values()]

    unlisted = random_test_number(rng, set(dataset.nhs_numbers()))
    audiology = [row(n, a) for n in flagged[10:]]
    audiology += [row(flagged[3], a), row(flagged[7], a, shown=_spaced(flagged[7]))]  # across lists
    audiology += [row(n, a) for n in unflagged[6:]]
    audiology += [row(unflagged[2], a), row(scripted["nf"], a)]  # across lists, not on CP-IS
    audiology += [
        row(unflagged[7], a, shown=f"{unflagged[7]}.0")
    ]  # float artefact, duplicate within the list
    audiology += [stranger(unlisted, a)]  # a valid number the dataset does not know: "no record"
    audiology += [stranger(invalid[k], a) for k in ("bad_check_digit", "empty", "scientific_notation")]
    return paediatrics, audiology


def _frame(rows: list[Row], rng: random.Random) -> pl.DataFrame:
    start = datetime(FIRST_APPOINTMENT.year, FIRST_APPOINTMENT.month, FIRST_APPOINTMENT.day)
    span = (LAST_APPOINTMENT - FIRST_APPOINTMENT).days
    appointments = [_dmy((start + timedelta(days=rng.randint(0, span))).date()) for _ in rows]
    return pl.DataFrame(
        {
            "NHS No": [r.nhs_no for r in rows],
            "Patient Name": [r.name for r in rows],
            "DOB": [r.dob for r in rows],
            "Appointment Date": appointments,
            "Clinic": [r.clinic for r in rows],
        },
        schema=dict.fromkeys(COLUMNS, pl.String),
    )


def main() -> None:
    rng = random.Random(SEED)  # noqa: S311 - reproducible synthetic data
    dataset, flagged, unflagged, scripted = build_dataset(rng)
    paediatrics, audiology = build_lists(rng, dataset, flagged, unflagged, scripted)
    dataset.dump(HERE / "spine-dataset.json")
    # Shuffled so that row order carries no meaning a test could lean on.
    rng.shuffle(paediatrics)
    rng.shuffle(audiology)
    _frame(paediatrics, rng).write_csv(HERE / "clinic-paediatrics.csv")
    _frame(audiology, rng).write_parquet(HERE / "clinic-audiology.parquet")
    print(
        f"{len(dataset.children)} children, {len(paediatrics)} + {len(audiology)} clinic rows written to {HERE}"
    )


if __name__ == "__main__":
    main()
