"""What the simulated Spine knows: CP-IS records per number, scripted errors, and the ground truth for tests.

The JSON file (``sample_data/spine-dataset.json``) has this shape::

    {"local_authorities": {CODE: {"name", "office_phone", "emergency_phone"}},
     "children": [{"nhs_number", "given", "family", "birth_date",
                   "records": [{"la_code", "subject_kind": "child"|"unborn",
                                "plans": [{"type": "CPP"|"LAC"|"UCP", "start": "YYYY-MM-DD",
                                           "end": null|"YYYY-MM-DD"}]}],
                   "access": [{"time": "YYYY-MM-DDThh:mm:ss", "organisation", "role"}]}],
     "errors": {NHS_NUMBER: {"kind": "quqi"|"mcci", "code", "display",
                             "response_code"?: "ID", "qualifier"?: "ER"}},
     "not_found": {NHS_NUMBER: {"response_code"?, "code"?, "display"?, "qualifier"?}}}

A child with no records is part of the population but not on CP-IS. Any number without records or an
``errors`` entry is answered "no record found" (QUQI, ``ID``, ``NHSNCC002``); ``not_found`` overrides that
answer for a few numbers (e.g. ``NF``) so both not-found rules of docs/protocol.md#p14 get exercised.

Error messages name positions in the file, never NHS numbers or names.
"""

from __future__ import annotations

import json
import random
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

PLAN_TYPES = ("CPP", "LAC", "UCP")
SUBJECT_KINDS = ("child", "unborn")
ERROR_KINDS = ("quqi", "mcci")

NOT_FOUND_CODE = "NHSNCC002"
NOT_FOUND_DISPLAY = "No Record Found"
# The rules a client uses to read a QUQI as "not found" (docs/protocol.md#p14); the dataset must agree with
# them so its ground truth is unambiguous.
_NOT_FOUND_TEXT = re.compile(r"not\s+found|no\s+record", re.IGNORECASE)
_NHS_NUMBER = re.compile(r"[0-9]{10}", re.ASCII)
_PHONE = re.compile(r"\+?[0-9]+", re.ASCII)
_MAX_PLANS_PER_RECORD = 3  # REPC_MT000007GB01: pertinentInformation15 1..3
# Access-history query ids must be stable across loads, so derive them from the entry instead of new_id().
_ACCESS_ID_NAMESPACE = uuid.UUID("6f1d3a52-9c4e-4c1b-8d0e-5a7b2c9e4f10")

Outcome = Literal["flagged", "not_flagged", "error"]


class DatasetError(ValueError):
    """The dataset file is unreadable or inconsistent (the message names a position, never patient data)."""


def check_digit(stem: str) -> int | None:
    """Modulus-11 check digit of a 9-digit stem; None when the stem is never issued (check value 10)."""
    total = sum(int(d) * w for d, w in zip(stem, range(10, 1, -1), strict=True))
    value = (11 - total % 11) % 11
    return None if value == 10 else value


def is_valid_test_number(nhs_number: str) -> bool:
    """A 999-range number with a correct check digit that is not a same-digit number."""
    if not _NHS_NUMBER.fullmatch(nhs_number) or not nhs_number.startswith("999"):
        return False
    if len(set(nhs_number)) == 1:
        return False
    return check_digit(nhs_number[:9]) == int(nhs_number[9])


def random_test_number(rng: random.Random, taken: set[str]) -> str:
    """A fresh valid 999-range number not in ``taken`` (which it extends)."""
    while True:
        stem = "999" + "".join(rng.choice("0123456789") for _ in range(6))
        digit = check_digit(stem)
        if digit is None:
            continue
        number = f"{stem}{digit}"
        if number not in taken and is_valid_test_number(number):
            taken.add(number)
            return number


@dataclass(frozen=True)
class LocalAuthority:
    code: str
    name: str
    office_phone: str
    emergency_phone: str


@dataclass(frozen=True)
class Plan:
    type: str
    start: date
    end: date | None

    def active_on(self, day: date) -> bool:
        """docs/protocol.md#p17: started on or before ``day`` and not ended before it."""
        return self.start <= day and (self.end is None or self.end >= day)


@dataclass(frozen=True)
class ChildRecord:
    """One local authority's CP-IS record for the number (a REPC ``record``)."""

    la_code: str
    subject_kind: str
    plans: tuple[Plan, ...]


@dataclass(frozen=True)
class Access:
    time: datetime
    organisation: str
    role: str
    query_id: str


@dataclass(frozen=True)
class Child:
    nhs_number: str
    given: str
    family: str
    birth_date: date
    records: tuple[ChildRecord, ...] = ()
    access: tuple[Access, ...] = ()


@dataclass(frozen=True)
class RecordsFound:
    """Answer with a REPC_IN000007GB01 holding the child's records."""

    child: Child


@dataclass(frozen=True)
class QueryFailed:
    """Answer with a QUQI_IN010000UK14."""

    code: str = NOT_FOUND_CODE
    display: str = NOT_FOUND_DISPLAY
    response_code: str = "ID"
    qualifier: str = "ER"

    @property
    def is_not_found(self) -> bool:
        return (
            self.response_code == "NF"
            or self.code == NOT_FOUND_CODE
            or _NOT_FOUND_TEXT.search(self.display) is not None
        )


@dataclass(frozen=True)
class AppAckError:
    """Answer with an MCCI_IN010000UK13 of type AE."""

    code: str
    display: str


Answer = RecordsFound | QueryFailed | AppAckError


@dataclass(frozen=True)
class ExpectedRecord:
    local_authority: LocalAuthority
    subject_kind: str
    plans: tuple[Plan, ...]


@dataclass(frozen=True)
class Expected:
    """Ground truth for one NHS number, as a correct client should report it."""

    outcome: Outcome
    records: tuple[ExpectedRecord, ...] = ()
    error_codes: tuple[str, ...] = ()

    @property
    def plans(self) -> tuple[Plan, ...]:
        return tuple(plan for record in self.records for plan in record.plans)


@dataclass(frozen=True)
class Dataset:
    local_authorities: Mapping[str, LocalAuthority]
    children: Mapping[str, Child]
    errors: Mapping[str, QueryFailed | AppAckError] = field(default_factory=dict)
    not_found: Mapping[str, QueryFailed] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for index, child in enumerate(self.children.values()):
            where = f"children[{index}]"
            if not is_valid_test_number(child.nhs_number):
                raise DatasetError(f"{where}: nhs_number is not a valid 999-range test number")
            for r_index, record in enumerate(child.records):
                _check_record(record, self.local_authorities, f"{where}.records[{r_index}]")
        for section, entries in (("errors", self.errors), ("not_found", self.not_found)):
            for index, (number, answer) in enumerate(entries.items()):
                where = f"{section} entry {index}"
                if not is_valid_test_number(number):
                    raise DatasetError(f"{where}: key is not a valid 999-range test number")
                listed = self.children.get(number)
                if listed is not None and listed.records:
                    raise DatasetError(f"{where}: the number also has CP-IS records")
                if isinstance(answer, QueryFailed) and answer.is_not_found != (section == "not_found"):
                    raise DatasetError(f"{where}: its QUQI reads as the other outcome (not-found vs error)")
        overlap = set(self.errors) & set(self.not_found)
        if overlap:
            raise DatasetError(f"{len(overlap)} number(s) are in both errors and not_found")

    def answer(self, nhs_number: str) -> Answer:
        """What Spine replies to a query for this number."""
        error = self.errors.get(nhs_number)
        if error is not None:
            return error
        child = self.children.get(nhs_number)
        if child is not None and child.records:
            return RecordsFound(child)
        return self.not_found.get(nhs_number, QueryFailed())

    def expected(self, nhs_number: str) -> Expected:
        answer = self.answer(nhs_number)
        if isinstance(answer, RecordsFound):
            return Expected(
                outcome="flagged",
                records=tuple(
                    ExpectedRecord(self.local_authorities[r.la_code], r.subject_kind, r.plans)
                    for r in answer.child.records
                ),
            )
        if isinstance(answer, QueryFailed) and answer.is_not_found:
            return Expected(outcome="not_flagged")
        return Expected(outcome="error", error_codes=(answer.code,))

    def nhs_numbers(self) -> tuple[str, ...]:
        """Every number the dataset mentions: the population a test or benchmark queries."""
        ordered = dict.fromkeys([*self.children, *self.errors, *self.not_found])
        return tuple(ordered)

    def flagged_numbers(self) -> tuple[str, ...]:
        return tuple(n for n in self.nhs_numbers() if self.expected(n).outcome == "flagged")

    def to_json(self) -> dict[str, Any]:
        return {
            "local_authorities": {
                code: {
                    "name": la.name,
                    "office_phone": la.office_phone,
                    "emergency_phone": la.emergency_phone,
                }
                for code, la in self.local_authorities.items()
            },
            "children": [_child_to_json(child) for child in self.children.values()],
            "errors": {number: _error_to_json(error) for number, error in self.errors.items()},
            "not_found": {number: _query_failed_to_json(nf) for number, nf in self.not_found.items()},
        }

    def dump(self, path: Path | str) -> None:
        text = json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n"
        Path(path).write_text(text, encoding="utf-8")

    @classmethod
    def from_json(cls, data: Any) -> Dataset:
        root = _mapping(data, "dataset")
        la_items = _mapping(root.get("local_authorities", {}), "local_authorities").items()
        las = {
            code: _local_authority(code, _mapping(value, f"local_authorities[{index}]"), index)
            for index, (code, value) in enumerate(la_items)
        }
        children: dict[str, Child] = {}
        for index, item in enumerate(_sequence(root.get("children", []), "children")):
            child = _child(_mapping(item, f"children[{index}]"), f"children[{index}]")
            if child.nhs_number in children:
                raise DatasetError(f"children[{index}]: duplicate nhs_number")
            children[child.nhs_number] = child
        errors = {
            str(number): _error(_mapping(value, f"errors entry {index}"), f"errors entry {index}")
            for index, (number, value) in enumerate(_mapping(root.get("errors", {}), "errors").items())
        }
        not_found = {
            str(number): _query_failed(
                _mapping(value, f"not_found entry {index}"), f"not_found entry {index}"
            )
            for index, (number, value) in enumerate(_mapping(root.get("not_found", {}), "not_found").items())
        }
        return cls(las, children, errors, not_found)


def load_dataset(path: Path | str) -> Dataset:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read dataset file: {type(exc).__name__}") from None
    return Dataset.from_json(data)


def _check_record(record: ChildRecord, las: Mapping[str, LocalAuthority], where: str) -> None:
    if record.la_code not in las:
        raise DatasetError(f"{where}: la_code is not in local_authorities")
    if record.subject_kind not in SUBJECT_KINDS:
        raise DatasetError(f"{where}: subject_kind must be one of {SUBJECT_KINDS}")
    if not 1 <= len(record.plans) <= _MAX_PLANS_PER_RECORD:
        raise DatasetError(f"{where}: a record holds 1 to {_MAX_PLANS_PER_RECORD} plans")
    for index, plan in enumerate(record.plans):
        if plan.type not in PLAN_TYPES:
            raise DatasetError(f"{where}.plans[{index}]: type must be one of {PLAN_TYPES}")
        if plan.type == "UCP" and plan.end is None:
            raise DatasetError(f"{where}.plans[{index}]: a UCP plan needs an end date (1..1 in the schema)")
        if plan.end is not None and plan.end < plan.start:
            raise DatasetError(f"{where}.plans[{index}]: end is before start")


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise DatasetError(f"{where}: expected an object")
    return value


def _sequence(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise DatasetError(f"{where}: expected a list")
    return value


def _text(data: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(f"{where}: '{key}' must be a non-empty string")
    return value


def _date(value: Any, where: str) -> date:
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: expected a YYYY-MM-DD date") from None


def _phone(data: Mapping[str, Any], key: str, where: str) -> str:
    value = _text(data, key, where)
    if not _PHONE.fullmatch(value):
        raise DatasetError(f"{where}: '{key}' must be digits with an optional leading +")
    return value


def _local_authority(code: Any, data: Mapping[str, Any], index: int) -> LocalAuthority:
    where = f"local_authorities[{index}]"
    if not isinstance(code, str) or not code.strip():
        raise DatasetError(f"{where}: the code must be a non-empty string")
    return LocalAuthority(
        code=code,
        name=_text(data, "name", where),
        office_phone=_phone(data, "office_phone", where),
        emergency_phone=_phone(data, "emergency_phone", where),
    )


def _child(data: Mapping[str, Any], where: str) -> Child:
    number = _text(data, "nhs_number", where)
    records = tuple(
        _record(_mapping(item, f"{where}.records[{i}]"), f"{where}.records[{i}]")
        for i, item in enumerate(_sequence(data.get("records", []), f"{where}.records"))
    )
    access = tuple(
        _access(_mapping(item, f"{where}.access[{i}]"), f"{where}.access[{i}]", number, i)
        for i, item in enumerate(_sequence(data.get("access", []), f"{where}.access"))
    )
    return Child(
        nhs_number=number,
        given=_text(data, "given", where),
        family=_text(data, "family", where),
        birth_date=_date(data.get("birth_date"), f"{where}.birth_date"),
        records=records,
        access=access,
    )


def _record(data: Mapping[str, Any], where: str) -> ChildRecord:
    plans = []
    for index, item in enumerate(_sequence(data.get("plans", []), f"{where}.plans")):
        plan = _mapping(item, f"{where}.plans[{index}]")
        end = plan.get("end")
        plans.append(
            Plan(
                type=_text(plan, "type", f"{where}.plans[{index}]"),
                start=_date(plan.get("start"), f"{where}.plans[{index}].start"),
                end=None if end is None else _date(end, f"{where}.plans[{index}].end"),
            )
        )
    return ChildRecord(
        la_code=_text(data, "la_code", where),
        subject_kind=_text(data, "subject_kind", where),
        plans=tuple(plans),
    )


def _access(data: Mapping[str, Any], where: str, nhs_number: str, index: int) -> Access:
    raw = data.get("time")
    try:
        time = datetime.fromisoformat(raw) if isinstance(raw, str) else None
    except ValueError:
        time = None
    if time is None:
        raise DatasetError(f"{where}: 'time' must be an ISO date-time")
    if time.tzinfo is not None:
        raise DatasetError(f"{where}: 'time' is UK local time and carries no offset")
    organisation, role = _text(data, "organisation", where), _text(data, "role", where)
    return Access(time, organisation, role, _access_query_id(nhs_number, index))


def _access_query_id(nhs_number: str, index: int) -> str:
    return str(uuid.uuid5(_ACCESS_ID_NAMESPACE, f"{nhs_number}/{index}")).upper()


def _error(data: Mapping[str, Any], where: str) -> QueryFailed | AppAckError:
    kind = data.get("kind")
    if kind == "quqi":
        return _query_failed(data, where, defaults=False)
    if kind == "mcci":
        return AppAckError(code=_text(data, "code", where), display=_text(data, "display", where))
    raise DatasetError(f"{where}: 'kind' must be one of {ERROR_KINDS}")


def _query_failed(data: Mapping[str, Any], where: str, *, defaults: bool = True) -> QueryFailed:
    response_code = _text(data, "response_code", where, "ID")
    if response_code not in ("ID", "NF"):
        raise DatasetError(f"{where}: 'response_code' must be ID or NF")
    qualifier = _text(data, "qualifier", where, "ER")
    if qualifier not in ("ER", "WG", "IF"):
        raise DatasetError(f"{where}: 'qualifier' must be ER, WG or IF")
    return QueryFailed(
        code=_text(data, "code", where, NOT_FOUND_CODE if defaults else None),
        display=_text(data, "display", where, NOT_FOUND_DISPLAY if defaults else None),
        response_code=response_code,
        qualifier=qualifier,
    )


def _child_to_json(child: Child) -> dict[str, Any]:
    return {
        "nhs_number": child.nhs_number,
        "given": child.given,
        "family": child.family,
        "birth_date": child.birth_date.isoformat(),
        "records": [
            {
                "la_code": record.la_code,
                "subject_kind": record.subject_kind,
                "plans": [
                    {
                        "type": plan.type,
                        "start": plan.start.isoformat(),
                        "end": None if plan.end is None else plan.end.isoformat(),
                    }
                    for plan in record.plans
                ],
            }
            for record in child.records
        ],
        "access": [
            {"time": a.time.isoformat(timespec="seconds"), "organisation": a.organisation, "role": a.role}
            for a in child.access
        ],
    }


def _query_failed_to_json(answer: QueryFailed) -> dict[str, str]:
    return {
        "response_code": answer.response_code,
        "code": answer.code,
        "display": answer.display,
        "qualifier": answer.qualifier,
    }


def _error_to_json(answer: QueryFailed | AppAckError) -> dict[str, str]:
    if isinstance(answer, AppAckError):
        return {"kind": "mcci", "code": answer.code, "display": answer.display}
    return {"kind": "quqi", **_query_failed_to_json(answer)}


# --- generation (chaos tests, benchmarks, sample data) ---

GIVEN_NAMES = (
    "Ada", "Bryn", "Cora", "Dara", "Elin", "Finn", "Gwen", "Hari", "Isla", "Jago", "Kit", "Lyra", "Milo",
    "Nell", "Oren", "Pia", "Quin", "Rhea", "Soren", "Tova", "Ulla", "Vero", "Wren", "Xan", "Yara", "Zeb",
)  # fmt: skip
FAMILY_NAMES = (
    "Simwell", "Testbury", "Mockford", "Fakeham", "Sampleton", "Dummer", "Proxley", "Stubbins", "Fixtureby",
    "Placeworth", "Synthwick", "Examplar", "Modelton", "Pretendle",
)  # fmt: skip
ORGANISATIONS = (
    "Northbridge General Hospital (simulated)",
    "Eastmoor Urgent Treatment Centre (simulated)",
    "Southvale Children's Hospital (simulated)",
    "Westfold Walk-in Centre (simulated)",
)
ROLES = ("Emergency Department Nurse", "Paediatric Registrar", "Midwife", "Urgent Care Practitioner")
# Ofcom reserves 01632 960000-960999 for drama: never a working number.
LOCAL_AUTHORITIES = (
    LocalAuthority("SIMLA01", "Northshire County Council (simulated)", "+441632960101", "+441632960102"),
    LocalAuthority("SIMLA02", "Eastborough Council (simulated)", "+441632960201", "+441632960202"),
    LocalAuthority("SIMLA03", "Southvale Metropolitan Council (simulated)", "+441632960301", "+441632960302"),
    LocalAuthority("SIMLA04", "Westfold City Council (simulated)", "+441632960401", "+441632960402"),
)
QUQI_ERROR = QueryFailed(code="SIMQE01", display="Simulated query processing error")
MCCI_ERROR = AppAckError(code="SIMAE01", display="Simulated application rejection")
# Not-found only by its NF response code: neither the code nor the text matches the other not-found rules.
NF_NOT_FOUND = QueryFailed(
    code="SIMNF01", display="Query returned no data", response_code="NF", qualifier="IF"
)


def random_date(rng: random.Random, first: date, last: date) -> date:
    return first + timedelta(days=rng.randint(0, (last - first).days))


def random_plan(rng: random.Random, plan_type: str) -> Plan:
    """A plan that is open, ended in the past (2025 or earlier) or ends after 2027 (still active in 2027)."""
    start = random_date(rng, date(2019, 1, 1), date(2026, 6, 30))
    shape = rng.random()
    if plan_type != "UCP" and shape < 0.5:
        return Plan(plan_type, start, None)
    past_end = date(2025, 12, 31)
    if shape < 0.75 and start <= past_end:
        end = random_date(rng, max(start, date(2023, 1, 1)), past_end)
    else:
        end = random_date(rng, date(2027, 3, 1), date(2029, 12, 31))
    return Plan(plan_type, start, end)


def _random_record(rng: random.Random, la_code: str) -> ChildRecord:
    if rng.random() < 0.12:
        return ChildRecord(la_code, "unborn", (random_plan(rng, "UCP"),))
    count = rng.choices((1, 2, 3), weights=(70, 22, 8))[0]
    types = rng.sample(("CPP", "LAC", "CPP", "LAC"), count)
    return ChildRecord(la_code, "child", tuple(random_plan(rng, t) for t in types))


def random_access(rng: random.Random, nhs_number: str, count: int) -> tuple[Access, ...]:
    times = []
    for _ in range(count):
        day = random_date(rng, date(2024, 1, 1), date(2026, 10, 31))
        times.append(datetime(day.year, day.month, day.day, rng.randint(0, 23), rng.randint(0, 59)))
    return tuple(
        Access(time, rng.choice(ORGANISATIONS), rng.choice(ROLES), _access_query_id(nhs_number, index))
        for index, time in enumerate(sorted(times, reverse=True))
    )


def birth_date(rng: random.Random, records: tuple[ChildRecord, ...]) -> date:
    """A mother's birth date for an unborn child's record; else a child born before any plan started."""
    if any(r.subject_kind == "unborn" for r in records):
        return random_date(rng, date(1986, 1, 1), date(2004, 12, 31))
    latest = min((p.start for r in records for p in r.plans), default=date(2026, 6, 30))
    return random_date(rng, max(date(2009, 1, 1), latest - timedelta(days=15 * 365)), latest)


def generate_dataset(n_children: int, *, seed: int, flagged_fraction: float = 0.3) -> Dataset:
    """A reproducible population of ``n_children`` 999-range numbers, ``flagged_fraction`` of them on CP-IS.

    Flagged children get one record (sometimes two, from different local authorities) of 1-3 plans, a mix
    of CPP/LAC/UCP, open and ended. Of the rest, about 2% each become QUQI errors, MCCI errors and ``NF``
    not-found answers (at least one of each once there are enough unflagged children).
    """
    if n_children < 0 or not 0.0 <= flagged_fraction <= 1.0:
        raise ValueError("n_children must be >= 0 and flagged_fraction within 0..1")
    rng = random.Random(seed)  # noqa: S311 - reproducible synthetic data, not security
    taken: set[str] = set()
    numbers = [random_test_number(rng, taken) for _ in range(n_children)]
    flagged = set(rng.sample(numbers, round(n_children * flagged_fraction)))
    children: dict[str, Child] = {}
    for number in numbers:
        records: tuple[ChildRecord, ...] = ()
        access: tuple[Access, ...] = ()
        if number in flagged:
            la_codes = rng.sample([la.code for la in LOCAL_AUTHORITIES], 2 if rng.random() < 0.1 else 1)
            records = tuple(_random_record(rng, code) for code in la_codes)
            access = random_access(rng, number, rng.randint(0, 3))
        born = birth_date(rng, records)
        children[number] = Child(
            number, rng.choice(GIVEN_NAMES), rng.choice(FAMILY_NAMES), born, records, access
        )
    unflagged = [n for n in numbers if n not in flagged]
    rng.shuffle(unflagged)
    each = max(1, round(len(unflagged) * 0.02)) if len(unflagged) >= 6 else 0
    errors: dict[str, QueryFailed | AppAckError] = {n: QUQI_ERROR for n in unflagged[:each]}
    errors.update({n: MCCI_ERROR for n in unflagged[each : 2 * each]})
    not_found = {n: NF_NOT_FOUND for n in unflagged[2 * each : 3 * each]}
    return Dataset({la.code: la for la in LOCAL_AUTHORITIES}, children, errors, not_found)


def numbers_with(dataset: Dataset, outcome: Outcome) -> list[str]:
    """The dataset's numbers whose ground truth has this outcome, in dataset order."""
    return [n for n in dataset.nhs_numbers() if dataset.expected(n).outcome == outcome]
