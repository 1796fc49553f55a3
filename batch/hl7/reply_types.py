"""Typed results of reading a reply (docs/protocol.md#p13, docs/protocol.md#p14). Plain frozen data."""

from dataclasses import dataclass
from datetime import date, datetime


@dataclass(frozen=True)
class Issue:
    code: str | None
    code_system: str | None
    display_name: str | None
    qualifier: str | None  # ER / WG / IF


@dataclass(frozen=True)
class LocalAuthority:
    code: str | None  # kept as sent (case included); compare case-insensitively
    name: str | None
    office_phone: str | None
    emergency_phone: str | None
    other_phones: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    plan_type: str  # "CPP" | "LAC" | "UCP" | "UNKNOWN"
    start: datetime | None
    end: datetime | None

    def active_on(self, day: date) -> bool:
        """Started on or before `day` (or start unknown) and not ended before it."""
        started = self.start is None or self.start.date() <= day
        return started and (self.end is None or self.end.date() >= day)


@dataclass(frozen=True)
class AccessEntry:
    time: datetime | None
    query_id: str | None
    organisation: str | None
    role: str | None
    person: str | None


@dataclass(frozen=True)
class CpRecord:
    local_authority: LocalAuthority
    plans: tuple[Plan, ...]
    subject_kind: str  # "child" | "unborn"
    # NHS-number ids of the child, or of the mother (playedMother) for an unborn child. Empty when
    # the reply leaves them out (docs/protocol.md#p16): the caller then uses the attempt's NHS number.
    subject_ids: tuple[str, ...]


@dataclass(frozen=True)
class Reply:
    """What every reply carries: its own HL7 message id and the id of the message it answers."""

    message_id: str | None
    message_ref: str | None


@dataclass(frozen=True)
class QueryResponse(Reply):
    """`REPC_IN000007GB01`."""

    response_code: str | None
    records: tuple[CpRecord, ...]
    access: tuple[AccessEntry, ...]
    total_access_records: int | None
    total_child_records: int | None
    issues: tuple[Issue, ...]
    warnings: tuple[str, ...]

    @property
    def plans(self) -> tuple[tuple[CpRecord, Plan], ...]:
        return tuple((record, plan) for record in self.records for plan in record.plans)


@dataclass(frozen=True)
class QueryFailed(Reply):
    """`QUQI_IN010000UK14`."""

    ack_type: str | None
    response_code: str | None
    issues: tuple[Issue, ...]
    not_found: bool
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class AppAcknowledgement(Reply):
    """`MCCI_IN010000UK13`."""

    ack_type: str | None
    details: tuple[Issue, ...]
    issues: tuple[Issue, ...]
    warnings: tuple[str, ...]


ParsedReply = QueryResponse | QueryFailed | AppAcknowledgement


class WarningLog:
    """Short, data-free warning codes in first-seen order, each once."""

    def __init__(self) -> None:
        self._codes: dict[str, None] = {}

    def add(self, code: str) -> None:
        self._codes.setdefault(code, None)

    def freeze(self) -> tuple[str, ...]:
        return tuple(self._codes)
