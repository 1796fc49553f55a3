"""What a business reply means for the child it answers.

See docs/protocol.md#p14, docs/protocol.md#p17 and docs/decisions.md#d15.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from batch.hl7 import Issue, ParsedReply, QueryFailed, QueryResponse
from batch.states import Disposition, Outcome
from batch.store import FlagResult, PlanRow, Resolution


@dataclass(frozen=True)
class Verdict:
    """Resolution for the child (None: keep waiting), how the inbound row is filed, and a log-safe detail.

    A business answer is filed `resolved`; the store turns it into `superseded` when another came first.
    """

    resolution: Resolution | None
    disposition: Disposition
    detail: str | None = None


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.hour == 0 and moment.minute == 0 and moment.second == 0:
        return moment.date().isoformat()
    return moment.isoformat(timespec="minutes")


def _codes(issues: tuple[Issue, ...]) -> str:
    # An MCCI may carry the same code as a detail and as an issue; say it once.
    codes = list(dict.fromkeys(i.code for i in issues if i.code))
    return "+".join(codes) if codes else "no_code"


def judge(reply: ParsedReply, *, queried_nhs_number: str) -> Verdict:
    if isinstance(reply, QueryResponse):
        return _judge_response(reply, queried_nhs_number)
    if isinstance(reply, QueryFailed):
        if reply.not_found:
            return Verdict(Resolution(Outcome.NOT_FLAGGED), Disposition.RESOLVED)
        return Verdict(Resolution(Outcome.ERROR, f"QUQI:{_codes(reply.issues)}"), Disposition.RESOLVED)
    if (reply.ack_type or "").upper() == "AA":
        return Verdict(None, Disposition.INFORMATIONAL, "MCCI AA")
    reason = f"MCCI:{reply.ack_type or 'none'}:{_codes(reply.details + reply.issues)}"
    return Verdict(Resolution(Outcome.ERROR, reason), Disposition.RESOLVED)


def _judge_response(reply: QueryResponse, nhs_number: str) -> Verdict:
    for record in reply.records:
        # A child record naming another NHS number must never be reported against this patient
        # (docs/decisions.md#d15).
        # Unborn-child records carry the mother's identifiers, so they are not compared.
        if record.subject_kind == "child" and record.subject_ids and nhs_number not in record.subject_ids:
            return Verdict(None, Disposition.QUARANTINED, "reply names a different NHS number")
    plans = tuple(
        PlanRow(
            plan_type=plan.plan_type,
            plan_start=_iso(plan.start),
            plan_end=_iso(plan.end),
            la_code=record.local_authority.code,
            la_name=record.local_authority.name,
            la_office_phone=record.local_authority.office_phone,
            la_emergency_phone=record.local_authority.emergency_phone,
            subject_kind=record.subject_kind,
        )
        for record, plan in reply.plans
    )
    if not plans:
        return Verdict(Resolution(Outcome.ERROR, "REPC:no_plans"), Disposition.RESOLVED)
    access_count = reply.total_access_records if reply.total_access_records is not None else len(reply.access)
    last = max(
        (a for a in reply.access if a.time is not None), key=lambda a: a.time or datetime.min, default=None
    )
    result = FlagResult(
        plans=plans,
        access_count=access_count,
        child_records=reply.total_child_records,
        last_access_at=_iso(last.time) if last else None,
        last_access_organisation=last.organisation if last else None,
        warnings=reply.warnings,
    )
    return Verdict(Resolution(Outcome.FLAGGED, None, result), Disposition.RESOLVED)
