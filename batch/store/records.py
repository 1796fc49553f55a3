"""Typed rows the store takes and gives back. Plain frozen data; no SQL here."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import polars as pl

from batch.states import Disposition, Outcome, RunStatus


@dataclass(frozen=True)
class Run:
    run_id: str
    job_name: str
    reference_date: str
    started_at: str
    resumed: bool


@dataclass(frozen=True)
class AttemptRef:
    """The identifiers of one attempt and the child it asks about (docs/decisions.md#d4: M, C and Q)."""

    message_id: str
    run_id: str
    nhs_number: str
    conversation_id: str
    query_event_id: str


@dataclass(frozen=True)
class AwaitedAttempt:
    """An attempt of an earlier process that may be at Spine, and since when its reply timeout runs."""

    message_id: str
    since: datetime


@dataclass(frozen=True)
class ChildProgress:
    """What an earlier process did for a child that has no outcome yet (for resume)."""

    nhs_number: str
    counted: int = 0
    """Attempts whose POST left us (they count towards max_attempts)."""
    unsent: int = 0
    """Attempts that never reached Spine."""
    last_failure: str | None = None
    """Why the latest attempt did not reach Spine, when it did not."""
    awaited: AwaitedAttempt | None = None
    """The latest attempt, when its reply may still come."""


@dataclass(frozen=True)
class OpenChildren:
    """The children of a run still without an outcome."""

    fresh: list[str]
    """Never queried: NHS numbers only."""
    resumed: list[ChildProgress]
    """Queried by an earlier process, with what it did."""

    def __len__(self) -> int:
        return len(self.fresh) + len(self.resumed)

    def all(self) -> list[ChildProgress]:
        """Every open child as a `ChildProgress` (fresh ones with no history), by NHS number."""
        everyone = [*(ChildProgress(n) for n in self.fresh), *self.resumed]
        return sorted(everyone, key=lambda child: child.nhs_number)


@dataclass(frozen=True)
class PlanRow:
    """One plan from a CP-IS record, as the reports show it."""

    plan_type: str
    plan_start: str | None
    plan_end: str | None
    la_code: str | None
    la_name: str | None
    la_office_phone: str | None
    la_emergency_phone: str | None
    subject_kind: str


@dataclass(frozen=True)
class FlagResult:
    """What a `REPC` said about a flagged child."""

    plans: tuple[PlanRow, ...]
    access_count: int
    child_records: int | None
    last_access_at: str | None
    last_access_organisation: str | None
    warnings: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FlagResult:
        data: dict[str, Any] = json.loads(text)
        return cls(
            plans=tuple(PlanRow(**plan) for plan in data["plans"]),
            access_count=int(data["access_count"]),
            child_records=data.get("child_records"),
            last_access_at=data.get("last_access_at"),
            last_access_organisation=data.get("last_access_organisation"),
            warnings=tuple(data.get("warnings", ())),
        )


@dataclass(frozen=True)
class Resolution:
    """The business answer for a child, decided from a reply."""

    outcome: Outcome
    reason: str | None = None
    result: FlagResult | None = None


@dataclass(frozen=True)
class InboundRecord:
    message_id: str
    action: str | None
    ref_to_message_id: str | None
    conversation_id: str | None
    from_party: str | None
    raw: bytes
    """The body as received, or its first bytes when `raw_size` is larger (orphans and rejected messages)."""
    ack: bytes
    raw_size: int | None = None
    """The body's size as received; None: `len(raw)`."""


@dataclass(frozen=True)
class StoredInbound:
    """What storing an inbound message did. For a duplicate, `ack` is the acknowledgement stored first."""

    disposition: Disposition
    ack: bytes

    @property
    def duplicate(self) -> bool:
        return self.disposition is Disposition.DUPLICATE


@dataclass(frozen=True)
class ChildOutcome:
    """One child of a run: its outcome (None while open) and the attempt that decided it."""

    nhs_number: str
    outcome: Outcome | None
    reason: str | None
    result: FlagResult | None
    attempts: int
    """POSTs that left us for this child, across restarts."""
    message_id: str | None
    """The attempt the deciding reply answered."""
    queried_at: str | None
    """When that attempt was sent."""


@dataclass(frozen=True)
class RunCounts:
    attempts: int = 0
    """Attempts whose POST left us."""
    send_failures: int = 0
    """Attempts that never reached Spine."""
    inbound: dict[Disposition, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SenderIdentity:
    """Who a run's queries come from: our system, our organisation and the person responsible for them."""

    asid: str
    ods_code: str
    responsible_person_name: str
    responsible_person_role_code: str
    responsible_person_role_name: str


@dataclass(frozen=True)
class QueryReason:
    """Why a child is queried: the first of its input rows with an appointment in the window (the legitimate
    relationship), and how many of the run's input rows the query answers."""

    nhs_number: str
    source_file: str
    source_row: int
    clinic: str | None
    appointment_date: str | None
    """ISO date, when the list has one."""
    input_rows: int


@dataclass(frozen=True)
class StoredRun:
    """A run as the state file holds it."""

    run_id: str
    job_name: str
    reference_date: str
    started_at: str
    finished_at: str | None
    status: RunStatus
    summary_json: str | None
    """The run's `summary.json`, stored when it completed."""


@dataclass(frozen=True)
class StoredInputs:
    """A run's input rows as written when it started: Parquet parts in order; None where retention dropped
    them."""

    parts: tuple[bytes | None, ...]

    @property
    def dropped(self) -> bool:
        return any(part is None for part in self.parts)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One query sent, as the audit trail exports it; `outcome` and `reason` are the child's, once known."""

    sent_at: str
    run_id: str | None
    message_id: str | None
    nhs_number: str | None
    sender_asid: str | None
    sender_ods_code: str | None
    responsible_person_name: str | None
    responsible_person_role_code: str | None
    responsible_person_role_name: str | None
    source_file: str | None
    source_row: int | None
    clinic: str | None
    appointment_date: str | None
    input_rows: int | None
    delivery: str | None
    """The attempt's status (`accepted`, `answered`, `not_sent`, ...)."""
    outcome: str | None
    reason: str | None


# Columns of a run's outcomes as a frame (`Store.outcome_frame`), one row per child.
OUTCOME_FRAME_SCHEMA: dict[str, pl.DataType] = {
    "nhs_number": pl.String(),
    "outcome": pl.String(),
    "reason": pl.String(),
    "attempts": pl.Int64(),
    "message_id": pl.String(),
    "queried_at": pl.String(),
    "result_json": pl.String(),
}


def frame_of_outcomes(outcomes: Iterable[ChildOutcome]) -> pl.DataFrame:
    """Typed outcomes as an outcome frame (for a few children: a whole run is read as a frame)."""
    rows = [
        (
            o.nhs_number,
            o.outcome.value if o.outcome is not None else None,
            o.reason,
            o.attempts,
            o.message_id,
            o.queried_at,
            o.result.to_json() if o.result is not None else None,
        )
        for o in outcomes
    ]
    return pl.DataFrame(rows, schema=OUTCOME_FRAME_SCHEMA, orient="row")


def outcomes_of_frame(frame: pl.DataFrame) -> list[ChildOutcome]:
    """An outcome frame's rows as typed outcomes."""
    return [
        ChildOutcome(
            nhs_number=nhs,
            outcome=Outcome(outcome) if outcome is not None else None,
            reason=reason,
            result=FlagResult.from_json(result) if result else None,
            attempts=attempts,
            message_id=message_id,
            queried_at=queried_at,
        )
        for nhs, outcome, reason, attempts, message_id, queried_at, result in frame.iter_rows()
    ]
